//! The real kubectl (1.30 and 1.33) against the server: get (plain, wide,
//! -A, -l, -o yaml), describe, create -f, apply -f twice, label, scale,
//! expose, delete (name and -l), get --watch.

mod common;

use common::{KUBECTLS, Lab, header, names};

const POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web, tier: front}
spec:
  containers:
  - name: nginx
    image: nginx:1.25
    ports:
    - containerPort: 8080
";

const DEPLOY: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
spec:
  replicas: 2
  selector:
    matchLabels: {app: api}
  template:
    metadata:
      labels: {app: api}
    spec:
      containers:
      - name: api
        image: busybox:1.36
        env:
        - {name: A, value: '1'}
      - name: side
        image: busybox:1.36
";

#[test]
fn get_prints_kube_apiserver_tables() {
    let lab = Lab::start();
    for v in KUBECTLS {
        let ns = lab.ok(v, &["get", "namespaces"]);
        assert_eq!(header(&ns), ["NAME", "STATUS", "AGE"]);
        assert_eq!(
            names(&ns),
            ["default", "kube-node-lease", "kube-public", "kube-system"]
        );
        let svc = lab.ok(v, &["get", "svc", "-A", "-o", "wide"]);
        assert_eq!(
            header(&svc),
            [
                "NAMESPACE",
                "NAME",
                "TYPE",
                "CLUSTER-IP",
                "EXTERNAL-IP",
                "PORT(S)",
                "AGE",
                "SELECTOR"
            ]
        );
        let row: Vec<&str> = svc.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            row[..6],
            [
                "default",
                "kubernetes",
                "ClusterIP",
                "10.96.0.1",
                "<none>",
                "443/TCP"
            ]
        );
        let sys = lab.ok(v, &["get", "ns", "kube-system", "--show-labels"]);
        assert!(
            sys.contains("kubernetes.io/metadata.name=kube-system"),
            "{sys}"
        );
    }
    let f = lab.file("pod.yaml", POD);
    assert!(
        lab.ok("1.30", &["create", "-f", &f])
            .contains("pod/web created")
    );
    for v in KUBECTLS {
        let plain = lab.ok(v, &["get", "pods"]);
        assert_eq!(
            header(&plain),
            ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
        );
        let row: Vec<&str> = plain.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(row[..4], ["web", "0/1", "Pending", "0"]);
        let wide = lab.ok(v, &["get", "pods", "-o", "wide"]);
        assert_eq!(
            header(&wide),
            [
                "NAME",
                "READY",
                "STATUS",
                "RESTARTS",
                "AGE",
                "IP",
                "NODE",
                "NOMINATED",
                "NODE",
                "READINESS",
                "GATES"
            ]
        );
        let all = lab.ok(v, &["get", "pods", "-A", "-L", "tier"]);
        assert_eq!(
            header(&all),
            [
                "NAMESPACE",
                "NAME",
                "READY",
                "STATUS",
                "RESTARTS",
                "AGE",
                "TIER"
            ]
        );
        assert!(all.lines().nth(1).unwrap().ends_with("front"), "{all}");
        assert_eq!(
            names(&lab.ok(v, &["get", "pods", "-l", "app in (web,db),tier!=back"])),
            ["web"]
        );
        let none = lab.kubectl(v, &["get", "pods", "-l", "app=db"]);
        assert!(
            String::from_utf8_lossy(&none.stderr)
                .contains("No resources found in default namespace.")
        );
        let yaml = lab.ok(v, &["get", "pod", "web", "-o", "yaml"]);
        for want in [
            "kind: Pod",
            "uid:",
            "resourceVersion:",
            "dnsPolicy: ClusterFirst",
            "restartPolicy: Always",
            "terminationGracePeriodSeconds: 30",
            "protocol: TCP",
            "phase: Pending",
        ] {
            assert!(yaml.contains(want), "{want} missing in {yaml}");
        }
        let by_field = lab.ok(
            v,
            &[
                "get",
                "pods",
                "-A",
                "--field-selector",
                "metadata.name=web,status.phase=Pending",
            ],
        );
        assert_eq!(names(&by_field), ["default"]);
        let d = lab.ok(v, &["describe", "pod", "web"]);
        for want in [
            "Name:",
            "web",
            "Namespace:",
            "default",
            "Image:",
            "nginx:1.25",
            "Status:",
            "Pending",
            "8080/TCP",
            "Events:",
        ] {
            assert!(d.contains(want), "{want} missing in describe: {d}");
        }
    }
    let uid = lab.ok(
        "1.30",
        &["get", "pod", "web", "-o", "jsonpath={.metadata.uid}"],
    );
    let ev = format!(
        "apiVersion: v1\nkind: Event\nmetadata: {{name: web.1}}\ninvolvedObject: {{kind: Pod, name: web, namespace: default, uid: {uid}, apiVersion: v1}}\nreason: Scheduled\nmessage: Successfully assigned default/web to n1\ntype: Normal\nsource: {{component: default-scheduler}}\nfirstTimestamp: '2020-01-01T00:00:00Z'\nlastTimestamp: '2020-01-01T00:00:00Z'\ncount: 1\n"
    );
    lab.ok("1.30", &["create", "-f", &lab.file("ev.yaml", &ev)]);
    for v in KUBECTLS {
        let d = lab.ok(v, &["describe", "pod", "web"]);
        assert!(
            d.contains("Scheduled")
                && d.contains("Successfully assigned default/web to n1")
                && d.contains("default-scheduler"),
            "{d}"
        );
        let evs = lab.ok(v, &["get", "events"]);
        assert_eq!(
            header(&evs),
            ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
        );
        assert!(
            evs.lines()
                .nth(1)
                .unwrap()
                .contains("Normal   Scheduled   pod/web   Successfully assigned"),
            "{evs}"
        );
    }
    let err = lab.fails("1.30", &["create", "-f", &f]);
    assert!(
        err.contains("AlreadyExists") && err.contains("pods \"web\" already exists"),
        "{err}"
    );
}

#[test]
fn apply_twice_label_scale_expose_delete() {
    let lab = Lab::start();
    for v in KUBECTLS {
        let ns = format!("t{}", v.replace('.', ""));
        let nsf = lab.file(
            &format!("{ns}.yaml"),
            &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"),
        );
        lab.ok(v, &["apply", "-f", &nsf]);
        let f = lab.file("deploy.yaml", DEPLOY);
        assert!(
            lab.ok(v, &["apply", "-n", &ns, "-f", &f])
                .contains("deployment.apps/api created")
        );
        let changed = DEPLOY
            .replace("replicas: 2", "replicas: 3")
            .replace("value: '1'", "value: '2'")
            .replace("      - name: side\n        image: busybox:1.36\n", "");
        let f2 = lab.file("deploy2.yaml", &changed);
        assert!(
            lab.ok(v, &["apply", "-n", &ns, "-f", &f2])
                .contains("deployment.apps/api configured")
        );
        assert!(
            lab.ok(v, &["apply", "-n", &ns, "-f", &f2])
                .contains("deployment.apps/api unchanged")
        );
        let got = lab.ok(v, &["get", "deploy", "api", "-n", &ns, "-o", "jsonpath={.spec.replicas} {.spec.template.spec.containers[*].name} {.spec.template.spec.containers[0].env[0].value} {.metadata.generation}"]);
        assert_eq!(got, "3 api 2 2");
        let wide = lab.ok(v, &["get", "deploy", "-n", &ns, "-o", "wide"]);
        assert_eq!(
            header(&wide),
            [
                "NAME",
                "READY",
                "UP-TO-DATE",
                "AVAILABLE",
                "AGE",
                "CONTAINERS",
                "IMAGES",
                "SELECTOR"
            ]
        );
        let row: Vec<&str> = wide.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            [row[0], row[1], row[2], row[3], row[5], row[6], row[7]],
            ["api", "0/3", "0", "0", "api", "busybox:1.36", "app=api"]
        );
        assert!(
            lab.ok(v, &["label", "deploy", "api", "-n", &ns, "team=net"])
                .contains("labeled")
        );
        assert_eq!(
            names(&lab.ok(v, &["get", "deploy", "-n", &ns, "-l", "team=net"])),
            ["api"]
        );
        assert!(
            lab.ok(v, &["scale", "deploy", "api", "-n", &ns, "--replicas=5"])
                .contains("scaled")
        );
        assert_eq!(
            lab.ok(
                v,
                &[
                    "get",
                    "deploy",
                    "api",
                    "-n",
                    &ns,
                    "-o",
                    "jsonpath={.spec.replicas}"
                ]
            ),
            "5"
        );
        lab.ok(
            v,
            &[
                "run",
                "web",
                "-n",
                &ns,
                "--image=nginx",
                "--labels=run=web,x=y",
            ],
        );
        assert!(
            lab.ok(
                v,
                &[
                    "expose",
                    "pod",
                    "web",
                    "-n",
                    &ns,
                    "--port=80",
                    "--target-port=8080",
                    "--name=web-svc"
                ]
            )
            .contains("service/web-svc exposed")
        );
        let svc = lab.ok(v, &["get", "svc", "web-svc", "-n", &ns, "-o", "jsonpath={.spec.clusterIP} {.spec.ports[0].port} {.spec.ports[0].targetPort} {.spec.selector.run}"]);
        let parts: Vec<&str> = svc.split(' ').collect();
        let ip: std::net::Ipv4Addr = parts[0].parse().unwrap();
        assert!(
            "10.96.0.0/12"
                .parse::<ipnet::Ipv4Net>()
                .unwrap()
                .contains(&ip)
                && parts[0] != "10.96.0.1",
            "{svc}"
        );
        assert_eq!(parts[1..], ["80", "8080", "web"]);
        assert!(
            lab.ok(v, &["delete", "svc", "web-svc", "-n", &ns])
                .contains("service \"web-svc\" deleted")
        );
        assert!(
            lab.ok(v, &["delete", "pod", "-n", &ns, "-l", "run=web"])
                .contains("pod \"web\" deleted")
        );
        assert!(
            lab.ok(v, &["delete", "deploy", "api", "-n", &ns])
                .contains("deleted")
        );
        let left = lab.kubectl(v, &["get", "all", "-n", &ns]);
        assert!(
            String::from_utf8_lossy(&left.stderr).contains("No resources found"),
            "{}",
            String::from_utf8_lossy(&left.stdout)
        );
        assert!(lab.ok(v, &["delete", "ns", &ns]).contains("deleted"));
        assert!(lab.fails(v, &["get", "ns", &ns]).contains("NotFound"));
    }
}

#[test]
fn get_watch_sees_a_change() {
    use std::io::{BufRead, BufReader};
    let lab = Lab::start();
    for v in KUBECTLS {
        let name = format!("w{}", v.replace('.', ""));
        lab.ok(v, &["run", &name, "--image=busybox", "--", "sleep", "1"]);
        let mut child = std::process::Command::new(common::kubectl_path(v))
            .args([
                "get",
                "pods",
                "--watch",
                "--output-watch-events",
                "--field-selector",
                &format!("metadata.name={name}"),
            ])
            .env("KUBECONFIG", lab.kubeconfig())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        assert_eq!(
            header(&first),
            ["EVENT", "NAME", "READY", "STATUS", "RESTARTS", "AGE"]
        );
        let added = lines.next().unwrap().unwrap();
        assert!(
            added.starts_with("ADDED") && added.contains(&name),
            "{added}"
        );
        lab.ok(v, &["label", "pod", &name, "seen=yes"]);
        let modified = lines.next().unwrap().unwrap();
        assert!(
            modified.starts_with("MODIFIED") && modified.contains(&name),
            "{modified}"
        );
        lab.ok(v, &["delete", "pod", &name]);
        let deleted = lines.next().unwrap().unwrap();
        assert!(
            deleted.starts_with("DELETED") && deleted.contains(&name),
            "{deleted}"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

#[test]
fn invalid_objects_are_refused_with_the_field_named() {
    let lab = Lab::start();
    let before = lab.rv();
    for v in KUBECTLS {
        let bad = lab.file("bad.yaml", &POD.replace("name: web", "name: Web_1"));
        let err = lab.fails(v, &["create", "-f", &bad]);
        assert!(
            err.contains("Invalid") && err.contains("metadata.name: Invalid value: \"Web_1\""),
            "{err}"
        );
        let noimg = lab.file("noimg.yaml", &POD.replace("    image: nginx:1.25\n", ""));
        let err = lab.fails(v, &["apply", "-f", &noimg]);
        assert!(
            err.contains("spec.containers[0].image: Required value"),
            "{err}"
        );
        let unknown = lab.file(
            "unknown.yaml",
            &POD.replace(
                "    image: nginx:1.25\n",
                "    image: nginx:1.25\n    colour: red\n",
            ),
        );
        let err = lab.fails(v, &["create", "-f", &unknown]);
        assert!(
            err.contains("unknown field \"spec.containers[0].colour\""),
            "{err}"
        );
        let badsel = lab.file(
            "badsel.yaml",
            &DEPLOY.replace("labels: {app: api}", "labels: {app: other}"),
        );
        let err = lab.fails(v, &["create", "-f", &badsel]);
        assert!(
            err.contains("spec.template.metadata.labels")
                && err.contains("`selector` does not match template `labels`"),
            "{err}"
        );
    }
    assert_eq!(lab.rv(), before, "refused objects changed the store");
    let svc = lab.file(
        "svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  ports: [{port: 80}]\n",
    );
    lab.ok("1.33", &["create", "-f", &svc]);
    let ip = lab.ok(
        "1.33",
        &["get", "svc", "s", "-o", "jsonpath={.spec.clusterIP}"],
    );
    let other = if ip == "10.96.0.77" {
        "10.96.0.78"
    } else {
        "10.96.0.77"
    };
    let err = lab.fails(
        "1.33",
        &[
            "patch",
            "svc",
            "s",
            "--type=merge",
            "-p",
            &format!("{{\"spec\":{{\"clusterIP\":\"{other}\"}}}}"),
        ],
    );
    assert!(
        err.contains("spec.clusterIPs[0]") && err.contains("may not change once set"),
        "{err}"
    );
}

#[test]
fn generator_commands_send_json_or_protobuf_and_work() {
    // kubectl 1.33 sends protobuf for these; 1.30 sends JSON.
    let lab = Lab::start();
    for v in KUBECTLS {
        let ns = format!("g{}", v.replace('.', ""));
        lab.ok(v, &["create", "namespace", &ns]);
        lab.ok(
            v,
            &[
                "create",
                "deployment",
                "web",
                "-n",
                &ns,
                "--image=nginx:1.25",
                "--replicas=2",
                "--port=80",
            ],
        );
        lab.ok(
            v,
            &[
                "create",
                "configmap",
                "cfg",
                "-n",
                &ns,
                "--from-literal=a=b",
            ],
        );
        lab.ok(v, &["create", "serviceaccount", "robot", "-n", &ns]);
        lab.ok(
            v,
            &[
                "create",
                "service",
                "nodeport",
                "np",
                "-n",
                &ns,
                "--tcp=80:8080",
            ],
        );
        let d = lab.ok(v, &["get", "deploy", "web", "-n", &ns, "-o", "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].ports[0].containerPort} {.spec.strategy.type} {.spec.selector.matchLabels.app}"]);
        assert_eq!(d, "2 nginx:1.25 80 RollingUpdate web");
        assert_eq!(
            lab.ok(
                v,
                &["get", "cm", "cfg", "-n", &ns, "-o", "jsonpath={.data.a}"]
            ),
            "b"
        );
        let s = lab.ok(v, &["get", "svc", "np", "-n", &ns, "-o", "jsonpath={.spec.type} {.spec.ports[0].port} {.spec.ports[0].targetPort} {.spec.selector.app}"]);
        assert_eq!(s, "NodePort 80 8080 np");
        assert_eq!(
            names(&lab.ok(v, &["get", "sa", "-n", &ns])),
            ["default", "robot"]
        );
        let labels = lab.ok(v, &["get", "ns", &ns, "-o", "jsonpath={.metadata.labels}"]);
        assert!(
            labels.contains(&format!("\"kubernetes.io/metadata.name\":\"{ns}\"")),
            "{labels}"
        );
    }
}

/// `pods/ephemeralcontainers` as `kubectl debug` and `kubectl patch
/// --subresource` use it: strategic-merge and JSON patches add, nothing
/// removes or changes one, and the main endpoint changes none.
#[test]
fn ephemeral_containers_are_added_through_their_subresource() {
    let lab = Lab::start();
    let pod = lab.file("pod.yaml", POD);
    lab.ok("1.33", &["create", "-f", &pod]);
    let sub = "--subresource=ephemeralcontainers";
    lab.ok(
        "1.33",
        &[
            "patch",
            "pod",
            "web",
            sub,
            "--type=strategic",
            "-p",
            r#"{"spec":{"ephemeralContainers":[{"name":"dbg","image":"busybox","targetContainerName":"nginx","stdin":true,"tty":true}]}}"#,
        ],
    );
    lab.ok(
        "1.33",
        &[
            "patch",
            "pod",
            "web",
            sub,
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/spec/ephemeralContainers/-","value":{"name":"dbg2","image":"busybox"}}]"#,
        ],
    );
    let names = lab.ok(
        "1.33",
        &[
            "get",
            "pod",
            "web",
            "-o",
            "jsonpath={.spec.ephemeralContainers[*].name} {.spec.ephemeralContainers[0].targetContainerName}",
        ],
    );
    assert_eq!(names, "dbg dbg2 nginx");
    let err = lab.fails(
        "1.33",
        &[
            "patch",
            "pod",
            "web",
            sub,
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/spec/ephemeralContainers/0"}]"#,
        ],
    );
    assert!(
        err.contains("existing ephemeral containers \"dbg\" may not be removed"),
        "{err}"
    );
    let err = lab.fails(
        "1.33",
        &[
            "patch",
            "pod",
            "web",
            sub,
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/spec/ephemeralContainers/-","value":{"name":"x","image":"busybox","targetContainerName":"nope"}}]"#,
        ],
    );
    assert!(
        err.contains("spec.ephemeralContainers[2].targetContainerName: Not found: \"nope\""),
        "{err}"
    );
    // Only the ephemeral containers are the subresource's.
    lab.ok(
        "1.33",
        &[
            "patch",
            "pod",
            "web",
            sub,
            "--type=merge",
            "-p",
            r#"{"metadata":{"labels":{"x":"y"}},"spec":{"ephemeralContainers":[{"name":"dbg","image":"busybox","targetContainerName":"nginx","stdin":true,"tty":true},{"name":"dbg2","image":"busybox"},{"name":"dbg3","image":"busybox"}]}}"#,
        ],
    );
    let out = lab.ok(
        "1.33",
        &[
            "get",
            "pod",
            "web",
            "-o",
            "jsonpath={.metadata.labels.x}/{.spec.ephemeralContainers[2].name}",
        ],
    );
    assert_eq!(out, "/dbg3");
    let err = lab.fails(
        "1.33",
        &[
            "patch",
            "pod",
            "web",
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/spec/ephemeralContainers/-","value":{"name":"y","image":"busybox"}}]"#,
        ],
    );
    assert!(err.contains("pod updates may not change fields"), "{err}");
    // Discovery lists it with its verbs.
    let raw = lab.ok("1.33", &["get", "--raw", "/api/v1"]);
    let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let r = v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "pods/ephemeralcontainers")
        .expect("pods/ephemeralcontainers in discovery");
    assert_eq!(r["verbs"], serde_json::json!(["get", "patch", "update"]));
}

/// `kubectl apply --server-side` by two field managers: finalizers are a
/// set (each manager's own items merge and go alone, as kube-apiserver
/// does for `x-kubernetes-list-type: set`), a container's `args` is an
/// atomic list (a second manager's other args conflict on the whole list).
#[test]
fn server_side_apply_merges_finalizers_as_a_set_and_args_atomically() {
    let lab = Lab::start();
    let v = "1.33";
    let cm = |fins: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  finalizers: {fins}\ndata: {{a: '1'}}\n"
        )
    };
    let apply = |manager: &str, file: &str| {
        lab.ok(
            v,
            &[
                "apply",
                "--server-side",
                "--field-manager",
                manager,
                "-f",
                file,
            ],
        )
    };
    apply("a", &lab.file("a.yaml", &cm("[example.com/a]")));
    apply("b", &lab.file("b.yaml", &cm("[example.com/b]")));
    let fins = || {
        lab.ok(
            v,
            &["get", "cm", "held", "-o", "jsonpath={.metadata.finalizers}"],
        )
    };
    assert_eq!(fins(), r#"["example.com/a","example.com/b"]"#);
    let json: serde_json::Value = serde_json::from_str(&lab.ok(
        v,
        &["get", "cm", "held", "--show-managed-fields", "-o", "json"],
    ))
    .unwrap();
    let b = json["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["manager"] == "b")
        .unwrap();
    assert_eq!(
        b["fieldsV1"]["f:metadata"]["f:finalizers"],
        serde_json::json!({"v:\"example.com/b\"": {}})
    );
    // a stops applying its finalizer: only b's stays.
    apply("a", &lab.file("a2.yaml", &cm("[]")));
    assert_eq!(fins(), r#"["example.com/b"]"#);

    let deploy = |args: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: argy}}\nspec:\n  selector: {{matchLabels: {{app: argy}}}}\n  template:\n    metadata: {{labels: {{app: argy}}}}\n    spec:\n      containers: [{{name: c, image: busybox, args: {args}}}]\n"
        )
    };
    apply("a", &lab.file("d1.yaml", &deploy("[-x]")));
    let err = lab.fails(
        v,
        &[
            "apply",
            "--server-side",
            "--field-manager",
            "b",
            "-f",
            &lab.file("d2.yaml", &deploy("[-y]")),
        ],
    );
    assert!(
        err.contains(r#"conflict with "a": .spec.template.spec.containers[name="c"].args"#),
        "{err}"
    );
}
