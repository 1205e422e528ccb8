//! The API surface kubectl relies on beyond CRUD: `kubectl explain` from the
//! served OpenAPI documents (v3 for 1.27 onwards), and server-side apply
//! with field ownership: `metadata.managedFields`, conflicts between
//! managers, `--force-conflicts`, removal of fields an applier stops
//! applying, and `Update` entries for other writers.

mod common;

use common::Lab;
use serde_json::Value;

/// The versions explain is checked with (the oldest and newest on the
/// machine, and the one between that the other tests use).
const EXPLAIN_KUBECTLS: &[&str] = &["1.27", "1.30", "1.33"];

fn contains_all(out: &str, what: &[&str], ctx: &str) {
    for w in what {
        assert!(out.contains(w), "{ctx}: {w:?} missing from:\n{out}");
    }
}

#[test]
fn explain_every_kind_with_three_kubectls() {
    let lab = Lab::start();
    for v in EXPLAIN_KUBECTLS {
        let out = lab.ok(v, &["explain", "pods.spec.containers"]);
        contains_all(
            &out,
            &[
                "KIND:",
                "Pod",
                "containers <[]Container>",
                "List of containers belonging to the pod.",
                "image\t<string>",
                "ports\t<[]ContainerPort>",
            ],
            v,
        );
        let out = lab.ok(v, &["explain", "deployment.spec.strategy"]);
        contains_all(
            &out,
            &[
                "Deployment",
                "apps",
                "strategy <DeploymentStrategy>",
                "The deployment strategy to use to replace existing pods with new ones.",
                "rollingUpdate\t<RollingUpdateDeployment>",
                "type\t<string>",
            ],
            v,
        );
        let out = lab.ok(v, &["explain", "networkpolicy.spec.ingress.from"]);
        contains_all(
            &out,
            &[
                "NetworkPolicy",
                "networking.k8s.io",
                "from <[]NetworkPolicyPeer>",
                "ipBlock\t<IPBlock>",
                "namespaceSelector\t<LabelSelector>",
                "podSelector\t<LabelSelector>",
            ],
            v,
        );
        let out = lab.ok(v, &["explain", "services.spec", "--recursive"]);
        contains_all(
            &out,
            &[
                "clusterIP\t<string>",
                "ports\t<[]ServicePort>",
                "targetPort\t<IntOrString>",
            ],
            v,
        );
        let out = lab.ok(
            v,
            &[
                "explain",
                "cronjobs.spec.jobTemplate.spec.template.spec.restartPolicy",
            ],
        );
        contains_all(&out, &["CronJob", "batch", "restartPolicy <string>"], v);
        // Every served kind with a get verb explains.
        for kind in [
            "namespaces",
            "nodes",
            "pods",
            "services",
            "endpoints",
            "configmaps",
            "secrets",
            "serviceaccounts",
            "events",
            "endpointslices",
            "networkpolicies",
            "deployments",
            "replicasets",
            "daemonsets",
            "statefulsets",
            "jobs",
            "cronjobs",
            "leases",
            "roles",
            "clusterroles",
            "rolebindings",
            "clusterrolebindings",
        ] {
            let out = lab.ok(v, &["explain", kind]);
            contains_all(
                &out,
                &["DESCRIPTION:", "FIELDS:", "metadata"],
                &format!("{v} {kind}"),
            );
        }
        let out = lab.ok(v, &["explain", "events", "--api-version=events.k8s.io/v1"]);
        contains_all(
            &out,
            &["events.k8s.io", "regarding", "reportingController"],
            v,
        );
        // The OpenAPI v2 document (gnostic protobuf) explains too.
        let out = lab.ok(
            v,
            &[
                "explain",
                "deployment.spec.strategy",
                "--output=plaintext-openapiv2",
            ],
        );
        contains_all(
            &out,
            &[
                "VERSION:  apps/v1",
                "RESOURCE: strategy <Object>",
                "The deployment strategy to use to replace existing pods with new ones.",
                "rollingUpdate\t<Object>",
            ],
            v,
        );
        let out = lab.ok(
            v,
            &[
                "explain",
                "pods",
                "--recursive",
                "--output=plaintext-openapiv2",
            ],
        );
        contains_all(&out, &["containers\t<[]Object>", "image\t<string>"], v);
        // A field that does not exist is kubectl's error, not a crash.
        let err = lab.fails(v, &["explain", "pods.spec.nosuchfield"]);
        assert!(err.contains("nosuchfield"), "{v}: {err}");
    }
}

#[test]
fn openapi_documents_are_cached_by_hash() {
    let lab = Lab::start();
    let (code, root) = lab.curl("GET", "/openapi/v3", "application/json", None, true);
    assert_eq!(code, 200, "{root}");
    let root: Value = serde_json::from_str(&root).unwrap();
    let url = root["paths"]["apis/apps/v1"]["serverRelativeURL"]
        .as_str()
        .unwrap();
    assert!(url.contains("?hash="), "{url}");
    let (code, doc) = lab.curl("GET", url, "application/json", None, true);
    assert_eq!(code, 200);
    let doc: Value = serde_json::from_str(&doc).unwrap();
    let d = &doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
    assert_eq!(
        d["x-kubernetes-group-version-kind"][0],
        serde_json::json!({"group": "apps", "kind": "Deployment", "version": "v1"})
    );
    // The same URL gives the same bytes.
    let (_, again) = lab.curl("GET", url, "application/json", None, true);
    assert_eq!(serde_json::from_str::<Value>(&again).unwrap(), doc);
    let (code, v2) = lab.curl("GET", "/openapi/v2", "application/json", None, true);
    assert_eq!(code, 200);
    let v2: Value = serde_json::from_str(&v2).unwrap();
    assert_eq!(v2["swagger"], "2.0");
    assert!(v2["definitions"]["io.k8s.api.core.v1.Pod"]["properties"]["spec"].is_object());
}

const DEPLOY_A: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
    owner: a
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: nginx
        ports:
        - containerPort: 80
";

const DEPLOY_B: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: nginx
";

fn managers(obj: &Value) -> Vec<(String, String)> {
    obj["metadata"]["managedFields"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["manager"].as_str().unwrap().to_string(),
                        e["operation"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn entry<'a>(obj: &'a Value, manager: &str) -> &'a Value {
    obj["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["manager"] == manager)
        .unwrap_or_else(|| panic!("no entry of {manager}: {obj}"))
}

#[test]
fn server_side_apply_two_managers_with_two_kubectls() {
    let lab = Lab::start();
    for v in common::KUBECTLS {
        let ns = format!("ssa-{}", v.replace('.', "-"));
        lab.ok(v, &["create", "namespace", &ns]);
        let a = lab.file("a.yaml", DEPLOY_A);
        let b = lab.file("b.yaml", DEPLOY_B);
        let out = lab.ok(
            v,
            &[
                "-n",
                &ns,
                "apply",
                "--server-side",
                "--field-manager=mgr-a",
                "-f",
                &a,
            ],
        );
        assert!(
            out.contains("deployment.apps/web serverside-applied"),
            "{out}"
        );
        let obj: Value = serde_json::from_str(&lab.ok(
            v,
            &[
                "-n",
                &ns,
                "get",
                "deploy",
                "web",
                "-o",
                "json",
                "--show-managed-fields",
            ],
        ))
        .unwrap();
        assert_eq!(managers(&obj), [("mgr-a".to_string(), "Apply".to_string())]);
        let e = entry(&obj, "mgr-a");
        assert_eq!(e["apiVersion"], "apps/v1");
        assert_eq!(e["fieldsType"], "FieldsV1");
        assert!(e["time"].is_string());
        let f = &e["fieldsV1"];
        assert_eq!(f["f:spec"]["f:replicas"], serde_json::json!({}));
        let c = &f["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"nginx\"}"];
        assert_eq!(c["."], serde_json::json!({}), "{f}");
        assert!(
            c["f:ports"]["k:{\"containerPort\":80,\"protocol\":\"TCP\"}"]["f:containerPort"]
                .is_object(),
            "{f}"
        );

        // Another manager, another value: kube-apiserver's conflict.
        let out = lab.kubectl(
            v,
            &[
                "-n",
                &ns,
                "apply",
                "--server-side",
                "--field-manager=mgr-b",
                "-f",
                &b,
            ],
        );
        assert_eq!(out.status.code(), Some(1), "{v}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(r#"Apply failed with 1 conflict: conflict with "mgr-a": .spec.replicas"#),
            "{v}: {err}"
        );
        let replicas = lab.ok(
            v,
            &[
                "-n",
                &ns,
                "get",
                "deploy",
                "web",
                "-o",
                "jsonpath={.spec.replicas}",
            ],
        );
        assert_eq!(replicas, "2");

        // --force-conflicts takes the field over.
        lab.ok(
            v,
            &[
                "-n",
                &ns,
                "apply",
                "--server-side",
                "--field-manager=mgr-b",
                "--force-conflicts",
                "-f",
                &b,
            ],
        );
        let obj: Value = serde_json::from_str(&lab.ok(
            v,
            &[
                "-n",
                &ns,
                "get",
                "deploy",
                "web",
                "-o",
                "json",
                "--show-managed-fields",
            ],
        ))
        .unwrap();
        assert_eq!(obj["spec"]["replicas"], 3);
        assert!(
            entry(&obj, "mgr-a")["fieldsV1"]["f:spec"]
                .get("f:replicas")
                .is_none()
        );
        assert!(entry(&obj, "mgr-b")["fieldsV1"]["f:spec"]["f:replicas"].is_object());
        let yaml = lab.ok(
            v,
            &[
                "-n",
                &ns,
                "get",
                "deploy",
                "web",
                "-o",
                "yaml",
                "--show-managed-fields",
            ],
        );
        contains_all(
            &yaml,
            &[
                "managedFields:",
                "manager: mgr-a",
                "manager: mgr-b",
                "operation: Apply",
                "f:replicas: {}",
            ],
            v,
        );
        let plain = lab.ok(v, &["-n", &ns, "get", "deploy", "web", "-o", "yaml"]);
        assert!(!plain.contains("managedFields"), "{plain}");

        // mgr-a stops applying its label (it alone owns it): it goes; the
        // image, shared with mgr-b, stays.
        let a2 = lab.file(
            "a2.yaml",
            &DEPLOY_A
                .replace("  labels:\n    owner: a\n", "")
                .replace("replicas: 2", "replicas: 3"),
        );
        lab.ok(
            v,
            &[
                "-n",
                &ns,
                "apply",
                "--server-side",
                "--field-manager=mgr-a",
                "-f",
                &a2,
            ],
        );
        let obj: Value = serde_json::from_str(&lab.ok(
            v,
            &[
                "-n",
                &ns,
                "get",
                "deploy",
                "web",
                "-o",
                "json",
                "--show-managed-fields",
            ],
        ))
        .unwrap();
        assert!(
            obj["metadata"]["labels"].get("owner").is_none(),
            "{}",
            obj["metadata"]
        );
        assert_eq!(
            obj["spec"]["template"]["spec"]["containers"][0]["image"],
            "nginx"
        );

        // A list item the applier alone owned goes whole when it stops
        // naming it (items merge by their keys: port and protocol).
        let svc2 = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector: {app: web}\n  ports:\n  - {name: http, port: 80}\n  - {name: dns, port: 53, protocol: UDP}\n";
        let s2 = lab.file("svc2.yaml", svc2);
        let s1 = lab.file(
            "svc1.yaml",
            &svc2.replace("  - {name: dns, port: 53, protocol: UDP}\n", ""),
        );
        lab.ok(
            v,
            &[
                "-n",
                &ns,
                "apply",
                "--server-side",
                "--field-manager=mgr-a",
                "-f",
                &s2,
            ],
        );
        lab.ok(
            v,
            &[
                "-n",
                &ns,
                "apply",
                "--server-side",
                "--field-manager=mgr-a",
                "-f",
                &s1,
            ],
        );
        let ports = lab.ok(
            v,
            &[
                "-n",
                &ns,
                "get",
                "svc",
                "web",
                "-o",
                "jsonpath={.spec.ports[*].name}",
            ],
        );
        assert_eq!(ports, "http");

        // Other writers are Update entries named as kube-apiserver names them.
        lab.ok(v, &["-n", &ns, "label", "deploy", "web", "tier=front"]);
        lab.ok(v, &["-n", &ns, "scale", "deploy", "web", "--replicas=4"]);
        let obj: Value = serde_json::from_str(&lab.ok(
            v,
            &[
                "-n",
                &ns,
                "get",
                "deploy",
                "web",
                "-o",
                "json",
                "--show-managed-fields",
            ],
        ))
        .unwrap();
        let label = entry(&obj, "kubectl-label");
        assert_eq!(label["operation"], "Update");
        assert!(
            label["fieldsV1"]["f:metadata"]["f:labels"]["f:tier"].is_object(),
            "{label}"
        );
        // A scale by another writer: applying the old count conflicts with it.
        let out = lab.kubectl(
            v,
            &[
                "-n",
                &ns,
                "apply",
                "--server-side",
                "--field-manager=mgr-b",
                "-f",
                &b,
            ],
        );
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("Apply failed with 1 conflict: conflict with \"kubectl")
                && err.contains(".spec.replicas"),
            "{err}"
        );

        // Client-side apply records its own manager.
        let cm = lab.file(
            "cm.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  k: v\n",
        );
        lab.ok(v, &["-n", &ns, "apply", "-f", &cm]);
        let obj: Value = serde_json::from_str(&lab.ok(
            v,
            &[
                "-n",
                &ns,
                "get",
                "cm",
                "c",
                "-o",
                "json",
                "--show-managed-fields",
            ],
        ))
        .unwrap();
        let csa = entry(&obj, "kubectl-client-side-apply");
        assert_eq!(csa["operation"], "Update");
        assert_eq!(
            csa["fieldsV1"]["f:data"]["f:k"],
            serde_json::json!({}),
            "{csa}"
        );
        // An apply to the status subresource is its own entry (`apply
        // --subresource` is not in kubectl 1.30).
        if *v == "1.33" {
            let st = lab.file("st.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nstatus:\n  observedGeneration: 7\n");
            lab.ok(
                v,
                &[
                    "-n",
                    &ns,
                    "apply",
                    "--server-side",
                    "--subresource=status",
                    "--field-manager=ctl",
                    "-f",
                    &st,
                ],
            );
            let obj: Value = serde_json::from_str(&lab.ok(
                v,
                &[
                    "-n",
                    &ns,
                    "get",
                    "deploy",
                    "web",
                    "-o",
                    "json",
                    "--show-managed-fields",
                ],
            ))
            .unwrap();
            let e = entry(&obj, "ctl");
            assert_eq!(
                (e["operation"].as_str(), e["subresource"].as_str()),
                (Some("Apply"), Some("status")),
                "{e}"
            );
            assert!(
                e["fieldsV1"]["f:status"]["f:observedGeneration"].is_object(),
                "{e}"
            );
        }

        // kubectl moving from client-side to server-side apply takes the
        // fields over without --force-conflicts, as on a cluster.
        let m1 = lab.file(
            "m1.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: m\ndata:\n  k: v\n",
        );
        let m2 = lab.file(
            "m2.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: m\ndata:\n  k: w\n",
        );
        lab.ok(v, &["-n", &ns, "apply", "-f", &m1]);
        lab.ok(v, &["-n", &ns, "apply", "--server-side", "-f", &m2]);
        let obj: Value = serde_json::from_str(&lab.ok(
            v,
            &[
                "-n",
                &ns,
                "get",
                "cm",
                "m",
                "-o",
                "json",
                "--show-managed-fields",
            ],
        ))
        .unwrap();
        assert_eq!(obj["data"]["k"], "w");
        assert!(
            entry(&obj, "kubectl")["fieldsV1"]["f:data"]["f:k"].is_object(),
            "{}",
            obj["metadata"]
        );
        // Another manager is still refused.
        let m3 = lab.file(
            "m3.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: m\ndata:\n  k: x\n",
        );
        let err = lab.fails(
            v,
            &[
                "-n",
                &ns,
                "apply",
                "--server-side",
                "--field-manager=other",
                "-f",
                &m3,
            ],
        );
        assert!(err.contains(r#"conflict with "kubectl": .data.k"#), "{err}");

        // `managedFields: [{}]` clears them, as on a cluster.
        lab.ok(
            v,
            &[
                "-n",
                &ns,
                "patch",
                "cm",
                "c",
                "--type=json",
                "-p",
                r#"[{"op":"replace","path":"/metadata/managedFields","value":[{}]}]"#,
            ],
        );
        let obj: Value = serde_json::from_str(&lab.ok(
            v,
            &[
                "-n",
                &ns,
                "get",
                "cm",
                "c",
                "-o",
                "json",
                "--show-managed-fields",
            ],
        ))
        .unwrap();
        assert!(
            obj["metadata"].get("managedFields").is_none(),
            "{}",
            obj["metadata"]
        );
    }
}

#[test]
fn malformed_apply_bodies_are_refused_and_change_nothing() {
    let lab = Lab::start();
    let path = "/api/v1/namespaces/default/configmaps/c?fieldManager=t";
    let good = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  a: \"1\"\n";
    let (code, body) = lab.curl(
        "PATCH",
        path,
        "application/apply-patch+yaml",
        Some(good),
        true,
    );
    assert_eq!(code, 201, "{body}");
    let before = lab.rv();
    let cases: &[(&str, &[u8], u16, &str)] = &[
        (
            path,
            b"kind: ConfigMap\n  bad: [",
            400,
            "error decoding YAML",
        ),
        (path, b"- just\n- a list\n", 400, "must be an object"),
        (
            path,
            b"apiVersion: v1\nmetadata:\n  name: c\n",
            400,
            "Object 'Kind' is missing",
        ),
        (
            path,
            b"apiVersion: apps/v1\nkind: ConfigMap\nmetadata:\n  name: c\n",
            400,
            "does not match the expected API version (v1)",
        ),
        (
            path,
            b"apiVersion: v1\nkind: Secret\nmetadata:\n  name: c\n",
            400,
            "does not match the expected kind (ConfigMap)",
        ),
        (
            path,
            b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: other\n",
            400,
            "does not match the name on the URL",
        ),
        (
            "/api/v1/namespaces/default/configmaps/c",
            good,
            422,
            "fieldManager: Required value",
        ),
        (
            "/api/v1/namespaces/default/configmaps/c?fieldManager=t&force=maybe",
            good,
            400,
            "force",
        ),
    ];
    for (p, body, want, msg) in cases {
        let (code, out) = lab.curl("PATCH", p, "application/apply-patch+yaml", Some(body), true);
        assert_eq!(code, *want, "{out}");
        let st: Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("not a Status ({e}): {out}"));
        assert_eq!(st["kind"], "Status");
        assert!(st["message"].as_str().unwrap().contains(msg), "{out}");
    }
    // force on a merge patch is forbidden.
    let (code, out) = lab.curl(
        "PATCH",
        "/api/v1/namespaces/default/configmaps/c?force=true",
        "application/merge-patch+json",
        Some(br#"{"data":{"a":"2"}}"#),
        true,
    );
    assert_eq!(code, 422, "{out}");
    assert!(
        out.contains("may not be specified for non-apply patch"),
        "{out}"
    );
    assert_eq!(lab.rv(), before, "a refused apply changed the store");
    // A conflict through the API: 409 with FieldManagerConflict causes.
    let other = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  a: \"2\"\n";
    let (code, out) = lab.curl(
        "PATCH",
        "/api/v1/namespaces/default/configmaps/c?fieldManager=u",
        "application/apply-patch+yaml",
        Some(other),
        true,
    );
    assert_eq!(code, 409, "{out}");
    let st: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["reason"], "Conflict");
    assert_eq!(
        st["message"],
        r#"Apply failed with 1 conflict: conflict with "t": .data.a"#
    );
    assert_eq!(
        st["details"]["causes"][0],
        serde_json::json!({"reason": "FieldManagerConflict", "message": "conflict with \"t\"", "field": ".data.a"})
    );
    assert_eq!(lab.rv(), before, "a conflicting apply changed the store");
}
