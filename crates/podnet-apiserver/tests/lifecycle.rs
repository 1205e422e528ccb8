//! Object lifecycles through the real kubectl: graceful deletion of pods bound
//! to a node (deletionTimestamp first, gone when the node confirms), ClusterIP
//! release and reuse, NodePort uniqueness, owner-reference garbage
//! collection, namespace deletion.

mod common;

use std::time::Duration;

use common::Lab;

fn wait_gone(lab: &Lab, args: &[&str]) {
    for _ in 0..100 {
        if !lab.kubectl("1.33", args).status.success() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{args:?} still exists");
}

#[test]
fn graceful_pods_ips_and_garbage_collection() {
    let lab = Lab::start();
    let v = "1.33";
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: bound}\nspec:\n  nodeName: n1\n  terminationGracePeriodSeconds: 600\n  containers: [{name: c, image: busybox}]\n";
    lab.ok(v, &["create", "-f", &lab.file("bound.yaml", pod)]);
    lab.ok(v, &["delete", "pod", "bound", "--wait=false"]);
    let ts = lab.ok(
        v,
        &[
            "get",
            "pod",
            "bound",
            "-o",
            "jsonpath={.metadata.deletionTimestamp} {.metadata.deletionGracePeriodSeconds}",
        ],
    );
    assert!(ts.ends_with(" 600") && ts.len() > 10, "{ts}");
    let row = lab.ok(v, &["get", "pod", "bound", "--no-headers"]);
    assert!(row.contains("Terminating"), "{row}");
    // The node confirms: a delete with grace 0.
    let (code, _) = lab.curl(
        "DELETE",
        "/api/v1/namespaces/default/pods/bound?gracePeriodSeconds=0",
        "application/json",
        None,
        true,
    );
    assert_eq!(code, 200);
    assert!(lab.fails(v, &["get", "pod", "bound"]).contains("NotFound"));

    // ClusterIPs: a taken one is refused, a released one can be taken again.
    let svc = |name: &str, ip: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  clusterIP: {ip}\n  type: NodePort\n  ports: [{{port: 80, nodePort: 30080}}]\n"
        )
    };
    lab.ok(
        v,
        &["create", "-f", &lab.file("a.yaml", &svc("a", "10.96.5.5"))],
    );
    let err = lab.fails(
        v,
        &["create", "-f", &lab.file("b.yaml", &svc("b", "10.96.5.5"))],
    );
    assert!(err.contains("provided IP is already allocated"), "{err}");
    let err = lab.fails(
        v,
        &["create", "-f", &lab.file("b2.yaml", &svc("b", "10.96.5.6"))],
    );
    assert!(err.contains("provided port is already allocated"), "{err}");
    lab.ok(v, &["delete", "svc", "a"]);
    lab.ok(
        v,
        &["create", "-f", &lab.file("b3.yaml", &svc("b", "10.96.5.5"))],
    );
    assert_eq!(
        lab.ok(
            v,
            &[
                "get",
                "svc",
                "b",
                "-o",
                "jsonpath={.spec.clusterIP} {.spec.ports[0].nodePort}"
            ]
        ),
        "10.96.5.5 30080"
    );

    // Owner references: deleting the owner deletes its dependents.
    let rs = "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {name: rs}\nspec:\n  selector: {matchLabels: {app: x}}\n  template:\n    metadata: {labels: {app: x}}\n    spec: {containers: [{name: c, image: busybox}]}\n";
    lab.ok(v, &["create", "-f", &lab.file("rs.yaml", rs)]);
    let uid = lab.ok(v, &["get", "rs", "rs", "-o", "jsonpath={.metadata.uid}"]);
    let owned = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: rs-abcde\n  labels: {{app: x}}\n  ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: rs, uid: {uid}, controller: true}}]\nspec: {{containers: [{{name: c, image: busybox}}]}}\n"
    );
    lab.ok(v, &["create", "-f", &lab.file("owned.yaml", &owned)]);
    lab.ok(v, &["delete", "rs", "rs"]);
    wait_gone(&lab, &["get", "pod", "rs-abcde"]);

    // Deleting a namespace deletes what is in it, then the namespace.
    lab.ok(v, &["create", "namespace", "gone"]);
    lab.ok(
        v,
        &[
            "create",
            "configmap",
            "c",
            "-n",
            "gone",
            "--from-literal=a=b",
        ],
    );
    lab.ok(v, &["delete", "namespace", "gone"]);
    wait_gone(&lab, &["get", "namespace", "gone"]);
    let (code, _) = lab.curl(
        "GET",
        "/api/v1/namespaces/gone/configmaps/c",
        "application/json",
        None,
        true,
    );
    assert_eq!(code, 404);
}
