//! CronJob → a Job at each scheduled time: the five-field schedule (or
//! `@hourly` …) in `spec.timeZone` (UTC when unset), the Job named
//! `<cronjob>-<scheduled time in minutes since the epoch>` as upstream
//! names it, so a time is never run twice. Only the most recent missed time
//! runs; with `startingDeadlineSeconds` a time older than that is skipped
//! (`MissedSchedule`). `concurrencyPolicy` Allow runs Jobs side by side,
//! Forbid waits for the running one, Replace deletes it first. `suspend`
//! stops new runs. Finished Jobs beyond `successfulJobsHistoryLimit` /
//! `failedJobsHistoryLimit` are deleted, oldest first. The status keeps
//! `active`, `lastScheduleTime` and `lastSuccessfulTime`.
//!
//! [`plan`] takes the time as an argument, so tests cover schedules without
//! waiting for them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy};
use podnet_core::cron::{Schedule, time_zone};
use serde_json::json;
use tokio::sync::Notify;

use crate::job::JobEvent;
use crate::scheduler::record_event_for;
use crate::util::{controller_of, owner_ref};
use crate::{Caches, Error, Next, RETRY};

const COMPONENT: &str = "cronjob-controller";
/// The annotation a CronJob's Job carries with its scheduled time.
pub const SCHEDULED_ANNOTATION: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// More missed times than this and the CronJob says so (and still runs
/// only the latest), as upstream does.
const MAX_MISSED: usize = 100;

/// What one pass should do for a CronJob.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct CronPlan {
    /// Create the Job of this scheduled time.
    pub create: Option<Timestamp>,
    /// Jobs to delete: the running ones (Replace) and old history.
    pub delete: Vec<String>,
    /// The active Jobs, as the status lists them.
    pub active: Vec<ObjectReference>,
    /// The last scheduled time to record.
    pub last_schedule: Option<Timestamp>,
    /// The last time a Job succeeded.
    pub last_successful: Option<Timestamp>,
    /// Events to record.
    pub events: Vec<JobEvent>,
    /// When the next scheduled time comes, from now.
    pub next: Option<Duration>,
}

/// The name of the Job a CronJob runs at `scheduled`.
pub fn job_name(cj: &str, scheduled: Timestamp) -> String {
    format!("{cj}-{}", scheduled.as_second().div_euclid(60))
}

/// The finishing condition of a Job (`Complete` or `Failed`), if it has one.
pub fn finished(job: &Job) -> Option<&'static str> {
    let cs = job.status.as_ref()?.conditions.as_ref()?;
    ["Complete", "Failed"]
        .into_iter()
        .find(|t| cs.iter().any(|c| c.type_ == *t && c.status == "True"))
}

fn job_ref(j: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: j.metadata.name.clone(),
        namespace: j.metadata.namespace.clone(),
        uid: j.metadata.uid.clone(),
        resource_version: j.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// The most recent scheduled time in `(earliest, now]`.
fn most_recent(
    s: &Schedule,
    earliest: Timestamp,
    now: Timestamp,
    tz: &jiff::tz::TimeZone,
) -> Option<Timestamp> {
    // Look back in widening windows so a frequent schedule never walks
    // through a long gap minute by minute.
    for window in [3_600i64, 86_400, 86_400 * 32, 86_400 * 366 * 8] {
        let from = earliest.max(now - jiff::SignedDuration::from_secs(window));
        if let Some(t) = s.times_between(from, now, tz, usize::MAX).last() {
            return Some(*t);
        }
        if from == earliest {
            break;
        }
    }
    None
}

fn warn(reason: &'static str, message: String) -> JobEvent {
    JobEvent {
        type_: "Warning",
        reason,
        message,
    }
}

/// Plans one pass over a CronJob and the Jobs it controls, at `now`.
pub fn plan(cj: &CronJob, jobs: &[&Job], now: Timestamp) -> CronPlan {
    let spec = cj.spec.clone().unwrap_or_default();
    let status = cj.status.clone().unwrap_or_default();
    let name = cj.metadata.name.as_deref().unwrap_or("");
    let mut out = CronPlan {
        last_schedule: status.last_schedule_time.as_ref().map(|t| t.0),
        last_successful: status.last_successful_time.as_ref().map(|t| t.0),
        ..Default::default()
    };
    let was_active: HashSet<&str> = status
        .active
        .iter()
        .flatten()
        .filter_map(|r| r.name.as_deref())
        .collect();
    let mut active: Vec<&Job> = Vec::new();
    let mut succeeded: Vec<&Job> = Vec::new();
    let mut failed: Vec<&Job> = Vec::new();
    for j in jobs {
        let jname = j.metadata.name.as_deref().unwrap_or("");
        match finished(j) {
            None => active.push(j),
            Some(cond) => {
                if was_active.contains(jname) {
                    out.events.push(JobEvent {
                        type_: "Normal",
                        reason: "SawCompletedJob",
                        message: format!("Saw completed job: {jname}, condition: {cond}"),
                    });
                }
                if cond == "Complete" {
                    let done = j
                        .status
                        .as_ref()
                        .and_then(|s| s.completion_time.as_ref())
                        .map(|t| t.0);
                    out.last_successful = out.last_successful.max(done);
                    succeeded.push(j);
                } else {
                    failed.push(j);
                }
            }
        }
    }
    active.sort_by_key(|j| j.metadata.name.clone());
    // History: the oldest finished Jobs beyond the limits go.
    for (mut list, limit) in [
        (succeeded, spec.successful_jobs_history_limit.unwrap_or(3)),
        (failed, spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        list.sort_by_key(|j| {
            (
                j.status
                    .as_ref()
                    .and_then(|s| s.start_time.clone())
                    .or(j.metadata.creation_timestamp.clone()),
                j.metadata.name.clone(),
            )
        });
        let extra = list.len().saturating_sub(limit.max(0) as usize);
        out.delete
            .extend(list[..extra].iter().filter_map(|j| j.metadata.name.clone()));
    }
    out.active = active.iter().map(|j| job_ref(j)).collect();

    if cj.metadata.deletion_timestamp.is_some() || spec.suspend == Some(true) {
        return out;
    }
    let tz = match time_zone(spec.time_zone.as_deref()) {
        Ok(tz) => tz,
        Err(e) => {
            out.events.push(warn("UnknownTimeZone", e.0));
            return out;
        }
    };
    let schedule = match Schedule::parse(&spec.schedule) {
        Ok(s) => s,
        Err(e) => {
            out.events.push(warn(
                "UnparseableSchedule",
                format!("unparseable schedule: {:?} : {}", spec.schedule, e.0),
            ));
            return out;
        }
    };
    out.next = schedule
        .next_after(now, &tz)
        .map(|t| Duration::from_millis(t.duration_since(now).as_millis().max(0) as u64));
    let created = cj
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(now);
    let mut earliest = out.last_schedule.unwrap_or(created);
    if let Some(d) = spec.starting_deadline_seconds {
        earliest = earliest.max(now - jiff::SignedDuration::from_secs(d.max(0)));
    }
    if schedule
        .times_between(earliest, now, &tz, MAX_MISSED + 1)
        .len()
        > MAX_MISSED
    {
        out.events.push(warn(
            "TooManyMissedTimes",
            "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew".into(),
        ));
    }
    let Some(scheduled) = most_recent(&schedule, earliest, now, &tz) else {
        return out;
    };
    if let Some(d) = spec.starting_deadline_seconds
        && scheduled + jiff::SignedDuration::from_secs(d.max(0)) < now
    {
        out.events.push(warn(
            "MissedSchedule",
            format!("Missed scheduled time to start a job: {scheduled}"),
        ));
        return out;
    }
    let want = job_name(name, scheduled);
    if jobs
        .iter()
        .any(|j| j.metadata.name.as_deref() == Some(want.as_str()))
    {
        out.last_schedule = Some(scheduled);
        return out;
    }
    match spec.concurrency_policy.as_deref().unwrap_or("Allow") {
        "Forbid" if !active.is_empty() => return out,
        "Replace" => {
            out.delete
                .extend(active.iter().filter_map(|j| j.metadata.name.clone()));
            out.active.clear();
        }
        _ => {}
    }
    out.create = Some(scheduled);
    out.last_schedule = Some(scheduled);
    out
}

/// The Job a CronJob runs at `scheduled`: its job template, its name for
/// that time, the scheduled-time annotation and a controller reference.
pub fn job_for(cj: &CronJob, scheduled: Timestamp) -> Job {
    let spec = cj.spec.clone().unwrap_or_default();
    let tmpl = spec.job_template;
    let tmeta = tmpl.metadata.unwrap_or_default();
    let tz = time_zone(spec.time_zone.as_deref()).unwrap_or(jiff::tz::TimeZone::UTC);
    let mut annotations = tmeta.annotations.unwrap_or_default();
    annotations.insert(
        SCHEDULED_ANNOTATION.into(),
        scheduled
            .to_zoned(tz)
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string(),
    );
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(
                cj.metadata.name.as_deref().unwrap_or(""),
                scheduled,
            )),
            namespace: cj.metadata.namespace.clone(),
            labels: tmeta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![owner_ref(cj)]),
            ..Default::default()
        },
        spec: Some(tmpl.spec.unwrap_or_default()),
        status: None,
    }
}

/// Runs the CronJob controller with caches of its own until cancelled.
pub async fn run(client: kube::Client, resync: Duration) -> Result<(), Error> {
    run_with(Caches::new(client), resync).await
}

/// Runs the CronJob controller over shared caches until cancelled.
pub async fn run_with(caches: Arc<Caches>, resync: Duration) -> Result<(), Error> {
    let wake = Arc::new(Notify::new());
    caches.cron_jobs().wake_on_change(&wake);
    caches.jobs().wake_on_change(&wake);
    caches.cron_jobs().ready().await;
    caches.jobs().ready().await;
    let mut c = CronController {
        caches,
        pending: HashMap::new(),
    };
    crate::drive!("cronjob", wake, resync, c.pass().await)
}

/// How long a created Job may stay out of the cache before the CronJob is
/// looked at again anyway.
const PENDING_TTL: Duration = Duration::from_secs(10);

struct CronController {
    caches: Arc<Caches>,
    /// Jobs created but not yet seen in the cache, by CronJob uid: the
    /// CronJob waits for them so Forbid and the history see them.
    pending: HashMap<String, (String, Instant)>,
}

impl CronController {
    async fn pass(&mut self) -> Next {
        let cjs = self.caches.cron_jobs().all();
        let jobs = self.caches.jobs().all();
        let live: HashSet<&str> = cjs
            .iter()
            .filter_map(|c| c.metadata.uid.as_deref())
            .collect();
        self.pending.retain(|k, _| live.contains(k.as_str()));
        let mut next = Next::Idle;
        for cj in &cjs {
            let uid = cj.metadata.uid.clone().unwrap_or_default();
            let owned: Vec<&Job> = jobs
                .iter()
                .filter(|j| controller_of(j.as_ref()).is_some_and(|o| o.uid == uid))
                .map(|j| j.as_ref())
                .collect();
            if let Some((want, at)) = self.pending.get(&uid) {
                let seen = owned.iter().any(|j| j.metadata.name.as_ref() == Some(want));
                if !seen && at.elapsed() < PENDING_TTL {
                    next = next.min(Next::After(RETRY));
                    continue;
                }
                self.pending.remove(&uid);
            }
            next = next.min(self.sync(cj, &uid, &owned).await);
        }
        next
    }

    async fn sync(&mut self, cj: &CronJob, uid: &str, owned: &[&Job]) -> Next {
        let client = self.caches.client().clone();
        let ns = cj.metadata.namespace.clone().unwrap_or_default();
        let name = cj.metadata.name.clone().unwrap_or_default();
        let mut plan = plan(cj, owned, Timestamp::now());
        let mut next = plan
            .next
            .map_or(Next::Idle, |d| Next::After(d + Duration::from_millis(50)));
        let jobs: kube::Api<Job> = kube::Api::namespaced(client.clone(), &ns);
        for j in &plan.delete {
            match jobs
                .delete(
                    j,
                    &DeleteParams {
                        propagation_policy: Some(PropagationPolicy::Background),
                        ..Default::default()
                    },
                )
                .await
            {
                Ok(_) => {
                    let _ = record_event_for(
                        &client,
                        COMPONENT,
                        cj,
                        "Normal",
                        "SuccessfulDelete",
                        &format!("Deleted job {j}"),
                    )
                    .await;
                }
                Err(e) if crate::benign(&e) => {}
                Err(e) => {
                    crate::log_write_error("cronjob", "delete job", &e);
                    next = next.min(Next::After(RETRY));
                }
            }
        }
        if let Some(at) = plan.create {
            let job = job_for(cj, at);
            let jname = job.metadata.name.clone().unwrap_or_default();
            match jobs.create(&PostParams::default(), &job).await {
                Ok(made) => {
                    tracing::info!(cronjob = %format!("{ns}/{name}"), job = %jname, "created scheduled job");
                    plan.active.push(job_ref(&made));
                    self.pending
                        .insert(uid.to_string(), (jname.clone(), Instant::now()));
                    let _ = record_event_for(
                        &client,
                        COMPONENT,
                        cj,
                        "Normal",
                        "SuccessfulCreate",
                        &format!("Created job {jname}"),
                    )
                    .await;
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => {
                    crate::log_write_error("cronjob", "create job", &e);
                    plan.last_schedule = cj
                        .status
                        .as_ref()
                        .and_then(|s| s.last_schedule_time.as_ref())
                        .map(|t| t.0);
                    next = next.min(Next::After(RETRY));
                }
            }
        }
        let status = json!({
            "active": if plan.active.is_empty() { serde_json::Value::Null } else { json!(plan.active) },
            "lastScheduleTime": plan.last_schedule.map(Time),
            "lastSuccessfulTime": plan.last_successful.map(Time),
        });
        let old = cj.status.clone().unwrap_or_default();
        let changed = old.active.clone().unwrap_or_default() != plan.active
            || old.last_schedule_time.map(|t| t.0) != plan.last_schedule
            || old.last_successful_time.map(|t| t.0) != plan.last_successful;
        if changed {
            let api: kube::Api<CronJob> = kube::Api::namespaced(client.clone(), &ns);
            if let Err(e) = api
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"status": status})),
                )
                .await
            {
                crate::log_write_error("cronjob", "status", &e);
                return next.min(Next::After(RETRY));
            }
            for ev in &plan.events {
                let _ = record_event_for(&client, COMPONENT, cj, ev.type_, ev.reason, &ev.message)
                    .await;
            }
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{CronJobStatus, JobCondition, JobStatus};

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn cj(extra: serde_json::Value) -> CronJob {
        let mut spec = json!({"schedule": "*/5 * * * *", "concurrencyPolicy": "Allow",
            "successfulJobsHistoryLimit": 2, "failedJobsHistoryLimit": 1,
            "jobTemplate": {"metadata": {"labels": {"team": "a"}}, "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}}});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        serde_json::from_value(json!({"metadata": {"name": "cj", "namespace": "default", "uid": "u1", "creationTimestamp": "2025-01-01T00:00:00Z"}, "spec": spec})).unwrap()
    }

    fn job(name: &str, cond: Option<&str>, at: &str) -> Job {
        let mut j = Job::default();
        j.metadata.name = Some(name.into());
        j.metadata.creation_timestamp = Some(Time(ts(at)));
        j.status = Some(JobStatus {
            start_time: Some(Time(ts(at))),
            completion_time: (cond == Some("Complete")).then(|| Time(ts(at))),
            conditions: cond.map(|c| {
                vec![JobCondition {
                    type_: c.into(),
                    status: "True".into(),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        });
        j
    }

    #[test]
    fn names_jobs_by_scheduled_minute() {
        assert_eq!(job_name("cj", ts("2025-01-01T00:05:00Z")), "cj-28928165");
    }

    #[test]
    fn runs_the_latest_missed_time_once() {
        let c = cj(json!({}));
        let p = plan(&c, &[], ts("2025-01-01T00:12:30Z"));
        assert_eq!(p.create, Some(ts("2025-01-01T00:10:00Z")));
        assert_eq!(p.last_schedule, Some(ts("2025-01-01T00:10:00Z")));
        assert_eq!(p.next, Some(Duration::from_secs(150)));
        // Its Job exists: nothing new until the next time.
        let j = job(
            &job_name("cj", ts("2025-01-01T00:10:00Z")),
            None,
            "2025-01-01T00:10:00Z",
        );
        let p = plan(&c, &[&j], ts("2025-01-01T00:12:30Z"));
        assert_eq!(p.create, None);
        assert_eq!(p.active.len(), 1);
        // Nothing is due before the first time after creation.
        assert_eq!(plan(&c, &[], ts("2025-01-01T00:04:59Z")).create, None);
    }

    #[test]
    fn time_zone_moves_the_schedule() {
        let c = cj(json!({"schedule": "0 9 * * *", "timeZone": "Asia/Tokyo"}));
        let p = plan(&c, &[], ts("2025-01-02T00:30:00Z"));
        assert_eq!(
            p.create,
            Some(ts("2025-01-02T00:00:00Z")),
            "09:00 in Tokyo is 00:00 UTC"
        );
        let j = job_for(&c, p.create.unwrap());
        assert_eq!(
            j.metadata.annotations.unwrap()[SCHEDULED_ANNOTATION],
            "2025-01-02T09:00:00+09:00"
        );
        assert_eq!(j.metadata.labels.unwrap()["team"], "a");
        assert_eq!(j.metadata.owner_references.unwrap()[0].kind, "CronJob");
    }

    #[test]
    fn concurrency_policies() {
        let running = job("cj-old", None, "2025-01-01T00:05:00Z");
        let now = ts("2025-01-01T00:10:01Z");
        let mut c = cj(json!({"concurrencyPolicy": "Forbid"}));
        c.status = Some(CronJobStatus {
            last_schedule_time: Some(Time(ts("2025-01-01T00:05:00Z"))),
            ..Default::default()
        });
        assert_eq!(plan(&c, &[&running], now).create, None);
        c.spec.as_mut().unwrap().concurrency_policy = Some("Replace".into());
        let p = plan(&c, &[&running], now);
        assert_eq!(p.delete, ["cj-old"]);
        assert_eq!(p.create, Some(ts("2025-01-01T00:10:00Z")));
        c.spec.as_mut().unwrap().concurrency_policy = Some("Allow".into());
        let p = plan(&c, &[&running], now);
        assert!(p.delete.is_empty());
        assert!(p.create.is_some());
        c.spec.as_mut().unwrap().suspend = Some(true);
        assert_eq!(plan(&c, &[&running], now).create, None);
    }

    #[test]
    fn starting_deadline_skips_late_times() {
        let c = cj(json!({"startingDeadlineSeconds": 60}));
        let p = plan(&c, &[], ts("2025-01-01T00:07:00Z"));
        assert_eq!(p.create, None, "00:05 is more than 60 s ago");
        let p = plan(&c, &[], ts("2025-01-01T00:05:30Z"));
        assert_eq!(p.create, Some(ts("2025-01-01T00:05:00Z")));
    }

    #[test]
    fn history_limits_delete_the_oldest_finished_jobs() {
        let c = cj(json!({}));
        let s1 = job("s1", Some("Complete"), "2025-01-01T00:05:00Z");
        let s2 = job("s2", Some("Complete"), "2025-01-01T00:10:00Z");
        let s3 = job("s3", Some("Complete"), "2025-01-01T00:15:00Z");
        let f1 = job("f1", Some("Failed"), "2025-01-01T00:01:00Z");
        let f2 = job("f2", Some("Failed"), "2025-01-01T00:02:00Z");
        let p = plan(&c, &[&s3, &f2, &s1, &f1, &s2], ts("2025-01-01T00:16:00Z"));
        assert_eq!(p.delete, ["s1", "f1"]);
        assert_eq!(p.last_successful, Some(ts("2025-01-01T00:15:00Z")));
        assert!(p.active.is_empty());
    }

    #[test]
    fn bad_schedules_and_zones_only_warn() {
        let c = cj(json!({"schedule": "not a schedule"}));
        let p = plan(&c, &[], ts("2025-01-01T01:00:00Z"));
        assert_eq!(
            (p.create, p.events[0].reason),
            (None, "UnparseableSchedule")
        );
        let c = cj(json!({"timeZone": "Nowhere/Land"}));
        assert_eq!(
            plan(&c, &[], ts("2025-01-01T01:00:00Z")).events[0].reason,
            "UnknownTimeZone"
        );
    }
}
