//! The launcher: a small single-threaded process of the kubelet's binary,
//! exec'd once per kubelet, that forks sandboxes and shims on request instead
//! of the kubelet exec'ing its own binary for each (an exec of this binary
//! costs more than a millisecond of CPU: a pod start in a burst paid two).
//!
//! The kubelet sends the helper's command line, its environment and its
//! three standard streams (SCM_RIGHTS) over a socket pair; the launcher
//! forks, the child runs the helper as `main` would have, and the launcher
//! answers with the child's pid. Children are reaped by the launcher
//! (SIGCHLD ignored); the kubelet learns of their end through a pidfd and the
//! shim's exit record, as it does for shims it adopted after a restart.
//! The launcher dies with the kubelet (PDEATHSIG); its children do not.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, OnceLock};

use anyhow::Context;
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};

/// The kubelet's end of the socket pair, once the launcher runs.
static LAUNCHER: OnceLock<Mutex<OwnedFd>> = OnceLock::new();

/// Runs a helper's command line in a launched child; returns its exit code.
pub type Dispatch = fn(Vec<String>) -> i32;

#[derive(serde::Serialize, serde::Deserialize)]
struct Request {
    argv: Vec<String>,
    /// `None`: the launcher's own environment (the kubelet's at start).
    env: Option<Vec<(String, String)>>,
}

/// Room for the command lines of the helpers the launcher forks: they
/// write theirs over the launcher's, so it is padded to this size.
const COMMAND_LINE_ROOM: usize = 4096;

/// Starts the launcher (`<exe> launcher`, one exec for the kubelet's life).
/// Call it from the main thread: the launcher dies with the thread that
/// started it (PDEATHSIG), and a runtime's worker threads come and go.
pub fn start(exe: &std::path::Path) -> anyhow::Result<()> {
    let (kubelet_end, launcher_end) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::empty(),
    )
    .context("socketpair for the launcher")?;
    nix::fcntl::fcntl(
        &kubelet_end,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    let child = std::process::Command::new(exe)
        .arg("launcher")
        .arg("--socket-fd")
        .arg(launcher_end.as_raw_fd().to_string())
        .arg(" ".repeat(COMMAND_LINE_ROOM))
        .stdin(std::process::Stdio::null())
        .spawn()
        .context("start the launcher")?;
    drop(launcher_end);
    // Reaped by a thread of its own; it only ends with the kubelet.
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    let _ = LAUNCHER.set(Mutex::new(kubelet_end));
    Ok(())
}

/// The launcher's main: serves the kubelet until it goes away.
pub fn run(socket_fd: RawFd, dispatch: Dispatch) -> anyhow::Result<()> {
    // A kubelet that died before this line closed its end of the socket:
    // the first receive then ends the loop.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    // SAFETY: the fd was passed on our command line by the kubelet.
    let sock = unsafe { OwnedFd::from_raw_fd(socket_fd) };
    nix::fcntl::fcntl(
        &sock,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    // SAFETY: single-threaded; children are reaped by the kernel.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    serve(sock, dispatch);
    Ok(())
}

/// Set once the launcher is found gone: from then on helpers are exec'd.
static GONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the launcher runs (it does in the kubelet; not in helpers, and
/// not once it was found gone).
pub fn available() -> bool {
    LAUNCHER.get().is_some() && !GONE.load(std::sync::atomic::Ordering::Relaxed)
}

fn gone(what: &str, e: impl std::fmt::Display) -> anyhow::Error {
    GONE.store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::warn!(error = %e, "the launcher is gone ({what}): sandboxes and shims are exec'd from now on");
    anyhow::anyhow!("the launcher is gone ({what}): {e}")
}

/// Why a launch failed, which decides whether the caller may start the
/// helper another way.
#[derive(Debug)]
pub enum LaunchError {
    /// Nothing was forked (no launcher, the request never reached it, or
    /// it could not fork): exec'ing the helper instead is safe.
    NotLaunched(anyhow::Error),
    /// The request reached the launcher but its answer was lost: a child
    /// may be running. Starting the helper again would leave that one
    /// behind with no pod owning it (two sandboxes, two containers), so
    /// the caller ends whatever carries the helper's mark instead.
    AnswerLost(anyhow::Error),
}

impl std::fmt::Display for LaunchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LaunchError::NotLaunched(e) => write!(f, "{e:#}"),
            LaunchError::AnswerLost(e) => write!(f, "the launcher's answer was lost: {e:#}"),
        }
    }
}

impl std::error::Error for LaunchError {}

/// Starts `argv` (the kubelet's own command line: `<exe> sandbox ...` or
/// `<exe> shim ...`) in a launched child with these standard streams.
pub fn spawn(
    argv: &[String],
    env: Option<Vec<(String, String)>>,
    stdio: [BorrowedFd<'_>; 3],
) -> Result<i32, LaunchError> {
    use LaunchError::{AnswerLost, NotLaunched};
    let sock = LAUNCHER
        .get()
        .ok_or_else(|| NotLaunched(anyhow::anyhow!("no launcher")))?
        .lock()
        .unwrap();
    let req = serde_json::to_vec(&Request {
        argv: argv.to_vec(),
        env,
    })
    .map_err(|e| NotLaunched(e.into()))?;
    let fds = stdio.map(|f| f.as_raw_fd());
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(&req)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(|e| NotLaunched(gone("send", e)))?;
    let mut answer = [0u8; 4];
    let n =
        nix::unistd::read(sock.as_fd(), &mut answer).map_err(|e| AnswerLost(gone("read", e)))?;
    if n != 4 {
        return Err(AnswerLost(gone("read", "end of stream")));
    }
    let pid = i32::from_ne_bytes(answer);
    if pid <= 0 {
        return Err(NotLaunched(anyhow::anyhow!(
            "the launcher could not fork: {}",
            std::io::Error::from_raw_os_error(-pid)
        )));
    }
    Ok(pid)
}

fn serve(sock: OwnedFd, dispatch: Dispatch) {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let mut space = nix::cmsg_space!([RawFd; 3]);
        let (len, fds) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = match recvmsg::<()>(
                sock.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => m,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return,
            };
            let mut fds = Vec::new();
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmRights(v) = c {
                        // SAFETY: the kernel just gave us these descriptors.
                        fds.extend(v.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                    }
                }
            }
            (msg.bytes, fds)
        };
        if len == 0 {
            return; // the kubelet is gone
        }
        let answer = match serde_json::from_slice::<Request>(&buf[..len]) {
            Ok(req) if fds.len() == 3 => launch(&sock, req, fds, dispatch),
            _ => -libc::EINVAL,
        };
        if nix::unistd::write(&sock, &answer.to_ne_bytes()).is_err() {
            return;
        }
    }
}

/// Forks one child; returns its pid or a negative errno.
fn launch(sock: &OwnedFd, req: Request, fds: Vec<OwnedFd>, dispatch: Dispatch) -> i32 {
    // SAFETY: the launcher is single-threaded.
    match unsafe { nix::unistd::fork() } {
        Err(e) => -(e as i32),
        Ok(nix::unistd::ForkResult::Parent { child }) => child.as_raw(),
        Ok(nix::unistd::ForkResult::Child) => {
            // SAFETY: restoring the default for the helper (a shim waits
            // for its container); fds we own; single-threaded child.
            unsafe {
                libc::signal(libc::SIGCHLD, libc::SIG_DFL);
                libc::close(sock.as_raw_fd());
            }
            let ok = nix::unistd::dup2_stdin(&fds[0]).is_ok()
                && nix::unistd::dup2_stdout(&fds[1]).is_ok()
                && nix::unistd::dup2_stderr(&fds[2]).is_ok();
            drop(fds);
            if !ok {
                std::process::exit(127);
            }
            if let Some(env) = req.env {
                for (k, _) in std::env::vars_os() {
                    // SAFETY: single-threaded child.
                    unsafe { std::env::remove_var(k) };
                }
                for (k, v) in env {
                    // SAFETY: single-threaded child.
                    unsafe { std::env::set_var(k, v) };
                }
            }
            // `ps` (and a restarted kubelet adopting it) sees the command
            // line it would have been exec'd with.
            let _ = super::shim::show_command_line(&req.argv);
            std::process::exit(dispatch(req.argv));
        }
    }
}
