//! A container's shim: the small process between the kubelet and a
//! container, as containerd's shim is. It starts the container inside the
//! pod's sandbox, waits for it, and writes its exit code to a file. The
//! shim, not the kubelet, is the container's parent, so a restarted kubelet
//! finds its containers still running and still learns how they ended.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;

use crate::node::now;

/// Arguments of `podnet-lab-kubelet shim`.
#[derive(clap::Args, Debug)]
pub struct ShimArgs {
    /// The pod's sandbox process, whose namespaces the container joins.
    #[arg(long)]
    pub sandbox_pid: i32,
    /// Where the container's stdout and stderr go; without it they are the
    /// shim's own (the kubelet's pipes or terminal, for attach).
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// File prefix of the run's records: `<run>.pid` and `<run>.exit`.
    #[arg(long)]
    pub run: PathBuf,
    /// Working directory inside the container.
    #[arg(long)]
    pub workdir: Option<String>,
    /// Make stdin the container's controlling terminal.
    #[arg(long)]
    pub tty: bool,
    /// The container's command.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub argv: Vec<String>,
}

/// The file holding the container's pid while it runs.
pub fn pid_file(run: &Path) -> PathBuf {
    run.with_extension("pid")
}

/// The file holding the container's exit code (and when it ended).
pub fn exit_file(run: &Path) -> PathBuf {
    run.with_extension("exit")
}

/// Reads a run's exit record: the code and the RFC 3339 time it ended.
pub fn read_exit(run: &Path) -> Option<(i32, String)> {
    let text = std::fs::read_to_string(exit_file(run)).ok()?;
    let mut it = text.split_whitespace();
    let code = it.next()?.parse().ok()?;
    Some((code, it.next().unwrap_or_default().to_string()))
}

/// Starts the container, records its pid, waits, records its exit code.
pub fn run(args: ShimArgs) -> anyhow::Result<()> {
    // A session of our own: signals aimed at the kubelet's group miss us.
    let _ = nix::unistd::setsid();
    // The kubelet may die and its pipes with it: the shim must outlive it.
    // SAFETY: setting signal dispositions to ignore is always sound.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    // The lab's mark stays on the shim, not in the container's environment.
    // SAFETY: the shim is single-threaded.
    unsafe { std::env::remove_var(crate::LAB_ENV) };
    let _ = std::fs::remove_file(exit_file(&args.run));
    let open = |k: &str| -> anyhow::Result<OwnedFd> {
        let f = std::fs::File::open(format!("/proc/{}/ns/{k}", args.sandbox_pid))
            .with_context(|| format!("the pod's sandbox ({}) is gone", args.sandbox_pid))?;
        Ok(OwnedFd::from(f))
    };
    let fds = [open("net")?, open("uts")?, open("mnt")?];
    let raw = [fds[0].as_raw_fd(), fds[1].as_raw_fd(), fds[2].as_raw_fd()];
    let workdir = args
        .workdir
        .as_deref()
        .map(std::ffi::CString::new)
        .transpose()
        .context("workingDir")?;
    let log = args
        .log
        .as_ref()
        .map(|log| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .with_context(|| format!("open {}", log.display()))
        })
        .transpose()?;
    if let Some((image, image_args)) = builtin_image(&args.argv) {
        return run_builtin(&args, image, image_args, &raw, workdir.as_deref(), log);
    }
    let mut cmd = Command::new(&args.argv[0]);
    cmd.args(&args.argv[1..]);
    if let Some(f) = log {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(f.try_clone()?))
            .stderr(Stdio::from(f));
    }
    let tty = args.tty;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || enter_container(&raw, workdir.as_deref(), tty));
    }
    let spawned = cmd.spawn();
    drop(fds);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            // The container never ran: 127/126 as a shell reports it.
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            eprintln!("podnet: cannot run {:?}: {e}", args.argv[0]);
            return write_exit(&args.run, code);
        }
    };
    super::write_atomic(&pid_file(&args.run), format!("{}\n", child.id()).as_bytes())?;
    let status = child.wait()?;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    write_exit(&args.run, code)
}

/// Records how a run ended (the code, as a shell reports it, and when).
fn write_exit(run: &Path, code: i32) -> anyhow::Result<()> {
    super::write_atomic(&exit_file(run), format!("{code} {}\n", now()).as_bytes())?;
    Ok(())
}

/// Puts the calling process into the container: the sandbox's namespaces,
/// the working directory, default signal dispositions, a session of its
/// own and, with `tty`, stdin as its controlling terminal. Runs between
/// fork and exec (or in a forked built-in image), so only async-signal-safe
/// calls.
fn enter_container(
    ns: &[std::os::fd::RawFd; 3],
    workdir: Option<&std::ffi::CStr>,
    tty: bool,
) -> std::io::Result<()> {
    super::sandbox::enter_pre_exec(ns)?;
    // SAFETY: chdir to a NUL-terminated path; resetting dispositions,
    // starting a session and taking a terminal are always sound.
    unsafe {
        if let Some(dir) = workdir
            && libc::chdir(dir.as_ptr()) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::signal(libc::SIGHUP, libc::SIG_DFL);
        libc::setsid();
        if tty {
            libc::ioctl(0, libc::TIOCSCTTY, 0);
        }
    }
    Ok(())
}

/// `<this binary> image <name> <args...>`: a built-in image (pause, nginx,
/// agnhost), whose code the shim already holds.
fn builtin_image(argv: &[String]) -> Option<(&str, &[String])> {
    let [exe, verb, name, rest @ ..] = argv else {
        return None;
    };
    let me = std::env::current_exe().ok()?;
    let same = Path::new(exe) == me
        || std::fs::canonicalize(exe)
            .is_ok_and(|p| std::fs::canonicalize(&me).is_ok_and(|m| m == p));
    (verb == "image" && same).then_some((name.as_str(), rest))
}

/// Writes `argv` over this process's own command line (padding with NULs),
/// so `ps`, `pgrep -f` and a restarted kubelet's adoption checks see a forked
/// process (a built-in image, a launched sandbox or shim) as they would an
/// exec'd one rather than as a copy of its parent. Goes through
/// `/proc/self/mem`, so no raw pointer is needed.
pub(super) fn show_command_line(argv: &[String]) -> anyhow::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name's closing parenthesis start at field 3;
    // arg_start and arg_end are fields 48 and 49 (proc(5)).
    let after = stat
        .rsplit_once(')')
        .context("malformed /proc/self/stat")?
        .1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| -> anyhow::Result<u64> {
        Ok(fields
            .get(n - 3)
            .context("short /proc/self/stat")?
            .parse()?)
    };
    let (start, end) = (field(48)?, field(49)?);
    let room = usize::try_from(end.saturating_sub(start))?;
    let mut text = Vec::with_capacity(room);
    for a in argv {
        text.extend_from_slice(a.as_bytes());
        text.push(0);
    }
    text.resize(room, 0);
    if let Some(last) = text.last_mut() {
        *last = 0;
    }
    let mut mem = std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/mem")?;
    mem.seek(SeekFrom::Start(start))?;
    mem.write_all(&text)?;
    Ok(())
}

/// Runs a built-in image in a child forked from the shim, without an exec:
/// the shim is single-threaded and is the same binary, so the child needs
/// nothing loaded again (an exec of this binary is a few milliseconds of
/// CPU per pod, most of a pod start in a burst).
fn run_builtin(
    args: &ShimArgs,
    image: &str,
    image_args: &[String],
    ns: &[std::os::fd::RawFd; 3],
    workdir: Option<&std::ffi::CStr>,
    log: Option<std::fs::File>,
) -> anyhow::Result<()> {
    use nix::unistd::{ForkResult, fork};
    // SAFETY: the shim has no other thread (it never starts a runtime), so
    // the child may do anything a fresh process may.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            let code = (|| -> anyhow::Result<()> {
                enter_container(ns, workdir, args.tty)?;
                if let Some(f) = &log {
                    let null = std::fs::File::open("/dev/null")?;
                    nix::unistd::dup2_stdin(&null)?;
                    nix::unistd::dup2_stdout(f)?;
                    nix::unistd::dup2_stderr(f)?;
                }
                drop(log);
                // `ps` names the image and shows the container's command
                // line, as it would after an exec.
                let _ = nix::sys::prctl::set_name(&std::ffi::CString::new(image)?);
                if let Err(e) = show_command_line(&args.argv) {
                    tracing::debug!("command line of {image} not shown: {e:#}");
                }
                crate::builtin_images::run(image, image_args)
            })();
            let status = match code {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("podnet: {image}: {e:#}");
                    1
                }
            };
            std::process::exit(status);
        }
        ForkResult::Parent { child } => {
            drop(log);
            super::write_atomic(&pid_file(&args.run), format!("{child}\n").as_bytes())?;
            use nix::sys::wait::{WaitStatus, waitpid};
            let code = loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, c)) => break c,
                    Ok(WaitStatus::Signaled(_, sig, _)) => break 128 + sig as i32,
                    Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(e).context("wait for the container"),
                }
            };
            write_exit(&args.run, code)
        }
    }
}
