//! No orphans (issue #15): a lab torn down in the middle of a pod burst,
//! or after it, leaves no process, no network namespace, no mount and no
//! file, checked over `/proc` by inode and cookie against the namespaces
//! the lab recorded at their creation (not by names, which an orphan no
//! longer has); and pods deleted in the middle of their own start leave
//! no process that no pod owns (`podnet audit`).
//!
//! CI-sized: 5 nodes, 200 pods. `bench/lab-burst/run` does 50 x 2,000.

mod support;

use std::time::{Duration, Instant};

use support::Lab;

const PODS: usize = 200;

/// `(created, running)` of the burst's pods.
fn burst_state(lab: &Lab) -> (usize, usize) {
    let v = lab.get_json(&["pods", "-l", "app=burst"]);
    let items = v["items"].as_array().unwrap();
    let running = items
        .iter()
        .filter(|p| p["status"]["phase"] == "Running")
        .count();
    (items.len(), running)
}

/// Starts a burst of `PODS` pause pods and waits until it is under way:
/// some pods Running and some not yet (created or not). Returns what was
/// seen, to show the race window was hit.
fn burst_under_way(lab: &Lab) -> (usize, usize) {
    lab.kubectl(&[
        "create",
        "deployment",
        "burst",
        "--image=registry.k8s.io/pause:3.10",
        &format!("--replicas={PODS}"),
    ]);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (created, running) = burst_state(lab);
        if running > 0 && running < PODS {
            return (created, running);
        }
        assert!(
            running < PODS,
            "the whole burst ran before the test looked (window missed)"
        );
        assert!(Instant::now() < deadline, "no pod of the burst ran");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_all_running(lab: &Lab, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (created, running) = burst_state(lab);
        if created == want && running == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{running} of {want} burst pods running ({created} exist)"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `podnet down`, then nothing of the lab by our own look over `/proc`.
fn down_and_check(lab: &Lab) {
    let recorded = support::recorded_netns(&lab.name);
    let pod_namespaces = recorded.iter().filter(|r| r.2.contains("-pod-")).count();
    let out = lab.down();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "podnet down failed:\n{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("nothing of lab"), "{said}");
    let left = support::lab_remains(&lab.name, &recorded);
    assert!(
        left.is_empty(),
        "left after down ({} namespaces recorded, {pod_namespaces} of pods):\n{}",
        recorded.len(),
        left.join("\n")
    );
    eprintln!(
        "down: {} ({} namespaces recorded, {pod_namespaces} of pods): nothing left",
        said.lines().next().unwrap_or_default(),
        recorded.len()
    );
}

#[test]
fn down_in_the_middle_of_a_burst_and_after_it_leaves_nothing() {
    // Three times in the middle of the burst, once after it.
    for round in 0..4 {
        let lab = Lab::up_nodes("orb", "vxlan", 4, &[]);
        let (created, running) = burst_under_way(&lab);
        eprintln!("round {round}: {created} of {PODS} pods created, {running} running");
        if round == 3 {
            wait_all_running(&lab, PODS);
            let audit = support::audit(&lab.name);
            assert!(
                audit.status.success(),
                "after the burst:\n{}{}",
                String::from_utf8_lossy(&audit.stdout),
                String::from_utf8_lossy(&audit.stderr)
            );
        } else {
            // The window: down lands while pods are being made.
            assert!(running < PODS, "{running}");
        }
        down_and_check(&lab);
    }
}

#[test]
fn pods_deleted_in_the_middle_of_their_start_leave_no_orphans() {
    let lab = Lab::up_nodes("orp", "vxlan", 4, &[]);
    for round in 0..2 {
        let (created, running) = if round == 0 {
            burst_under_way(&lab)
        } else {
            lab.kubectl(&[
                "scale",
                "deployment",
                "burst",
                &format!("--replicas={PODS}"),
            ]);
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let (c, r) = burst_state(&lab);
                if r > 0 && r < PODS {
                    break (c, r);
                }
                assert!(r < PODS, "the burst ran before the test looked");
                assert!(Instant::now() < deadline, "no pod of the burst ran");
                std::thread::sleep(Duration::from_millis(100));
            }
        };
        // Deleted while many are between their sandbox and their
        // containers: the kubelets' start and stop race here.
        lab.kubectl(&["scale", "deployment", "burst", "--replicas=0"]);
        eprintln!("round {round}: scaled to 0 with {created} created, {running} running");
        let deadline = Instant::now() + Duration::from_secs(180);
        while burst_state(&lab).0 > 0 {
            assert!(Instant::now() < deadline, "burst pods never went away");
            std::thread::sleep(Duration::from_millis(500));
        }
        let audit = support::audit(&lab.name);
        let text = String::from_utf8_lossy(&audit.stdout).into_owned();
        assert!(
            audit.status.success(),
            "orphans after round {round}:\n{text}{}",
            String::from_utf8_lossy(&audit.stderr)
        );
        eprintln!("{text}");
        // No namespace of a deleted pod is left either.
        let uids: Vec<String> = lab.get_json(&["pods", "-A"])["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["metadata"]["uid"].as_str().unwrap()[..13].to_string())
            .collect();
        let stale: Vec<String> = std::fs::read_dir("/run/netns")
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| {
                n.strip_prefix(&format!("{}-pod-", lab.name))
                    .is_some_and(|u| !uids.iter().any(|x| x == u))
            })
            .collect();
        assert!(stale.is_empty(), "namespaces of deleted pods: {stale:?}");
    }
    // And once the whole burst ran: every process owned.
    lab.kubectl(&[
        "scale",
        "deployment",
        "burst",
        &format!("--replicas={PODS}"),
    ]);
    wait_all_running(&lab, PODS);
    let audit = support::audit(&lab.name);
    assert!(
        audit.status.success(),
        "after the burst:\n{}{}",
        String::from_utf8_lossy(&audit.stdout),
        String::from_utf8_lossy(&audit.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&audit.stdout));
    down_and_check(&lab);
}
