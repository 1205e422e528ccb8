//! The lab's built-in images. The lab pulls nothing: these few well-known
//! images map to small behaviours of this binary, run inside the pod like
//! any container process. Everything else needs a `command` from the host's
//! filesystem (see `kubelet::images`).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};

use anyhow::{Context, bail};

/// Runs built-in image `name` with `args`.
pub fn run(name: &str, args: &[String]) -> anyhow::Result<()> {
    match name {
        "nginx" => http(80, Page::Nginx),
        "pause" => loop {
            nix::unistd::pause();
        },
        "agnhost" => agnhost(args),
        other => bail!("no built-in image {other:?}"),
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[derive(Clone, Copy)]
enum Page {
    Nginx,
    Netexec,
    ServeHostname,
}

/// agnhost's subcommands the network e2e tests use most.
fn agnhost(args: &[String]) -> anyhow::Result<()> {
    let sub = args.first().map(String::as_str).unwrap_or("pause");
    let flag = |name: &str, default: u16| -> u16 {
        args.iter()
            .find_map(|a| {
                a.strip_prefix(&format!("--{name}="))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(default)
    };
    match sub {
        "netexec" => {
            let udp = flag("udp-port", 8081);
            std::thread::spawn(move || udp_echo(udp));
            http(flag("http-port", 8080), Page::Netexec)
        }
        "serve-hostname" => http(flag("port", 9376), Page::ServeHostname),
        "pause" => loop {
            nix::unistd::pause();
        },
        other => bail!(
            "agnhost {other} is not built into the podnet lab (netexec, serve-hostname, pause are)"
        ),
    }
}

fn http(port: u16, page: Page) -> anyhow::Result<()> {
    let l = TcpListener::bind(("::", port))
        .or_else(|_| TcpListener::bind(("0.0.0.0", port)))
        .with_context(|| format!("listen on :{port}"))?;
    println!("listening on :{port}");
    for conn in l.incoming().flatten() {
        std::thread::spawn(move || {
            let _ = serve(conn, page);
        });
    }
    Ok(())
}

/// The peer as Go's `RemoteAddr` shows it: IPv4 clients of a dual-stack
/// listener without the `::ffff:` mapping.
fn unmapped(peer: std::net::SocketAddr) -> std::net::SocketAddr {
    match peer {
        std::net::SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => std::net::SocketAddr::from((v4, v6.port())),
            None => peer,
        },
        v4 => v4,
    }
}

/// Serves one connection: HTTP/1.1 keep-alive, as nginx does, until the
/// client closes it or asks to.
fn serve(mut conn: TcpStream, page: Page) -> std::io::Result<()> {
    let peer = unmapped(conn.peer_addr()?);
    let mut reader = BufReader::new(conn.try_clone()?);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut close = line.trim_end().ends_with("HTTP/1.0");
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
                break;
            }
            if h.to_ascii_lowercase().starts_with("connection:")
                && h.to_ascii_lowercase().contains("close")
            {
                close = true;
            }
        }
        let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let host = hostname();
        let body = match page {
            Page::Nginx => format!(
                "<!DOCTYPE html>\n<html><head><title>Welcome to nginx!</title></head>\n<body><h1>Welcome to nginx!</h1>\n<p>Served by pod {host} (podnet lab built-in nginx).</p></body></html>\n"
            ),
            Page::ServeHostname => host.clone(),
            Page::Netexec => match path {
                "/hostname" => host.clone(),
                "/clientip" => peer.to_string(),
                "/echo" => query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("msg="))
                    .unwrap_or("")
                    .to_string(),
                "/healthz" => "ok".into(),
                _ => "NOW: podnet netexec".into(),
            },
        };
        println!("{} {} {}", peer, line.trim(), 200);
        let ctype = if matches!(page, Page::Nginx) {
            "text/html"
        } else {
            "text/plain"
        };
        write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{body}",
            body.len(),
            if close { "close" } else { "keep-alive" }
        )?;
        if close {
            return Ok(());
        }
    }
}

fn udp_echo(port: u16) {
    let Ok(sock) = UdpSocket::bind(("0.0.0.0", port)) else {
        return;
    };
    let mut buf = [0u8; 2048];
    while let Ok((n, peer)) = sock.recv_from(&mut buf) {
        let msg = String::from_utf8_lossy(&buf[..n]).trim().to_string();
        let reply = match msg.as_str() {
            "hostname" => hostname(),
            m if m.starts_with("echo ") => m[5..].to_string(),
            "clientip" => peer.to_string(),
            _ => msg,
        };
        let _ = sock.send_to(reply.as_bytes(), peer);
    }
}
