//! podnet-dns: the cluster DNS server binary (see README.md).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use podnet_core::dns::{Config, Index, PodMode, normalize_zone};
use podnet_dns::forward::{Forwarder, parse_upstream, upstreams_from_resolv_conf};
use podnet_dns::server::{self, Listen, Shared};
use podnet_dns::source;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Pods {
    Insecure,
    Verified,
    Disabled,
}

/// Authoritative DNS for the cluster zone, fed by the Kubernetes API.
#[derive(Debug, Parser)]
#[command(name = "podnet-dns", version)]
struct Args {
    /// DNS address (UDP and TCP); repeat for several.
    #[arg(long, default_value = "0.0.0.0:53")]
    listen: Vec<SocketAddr>,
    /// Address of /health, /ready and /metrics.
    #[arg(long, default_value = "0.0.0.0:9153")]
    metrics_listen: SocketAddr,
    /// The cluster domain.
    #[arg(long, default_value = "cluster.local")]
    zone: String,
    /// TTL of answers from the index, seconds.
    #[arg(long, default_value_t = 30)]
    ttl: u32,
    /// TTL of negative answers (SOA minimum), seconds.
    #[arg(long, default_value_t = 30)]
    negative_ttl: u32,
    /// How `a-b-c-d.<ns>.pod.<zone>` is answered.
    #[arg(long, value_enum, default_value_t = Pods::Insecure)]
    pods: Pods,
    /// Address of this DNS service, served as ns.dns.<zone> (repeatable).
    #[arg(long)]
    ns_addr: Vec<std::net::IpAddr>,
    /// Upstream resolver (IP or IP:port; repeatable). Default: the
    /// nameservers of --resolv-conf.
    #[arg(long, env = "PODNET_DNS_UPSTREAM", value_delimiter = ',')]
    upstream: Vec<String>,
    /// resolv.conf to read upstreams from when no --upstream is given.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// Do not forward names outside the zone (answer REFUSED).
    #[arg(long, env = "PODNET_DNS_NO_FORWARD", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    no_forward: bool,
    /// Do not answer `<service>.<namespace>` (the name BusyBox's nslookup
    /// sends for `nslookup kubernetes.default`) for existing Services.
    #[arg(long)]
    no_short_service_names: bool,
    /// Forwarder cache capacity (answers).
    #[arg(long, default_value_t = 10_000)]
    cache_size: usize,
    /// Kubeconfig to watch the API with (default: in-cluster config).
    #[arg(long, conflicts_with = "zone_from_file")]
    kubeconfig: Option<PathBuf>,
    /// Serve a static JSON file of Services/EndpointSlices/Pods/Namespaces
    /// instead of watching the API (reloaded on SIGHUP).
    #[arg(long)]
    zone_from_file: Option<PathBuf>,
    /// UDP worker threads (all reading the same socket); 0: one per CPU.
    #[arg(long, env = "PODNET_DNS_UDP_WORKERS", default_value_t = 0)]
    udp_workers: usize,
    /// Delay between a change and the rebuild it triggers, milliseconds.
    #[arg(long, default_value_t = 5)]
    debounce_ms: u64,
    /// Seconds to keep answering after SIGTERM (with `/ready` failing), so
    /// clients whose flows still point here are answered while the
    /// endpoint is withdrawn (CoreDNS's `health { lameduck 5s }`).
    #[arg(long, default_value_t = 5)]
    lameduck_secs: u64,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let zone = normalize_zone(&args.zone).context("--zone")?;
    let config = Config {
        zone,
        ttl: args.ttl,
        negative_ttl: args.negative_ttl,
        pods: match args.pods {
            Pods::Insecure => PodMode::Insecure,
            Pods::Verified => PodMode::Verified,
            Pods::Disabled => PodMode::Disabled,
        },
        ns_addrs: args.ns_addr.clone(),
        serial: 1,
        short_service_names: !args.no_short_service_names,
    };
    let forwarder = if args.no_forward {
        None
    } else {
        let ups = if args.upstream.is_empty() {
            upstreams_from_resolv_conf(&args.resolv_conf).context("finding upstream resolvers")?
        } else {
            args.upstream
                .iter()
                .map(|u| parse_upstream(u))
                .collect::<Result<Vec<_>, _>>()
                .context("--upstream")?
        };
        tracing::info!(upstreams = ?ups, "forwarding names outside the zone");
        Some(Forwarder::new(ups, args.cache_size))
    };
    let shared = Shared::new(Index::empty(config.clone()), forwarder);
    let listen = Listen {
        dns: args.listen.clone(),
        http: Some(args.metrics_listen),
        udp_workers: match args.udp_workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        },
    };
    let running = server::start(shared.clone(), &listen)
        .await
        .with_context(|| format!("binding {:?} and {}", args.listen, args.metrics_listen))?;
    tracing::info!(dns = ?running.dns, http = ?running.http, zone = %config.zone, "podnet-dns serving");
    let source = async {
        match &args.zone_from_file {
            Some(path) => source::run_file(shared.clone(), config.clone(), path.clone()).await,
            None => {
                let client = source::client(args.kubeconfig.as_deref()).await?;
                source::run_kube(
                    shared.clone(),
                    config.clone(),
                    client,
                    Duration::from_millis(args.debounce_ms),
                )
                .await
            }
        }
    };
    let mut source = std::pin::pin!(source);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = &mut source => r?,
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
        _ = term.recv() => {
            shared.mark_not_ready();
            tracing::info!(seconds = args.lameduck_secs, "SIGTERM: lame duck, still answering");
            tokio::select! {
                r = &mut source => r?,
                _ = tokio::time::sleep(Duration::from_secs(args.lameduck_secs)) => {}
                _ = term.recv() => {}
            }
            tracing::info!("lame duck over; exiting");
        }
    }
    drop(running);
    Ok(())
}
