//! `podnet up`: bring a lab cluster up, or report the one already up.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::lab::{self, Encap, LabRecord, NodeRecord, topology};

/// What a lab runs, all beside `podnet`: the lab's kubelet, and podnet's
/// own binaries, which the lab's kubelets run for the image
/// `ghcr.io/podnet/podnet` that `deploy/` names.
pub const LAB_BINARIES: [&str; 4] = [
    "podnet-lab-kubelet",
    "podnet-agent",
    "podnet-cni",
    "podnet-dns",
];

/// Arguments of `podnet up`.
#[derive(clap::Args)]
pub struct Args {
    /// The lab's name (several labs can run side by side).
    #[arg(long, default_value = "lab")]
    pub name: String,
    /// Worker nodes besides the control plane.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// How pod traffic crosses nodes.
    #[arg(long, value_enum, default_value = "vxlan")]
    pub encap: Encap,
    /// Write the kubeconfig here instead of merging it into ~/.kube/config.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The agents' service proxy: `nftables` (maps, O(1) rules) or
    /// `iptables` (kube-proxy's KUBE-* chains, for `iptables -t nat -L`).
    #[arg(long, value_parser = ["nftables", "iptables"], default_value = "nftables")]
    pub proxy_mode: String,
    /// Whether the control plane gives nodes their pod CIDRs
    /// (kube-controller-manager's `--allocate-node-cidrs`). With `false`
    /// the nodes stay NotReady until each gets `spec.podCIDRs` by hand
    /// (`kubectl patch node`), and `up` does not wait for them.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub allocate_node_cidrs: bool,
    /// A `podnet-config` setting for this lab (`KEY=VALUE`, repeatable),
    /// e.g. `--config PODNET_RECONCILE_INTERVAL=60` or
    /// `--config PODNET_DROP_LOG_RATE=20`.
    #[arg(long = "config", value_name = "KEY=VALUE")]
    pub config: Vec<String>,
}

fn step(msg: &str) {
    println!(" • {msg}");
}

/// Runs `podnet up`.
pub fn run(args: Args) -> anyhow::Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("podnet up makes network namespaces: run it as root");
    }
    if args.name.is_empty()
        || args.name.len() > 20
        || !args
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        bail!("--name must be 1-20 characters of a-z, 0-9 and '-'");
    }
    if let Some(rec) = LabRecord::load(&args.name) {
        if lab::alive(rec.daemon_pid) {
            println!("Lab {:?} is already up.", args.name);
            print_usage(&rec);
            return Ok(());
        }
        return resume(rec);
    } else {
        super::down::teardown(&args.name, None, false);
    }
    let started = Instant::now();
    let state = lab::state_dir(&args.name);
    std::fs::create_dir_all(state.join("logs"))?;
    let names = lab::node_names(&args.name, args.workers);
    let exe_dir = std::env::current_exe()?
        .parent()
        .context("no directory for the podnet binary")?
        .to_path_buf();
    for bin in LAB_BINARIES {
        if !exe_dir.join(bin).exists() {
            bail!(
                "{bin} is not beside podnet in {} (build it: cargo build -p podnet -p podnet-lab-kubelet -p podnet-agent -p podnet-cni -p podnet-dns)",
                exe_dir.display()
            );
        }
    }
    let result = bring_up(&args, &state, &names, &exe_dir);
    match result {
        Ok(rec) => {
            println!(
                "Lab {:?} is up: {} nodes, {} encapsulation, in {:.1}s.",
                args.name,
                names.len(),
                args.encap.as_str(),
                started.elapsed().as_secs_f64()
            );
            print_usage(&rec);
            Ok(())
        }
        Err(e) => {
            eprintln!("podnet up failed: {e:#}\ncleaning up what was made");
            super::down::teardown(&args.name, LabRecord::load(&args.name).as_ref(), false);
            Err(e)
        }
    }
}

fn bring_up(
    args: &Args,
    state: &Path,
    names: &[String],
    exe_dir: &Path,
) -> anyhow::Result<LabRecord> {
    step("making the underlay and the nodes' namespaces");
    topology::create_underlay(&args.name)?;
    lab::remains::record_netns(&args.name, &topology::underlay(&args.name))?;
    let mut nodes = Vec::new();
    let big = (args.encap == lab::Encap::HostGw).then_some(topology::BIG_TCP_SIZE);
    for (i, name) in names.iter().enumerate() {
        topology::create_node(&args.name, i, name, big)?;
        lab::remains::record_netns(&args.name, name)?;
        nodes.push(NodeRecord {
            name: name.clone(),
            ip: lab::node_ip(i),
        });
    }
    let api_port = free_port()?;
    let kubeconfig = args
        .kubeconfig
        .clone()
        .unwrap_or_else(|| state.join("kubeconfig"));
    std::fs::create_dir_all(state.join("logs"))?;
    let mut rec = LabRecord {
        name: args.name.clone(),
        encap: args.encap,
        api_port,
        daemon_pid: None,
        nodes,
        kubeconfig: kubeconfig.clone(),
        mount_points: lab::make_mount_points()?,
        proxy_mode: args.proxy_mode.clone(),
        allocate_node_cidrs: args.allocate_node_cidrs,
        config: args.config.clone(),
    };
    rec.save()?;

    start_control_plane(&mut rec, exe_dir, args.kubeconfig.is_some())?;
    Ok(rec)
}

/// `up` on a lab whose control plane died (killed, or the host rebooted):
/// the same cluster again, from its store. Node namespaces that are gone
/// (a reboot) are made again; kubelets still running are adopted, the
/// others start and take their pods back from their checkpoints (or make
/// them again); the API server reopens its store, so every object, every
/// resourceVersion and the watch history are what they were.
fn resume(mut rec: LabRecord) -> anyhow::Result<()> {
    let started = Instant::now();
    step("the lab's control plane is not running; resuming the cluster from its store");
    let exe_dir = exe_dir()?;
    if !Path::new("/run/netns")
        .join(topology::underlay(&rec.name))
        .exists()
    {
        topology::create_underlay(&rec.name)?;
        lab::remains::record_netns(&rec.name, &topology::underlay(&rec.name))?;
    }
    let big = (rec.encap == lab::Encap::HostGw).then_some(topology::BIG_TCP_SIZE);
    for (i, n) in rec.nodes.clone().iter().enumerate() {
        if !Path::new("/run/netns").join(&n.name).exists() {
            step(&format!("making node {} again", n.name));
            topology::create_node(&rec.name, i, &n.name, big)?;
            lab::remains::record_netns(&rec.name, &n.name)?;
        }
    }
    rec.mount_points.extend(lab::make_mount_points()?);
    let own_kubeconfig = rec.kubeconfig != lab::state_dir(&rec.name).join("kubeconfig");
    start_control_plane(&mut rec, &exe_dir, own_kubeconfig)?;
    println!(
        "Lab {:?} is up again: {} nodes, in {:.1}s.",
        rec.name,
        rec.nodes.len(),
        started.elapsed().as_secs_f64()
    );
    print_usage(&rec);
    Ok(())
}

/// Where `podnet` and its sibling binaries are.
fn exe_dir() -> anyhow::Result<PathBuf> {
    Ok(std::env::current_exe()?
        .parent()
        .context("no directory for the podnet binary")?
        .to_path_buf())
}

/// Starts the control-plane daemon for `rec` and waits until the nodes are
/// Ready and the cluster DNS has a ready endpoint.
fn start_control_plane(
    rec: &mut LabRecord,
    exe_dir: &Path,
    own_kubeconfig: bool,
) -> anyhow::Result<()> {
    let state = lab::state_dir(&rec.name);
    let names: Vec<String> = rec.nodes.iter().map(|n| n.name.clone()).collect();
    let _ = std::fs::remove_file(state.join("ready"));
    step(
        "starting the API server, the controllers and a kubelet per node; installing podnet from deploy/",
    );
    let mut daemon = Command::new(exe_dir.join("podnet"));
    daemon
        .arg("lab-daemon")
        .args(["--name", &rec.name, "--api-port", &rec.api_port.to_string()])
        .args([
            "--netns",
            &names[0],
            "--advertise",
            &lab::node_ip(0).to_string(),
        ])
        .args([
            "--encap",
            rec.encap.as_str(),
            "--proxy-mode",
            &rec.proxy_mode,
        ])
        .arg(format!("--allocate-node-cidrs={}", rec.allocate_node_cidrs));
    for kv in &rec.config {
        daemon.args(["--config", kv]);
    }
    for n in &names {
        daemon.args(["--node", n]);
    }
    daemon.env(lab::remains::LAB_ENV, &rec.name);
    rec.daemon_pid = Some(spawn_detached(
        daemon,
        &state.join("logs/control-plane.log"),
    )?);
    rec.save()?;
    wait_for(|| state.join("ready").exists(), Duration::from_secs(30))
        .context("the API server did not come up (see logs/control-plane.log)")?;

    step("writing the kubeconfig");
    let lab_config = state.join("kubeconfig");
    if own_kubeconfig {
        std::fs::copy(&lab_config, &rec.kubeconfig)?;
    } else {
        merge_kubeconfig(&lab_config, &format!("podnet-{}", rec.name))?;
    }

    if !rec.allocate_node_cidrs {
        step("not waiting for the nodes: they get no pod CIDR until you give them one");
        return Ok(());
    }
    step("waiting for the nodes to be Ready");
    let kc = lab_config.display().to_string();
    wait_for(
        || {
            let out = Command::new(kubectl())
                .args(["--kubeconfig", &kc, "get", "nodes", "--no-headers"])
                .output();
            out.map(|o| {
                let text = String::from_utf8_lossy(&o.stdout).into_owned();
                text.lines()
                    .filter(|l| l.split_whitespace().nth(1) == Some("Ready"))
                    .count()
                    == names.len()
            })
            .unwrap_or(false)
        },
        Duration::from_secs(60),
    )
    .context("nodes did not become Ready (kubectl -n kube-system logs ds/podnet; the kubelets' logs are nodes/*/kubelet.log)")?;
    step("waiting for the cluster DNS");
    wait_for(
        || {
            Command::new(kubectl())
                .args([
                    "--kubeconfig",
                    &kc,
                    "get",
                    "endpointslices",
                    "-n",
                    "kube-system",
                ])
                .args(["-l", "kubernetes.io/service-name=kube-dns", "-o"])
                .arg("jsonpath={.items[*].endpoints[?(@.conditions.ready==true)].addresses[0]}")
                .output()
                .map(|o| o.status.success() && !o.stdout.trim_ascii().is_empty())
                .unwrap_or(false)
        },
        Duration::from_secs(60),
    )
    .context(
        "the cluster DNS did not become ready (kubectl -n kube-system describe deploy/coredns)",
    )?;
    Ok(())
}

/// The kubectl to use for merging kubeconfigs and waiting.
pub fn kubectl() -> String {
    std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into())
}

fn merge_kubeconfig(lab_config: &Path, context: &str) -> anyhow::Result<()> {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let target = PathBuf::from(home).join(".kube/config");
    std::fs::create_dir_all(target.parent().unwrap())?;
    let merged = Command::new(kubectl())
        .env(
            "KUBECONFIG",
            format!("{}:{}", lab_config.display(), target.display()),
        )
        .args(["config", "view", "--flatten"])
        .output()
        .context("running kubectl to merge the kubeconfig")?;
    if !merged.status.success() {
        bail!(
            "kubectl config view: {}",
            String::from_utf8_lossy(&merged.stderr)
        );
    }
    let tmp = target.with_extension("podnet-tmp");
    std::fs::write(&tmp, &merged.stdout)?;
    std::fs::rename(&tmp, &target)?;
    let _ = Command::new(kubectl())
        .args(["config", "use-context", context])
        .stdout(Stdio::null())
        .status();
    Ok(())
}

fn print_usage(rec: &LabRecord) {
    let ctx = format!("podnet-{}", rec.name);
    println!();
    println!("  kubectl --context {ctx} get nodes -o wide");
    println!("  kubectl --context {ctx} get pods -A");
    println!("  kubectl --context {ctx} run netshoot --image=nicolaka/netshoot -it -- bash");
    println!(
        "  (kubeconfig: {}; API on https://127.0.0.1:{})",
        rec.kubeconfig.display(),
        rec.api_port
    );
    println!(
        "  podnet down --name {}   # removes everything the lab made",
        rec.name
    );
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Starts a process in a session of its own, output to `log`, and returns
/// its pid: it outlives `podnet up`.
fn spawn_detached(mut cmd: Command, log: &Path) -> anyhow::Result<i32> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
    Ok(child.id() as i32)
}

fn wait_for(mut f: impl FnMut() -> bool, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out after {}s", timeout.as_secs())
}
