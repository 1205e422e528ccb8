//! Test harness: a real server on 127.0.0.1 (ephemeral port, temporary state
//! directory, TLS and tokens), its own runtime so a test can kill it like a
//! crash, and the real kubectl binaries.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use podnet_apiserver::{Config, Server};

/// The kubectl versions every kubectl test runs with.
pub const KUBECTLS: &[&str] = &["1.30", "1.33"];

/// Path of a kubectl binary; panics with a clear message when missing.
pub fn kubectl_path(version: &str) -> PathBuf {
    let p = PathBuf::from(format!("/usr/lib/google-cloud-sdk/bin/kubectl.{version}"));
    assert!(
        p.exists(),
        "kubectl {version} is required at {} (install the google-cloud-sdk kubectl components)",
        p.display()
    );
    p
}

/// A running server with its runtime.
pub struct Lab {
    pub rt: Option<tokio::runtime::Runtime>,
    pub server: Option<Server>,
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub event_log_len: usize,
}

fn start_in(
    dir: &Path,
    addr: SocketAddr,
    event_log_len: usize,
) -> (tokio::runtime::Runtime, Server) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut last = None;
    for _ in 0..100 {
        let mut cfg = Config::new(addr, dir.to_path_buf());
        cfg.event_log_len = event_log_len;
        match rt.block_on(Server::start(cfg)) {
            Ok(s) => return (rt, s),
            // A killed server releases its port and database a moment later.
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("server did not start: {last:?}");
}

impl Lab {
    pub fn start() -> Lab {
        Lab::start_with(podnet_apiserver::store::EVENT_LOG_LEN)
    }

    pub fn start_with(event_log_len: usize) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let (rt, server) = start_in(dir.path(), "127.0.0.1:0".parse().unwrap(), event_log_len);
        let addr = server.addr;
        Lab {
            rt: Some(rt),
            server: Some(server),
            dir,
            addr,
            event_log_len,
        }
    }

    /// Kills the server as a crash would (every task and socket gone) and
    /// starts it again on the same port and state directory.
    pub fn restart(&mut self) {
        self.kill();
        self.start_again();
    }

    /// Starts a killed server again on the same port and state directory.
    pub fn start_again(&mut self) {
        let (rt, server) = start_in(self.dir.path(), self.addr, self.event_log_len);
        self.rt = Some(rt);
        self.server = Some(server);
    }

    pub fn kill(&mut self) {
        self.server.take();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().unwrap()
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.server().kubeconfig.clone()
    }

    pub fn rv(&self) -> u64 {
        self.server().store().rv()
    }

    /// Runs kubectl `version` with args; returns the output.
    pub fn kubectl(&self, version: &str, args: &[&str]) -> Output {
        self.kubectl_stdin(version, args, None)
    }

    pub fn kubectl_stdin(&self, version: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
        use std::io::Write;
        let mut cmd = Command::new(kubectl_path(version));
        cmd.args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .env("HOME", self.dir.path());
        cmd.stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        });
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("run kubectl");
        if let Some(data) = stdin {
            let mut si = child.stdin.take().unwrap();
            si.write_all(data).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// Runs kubectl and asserts success; returns stdout.
    pub fn ok(&self, version: &str, args: &[&str]) -> String {
        let out = self.kubectl(version, args);
        assert!(
            out.status.success(),
            "kubectl {version} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs kubectl, asserts failure; returns stderr.
    pub fn fails(&self, version: &str, args: &[&str]) -> String {
        let out = self.kubectl(version, args);
        assert!(
            !out.status.success(),
            "kubectl {version} {args:?} should fail: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    /// Writes a file into the state directory and returns its path.
    pub fn file(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    /// curl with the CA and (optionally) the admin token: (status, body).
    pub fn curl(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<&[u8]>,
        token: bool,
    ) -> (u16, String) {
        use std::io::Write;
        let ca = self.dir.path().join("ca.crt");
        let url = format!("{}{}", self.server().url, path);
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "--http1.1",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--cacert",
        ])
        .arg(&ca)
        .args([
            "-X",
            method,
            &url,
            "-H",
            &format!("Content-Type: {content_type}"),
        ]);
        if token {
            cmd.args([
                "-H",
                &format!("Authorization: Bearer {}", self.server().admin_token),
            ]);
        }
        if body.is_some() {
            cmd.args(["--data-binary", "@-"]);
        }
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("curl is required for these tests");
        {
            let mut si = child.stdin.take().unwrap();
            if let Some(b) = body {
                si.write_all(b).unwrap();
            }
        }
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The words of a table's header line.
pub fn header(out: &str) -> Vec<String> {
    out.lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// The first column of every row.
pub fn names(out: &str) -> Vec<String> {
    out.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}
