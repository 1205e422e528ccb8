//! Job → pods that run to completion: up to `parallelism` at once until
//! `completions` have succeeded, retrying failed pods with kube's back-off
//! (10 s · 2^(failures−1), at most 6 min) until `backoffLimit` failures,
//! and stopping at `activeDeadlineSeconds`. As in Kubernetes 1.33 the Job
//! first gets `SuccessCriteriaMet` or `FailureTarget`, its remaining pods
//! are removed, and then it gets the terminal `Complete` or `Failed`
//! condition (reasons `CompletionsReached`, `BackoffLimitExceeded`,
//! `DeadlineExceeded`), which `kubectl wait --for=condition=complete`
//! watches. `ttlSecondsAfterFinished` deletes a finished Job (its pods go
//! with it through the garbage collector).
//!
//! The counts are of the pods the controller sees and never go down: a
//! finished pod deleted by hand is still counted, but one deleted before
//! it finished is simply replaced (upstream counts it as failed, tracking
//! pods with a finalizer). Only `NonIndexed` completion is implemented.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions, PropagationPolicy};
use serde_json::json;
use tokio::sync::Notify;

use crate::replicaset::{Expectations, create_pods, delete_pods, pod_from_template};
use crate::scheduler::record_event_for;
use crate::util::{controller_of, is_ready, is_terminal, is_terminating};
use crate::{Caches, Error, Next, RETRY};

const COMPONENT: &str = "job-controller";
/// The first pod-failure back-off; it doubles with each failure.
pub const BACKOFF_BASE: Duration = Duration::from_secs(10);
/// The longest pod-failure back-off.
pub const BACKOFF_MAX: Duration = Duration::from_secs(360);

/// An event the pass should record about the Job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEvent {
    /// "Normal" or "Warning".
    pub type_: &'static str,
    /// The event reason (`Completed`, `BackoffLimitExceeded`, ...).
    pub reason: &'static str,
    /// The message.
    pub message: String,
}

/// What one pass should do for a Job.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct JobPlan {
    /// How many pods to create.
    pub create: usize,
    /// Active pods to delete (the Job finished or has too many).
    pub delete: Vec<String>,
    /// The status to write.
    pub status: JobStatus,
    /// Events to record.
    pub events: Vec<JobEvent>,
    /// The Job's TTL after finishing has run out: delete it.
    pub delete_job: bool,
    /// Look again after this long (back-off, deadline or TTL pending).
    pub recheck: Option<Duration>,
}

/// kube's pod-failure back-off after `failures` failures.
pub fn backoff(failures: i32) -> Duration {
    if failures <= 0 {
        return Duration::ZERO;
    }
    let shift = (failures - 1).min(16) as u32;
    (BACKOFF_BASE * 2u32.pow(shift)).min(BACKOFF_MAX)
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// When a finished pod finished: its containers' `finishedAt`, else its
/// last condition change, else its creation.
fn finished_at(p: &Pod) -> Option<Timestamp> {
    let st = p.status.as_ref();
    let from_containers = st
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max();
    from_containers
        .or_else(|| {
            st.and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|c| c.last_transition_time.as_ref().map(|t| t.0))
                .max()
        })
        .or_else(|| p.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

fn has_condition(st: &JobStatus, ty: &str) -> Option<JobCondition> {
    st.conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == ty && c.status == "True")
        .cloned()
}

fn condition(ty: &str, reason: &str, message: &str, now: Timestamp) -> JobCondition {
    JobCondition {
        type_: ty.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

fn until(now: Timestamp, at: Timestamp) -> Duration {
    Duration::from_millis(at.duration_since(now).as_millis().max(0) as u64)
}

/// Plans one pass over a Job and the pods it controls, at `now`.
pub fn plan(job: &Job, pods: &[&Pod], now: Timestamp) -> JobPlan {
    let spec = job.spec.clone().unwrap_or_default();
    let prev = job.status.clone().unwrap_or_default();
    let mut out = JobPlan {
        status: prev.clone(),
        ..Default::default()
    };

    // Finished: only the TTL is left to watch.
    if let Some(done) = has_condition(&prev, "Complete").or_else(|| has_condition(&prev, "Failed"))
    {
        if let Some(ttl) = spec.ttl_seconds_after_finished {
            let finished = done
                .last_transition_time
                .map(|t| t.0)
                .or(prev.completion_time.as_ref().map(|t| t.0))
                .unwrap_or(now);
            let expiry = finished + Duration::from_secs(ttl.max(0) as u64);
            if now >= expiry {
                out.delete_job = true;
            } else {
                out.recheck = Some(until(now, expiry));
            }
        }
        return out;
    }

    let active: Vec<&&Pod> = pods
        .iter()
        .filter(|p| !is_terminal(p) && !is_terminating(p))
        .collect();
    let terminating = pods.iter().filter(|p| is_terminating(p)).count() as i32;
    let seen_succeeded = pods.iter().filter(|p| phase(p) == "Succeeded").count() as i32;
    let failed_pods: Vec<&&Pod> = pods.iter().filter(|p| phase(p) == "Failed").collect();
    let succeeded = prev.succeeded.unwrap_or(0).max(seen_succeeded);
    let failed = prev.failed.unwrap_or(0).max(failed_pods.len() as i32);
    let st = &mut out.status;
    st.succeeded = Some(succeeded);
    st.failed = Some(failed);
    st.terminating = Some(terminating);
    st.ready = Some(active.iter().filter(|p| is_ready(p)).count() as i32);
    st.active = Some(active.len() as i32);
    st.uncounted_terminated_pods = Some(UncountedTerminatedPods::default());
    let active_names = || -> Vec<String> {
        active
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect()
    };

    if spec.suspend == Some(true) {
        out.delete = active_names();
        st.start_time = None;
        if has_condition(st, "Suspended").is_none() {
            st.conditions.get_or_insert_with(Vec::new).push(condition(
                "Suspended",
                "JobSuspended",
                "Job suspended",
                now,
            ));
        }
        return out;
    }
    if let Some(cs) = st.conditions.as_mut() {
        cs.retain(|c| c.type_ != "Suspended");
    }
    let start = st.start_time.as_ref().map(|t| t.0).unwrap_or(now);
    st.start_time = Some(Time(start));

    // Success and failure: the interim condition first, the terminal one
    // once no pod of the Job is left running.
    let completions = spec.completions;
    let success = match completions {
        Some(c) => succeeded >= c,
        None => succeeded > 0 && active.is_empty(),
    };
    let restarts: i32 = if spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        == Some("OnFailure")
    {
        active
            .iter()
            .flat_map(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.clone())
                    .unwrap_or_default()
            })
            .map(|c| c.restart_count)
            .sum()
    } else {
        0
    };
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let deadline = spec
        .active_deadline_seconds
        .map(|s| start + Duration::from_secs(s.max(0) as u64));
    if has_condition(st, "SuccessCriteriaMet").is_none()
        && has_condition(st, "FailureTarget").is_none()
    {
        if success {
            st.conditions.get_or_insert_with(Vec::new).push(condition(
                "SuccessCriteriaMet",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
                now,
            ));
        } else if failed + restarts > backoff_limit {
            st.conditions.get_or_insert_with(Vec::new).push(condition(
                "FailureTarget",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
                now,
            ));
            out.events.push(JobEvent {
                type_: "Warning",
                reason: "BackoffLimitExceeded",
                message: "Job has reached the specified backoff limit".into(),
            });
        } else if let Some(d) = deadline {
            if now >= d {
                st.conditions.get_or_insert_with(Vec::new).push(condition(
                    "FailureTarget",
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                    now,
                ));
                out.events.push(JobEvent {
                    type_: "Warning",
                    reason: "DeadlineExceeded",
                    message: "Job was active longer than specified deadline".into(),
                });
            } else {
                out.recheck = Some(until(now, d));
            }
        }
    }
    let ending =
        has_condition(st, "SuccessCriteriaMet").or_else(|| has_condition(st, "FailureTarget"));
    if let Some(c) = ending {
        out.delete = active_names();
        if active.is_empty() && terminating == 0 {
            let terminal = if c.type_ == "SuccessCriteriaMet" {
                st.completion_time = Some(Time(now));
                out.events.push(JobEvent {
                    type_: "Normal",
                    reason: "Completed",
                    message: "Job completed".into(),
                });
                "Complete"
            } else {
                "Failed"
            };
            st.conditions.get_or_insert_with(Vec::new).push(condition(
                terminal,
                c.reason.as_deref().unwrap_or(""),
                c.message.as_deref().unwrap_or(""),
                now,
            ));
            st.ready = Some(0);
            st.active = Some(0);
            if let Some(ttl) = spec.ttl_seconds_after_finished {
                out.recheck = Some(Duration::from_secs(ttl.max(0) as u64));
            }
        }
        return out;
    }

    // Keep the wanted number of pods running.
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let want = match completions {
        Some(c) => parallelism.min(c - succeeded).max(0),
        None if succeeded > 0 => 0,
        None => parallelism,
    };
    let have = active.len() as i32;
    if have > want {
        let mut extra: Vec<&&&Pod> = active.iter().collect();
        extra.sort_by_key(|p| std::cmp::Reverse(p.metadata.creation_timestamp.clone()));
        out.delete = extra
            .iter()
            .take((have - want) as usize)
            .filter_map(|p| p.metadata.name.clone())
            .collect();
    } else if have < want {
        let last_failure = failed_pods.iter().filter_map(|p| finished_at(p)).max();
        let ready_at = last_failure.map(|t| t + backoff(failed));
        match ready_at {
            Some(at) if now < at => {
                let wait = until(now, at);
                out.recheck = Some(out.recheck.map_or(wait, |r| r.min(wait)));
            }
            _ => out.create = (want - have) as usize,
        }
    }
    out
}

/// The pod a Job runs: its template, named `<job>-<random>`, with the
/// Job's labels (the API server put them in the template; a Job made
/// elsewhere may lack them) and a controller reference.
pub fn job_pod(job: &Job) -> Pod {
    let spec = job.spec.clone().unwrap_or_default();
    let name = job.metadata.name.clone().unwrap_or_default();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let mut pod = pod_from_template(job, Some(&spec.template), &format!("{name}-"));
    let labels = pod.metadata.labels.get_or_insert_with(Default::default);
    for (k, v) in [
        ("batch.kubernetes.io/job-name", &name),
        ("job-name", &name),
        ("batch.kubernetes.io/controller-uid", &uid),
        ("controller-uid", &uid),
    ] {
        labels.entry(k.to_string()).or_insert_with(|| v.clone());
    }
    pod
}

/// Runs the Job controller with caches of its own until cancelled.
pub async fn run(client: kube::Client, resync: Duration) -> Result<(), Error> {
    run_with(Caches::new(client), resync).await
}

/// Runs the Job controller over shared caches until cancelled.
pub async fn run_with(caches: Arc<Caches>, resync: Duration) -> Result<(), Error> {
    let wake = Arc::new(Notify::new());
    caches.jobs().wake_on_change(&wake);
    caches.pods().wake_on_change(&wake);
    caches.jobs().ready().await;
    caches.pods().ready().await;
    let mut c = JobController {
        caches,
        expectations: Expectations::default(),
    };
    crate::drive!("job", wake, resync, c.pass().await)
}

struct JobController {
    caches: Arc<Caches>,
    expectations: Expectations,
}

impl JobController {
    async fn pass(&mut self) -> Next {
        let jobs = self.caches.jobs().all();
        let pods = self.caches.pods().all();
        let live: HashSet<&str> = jobs
            .iter()
            .filter_map(|j| j.metadata.uid.as_deref())
            .collect();
        self.expectations.retain(&live);
        let mut next = Next::Idle;
        for job in &jobs {
            if job.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let uid = job.metadata.uid.clone().unwrap_or_default();
            let owned: Vec<&Arc<Pod>> = pods
                .iter()
                .filter(|p| controller_of(p.as_ref()).is_some_and(|o| o.uid == uid))
                .collect();
            next = next.min(self.sync(job, &uid, &owned).await);
        }
        next
    }

    async fn sync(&mut self, job: &Job, uid: &str, owned: &[&Arc<Pod>]) -> Next {
        if !self.expectations.satisfied(uid, owned) {
            return Next::Idle;
        }
        let client = self.caches.client().clone();
        let ns = job.metadata.namespace.clone().unwrap_or_default();
        let name = job.metadata.name.clone().unwrap_or_default();
        let pods: Vec<&Pod> = owned.iter().map(|p| p.as_ref()).collect();
        let plan = plan(job, &pods, Timestamp::now());
        let mut next = plan
            .recheck
            .map_or(Next::Idle, |d| Next::After(d + Duration::from_millis(50)));
        let jobs: kube::Api<Job> = kube::Api::namespaced(client.clone(), &ns);
        if plan.delete_job {
            tracing::info!(job = %format!("{ns}/{name}"), "deleting finished job after its TTL");
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(uid.to_string()),
                    resource_version: None,
                }),
                propagation_policy: Some(PropagationPolicy::Background),
                ..Default::default()
            };
            if let Err(e) = jobs.delete(&name, &dp).await
                && !crate::benign(&e)
            {
                crate::log_write_error("job", "delete job", &e);
                return Next::After(RETRY);
            }
            return Next::Idle;
        }
        let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), &ns);
        if plan.create > 0 {
            let pod = job_pod(job);
            // Fewer once the Job's parallelism is lowered, none once it is
            // suspended or gone, as the cache shows it between batches.
            let parallelism = |j: &Job| j.spec.as_ref().and_then(|s| s.parallelism).unwrap_or(1);
            let jobs_cache = self.caches.jobs();
            let wanted = || {
                jobs_cache
                    .current(job)
                    .filter(|now| now.spec.as_ref().and_then(|s| s.suspend) != Some(true))
                    .map_or(0, |now| {
                        let cut = (parallelism(job) - parallelism(&now)).max(0) as usize;
                        plan.create.saturating_sub(cut)
                    })
            };
            let (made, refused) =
                create_pods(&api, plan.create, |_| pod.clone(), "job", wanted).await;
            for e in &refused {
                let _ = record_event_for(
                    &client,
                    COMPONENT,
                    job,
                    "Warning",
                    "FailedCreate",
                    &format!("Error creating: {e}"),
                )
                .await;
            }
            let failed = !refused.is_empty();
            for p in &made {
                let _ = record_event_for(
                    &client,
                    COMPONENT,
                    job,
                    "Normal",
                    "SuccessfulCreate",
                    &format!("Created pod: {p}"),
                )
                .await;
            }
            if failed {
                next = next.min(Next::After(RETRY));
            }
            self.expectations.expect(uid, made, []);
        }
        if !plan.delete.is_empty() {
            let doomed: Vec<&Arc<Pod>> = owned
                .iter()
                .copied()
                .filter(|p| {
                    p.metadata
                        .name
                        .as_ref()
                        .is_some_and(|n| plan.delete.contains(n))
                })
                .collect();
            let (gone, failed) = delete_pods(&api, &doomed, "job").await;
            for p in &gone {
                let _ = record_event_for(
                    &client,
                    COMPONENT,
                    job,
                    "Normal",
                    "SuccessfulDelete",
                    &format!("Deleted pod: {p}"),
                )
                .await;
            }
            if failed {
                next = next.min(Next::After(RETRY));
            }
            self.expectations.expect(uid, [], gone);
        }
        if job.status.as_ref() != Some(&plan.status) {
            if let Err(e) = jobs
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"status": plan.status})),
                )
                .await
            {
                crate::log_write_error("job", "status", &e);
                return next.min(Next::After(RETRY));
            }
            for ev in &plan.events {
                let _ = record_event_for(&client, COMPONENT, job, ev.type_, ev.reason, &ev.message)
                    .await;
            }
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus,
    };

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn job(extra: serde_json::Value) -> Job {
        let mut spec = json!({"completions": 3, "parallelism": 2, "backoffLimit": 2,
            "template": {"metadata": {"labels": {"job-name": "j"}}, "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        serde_json::from_value(
            json!({"metadata": {"name": "j", "namespace": "default", "uid": "u1"}, "spec": spec}),
        )
        .unwrap()
    }

    fn pod(name: &str, phase: &str, finished: Option<&str>) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.status = Some(PodStatus {
            phase: Some(phase.into()),
            container_statuses: finished.map(|f| {
                vec![ContainerStatus {
                    name: "c".into(),
                    state: Some(ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            finished_at: Some(Time(ts(f))),
                            exit_code: if phase == "Failed" { 1 } else { 0 },
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        });
        p
    }

    fn types(st: &JobStatus) -> Vec<String> {
        st.conditions
            .iter()
            .flatten()
            .map(|c| c.type_.clone())
            .collect()
    }

    #[test]
    fn backoff_doubles_from_ten_seconds_to_six_minutes() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(2), Duration::from_secs(20));
        assert_eq!(backoff(4), Duration::from_secs(80));
        assert_eq!(backoff(6), Duration::from_secs(320));
        assert_eq!(backoff(7), Duration::from_secs(360));
        assert_eq!(backoff(60), Duration::from_secs(360));
    }

    #[test]
    fn runs_parallelism_pods_until_completions_then_completes() {
        let now = ts("2025-01-01T00:00:00Z");
        let j = job(json!({}));
        let p = plan(&j, &[], now);
        assert_eq!(p.create, 2);
        assert_eq!(p.status.start_time, Some(Time(now)));
        let (a, b, c) = (
            pod("a", "Succeeded", None),
            pod("b", "Running", None),
            pod("c", "Pending", None),
        );
        let p = plan(&j, &[&a, &b, &c], now);
        assert_eq!(p.create, 0, "2 active cover the 2 completions left");
        let b2 = pod("b", "Succeeded", None);
        let p = plan(&j, &[&a, &b2, &c], now);
        assert_eq!(
            (p.create, p.status.succeeded, p.status.active),
            (0, Some(2), Some(1))
        );
        let c2 = pod("c", "Succeeded", None);
        let p = plan(&j, &[&a, &b2, &c2], now);
        assert_eq!(types(&p.status), ["SuccessCriteriaMet", "Complete"]);
        assert_eq!(p.status.completion_time, Some(Time(now)));
        assert_eq!(p.events[0].reason, "Completed");
    }

    #[test]
    fn success_criteria_first_while_extra_pods_still_run() {
        let now = ts("2025-01-01T00:00:00Z");
        let j = job(json!({"completions": 1, "parallelism": 2}));
        let (a, b) = (pod("a", "Succeeded", None), pod("b", "Running", None));
        let p = plan(&j, &[&a, &b], now);
        assert_eq!(types(&p.status), ["SuccessCriteriaMet"]);
        assert_eq!(p.delete, ["b"]);
    }

    #[test]
    fn failed_pods_back_off_then_hit_the_limit() {
        let j = job(json!({"completions": 1, "parallelism": 1, "backoffLimit": 1}));
        let f1 = pod("a", "Failed", Some("2025-01-01T00:00:00Z"));
        let p = plan(&j, &[&f1], ts("2025-01-01T00:00:04Z"));
        assert_eq!(p.create, 0, "inside the 10 s back-off");
        assert_eq!(p.recheck, Some(Duration::from_secs(6)));
        let p = plan(&j, &[&f1], ts("2025-01-01T00:00:10Z"));
        assert_eq!(p.create, 1);
        let f2 = pod("b", "Failed", Some("2025-01-01T00:00:12Z"));
        let p = plan(&j, &[&f1, &f2], ts("2025-01-01T00:00:13Z"));
        assert_eq!(types(&p.status), ["FailureTarget", "Failed"]);
        let c = &p.status.conditions.as_ref().unwrap()[1];
        assert_eq!(c.reason.as_deref(), Some("BackoffLimitExceeded"));
        assert_eq!(p.status.failed, Some(2));
        assert!(p.status.completion_time.is_none());
        assert_eq!(p.events[0].reason, "BackoffLimitExceeded");
    }

    #[test]
    fn deadline_fails_the_job_and_stops_its_pods() {
        let mut j = job(json!({"activeDeadlineSeconds": 30}));
        j.status = Some(JobStatus {
            start_time: Some(Time(ts("2025-01-01T00:00:00Z"))),
            ..Default::default()
        });
        let a = pod("a", "Running", None);
        let p = plan(&j, &[&a], ts("2025-01-01T00:00:20Z"));
        assert_eq!(p.recheck, Some(Duration::from_secs(10)));
        let p = plan(&j, &[&a], ts("2025-01-01T00:00:30Z"));
        assert_eq!(types(&p.status), ["FailureTarget"]);
        assert_eq!(p.delete, ["a"]);
        j.status = Some(p.status);
        let p = plan(&j, &[], ts("2025-01-01T00:00:31Z"));
        assert_eq!(types(&p.status), ["FailureTarget", "Failed"]);
        assert_eq!(
            p.status.conditions.unwrap()[1].reason.as_deref(),
            Some("DeadlineExceeded")
        );
    }

    #[test]
    fn finished_jobs_are_deleted_after_their_ttl() {
        let mut j = job(json!({"ttlSecondsAfterFinished": 60}));
        let done = ts("2025-01-01T00:00:00Z");
        j.status = Some(JobStatus {
            conditions: Some(vec![condition("Complete", "CompletionsReached", "", done)]),
            ..Default::default()
        });
        let p = plan(&j, &[], ts("2025-01-01T00:00:45Z"));
        assert!(!p.delete_job);
        assert_eq!(p.recheck, Some(Duration::from_secs(15)));
        assert!(plan(&j, &[], ts("2025-01-01T00:01:00Z")).delete_job);
    }

    #[test]
    fn job_pods_carry_the_job_labels() {
        let p = job_pod(&job(json!({})));
        let l = p.metadata.labels.unwrap();
        assert_eq!(l["batch.kubernetes.io/job-name"], "j");
        assert_eq!(l["controller-uid"], "u1");
        assert_eq!(p.metadata.generate_name.as_deref(), Some("j-"));
        assert_eq!(p.metadata.owner_references.unwrap()[0].kind, "Job");
    }
}
