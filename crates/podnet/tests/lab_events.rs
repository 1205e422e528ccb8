//! `kubectl describe pod` and `kubectl get events` tell a pod's story as on
//! a real cluster: the scheduler, the ReplicaSet controller and the kubelet
//! record their Events with the real reasons and words, and a repeat is
//! counted on one Event.

mod support;

use std::time::{Duration, Instant};

use support::Lab;

/// (reason, message, count) of the Events about `kind/name`.
fn events(lab: &Lab, kind: &str, name: &str) -> Vec<(String, String, i64)> {
    let v = lab.get_json(&[
        "events",
        "--field-selector",
        &format!("involvedObject.kind={kind},involvedObject.name={name}"),
    ]);
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or_default().to_string(),
                e["message"].as_str().unwrap_or_default().to_string(),
                e["count"].as_i64().unwrap_or(1),
            )
        })
        .collect()
}

fn wait_for_event(lab: &Lab, kind: &str, name: &str, f: impl Fn(&(String, String, i64)) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let evs = events(lab, kind, name);
        if evs.iter().any(&f) {
            return;
        }
        assert!(Instant::now() < deadline, "{kind}/{name}: {evs:#?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn pods_tell_their_story_in_events() {
    let lab = Lab::up("evt", "vxlan");
    lab.kubectl(&[
        "create",
        "deployment",
        "web",
        "--image=nginx",
        "--replicas=2",
    ]);
    lab.wait_ready("app=web");
    let pod = lab.kubectl(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    let node = lab.kubectl(&["get", "pod", &pod, "-o", "jsonpath={.spec.nodeName}"]);
    wait_for_event(&lab, "Pod", &pod, |e| {
        e.0 == "Started" && e.1 == "Started container nginx"
    });
    for (reason, msg) in [
        (
            "Scheduled",
            format!("Successfully assigned default/{pod} to {node}"),
        ),
        (
            "Pulled",
            "Container image \"nginx\" already present on machine".to_string(),
        ),
        ("Created", "Created container: nginx".to_string()),
    ] {
        wait_for_event(&lab, "Pod", &pod, |e| e.0 == reason && e.1 == msg);
    }
    let rs = lab.kubectl(&[
        "get",
        "rs",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    wait_for_event(&lab, "ReplicaSet", &rs, |e| {
        e.0 == "SuccessfulCreate" && e.1 == format!("Created pod: {pod}")
    });

    // A container that keeps failing: BackOff, counted on one Event.
    lab.kubectl(&[
        "run",
        "crash",
        "--image=busybox",
        "--",
        "sh",
        "-c",
        "exit 3",
    ]);
    wait_for_event(&lab, "Pod", "crash", |e| {
        e.0 == "BackOff"
            && e.1
                .starts_with("Back-off restarting failed container crash in pod crash_default(")
            && e.2 >= 2
    });
    let started: Vec<_> = events(&lab, "Pod", "crash")
        .into_iter()
        .filter(|e| e.0 == "Started")
        .collect();
    assert_eq!(started.len(), 1, "one Started event, counted: {started:#?}");

    // A readiness probe that fails: Unhealthy.
    lab.apply(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: unready\nspec:\n  containers:\n  - name: web\n    image: nginx\n    readinessProbe:\n      httpGet: {path: /, port: 81}\n      periodSeconds: 1\n",
    );
    wait_for_event(&lab, "Pod", "unready", |e| {
        e.0 == "Unhealthy" && e.1.starts_with("Readiness probe failed: ")
    });

    // Deleting a pod: Killing.
    lab.kubectl(&["delete", "pod", &pod, "--wait=true"]);
    wait_for_event(&lab, "Pod", &pod, |e| {
        e.0 == "Killing" && e.1 == "Stopping container nginx"
    });
    let described = lab.kubectl(&["describe", "pod", "crash"]);
    assert!(described.contains("BackOff"), "{described}");
    assert!(described.contains("kubelet"), "{described}");
    lab.down();
}
