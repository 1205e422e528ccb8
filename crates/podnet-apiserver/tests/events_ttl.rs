//! Events expire an hour after their last update, as with kube-apiserver's
//! default `--event-ttl`; fresh ones stay.

mod common;

use std::time::Duration;

use common::Lab;

fn event(name: &str, last: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Event\nmetadata: {{name: {name}, namespace: default}}\ninvolvedObject: {{kind: Pod, name: p, namespace: default}}\nreason: Started\nmessage: Started container c\ntype: Normal\ncount: 3\nfirstTimestamp: \"{last}\"\nlastTimestamp: \"{last}\"\n"
    )
}

#[test]
fn events_older_than_the_ttl_are_deleted_and_fresh_ones_stay() {
    let lab = Lab::start();
    let v = "1.33";
    let now = jiff::Timestamp::now();
    let old = (now - jiff::SignedDuration::from_secs(2 * 3600)).to_string();
    let fresh = (now - jiff::SignedDuration::from_secs(60)).to_string();
    lab.ok(
        v,
        &["create", "-f", &lab.file("old.yaml", &event("old", &old))],
    );
    lab.ok(
        v,
        &[
            "create",
            "-f",
            &lab.file("fresh.yaml", &event("fresh", &fresh)),
        ],
    );
    // The server looks every few seconds; give it a generous while.
    let mut gone = false;
    for _ in 0..300 {
        if !lab.kubectl(v, &["get", "event", "old"]).status.success() {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(gone, "an event two hours old was not expired");
    let names = lab.ok(v, &["get", "events", "-o", "name"]);
    assert!(names.contains("event/fresh"), "{names}");
}
