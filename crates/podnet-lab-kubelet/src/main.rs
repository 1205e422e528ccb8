//! `podnet-lab-kubelet`: the lab's kubelet, one per lab node. It registers
//! the node and keeps its Ready condition, and runs the pods bound to it:
//! sandboxes, containers under shims, the built-in images, logs, exec and
//! attach. It is the lab's stand-in for kubelet + containerd; on a real
//! cluster it does not exist, and `podnet-agent` (the network) runs beside
//! the real kubelet exactly as it runs beside this one.
//!
//! The same binary carries its helpers: `launcher` (started once; forks
//! the others without an exec), `sandbox` (the process that holds a pod's
//! namespaces), `shim` (one per container run) and `image` (the lab's
//! built-in images).

mod builtin_images;
mod checkpoint;
mod events;
mod images;
mod kubelet;
mod launcher;
mod network;
mod node;
mod node_root;
mod pod;
mod pod_config;
mod sandbox;
mod shim;
mod streams;

use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use kubelet::{Kubelet, PodHandle, write_atomic};

/// The environment variable that marks every process of a lab
/// (`PODNET_LAB=<lab>`): set by the lab daemon, inherited by the kubelet,
/// its launcher, sandboxes, shims and built-in images (a forked process
/// shows its parent's environment in `/proc/<pid>/environ`), so `podnet
/// down` finds the lab's processes by what they are. Containers exec'd
/// from the host's filesystem do not carry it (their environment is the
/// pod's); they are found by the cgroup and their shim.
pub const LAB_ENV: &str = "PODNET_LAB";

#[derive(Parser)]
#[command(
    name = "podnet-lab-kubelet",
    version,
    about = "the podnet lab's kubelet (lab only)"
)]
struct Cli {
    #[command(subcommand)]
    helper: Option<Helper>,
    #[command(flatten)]
    kubelet: KubeletArgs,
}

/// The kubelet's configuration, as the lab daemon starts it.
#[derive(clap::Args, Clone, Debug)]
pub struct KubeletArgs {
    /// This node's name.
    #[arg(long, default_value = "")]
    pub node: String,
    /// This node's address (InternalIP).
    #[arg(long, default_value = "0.0.0.0")]
    pub node_ip: Ipv4Addr,
    /// Kubeconfig to reach the API server (identity `system:node:<node>`).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Where the kubelet keeps pods, logs and checkpoints.
    #[arg(long, default_value = "/var/lib/podnet-lab-kubelet")]
    pub state_dir: PathBuf,
    /// The node's own filesystem: `etc/cni/net.d`, `opt/cni/bin` and
    /// `var/lib/cni` under it are what this node's processes see at those
    /// paths (hostPath volumes, the CNI plugin, the conflist), as a kind
    /// node has a filesystem of its own.
    #[arg(long)]
    pub node_root: Option<PathBuf>,
    /// The lab's name (prefix of pod namespaces).
    #[arg(long, default_value = "")]
    pub lab: String,
    /// CNI plugin search path (node paths).
    #[arg(long, default_value = "/opt/cni/bin:/usr/lib/cni")]
    pub cni_path: String,
    /// Where the node's CNI configuration is looked for (node path).
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// The token the API server presents to this node's endpoint.
    #[arg(long)]
    pub kubelet_token_file: Option<PathBuf>,
    /// Port of the node endpoint (logs, exec, attach).
    #[arg(long, default_value_t = 10250)]
    pub kubelet_port: u16,
    /// Where podnet's own binaries are: the lab's image of podnet
    /// (`ghcr.io/podnet/podnet`) runs them from here.
    #[arg(long)]
    pub podnet_bin_dir: Option<PathBuf>,
    /// The address pods reach the API server at (the `kubernetes`
    /// Service), for `KUBERNETES_SERVICE_HOST`.
    #[arg(long, default_value = "10.96.0.1")]
    pub kubernetes_service_host: Ipv4Addr,
}

#[derive(Subcommand)]
enum Helper {
    /// (internal) Hold a pod's namespaces: UTS and mount of its own, the
    /// given network namespace; then wait.
    #[command(hide = true)]
    Sandbox(sandbox::SandboxArgs),
    /// (internal) Run one container in a pod's sandbox and record how it
    /// ended, outliving the kubelet.
    #[command(hide = true)]
    Shim(shim::ShimArgs),
    /// (internal) Fork sandboxes and shims for the kubelet that started it.
    #[command(hide = true)]
    Launcher {
        /// The launcher's end of the kubelet's socket pair.
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
        }) => sandbox::hold(a),
        Ok(Cli {
            helper: Some(Helper::Shim(a)),
            ..
        }) => shim::run(a),
        Ok(_) => Err(anyhow::anyhow!(
            "the launcher runs only sandboxes and shims"
        )),
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("podnet-lab-kubelet: {e:#}");
            1
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.helper {
        Some(Helper::Sandbox(a)) => sandbox::hold(a),
        Some(Helper::Shim(a)) => shim::run(a),
        Some(Helper::Image { name, args }) => builtin_images::run(&name, &args),
        Some(Helper::Launcher { socket_fd, .. }) => launcher::run(socket_fd, dispatch),
        None => {
            // Still single-threaded: the node's own filesystem is mounted
            // in a mount namespace of the kubelet's, which every sandbox,
            // shim and CNI plugin it starts inherits.
            if let Some(root) = &cli.kubelet.node_root {
                node_root::enter(root)?;
                // A node's hostname is its name (hostNetwork pods see it,
                // as on a kind node); the host's stays as it is.
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUTS)?;
                nix::unistd::sethostname(&cli.kubelet.node)?;
            }
            // From the main thread, which lives as long as the kubelet.
            // PODNET_LAUNCHER=exec: exec each helper instead (to compare,
            // or to rule the launcher out).
            let launcher = if std::env::var("PODNET_LAUNCHER").as_deref() == Ok("exec") {
                Err(anyhow::anyhow!("PODNET_LAUNCHER=exec"))
            } else {
                std::env::current_exe()
                    .map_err(anyhow::Error::from)
                    .and_then(|exe| launcher::start(&exe))
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
                .block_on(run(cli.kubelet))
        }
    }
}

async fn run(args: KubeletArgs) -> anyhow::Result<()> {
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
    tracing::info!(node = %args.node, ip = %args.node_ip, "podnet lab kubelet starting");
    let network = network::watch(args.cni_conf_dir.clone());
    node::register(&client, &args, &network.borrow()).await?;
    tracing::info!("node registered");
    let heartbeat = tokio::spawn(node::heartbeat(
        client.clone(),
        args.clone(),
        network.clone(),
    ));
    let kubelet = tokio::spawn(kubelet::run(client.clone(), args.clone(), network));
    tokio::select! {
        r = heartbeat => r??,
        r = kubelet => r??,
    }
    Ok(())
}
