//! The official Kubernetes Python client (Debian's python3-kubernetes)
//! against the lab: tests/python/official_client.py creates, reads, lists,
//! watches and deletes Namespaces, ConfigMaps, Secrets, Deployments,
//! StatefulSets and Jobs, and asserts what a kube-apiserver would answer.

mod common;

use anyhow::{Result, bail};
use common::Lab;

/// Debian's python3, which has python3-kubernetes (scripts/install-deps);
/// a `python3` on PATH may be another one without it.
const PYTHON: &str = "/usr/bin/python3";

#[tokio::test(flavor = "multi_thread")]
async fn the_official_python_client_drives_the_lab() -> Result<()> {
    let lab = Lab::full().await?;
    for n in ["node-a", "node-b"] {
        lab.node(n, true, &[], serde_json::json!([])).await?;
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/official_client.py"
    );
    let out = tokio::process::Command::new(PYTHON)
        .arg(script)
        .arg(&lab.kubeconfig)
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("running {PYTHON}: {e}"))?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    if stderr.contains("No module named 'kubernetes'") {
        bail!(
            "{PYTHON} lacks the kubernetes module: run scripts/install-deps (python3-kubernetes)"
        );
    }
    if !out.status.success() || stdout.trim() != "ok" {
        bail!(
            "the Python client failed ({}):\n{stdout}{stderr}",
            out.status
        );
    }
    Ok(())
}
