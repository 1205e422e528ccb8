//! The node endpoint the API server forwards `kubectl logs`, `exec` and
//! `attach` to (the kubelet's port, 10250): the protocol lives in
//! `podnet_apiserver::stream`; this side runs processes and reads logs.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use podnet_apiserver::stream::{ExecRequest, LogRequest, NodeError, NodeStreams, StreamIo};

use super::Kubelet;

/// Serves the node endpoint on the node's address.
pub async fn serve(k: Arc<Kubelet>) {
    let token = match &k.args.kubelet_token_file {
        Some(p) => std::fs::read_to_string(p)
            .unwrap_or_default()
            .trim()
            .to_string(),
        None => String::new(),
    };
    if token.is_empty() {
        tracing::warn!("no --kubelet-token-file: logs, exec and attach are not served");
        return;
    }
    let router = podnet_apiserver::stream::node_router(Arc::new(Streams(k.clone())), &token);
    let addr = (k.args.node_ip, k.args.kubelet_port);
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => {
            tracing::info!(
                port = k.args.kubelet_port,
                "node endpoint (logs, exec, attach) serving"
            );
            let _ = axum::serve(l, router).await;
        }
        Err(e) => tracing::error!(error = %e, "cannot bind the node endpoint"),
    }
}

struct Streams(Arc<Kubelet>);

fn err(msg: impl std::fmt::Display) -> NodeError {
    NodeError(msg.to_string())
}

impl NodeStreams for Streams {
    fn logs(
        &self,
        req: LogRequest,
    ) -> BoxFuture<'static, Result<BoxStream<'static, Bytes>, NodeError>> {
        let k = self.0.clone();
        Box::pin(async move {
            let path = match k.find(&req.namespace, &req.pod) {
                Some(h) => h.log_path(&req.container),
                None => {
                    return Err(err(format!(
                        "pod {}/{} is not running on this node",
                        req.namespace, req.pod
                    )));
                }
            };
            let text = std::fs::read(&path).unwrap_or_default();
            let mut start = 0;
            if let Some(n) = req.tail_lines {
                let mut lines = 0;
                for (i, b) in text.iter().enumerate().rev() {
                    if *b == b'\n' && i + 1 != text.len() {
                        lines += 1;
                        if lines == n {
                            start = i + 1;
                            break;
                        }
                    }
                }
                if n == 0 {
                    start = text.len();
                }
            }
            let first = Bytes::copy_from_slice(&text[start..]);
            if !req.follow {
                return Ok(Box::pin(futures::stream::iter([first])) as BoxStream<'static, Bytes>);
            }
            let mut offset = text.len() as u64;
            let stream = async_stream(first, move || {
                let gone = k.find(&req.namespace, &req.pod).is_none();
                let mut more = Vec::new();
                if let Ok(mut f) = std::fs::File::open(&path) {
                    use std::io::Seek;
                    if f.seek(std::io::SeekFrom::Start(offset)).is_ok() {
                        let _ = f.read_to_end(&mut more);
                    }
                }
                offset += more.len() as u64;
                (more, gone)
            });
            Ok(stream)
        })
    }

    fn exec(&self, req: ExecRequest, io: StreamIo) -> BoxFuture<'static, Result<i32, NodeError>> {
        let k = self.0.clone();
        Box::pin(async move {
            let h = k.find(&req.namespace, &req.pod).ok_or_else(|| {
                err(format!(
                    "pod {}/{} is not running on this node",
                    req.namespace, req.pod
                ))
            })?;
            if req.command.is_empty() {
                return attach(h, &req, io).await;
            }
            // The container's own environment, as `kubectl exec` gets it.
            let (pod, ip) = (h.pod.lock().unwrap().clone(), h.ip.lock().unwrap().clone());
            let spec = {
                let cs = h.containers.lock().unwrap();
                cs.get(&req.container)
                    .or_else(|| cs.values().next())
                    .map(|c| c.spec.clone())
            };
            let env = match spec {
                Some(spec) => crate::pod_config::environment(&k, &pod, &spec, ip.as_deref())
                    .await
                    .unwrap_or_default(),
                None => Vec::new(),
            };
            exec(h, &req, io, env).await
        })
    }

    fn port_forward(
        &self,
        namespace: String,
        pod: String,
        port: u16,
    ) -> BoxFuture<'static, Result<tokio::net::TcpStream, NodeError>> {
        let k = self.0.clone();
        Box::pin(async move {
            let h = k
                .find(&namespace, &pod)
                .ok_or_else(|| err(format!("pod {namespace}/{pod} is not running on this node")))?;
            let netns = h.netns.clone();
            let std = tokio::task::spawn_blocking(move || connect_in(netns.as_deref(), port))
                .await
                .map_err(err)??;
            std.set_nonblocking(true).map_err(err)?;
            tokio::net::TcpStream::from_std(std).map_err(err)
        })
    }
}

/// Connects to `port` on localhost in the pod's network namespace (the
/// node's own with hostNetwork), as the kubelet does for port-forward: the
/// socket belongs to the namespace it was made in.
fn connect_in(netns: Option<&str>, port: u16) -> Result<std::net::TcpStream, NodeError> {
    let connect = || {
        std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(10),
        )
        .map_err(|e| {
            err(format!(
                "failed to connect to localhost:{port} inside the pod's network namespace: {e}"
            ))
        })
    };
    match netns {
        None => connect(),
        Some(ns) => {
            let path = std::path::Path::new(podnet_kernel::netns::NETNS_DIR).join(ns);
            let f =
                std::fs::File::open(&path).map_err(|e| err(format!("{}: {e}", path.display())))?;
            podnet_kernel::netns::run_in(std::os::fd::AsFd::as_fd(&f), &path, connect)
                .map_err(err)?
        }
    }
}

/// A follow stream: the first chunk, then whatever `poll` finds every
/// 100 ms, until it says the pod is gone.
fn async_stream(
    first: Bytes,
    mut poll: impl FnMut() -> (Vec<u8>, bool) + Send + 'static,
) -> BoxStream<'static, Bytes> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        if !first.is_empty() && tx.send(first).await.is_err() {
            return;
        }
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (more, gone) = poll();
            if !more.is_empty() && tx.send(Bytes::from(more)).await.is_err() {
                return;
            }
            if gone {
                return;
            }
        }
    });
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (b, rx))
    }))
}

async fn exec(
    h: Arc<super::PodHandle>,
    req: &ExecRequest,
    mut io: StreamIo,
    env: Vec<(String, String)>,
) -> Result<i32, NodeError> {
    let (mut cmd, fds) =
        super::pod::command_in_pod(&h, &req.command, req.tty, None).map_err(err)?;
    cmd.envs(env);
    let mut reader_fds = Vec::new();
    let mut stdin_writer: Option<std::fs::File> = None;
    let mut pty_master = None;
    if req.tty {
        let pty = nix::pty::openpty(None, None).map_err(err)?;
        let slave = pty.slave;
        cmd.stdin(std::process::Stdio::from(slave.try_clone().map_err(err)?))
            .stdout(std::process::Stdio::from(slave.try_clone().map_err(err)?))
            .stderr(std::process::Stdio::from(slave));
        pty_master = Some(pty.master);
    } else {
        cmd.stdin(if req.stdin {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| err(format!("exec {:?}: {e}", req.command[0])))?;
    // The Command still holds the pty slave: drop it, or the master never
    // reads EOF and `exec -it` outlives its process.
    drop(cmd);
    drop(fds);
    if let Some(master) = pty_master {
        let m = std::fs::File::from(master);
        reader_fds.push((m.try_clone().map_err(err)?, io.stdout.clone()));
        stdin_writer = Some(m);
    } else {
        if let Some(i) = child.stdin.take() {
            stdin_writer = Some(std::fs::File::from(std::os::fd::OwnedFd::from(i)));
        }
        if let Some(o) = child.stdout.take() {
            reader_fds.push((
                std::fs::File::from(std::os::fd::OwnedFd::from(o)),
                io.stdout.clone(),
            ));
        }
        if let Some(e) = child.stderr.take() {
            reader_fds.push((
                std::fs::File::from(std::os::fd::OwnedFd::from(e)),
                io.stderr.clone(),
            ));
        }
    }
    let readers: Vec<_> = reader_fds
        .into_iter()
        .map(|(mut f, tx)| {
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = f.read(&mut buf) {
                    if n == 0 || tx.blocking_send(Bytes::copy_from_slice(&buf[..n])).is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    let tty_fd = stdin_writer.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
    let stdin_task = tokio::spawn(async move {
        let mut w = stdin_writer;
        loop {
            tokio::select! {
                data = io.stdin.recv() => match data {
                    Some(d) => {
                        if let Some(f) = w.as_mut() && f.write_all(&d).is_err() { break; }
                    }
                    None => {
                        // stdin closed: without a tty, the child sees EOF.
                        if !req_tty(tty_fd) { drop(w.take()); }
                        break;
                    }
                },
                size = io.resize.recv() => if let (Some((cols, rows)), Some(fd)) = (size, tty_fd) {
                    set_winsize(fd, cols, rows);
                },
            }
        }
        // Keep the pty open until the process ends.
        std::future::pending::<()>().await;
    });
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .map_err(err)?
        .map_err(err)?;
    stdin_task.abort();
    for r in readers {
        let _ = tokio::task::spawn_blocking(move || r.join()).await;
    }
    Ok(status
        .code()
        .unwrap_or(128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)))
}

fn req_tty(fd: Option<i32>) -> bool {
    // SAFETY: isatty on an fd we hold or none.
    fd.is_some_and(|fd| unsafe { libc::isatty(fd) } == 1)
}

fn set_winsize(fd: i32, cols: u16, rows: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ on a pty master we own.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
}

/// A run's output from now on: its broadcast, or (when it writes straight
/// to its log) the log followed from its current end.
fn output_of(cio: &super::pod::ContainerIo) -> tokio::sync::mpsc::Receiver<Bytes> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    match &cio.log {
        Some(path) => {
            let path = path.clone();
            tokio::spawn(async move {
                let Ok(mut f) = tokio::fs::File::open(&path).await else {
                    return;
                };
                use tokio::io::{AsyncReadExt, AsyncSeekExt};
                let _ = f.seek(std::io::SeekFrom::End(0)).await;
                let mut buf = vec![0u8; 8192];
                loop {
                    match f.read(&mut buf).await {
                        Ok(0) if tx.is_closed() => return,
                        Ok(0) => tokio::time::sleep(Duration::from_millis(50)).await,
                        Ok(n) => {
                            if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
            });
        }
        None => {
            let mut sub = cio.output.subscribe();
            tokio::spawn(async move {
                loop {
                    match sub.recv().await {
                        Ok(d) => {
                            if tx.send(d).await.is_err() {
                                return;
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => return,
                    }
                }
            });
        }
    }
    rx
}

/// Attach: the container's output from now on, and our input to its tty
/// or stdin, until it exits.
async fn attach(
    h: Arc<super::PodHandle>,
    req: &ExecRequest,
    mut io: StreamIo,
) -> Result<i32, NodeError> {
    let cio = {
        let cs = h.containers.lock().unwrap();
        let c = cs
            .get(&req.container)
            .ok_or_else(|| err(format!("no container {}", req.container)))?;
        c.io.clone()
            .ok_or_else(|| err(format!("container {} is not running", req.container)))?
    };
    let mut out = output_of(&cio);
    let mut input = match &cio.input {
        Some(f) => Some(f.try_clone().map_err(err)?),
        None => None,
    };
    let tty_fd = input
        .as_ref()
        .map(std::os::fd::AsRawFd::as_raw_fd)
        .filter(|_| cio.tty);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            data = out.recv() => match data {
                Some(d) => { let _ = io.stdout.send(d).await; }
                None => break,
            },
            data = io.stdin.recv(), if input.is_some() => match data {
                Some(d) => { if let Some(f) = input.as_mut() { let _ = f.write_all(&d); } }
                None => { input = None; }
            },
            size = io.resize.recv() => if let (Some((c, r)), Some(fd)) = (size, tty_fd) { set_winsize(fd, c, r); },
            _ = tick.tick() => {
                // The process is gone once its I/O left the container's
                // record; send what is still buffered and stop.
                let ended = h.containers.lock().unwrap().get(&req.container)
                    .is_none_or(|c| !c.io.as_ref().is_some_and(|x| Arc::ptr_eq(x, &cio)));
                if ended {
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    while let Ok(d) = out.try_recv() {
                        let _ = io.stdout.send(d).await;
                    }
                    break;
                }
            }
        }
    }
    // The container ended: report its exit code.
    use super::pod::CState;
    let exit_of = |s: &CState| match s {
        CState::Terminated(code, ..) => Some(*code),
        _ => None,
    };
    for _ in 0..50 {
        if let Some(c) = h.containers.lock().unwrap().get(&req.container) {
            if let Some(code) = exit_of(&c.state) {
                return Ok(code);
            }
            if matches!(c.state, CState::Waiting(..))
                && let Some(code) = c.last.as_ref().and_then(exit_of)
            {
                return Ok(code);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(0)
}
