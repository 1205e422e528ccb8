//! What a pod is given, as a real kubelet gives it: env from a ConfigMap,
//! a Secret and the downward API (its own IP), the same as files through
//! volumes, and a pod whose Secret is missing waits with the kubelet's
//! words until the Secret exists.

mod support;

use std::time::{Duration, Instant};

use support::Lab;

const POD: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: reader
  labels: {app: reader}
spec:
  containers:
  - name: c
    image: busybox
    command: ["sleep", "3600"]
    env:
    - name: GREETING
      valueFrom: {configMapKeyRef: {name: settings, key: greeting}}
    - name: PASSWORD
      valueFrom: {secretKeyRef: {name: creds, key: password}}
    - name: MY_IP
      valueFrom: {fieldRef: {fieldPath: status.podIP}}
    - name: MY_NODE
      valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
    - name: MY_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    - name: ECHO
      value: "name=$(MY_NAME)"
    envFrom:
    - configMapRef: {name: settings}
      prefix: CM_
    volumeMounts:
    - {name: cfg, mountPath: /etc/cfg}
    - {name: sec, mountPath: /etc/sec, readOnly: true}
    - {name: info, mountPath: /etc/info}
  volumes:
  - name: cfg
    configMap: {name: settings}
  - name: sec
    secret: {secretName: creds}
  - name: info
    downwardAPI:
      items:
      - path: labels
        fieldRef: {fieldPath: metadata.labels}
"#;

const ENV_ONLY: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: envonly
  labels: {app: envonly}
spec:
  containers:
  - name: c
    image: busybox
    command: ["sleep", "3600"]
    env:
    - name: PASSWORD
      valueFrom: {secretKeyRef: {name: creds, key: password}}
"#;

#[test]
fn a_pod_reads_configmaps_secrets_and_its_own_ip_and_waits_for_a_missing_secret() {
    let lab = Lab::up("pcf", "vxlan");
    lab.kubectl(&[
        "create",
        "configmap",
        "settings",
        "--from-literal=greeting=hello",
        "--from-literal=color=blue",
    ]);
    lab.apply(POD);
    lab.apply(ENV_ONLY);
    // No Secret yet: the kubelet's reason and message for the env, and
    // ContainerCreating with a FailedMount event for the volume.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let waiting = lab.kubectl(&[
            "get",
            "pod",
            "envonly",
            "-o",
            "jsonpath={.status.containerStatuses[0].state.waiting.reason}: {.status.containerStatuses[0].state.waiting.message}",
        ]);
        if waiting == "CreateContainerConfigError: secret \"creds\" not found" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not waiting for the Secret: {waiting}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let table = lab.kubectl(&["get", "pod", "envonly", "--no-headers"]);
    assert!(table.contains("CreateContainerConfigError"), "{table}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ev = lab.kubectl(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=reader,reason=FailedMount",
            "-o",
            "jsonpath={.items[*].message}",
        ]);
        if ev.contains("MountVolume.SetUp failed for volume \"sec\" : secret \"creds\" not found") {
            break;
        }
        assert!(Instant::now() < deadline, "no FailedMount event: {ev}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let table = lab.kubectl(&["get", "pod", "reader", "--no-headers"]);
    assert!(table.contains("ContainerCreating"), "{table}");

    lab.kubectl(&[
        "create",
        "secret",
        "generic",
        "creds",
        "--from-literal=password=s3cret",
    ]);
    lab.wait_ready("app in (reader,envonly)");
    let (ip, node) = lab.pod_ip_node("reader");
    let env = lab.kubectl(&["exec", "reader", "--", "env"]);
    for want in [
        "GREETING=hello".to_string(),
        "PASSWORD=s3cret".to_string(),
        format!("MY_IP={ip}"),
        format!("MY_NODE={node}"),
        "ECHO=name=reader".to_string(),
        "CM_color=blue".to_string(),
        "KUBERNETES_SERVICE_HOST=10.96.0.1".to_string(),
        "KUBERNETES_SERVICE_PORT=443".to_string(),
    ] {
        assert!(env.lines().any(|l| l == want), "no {want} in:\n{env}");
    }
    let files = lab.kubectl(&[
        "exec",
        "reader",
        "--",
        "sh",
        "-c",
        "cat /etc/cfg/greeting; echo; cat /etc/sec/password; echo; cat /etc/info/labels; echo; cat /var/run/secrets/kubernetes.io/serviceaccount/namespace",
    ]);
    let lines: Vec<&str> = files.lines().collect();
    assert_eq!(lines[..3], ["hello", "s3cret", "app=\"reader\""], "{files}");
    assert_eq!(lines[3], "default", "{files}");
    lab.down();
}
