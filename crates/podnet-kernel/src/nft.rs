//! nftables through its own language: a planner renders nft text, this
//! module loads it with one `nft -f -`, which the kernel applies as a single
//! atomic transaction. The text is what operators read and what golden tests
//! compare.

use std::io::Write;
use std::os::fd::BorrowedFd;
use std::process::{Command, Stdio};

/// A failed nft invocation, with nft's own message.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// nft could not be started (not installed?).
    #[error("cannot run nft: {0} (install the nftables package)")]
    Spawn(#[source] std::io::Error),
    /// nft rejected the script or the command.
    #[error("nft {what} failed: {stderr}")]
    Rejected { what: String, stderr: String },
}

/// Where nft runs: this process's own namespace, or another one.
#[derive(Clone, Copy, Debug, Default)]
pub enum Namespace<'a> {
    /// The caller's network namespace (the agent inside its node).
    #[default]
    Current,
    /// Another namespace, by an open fd to it.
    Fd(BorrowedFd<'a>),
}

fn command(ns: Namespace<'_>) -> Command {
    match ns {
        Namespace::Current => Command::new("nft"),
        Namespace::Fd(fd) => crate::netns::command_in(fd, "nft"),
    }
}

/// Loads `script` in one transaction: all of it takes effect or none.
pub fn apply(ns: Namespace<'_>, script: &str) -> Result<(), NftError> {
    let mut child = command(ns)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let written = stdin.write_all(script.as_bytes());
    drop(stdin);
    let out = child.wait_with_output().map_err(NftError::Spawn)?;
    if !out.status.success() || written.is_err() {
        return Err(NftError::Rejected {
            what: "-f".into(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Runs one nft command (e.g. `["list", "table", "inet", "podnet"]`) and
/// returns its output.
pub fn run(ns: Namespace<'_>, args: &[&str]) -> Result<String, NftError> {
    let out = command(ns)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(NftError::Spawn)?;
    if !out.status.success() {
        return Err(NftError::Rejected {
            what: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Rules per chain (for drift checks that must not read set elements) of an nft listing or script (lines inside `chain X {`
/// other than its `type ... hook` line).
pub fn chain_rule_counts(text: &str) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("chain ") {
            let name = rest.trim_end_matches('{').trim().to_string();
            out.insert(name.clone(), 0);
            current = Some(name);
        } else if line == "}" {
            current = None;
        } else if let Some(c) = &current
            && !line.is_empty()
            && !line.starts_with("type ")
        {
            *out.get_mut(c).expect("inserted") += 1;
        }
    }
    out
}
