//! Delegated IPAM: when `ipam.type` names another plugin (e.g. `host-local`),
//! it is executed from `CNI_PATH` with the same environment and the same
//! configuration bytes, as the specification describes.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::env::CniEnv;
use crate::error::{CniError, code};
use crate::result::CniResult;

/// Finds `plugin` on `CNI_PATH`.
pub fn find(env: &CniEnv, plugin: &str) -> Result<PathBuf, CniError> {
    env.path
        .iter()
        .map(|dir| PathBuf::from(dir).join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::env(
                "CNI_PATH",
                format!(
                    "IPAM plugin {plugin:?} not found in {:?}",
                    env.path.join(":")
                ),
            )
        })
}

/// Runs the delegate for `verb` and parses its result (ADD) or error.
pub fn run(
    env: &CniEnv,
    plugin: &str,
    verb: &str,
    stdin: &[u8],
) -> Result<Option<CniResult>, CniError> {
    let exe = find(env, plugin)?;
    let mut child = Command::new(&exe)
        .env("CNI_COMMAND", verb)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CniError::io(format!("run {}", exe.display()), e))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(stdin)
        .map_err(|e| CniError::io(format!("write to {}", exe.display()), e))?;
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::io(format!("wait for {}", exe.display()), e))?;
    if !out.status.success() {
        let parsed: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
        let msg = parsed
            .as_ref()
            .and_then(|v| v.get("msg"))
            .and_then(|m| m.as_str())
            .map(String::from)
            .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string());
        let delegate_code = parsed
            .as_ref()
            .and_then(|v| v.get("code"))
            .and_then(|c| c.as_u64())
            .unwrap_or(0);
        return Err(CniError::new(
            code::DELEGATE,
            format!("IPAM plugin {plugin} {verb} failed (code {delegate_code}): {msg}"),
        ));
    }
    if verb != "ADD" {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            format!("IPAM plugin {plugin} printed an unreadable result: {e}"),
        )
    })?;
    CniResult::from_json(&v, plugin).map(Some)
}
