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
    /// The podnet-dns binary the cluster DNS pods run.
    #[arg(long)]
    dns_binary: PathBuf,
    /// The agents' encapsulation (`vxlan` or `host-gw`).
    #[arg(long)]
    encap: String,
    /// The agents' proxy backend.
    #[arg(long)]
    proxy_mode: String,
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

/// The cluster DNS, as a real cluster runs it: Deployment `coredns` (two
/// replicas of podnet-dns, label `k8s-app=kube-dns`) behind Service
/// `kube-dns` at 10.96.0.10. In the lab the pods run the host's podnet-dns
/// binary with a kubeconfig file (the lab projects no service-account
/// tokens), and forward nothing outside the cluster domain: the lab has no
/// upstream unless a test gives it one.
async fn ensure_cluster_dns(
    client: &kube::Client,
    binary: &std::path::Path,
    kubeconfig: &std::path::Path,
) -> anyhow::Result<()> {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Service;
    let labels = serde_json::json!({"k8s-app": "kube-dns"});
    let svc: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system",
                     "labels": {"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true", "kubernetes.io/name": "podnet-dns"}},
        "spec": {"clusterIP": "10.96.0.10", "selector": labels, "ports": [
            {"name": "dns", "port": 53, "targetPort": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "targetPort": 53, "protocol": "TCP"},
            {"name": "metrics", "port": 9153, "targetPort": 9153, "protocol": "TCP"}]},
    }))?;
    let deploy: Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "coredns", "namespace": "kube-system", "labels": labels},
        "spec": {"replicas": 2, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {"dnsPolicy": "Default", "priorityClassName": "system-cluster-critical",
                "containers": [{"name": "podnet-dns", "image": "podnet/podnet-dns:0.1.0",
                    "command": [binary.display().to_string()],
                    "args": ["--listen=0.0.0.0:53", "--metrics-listen=0.0.0.0:9153", "--zone=cluster.local",
                             "--ns-addr=10.96.0.10", "--no-forward", "--udp-workers=1",
                             format!("--kubeconfig={}", kubeconfig.display())],
                    "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"},
                              {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                              {"name": "metrics", "containerPort": 9153, "protocol": "TCP"}],
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": 9153},
                                       "periodSeconds": 1, "timeoutSeconds": 1}}]}}},
    }))?;
    // What podnet-dns may read (the API server enforces RBAC): the same
    // ClusterRole and binding as crates/podnet-dns/manifests/kube-dns.yaml.
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    let role: ClusterRole = serde_json::from_value(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "system:podnet-dns", "labels": {"k8s-app": "kube-dns"}},
        "rules": [
            {"apiGroups": [""], "resources": ["services", "pods", "namespaces"], "verbs": ["list", "watch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
        ],
    }))?;
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "system:podnet-dns", "labels": {"k8s-app": "kube-dns"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:podnet-dns"},
        "subjects": [{"kind": "ServiceAccount", "name": "podnet-dns", "namespace": "kube-system"}],
    }))?;
    let roles: kube::Api<ClusterRole> = kube::Api::all(client.clone());
    let bindings: kube::Api<ClusterRoleBinding> = kube::Api::all(client.clone());
    for r in [
        roles.create(&Default::default(), &role).await.map(drop),
        bindings
            .create(&Default::default(), &binding)
            .await
            .map(drop),
    ] {
        match r {
            Ok(()) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let svcs: kube::Api<Service> = kube::Api::namespaced(client.clone(), "kube-system");
    let deps: kube::Api<Deployment> = kube::Api::namespaced(client.clone(), "kube-system");
    for r in [
        svcs.create(&Default::default(), &svc).await.map(drop),
        deps.create(&Default::default(), &deploy).await.map(drop),
    ] {
        match r {
            Ok(()) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Restarts a node's agent when its pod is deleted, as deleting a
/// DaemonSet's pod does on a real cluster: the old agent stops, its pod is
/// removed, and the supervisor starts a new agent, which registers a new pod.
async fn restart_deleted_agents(client: kube::Client, lab: String) {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Pod;
    use kube::runtime::{WatchStreamExt, watcher};
    let pods: kube::Api<Pod> = kube::Api::namespaced(client, "kube-system");
    let cfg = watcher::Config::default().labels("k8s-app=podnet");
    let stream = watcher(pods.clone(), cfg)
        .default_backoff()
        .applied_objects();
    futures::pin_mut!(stream);
    while let Some(ev) = stream.next().await {
        let Ok(pod) = ev else { continue };
        if pod.metadata.deletion_timestamp.is_none() {
            continue;
        }
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        tracing::info!(%node, "agent pod deleted: restarting the agent");
        let (lab2, node2) = (lab.clone(), node.clone());
        let _ = tokio::task::spawn_blocking(move || super::agents::restart(&lab2, &node2)).await;
        let mut dp = kube::api::DeleteParams::default().grace_period(0);
        dp.preconditions = Some(kube::api::Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        });
        let name = pod.metadata.name.clone().unwrap_or_default();
        if let Err(e) = pods.delete(&name, &dp).await {
            tracing::warn!(%node, error = %e, "removing the old agent pod");
        }
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
    let dns_token = server.tokens.issue(
        "system:serviceaccount:kube-system:podnet-dns",
        &["system:serviceaccounts"],
    )?;
    let dns_kubeconfig = state.join("dns.kubeconfig");
    podnet_apiserver::security::write_kubeconfig(
        &dns_kubeconfig,
        &format!("podnet-{}", args.name),
        &in_cluster_url,
        &server.ca_pem,
        "podnet-dns",
        &dns_token,
    )?;
    ensure_cluster_dns(&client, &args.dns_binary, &dns_kubeconfig).await?;
    let admin = client.clone();
    tokio::spawn(async move {
        let config = podnet_controllers::ControllersConfig::default();
        if let Err(e) = podnet_controllers::run(client, config).await {
            tracing::error!(error = %e, "controllers stopped");
        }
    });

    // The node agents, supervised as a DaemonSet's pods would be.
    let agents = super::agents::AgentConfig {
        lab: args.name.clone(),
        encap: args.encap.clone(),
        proxy_mode: args.proxy_mode.clone(),
        exe_dir: std::env::current_exe()?
            .parent()
            .context("no directory for the podnet binary")?
            .to_path_buf(),
    };
    for (i, node) in args.nodes.iter().enumerate() {
        super::agents::supervise(agents.clone(), node.clone(), i);
    }
    tokio::spawn(restart_deleted_agents(admin.clone(), args.name.clone()));

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
