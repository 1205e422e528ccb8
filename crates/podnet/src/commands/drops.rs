//! `podnet drops [-f] [--pod POD] [-n NS]`: policy drops on every node,
//! each naming the policies that isolate it, as `hubble observe --verdict
//! DROPPED` does. The agents read a rate-limited log of their policy
//! table's drops and serve it (`GET /drops` on their metrics port); this
//! finds the agents through the API (DaemonSet `kube-system/podnet`'s
//! pods), reaches each one (in a lab from inside its node's network
//! namespace, on a cluster at the agent pod's address), and merges their
//! streams.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::Value;

/// Arguments of `podnet drops`.
#[derive(clap::Args)]
pub struct Args {
    /// Keep following: print new drops as they happen.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only drops from or to this pod (`NAME` or `NS/NAME`).
    #[arg(long)]
    pub pod: Option<String>,
    /// Only drops from or to pods of this namespace (with `--pod`: the
    /// pod's namespace).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// At most this many recent drops per node first.
    #[arg(long, default_value_t = 100)]
    pub last: usize,
    /// `text` or `json` (one JSON object per line, as the agents send).
    #[arg(short = 'o', long, default_value = "text")]
    pub output: String,
    /// The agents' metrics port (`PODNET_METRICS_ADDR`).
    #[arg(long, default_value_t = 9101)]
    pub port: u16,
    /// Kubeconfig (default: $KUBECONFIG or ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<std::path::PathBuf>,
}

/// An agent to read from: its node and address.
struct Agent {
    node: String,
    ip: String,
}

/// Runs `podnet drops`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let agents = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(agents(&args.kubeconfig))?;
    anyhow::ensure!(
        !agents.is_empty(),
        "no podnet agent pods (kube-system, k8s-app=podnet) are running"
    );
    let filter = Filter::new(&args);
    let (tx, rx) = mpsc::channel::<Result<Value, String>>();
    let path = format!(
        "/drops?last={}{}",
        args.last,
        if args.follow { "&follow=true" } else { "" }
    );
    let mut readers = Vec::new();
    for a in agents {
        let tx = tx.clone();
        let path = path.clone();
        let port = args.port;
        // A lab's node is a network namespace of that name on this machine.
        let in_lab = std::path::Path::new("/run/netns").join(&a.node).exists();
        readers.push(std::thread::spawn(move || {
            if let Err(e) = read_agent(&a, in_lab, port, &path, &tx) {
                let _ = tx.send(Err(format!("{}: {e:#}", a.node)));
            }
        }));
    }
    drop(tx);
    let json = args.output == "json";
    let mut out = std::io::stdout().lock();
    if args.follow {
        for msg in rx {
            match msg {
                Ok(v) if filter.keeps(&v) => {
                    writeln!(out, "{}", render(&v, json))?;
                    out.flush()?;
                }
                Ok(_) => {}
                Err(e) => eprintln!("podnet drops: {e}"),
            }
        }
        return Ok(());
    }
    let mut all = Vec::new();
    let mut failed = Vec::new();
    for msg in rx {
        match msg {
            Ok(v) => all.push(v),
            Err(e) => failed.push(e),
        }
    }
    all.sort_by_key(|v| v["time_ms"].as_u64().unwrap_or(0));
    for v in all.iter().filter(|v| filter.keeps(v)) {
        writeln!(out, "{}", render(v, json))?;
    }
    for e in &failed {
        eprintln!("podnet drops: {e}");
    }
    anyhow::ensure!(
        failed.is_empty(),
        "{} agent(s) could not be read",
        failed.len()
    );
    Ok(())
}

/// The agents' pods from the API.
async fn agents(kubeconfig: &Option<std::path::PathBuf>) -> anyhow::Result<Vec<Agent>> {
    let client = crate::diag::world::client(kubeconfig)
        .await
        .context("reaching the API server")?;
    let pods: Api<Pod> = Api::namespaced(client, "kube-system");
    let list = pods
        .list(&ListParams::default().labels("k8s-app=podnet"))
        .await
        .context("listing the podnet agent pods")?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|p| {
            let node = p.spec.as_ref()?.node_name.clone()?;
            let ip = p.status.as_ref()?.pod_ip.clone()?;
            Some(Agent { node, ip })
        })
        .collect())
}

/// Connects to one agent and sends each record it streams to `tx`.
fn read_agent(
    a: &Agent,
    in_lab: bool,
    port: u16,
    path: &str,
    tx: &mpsc::Sender<Result<Value, String>>,
) -> anyhow::Result<()> {
    let addr = format!("{}:{port}", a.ip);
    let sock: std::net::SocketAddr = addr
        .parse()
        .with_context(|| format!("agent address {addr}"))?;
    let connect = || TcpStream::connect_timeout(&sock, Duration::from_secs(3));
    // A lab node's agent listens in the node's network namespace, which
    // the host does not route into: the socket is made there.
    let stream: TcpStream = if in_lab {
        // Not a `NetNs` guard: that would delete the node's namespace.
        let path = std::path::Path::new("/run/netns").join(&a.node);
        let ns =
            std::fs::File::open(&path).with_context(|| format!("node {} namespace", a.node))?;
        use std::os::fd::AsFd;
        podnet_kernel::netns::run_in(ns.as_fd(), &path, || {
            connect().map_err(|e| anyhow::anyhow!("connecting to the agent at {addr}: {e}"))
        })??
    } else {
        connect().with_context(|| format!("connecting to the agent at {addr}"))?
    };
    let mut w = stream.try_clone()?;
    write!(
        w,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/x-ndjson\r\nConnection: close\r\n\r\n"
    )?;
    w.flush()?;
    let mut r = BufReader::new(stream);
    let mut status = String::new();
    r.read_line(&mut status)?;
    anyhow::ensure!(
        status.split_whitespace().nth(1) == Some("200"),
        "the agent answered {:?} (an agent older than `podnet drops`?)",
        status.trim()
    );
    let mut chunked = false;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        let h = h.to_ascii_lowercase();
        if h.starts_with("transfer-encoding:") && h.contains("chunked") {
            chunked = true;
        }
    }
    let mut pending = Vec::new();
    let mut emit = |bytes: &[u8]| -> bool {
        pending.extend_from_slice(bytes);
        while let Some(i) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            if let Ok(v) = serde_json::from_slice::<Value>(&line)
                && tx.send(Ok(v)).is_err()
            {
                return false;
            }
        }
        true
    };
    if chunked {
        loop {
            let mut size = String::new();
            if r.read_line(&mut size)? == 0 {
                break;
            }
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .context("chunk size")?;
            if n == 0 {
                break;
            }
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk)?;
            if !emit(&chunk[..n]) {
                break;
            }
        }
    } else {
        let mut buf = [0u8; 8192];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 || !emit(&buf[..n]) {
                break;
            }
        }
    }
    Ok(())
}

/// `--pod` / `-n`: a drop is kept when either side is the pod (or in the
/// namespace).
struct Filter {
    pod: Option<String>,
    namespace: Option<String>,
}

impl Filter {
    fn new(args: &Args) -> Self {
        let pod = args.pod.as_ref().map(|p| match p.split_once('/') {
            Some(_) => p.clone(),
            None => format!("{}/{p}", args.namespace.as_deref().unwrap_or("default")),
        });
        Filter {
            pod,
            namespace: args.namespace.clone(),
        }
    }

    fn keeps(&self, v: &Value) -> bool {
        let sides = [v["src"]["pod"].as_str(), v["dst"]["pod"].as_str()];
        if let Some(p) = &self.pod {
            return sides.contains(&Some(p.as_str()));
        }
        if let Some(ns) = &self.namespace {
            return sides
                .iter()
                .flatten()
                .any(|s| s.split_once('/').is_some_and(|(n, _)| n == ns));
        }
        true
    }
}

/// `2026-12-05T18:40:01.123Z` from Unix milliseconds (UTC).
fn timestamp(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

fn side(v: &Value) -> String {
    let who = v["pod"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v["ip"].as_str().unwrap_or("?").to_string());
    match v["port"].as_u64() {
        Some(p) if p > 0 => format!("{who}:{p}"),
        _ => who,
    }
}

/// One drop as a line: time, node, source, destination:port/proto,
/// direction, and the isolating policies.
fn render(v: &Value, json: bool) -> String {
    if json {
        return v.to_string();
    }
    let policies: Vec<&str> = v["policies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    format!(
        "{} {} {} -> {}/{} DROPPED {} by {}",
        timestamp(v["time_ms"].as_u64().unwrap_or(0)),
        v["node"].as_str().unwrap_or("?"),
        side(&v["src"]),
        side(&v["dst"]),
        v["proto"].as_str().unwrap_or("?"),
        v["direction"].as_str().unwrap_or("?").to_ascii_uppercase(),
        if policies.is_empty() {
            "(no policy known to the agent)".to_string()
        } else {
            policies.join(", ")
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_drop_line_and_filters() {
        let v: Value = serde_json::from_str(r#"{"seq":1,"time_ms":1796496001123,"node":"lab-worker2","direction":"ingress","proto":"TCP","src":{"ip":"10.244.1.2","port":40000,"pod":"x/b"},"dst":{"ip":"10.244.2.3","port":80,"pod":"x/a"},"policies":["x/deny"]}"#).unwrap();
        assert_eq!(
            render(&v, false),
            "2026-12-05T18:40:01.123Z lab-worker2 x/b:40000 -> x/a:80/TCP DROPPED INGRESS by x/deny"
        );
        let f = |pod: Option<&str>, ns: Option<&str>| Filter {
            pod: pod.map(str::to_string),
            namespace: ns.map(str::to_string),
        };
        assert!(f(Some("x/a"), None).keeps(&v));
        assert!(!f(Some("x/c"), None).keeps(&v));
        assert!(f(None, Some("x")).keeps(&v));
        assert!(!f(None, Some("y")).keeps(&v));
    }
}
