//! A pod's sandbox: a network namespace made by the kubelet (named after
//! the lab and the pod), and a small process that holds a UTS and a mount
//! namespace of the pod's own, with the pod's hostname and its
//! `/etc/hosts`, `/etc/resolv.conf` and `/etc/hostname` bind-mounted. Every
//! container of the pod joins that process's namespaces: one `eth0`, one
//! IP, one `localhost`, one hostname.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};

/// Arguments of `podnet-lab-kubelet sandbox`.
#[derive(clap::Args, Debug)]
pub struct SandboxArgs {
    /// The pod's hostname.
    #[arg(long)]
    pub hostname: String,
    /// Directory holding the pod's hosts, resolv.conf and hostname files.
    #[arg(long)]
    pub dir: PathBuf,
    /// The pod's network namespace (absent for hostNetwork pods).
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// A volume: `SOURCE:TARGET[:ro]`, bound at TARGET in the pod.
    #[arg(long = "mount")]
    pub mounts: Vec<String>,
    /// Where to append each mount point this sandbox makes on the shared
    /// filesystem, so that `podnet down` can take them away again.
    #[arg(long)]
    pub made_log: Option<PathBuf>,
}

/// Binds one volume. A missing mount point is made on the node's
/// filesystem (an empty directory or file, as a runtime makes one in an
/// image); nothing mounted here reaches the node.
fn bind_volume(spec: &str, made_log: Option<&Path>) -> anyhow::Result<()> {
    let (rest, read_only) = match spec.strip_suffix(":ro") {
        Some(r) => (r, true),
        None => (spec, false),
    };
    let (src, dst) = rest
        .split_once(':')
        .with_context(|| format!("volume {spec:?} is not SOURCE:TARGET"))?;
    let (src, dst) = (PathBuf::from(src), PathBuf::from(dst));
    if !dst.exists() {
        // Recorded before they are made: a crash in between leaves a line
        // for a path that is not there, never a path without its line.
        let mut missing: Vec<&Path> = dst.ancestors().take_while(|p| !p.exists()).collect();
        missing.reverse();
        if let Some(log) = made_log {
            let lines: String = missing
                .iter()
                .map(|p| format!("{}\n", p.display()))
                .collect();
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .and_then(|mut f| std::io::Write::write_all(&mut f, lines.as_bytes()))
                .with_context(|| format!("record the mount point in {}", log.display()))?;
        }
        if src.is_dir() {
            std::fs::create_dir_all(&dst)
        } else {
            if let Some(p) = dst.parent() {
                std::fs::create_dir_all(p)?;
            }
            std::fs::write(&dst, b"")
        }
        .with_context(|| format!("make the mount point {}", dst.display()))?;
    }
    mount(
        Some(&src),
        &dst,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .with_context(|| format!("bind {} on {}", src.display(), dst.display()))?;
    if read_only {
        mount(
            None::<&str>,
            &dst,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .with_context(|| format!("make {} read-only", dst.display()))?;
    }
    Ok(())
}

/// Sets the namespaces up, says `ready` on stdout, then waits for a signal.
pub fn hold(args: SandboxArgs) -> anyhow::Result<()> {
    // A session of our own: the sandbox outlives the kubelet.
    let _ = nix::unistd::setsid();
    if let Some(ns) = &args.netns {
        let f = std::fs::File::open(ns).with_context(|| format!("open {}", ns.display()))?;
        setns(&f, CloneFlags::CLONE_NEWNET).context("enter the pod's network namespace")?;
    }
    unshare(CloneFlags::CLONE_NEWUTS).context("unshare UTS")?;
    // Nothing mounted here may propagate back to the node.
    podnet_kernel::netns::private_mount_namespace().context("a private mount namespace")?;
    nix::unistd::sethostname(&args.hostname).context("sethostname")?;
    for f in ["hosts", "resolv.conf", "hostname"] {
        let src = args.dir.join(f);
        let dst = PathBuf::from("/etc").join(f);
        if src.exists() && dst.exists() {
            mount(
                Some(&src),
                &dst,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .with_context(|| format!("bind {} on {}", src.display(), dst.display()))?;
        }
    }
    for m in &args.mounts {
        bind_volume(m, args.made_log.as_deref())?;
    }
    let mut out = std::io::stdout();
    out.write_all(b"ready\n")?;
    out.flush()?;
    loop {
        nix::unistd::pause();
    }
}

/// Enters the namespaces of process `pid` (net, UTS, mount), in a child
/// between fork and exec: setns of a mount namespace needs a
/// single-threaded caller.
pub fn enter_pre_exec(fds: &[std::os::fd::RawFd; 3]) -> std::io::Result<()> {
    for (fd, flag) in fds
        .iter()
        .zip([libc::CLONE_NEWNET, libc::CLONE_NEWUTS, libc::CLONE_NEWNS])
    {
        // SAFETY: setns on fds we opened before forking.
        if unsafe { libc::setns(*fd, flag) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    // SAFETY: chdir to a static path.
    if unsafe { libc::chdir(c"/".as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
