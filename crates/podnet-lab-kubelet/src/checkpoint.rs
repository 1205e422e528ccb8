//! The kubelet's memory of each pod, on disk beside the pod's files: the
//! sandbox, the CNI result, and every container's current run and history.
//! A restarted kubelet reads it to take running pods back (same sandbox, same
//! address, same processes, same restart counts) instead of starting them
//! again, and to tear down pods that were deleted while it was away.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use super::Kubelet;
use super::pod::{
    AdoptedRun, CState, ContainerRt, PodHandle, ephemeral_as_container, run_path, teardown_sandbox,
};
use super::write_atomic;

const FILE: &str = "checkpoint.json";

fn state_to_json(s: &CState) -> Value {
    match s {
        CState::Terminated(code, reason, started, finished) => {
            json!({"exitCode": code, "reason": reason, "startedAt": started, "finishedAt": finished})
        }
        CState::Running(t) => json!({"runningSince": t}),
        CState::Waiting(r, m) => json!({"waiting": r, "message": m}),
    }
}

fn terminated_from_json(v: &Value) -> Option<CState> {
    Some(CState::Terminated(
        v["exitCode"].as_i64()? as i32,
        v["reason"].as_str()?.to_string(),
        v["startedAt"].as_str()?.to_string(),
        v["finishedAt"].as_str()?.to_string(),
    ))
}

/// Records the pod's current state (atomically: a crash leaves the previous
/// record or this one, never half of one).
pub fn save(h: &PodHandle) {
    let containers: serde_json::Map<String, Value> = h
        .containers
        .lock()
        .unwrap()
        .iter()
        .map(|(name, c)| {
            (
                name.clone(),
                json!({
                    "restarts": c.restarts,
                    "shimPid": c.shim_pid,
                    "pid": c.pid,
                    "state": state_to_json(&c.state),
                    "last": c.last.as_ref().map(state_to_json),
                }),
            )
        })
        .collect();
    let record = json!({
        "pod": *h.pod.lock().unwrap(),
        "netns": h.netns,
        "sandboxPid": *h.sandbox_pid.lock().unwrap(),
        "ip": *h.ip.lock().unwrap(),
        "cniResult": *h.cni_result.lock().unwrap(),
        "started": h.started,
        "containers": containers,
    });
    if let Err(e) = write_atomic(&h.dir.join(FILE), record.to_string().as_bytes()) {
        tracing::warn!(pod = %h.name, error = %e, "checkpoint");
    }
}

/// Whether `pid` is alive and its command line names `mark` (so a reused
/// pid is never taken for ours).
fn ours(pid: i64, mark: &str) -> bool {
    pid > 0
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(mark))
}

fn load(dir: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(dir.join(FILE)).ok()?).ok()
}

/// The handle `fresh` filled from the record: sandbox, address, CNI result
/// and containers' history. `None` for the sandbox when it is not ours.
fn restore(fresh: PodHandle, rec: &Value) -> PodHandle {
    let dir = fresh.dir.display().to_string();
    let sandbox = rec["sandboxPid"]
        .as_i64()
        .filter(|p| ours(*p, &dir))
        .map(|p| p as i32);
    *fresh.sandbox_pid.lock().unwrap() = sandbox;
    *fresh.ip.lock().unwrap() = rec["ip"].as_str().map(String::from);
    *fresh.cni_result.lock().unwrap() = Some(rec["cniResult"].clone()).filter(|v| !v.is_null());
    let spec = fresh.pod.lock().unwrap().spec.clone().unwrap_or_default();
    // Ephemeral containers (`kubectl debug`) are taken back like the
    // others: one still running is adopted, one that ended stays ended (it
    // runs once), one added while the kubelet was away is started.
    let ephemeral = spec
        .ephemeral_containers
        .iter()
        .flatten()
        .filter_map(|ec| ephemeral_as_container(&fresh.name, ec));
    {
        let mut cs = fresh.containers.lock().unwrap();
        for c in spec.containers.iter().cloned().chain(ephemeral) {
            let saved = &rec["containers"][&c.name];
            cs.insert(
                c.name.clone(),
                ContainerRt {
                    spec: c,
                    state: terminated_from_json(&saved["state"])
                        .unwrap_or(CState::Waiting("ContainerCreating".into(), String::new())),
                    last: terminated_from_json(&saved["last"]),
                    restarts: saved["restarts"].as_i64().unwrap_or(0) as i32,
                    pid: None,
                    shim_pid: None,
                    ready: false,
                    io: None,
                },
            );
        }
    }
    PodHandle {
        started: rec["started"]
            .as_str()
            .map(String::from)
            .unwrap_or(fresh.started.clone()),
        ..fresh
    }
}

/// A container to supervise, with the run it still has going (if any).
pub type ContainerToRun = (String, Option<AdoptedRun>);

/// Takes back a pod this node ran before the kubelet restarted, if its
/// sandbox still lives: the handle and, per container to supervise, the run
/// still going (or `None` to start one). A pod whose sandbox died is torn
/// down (its address freed) so that it starts afresh.
pub fn adopt(
    k: &Arc<Kubelet>,
    pod: &Pod,
    fresh: PodHandle,
) -> Option<(Arc<PodHandle>, Vec<ContainerToRun>)> {
    let rec = load(&fresh.dir)?;
    let h = restore(fresh, &rec);
    if h.sandbox_pid.lock().unwrap().is_none() {
        tracing::info!(pod = %h.name, "sandbox gone while the kubelet was away: starting the pod again");
        end_runs(&h, &rec);
        teardown_sandbox(k, &h);
        return None;
    }
    let ready_of = |name: &str| {
        pod.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.name == name))
            .is_some_and(|c| c.ready)
    };
    let mut runs = Vec::new();
    for (name, c) in h.containers.lock().unwrap().iter() {
        if matches!(c.state, CState::Terminated(..)) {
            continue; // ended for good before the restart
        }
        let saved = &rec["containers"][name];
        if saved["shimPid"].is_null() {
            end_unrecorded_run(&h, name);
        }
        let run = saved["shimPid"].as_i64().map(|shim| {
            let run = run_path(&h, name).display().to_string();
            AdoptedRun {
                // A shim that is gone (or not ours) ended its run while we
                // were away: its exit record tells how.
                shim_pid: if ours(shim, &run) { shim as i32 } else { 0 },
                pid: saved["pid"].as_i64().map(|p| p as i32),
                started: saved["state"]["runningSince"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                ready: ready_of(name),
            }
        });
        runs.push((name.clone(), run));
    }
    tracing::info!(pod = %h.name, containers = runs.len(), "pod taken back after a kubelet restart");
    Some((Arc::new(h), runs))
}

/// Kills a container started just before the kubelet died, before its run
/// was recorded: its shim wrote its pid, and is still its parent.
fn end_unrecorded_run(h: &PodHandle, name: &str) {
    let run = run_path(h, name);
    let Some(pid) = std::fs::read_to_string(super::shim::pid_file(&run))
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok())
    else {
        return;
    };
    let parent = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // The command may hold spaces: the ppid follows ") <state> ".
            let rest = &s[s.rfind(')')? + 2..];
            rest.split_whitespace().nth(1)?.parse::<i64>().ok()
        });
    if parent.is_some_and(|ppid| ours(ppid, &run.display().to_string())) {
        tracing::info!(pod = %h.name, container = name, "ending a run started before the kubelet died");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(-pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Kills the containers of a record whose shims are still ours.
fn end_runs(h: &PodHandle, rec: &Value) {
    let Some(containers) = rec["containers"].as_object() else {
        return;
    };
    for (name, c) in containers {
        let run = run_path(h, name).display().to_string();
        if let (Some(shim), Some(pid)) = (c["shimPid"].as_i64(), c["pid"].as_i64())
            && ours(shim, &run)
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(-(pid as i32)),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Tears down every pod on disk that the API no longer binds to this node
/// (deleted while the kubelet was away).
pub fn collect_orphans(k: &Arc<Kubelet>, bound: &HashSet<String>) {
    let Ok(entries) = std::fs::read_dir(k.args.state_dir.join("pods")) else {
        return;
    };
    for e in entries.flatten() {
        let uid = e.file_name().to_string_lossy().into_owned();
        if bound.contains(&uid) || k.pods.lock().unwrap().contains_key(&uid) {
            continue;
        }
        let Some(rec) = load(&e.path()) else {
            let _ = std::fs::remove_dir_all(e.path());
            continue;
        };
        let Ok(pod) = serde_json::from_value::<Pod>(rec["pod"].clone()) else {
            continue;
        };
        let h = restore(super::pod::new_handle(k, &pod), &rec);
        tracing::info!(pod = %h.name, "pod deleted while the kubelet was away: tearing it down");
        end_runs(&h, &rec);
        teardown_sandbox(k, &h);
    }
}
