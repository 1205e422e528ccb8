//! The lab's control-plane process. It binds the host's loopback port
//! first, then moves into the control-plane node's namespace, where it runs
//! the API server (on `:6443`), the controllers, and forwards every
//! connection from the host's port to the API server. The listening socket
//! stays in the host's namespace; nothing else of the lab is there.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use tokio::net::TcpStream;

/// Arguments of `podnet lab-daemon`.
#[derive(clap::Args)]
pub struct Args {
    /// The lab's name.
    #[arg(long)]
    name: String,
    /// Host loopback port forwarded to the API server.
    #[arg(long)]
    api_port: u16,
    /// The control-plane node's namespace.
    #[arg(long)]
    netns: String,
    /// The control-plane node's underlay address.
    #[arg(long)]
    advertise: Ipv4Addr,
    /// Node names, for whom kubeconfigs are written.
    #[arg(long = "node")]
    nodes: Vec<String>,
    /// The agents' encapsulation (`vxlan` or `host-gw`).
    #[arg(long)]
    encap: String,
    /// The agents' proxy backend.
    #[arg(long)]
    proxy_mode: String,
    /// Whether node IPAM gives nodes their pod CIDRs.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    allocate_node_cidrs: bool,
    /// `podnet-config` settings (`KEY=VALUE`) over the lab's defaults.
    #[arg(long = "config")]
    config: Vec<String>,
}

/// The API server's port inside the control-plane node.
pub const API_PORT: u16 = 6443;

/// Runs the daemon until killed.
pub fn run(args: Args) -> anyhow::Result<()> {
    let host_listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, args.api_port))
        .with_context(|| format!("bind 127.0.0.1:{}", args.api_port))?;
    host_listener.set_nonblocking(true)?;
    let ns = std::fs::File::open(PathBuf::from("/run/netns").join(&args.netns))
        .with_context(|| format!("open namespace {}", args.netns))?;
    // Single-threaded still: every thread made from here on starts inside
    // the control-plane node's namespace.
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("enter {}", args.netns))?;
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // Into the lab's cgroup before any thread or child: every process of
    // the lab descends from this one, so `down` finds them all there.
    super::cgroup::join(&args.name).context("joining the lab's cgroup")?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(serve(args, host_listener))
}

/// The `kubernetes` Service's EndpointSlice, as kube-apiserver keeps it
/// (the Service has no selector, so no controller makes it): the proxy
/// sends `10.96.0.1:443` to the API server's address.
async fn ensure_kubernetes_slice(client: &kube::Client, advertise: Ipv4Addr) -> anyhow::Result<()> {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let api: kube::Api<EndpointSlice> = kube::Api::namespaced(client.clone(), "default");
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {
            "kubernetes.io/service-name": "kubernetes",
            "endpointslice.kubernetes.io/managed-by": "endpointslicemirroring-controller.k8s.io"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [advertise.to_string()], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": API_PORT, "protocol": "TCP"}],
    }))?;
    match api.create(&Default::default(), &slice).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The user's kubeconfig: cluster, user and context all named
/// `podnet-<lab>`, as kind names its `kind-<name>` entries, so merging it
/// into `~/.kube/config` gives one obvious context.
fn write_user_kubeconfig(
    path: &std::path::Path,
    name: &str,
    server: &str,
    ca_pem: &str,
    token: &str,
) -> anyhow::Result<()> {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {ca}\n    server: {server}\n  name: {name}\ncontexts:\n- context:\n    cluster: {name}\n    user: {name}\n  name: {name}\ncurrent-context: {name}\npreferences: {{}}\nusers:\n- name: {name}\n  user:\n    token: {token}\n"
    );
    podnet_apiserver::security::write_private(path, text.as_bytes())?;
    Ok(())
}

async fn serve(args: Args, host_listener: std::net::TcpListener) -> anyhow::Result<()> {
    let state = super::state_dir(&args.name);
    let mut config = podnet_apiserver::Config::new(
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, API_PORT)),
        state.join("apiserver"),
    );
    config.advertise_address = Some(args.advertise.into());
    config.cluster_name = format!("podnet-{}", args.name);
    let server = podnet_apiserver::Server::start(config)
        .await
        .context("starting the API server")?;

    // Credentials: one kubeconfig per node agent, one for the user.
    let in_cluster_url = format!("https://{}:{API_PORT}", args.advertise);
    for node in &args.nodes {
        let token = server.tokens.issue_node(node)?;
        let dir = state.join("nodes").join(node);
        std::fs::create_dir_all(&dir)?;
        podnet_apiserver::security::write_kubeconfig(
            &dir.join("kubeconfig"),
            &format!("podnet-{}", args.name),
            &in_cluster_url,
            &server.ca_pem,
            &format!("system:node:{node}"),
            &token,
        )?;
    }
    write_user_kubeconfig(
        &state.join("kubeconfig"),
        &format!("podnet-{}", args.name),
        &format!("https://127.0.0.1:{}", args.api_port),
        &server.ca_pem,
        &server.admin_token,
    )?;

    // The controllers: API clients like any other, over the admin
    // kubeconfig the server wrote (it points at 127.0.0.1:6443 here).
    let kc = kube::config::Kubeconfig::read_from(&server.kubeconfig)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let client = kube::Client::try_from(cfg)?;
    ensure_kubernetes_slice(&client, args.advertise).await?;
    let admin = client.clone();
    let allocate_node_cidrs = args.allocate_node_cidrs;
    tokio::spawn(async move {
        let config = podnet_controllers::ControllersConfig {
            allocate_node_cidrs,
            ..Default::default()
        };
        if let Err(e) = podnet_controllers::run(client, config).await {
            tracing::error!(error = %e, "controllers stopped");
        }
    });

    // A kubelet per node, supervised as systemd keeps a node's kubelet.
    let kubelets = super::kubelets::KubeletConfig {
        lab: args.name.clone(),
        exe_dir: std::env::current_exe()?
            .parent()
            .context("no directory for the podnet binary")?
            .to_path_buf(),
    };
    for (i, node) in args.nodes.iter().enumerate() {
        super::kubelets::supervise(kubelets.clone(), node.clone(), i);
    }

    // podnet itself, installed from deploy/ as an operator installs it.
    // The agents reach the API server at its address, not through the
    // `kubernetes` ClusterIP: podnet is the lab's service proxy, so that
    // address only works once the agents run (docs/install.md). The lab has
    // no upstream resolver: names outside the cluster get REFUSED.
    let mut values = std::collections::BTreeMap::from(
        [
            ("PODNET_API_SERVER", in_cluster_url.as_str()),
            ("PODNET_ENCAP", args.encap.as_str()),
            ("PODNET_PROXY_MODE", args.proxy_mode.as_str()),
            ("PODNET_DNS_NO_FORWARD", "true"),
            ("PODNET_DNS_UDP_WORKERS", "1"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    for kv in &args.config {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--config {kv:?}: not KEY=VALUE"))?;
        values.insert(k.to_string(), v.to_string());
    }
    let objects = super::install::render(&values)?;
    super::install::apply(&admin, &objects)
        .await
        .context("installing podnet from deploy/")?;

    let listener = tokio::net::TcpListener::from_std(host_listener)?;
    std::fs::write(state.join("ready"), b"")?;
    tracing::info!(
        port = args.api_port,
        "forwarding 127.0.0.1 to the API server"
    );
    loop {
        let (mut client, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept");
                continue;
            }
        };
        tokio::spawn(async move {
            match TcpStream::connect((Ipv4Addr::LOCALHOST, API_PORT)).await {
                Ok(mut upstream) => {
                    let _ = client.set_nodelay(true);
                    let _ = upstream.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
                Err(e) => tracing::warn!(%peer, error = %e, "API server unreachable"),
            }
        });
    }
}
