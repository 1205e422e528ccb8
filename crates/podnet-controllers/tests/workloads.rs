//! StatefulSets, Jobs and CronJobs in the lab: the real podnet-apiserver,
//! the controllers and the stand-in kubelet, driven with the real kubectl.

mod common;

use std::io::Write;

use anyhow::Result;
use common::{Lab, eventually, pod_ready};
use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::ListParams;

/// Applies a manifest with kubectl (from stdin).
fn apply(lab: &Lab, yaml: &str) -> Result<String> {
    let mut child = std::process::Command::new(common::KUBECTL)
        .arg("--kubeconfig")
        .arg(&lab.kubeconfig)
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())?;
    let out = child.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        anyhow::bail!("kubectl apply failed: {text}");
    }
    Ok(text)
}

async fn lab_with_nodes() -> Result<Lab> {
    let lab = Lab::full().await?;
    for n in ["node-a", "node-b"] {
        lab.node(n, true, &[], serde_json::json!([])).await?;
    }
    Ok(lab)
}

async fn events_for(lab: &Lab, name: &str) -> Result<Vec<(String, String, String)>> {
    let api: kube::Api<Event> = kube::Api::namespaced(lab.client.clone(), "default");
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default(),
            )
        })
        .collect())
}

/// How many times the StatefulSet test deletes web-1 and waits for it.
const PID_REUSE_ROUNDS: usize = 10;

const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: nginx}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: web, port: 80}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: nginx
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: nginx
        image: nginx:1.25
        ports: [{name: web, containerPort: 80}]
        volumeMounts: [{name: www, mountPath: /usr/share/nginx/html}]
  volumeClaimTemplates:
  - metadata: {name: www}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
"#;

fn revision(p: &Pod) -> String {
    p.metadata.labels.as_ref().unwrap()["controller-revision-hash"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn statefulset_orders_names_recreates_scales_and_rolls() -> Result<()> {
    let mut lab = Lab::start().await?;
    lab.start_controllers();
    for n in ["node-a", "node-b"] {
        lab.node(n, true, &[], serde_json::json!([])).await?;
    }
    let sets: kube::Api<StatefulSet> = kube::Api::namespaced(lab.client.clone(), "default");
    let pods: kube::Api<Pod> = kube::Api::namespaced(lab.client.clone(), "default");
    apply(&lab, WEB)?;
    // No kubelet yet: web-0 never becomes Ready, so OrderedReady must not
    // go on to web-1. The status the controller writes after seeing web-0
    // proves it looked and chose to wait.
    eventually("web-0 created and observed", || async {
        let s = sets.get("web").await?;
        let st = s.status.unwrap_or_default();
        Ok(if st.replicas == 1 && st.observed_generation == Some(1) {
            Ok(())
        } else {
            Err(format!("{st:?}"))
        })
    })
    .await?;
    let names: Vec<String> = lab
        .pods("default", "app=web")
        .await?
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(names, ["web-0"], "OrderedReady waits for web-0 to be Ready");
    lab.start_kubelet();
    let out = lab.kubectl(&["rollout", "status", "sts/web", "--timeout=60s"])?;
    assert!(out.contains("roll out complete: 3 new pods"), "{out}");

    let web1 = pods.get("web-1").await?;
    let spec = web1.spec.clone().unwrap();
    assert_eq!(spec.hostname.as_deref(), Some("web-1"));
    assert_eq!(spec.subdomain.as_deref(), Some("nginx"));
    let vol = spec
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "www")
        .expect("www volume");
    assert!(
        vol.empty_dir.is_some(),
        "the claim template became an emptyDir"
    );
    let labels = web1.metadata.labels.clone().unwrap();
    assert_eq!(labels["statefulset.kubernetes.io/pod-name"], "web-1");
    assert_eq!(labels["apps.kubernetes.io/pod-index"], "1");
    let st = sets.get("web").await?.status.unwrap();
    assert_eq!(st.current_revision, st.update_revision);
    assert_eq!(revision(&web1), st.update_revision.clone().unwrap());
    let ev = events_for(&lab, "web").await?;
    assert!(
        ev.iter().any(|(t, r, m)| t == "Warning"
            && r == "VolumeClaimTemplatesAsEmptyDir"
            && m.contains("www")),
        "{ev:?}"
    );
    assert!(
        ev.iter().any(|(_, r, m)| r == "SuccessfulCreate"
            && m == "create Pod web-2 in StatefulSet web successful"),
        "{ev:?}"
    );
    let table = lab.kubectl(&["get", "sts", "web"])?;
    assert!(
        table
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .eq(["NAME", "READY", "AGE"]),
        "{table}"
    );
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..2], ["web", "3/3"], "{table}");
    let all = lab.kubectl(&["get", "all"])?;
    assert!(all.contains("statefulset.apps/web"), "{all}");

    // A deleted pod comes back under the same name, and `kubectl delete`
    // (which waits for the deletion) returns although the new pod may
    // already stand under the old name when it looks. Several times: the
    // race is between kubectl's reads and the controller's create.
    let mut old_uid = web1.metadata.uid.clone();
    for _ in 0..PID_REUSE_ROUNDS {
        lab.kubectl(&[
            "delete",
            "pod",
            "web-1",
            &format!("--timeout={}s", common::CONVERGE.as_secs()),
        ])?;
        old_uid = eventually("web-1 recreated and Ready", || async {
            let p = pods.get_opt("web-1").await?;
            Ok(match p {
                Some(p) if p.metadata.uid != old_uid && pod_ready(&p) => Ok(p.metadata.uid),
                other => Err(format!("{:?}", other.map(|p| p.metadata.uid))),
            })
        })
        .await?;
    }

    // Rolling update above a partition: web-2 and web-1 change, web-0 stays.
    lab.kubectl(&[
        "patch",
        "sts",
        "web",
        "-p",
        r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":1}}}}"#,
    ])?;
    lab.kubectl(&["set", "image", "sts/web", "nginx=nginx:1.27"])?;
    let out = lab.kubectl(&["rollout", "status", "sts/web", "--timeout=60s"])?;
    assert!(
        out.contains("partitioned roll out complete: 2 new pods have been updated"),
        "{out}"
    );
    let st = sets.get("web").await?.status.unwrap();
    let image = |p: &Pod| {
        p.spec.as_ref().unwrap().containers[0]
            .image
            .clone()
            .unwrap()
    };
    let p0 = pods.get("web-0").await?;
    assert_eq!(image(&p0), "nginx:1.25");
    assert_eq!(revision(&p0), st.current_revision.clone().unwrap());
    for n in ["web-1", "web-2"] {
        let p = pods.get(n).await?;
        assert_eq!(image(&p), "nginx:1.27", "{n}");
        assert_eq!(revision(&p), st.update_revision.clone().unwrap(), "{n}");
    }
    assert_ne!(st.current_revision, st.update_revision);

    // Scale down from the highest ordinal.
    lab.kubectl(&["scale", "sts", "web", "--replicas=1"])?;
    eventually("only web-0 left", || async {
        let names: Vec<String> = common::active(lab.pods("default", "app=web").await?)
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect();
        Ok(if names == ["web-0"] {
            Ok(())
        } else {
            Err(format!("{names:?}"))
        })
    })
    .await?;
    let ev = events_for(&lab, "web").await?;
    let deletes: Vec<&String> = ev
        .iter()
        .filter(|(_, r, _)| r == "SuccessfulDelete")
        .map(|(_, _, m)| m)
        .collect();
    let pos = |pod: &str| {
        deletes
            .iter()
            .rposition(|m| m.contains(&format!("Pod {pod} ")))
    };
    assert!(
        pos("web-2") < pos("web-1"),
        "web-2 goes before web-1: {deletes:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_workloads_get_422_naming_the_field() -> Result<()> {
    let lab = Lab::start().await?;
    let bad_sts = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: bad}
spec:
  serviceName: x
  selector: {matchLabels: {app: a}}
  template:
    metadata: {labels: {app: b}}
    spec: {containers: [{name: c, image: nginx}]}
"#;
    let e = apply(&lab, bad_sts).unwrap_err().to_string();
    assert!(
        e.contains("spec.template.metadata.labels: Invalid value"),
        "{e}"
    );
    assert!(
        e.contains("`selector` does not match template `labels`"),
        "{e}"
    );
    let bad_cj = r#"
apiVersion: batch/v1
kind: CronJob
metadata: {name: bad}
spec:
  schedule: "61 * * * *"
  jobTemplate:
    spec:
      template:
        spec: {restartPolicy: Never, containers: [{name: c, image: busybox}]}
"#;
    let e = apply(&lab, bad_cj).unwrap_err().to_string();
    assert!(
        e.contains("spec.schedule: Invalid value: \"61 * * * *\""),
        "{e}"
    );
    let bad_job = r#"
apiVersion: batch/v1
kind: Job
metadata: {name: bad}
spec:
  template:
    spec: {containers: [{name: c, image: busybox}]}
"#;
    let e = apply(&lab, bad_job).unwrap_err().to_string();
    assert!(
        e.contains(r#"spec.template.spec.restartPolicy: Unsupported value: "Always": supported values: "OnFailure", "Never""#),
        "{e}"
    );
    let out = lab.kubectl(&["get", "sts,jobs,cronjobs"])?;
    assert!(
        out.contains("No resources found"),
        "nothing was stored: {out}"
    );
    Ok(())
}

const PARALLEL_JOB: &str = r#"
apiVersion: batch/v1
kind: Job
metadata: {name: lookup}
spec:
  completions: 3
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: lookup
        image: busybox
        command: [sh, -c, "nslookup kubernetes.default"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn job_runs_its_completions_and_kubectl_waits_for_it() -> Result<()> {
    let lab = lab_with_nodes().await?;
    apply(&lab, PARALLEL_JOB)?;
    let out = lab.kubectl(&[
        "wait",
        "--for=condition=complete",
        "job/lookup",
        "--timeout=60s",
    ])?;
    assert!(out.contains("job.batch/lookup condition met"), "{out}");
    let jobs: kube::Api<Job> = kube::Api::namespaced(lab.client.clone(), "default");
    let j = jobs.get("lookup").await?;
    let spec = j.spec.clone().unwrap();
    assert_eq!(spec.backoff_limit, Some(6));
    assert_eq!(spec.completion_mode.as_deref(), Some("NonIndexed"));
    let st = j.status.clone().unwrap();
    assert_eq!(
        (st.succeeded, st.active.unwrap_or(0), st.failed.unwrap_or(0)),
        (Some(3), 0, 0)
    );
    let types: Vec<&str> = st
        .conditions
        .iter()
        .flatten()
        .map(|c| c.type_.as_str())
        .collect();
    assert_eq!(types, ["SuccessCriteriaMet", "Complete"]);
    assert!(st.start_time.is_some() && st.completion_time.is_some());
    let uid = j.metadata.uid.clone().unwrap();
    let pods = lab
        .pods("default", "batch.kubernetes.io/job-name=lookup")
        .await?;
    assert_eq!(pods.len(), 3);
    for p in &pods {
        let l = p.metadata.labels.as_ref().unwrap();
        assert_eq!(l["job-name"], "lookup");
        assert_eq!(l["controller-uid"], uid);
        assert_eq!(l["batch.kubernetes.io/controller-uid"], uid);
        assert_eq!(p.metadata.owner_references.as_ref().unwrap()[0].uid, uid);
        assert_eq!(
            p.status.as_ref().unwrap().phase.as_deref(),
            Some("Succeeded")
        );
    }
    let ev = events_for(&lab, "lookup").await?;
    assert_eq!(
        ev.iter()
            .filter(|(_, r, _)| r == "SuccessfulCreate")
            .count(),
        3,
        "{ev:?}"
    );
    assert!(
        ev.iter()
            .any(|(_, r, m)| r == "Completed" && m == "Job completed"),
        "{ev:?}"
    );
    let table = lab.kubectl(&["get", "job", "lookup"])?;
    let head: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        head,
        ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"],
        "{table}"
    );
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..3], ["lookup", "Complete", "3/3"], "{table}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_job_backs_off_and_fails_at_its_backoff_limit() -> Result<()> {
    let lab = lab_with_nodes().await?;
    apply(
        &lab,
        r#"
apiVersion: batch/v1
kind: Job
metadata: {name: broken}
spec:
  backoffLimit: 1
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox, command: [sh, -c, "exit 3"]}]
"#,
    )?;
    let out = lab.kubectl(&[
        "wait",
        "--for=condition=failed",
        "job/broken",
        "--timeout=60s",
    ])?;
    assert!(out.contains("condition met"), "{out}");
    let jobs: kube::Api<Job> = kube::Api::namespaced(lab.client.clone(), "default");
    let st = jobs.get("broken").await?.status.unwrap();
    assert_eq!(st.failed, Some(2));
    let conds = st.conditions.unwrap();
    let types: Vec<&str> = conds.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(types, ["FailureTarget", "Failed"]);
    assert_eq!(conds[1].reason.as_deref(), Some("BackoffLimitExceeded"));
    assert!(st.completion_time.is_none());
    // The retry waited out the 10 s back-off after the first failure.
    let mut pods = lab.pods("default", "job-name=broken").await?;
    assert_eq!(pods.len(), 2);
    pods.sort_by_key(|p| p.metadata.creation_timestamp.clone());
    let first_failed = pods[0]
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .state
        .as_ref()
        .unwrap()
        .terminated
        .as_ref()
        .unwrap()
        .finished_at
        .clone()
        .unwrap();
    let retried = pods[1].metadata.creation_timestamp.clone().unwrap();
    let gap = retried.0.duration_since(first_failed.0).as_secs_f64();
    assert!(gap >= 9.0, "retry came {gap} s after the failure");
    let ev = events_for(&lab, "broken").await?;
    assert!(
        ev.iter().any(|(t, r, m)| t == "Warning"
            && r == "BackoffLimitExceeded"
            && m == "Job has reached the specified backoff limit"),
        "{ev:?}"
    );
    let table = lab.kubectl(&["get", "job", "broken", "--no-headers"])?;
    assert!(table.split_whitespace().nth(1) == Some("Failed"), "{table}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn job_deadline_fails_it_and_ttl_deletes_finished_jobs() -> Result<()> {
    let lab = lab_with_nodes().await?;
    apply(
        &lab,
        r#"
apiVersion: batch/v1
kind: Job
metadata: {name: slow}
spec:
  activeDeadlineSeconds: 2
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox, command: [sleep, "3600"]}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: brief}
spec:
  ttlSecondsAfterFinished: 0
  template:
    spec:
      restartPolicy: OnFailure
      containers: [{name: c, image: busybox, command: [echo, hi]}]
"#,
    )?;
    lab.kubectl(&[
        "wait",
        "--for=condition=failed",
        "job/slow",
        "--timeout=60s",
    ])?;
    let jobs: kube::Api<Job> = kube::Api::namespaced(lab.client.clone(), "default");
    let st = jobs.get("slow").await?.status.unwrap();
    let failed = st
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Failed")
        .unwrap();
    assert_eq!(failed.reason.as_deref(), Some("DeadlineExceeded"));
    assert_eq!(
        failed.message.as_deref(),
        Some("Job was active longer than specified deadline")
    );
    assert!(
        common::active(lab.pods("default", "job-name=slow").await?).is_empty(),
        "its pod was stopped"
    );
    eventually("brief deleted after finishing, with its pods", || async {
        let j = jobs.get_opt("brief").await?;
        let pods = lab.pods("default", "job-name=brief").await?;
        Ok(if j.is_none() && pods.is_empty() {
            Ok(())
        } else {
            Err(format!("job {} pods {}", j.is_some(), pods.len()))
        })
    })
    .await?;
    Ok(())
}

const NIGHTLY: &str = r#"
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  schedule: "@yearly"
  timeZone: Europe/Berlin
  jobTemplate:
    metadata: {labels: {team: net}}
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers: [{name: c, image: busybox, command: [sh, -c, "nslookup kubernetes.default"]}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cronjob_defaults_table_and_create_job_from_it() -> Result<()> {
    let lab = lab_with_nodes().await?;
    apply(&lab, NIGHTLY)?;
    let cjs: kube::Api<CronJob> = kube::Api::namespaced(lab.client.clone(), "default");
    let cj = cjs.get("nightly").await?;
    let spec = cj.spec.clone().unwrap();
    assert_eq!(spec.concurrency_policy.as_deref(), Some("Allow"));
    assert_eq!(spec.suspend, Some(false));
    assert_eq!(
        (
            spec.successful_jobs_history_limit,
            spec.failed_jobs_history_limit
        ),
        (Some(3), Some(1))
    );
    let table = lab.kubectl(&["get", "cj"])?;
    let head: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        head,
        [
            "NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST", "SCHEDULE", "AGE"
        ],
        "{table}"
    );
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..6],
        [
            "nightly",
            "@yearly",
            "Europe/Berlin",
            "False",
            "0",
            "<none>"
        ],
        "{table}"
    );

    let out = lab.kubectl(&["create", "job", "by-hand", "--from=cronjob/nightly"])?;
    assert!(out.contains("job.batch/by-hand created"), "{out}");
    let jobs: kube::Api<Job> = kube::Api::namespaced(lab.client.clone(), "default");
    let j = jobs.get("by-hand").await?;
    assert_eq!(
        j.metadata.annotations.as_ref().unwrap()["cronjob.kubernetes.io/instantiate"],
        "manual"
    );
    assert_eq!(j.metadata.labels.as_ref().unwrap()["team"], "net");
    assert_eq!(
        j.metadata.owner_references.as_ref().unwrap()[0].uid,
        cj.metadata.uid.clone().unwrap()
    );
    lab.kubectl(&[
        "wait",
        "--for=condition=complete",
        "job/by-hand",
        "--timeout=60s",
    ])?;
    eventually("the CronJob records the success", || async {
        let st = cjs.get("nightly").await?.status.unwrap_or_default();
        Ok(
            if st.last_successful_time.is_some() && st.active.is_none() {
                Ok(())
            } else {
                Err(format!("{st:?}"))
            },
        )
    })
    .await?;
    // Deleting the CronJob takes its Jobs and their pods with it.
    lab.kubectl(&["delete", "cronjob", "nightly"])?;
    eventually("jobs and pods collected", || async {
        let j = jobs.get_opt("by-hand").await?;
        let pods = lab.pods("default", "job-name=by-hand").await?;
        Ok(if j.is_none() && pods.is_empty() {
            Ok(())
        } else {
            Err(format!("job {} pods {}", j.is_some(), pods.len()))
        })
    })
    .await?;
    Ok(())
}

/// What the controllers may do in `refused_pod_creates_…`: everything but
/// create pods (RBAC is additive, so the create rule lists the rest).
const NO_POD_CREATES: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: controllers-without-pod-create}
rules:
- apiGroups: ["*"]
  resources: ["*"]
  verbs: [get, list, watch, update, patch, delete, deletecollection]
- apiGroups: ["*"]
  resources: [events, replicasets, jobs, endpoints, endpointslices, controllerrevisions, leases, pods/binding, pods/eviction]
  verbs: [create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: controllers-without-pod-create}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: controllers-without-pod-create}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: limited-controllers}]
"#;

const BURST: &str = r#"
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: burst}
spec:
  replicas: 64
  selector: {matchLabels: {app: burst}}
  template:
    metadata: {labels: {app: burst}}
    spec: {containers: [{name: c, image: busybox}]}
"#;

/// A ReplicaSet whose pod creates the API server refuses (here RBAC: the
/// controllers' identity may not create pods) costs one refused create per
/// attempt, as kube-controller-manager's slow start does, not `replicas`
/// of them; each refusal is a FailedCreate event in the API server's words.
/// Scaling it to 0 ends the attempts; once its status shows that scale was
/// seen, every refusal's event is in (the controller records them before
/// the status), so the count is final.
#[tokio::test(flavor = "multi_thread")]
async fn refused_pod_creates_stop_at_the_first_slow_start_batch() -> Result<()> {
    let mut lab = Lab::start().await?;
    apply(&lab, NO_POD_CREATES)?;
    let limited = lab.client_as("limited-controllers").await?;
    lab.start_controllers_with(limited);
    apply(&lab, BURST)?;
    let refused = |evs: Vec<Event>| -> (i32, Vec<String>) {
        let failed: Vec<Event> = evs
            .into_iter()
            .filter(|e| {
                e.involved_object.name.as_deref() == Some("burst")
                    && e.reason.as_deref() == Some("FailedCreate")
            })
            .collect();
        (
            failed.iter().map(|e| e.count.unwrap_or(1)).sum(),
            failed.into_iter().filter_map(|e| e.message).collect(),
        )
    };
    let events: kube::Api<Event> = kube::Api::namespaced(lab.client.clone(), "default");
    eventually("a FailedCreate event of ReplicaSet burst", || async {
        let (n, msgs) = refused(events.list(&ListParams::default()).await?.items);
        Ok(if n > 0 {
            Ok(msgs)
        } else {
            Err("none yet".to_string())
        })
    })
    .await?;
    lab.kubectl(&["scale", "replicaset", "burst", "--replicas=0"])?;
    let sets: kube::Api<ReplicaSet> = kube::Api::namespaced(lab.client.clone(), "default");
    eventually(
        "ReplicaSet burst's status to show the scale to 0",
        || async {
            let rs = sets.get("burst").await?;
            let seen = rs.status.as_ref().and_then(|s| s.observed_generation);
            Ok(if seen.is_some() && seen == rs.metadata.generation {
                Ok(())
            } else {
                Err(format!(
                    "generation {:?}, observed {seen:?}",
                    rs.metadata.generation
                ))
            })
        },
    )
    .await?;
    let (n, msgs) = refused(events.list(&ListParams::default()).await?.items);
    assert!(
        msgs.iter().all(|m| m.starts_with("Error creating: ")
            && m.contains(r#"User "limited-controllers" cannot create resource "pods""#)),
        "{msgs:?}"
    );
    // All 64 at once would be 64 refusals per attempt.
    assert!(
        (1..64).contains(&n),
        "{n} refused creates for a ReplicaSet of 64 (one per attempt expected): {msgs:?}"
    );
    let pods: kube::Api<Pod> = kube::Api::namespaced(lab.client.clone(), "default");
    assert!(pods.list(&ListParams::default()).await?.items.is_empty());
    Ok(())
}
