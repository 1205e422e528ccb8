//! Network namespaces that podnet (a test, the lab) creates and owns.
//!
//! Every namespace made here carries the creator's pid in its name, so a
//! later run can tell a stale one (creator dead) from a live one and sweep
//! it; the guard removes its namespace, and kills what runs inside, on drop.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::{CloneFlags, setns};

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Failures of namespace handling; each names the namespace at fault.
#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    /// Making or removing a named namespace failed (what `ip netns
    /// add/delete` would have reported).
    #[error("netns {action} {name}: {detail}")]
    Named {
        action: &'static str,
        name: String,
        detail: String,
    },
    /// The namespace file could not be opened or entered.
    #[error("network namespace {path}: {source}")]
    Enter {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A named network namespace that is deleted (with every process in it)
/// when the guard drops, so a failing test cannot leak it.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    file: File,
}

impl NetNs {
    /// Creates `<prefix>-<pid>-<n>`, unique on this machine while we live.
    pub fn unique(prefix: &str) -> Result<Self, NetNsError> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Self::create(&format!("{prefix}-{}-{n}", std::process::id()))
    }

    /// Creates the namespace `name` (failing if it exists) with `lo` up.
    pub fn create(name: &str) -> Result<Self, NetNsError> {
        add_named(name)?;
        Self::open(name)
    }

    /// Adopts an existing named namespace; it is still deleted on drop.
    pub fn open(name: &str) -> Result<Self, NetNsError> {
        let path = Path::new(NETNS_DIR).join(name);
        let file = File::open(&path).map_err(|source| NetNsError::Enter { path, source })?;
        Ok(Self {
            name: name.into(),
            file,
        })
    }

    /// The namespace's name, as `ip netns` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted file, as a runtime passes it in `CNI_NETNS`.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// A command that runs `program` inside this namespace (via `setns`
    /// before exec, so no extra process is spawned).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        command_in(self.file.as_fd(), program)
    }

    /// Runs `f` on a fresh thread that has entered this namespace, so the
    /// caller's own thread never changes namespace.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R, NetNsError> {
        run_in(self.file.as_fd(), &self.path(), f)
    }
}

/// Runs `f` on a fresh thread that has entered the namespace open at `ns`
/// (`path` names it in errors), for namespaces no [`NetNs`] guard owns,
/// such as a lab's nodes. The caller's thread never changes namespace.
pub fn run_in<R: Send>(
    ns: BorrowedFd<'_>,
    path: &Path,
    f: impl FnOnce() -> R + Send,
) -> Result<R, NetNsError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(ns, CloneFlags::CLONE_NEWNET).map_err(|e| NetNsError::Enter {
                path: path.to_path_buf(),
                source: e.into(),
            })?;
            Ok(f())
        })
        .join()
        .expect("namespace thread panicked")
    })
}

/// Gives the calling thread a mount namespace of its own in which nothing
/// mounted propagates back to the host (`/` made private, recursively):
/// the first step of anything that mounts inside a sandbox or a node.
pub fn private_mount_namespace() -> std::io::Result<()> {
    use nix::mount::{MsFlags, mount};
    nix::sched::unshare(CloneFlags::CLONE_NEWNS)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    Ok(())
}

impl Drop for NetNs {
    fn drop(&mut self) {
        kill_processes_in(&self.name);
        let _ = delete_named(&self.name);
    }
}

/// Makes `/run/netns` a shared mount, as iproute2 does, so the namespaces
/// bound under it are seen (and unmounted) in every mount namespace alike,
/// also in those made after this call (a lab kubelet's).
pub fn share_netns_dir() -> Result<(), NetNsError> {
    use nix::mount::{MsFlags, mount};
    let fail = |detail: String| NetNsError::Named {
        action: "share",
        name: NETNS_DIR.into(),
        detail,
    };
    std::fs::create_dir_all(NETNS_DIR).map_err(|e| fail(e.to_string()))?;
    let shared = |dir: &str| {
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    if let Err(nix::errno::Errno::EINVAL) = shared(NETNS_DIR) {
        mount(
            Some(NETNS_DIR),
            NETNS_DIR,
            Some("none"),
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| fail(format!("bind {NETNS_DIR}: {e}")))?;
        shared(NETNS_DIR).map_err(|e| fail(format!("share {NETNS_DIR}: {e}")))?;
    }
    Ok(())
}

/// Creates the named namespace `name` (as `ip netns add` does, without
/// running it: a pod start pays for no extra process), with `lo` up. The
/// namespace lives until [`delete_named`] (or `ip netns delete`).
pub fn add_named(name: &str) -> Result<(), NetNsError> {
    use nix::mount::{MsFlags, mount};
    let fail = |detail: String| NetNsError::Named {
        action: "add",
        name: name.into(),
        detail,
    };
    share_netns_dir().map_err(|e| fail(e.to_string()))?;
    let path = Path::new(NETNS_DIR).join(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| fail(format!("create {}: {e}", path.display())))?;
    let made = std::thread::scope(|s| {
        s.spawn(|| -> Result<(), String> {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|e| format!("unshare: {e}"))?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &path,
                Some("none"),
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| format!("bind the namespace: {e}"))?;
            let mut nl = crate::netlink::Netlink::open().map_err(|e| e.to_string())?;
            let lo = nl
                .link_by_name("lo")
                .map_err(|e| e.to_string())?
                .ok_or("no lo")?;
            nl.set_up(lo.index, true).map_err(|e| e.to_string())
        })
        .join()
        .unwrap_or_else(|_| Err("namespace thread panicked".into()))
    });
    made.map_err(|detail| {
        let _ = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&path);
        fail(detail)
    })
}

/// Deletes the named namespace `name` (as `ip netns delete` does): the
/// namespace itself goes once nothing else holds it.
pub fn delete_named(name: &str) -> Result<(), NetNsError> {
    let path = Path::new(NETNS_DIR).join(name);
    let fail = |detail: String| NetNsError::Named {
        action: "delete",
        name: name.into(),
        detail,
    };
    match nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point, a file left by a creator that died
        // before binding the namespace to it.
        Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
        Err(e) => return Err(fail(format!("unmount {}: {e}", path.display()))),
    }
    std::fs::remove_file(&path).map_err(|e| fail(format!("remove {}: {e}", path.display())))
}

/// A command whose child enters the network namespace `ns` before exec.
pub fn command_in(ns: BorrowedFd<'_>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    use std::os::unix::process::CommandExt;
    let raw = ns.as_raw_fd();
    let mut cmd = Command::new(program);
    // SAFETY: setns is async-signal-safe; the fd outlives the spawn because
    // the caller borrows it for the Command's construction and spawns before
    // the owner drops (NetNs keeps its file for its whole life).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(raw, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Deletes namespaces named `<prefix>-<pid>-<n>` whose creator is gone:
/// what a killed test run left behind.
pub fn sweep_stale(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            kill_processes_in(&name);
            let _ = delete_named(&name);
        }
    }
}

/// Every process whose network namespace is one of the named ones: one
/// pass over `/proc` comparing namespace inodes (what `ip netns pids` does,
/// for many namespaces at once and without a process of its own).
pub fn pids_in(names: &[&str]) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let inodes: std::collections::HashSet<u64> = names
        .iter()
        .filter_map(|n| std::fs::metadata(Path::new(NETNS_DIR).join(n)).ok())
        .map(|m| m.ino())
        .collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| inodes.contains(&m.ino()))
        })
        .collect()
}

/// Kills (SIGKILL) every process whose network namespace is the named one.
pub fn kill_processes_in(name: &str) {
    for pid in pids_in(&[name]) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The kernel's cookie of the network namespace open at `ns`
/// (`SO_NETNS_COOKIE` of a socket made inside it): a 64-bit number never
/// given to another namespace, where inode numbers are reused once a
/// namespace is freed. A namespace recorded by inode and cookie at its
/// creation is then told apart from a later one that got its inode.
pub fn cookie(ns: BorrowedFd<'_>) -> std::io::Result<u64> {
    std::thread::scope(|s| {
        s.spawn(|| -> std::io::Result<u64> {
            setns(ns, CloneFlags::CLONE_NEWNET)?;
            // SAFETY: plain socket(2); the fd is owned at once.
            let fd =
                unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: fd was just returned by socket(2).
            let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            let mut value = 0u64;
            let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
            // SAFETY: value and len are valid for the kernel to write.
            let rc = unsafe {
                libc::getsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    SO_NETNS_COOKIE,
                    (&raw mut value).cast(),
                    &raw mut len,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(value)
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("namespace thread panicked")))
    })
}

/// `SO_NETNS_COOKIE` (Linux 5.14; not in every libc crate yet).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// Inode and cookie of the network namespace at `path` (a name under
/// [`NETNS_DIR`], or `/proc/<pid>/ns/net`): what a namespace is, for as
/// long as the kernel lives.
pub fn identity(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let file = File::open(path)?;
    let ino = file.metadata()?.ino();
    Ok((ino, cookie(file.as_fd())?))
}
