//! Secrets, namespace termination, deletion propagation and
//! events.k8s.io/v1 through the real kubectl (1.30 and 1.33) against the
//! real server: what a user sees on a cluster, and bad input refused with
//! kube-apiserver's Status and nothing changed.

mod common;

use std::time::Duration;

use common::{KUBECTLS, Lab, header};
use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// Polls until `args` fails (the object is gone); kubectl's own `--wait`
/// cannot be used for objects that wait on another actor.
fn wait_gone(lab: &Lab, args: &[&str]) {
    for _ in 0..300 {
        if !lab.kubectl("1.33", args).status.success() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{args:?} still exists");
}

#[test]
fn secrets_of_every_type() {
    let lab = Lab::start();
    let dir = lab.dir.path().display().to_string();
    for v in KUBECTLS {
        let sfx = v.replace('.', "");
        let g = format!("generic-{sfx}");
        lab.ok(
            v,
            &[
                "create",
                "secret",
                "generic",
                &g,
                "--from-literal=user=admin",
                "--from-literal=pass=p@ss",
            ],
        );
        let t = format!("tls-{sfx}");
        // The server's own CA is a certificate and its key: a valid pair.
        lab.ok(
            v,
            &[
                "create",
                "secret",
                "tls",
                &t,
                &format!("--cert={dir}/ca.crt"),
                &format!("--key={dir}/ca.key"),
            ],
        );
        let d = format!("registry-{sfx}");
        lab.ok(
            v,
            &[
                "create",
                "secret",
                "docker-registry",
                &d,
                "--docker-server=registry.example",
                "--docker-username=u",
                "--docker-password=p",
            ],
        );
        let table = lab.ok(v, &["get", "secrets"]);
        assert_eq!(header(&table), ["NAME", "TYPE", "DATA", "AGE"], "{table}");
        let row = |name: &str| -> Vec<String> {
            table
                .lines()
                .find(|l| l.split_whitespace().next() == Some(name))
                .unwrap_or_else(|| panic!("{name} not in {table}"))
                .split_whitespace()
                .map(str::to_string)
                .collect()
        };
        assert_eq!(row(&g)[1..3], ["Opaque", "2"]);
        assert_eq!(row(&t)[1..3], ["kubernetes.io/tls", "2"]);
        assert_eq!(row(&d)[1..3], ["kubernetes.io/dockerconfigjson", "1"]);
        assert_eq!(
            lab.ok(v, &["get", "secret", &g, "-o", "jsonpath={.data.user}"]),
            "YWRtaW4="
        );
        let cfg = lab.ok(
            v,
            &[
                "get",
                "secret",
                &d,
                "-o",
                "jsonpath={.data.\\.dockerconfigjson}",
            ],
        );
        let cfg = json(&String::from_utf8(base64_decode(&cfg)).unwrap());
        assert_eq!(cfg["auths"]["registry.example"]["username"], "u");
        let described = lab.ok(v, &["describe", "secret", &g]);
        assert!(described.contains("user:  5 bytes"), "{described}");
    }

    let v = "1.33";
    // stringData is folded into data (its values win) and not kept.
    let applied = "apiVersion: v1\nkind: Secret\nmetadata: {name: folded}\ndata: {a: eA==, b: eQ==}\nstringData: {b: hello, c: world}\n";
    lab.ok(v, &["apply", "-f", &lab.file("folded.yaml", applied)]);
    let s = json(&lab.ok(v, &["get", "secret", "folded", "-o", "json"]));
    assert_eq!(
        s["data"],
        serde_json::json!({"a": "eA==", "b": "aGVsbG8=", "c": "d29ybGQ="})
    );
    assert!(s.get("stringData").is_none(), "{s}");
    assert_eq!(s["type"], "Opaque");
    // Applying it again is not a change.
    let rv = s["metadata"]["resourceVersion"].clone();
    lab.ok(v, &["apply", "-f", &lab.file("folded.yaml", applied)]);
    let again = json(&lab.ok(v, &["get", "secret", "folded", "-o", "json"]));
    assert_eq!(again["metadata"]["resourceVersion"], rv);

    // Bad input: 422 naming the field, nothing stored.
    let before = lab.rv();
    let bad = [
        (
            "apiVersion: v1\nkind: Secret\nmetadata: {name: bad}\ndata: {user: YWRtaW4=, password: 'not base64!'}\n",
            "The Secret \"bad\" is invalid: data[password]: Invalid value: \"<secret contents redacted>\": illegal base64 data",
        ),
        (
            "apiVersion: v1\nkind: Secret\nmetadata: {name: bad}\ntype: kubernetes.io/tls\ndata: {tls.crt: eA==}\n",
            "The Secret \"bad\" is invalid: data[tls.key]: Required value",
        ),
        (
            "apiVersion: v1\nkind: Secret\nmetadata: {name: bad}\ntype: kubernetes.io/dockerconfigjson\nstringData: {.dockerconfigjson: 'nope'}\n",
            "The Secret \"bad\" is invalid: data[.dockerconfigjson]: Invalid value: \"<secret contents redacted>\"",
        ),
        (
            "apiVersion: v1\nkind: Secret\nmetadata: {name: bad}\ntype: kubernetes.io/service-account-token\n",
            "The Secret \"bad\" is invalid: metadata.annotations[kubernetes.io/service-account.name]: Required value",
        ),
        (
            "apiVersion: v1\nkind: Secret\nmetadata: {name: bad}\ndata: {'a/b': eA==}\n",
            "The Secret \"bad\" is invalid: data[a/b]: Invalid value: \"a/b\": a valid config key",
        ),
    ];
    for (yaml, want) in bad {
        let err = lab.fails(v, &["create", "-f", &lab.file("bad.yaml", yaml)]);
        assert!(err.contains(want), "{yaml}\nwanted {want}\ngot {err}");
    }
    assert_eq!(lab.rv(), before, "a refused Secret changed the store");
    let (code, body) = lab.curl(
        "POST",
        "/api/v1/namespaces/default/secrets",
        "application/json",
        Some(
            br#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"bad"},"data":{"k":"%%%"}}"#,
        ),
        true,
    );
    assert_eq!(code, 422, "{body}");
    let st = json(&body);
    assert_eq!(st["reason"], "Invalid");
    assert_eq!(st["details"]["causes"][0]["field"], "data[k]");
    assert_eq!(lab.rv(), before);

    // A ServiceAccount token Secret names its ServiceAccount.
    let sat = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: sa-token\n  annotations: {kubernetes.io/service-account.name: default}\ntype: kubernetes.io/service-account-token\n";
    lab.ok(v, &["create", "-f", &lab.file("sat.yaml", sat)]);
    assert_eq!(
        lab.ok(v, &["get", "secret", "sa-token", "-o", "jsonpath={.type}"]),
        "kubernetes.io/service-account-token"
    );

    // Immutable Secrets keep their data and stay immutable; the type never changes.
    let im = "apiVersion: v1\nkind: Secret\nmetadata: {name: frozen}\nimmutable: true\nstringData: {a: b}\n";
    lab.ok(v, &["create", "-f", &lab.file("im.yaml", im)]);
    let before = lab.rv();
    let err = lab.fails(
        v,
        &[
            "patch",
            "secret",
            "frozen",
            "-p",
            r#"{"stringData":{"a":"c"}}"#,
        ],
    );
    assert!(
        err.contains("data: Forbidden: field is immutable when `immutable` is set"),
        "{err}"
    );
    let err = lab.fails(
        v,
        &["patch", "secret", "frozen", "-p", r#"{"immutable":false}"#],
    );
    assert!(
        err.contains("immutable: Forbidden: field is immutable when `immutable` is set"),
        "{err}"
    );
    let err = lab.fails(
        v,
        &[
            "patch",
            "secret",
            "folded",
            "-p",
            r#"{"type":"kubernetes.io/tls"}"#,
        ],
    );
    assert!(err.contains("type: Invalid value"), "{err}");
    assert_eq!(lab.rv(), before);
    assert_eq!(
        lab.ok(v, &["get", "secret", "frozen", "-o", "jsonpath={.data.a}"]),
        "Yg=="
    );
    // Field selectors on the type.
    let opaque = lab.ok(
        v,
        &[
            "get",
            "secrets",
            "--field-selector=type=kubernetes.io/tls",
            "-o",
            "name",
        ],
    );
    assert_eq!(opaque.trim(), "secret/tls-130\nsecret/tls-133");
}

#[test]
fn secrets_are_for_edit_not_view() {
    let lab = Lab::start();
    let v = "1.33";
    lab.ok(
        v,
        &["create", "secret", "generic", "s", "--from-literal=a=b"],
    );
    lab.ok(
        v,
        &[
            "create",
            "rolebinding",
            "viewer",
            "--clusterrole=view",
            "--user=vera",
        ],
    );
    lab.ok(
        v,
        &[
            "create",
            "rolebinding",
            "editor",
            "--clusterrole=edit",
            "--user=eddie",
        ],
    );
    lab.ok(
        v,
        &[
            "create",
            "rolebinding",
            "admin",
            "--clusterrole=admin",
            "--user=ada",
        ],
    );
    for (user, read, write) in [
        ("vera", "no", "no"),
        ("eddie", "yes", "yes"),
        ("ada", "yes", "yes"),
    ] {
        let as_user = format!("--as={user}");
        for (verb, want) in [
            ("get", read),
            ("list", read),
            ("watch", read),
            ("create", write),
            ("delete", write),
        ] {
            let out = lab.kubectl(v, &["auth", "can-i", verb, "secrets", &as_user]);
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                want,
                "{user} {verb} secrets"
            );
        }
    }
    let err = lab.fails(v, &["get", "secret", "s", "--as=vera"]);
    assert!(
        err.contains(
            "secrets \"s\" is forbidden: User \"vera\" cannot get resource \"secrets\" in API group \"\" in the namespace \"default\""
        ),
        "{err}"
    );
    assert_eq!(
        lab.ok(
            v,
            &[
                "get",
                "secret",
                "s",
                "--as=eddie",
                "-o",
                "jsonpath={.data.a}"
            ]
        ),
        "Yg=="
    );
}

const BOUND_POD: &str = "apiVersion: v1
kind: Pod
metadata: {name: NAME, namespace: NS}
spec:
  nodeName: n1
  terminationGracePeriodSeconds: 600
  containers: [{name: c, image: busybox}]
";

fn bound_pod(name: &str, ns: &str) -> String {
    BOUND_POD.replace("NAME", name).replace("NS", ns)
}

/// The node confirms that a pod's containers are gone, as a kubelet does.
fn node_confirms(lab: &Lab, ns: &str, pod: &str) {
    let (code, body) = lab.curl(
        "DELETE",
        &format!("/api/v1/namespaces/{ns}/pods/{pod}?gracePeriodSeconds=0"),
        "application/json",
        None,
        true,
    );
    assert_eq!(code, 200, "{body}");
}

#[test]
fn namespaces_terminate_as_on_a_cluster() {
    let mut lab = Lab::start();
    let v = "1.33";
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let err = lab.fails(v, &["delete", "namespace", ns]);
        assert!(
            err.contains(&format!(
                "namespaces \"{ns}\" is forbidden: this namespace may not be deleted"
            )),
            "{err}"
        );
    }
    lab.ok(v, &["create", "namespace", "term"]);
    lab.ok(
        v,
        &[
            "create",
            "-f",
            &lab.file("bound.yaml", &bound_pod("held", "term")),
        ],
    );
    lab.ok(
        v,
        &[
            "create",
            "configmap",
            "c",
            "-n",
            "term",
            "--from-literal=a=b",
        ],
    );
    lab.ok(v, &["delete", "namespace", "term", "--wait=false"]);
    let ns = json(&lab.ok(v, &["get", "namespace", "term", "-o", "json"]));
    assert!(ns["metadata"]["deletionTimestamp"].is_string(), "{ns}");
    assert_eq!(ns["status"]["phase"], "Terminating");
    assert_eq!(ns["spec"]["finalizers"], serde_json::json!(["kubernetes"]));
    let row = lab.ok(v, &["get", "namespace", "term", "--no-headers"]);
    assert!(row.contains("Terminating"), "{row}");

    // The namespace stays while its pod lives: new content is refused.
    let err = lab.fails(
        v,
        &[
            "create",
            "configmap",
            "late",
            "-n",
            "term",
            "--from-literal=a=b",
        ],
    );
    assert!(
        err.contains("configmaps \"late\" is forbidden: unable to create new content in namespace term because it is being terminated"),
        "{err}"
    );
    let (code, body) = lab.curl(
        "POST",
        "/api/v1/namespaces/term/pods",
        "application/json",
        Some(br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"late"},"spec":{"containers":[{"name":"c","image":"busybox"}]}}"#),
        true,
    );
    assert_eq!(code, 403, "{body}");
    let st = json(&body);
    assert_eq!(st["reason"], "Forbidden");
    assert_eq!(
        st["details"]["causes"][0],
        serde_json::json!({"reason": "NamespaceTerminating", "message": "namespace term is being terminated", "field": "metadata.namespace"})
    );
    let err = lab.fails(v, &["create", "namespace", "term"]);
    assert!(
        err.contains("object is being deleted: namespaces \"term\" already exists"),
        "{err}"
    );

    // The namespace controller deletes the contents, the pod gracefully
    // through its node, and says what remains.
    lab.ok(
        v,
        &[
            "wait",
            "namespace/term",
            "--for=jsonpath={.status.conditions[?(@.type==\"NamespaceContentRemaining\")].status}=True",
            "--timeout=60s",
        ],
    );
    let ns = json(&lab.ok(v, &["get", "namespace", "term", "-o", "json"]));
    let cond = |ty: &str| {
        ns["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == ty)
            .unwrap_or_else(|| panic!("no {ty} in {ns}"))
            .clone()
    };
    assert_eq!(
        cond("NamespaceContentRemaining")["message"],
        "Some resources are remaining: pods. has 1 resource instances"
    );
    assert_eq!(cond("NamespaceDeletionContentFailure")["status"], "False");
    assert_eq!(
        cond("NamespaceFinalizersRemaining")["reason"],
        "ContentHasNoFinalizers"
    );
    let pod = json(&lab.ok(v, &["get", "pod", "held", "-n", "term", "-o", "json"]));
    assert_eq!(pod["metadata"]["deletionGracePeriodSeconds"], 600, "{pod}");
    assert!(
        lab.fails(v, &["get", "configmap", "c", "-n", "term"])
            .contains("NotFound")
    );
    assert!(
        lab.fails(v, &["get", "serviceaccount", "default", "-n", "term"])
            .contains("NotFound")
    );

    // A crashed and restarted server carries the termination on: once the
    // node has stopped the pod, the namespace goes.
    lab.restart();
    let row = lab.ok(v, &["get", "namespace", "term", "--no-headers"]);
    assert!(row.contains("Terminating"), "{row}");
    node_confirms(&lab, "term", "held");
    wait_gone(&lab, &["get", "namespace", "term"]);
    // And may be made again.
    lab.ok(v, &["create", "namespace", "term"]);
}

const APP: &str = "apiVersion: v1
kind: Namespace
metadata: {name: NS}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: NS}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: nginx:1.25}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: NS}
spec:
  selector: {app: web}
  ports: [{port: 80}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: NS}
spec:
  podSelector: {}
";

#[test]
fn delete_f_of_a_namespace_and_its_objects_succeeds() {
    let lab = Lab::start();
    for v in KUBECTLS {
        let ns = format!("app-{}", v.replace('.', ""));
        let file = lab.file(&format!("{ns}.yaml"), &APP.replace("NS", &ns));
        lab.ok(v, &["apply", "-f", &file]);
        let out = lab.ok(v, &["delete", "-f", &file]);
        for line in [
            format!("namespace \"{ns}\" deleted"),
            "deployment.apps \"web\" deleted".to_string(),
            "service \"web\" deleted".to_string(),
            "networkpolicy.networking.k8s.io \"deny\" deleted".to_string(),
        ] {
            assert!(out.contains(&line), "{line} not in {out}");
        }
        // kubectl waited for every object to be gone, the namespace too.
        let err = lab.fails(v, &["get", "namespace", &ns]);
        assert!(err.contains("NotFound"), "{err}");
    }
}

fn owned_pod(name: &str, rs: &str, uid: &str, bound: bool, blocks: bool) -> String {
    let node = if bound {
        "  nodeName: n1\n  terminationGracePeriodSeconds: 600\n"
    } else {
        ""
    };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: x}}\n  ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: {rs}, uid: {uid}, controller: true, blockOwnerDeletion: {blocks}}}]\nspec:\n{node}  containers: [{{name: c, image: busybox}}]\n"
    )
}

fn replica_set(lab: &Lab, name: &str) -> String {
    let rs = format!(
        "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {{name: {name}}}\nspec:\n  replicas: 0\n  selector: {{matchLabels: {{app: x}}}}\n  template:\n    metadata: {{labels: {{app: x}}}}\n    spec: {{containers: [{{name: c, image: busybox}}]}}\n"
    );
    lab.ok(
        "1.33",
        &["create", "-f", &lab.file(&format!("{name}.yaml"), &rs)],
    );
    lab.ok(
        "1.33",
        &["get", "rs", name, "-o", "jsonpath={.metadata.uid}"],
    )
}

#[test]
fn deletion_propagation_policies() {
    let lab = Lab::start();
    for v in KUBECTLS {
        let sfx = v.replace('.', "");
        // Orphan: the dependents stay, without the ownerReference.
        let rs = format!("orphan-{sfx}");
        let uid = replica_set(&lab, &rs);
        let pod = format!("{rs}-a");
        lab.ok(
            v,
            &[
                "create",
                "-f",
                &lab.file("p.yaml", &owned_pod(&pod, &rs, &uid, false, true)),
            ],
        );
        lab.ok(v, &["delete", "rs", &rs, "--cascade=orphan"]);
        assert!(lab.fails(v, &["get", "rs", &rs]).contains("NotFound"));
        let p = json(&lab.ok(v, &["get", "pod", &pod, "-o", "json"]));
        assert!(p["metadata"].get("ownerReferences").is_none(), "{p}");
        assert!(p["metadata"].get("deletionTimestamp").is_none(), "{p}");

        // Foreground: the owner waits, marked, for its blocking dependents.
        let rs = format!("fg-{sfx}");
        let uid = replica_set(&lab, &rs);
        let (held, loose) = (format!("{rs}-held"), format!("{rs}-loose"));
        lab.ok(
            v,
            &[
                "create",
                "-f",
                &lab.file("p.yaml", &owned_pod(&held, &rs, &uid, true, true)),
            ],
        );
        lab.ok(
            v,
            &[
                "create",
                "-f",
                &lab.file("p.yaml", &owned_pod(&loose, &rs, &uid, false, false)),
            ],
        );
        lab.ok(
            v,
            &["delete", "rs", &rs, "--cascade=foreground", "--wait=false"],
        );
        let o = json(&lab.ok(v, &["get", "rs", &rs, "-o", "json"]));
        assert!(o["metadata"]["deletionTimestamp"].is_string(), "{o}");
        assert_eq!(
            o["metadata"]["finalizers"],
            serde_json::json!(["foregroundDeletion"])
        );
        lab.ok(
            "1.33",
            &[
                "wait",
                &format!("pod/{held}"),
                "--for=jsonpath={.metadata.deletionGracePeriodSeconds}=600",
                "--timeout=60s",
            ],
        );
        wait_gone(&lab, &["get", "pod", &loose]);
        // Still there: its blocking pod waits for its node.
        lab.ok(v, &["get", "rs", &rs]);
        node_confirms(&lab, "default", &held);
        wait_gone(&lab, &["get", "rs", &rs]);

        // Background: the owner goes at once, the dependents after it.
        let rs = format!("bg-{sfx}");
        let uid = replica_set(&lab, &rs);
        let pod = format!("{rs}-a");
        lab.ok(
            v,
            &[
                "create",
                "-f",
                &lab.file("p.yaml", &owned_pod(&pod, &rs, &uid, false, true)),
            ],
        );
        lab.ok(v, &["delete", "rs", &rs, "--cascade=background"]);
        assert!(lab.fails(v, &["get", "rs", &rs]).contains("NotFound"));
        wait_gone(&lab, &["get", "pod", &pod]);
    }
    // A policy that does not exist is refused and changes nothing.
    let uid = replica_set(&lab, "kept");
    let before = lab.rv();
    let (code, body) = lab.curl(
        "DELETE",
        "/apis/apps/v1/namespaces/default/replicasets/kept?propagationPolicy=Sideways",
        "application/json",
        None,
        true,
    );
    assert_eq!(code, 422, "{body}");
    assert!(
        body.contains("propagationPolicy: Unsupported value: \\\"Sideways\\\""),
        "{body}"
    );
    assert_eq!(lab.rv(), before);
    assert_eq!(
        lab.ok(
            "1.33",
            &["get", "rs", "kept", "-o", "jsonpath={.metadata.uid}"]
        ),
        uid
    );
}

const CORE_EVENT: &str = "apiVersion: v1
kind: Event
metadata: {name: old-style}
involvedObject: {apiVersion: v1, kind: Pod, name: web, namespace: default}
reason: Pulled
message: Container image pulled
type: Normal
count: 3
firstTimestamp: '2025-01-01T00:00:00Z'
lastTimestamp: '2025-01-01T00:01:00Z'
source: {component: kubelet, host: n1}
";

const NEW_EVENT: &str = "apiVersion: events.k8s.io/v1
kind: Event
metadata: {name: new-style}
eventTime: '2025-01-01T00:02:00.000000Z'
reportingController: podnet.io/agent
reportingInstance: n1
action: Binding
reason: Scheduled
regarding: {apiVersion: v1, kind: Pod, name: api, namespace: default}
note: Assigned to n1
type: Normal
";

#[test]
fn events_are_served_in_both_apis() {
    let lab = Lab::start();
    let v = "1.33";
    lab.ok(v, &["create", "-f", &lab.file("core.yaml", CORE_EVENT)]);
    lab.ok(v, &["create", "-f", &lab.file("new.yaml", NEW_EVENT)]);

    // The newer API shows both, with its field names.
    let old = json(&lab.ok(
        v,
        &["get", "events.v1.events.k8s.io", "old-style", "-o", "json"],
    ));
    assert_eq!(old["apiVersion"], "events.k8s.io/v1");
    assert_eq!(old["regarding"]["name"], "web");
    assert_eq!(old["note"], "Container image pulled");
    assert_eq!(old["deprecatedCount"], 3);
    assert_eq!(old["deprecatedSource"]["component"], "kubelet");
    assert_eq!(old["deprecatedLastTimestamp"], "2025-01-01T00:01:00Z");
    assert!(old.get("message").is_none() && old.get("involvedObject").is_none());
    // The core API shows both, with its own.
    let new = json(&lab.ok(v, &["get", "events", "new-style", "-o", "json"]));
    assert_eq!(new["apiVersion"], "v1");
    assert_eq!(new["involvedObject"]["name"], "api");
    assert_eq!(new["message"], "Assigned to n1");
    assert_eq!(new["reportingComponent"], "podnet.io/agent");
    assert_eq!(new["action"], "Binding");

    for v in KUBECTLS {
        let table = lab.ok(v, &["get", "events.events.k8s.io"]);
        assert_eq!(
            header(&table),
            ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
            "{table}"
        );
        assert!(
            table.contains("pod/web") && table.contains("Container image pulled"),
            "{table}"
        );
        assert!(
            table.contains("pod/api") && table.contains("Assigned to n1"),
            "{table}"
        );
        let events = lab.ok(v, &["events"]);
        assert_eq!(
            header(&events),
            ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
            "{events}"
        );
        assert!(
            events.contains("Scheduled") && events.contains("Pulled"),
            "{events}"
        );
        let for_api = lab.ok(v, &["events", "--for", "pod/api"]);
        assert!(
            for_api.contains("Assigned to n1") && !for_api.contains("Pulled"),
            "{for_api}"
        );
        let selected = lab.ok(
            v,
            &[
                "get",
                "events.events.k8s.io",
                "--field-selector=regarding.name=web",
                "-o",
                "name",
            ],
        );
        assert_eq!(selected.trim(), "event.events.k8s.io/old-style");
    }

    // A watch through the newer API converts every event.
    let (code, body) = lab.curl(
        "GET",
        "/apis/events.k8s.io/v1/namespaces/default/events?watch=1&timeoutSeconds=1",
        "application/json",
        None,
        true,
    );
    assert_eq!(code, 200, "{body}");
    let lines: Vec<Value> = body.lines().map(json).collect();
    assert_eq!(lines.len(), 2, "{body}");
    for l in &lines {
        assert_eq!(l["type"], "ADDED");
        assert_eq!(l["object"]["apiVersion"], "events.k8s.io/v1");
        assert!(l["object"]["note"].is_string(), "{l}");
    }

    // Created through events.k8s.io/v1, an Event must say who, what and when.
    let before = lab.rv();
    let bad = "apiVersion: events.k8s.io/v1\nkind: Event\nmetadata: {name: bad}\nreason: X\ntype: Normal\ndeprecatedCount: 2\n";
    let err = lab.fails(v, &["create", "-f", &lab.file("bad.yaml", bad)]);
    for field in [
        "eventTime: Required value",
        "reportingController: Required value",
        "reportingInstance: Required value",
        "action: Required value",
        "deprecatedCount: Invalid value: \"\": needs to be unset",
    ] {
        assert!(err.contains(field), "{field} not in {err}");
    }
    assert!(err.contains("The Event \"bad\" is invalid"), "{err}");
    assert_eq!(lab.rv(), before);

    // Deleted through one API, gone from both.
    lab.ok(v, &["delete", "events.events.k8s.io", "old-style"]);
    assert!(
        lab.fails(v, &["get", "events", "old-style"])
            .contains("NotFound")
    );
}

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A length-delimited protobuf field.
fn pb(field: u64, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    varint((field << 3) | 2, &mut v);
    varint(payload.len() as u64, &mut v);
    v.extend_from_slice(payload);
    v
}

/// A varint protobuf field.
fn pb_int(field: u64, n: u64) -> Vec<u8> {
    let mut v = Vec::new();
    varint(field << 3, &mut v);
    varint(n, &mut v);
    v
}

/// A Pod in kube's protobuf envelope, with `spec` as given.
fn pb_pod(name: &str, spec: &[u8]) -> Vec<u8> {
    let meta = pb(1, name.as_bytes());
    let pod = [pb(1, &meta), pb(2, spec)].concat();
    let tm = [pb(1, b"v1"), pb(2, b"Pod")].concat();
    [b"k8s\0".to_vec(), pb(1, &tm), pb(2, &pod)].concat()
}

#[test]
fn pods_sent_as_protobuf() {
    let lab = Lab::start();
    lab.ok(
        "1.33",
        &[
            "create",
            "-f",
            &lab.file(
                "n1.yaml",
                "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n",
            ),
        ],
    );
    // kubectl 1.33 sends the node debugging pod as protobuf.
    let out = lab.ok("1.33", &["debug", "node/n1", "--image=busybox:1.36"]);
    assert!(
        out.contains("Creating debugging pod node-debugger-n1-"),
        "{out}"
    );
    let pods = json(&lab.ok("1.33", &["get", "pods", "-o", "json"]));
    let pod = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| {
            p["metadata"]["name"]
                .as_str()
                .unwrap()
                .starts_with("node-debugger-n1-")
        })
        .unwrap_or_else(|| panic!("no debugging pod in {pods}"))
        .clone();
    let spec = &pod["spec"];
    assert_eq!(spec["nodeName"], "n1", "{pod}");
    assert_eq!(spec["restartPolicy"], "Never");
    assert_eq!(spec["hostPID"], true);
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["volumes"][0]["hostPath"]["path"], "/");
    let vname = spec["volumes"][0]["name"].clone();
    assert_eq!(spec["containers"][0]["volumeMounts"][0]["name"], vname);
    assert_eq!(
        spec["containers"][0]["volumeMounts"][0]["mountPath"],
        "/host"
    );
    assert_eq!(spec["containers"][0]["image"], "busybox:1.36");
    assert_eq!(spec["tolerations"][0]["operator"], "Exists");
    // The profiles a network engineer uses: privileged, and NET_ADMIN/NET_RAW.
    for (profile, field, want) in [
        ("sysadmin", "privileged", serde_json::json!(true)),
        (
            "netadmin",
            "capabilities",
            serde_json::json!({"add": ["NET_ADMIN", "NET_RAW"]}),
        ),
    ] {
        let before: std::collections::HashSet<String> = lab
            .ok("1.33", &["get", "pods", "-o", "name"])
            .lines()
            .map(str::to_string)
            .collect();
        lab.ok(
            "1.33",
            &[
                "debug",
                "node/n1",
                "--image=busybox:1.36",
                &format!("--profile={profile}"),
            ],
        );
        let after = lab.ok("1.33", &["get", "pods", "-o", "name"]);
        let new = after
            .lines()
            .find(|l| !before.contains(*l))
            .unwrap_or_else(|| panic!("no new pod in {after}"));
        let p = json(&lab.ok("1.33", &["get", new, "-o", "json"]));
        assert_eq!(
            p["spec"]["containers"][0]["securityContext"][field], want,
            "{profile}: {p}"
        );
    }

    for v in KUBECTLS {
        let name = format!("run-{}", v.replace('.', ""));
        lab.ok(
            v,
            &[
                "run",
                &name,
                "--image=nginx:1.25",
                "--env=A=1",
                "--labels=app=run",
                "--port=8080",
                "--restart=Never",
            ],
        );
        let p = json(&lab.ok(v, &["get", "pod", &name, "-o", "json"]));
        let c = &p["spec"]["containers"][0];
        assert_eq!(
            c["env"][0],
            serde_json::json!({"name": "A", "value": "1"}),
            "{p}"
        );
        assert_eq!(c["ports"][0]["containerPort"], 8080);
        assert_eq!(p["metadata"]["labels"]["app"], "run");
        assert_eq!(p["spec"]["restartPolicy"], "Never");
    }

    // A Pod with env from a ConfigMap key, a ConfigMap volume and an
    // emptyDir with a size limit, posted as protobuf.
    let key_ref = [pb(1, &pb(1, b"cm")), pb(2, b"k")].concat();
    let env = [pb(1, b"A"), pb(3, &pb(3, &key_ref))].concat();
    let mount = [pb(1, b"v"), pb(3, b"/etc/v")].concat();
    let container = [pb(1, b"c"), pb(2, b"busybox"), pb(7, &env), pb(9, &mount)].concat();
    let cm_volume = [pb(1, b"v"), pb(2, &pb(19, &pb(1, &pb(1, b"cm"))))].concat();
    let empty_dir = [pb(1, b"scratch"), pb(2, &pb(2, &pb(2, &pb(1, b"1Gi"))))].concat();
    let spec = [
        pb(1, &cm_volume),
        pb(1, &empty_dir),
        pb(2, &container),
        pb_int(12, 1),
    ]
    .concat();
    let (code, body) = lab.curl(
        "POST",
        "/api/v1/namespaces/default/pods",
        "application/vnd.kubernetes.protobuf",
        Some(&pb_pod("pb", &spec)),
        true,
    );
    assert_eq!(code, 201, "{body}");
    let p = json(&body);
    let c = &p["spec"]["containers"][0];
    assert_eq!(
        c["env"][0],
        serde_json::json!({"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}})
    );
    assert_eq!(
        c["volumeMounts"][0],
        serde_json::json!({"name": "v", "mountPath": "/etc/v"})
    );
    assert_eq!(
        p["spec"]["volumes"],
        serde_json::json!([{"name": "v", "configMap": {"name": "cm"}}, {"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}}])
    );
    assert_eq!(p["spec"]["hostPID"], true);

    // A field the decoder does not know is refused, not dropped.
    let before = lab.rv();
    let unknown = [pb(2, &container), pb(99, b"x")].concat();
    let (code, body) = lab.curl(
        "POST",
        "/api/v1/namespaces/default/pods",
        "application/vnd.kubernetes.protobuf",
        Some(&pb_pod("pb2", &unknown)),
        true,
    );
    assert_eq!(code, 415, "{body}");
    assert!(body.contains("field 99 of spec is not supported"), "{body}");
    assert_eq!(lab.rv(), before);
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .unwrap()
}
