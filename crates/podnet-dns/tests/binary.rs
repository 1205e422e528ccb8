//! The `podnet-dns` binary as the lab runs it: a static zone file, probes
//! on the metrics port, reload on SIGHUP, a clear error on a bad file.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind(format!("{ip}:0"))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` until true or `limit` passes (waiting on a process we started,
/// not a timing assertion).
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn binary_serves_a_zone_file_and_reloads_on_sighup() {
    let dir = std::env::temp_dir().join(format!("podnet-dns-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let zone = dir.join("zone.json");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cluster.json");
    std::fs::copy(&fixture, &zone).unwrap();
    let log = dir.join("stderr");
    let ip = "127.0.0.4";
    let dns: SocketAddr = format!("{ip}:{}", free_port(ip)).parse().unwrap();
    let http: SocketAddr = format!("{ip}:{}", free_port(ip)).parse().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_podnet-dns"))
        .args([
            "--listen",
            &dns.to_string(),
            "--metrics-listen",
            &http.to_string(),
        ])
        .args(["--no-forward", "--zone-from-file"])
        .arg(&zone)
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("podnet-dns starts");
    let p = Proc(child);
    assert!(
        eventually(Duration::from_secs(10), || std::net::TcpStream::connect(
            http
        )
        .is_ok()
            && http_get(http, "/ready").0 == "HTTP/1.1 200 OK"),
        "ready"
    );
    assert_eq!(http_get(http, "/health").0, "HTTP/1.1 200 OK");
    assert_eq!(
        short(dns, &["kubernetes.default.svc.cluster.local"]),
        ["10.96.0.1"]
    );
    assert_eq!(status(&dig(dns, &["example.com"])), "REFUSED");

    // Add a service to the file, SIGHUP: it answers.
    let text = std::fs::read_to_string(&zone)
        .unwrap()
        .replace("\"name\": \"dual\"", "\"name\": \"dual2\"");
    std::fs::write(&zone, text).unwrap();
    let pid = p.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        eventually(Duration::from_secs(5), || short(
            dns,
            &["dual2.default.svc.cluster.local"]
        ) == ["10.96.0.20"]),
        "reloaded"
    );
    assert_eq!(
        status(&dig(dns, &["dual.default.svc.cluster.local"])),
        "NXDOMAIN"
    );

    // A broken file keeps the index in force.
    std::fs::write(&zone, "{not json").unwrap();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    // Wait for the server to say it tried and refused the file, then ask.
    let refused = "reload failed; keeping the index in force";
    assert!(
        eventually(Duration::from_secs(10), || std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(refused)),
        "no `{refused}` in the log 10 s after SIGHUP with a broken file:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(
        short(dns, &["dual2.default.svc.cluster.local"]),
        ["10.96.0.20"],
        "the index in force before the broken file still answers"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn binary_rejects_a_bad_file_clearly() {
    let dir = std::env::temp_dir().join(format!("podnet-dns-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let zone = dir.join("zone.json");
    std::fs::write(&zone, r#"{"kind": "ConfigMap", "metadata": {"name": "x"}}"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_podnet-dns"))
        .args([
            "--listen",
            "127.0.0.4:0",
            "--metrics-listen",
            "127.0.0.4:0",
            "--no-forward",
        ])
        .arg("--zone-from-file")
        .arg(&zone)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ConfigMap") && err.contains("expected Service"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM starts the lame duck: `/ready` fails at once (the pod leaves
/// the Service), queries are still answered (flows still pointing here),
/// and the process exits when the time is up.
#[test]
fn binary_lame_ducks_on_sigterm() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cluster.json");
    let ip = "127.0.0.4";
    let dns: SocketAddr = format!("{ip}:{}", free_port(ip)).parse().unwrap();
    let http: SocketAddr = format!("{ip}:{}", free_port(ip)).parse().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_podnet-dns"))
        .args([
            "--listen",
            &dns.to_string(),
            "--metrics-listen",
            &http.to_string(),
        ])
        .args(["--no-forward", "--lameduck-secs", "2", "--zone-from-file"])
        .arg(&fixture)
        .stderr(Stdio::null())
        .spawn()
        .expect("podnet-dns starts");
    let mut p = Proc(child);
    assert!(
        eventually(Duration::from_secs(10), || std::net::TcpStream::connect(
            http
        )
        .is_ok()
            && http_get(http, "/ready").0 == "HTTP/1.1 200 OK"),
        "ready"
    );
    let pid = p.0.id().to_string();
    let term = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        eventually(Duration::from_secs(1), || http_get(http, "/ready").0
            == "HTTP/1.1 503 Service Unavailable"),
        "/ready still 200 after SIGTERM: {:?}",
        http_get(http, "/ready")
    );
    assert_eq!(
        short(dns, &["kubernetes.default.svc.cluster.local"]),
        ["10.96.0.1"],
        "answers during the lame duck"
    );
    assert!(
        eventually(Duration::from_secs(10), || p
            .0
            .try_wait()
            .unwrap()
            .is_some()),
        "still running 10 s after SIGTERM"
    );
    let took = term.elapsed();
    assert!(
        took >= Duration::from_millis(1900),
        "exited after {took:?}, before the lame duck was over"
    );
}
