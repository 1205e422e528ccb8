//! One pod's life on this node: sandbox, network (CNI ADD), containers
//! under supervision, status, and the graceful end (SIGTERM, grace period,
//! SIGKILL, CNI DEL, sandbox removed, deletion confirmed to the API).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use podnet_cni::runtime::{Attachment, Invoker};
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

use super::Kubelet;
use super::images::{Resolved, resolve};
use crate::node::now;

/// The state of one container, as the status reports it.
#[derive(Clone, Debug)]
pub enum CState {
    /// Not running: reason and message.
    Waiting(String, String),
    /// Running since.
    Running(String),
    /// Exited: code, reason, started, finished.
    Terminated(i32, String, String, String),
}

/// A running container's I/O, for attach.
pub struct ContainerIo {
    /// The pty master (tty) or the stdin pipe, for attach's input.
    pub input: Option<File>,
    /// Its output, broadcast to attached clients.
    pub output: broadcast::Sender<bytes::Bytes>,
    /// Whether it has a tty.
    pub tty: bool,
    /// Where the output goes when nobody pipes it (neither tty nor
    /// stdin): attach follows this file instead of `output`.
    pub log: Option<PathBuf>,
}

/// What the kubelet keeps of a container.
pub struct ContainerRt {
    /// Spec.
    pub spec: Container,
    /// State.
    pub state: CState,
    /// The state before the last restart (for `lastState`).
    pub last: Option<CState>,
    /// Restarts so far.
    pub restarts: i32,
    /// Pid while running.
    pub pid: Option<i32>,
    /// The run's shim (the container's parent) while running.
    pub shim_pid: Option<i32>,
    /// Ready: running and its readinessProbe (if any) passing.
    pub ready: bool,
    /// Attach plumbing while running.
    pub io: Option<Arc<ContainerIo>>,
}

/// A pod this node runs.
pub struct PodHandle {
    /// UID.
    pub uid: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The pod as last seen.
    pub pod: Mutex<Pod>,
    /// Its directory (hosts, resolv.conf, logs).
    pub dir: PathBuf,
    /// Its network namespace's name (none with hostNetwork).
    pub netns: Option<String>,
    /// The sandbox process.
    pub sandbox_pid: Mutex<Option<i32>>,
    /// The pod's address.
    pub ip: Mutex<Option<String>>,
    /// CNI result, for DEL.
    pub cni_result: Mutex<Option<Value>>,
    /// Containers by name.
    pub containers: Mutex<HashMap<String, ContainerRt>>,
    /// Set once the pod is to stop.
    pub stop: watch::Sender<bool>,
    /// When the pod started.
    pub started: String,
    /// Held while a status is computed and sent, so reports reach the API
    /// in the order their states happened.
    pub reporting: tokio::sync::Mutex<()>,
    /// Reports asked for so far, and how many of them the last sent status
    /// covers: a burst of changes becomes one update.
    pub reports: (AtomicU64, AtomicU64),
    /// The status last accepted by the API: the same status is not sent
    /// twice (every update wakes every watcher of pods).
    pub last_sent: Mutex<Option<Value>>,
    /// Whether the pod was Ready, and since when (the conditions'
    /// `lastTransitionTime`).
    pub ready_since: Mutex<(bool, String)>,
    /// Making the sandbox and starting a container take it shared;
    /// `terminate` takes it alone. A pod deleted in the middle of its
    /// start is then torn down either before anything was made (and the
    /// start sees `stop` and makes nothing) or after every process made
    /// so far is recorded, never between: no sandbox or container is left
    /// running for a pod that is gone.
    pub lifecycle: tokio::sync::RwLock<()>,
}

impl PodHandle {
    /// Path of a container's log.
    pub fn log_path(&self, container: &str) -> PathBuf {
        self.dir.join(format!("{container}.log"))
    }

    /// The sandbox's namespace files, opened (net, uts, mnt).
    pub fn ns_fds(&self) -> std::io::Result<[OwnedFd; 3]> {
        let pid = self
            .sandbox_pid
            .lock()
            .unwrap()
            .ok_or_else(|| std::io::Error::other("the pod's sandbox is not running"))?;
        let open = |k: &str| File::open(format!("/proc/{pid}/ns/{k}")).map(OwnedFd::from);
        Ok([open("net")?, open("uts")?, open("mnt")?])
    }
}

/// Reacts to one observation of a pod bound to this node.
pub fn observe(k: &Arc<Kubelet>, pod: Pod, gone: bool) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let deleting = gone || pod.metadata.deletion_timestamp.is_some();
    let mut known = k.pods.lock().unwrap().get(&uid).cloned();
    if known.is_none()
        && let Some((h, runs)) = super::checkpoint::adopt(k, &pod, new_handle(k, &pod))
    {
        // A pod this node ran before the kubelet restarted: take its sandbox
        // and running containers back instead of starting it again.
        k.pods.lock().unwrap().insert(uid.clone(), h.clone());
        let init: Vec<String> = pod
            .spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten())
            .map(|c| c.name.clone())
            .collect();
        for (name, run) in runs {
            // Init containers ran before the restart: they are not run again.
            if init.contains(&name) && run.is_none() {
                continue;
            }
            tokio::spawn(supervise(k.clone(), h.clone(), name, run));
        }
        known = Some(h);
    }
    match known {
        Some(h) => {
            *h.pod.lock().unwrap() = pod.clone();
            if !deleting {
                start_ephemeral(k, &h);
            }
            if deleting && !*h.stop.borrow() {
                let grace = if gone {
                    0
                } else {
                    pod.metadata.deletion_grace_period_seconds.unwrap_or(30)
                };
                // `send_replace`, not `send`: `send` stores nothing when no
                // task is subscribed at this instant (a start between its
                // waits), and that start would then make the sandbox of a
                // pod already torn down and confirmed deleted.
                h.stop.send_replace(true);
                tokio::spawn(terminate(k.clone(), h, grace));
            }
        }
        None if deleting => {
            if !gone {
                tokio::spawn(confirm_deleted(k.clone(), ns, name, uid));
            }
        }
        None => {
            let phase = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default();
            if phase == "Succeeded" || phase == "Failed" {
                return;
            }
            tracing::debug!(pod = %name, "new pod bound here");
            let h = Arc::new(new_handle(k, &pod));
            k.pods.lock().unwrap().insert(uid, h.clone());
            tokio::spawn(start(k.clone(), h));
        }
    }
}

/// A handle for a pod not started yet.
pub(super) fn new_handle(k: &Kubelet, pod: &Pod) -> PodHandle {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let prefix = if k.args.lab.is_empty() {
        "podnet".to_string()
    } else {
        k.args.lab.clone()
    };
    let (tx, _) = watch::channel(false);
    PodHandle {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        pod: Mutex::new(pod.clone()),
        dir: k.args.state_dir.join("pods").join(&uid),
        netns: (!host_network).then(|| format!("{prefix}-pod-{}", &uid[..uid.len().min(13)])),
        uid,
        sandbox_pid: Mutex::new(None),
        ip: Mutex::new(None),
        cni_result: Mutex::new(None),
        containers: Mutex::new(HashMap::new()),
        stop: tx,
        started: now(),
        reporting: tokio::sync::Mutex::new(()),
        reports: (AtomicU64::new(0), AtomicU64::new(0)),
        last_sent: Mutex::new(None),
        ready_since: Mutex::new((false, now())),
        lifecycle: tokio::sync::RwLock::new(()),
    }
}

/// Fills the pod's containers (init containers too) as not started yet.
fn register_containers(h: &PodHandle, state: CState) {
    let spec = h.pod.lock().unwrap().spec.clone().unwrap_or_default();
    let mut cs = h.containers.lock().unwrap();
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
    {
        let rt = cs.entry(c.name.clone()).or_insert_with(|| ContainerRt {
            spec: c.clone(),
            state: state.clone(),
            last: None,
            restarts: 0,
            pid: None,
            shim_pid: None,
            ready: false,
            io: None,
        });
        if matches!(rt.state, CState::Waiting(..)) {
            rt.state = state.clone();
        }
    }
}

/// Waits, as the real kubelet does, until the node's pod network is
/// ready (a CNI configuration exists); `false` if the pod is stopped first.
async fn wait_for_network(k: &Kubelet, h: &PodHandle) -> bool {
    let mut net = k.network.clone();
    let mut stop = h.stop.subscribe();
    let mut told = false;
    while !net.borrow_and_update().ready() {
        if !told {
            told = true;
            tracing::info!(pod = %h.name, "waiting for the pod network (no CNI configuration on this node)");
            register_containers(
                h,
                CState::Waiting(
                    "ContainerCreating".into(),
                    format!(
                        "network is not ready: {}",
                        crate::network::NOT_READY_MESSAGE
                    ),
                ),
            );
            report(k, h).await;
        }
        tokio::select! {
            r = net.changed() => if r.is_err() { return false },
            _ = stop.changed() => return false,
        }
    }
    !*h.stop.borrow()
}

/// Makes the pod's volumes, trying again every 2 s while a ConfigMap or
/// Secret they need is missing; `None` if the pod is stopped first.
async fn prepare_volumes(k: &Kubelet, h: &PodHandle) -> Option<Vec<crate::pod_config::Mount>> {
    let mut stop = h.stop.subscribe();
    loop {
        let pod = h.pod.lock().unwrap().clone();
        match crate::pod_config::volumes(k, &pod, &h.dir).await {
            Ok(m) => return Some(m),
            Err(e) => {
                tracing::info!(pod = %h.name, error = %e.0, "volumes not ready");
                crate::events::pod_event(k, h, crate::events::WARNING, "FailedMount", e.0.clone());
                register_containers(h, CState::Waiting("ContainerCreating".into(), e.0));
                report(k, h).await;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop.changed() => return None,
        }
    }
}

async fn start(k: Arc<Kubelet>, h: Arc<PodHandle>) {
    if h.netns.is_some() && !wait_for_network(&k, &h).await {
        return;
    }
    if std::fs::create_dir_all(&h.dir).is_err() {
        tracing::warn!(pod = %h.name, dir = %h.dir.display(), "cannot make the pod's directory");
    }
    let Some(mounts) = prepare_volumes(&k, &h).await else {
        return;
    };
    let k2 = k.clone();
    let h2 = h.clone();
    let t0 = std::time::Instant::now();
    // Sandboxes are made a few at a time, in the order pods arrived: a
    // burst of pods then becomes Ready one after the other, instead of all
    // of them late together while they fight over the kernel's locks.
    let _turn = k.sandbox_turns.acquire().await;
    let life = h.lifecycle.read().await;
    if *h.stop.borrow() {
        // Deleted while waiting for its turn: `terminate` ran (or waits
        // for us) and nothing may be made for it any more.
        return;
    }
    let waited = t0.elapsed().as_millis() as u64;
    let made = tokio::task::spawn_blocking(move || make_sandbox(&k2, &h2, &mounts)).await;
    drop(_turn);
    tracing::info!(pod = %h.name, ms = t0.elapsed().as_millis() as u64, waited, "sandbox and network ready");
    match made {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(pod = %h.name, error = %e, "sandbox");
            // What was made of it goes now, not when the pod is deleted:
            // a half-made sandbox owns a namespace and maybe a process.
            let (k2, h2) = (k.clone(), h.clone());
            let _ = tokio::task::spawn_blocking(move || undo_sandbox(&k2, &h2)).await;
            drop(life);
            let msg = format!("{e:#}");
            crate::events::pod_event(
                &k,
                &h,
                crate::events::WARNING,
                "FailedCreatePodSandBox",
                format!("Failed to create pod sandbox: {msg}"),
            );
            for c in h.containers.lock().unwrap().values_mut() {
                c.state = CState::Waiting("CreatePodSandboxError".into(), msg.clone());
            }
            report(&k, &h).await;
            return;
        }
        Err(e) => {
            tracing::warn!(pod = %h.name, error = %e, "sandbox task");
            return;
        }
    }
    super::checkpoint::save(&h);
    drop(life);
    let spec = h.pod.lock().unwrap().spec.clone().unwrap_or_default();
    // Init containers, one after the other, each to success.
    for c in spec.init_containers.iter().flatten() {
        supervise(k.clone(), h.clone(), c.name.clone(), None).await;
        let done = matches!(
            h.containers.lock().unwrap().get(&c.name).map(|c| &c.state),
            Some(CState::Terminated(0, ..))
        );
        if !done {
            return; // failed for good (restartPolicy Never), or stopped
        }
    }
    for c in &spec.containers {
        tokio::spawn(supervise(k.clone(), h.clone(), c.name.clone(), None));
    }
    start_ephemeral(&k, &h);
    // Each container's first start (running, or why not) is reported with
    // the IP, as kubelet's first status after a sandbox: one write instead
    // of a ContainerCreating one just before it, for every watcher of pods.
    if spec.containers.is_empty() {
        report(&k, &h).await;
    }
}

/// Starts the pod's ephemeral containers (`kubectl debug`) that have not
/// run yet, once its sandbox exists: each runs once in the pod's
/// namespaces and is never restarted, as the kubelet runs them. One the
/// pod's status already shows as started (a kubelet restart) is not run
/// again.
pub fn start_ephemeral(k: &Arc<Kubelet>, h: &Arc<PodHandle>) {
    if h.sandbox_pid.lock().unwrap().is_none() || *h.stop.borrow() {
        return;
    }
    let (specs, seen) = {
        let pod = h.pod.lock().unwrap();
        let specs = pod
            .spec
            .as_ref()
            .and_then(|s| s.ephemeral_containers.clone())
            .unwrap_or_default();
        let seen: Vec<String> = pod
            .status
            .as_ref()
            .and_then(|s| s.ephemeral_container_statuses.as_ref())
            .into_iter()
            .flatten()
            .filter(|s| {
                s.state
                    .as_ref()
                    .is_some_and(|st| st.running.is_some() || st.terminated.is_some())
            })
            .map(|s| s.name.clone())
            .collect();
        (specs, seen)
    };
    for ec in specs {
        if seen.contains(&ec.name) {
            continue;
        }
        let Some(spec) = ephemeral_as_container(&h.name, &ec) else {
            continue;
        };
        {
            let mut cs = h.containers.lock().unwrap();
            if cs.contains_key(&ec.name) {
                continue;
            }
            cs.insert(
                ec.name.clone(),
                ContainerRt {
                    spec,
                    state: CState::Waiting("ContainerCreating".into(), String::new()),
                    last: None,
                    restarts: 0,
                    pid: None,
                    shim_pid: None,
                    ready: false,
                    io: None,
                },
            );
        }
        tracing::info!(pod = %h.name, container = %ec.name, target = ?ec.target_container_name, "ephemeral container");
        tokio::spawn(supervise(k.clone(), h.clone(), ec.name, None));
    }
}

/// An ephemeral container as the container the kubelet runs: the same
/// fields, less ports and probes. `None` (logged) if it does not convert.
pub fn ephemeral_as_container(
    pod: &str,
    ec: &k8s_openapi::api::core::v1::EphemeralContainer,
) -> Option<Container> {
    match serde_json::to_value(ec).and_then(serde_json::from_value) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(pod, container = %ec.name, error = %e, "ephemeral container");
            None
        }
    }
}

/// Starts the sandbox process (`argv`: `<kubelet> sandbox ...`) through the
/// launcher, or with an exec when there is none, and waits for its
/// `ready`; returns its pid. A sandbox that did not say `ready` is killed
/// (it may hold the pod's namespace). `mark` is the pod's directory, on
/// the sandbox's command line: when the launcher took the request but its
/// answer was lost, whatever carries it is ended instead of a second
/// sandbox started beside one nobody would own.
fn start_sandbox_process(argv: &[String], mark: &Path) -> anyhow::Result<i32> {
    let mut line = String::new();
    let launched = if super::launcher::available() {
        // Close-on-exec: a CNI plugin exec'd meanwhile must not hold the
        // write end open.
        let (ready, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let null = File::open("/dev/null")?;
        let stderr = std::io::stderr();
        let stdio = [null.as_fd(), ready_w.as_fd(), stderr.as_fd()];
        // On failure the launcher is marked gone and the exec below runs.
        // The write end closes here, so `ready` ends if the sandbox dies.
        match super::launcher::spawn(argv, None, stdio) {
            Ok(pid) => Some((pid, ready)),
            Err(super::launcher::LaunchError::NotLaunched(_)) => None,
            Err(e @ super::launcher::LaunchError::AnswerLost(_)) => {
                drop(ready_w);
                end_marked(mark);
                return Err(e.into());
            }
        }
    } else {
        None
    };
    let pid = match launched {
        Some((pid, ready)) => {
            let read = BufReader::new(File::from(ready)).read_line(&mut line);
            if read.is_err() || line.trim() != "ready" {
                kill_sandbox(pid, mark);
            }
            read?;
            pid
        }
        None => {
            let mut cmd = Command::new(&argv[0]);
            cmd.args(&argv[1..])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            // No pre_exec: std then spawns with posix_spawn (vfork), not
            // fork, and the kubelet's page tables are not copied for every
            // pod. The sandbox makes itself a session leader.
            let mut child = cmd.spawn()?;
            let read = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
            let pid = child.id() as i32;
            if read.is_err() || line.trim() != "ready" {
                let _ = child.kill();
            }
            std::thread::spawn(move || child.wait());
            read?;
            pid
        }
    };
    anyhow::ensure!(line.trim() == "ready", "the sandbox did not start");
    Ok(pid)
}

fn pod_files(h: &PodHandle, ip: Option<&str>) -> anyhow::Result<()> {
    let pod = h.pod.lock().unwrap().clone();
    let spec = pod.spec.clone().unwrap_or_default();
    let hostname = hostname_of(&spec, &h.name);
    let mut hosts = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::1\tip6-mcastprefix\n",
    );
    if let Some(ip) = ip {
        let fqdn = spec
            .subdomain
            .as_ref()
            .map(|sd| format!("{hostname}.{sd}.{}.svc.cluster.local\t", h.namespace))
            .unwrap_or_default();
        hosts.push_str(&format!("{ip}\t{fqdn}{hostname}\n"));
    }
    // Written in place: the files are bind-mounted into the sandbox, and a
    // rename would leave the mount on the old inode.
    std::fs::write(h.dir.join("hosts"), hosts)?;
    std::fs::write(h.dir.join("hostname"), format!("{hostname}\n"))?;
    std::fs::write(h.dir.join("resolv.conf"), resolv_conf(&pod))?;
    Ok(())
}

/// `/etc/resolv.conf` from the pod's `dnsPolicy` and `dnsConfig`, as
/// kubelet writes it.
pub fn resolv_conf(pod: &Pod) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let policy = spec
        .dns_policy
        .clone()
        .unwrap_or_else(|| "ClusterFirst".into());
    let host_network = spec.host_network.unwrap_or(false);
    let cluster = || {
        (
            vec!["10.96.0.10".to_string()],
            vec![
                format!("{ns}.svc.cluster.local"),
                "svc.cluster.local".into(),
                "cluster.local".into(),
            ],
            vec!["ndots:5".to_string()],
        )
    };
    let node = || {
        let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let (mut ns, mut search, mut opts) = (Vec::new(), Vec::new(), Vec::new());
        for l in text.lines() {
            let mut w = l.split_whitespace();
            match w.next() {
                Some("nameserver") => ns.extend(w.map(String::from)),
                Some("search") => search.extend(w.map(String::from)),
                Some("options") => opts.extend(w.map(String::from)),
                _ => {}
            }
        }
        (ns, search, opts)
    };
    let (mut servers, mut search, mut opts) = match policy.as_str() {
        "None" => (vec![], vec![], vec![]),
        "Default" => node(),
        "ClusterFirst" if host_network => node(),
        _ => cluster(),
    };
    if let Some(cfg) = spec.dns_config {
        servers.extend(cfg.nameservers.unwrap_or_default());
        search.extend(cfg.searches.unwrap_or_default());
        for o in cfg.options.unwrap_or_default() {
            let name = o.name.clone().unwrap_or_default();
            opts.retain(|x| x.split(':').next() != Some(name.as_str()));
            opts.push(match o.value {
                Some(v) => format!("{name}:{v}"),
                None => name,
            });
        }
    }
    let mut out = String::new();
    for s in servers.iter().take(3) {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    if !opts.is_empty() {
        out.push_str(&format!("options {}\n", opts.join(" ")));
    }
    out
}

fn make_sandbox(
    k: &Kubelet,
    h: &PodHandle,
    mounts: &[crate::pod_config::Mount],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&h.dir)?;
    let spec = h.pod.lock().unwrap().spec.clone().unwrap_or_default();
    register_containers(
        h,
        CState::Waiting("ContainerCreating".into(), String::new()),
    );
    pod_files(h, None)?;
    if let Some(ns) = &h.netns {
        if Path::new(podnet_kernel::netns::NETNS_DIR).join(ns).exists() {
            // Left by a kubelet that died while starting this pod, before
            // its checkpoint: undo it (processes, CNI, namespace) first.
            tracing::info!(pod = %h.name, netns = %ns, "removing a half-made sandbox");
            podnet_kernel::netns::kill_processes_in(ns);
            // A sandbox or shim launched for it that had not entered the
            // namespace yet is found by the pod's directory instead.
            end_marked(&h.dir);
            if let Some(list) = k.conflist()
                && let Err(e) = invoker(k).del(&list, &attachment(h, ns), None)
            {
                tracing::warn!(pod = %h.name, error = %e, "CNI DEL of the half-made sandbox");
            }
            podnet_kernel::netns::delete_named(ns)?;
        }
        podnet_kernel::netns::add_named(ns)?;
        record_netns(k, ns);
    }
    tracing::debug!(pod = %h.name, "network namespace made");
    let hostname = hostname_of(&spec, &h.name);
    let mut argv = vec![
        k.exe.clone(),
        "sandbox".into(),
        "--hostname".into(),
        hostname,
        "--dir".into(),
        h.dir.display().to_string(),
    ];
    if let Some(ns) = &h.netns {
        argv.push("--netns".into());
        argv.push(Path::new("/run/netns").join(ns).display().to_string());
    }
    for m in mounts {
        argv.push("--mount".into());
        argv.push(m.arg());
    }
    argv.push("--made-log".into());
    argv.push(
        k.args
            .state_dir
            .join(MOUNT_POINTS_LOG)
            .display()
            .to_string(),
    );
    *h.sandbox_pid.lock().unwrap() = Some(start_sandbox_process(&argv, &h.dir)?);
    tracing::debug!(pod = %h.name, "sandbox process ready");

    let ip = match &h.netns {
        None => Some(k.args.node_ip.to_string()),
        Some(ns) => {
            let list = k
                .conflist()
                .ok_or_else(|| anyhow::anyhow!("{}", crate::network::NOT_READY_MESSAGE))?;
            let result = invoker(k).add(&list, &attachment(h, ns))?;
            tracing::debug!(pod = %h.name, "CNI ADD done");
            let ip = result["ips"][0]["address"]
                .as_str()
                .and_then(|a| a.split('/').next())
                .map(String::from);
            *h.cni_result.lock().unwrap() = Some(result);
            ip
        }
    };
    *h.ip.lock().unwrap() = ip.clone();
    pod_files(h, ip.as_deref())?;
    Ok(())
}

/// The node's record of the mount points its sandboxes made on the shared
/// filesystem (a volume's target that did not exist, e.g. `/host` of
/// `kubectl debug node/`), read by `podnet down`.
pub const MOUNT_POINTS_LOG: &str = "mount-points.log";

/// Appends the new namespace's inode and cookie to `<node dir>/netns.log`,
/// so `podnet down` can tell afterwards, over `/proc`, that no process,
/// fd or mount anywhere still holds it, even one whose name is gone (a
/// cookie is never reused; an inode is).
fn record_netns(k: &Kubelet, ns: &str) {
    use std::io::Write;
    let path = Path::new(podnet_kernel::netns::NETNS_DIR).join(ns);
    let line = match podnet_kernel::netns::identity(&path) {
        Ok((ino, cookie)) => format!("{ino} {cookie} {ns}\n"),
        Err(e) => {
            tracing::warn!(netns = %ns, error = %e, "the namespace's identity is not recorded");
            return;
        }
    };
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(k.args.state_dir.join("netns.log"))
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        tracing::warn!(netns = %ns, error = %e, "netns.log");
    }
}

/// Kills a sandbox that did not come up: the pid the launcher gave, if
/// its command line still names the pod (a reused pid is not ours).
fn kill_sandbox(pid: i32, mark: &Path) {
    let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&*mark.to_string_lossy()));
    if ours {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// SIGKILLs every process (and its process group) whose command line
/// names `mark` (a pod's directory, a container's run path): the pod's
/// sandboxes and shims, by what they are rather than by the namespace
/// they may not have entered yet. A launched helper writes its command
/// line first thing after the fork, so one just forked is given 50 ms to
/// show it.
fn end_marked(mark: &Path) {
    let mark = mark.to_string_lossy().into_owned();
    for round in 0..2 {
        if round == 1 {
            std::thread::sleep(Duration::from_millis(50));
        }
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
                continue;
            };
            if pid == std::process::id() as i32 {
                continue;
            }
            let named = std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&mark));
            if named {
                tracing::info!(pid, %mark, "ending a process of a sandbox that is not recorded");
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Undoes a sandbox whose making failed half-way: its process, its CNI
/// attachment and its namespace; the pod's directory stays (the pod is
/// still there, waiting with the error).
fn undo_sandbox(k: &Kubelet, h: &PodHandle) {
    if let Some(pid) = h.sandbox_pid.lock().unwrap().take() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    if let Some(ns) = &h.netns
        && Path::new(podnet_kernel::netns::NETNS_DIR).join(ns).exists()
    {
        podnet_kernel::netns::kill_processes_in(ns);
        if let Some(list) = k.conflist() {
            let result = h.cni_result.lock().unwrap().take();
            if let Err(e) = invoker(k).del(&list, &attachment(h, ns), result.as_ref()) {
                tracing::warn!(pod = %h.name, error = %e, "CNI DEL of a failed sandbox");
            }
        }
        if let Err(e) = podnet_kernel::netns::delete_named(ns) {
            tracing::warn!(pod = %h.name, error = %e, "removing a failed sandbox's namespace");
        }
    }
    *h.ip.lock().unwrap() = None;
}

fn invoker(k: &Kubelet) -> Invoker {
    Invoker {
        paths: k.args.cni_path.split(':').map(PathBuf::from).collect(),
        netns: None,
    }
}

fn attachment(h: &PodHandle, ns: &str) -> Attachment {
    let pod = h.pod.lock().unwrap().clone();
    let mut att = Attachment {
        container_id: h.uid.replace('-', ""),
        netns: format!("/run/netns/{ns}"),
        ifname: "eth0".into(),
        args: vec![
            ("IgnoreUnknown".into(), "1".into()),
            ("K8S_POD_NAMESPACE".into(), h.namespace.clone()),
            ("K8S_POD_NAME".into(), h.name.clone()),
            ("K8S_POD_UID".into(), h.uid.clone()),
        ],
        ..Default::default()
    };
    let mut mappings = Vec::new();
    for c in pod.spec.map(|s| s.containers).unwrap_or_default() {
        for p in c.ports.unwrap_or_default() {
            if let Some(hp) = p.host_port.filter(|p| *p > 0) {
                let mut m = json!({
                    "hostPort": hp, "containerPort": p.container_port,
                    "protocol": p.protocol.unwrap_or_else(|| "TCP".into()).to_lowercase(),
                });
                if let Some(ip) = p.host_ip.filter(|ip| !ip.is_empty()) {
                    m["hostIP"] = ip.into();
                }
                mappings.push(m);
            }
        }
    }
    if !mappings.is_empty() {
        att.capability_args
            .insert("portMappings".into(), Value::Array(mappings));
    }
    att
}

/// A container run found alive when the kubelet started again.
pub struct AdoptedRun {
    /// The run's shim, whose end is the container's end.
    pub shim_pid: i32,
    /// The container's pid.
    pub pid: Option<i32>,
    /// When the run started.
    pub started: String,
    /// Whether the container was Ready when last reported.
    pub ready: bool,
}

/// The file prefix of a container's run records (`<name>.pid`, `.exit`).
pub fn run_path(h: &PodHandle, container: &str) -> PathBuf {
    h.dir.join(format!("{container}.run"))
}

/// Waits until process `pid` (not our child) has ended.
async fn wait_pid(pid: i32) {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return; // already gone
    }
    // SAFETY: the syscall returned a fresh fd that we now own.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    // SAFETY: the AsyncFd owns the OwnedFd, which stays open while it lives.
    match unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    } {
        Ok(afd) => {
            let _ = afd.readable().await;
        }
        Err(_) => {
            while nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Runs one container, restarting it per `restartPolicy` with back-off
/// (1 s doubling to 5 min; kubelet starts at 10 s, the lab is impatient).
/// With `adopted`, the first run is one that outlived a restart of the kubelet.
async fn supervise(
    k: Arc<Kubelet>,
    h: Arc<PodHandle>,
    name: String,
    mut adopted: Option<AdoptedRun>,
) {
    let policy = {
        let pod = h.pod.lock().unwrap();
        let spec = pod.spec.as_ref();
        let policy = spec
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into());
        let init = spec
            .and_then(|s| s.init_containers.as_ref())
            .is_some_and(|ics| ics.iter().any(|c| c.name == name));
        let ephemeral = spec
            .and_then(|s| s.ephemeral_containers.as_ref())
            .is_some_and(|ecs| ecs.iter().any(|c| c.name == name));
        // An init container runs to success: it is restarted on failure
        // unless the pod's policy is Never, never after success. An
        // ephemeral container runs once.
        match (init, policy.as_str()) {
            _ if ephemeral => "Never".to_string(),
            (true, "Never") => "Never".to_string(),
            (true, _) => "OnFailure".to_string(),
            _ => policy,
        }
    };
    let mut backoff = Duration::from_secs(1);
    let mut stop = h.stop.subscribe();
    let run = run_path(&h, &name);
    loop {
        if *stop.borrow() {
            return;
        }
        let spec = h.containers.lock().unwrap()[&name].spec.clone();
        tracing::debug!(pod = %h.name, container = %name, "starting");
        // Held until the run is recorded: `terminate` then finds its pid.
        let life = h.lifecycle.read().await;
        if *stop.borrow() {
            return;
        }
        let (started, io, mut child, shim_pid, pid, ready) = match adopted.take() {
            Some(a) => {
                let io = Arc::new(ContainerIo {
                    input: None,
                    output: broadcast::channel(1).0,
                    tty: false,
                    log: Some(h.log_path(&name)),
                });
                // Without a probe a running container is ready; with one,
                // it keeps what the API last heard until the probe runs.
                let ready = spec.readiness_probe.is_none() || a.ready;
                (a.started, io, None, a.shim_pid, a.pid, ready)
            }
            None => {
                let started = now();
                let pod = h.pod.lock().unwrap().clone();
                let ip = h.ip.lock().unwrap().clone();
                let env = match crate::pod_config::environment(&k, &pod, &spec, ip.as_deref()).await
                {
                    Ok(env) => env,
                    Err(e) => {
                        // As the kubelet: wait, saying why, until the
                        // ConfigMap or Secret appears.
                        crate::events::pod_event(
                            &k,
                            &h,
                            crate::events::WARNING,
                            "Failed",
                            format!("Error: {}", e.0),
                        );
                        drop(life);
                        set_state(
                            &h,
                            &name,
                            CState::Waiting("CreateContainerConfigError".into(), e.0),
                        );
                        report(&k, &h).await;
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                            _ = stop.changed() => return,
                        }
                        continue;
                    }
                };
                // `$(VAR)` in command and args, from the container's env.
                let mut spec = spec.clone();
                for list in [&mut spec.command, &mut spec.args].into_iter().flatten() {
                    for a in list.iter_mut() {
                        *a = crate::pod_config::expand(a, &env);
                    }
                }
                let spawned = match resolve(&spec, &k.exe, k.args.podnet_bin_dir.as_deref()) {
                    Resolved::Unrunnable(reason, msg) => {
                        drop(life);
                        set_state(&h, &name, CState::Waiting(reason, msg));
                        report(&k, &h).await;
                        return;
                    }
                    Resolved::Run(argv) => spawn_container(&k, &h, &spec, &argv, env),
                };
                match spawned {
                    Ok((child, io, shim)) => {
                        crate::events::container_started(
                            &k,
                            &h,
                            &name,
                            spec.image.as_deref().unwrap_or_default(),
                        );
                        let pid = container_pid(&run).await;
                        let ready = spec.readiness_probe.is_none();
                        (started, io, child, shim, pid, ready)
                    }
                    Err(e) => {
                        drop(life);
                        set_state(
                            &h,
                            &name,
                            CState::Waiting("RunContainerError".into(), format!("{e:#}")),
                        );
                        report(&k, &h).await;
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stop.changed() => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(300));
                        continue;
                    }
                }
            }
        };
        {
            let mut cs = h.containers.lock().unwrap();
            let c = cs.get_mut(&name).unwrap();
            c.pid = pid;
            c.shim_pid = Some(shim_pid);
            c.io = Some(io.clone());
            c.state = CState::Running(started.clone());
            c.ready = ready;
        }
        super::checkpoint::save(&h);
        drop(life);
        tracing::debug!(pod = %h.name, container = %name, "running");
        if let Some(probe) = spec.readiness_probe.clone() {
            tokio::spawn(readiness(k.clone(), h.clone(), name.clone(), probe, io));
        }
        report(&k, &h).await;
        match child.as_mut() {
            Some(c) => {
                let _ = c.wait().await;
            }
            None => wait_pid(shim_pid).await,
        }
        // No record means the shim was killed with its container.
        let (code, finished) = super::shim::read_exit(&run).unwrap_or((137, now()));
        let reason = if code == 0 { "Completed" } else { "Error" };
        let term = CState::Terminated(code, reason.into(), started, finished);
        let stopping = *stop.borrow();
        let restart = !stopping
            && match policy.as_str() {
                "Never" => false,
                "OnFailure" => code != 0,
                _ => true,
            };
        {
            let mut cs = h.containers.lock().unwrap();
            let c = cs.get_mut(&name).unwrap();
            c.pid = None;
            c.shim_pid = None;
            c.io = None;
            c.ready = false;
            if restart {
                c.last = Some(term);
                c.restarts += 1;
                crate::events::pod_event(
                    &k,
                    &h,
                    crate::events::WARNING,
                    "BackOff",
                    format!(
                        "Back-off restarting failed container {name} in pod {}_{}({})",
                        h.name, h.namespace, h.uid
                    ),
                );
                c.state = CState::Waiting(
                    "CrashLoopBackOff".into(),
                    format!(
                        "back-off {}s restarting failed container={name} pod={}",
                        backoff.as_secs(),
                        h.name
                    ),
                );
            } else {
                c.state = term;
            }
        }
        if stopping {
            return;
        }
        super::checkpoint::save(&h);
        report(&k, &h).await;
        if !restart {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(300));
    }
}

/// The container's pid, once its shim has written it (or `None` when the
/// container could not start).
async fn container_pid(run: &Path) -> Option<i32> {
    let pid_file = super::shim::pid_file(run);
    let exit_file = super::shim::exit_file(run);
    for _ in 0..2500 {
        if let Ok(text) = std::fs::read_to_string(&pid_file)
            && let Ok(pid) = text.trim().parse()
        {
            return Some(pid);
        }
        if exit_file.exists() {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

/// Runs a container's readinessProbe (httpGet or tcpSocket, from the node,
/// as kubelet does) while this run of the container lasts, and reports
/// each change of readiness.
async fn readiness(
    k: Arc<Kubelet>,
    h: Arc<PodHandle>,
    name: String,
    probe: k8s_openapi::api::core::v1::Probe,
    run: Arc<ContainerIo>,
) {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let period = Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64);
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    tokio::time::sleep(Duration::from_secs(
        probe.initial_delay_seconds.unwrap_or(0).max(0) as u64,
    ))
    .await;
    let port_of = |p: &IntOrString| -> Option<u16> {
        match p {
            IntOrString::Int(n) => u16::try_from(*n).ok(),
            IntOrString::String(s) => h.containers.lock().unwrap().get(&name).and_then(|c| {
                c.spec.ports.as_ref()?.iter().find_map(|cp| {
                    (cp.name.as_deref() == Some(s)).then_some(cp.container_port as u16)
                })
            }),
        }
    };
    let mut stop = h.stop.subscribe();
    loop {
        let current = h
            .containers
            .lock()
            .unwrap()
            .get(&name)
            .and_then(|c| c.io.clone())
            .is_some_and(|io| Arc::ptr_eq(&io, &run));
        if !current || *stop.borrow() {
            return;
        }
        let ip = h.ip.lock().unwrap().clone().unwrap_or_default();
        let ok = match (&probe.http_get, &probe.tcp_socket) {
            (Some(get), _) => match port_of(&get.port) {
                Some(port) => {
                    let path = get.path.clone().unwrap_or_else(|| "/".into());
                    tokio::time::timeout(timeout, http_ok(&ip, port, &path))
                        .await
                        .unwrap_or(false)
                }
                None => false,
            },
            (None, Some(tcp)) => match port_of(&tcp.port) {
                Some(port) => tokio::time::timeout(
                    timeout,
                    tokio::net::TcpStream::connect((ip.as_str(), port)),
                )
                .await
                .is_ok_and(|r| r.is_ok()),
                None => false,
            },
            // exec and gRPC probes are not run by the lab: ready when running.
            _ => true,
        };
        if !ok {
            let what = match (&probe.http_get, &probe.tcp_socket) {
                (Some(get), _) => format!(
                    "Get \"http://{ip}:{}{}\": the probe got no 2xx or 3xx answer",
                    port_of(&get.port).unwrap_or(0),
                    get.path.as_deref().unwrap_or("/")
                ),
                (None, Some(tcp)) => format!(
                    "dial tcp {ip}:{}: connect: connection refused",
                    port_of(&tcp.port).unwrap_or(0)
                ),
                _ => String::new(),
            };
            crate::events::pod_event(
                &k,
                &h,
                crate::events::WARNING,
                "Unhealthy",
                format!("Readiness probe failed: {what}"),
            );
        }
        let changed = {
            let mut cs = h.containers.lock().unwrap();
            match cs.get_mut(&name) {
                Some(c) if c.ready != ok => {
                    c.ready = ok;
                    true
                }
                _ => false,
            }
        };
        if changed {
            report(&k, &h).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.changed() => return,
        }
    }
}

/// One HTTP GET; 200-399 is success, as kubelet counts it.
async fn http_ok(ip: &str, port: u16, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect((ip, port)).await else {
        return false;
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: kube-probe/1.33\r\nConnection: close\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    let Ok(n) = s.read(&mut buf).await else {
        return false;
    };
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .is_some_and(|c| (200..400).contains(&c))
}

fn set_state(h: &PodHandle, name: &str, s: CState) {
    if let Some(c) = h.containers.lock().unwrap().get_mut(name) {
        c.state = s;
    }
}

/// A command that runs inside the pod's sandbox (net, UTS, mount), in a
/// session of its own; with `tty`, the given fd becomes its terminal.
pub fn command_in_pod(
    h: &PodHandle,
    argv: &[String],
    tty: bool,
    workdir: Option<&str>,
) -> anyhow::Result<(Command, [OwnedFd; 3])> {
    anyhow::ensure!(!argv.is_empty(), "empty command");
    let fds = h.ns_fds()?;
    let raw = [fds[0].as_raw_fd(), fds[1].as_raw_fd(), fds[2].as_raw_fd()];
    let workdir = workdir
        .map(|d| std::ffi::CString::new(d).map_err(|_| anyhow::anyhow!("bad workingDir {d:?}")))
        .transpose()?;
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd.env_clear();
    cmd.env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    cmd.env("HOME", "/root");
    if tty {
        cmd.env("TERM", "xterm");
    }
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            super::sandbox::enter_pre_exec(&raw)?;
            if let Some(dir) = &workdir
                && libc::chdir(dir.as_ptr()) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            libc::setsid();
            if tty {
                libc::ioctl(0, libc::TIOCSCTTY, 0);
            }
            Ok(())
        });
    }
    Ok((cmd, fds))
}

/// Starts a container through its shim; its output goes to the log (and,
/// with a tty or stdin, through us to attached clients).
fn spawn_container(
    k: &Kubelet,
    h: &PodHandle,
    spec: &Container,
    argv: &[String],
    pod_env: Vec<(String, String)>,
) -> anyhow::Result<(Option<tokio::process::Child>, Arc<ContainerIo>, i32)> {
    anyhow::ensure!(!argv.is_empty(), "empty command");
    let tty = spec.tty.unwrap_or(false);
    let wants_stdin = spec.stdin.unwrap_or(false);
    let sandbox = h
        .sandbox_pid
        .lock()
        .unwrap()
        .ok_or_else(|| anyhow::anyhow!("the pod's sandbox is not running"))?;
    let run = run_path(h, &spec.name);
    let _ = std::fs::remove_file(super::shim::pid_file(&run));
    let _ = std::fs::remove_file(super::shim::exit_file(&run));
    let log_path = h.log_path(&spec.name);
    let mut shim = vec![
        k.exe.clone(),
        "shim".into(),
        "--sandbox-pid".into(),
        sandbox.to_string(),
        "--run".into(),
        run.display().to_string(),
    ];
    if let Some(dir) = &spec.working_dir {
        shim.extend(["--workdir".into(), dir.clone()]);
    }
    if tty {
        shim.push("--tty".into());
    }
    let piped = tty || wants_stdin;
    if !piped {
        shim.extend(["--log".into(), log_path.display().to_string()]);
    }
    shim.push("--".into());
    shim.extend(argv.iter().cloned());
    let mut env = vec![
        (
            "PATH".to_string(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        ),
        ("HOME".into(), "/root".into()),
    ];
    if tty {
        env.push(("TERM".into(), "xterm".into()));
    }
    env.push(("HOSTNAME".into(), spec_hostname(h)));
    for (name, value) in pod_env {
        env.retain(|(n, _)| *n != name);
        env.push((name, value));
    }
    let (output, _) = broadcast::channel(256);
    if !piped && super::launcher::available() {
        // The shim writes the container's output to the log itself. On
        // failure the launcher is marked gone and the exec below runs.
        let null = File::open("/dev/null")?;
        let fd = null.as_fd();
        match super::launcher::spawn(&shim, Some(env.clone()), [fd, fd, fd]) {
            Ok(pid) => {
                let io = Arc::new(ContainerIo {
                    input: None,
                    output,
                    tty,
                    log: Some(log_path),
                });
                return Ok((None, io, pid));
            }
            Err(super::launcher::LaunchError::NotLaunched(_)) => {}
            Err(e @ super::launcher::LaunchError::AnswerLost(_)) => {
                // A shim may run: end it (and its container, which leads
                // a group of its own and is ended by its pid file) rather
                // than start a second one.
                end_marked(&run);
                if let Some(pid) = std::fs::read_to_string(super::shim::pid_file(&run))
                    .ok()
                    .and_then(|t| t.trim().parse::<i32>().ok())
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(-pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                return Err(e.into());
            }
        }
    }
    // The shim makes itself a session leader (nothing aimed at the agent's
    // process group reaches it, and it outlives the agent); no pre_exec
    // here keeps the spawn a cheap posix_spawn.
    let mut cmd = Command::new(&shim[0]);
    cmd.args(&shim[1..]).env_clear().envs(env);
    // The lab's mark, as a launched shim inherits it from the launcher;
    // the shim takes it out of the container's environment.
    if let Ok(lab) = std::env::var(crate::LAB_ENV) {
        cmd.env(crate::LAB_ENV, lab);
    }
    let mut input = None;
    let mut pty_master: Option<OwnedFd> = None;
    if tty {
        let pty = nix::pty::openpty(None, None)?;
        let slave = pty.slave;
        cmd.stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave));
        pty_master = Some(pty.master);
    } else if wants_stdin {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
    } else {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
    }
    let mut child = tokio::process::Command::from(cmd).spawn()?;
    // With a tty or stdin the output comes through us: copy it to the log
    // and to attached clients. Otherwise the shim wrote it there directly.
    if piped {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        if let Some(master) = pty_master {
            let reader = File::from(master.try_clone()?);
            input = Some(File::from(master));
            pump(reader, log, output.clone());
        } else {
            if let Some(stdin) = child.stdin.take() {
                input = Some(File::from(stdin.into_owned_fd()?));
            }
            if let Some(out) = child.stdout.take() {
                pump(
                    File::from(out.into_owned_fd()?),
                    log.try_clone()?,
                    output.clone(),
                );
            }
            if let Some(err) = child.stderr.take() {
                pump(File::from(err.into_owned_fd()?), log, output.clone());
            }
        }
    }
    let log = (!piped).then_some(log_path);
    let shim = child.id().map(|p| p as i32).unwrap_or(0);
    Ok((
        Some(child),
        Arc::new(ContainerIo {
            input,
            output,
            tty,
            log,
        }),
        shim,
    ))
}

fn spec_hostname(h: &PodHandle) -> String {
    let spec = h.pod.lock().unwrap().spec.clone().unwrap_or_default();
    hostname_of(&spec, &h.name)
}

/// A pod's hostname, as the kubelet sets it: a hostNetwork pod shares the
/// node's (its name); others have `spec.hostname`, else the pod's name.
fn hostname_of(spec: &k8s_openapi::api::core::v1::PodSpec, pod: &str) -> String {
    if spec.host_network == Some(true)
        && let Some(node) = &spec.node_name
    {
        return node.clone();
    }
    spec.hostname.clone().unwrap_or_else(|| pod.to_string())
}

/// Copies a container's output to its log and to attached clients.
fn pump(mut from: File, mut log: File, out: broadcast::Sender<bytes::Bytes>) {
    use std::io::{Read, Write};
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let _ = log.write_all(&buf[..n]);
                    let _ = out.send(bytes::Bytes::copy_from_slice(&buf[..n]));
                }
            }
        }
    });
}

fn state_json(uid: &str, s: &CState) -> Value {
    match s {
        CState::Waiting(r, m) => {
            let mut w = json!({"reason": r});
            if !m.is_empty() {
                w["message"] = json!(m);
            }
            json!({"waiting": w})
        }
        CState::Running(t) => json!({"running": {"startedAt": t}}),
        CState::Terminated(code, r, s, f) => json!({"terminated": {
            "exitCode": code, "reason": r, "startedAt": s, "finishedAt": f,
            "containerID": format!("podnet://{uid}")}}),
    }
}

/// The pod's status as kubelet would report it.
fn status_of(k: &Kubelet, h: &PodHandle) -> Value {
    let cs = h.containers.lock().unwrap();
    let spec = h.pod.lock().unwrap().spec.clone().unwrap_or_default();
    let mut statuses = Vec::new();
    let (mut running, mut ready_all, mut all_done, mut any_failed) = (0, true, true, false);
    for c in &spec.containers {
        let Some(rt) = cs.get(&c.name) else {
            continue;
        };
        let is_running = matches!(rt.state, CState::Running(_));
        let is_ready = is_running && rt.ready;
        if is_running {
            running += 1;
        }
        if !is_ready {
            ready_all = false;
        }
        match &rt.state {
            CState::Terminated(code, ..) if *code != 0 => any_failed = true,
            CState::Terminated(..) => {}
            _ => all_done = false,
        }
        let image = c.image.clone().unwrap_or_default();
        let mut s = json!({
            "name": c.name, "image": image, "imageID": format!("podnet-lab://{image}"),
            "ready": is_ready, "started": is_running, "restartCount": rt.restarts,
            "state": state_json(&h.uid, &rt.state),
            "lastState": rt.last.as_ref().map(|l| state_json(&h.uid, l)).unwrap_or(json!({})),
        });
        if !matches!(rt.state, CState::Waiting(..)) {
            s["containerID"] = json!(format!("podnet://{}/{}", h.uid, c.name));
        }
        statuses.push(s);
    }
    let restarted = spec
        .containers
        .iter()
        .any(|c| cs.get(&c.name).is_some_and(|rt| rt.restarts > 0));
    let mut init_statuses = Vec::new();
    let mut initialized = true;
    let mut init_failed = false;
    for c in spec.init_containers.iter().flatten() {
        let Some(rt) = cs.get(&c.name) else {
            initialized = false;
            continue;
        };
        match &rt.state {
            CState::Terminated(0, ..) => {}
            CState::Terminated(..) => {
                initialized = false;
                init_failed = spec.restart_policy.as_deref() == Some("Never");
            }
            _ => initialized = false,
        }
        let image = c.image.clone().unwrap_or_default();
        let mut s = json!({
            "name": c.name, "image": image, "imageID": format!("podnet-lab://{image}"),
            "ready": matches!(rt.state, CState::Terminated(0, ..)), "started": matches!(rt.state, CState::Running(_)),
            "restartCount": rt.restarts,
            "state": state_json(&h.uid, &rt.state),
            "lastState": rt.last.as_ref().map(|l| state_json(&h.uid, l)).unwrap_or(json!({})),
        });
        if !matches!(rt.state, CState::Waiting(..)) {
            s["containerID"] = json!(format!("podnet://{}/{}", h.uid, c.name));
        }
        init_statuses.push(s);
    }
    let mut ephemeral_statuses = Vec::new();
    for c in spec.ephemeral_containers.iter().flatten() {
        let Some(rt) = cs.get(&c.name) else {
            continue;
        };
        let image = c.image.clone().unwrap_or_default();
        let mut s = json!({
            "name": c.name, "image": image, "imageID": format!("podnet-lab://{image}"),
            "ready": false, "started": matches!(rt.state, CState::Running(_)),
            "restartCount": 0,
            "state": state_json(&h.uid, &rt.state),
            "lastState": {},
        });
        if !matches!(rt.state, CState::Waiting(..)) {
            s["containerID"] = json!(format!("podnet://{}/{}", h.uid, c.name));
        }
        ephemeral_statuses.push(s);
    }
    let phase = if init_failed {
        "Failed"
    } else if spec.containers.is_empty() || cs.is_empty() || !initialized {
        "Pending"
    } else if all_done && !any_failed {
        "Succeeded"
    } else if all_done {
        "Failed"
    } else if running > 0 || restarted {
        "Running"
    } else {
        "Pending"
    };
    let t = &h.started;
    let is_ready = ready_all && initialized && !cs.is_empty();
    let ready = if is_ready { "True" } else { "False" };
    let since = {
        let mut rs = h.ready_since.lock().unwrap();
        if rs.0 != is_ready {
            *rs = (is_ready, now());
        }
        rs.1.clone()
    };
    let ip = h.ip.lock().unwrap().clone();
    let mut st = json!({
        "phase": phase,
        "hostIP": k.args.node_ip.to_string(),
        "hostIPs": [{"ip": k.args.node_ip.to_string()}],
        "startTime": t,
        "qosClass": "BestEffort",
        "conditions": [
            {"type": "PodReadyToStartContainers", "status": if ip.is_some() { "True" } else { "False" }, "lastTransitionTime": t},
            {"type": "Initialized", "status": if initialized { "True" } else { "False" }, "lastTransitionTime": t},
            {"type": "Ready", "status": ready, "lastTransitionTime": since},
            {"type": "ContainersReady", "status": ready, "lastTransitionTime": since},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": t},
        ],
        "containerStatuses": statuses,
    });
    if !init_statuses.is_empty() {
        st["initContainerStatuses"] = json!(init_statuses);
    }
    if !ephemeral_statuses.is_empty() {
        st["ephemeralContainerStatuses"] = json!(ephemeral_statuses);
    }
    if let Some(ip) = ip {
        st["podIP"] = json!(ip);
        st["podIPs"] = json!([{ "ip": ip }]);
    }
    st
}

/// Sends the pod's status to the API, unless a status sent meanwhile
/// already covers this change, or the API already has exactly this one.
pub async fn report(k: &Kubelet, h: &PodHandle) {
    let (asked, covered) = &h.reports;
    let mine = asked.fetch_add(1, Ordering::SeqCst) + 1;
    let _order = h.reporting.lock().await;
    if covered.load(Ordering::SeqCst) >= mine {
        return;
    }
    let covers = asked.load(Ordering::SeqCst);
    let st = status_of(k, h);
    if h.last_sent.lock().unwrap().as_ref() == Some(&st) {
        covered.store(covers, Ordering::SeqCst);
        return;
    }
    let pods: Api<Pod> = Api::namespaced(k.client.clone(), &h.namespace);
    match pods
        .patch_status(
            &h.name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": st })),
        )
        .await
    {
        Ok(_) => {
            tracing::debug!(pod = %h.name, "status sent");
            *h.last_sent.lock().unwrap() = Some(st);
            covered.store(covers, Ordering::SeqCst);
        }
        Err(e) => {
            *h.last_sent.lock().unwrap() = None;
            tracing::debug!(pod = %h.name, error = %e, "status update");
        }
    }
}

/// Ends a pod: SIGTERM, the grace period, SIGKILL, CNI DEL, sandbox gone,
/// then the deletion confirmed to the API.
async fn terminate(k: Arc<Kubelet>, h: Arc<PodHandle>, grace: i64) {
    // Waits for a sandbox or container start under way to be recorded;
    // starts that come later see `stop` (set before this runs) and make
    // nothing. Held to the end: nothing of the pod starts meanwhile.
    let _life = h.lifecycle.write().await;
    let signal_all = |sig| {
        for c in h.containers.lock().unwrap().values() {
            if let Some(p) = c.pid {
                // Containers lead sessions of their own: signal the group.
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-p), sig);
            }
        }
    };
    let running: Vec<String> = h
        .containers
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, c)| c.pid.is_some())
        .map(|(n, _)| n.clone())
        .collect();
    for name in running {
        crate::events::pod_event(
            &k,
            &h,
            crate::events::NORMAL,
            "Killing",
            format!("Stopping container {name}"),
        );
    }
    signal_all(nix::sys::signal::Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(grace.max(0) as u64);
    while tokio::time::Instant::now() < deadline
        && h.containers
            .lock()
            .unwrap()
            .values()
            .any(|c| c.shim_pid.is_some())
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal_all(nix::sys::signal::Signal::SIGKILL);
    let k2 = k.clone();
    let h2 = h.clone();
    let _ = tokio::task::spawn_blocking(move || teardown_sandbox(&k2, &h2)).await;
    k.pods.lock().unwrap().remove(&h.uid);
    confirm_deleted(k, h.namespace.clone(), h.name.clone(), h.uid.clone()).await;
}

pub(super) fn teardown_sandbox(k: &Kubelet, h: &PodHandle) {
    if let Some(ns) = &h.netns
        && let Some(list) = k.conflist()
    {
        let result = h.cni_result.lock().unwrap().clone();
        if let Err(e) = invoker(k).del(&list, &attachment(h, ns), result.as_ref()) {
            tracing::warn!(pod = %h.name, error = %e, "CNI DEL");
        }
    }
    if let Some(pid) = *h.sandbox_pid.lock().unwrap() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    if let Some(ns) = &h.netns
        && let Err(e) = podnet_kernel::netns::delete_named(ns)
    {
        tracing::warn!(pod = %h.name, error = %e, "removing the pod's namespace");
    }
    let _ = std::fs::remove_dir_all(&h.dir);
}

/// Tells the API the pod is gone from this node (grace period 0, guarded
/// by UID so a new pod of the same name is never deleted).
async fn confirm_deleted(k: Arc<Kubelet>, ns: String, name: String, uid: String) {
    let pods: Api<Pod> = Api::namespaced(k.client.clone(), &ns);
    let mut dp = DeleteParams::default().grace_period(0);
    dp.preconditions = Some(kube::api::Preconditions {
        uid: Some(uid),
        resource_version: None,
    });
    let _ = pods.delete(&name, &dp).await;
}
