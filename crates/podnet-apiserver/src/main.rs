//! `podnet-apiserver`: runs the lab's Kubernetes API server, or issues a
//! node token from its state directory.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "The lab's Kubernetes API server")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the API.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:6443")]
        listen: SocketAddr,
        /// State directory (store, CA, tokens, admin.kubeconfig).
        #[arg(long)]
        state_dir: PathBuf,
        /// Service CIDR.
        #[arg(long, default_value = "10.96.0.0/12")]
        service_cidr: ipnet::Ipv4Net,
        /// NodePort range, as LOW-HIGH.
        #[arg(long, default_value = "30000-32767")]
        node_port_range: String,
        /// Address published as the `kubernetes` Service's endpoint.
        #[arg(long)]
        advertise_address: Option<std::net::IpAddr>,
        /// Extra names or IPs for the serving certificate.
        #[arg(long = "tls-san")]
        tls_san: Vec<String>,
        /// Cluster name in the kubeconfig.
        #[arg(long, default_value = "podnet")]
        cluster_name: String,
    },
    /// Issue (or print the existing) token of a node agent.
    IssueNodeToken {
        /// State directory of the server.
        #[arg(long)]
        state_dir: PathBuf,
        /// Node name.
        #[arg(long)]
        node: String,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve {
            listen,
            state_dir,
            service_cidr,
            node_port_range,
            advertise_address,
            tls_san,
            cluster_name,
        } => {
            let (lo, hi) = node_port_range
                .split_once('-')
                .context("--node-port-range must be LOW-HIGH")?;
            let mut cfg = podnet_apiserver::Config::new(listen, state_dir);
            cfg.service_cidr = service_cidr;
            cfg.node_ports = (
                lo.parse().context("node port range low")?,
                hi.parse().context("node port range high")?,
            );
            cfg.advertise_address = advertise_address;
            cfg.extra_sans = tls_san;
            cfg.cluster_name = cluster_name;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("tokio runtime")?;
            rt.block_on(async move {
                let server = podnet_apiserver::Server::start(cfg)
                    .await
                    .context("starting the API server")?;
                println!(
                    "serving {} (kubeconfig {})",
                    server.url,
                    server.kubeconfig.display()
                );
                tokio::select! {
                    _ = server.wait_ref() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                anyhow::Ok(())
            })
        }
        Cmd::IssueNodeToken { state_dir, node } => {
            let tokens = podnet_apiserver::security::Tokens::load_or_create(&state_dir)
                .with_context(|| format!("tokens in {}", state_dir.display()))?;
            println!("{}", tokens.issue_node(&node).context("issuing the token")?);
            Ok(())
        }
    }
}
