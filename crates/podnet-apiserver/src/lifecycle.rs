//! Deletion as a cluster's controller manager carries it out, run inside the
//! server: namespace termination (contents deleted, pods gracefully through
//! their nodes, the namespace removed once empty) and the garbage
//! collector's propagation policies (Orphan, Foreground, Background).
//!
//! Every step is driven by the store's state alone (deletionTimestamp,
//! finalizers, ownerReferences), so a restarted server picks up where it
//! stopped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::api::{Api, ApiError};
use crate::kinds::FieldError;
use crate::resources::{self, Resource};
use crate::store::{Change, Event};

/// The finalizer that keeps an owner deleted with `propagationPolicy: Orphan`
/// until its dependents have lost their ownerReferences.
pub const ORPHAN: &str = "orphan";
/// The finalizer that keeps an owner deleted with `propagationPolicy:
/// Foreground` until its blocking dependents are gone.
pub const FOREGROUND: &str = "foregroundDeletion";
/// The namespace finalizer the namespace controller removes once the
/// namespace is empty.
pub const NAMESPACE_FINALIZER: &str = "kubernetes";
/// Namespaces that may never be deleted.
pub const PROTECTED_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// How the dependents of a deleted object are treated (DeleteOptions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// Dependents lose their ownerReference and stay.
    Orphan,
    /// The owner stays (`foregroundDeletion`) until its blocking dependents are gone.
    Foreground,
    /// The owner goes at once; the garbage collector deletes the dependents after.
    Background,
}

impl Propagation {
    /// Reads `propagationPolicy` (and the legacy `orphanDependents`) from
    /// DeleteOptions, refusing what kube-apiserver refuses (422).
    pub fn of(opts: &Value) -> Result<Propagation, ApiError> {
        let invalid = |e: FieldError| ApiError::invalid("DeleteOptions", "meta.k8s.io", "", &[e]);
        let orphan = opts["orphanDependents"].as_bool();
        let policy = match opts["propagationPolicy"].as_str() {
            None | Some("") => None,
            Some("Orphan") => Some(Propagation::Orphan),
            Some("Foreground") => Some(Propagation::Foreground),
            Some("Background") => Some(Propagation::Background),
            Some(other) => {
                return Err(invalid(FieldError {
                    reason: "FieldValueNotSupported",
                    field: "propagationPolicy".into(),
                    message: format!(
                        "Unsupported value: \"{other}\": supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
                    ),
                }));
            }
        };
        match (orphan, policy) {
            (Some(_), Some(p)) => Err(invalid(FieldError {
                reason: "FieldValueInvalid",
                field: "propagationPolicy".into(),
                message: format!(
                    "Invalid value: \"{p:?}\": orphanDependents and deletionPropagation cannot be both set"
                ),
            })),
            (Some(true), None) => Ok(Propagation::Orphan),
            (_, Some(p)) => Ok(p),
            _ => Ok(Propagation::Background),
        }
    }

    /// The finalizer this policy puts on the owner, if any.
    pub fn finalizer(self) -> Option<&'static str> {
        match self {
            Propagation::Orphan => Some(ORPHAN),
            Propagation::Foreground => Some(FOREGROUND),
            Propagation::Background => None,
        }
    }
}

/// kube-apiserver's 403 for deleting one of the namespaces a cluster needs.
pub fn protected_namespace(name: &str) -> Option<ApiError> {
    PROTECTED_NAMESPACES.contains(&name).then(|| {
        let mut e = ApiError::new(
            403,
            "Forbidden",
            format!("namespaces \"{name}\" is forbidden: this namespace may not be deleted"),
        );
        e.details = Some(json!({"name": name, "kind": "namespaces"}));
        e
    })
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn name_of(v: &Value) -> &str {
    v["metadata"]["name"].as_str().unwrap_or("")
}

fn finalizers(v: &Value) -> Vec<String> {
    v["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect()
}

fn terminating(v: &Value) -> bool {
    v["metadata"]["deletionTimestamp"].is_string()
}

/// The resources that hold stored objects in a namespace, each store once
/// (events.k8s.io Events live with core Events).
fn namespaced_stores() -> impl Iterator<Item = &'static Resource> {
    let mut seen = std::collections::HashSet::new();
    resources::RESOURCES
        .iter()
        .filter(|r| r.namespaced && r.verbs.contains(&"get"))
        .filter(move |r| seen.insert(r.id()))
}

/// The resource an ownerReference points at.
fn owner_resource(r: &Value) -> Option<&'static Resource> {
    let av = r["apiVersion"].as_str()?;
    let group = av.rsplit_once('/').map_or("", |(g, _)| g);
    resources::by_kind(group, r["kind"].as_str()?)
}

impl Api {
    /// The objects in `ns` whose ownerReferences name `uid`, with whether
    /// that reference blocks the owner's foreground deletion.
    fn dependents(&self, ns: &str, uid: &Value) -> Vec<(&'static Resource, String, bool)> {
        let mut out = Vec::new();
        if ns.is_empty() || uid.is_null() {
            return out;
        }
        for res in namespaced_stores() {
            let (items, _) = self.store.list(&res.id(), Some(ns));
            for o in items {
                let refs = o.value["metadata"]["ownerReferences"].as_array();
                if let Some(r) = refs.into_iter().flatten().find(|r| r["uid"] == *uid) {
                    out.push((
                        res,
                        name_of(&o.value).to_string(),
                        r["blockOwnerDeletion"] == json!(true),
                    ));
                }
            }
        }
        out
    }

    /// Carries an owner's `orphan` and `foregroundDeletion` finalizers out,
    /// as the garbage collector does: orphaned dependents lose their
    /// ownerReference; in the foreground, dependents are deleted and the
    /// owner goes once none that blocks it is left.
    pub async fn sync_owner(&self, res: &'static Resource, ns: &str, name: &str) {
        let Some(owner) = self.store.get(&res.id(), ns, name) else {
            return;
        };
        let v = &owner.value;
        if !terminating(v) {
            return;
        }
        let uid = v["metadata"]["uid"].clone();
        let fins = finalizers(v);
        let mut done: Vec<&str> = Vec::new();
        if fins.iter().any(|f| f == ORPHAN) {
            for (dres, dname, _) in self.dependents(ns, &uid) {
                let uid = uid.clone();
                let r = self
                    .store
                    .mutate(
                        &dres.id(),
                        ns,
                        &dname,
                        false,
                        |cur, _| -> Result<Change, ApiError> {
                            let Some(cur) = cur else {
                                return Ok(Change::Keep);
                            };
                            let mut d = cur.value.clone();
                            let Some(refs) = d["metadata"]["ownerReferences"].as_array_mut() else {
                                return Ok(Change::Keep);
                            };
                            refs.retain(|r| r["uid"] != uid);
                            if refs.is_empty()
                                && let Some(m) = d["metadata"].as_object_mut()
                            {
                                m.remove("ownerReferences");
                            }
                            Ok(Change::Put(d))
                        },
                    )
                    .await;
                if let Err(e) = r {
                    tracing::warn!(namespace = ns, name = dname, error = %e.message, "orphaning a dependent failed");
                    return;
                }
            }
            done.push(ORPHAN);
        }
        if fins.iter().any(|f| f == FOREGROUND) {
            let mut blocked = false;
            for (dres, dname, blocks) in self.dependents(ns, &uid) {
                blocked |= blocks;
                let Some(d) = self.store.get(&dres.id(), ns, &dname) else {
                    continue;
                };
                if terminating(&d.value) {
                    continue;
                }
                let policy = if blocks { "Foreground" } else { "Background" };
                match self
                    .delete_one(
                        dres,
                        ns,
                        &dname,
                        &json!({"propagationPolicy": policy}),
                        false,
                    )
                    .await
                {
                    Ok((Some(o), _)) if blocks => {
                        let f = finalizers(&o.value);
                        if f.iter().any(|f| f == FOREGROUND) {
                            Box::pin(self.sync_owner(dres, ns, &dname)).await;
                        }
                    }
                    Ok(_) => {}
                    Err(e) if e.code == 404 => {}
                    Err(e) => {
                        tracing::warn!(namespace = ns, name = dname, error = %e.message, "deleting a dependent failed");
                    }
                }
            }
            // Deleting may have removed them all at once.
            let still = self.dependents(ns, &uid).into_iter().any(|(_, _, b)| b);
            if !(blocked && still) {
                done.push(FOREGROUND);
            }
        }
        if done.is_empty() {
            return;
        }
        let r = self
            .store
            .mutate(
                &res.id(),
                ns,
                name,
                false,
                |cur, _| -> Result<Change, ApiError> {
                    let Some(cur) = cur else {
                        return Ok(Change::Keep);
                    };
                    if cur.value["metadata"]["uid"] != uid {
                        return Ok(Change::Keep);
                    }
                    let mut o = cur.value.clone();
                    let left: Vec<String> = finalizers(&o)
                        .into_iter()
                        .filter(|f| !done.contains(&f.as_str()))
                        .collect();
                    if left.is_empty() && !(res.kind == "Pod" && pod_waits_for_node(&o)) {
                        return Ok(Change::Delete);
                    }
                    o["metadata"]["finalizers"] = json!(left);
                    Ok(Change::Put(o))
                },
            )
            .await;
        if let Err(e) = r {
            tracing::warn!(namespace = ns, name, error = %e.message, "finishing a propagated deletion failed");
        }
    }

    /// After an object is gone: its owners in foreground deletion may now
    /// go, and so may its namespace if it is terminating.
    pub(crate) async fn after_delete(&self, ev: &Event) {
        let ns = ev.namespace().to_string();
        for r in ev.obj.value["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let Some(ores) = owner_resource(r) else {
                continue;
            };
            let oname = r["name"].as_str().unwrap_or("");
            let ons = if ores.namespaced { ns.as_str() } else { "" };
            if let Some(o) = self.store.get(&ores.id(), ons, oname)
                && o.value["metadata"]["uid"] == r["uid"]
                && finalizers(&o.value).iter().any(|f| f == FOREGROUND)
            {
                self.sync_owner(ores, ons, oname).await;
            }
        }
        if !ns.is_empty()
            && self
                .store
                .get("namespaces", "", &ns)
                .is_some_and(|n| terminating(&n.value))
        {
            self.sync_namespace(&ns).await;
        }
    }

    /// At start: carries on every propagated deletion a crash interrupted.
    pub(crate) async fn resume_deletions(&self) {
        for res in namespaced_stores() {
            let (items, _) = self.store.list(&res.id(), None);
            for o in items {
                let v = &o.value;
                if terminating(v) && finalizers(v).iter().any(|f| f == ORPHAN || f == FOREGROUND) {
                    let ns = v["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or("")
                        .to_string();
                    self.sync_owner(res, &ns, name_of(v)).await;
                }
            }
        }
    }

    /// One pass of the namespace controller over a terminating namespace:
    /// once its deletion delay has passed, deletes what it holds (pods
    /// gracefully, so their nodes stop them), records what remains in the
    /// namespace's conditions, and removes the namespace once it is empty
    /// and its finalizers are done.
    pub async fn sync_namespace(&self, ns: &str) {
        let Some(n) = self.store.get("namespaces", "", ns) else {
            return;
        };
        let Some(since) = n.value["metadata"]["deletionTimestamp"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        else {
            return;
        };
        // deletionTimestamp has whole seconds: the delay counts from the next one.
        let due = since.as_second() + 1 + self.cfg.namespace_deletion_delay.as_secs() as i64;
        if jiff::Timestamp::now().as_second() < due {
            return;
        }
        let mut remaining: BTreeMap<String, usize> = BTreeMap::new();
        let mut by_finalizer: BTreeMap<String, usize> = BTreeMap::new();
        let mut failures: Vec<String> = Vec::new();
        for res in namespaced_stores() {
            let (items, _) = self.store.list(&res.id(), Some(ns));
            for o in &items {
                if terminating(&o.value) {
                    continue;
                }
                let name = name_of(&o.value);
                match self
                    .delete_one(
                        res,
                        ns,
                        name,
                        &json!({"propagationPolicy": "Background"}),
                        false,
                    )
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.code == 404 => {}
                    Err(e) => failures.push(format!("{}: {}", res.plural, e.message)),
                }
            }
            let (left, _) = self.store.list(&res.id(), Some(ns));
            if !left.is_empty() {
                let key = format!("{}.{}", res.plural, res.group);
                *remaining.entry(key).or_default() += left.len();
                for o in &left {
                    for f in finalizers(&o.value) {
                        *by_finalizer.entry(f).or_default() += 1;
                    }
                }
            }
        }
        let conditions = namespace_conditions(&remaining, &by_finalizer, &failures);
        let empty = remaining.is_empty();
        let r = self
            .store
            .mutate(
                "namespaces",
                "",
                ns,
                false,
                |cur, _| -> Result<Change, ApiError> {
                    let Some(cur) = cur else {
                        return Ok(Change::Keep);
                    };
                    if !terminating(&cur.value) {
                        return Ok(Change::Keep);
                    }
                    let mut v = cur.value.clone();
                    merge_conditions(&mut v["status"], conditions);
                    if empty {
                        let spec_fins: Vec<Value> = v["spec"]["finalizers"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter(|f| f.as_str() != Some(NAMESPACE_FINALIZER))
                            .cloned()
                            .collect();
                        if spec_fins.is_empty() && finalizers(&v).is_empty() {
                            return Ok(Change::Delete);
                        }
                        v["spec"]["finalizers"] = Value::Array(spec_fins);
                    }
                    Ok(if v == cur.value {
                        Change::Keep
                    } else {
                        Change::Put(v)
                    })
                },
            )
            .await;
        match r {
            Ok((None, Some(_))) => tracing::info!(namespace = ns, "namespace deleted"),
            Ok(_) => {}
            Err(e) => tracing::warn!(namespace = ns, error = %e.message, "namespace sync failed"),
        }
    }

    /// Runs the namespace controller over `ns` when its deletion delay has
    /// passed (the caller just marked it terminating).
    pub(crate) fn schedule_namespace(self: &Arc<Self>, ns: &str) {
        let me = self.clone();
        let ns = ns.to_string();
        let delay = self.cfg.namespace_deletion_delay + Duration::from_secs(1);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            me.sync_namespace(&ns).await;
        });
    }

    /// Every terminating namespace gets a pass (the tick's share of the
    /// namespace controller: delays that ran out, and a restart).
    pub(crate) async fn sync_terminating_namespaces(&self) {
        let (namespaces, _) = self.store.list("namespaces", None);
        for n in namespaces {
            if terminating(&n.value) {
                self.sync_namespace(name_of(&n.value)).await;
            }
        }
    }
}

/// A pod bound to a node and still running waits for the node to confirm.
fn pod_waits_for_node(v: &Value) -> bool {
    v["spec"]["nodeName"]
        .as_str()
        .is_some_and(|n| !n.is_empty())
        && !matches!(v["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
}

/// The namespace controller's conditions, worded as upstream's.
fn namespace_conditions(
    remaining: &BTreeMap<String, usize>,
    by_finalizer: &BTreeMap<String, usize>,
    failures: &[String],
) -> Vec<(&'static str, bool, &'static str, String)> {
    let mut out = vec![
        (
            "NamespaceDeletionDiscoveryFailure",
            false,
            "ResourcesDiscovered",
            "All resources successfully discovered".to_string(),
        ),
        (
            "NamespaceDeletionGroupVersionParsingFailure",
            false,
            "ParsedGroupVersions",
            "All legacy kube types successfully parsed".to_string(),
        ),
    ];
    out.push(if failures.is_empty() {
        (
            "NamespaceDeletionContentFailure",
            false,
            "ContentDeleted",
            "All content successfully deleted, may be waiting on finalization".to_string(),
        )
    } else {
        let mut f = failures.to_vec();
        f.sort();
        (
            "NamespaceDeletionContentFailure",
            true,
            "ContentDeletionFailed",
            format!(
                "Failed to delete all resource types, {} remaining: {}",
                f.len(),
                f.join(", ")
            ),
        )
    });
    out.push(if remaining.is_empty() {
        (
            "NamespaceContentRemaining",
            false,
            "ContentRemoved",
            "All content successfully removed".to_string(),
        )
    } else {
        let parts: Vec<String> = remaining
            .iter()
            .map(|(r, n)| format!("{r} has {n} resource instances"))
            .collect();
        (
            "NamespaceContentRemaining",
            true,
            "SomeResourcesRemain",
            format!("Some resources are remaining: {}", parts.join(", ")),
        )
    });
    out.push(if by_finalizer.is_empty() {
        (
            "NamespaceFinalizersRemaining",
            false,
            "ContentHasNoFinalizers",
            "All content-preserving finalizers finished".to_string(),
        )
    } else {
        let parts: Vec<String> = by_finalizer
            .iter()
            .map(|(f, n)| format!("{f} in {n} resource instances"))
            .collect();
        (
            "NamespaceFinalizersRemaining",
            true,
            "SomeFinalizerRemain",
            format!("Some finalizers are remaining: {}", parts.join(", ")),
        )
    });
    out
}

/// Sets the conditions on a namespace status, keeping a condition's
/// lastTransitionTime while its status does not change.
fn merge_conditions(status: &mut Value, new: Vec<(&'static str, bool, &'static str, String)>) {
    let old = status["conditions"].as_array().cloned().unwrap_or_default();
    let mut out: Vec<Value> = Vec::new();
    for (ty, on, reason, message) in new {
        let st = if on { "True" } else { "False" };
        let prev = old.iter().find(|c| c["type"] == ty);
        let since = match prev {
            Some(p) if p["status"] == st => p["lastTransitionTime"].clone(),
            _ => json!(now_rfc3339()),
        };
        out.push(json!({"type": ty, "status": st, "lastTransitionTime": since, "reason": reason, "message": message}));
    }
    for c in old {
        if !out.iter().any(|o| o["type"] == c["type"]) {
            out.push(c);
        }
    }
    status["conditions"] = Value::Array(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn propagation_options() {
        assert_eq!(
            Propagation::of(&json!({})).unwrap(),
            Propagation::Background
        );
        assert_eq!(
            Propagation::of(&json!({"orphanDependents": true})).unwrap(),
            Propagation::Orphan
        );
        assert_eq!(
            Propagation::of(&json!({"propagationPolicy": "Foreground"})).unwrap(),
            Propagation::Foreground
        );
        let e = Propagation::of(&json!({"propagationPolicy": "Sideways"})).unwrap_err();
        assert_eq!(e.code, 422);
        assert!(
            e.message
                .contains("propagationPolicy: Unsupported value: \"Sideways\"")
        );
        let e = Propagation::of(&json!({"propagationPolicy": "Orphan", "orphanDependents": false}))
            .unwrap_err();
        assert!(e.message.contains("cannot be both set"), "{}", e.message);
    }

    #[test]
    fn remaining_content_is_worded_as_upstream() {
        let mut rem = BTreeMap::new();
        rem.insert("pods.".to_string(), 2);
        let c = namespace_conditions(&rem, &BTreeMap::new(), &[]);
        assert_eq!(
            c[3].3,
            "Some resources are remaining: pods. has 2 resource instances"
        );
        let mut st = json!({"phase": "Terminating"});
        merge_conditions(&mut st, c);
        assert_eq!(st["conditions"].as_array().unwrap().len(), 5);
        assert_eq!(st["conditions"][3]["status"], "True");
    }
}
