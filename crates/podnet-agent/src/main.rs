//! `podnet-agent`: podnet's network on one node, run by a DaemonSet (the
//! same manifests on a real cluster and in the lab). It keeps the routes
//! or the overlay to the other nodes' pods, the service proxy,
//! NetworkPolicy enforcement and the metrics, and installs the CNI
//! configuration once all of that is programmed. It never writes a Node,
//! never heartbeats and never starts a pod: that is the kubelet's work
//! (the real one, or the lab's `podnet-lab-kubelet`).
//!
//! Subcommands: `install-cni` (the DaemonSet's init container: the plugin
//! into `/opt/cni/bin`, atomically) and `cleanup` (remove everything the
//! agent and the plugin made on this node).

mod cleanup;
mod cni_install;
mod drift;
mod drops;
mod health;
mod metrics;
mod node;
mod policy;
mod proxy;
mod routes;
mod slim;
mod watch;

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "podnet-agent", version, about = "podnet's node agent")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    agent: AgentArgs,
}

/// The agent's configuration: flags, or the environment the DaemonSet
/// gives it (the `podnet-config` ConfigMap and the downward API).
#[derive(clap::Args, Clone, Debug)]
pub struct AgentArgs {
    /// This node's name (the downward API's `spec.nodeName`).
    #[arg(long, env = "NODE_NAME", default_value = "")]
    pub node: String,
    /// Kubeconfig to reach the API server; in-cluster config when absent.
    #[arg(long, env = "PODNET_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The API server's URL, in place of the `kubernetes` Service's
    /// address of in-cluster config: where podnet replaces kube-proxy,
    /// that ClusterIP is served by the agent itself, so it cannot be how
    /// the agent reaches the API server.
    #[arg(long, env = "PODNET_API_SERVER")]
    pub api_server: Option<String>,
    /// `vxlan` or `host-gw`.
    #[arg(long, env = "PODNET_ENCAP", default_value = "vxlan")]
    pub encap: String,
    /// The cluster's pod CIDR (all nodes): service traffic from outside it
    /// is masqueraded.
    #[arg(long, env = "PODNET_CLUSTER_CIDR", default_value = "10.244.0.0/16")]
    pub cluster_cidr: ipnet::Ipv4Net,
    /// Service proxy: `nftables`, `iptables` (kube-proxy's chains), or
    /// `none` where kube-proxy stays.
    #[arg(long, env = "PODNET_PROXY_MODE", default_value = "nftables",
          value_parser = ["nftables", "iptables", "none"])]
    pub proxy_mode: String,
    /// The pods' MTU; 0: the uplink's, less 50 with VXLAN.
    #[arg(long, env = "PODNET_MTU", default_value_t = 0)]
    pub mtu: u32,
    /// Where the kubelet reads CNI configurations.
    #[arg(long, env = "PODNET_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// The plugin's IPAM state (one directory per node under it).
    #[arg(long, env = "PODNET_IPAM_DIR", default_value = "/var/lib/cni/podnet")]
    pub ipam_dir: PathBuf,
    /// Move every other CNI configuration aside (to `<dir>/.podnet-moved/`),
    /// so the kubelet can use none but podnet's (as Cilium's
    /// `cni.exclusive`).
    #[arg(long, env = "PODNET_CNI_EXCLUSIVE", default_value_t = false,
          action = clap::ArgAction::Set)]
    pub cni_exclusive: bool,
    /// Where `/metrics`, `/healthz` and `/readyz` listen.
    #[arg(long, env = "PODNET_METRICS_ADDR", default_value = "0.0.0.0:9101")]
    pub metrics_addr: std::net::SocketAddr,
    /// The nfnetlink_log group the policy table's drop rules log to (read
    /// by this agent in its node's network namespace).
    #[arg(long, env = "PODNET_DROP_LOG_GROUP", default_value_t = 7301)]
    pub drop_log_group: u16,
    /// Policy drops logged per second and direction on this node, at
    /// most (nft `limit rate`); 0: no drop records (`podnet drops` shows
    /// none from this node; the counters still count every packet).
    #[arg(long, env = "PODNET_DROP_LOG_RATE", default_value_t = 100)]
    pub drop_log_rate: u32,
    /// Policy drops logged at once above the rate (nft `burst`).
    #[arg(long, env = "PODNET_DROP_LOG_BURST", default_value_t = 50)]
    pub drop_log_burst: u32,
    /// Seconds between drift checks: routes, FDB and neighbour entries,
    /// and the proxy and policy tables are compared with what the agent
    /// programmed, and whatever differs is programmed again; 0: never.
    #[arg(long, env = "PODNET_RECONCILE_INTERVAL", default_value_t = 10)]
    pub reconcile_interval: u64,
    /// This node's address (InternalIP), read from its Node.
    #[arg(skip = Ipv4Addr::UNSPECIFIED)]
    pub node_ip: Ipv4Addr,
    /// The link holding the node's address.
    #[arg(skip)]
    pub uplink: String,
}

#[derive(Subcommand)]
enum Command {
    /// Copy the CNI plugin into the node's plugin directory, atomically
    /// (the DaemonSet's init container). The kubelet never sees a
    /// configuration before the binary: the agent writes that later.
    InstallCni(cni_install::InstallArgs),
    /// Remove every link, route, FDB and neighbour entry, nft table,
    /// iptables chain, CNI file and state file podnet made on this node,
    /// and nothing else.
    Cleanup(cleanup::CleanupArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match cli.command {
        Some(Command::InstallCni(a)) => cni_install::install_binary(&a),
        Some(Command::Cleanup(a)) => cleanup::run(&a),
        None => {
            few_malloc_arenas();
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(run(cli.agent))
        }
    }
}

/// Caps glibc's malloc at two arenas. By default every thread that
/// allocates may get an arena of its own (up to 8 per core), and memory a
/// big list freed in one arena is not reused by the next thread's burst:
/// at the scalability envelope that was 60 MiB of the agent's peak RSS
/// (`bench/agent-scale`), for no measurable CPU. `MALLOC_ARENA_MAX` set by
/// the operator still wins, as glibc reads it first.
fn few_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a tunable; called before any thread
        // of ours exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// An API client: the kubeconfig if given; else in-cluster config, with
/// the server replaced by `--api-server` when set.
async fn client(args: &AgentArgs) -> anyhow::Result<kube::Client> {
    let mut cfg = match &args.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        None => kube::Config::incluster().context(
            "no in-cluster configuration (run in a pod with a ServiceAccount, or give --kubeconfig)",
        )?,
    };
    if let Some(url) = &args.api_server {
        cfg.cluster_url = url
            .parse()
            .with_context(|| format!("--api-server {url:?} is not a URL"))?;
    }
    Ok(kube::Client::try_from(cfg)?)
}

async fn run(mut args: AgentArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.node.is_empty(),
        "no node name: set NODE_NAME (the downward API's spec.nodeName) or --node"
    );
    let client = client(&args).await?;
    tracing::info!(node = %args.node, encap = %args.encap, proxy = %args.proxy_mode, "podnet agent starting");
    let metrics = tokio::spawn(metrics::serve(args.metrics_addr));
    let node = node::wait_until_ready(&client, &args.node).await?;
    args.node_ip = node.ip;
    args.uplink = node::uplink_of(node.ip).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "no link holds the node's address; assuming eth0");
        "eth0".into()
    });
    tracing::info!(pod_cidr = %node.pod_cidr, ip = %node.ip, uplink = %args.uplink, "node known");
    health::set_phase("programming the dataplane");
    let (routes_done, routes_rx) = tokio::sync::oneshot::channel();
    let (proxy_done, proxy_rx) = tokio::sync::oneshot::channel();
    let (policy_done, policy_rx) = tokio::sync::oneshot::channel();
    let routes = tokio::spawn(routes::run(
        client.clone(),
        args.clone(),
        node.pod_cidr,
        routes_done,
    ));
    let proxy = tokio::spawn(proxy::run(client.clone(), args.clone(), proxy_done));
    let policy = tokio::spawn(policy::run(
        client.clone(),
        args.clone(),
        node.pod_cidr,
        policy_done,
    ));
    let install = tokio::spawn(cni_install::keep_conflist(
        args.clone(),
        node.pod_cidr,
        async move {
            let _ = routes_rx.await;
            let _ = proxy_rx.await;
            let _ = policy_rx.await;
        },
    ));
    tokio::select! {
        r = routes => r??,
        r = proxy => r??,
        r = policy => r??,
        r = install => r??,
        r = metrics => r??,
    }
    Ok(())
}
