//! `podnet-agent`: one per node. It registers the node, keeps the routes to
//! other nodes' pods (host-gw or VXLAN), and in the lab it is the kubelet:
//! it runs the pods bound to its node and serves their logs and exec.
//!
//! The same binary carries its helpers: `launcher` (started once; forks
//! the others without an exec), `sandbox` (the process that holds a pod's
//! namespaces), `shim` (one per container run) and `image` (the lab's
//! built-in images).

mod images;
mod kubelet;
mod metrics;
mod node;
mod policy;
mod proxy;
mod routes;
mod watch;

use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "podnet-agent", version, about = "podnet's node agent")]
struct Cli {
    #[command(subcommand)]
    helper: Option<Helper>,
    #[command(flatten)]
    agent: AgentArgs,
}

/// The agent's configuration.
#[derive(clap::Args, Clone, Debug)]
pub struct AgentArgs {
    /// This node's name.
    #[arg(long, default_value = "")]
    pub node: String,
    /// This node's address (InternalIP).
    #[arg(long, default_value = "0.0.0.0")]
    pub node_ip: Ipv4Addr,
    /// Kubeconfig to reach the API server (in-cluster config when absent).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Where the agent keeps pods, logs, CNI configuration and IPAM.
    #[arg(long, default_value = "/var/lib/podnet-agent")]
    pub state_dir: PathBuf,
    /// `vxlan` or `host-gw`.
    #[arg(long, default_value = "vxlan")]
    pub encap: String,
    /// The lab's name (prefix of pod namespaces); empty on a real cluster.
    #[arg(long, default_value = "")]
    pub lab: String,
    /// CNI plugin search path.
    #[arg(long, default_value = "/opt/cni/bin")]
    pub cni_path: String,
    /// The token the API server presents to this node's endpoint.
    #[arg(long)]
    pub kubelet_token_file: Option<PathBuf>,
    /// Port of the node endpoint (logs, exec, attach).
    #[arg(long, default_value_t = 10250)]
    pub kubelet_port: u16,
    /// The cluster's pod CIDR (all nodes): service traffic from outside it
    /// is masqueraded.
    #[arg(long, default_value = "10.244.0.0/16")]
    pub cluster_cidr: ipnet::Ipv4Net,
    /// Service proxy backend: `nftables` (default) or `iptables`
    /// (kube-proxy's chains, through iptables-restore).
    #[arg(long, default_value = "nftables")]
    pub proxy_mode: String,
    /// Where `/metrics` listens (in the node's network namespace):
    /// NetworkPolicy drop counters per pod, direction and policy.
    #[arg(long, default_value = "0.0.0.0:9101")]
    pub metrics_addr: std::net::SocketAddr,
}

#[derive(Subcommand)]
enum Helper {
    /// (internal) Hold a pod's namespaces: UTS and mount of its own, the
    /// given network namespace; then wait.
    #[command(hide = true)]
    Sandbox(kubelet::sandbox::SandboxArgs),
    /// (internal) Run one container in a pod's sandbox and record how it
    /// ended, outliving the agent.
    #[command(hide = true)]
    Shim(kubelet::shim::ShimArgs),
    /// (internal) Fork sandboxes and shims for the agent that started it.
    #[command(hide = true)]
    Launcher {
        /// The launcher's end of the agent's socket pair.
        #[arg(long)]
        socket_fd: i32,
        /// Padding: room for the command lines of the helpers it forks.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        room: Vec<String>,
    },
    /// (internal) Run one of the lab's built-in images.
    #[command(hide = true)]
    Image {
        /// Image name (nginx, agnhost, pause).
        name: String,
        /// Its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Runs a helper's command line in a child of the launcher, as `main`
/// would have after an exec.
fn dispatch(argv: Vec<String>) -> i32 {
    let result = match Cli::try_parse_from(argv) {
        Ok(Cli {
            helper: Some(Helper::Sandbox(a)),
            ..
        }) => kubelet::sandbox::hold(a),
        Ok(Cli {
            helper: Some(Helper::Shim(a)),
            ..
        }) => kubelet::shim::run(a),
        Ok(_) => Err(anyhow::anyhow!(
            "the launcher runs only sandboxes and shims"
        )),
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("podnet-agent: {e:#}");
            1
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.helper {
        Some(Helper::Sandbox(a)) => kubelet::sandbox::hold(a),
        Some(Helper::Shim(a)) => kubelet::shim::run(a),
        Some(Helper::Image { name, args }) => images::run(&name, &args),
        Some(Helper::Launcher { socket_fd, .. }) => kubelet::launcher::run(socket_fd, dispatch),
        None => {
            // From the main thread, which lives as long as the agent.
            // PODNET_LAUNCHER=exec: exec each helper instead (to compare,
            // or to rule the launcher out).
            let launcher = if std::env::var("PODNET_LAUNCHER").as_deref() == Ok("exec") {
                Err(anyhow::anyhow!("PODNET_LAUNCHER=exec"))
            } else {
                std::env::current_exe()
                    .map_err(anyhow::Error::from)
                    .and_then(|exe| kubelet::launcher::start(&exe))
            };
            tracing_subscriber::fmt()
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .init();
            if let Err(e) = launcher {
                tracing::warn!(error = %format!("{e:#}"), "no launcher: sandboxes and shims are exec'd");
            }
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(run(cli.agent))
        }
    }
}

async fn run(args: AgentArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.node.is_empty(), "--node is required");
    let client = match &args.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)?;
            let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
            kube::Client::try_from(cfg)?
        }
        None => kube::Client::try_default().await?,
    };
    std::fs::create_dir_all(&args.state_dir)?;
    tracing::info!(node = %args.node, ip = %args.node_ip, encap = %args.encap, "podnet agent starting");
    let pod_cidr = node::register(&client, &args).await?;
    tracing::info!(%pod_cidr, "node registered");
    kubelet::write_cni_config(&args, &pod_cidr)?;
    let heartbeat = tokio::spawn(node::heartbeat(client.clone(), args.clone()));
    let routes = tokio::spawn(routes::run(client.clone(), args.clone(), pod_cidr));
    let proxy = tokio::spawn(proxy::run(client.clone(), args.clone()));
    let policy = tokio::spawn(policy::run(client.clone(), args.clone(), pod_cidr));
    let kubelet = tokio::spawn(kubelet::run(client.clone(), args.clone()));
    let metrics = tokio::spawn(metrics::serve(args.metrics_addr));
    tokio::select! {
        r = heartbeat => r??,
        r = routes => r??,
        r = proxy => r??,
        r = policy => r??,
        r = kubelet => r??,
        r = metrics => r??,
    }
    Ok(())
}
