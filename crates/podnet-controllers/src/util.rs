//! Small pure helpers shared by the controllers: selectors, pod readiness,
//! owner references, template hashing. No I/O.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodTemplateSpec, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference, Time};
use kube::Resource;

/// The labels of an object, or an empty map.
pub fn labels_of<K: Resource>(o: &K) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    o.meta().labels.as_ref().unwrap_or(&EMPTY)
}

/// Whether `labels` carries every pair of a map selector (a Service's
/// selector, a pod's nodeSelector). An empty selector matches everything.
pub fn map_selector_matches(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Whether `labels` match a metav1 LabelSelector (matchLabels and
/// matchExpressions). An empty selector matches everything, as in the API.
pub fn label_selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    if let Some(ml) = &sel.match_labels
        && !map_selector_matches(ml, labels)
    {
        return false;
    }
    sel.match_expressions.iter().flatten().all(|e| {
        let have = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or(&[]);
        match e.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => have.is_none_or(|v| !values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        }
    })
}

/// Whether a pod has been marked for deletion.
pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// Whether a pod has finished for good (Succeeded or Failed).
pub fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Whether a pod counts towards its controller's replicas: not finished and
/// not being deleted (kube-controller-manager's `IsPodActive`).
pub fn is_active(pod: &Pod) -> bool {
    !is_terminating(pod) && !is_terminal(pod)
}

/// The pod's Ready condition, if it has one.
fn ready_condition(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// Whether the pod's Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    ready_condition(pod).is_some_and(|c| c.status == "True")
}

/// Whether the pod has been Ready for at least `min_ready_seconds` at `now`
/// (kube's "available"); with 0 it is the same as ready.
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: Time) -> bool {
    let Some(c) = ready_condition(pod).filter(|c| c.status == "True") else {
        return false;
    };
    if min_ready_seconds <= 0 {
        return true;
    }
    match &c.last_transition_time {
        Some(t) => t.0.as_second() + i64::from(min_ready_seconds) <= now.0.as_second(),
        None => false,
    }
}

/// Whether a node's Ready condition is True.
pub fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The owner reference marked `controller: true`, if any.
pub fn controller_of<K: Resource>(o: &K) -> Option<&OwnerReference> {
    o.meta()
        .owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// Whether `o` is controlled by the object with `uid`.
pub fn controlled_by<K: Resource>(o: &K, uid: &str) -> bool {
    controller_of(o).is_some_and(|r| r.uid == uid)
}

/// A controller owner reference to `owner` (blockOwnerDeletion set, as the
/// built-in controllers do).
pub fn owner_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Whether a toleration tolerates a taint (the API's `ToleratesTaint`).
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = t.effect.as_deref()
        && !e.is_empty()
        && e != taint.effect
    {
        return false;
    }
    let key = t.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        _ => false,
    }
}

/// The first taint with effect NoSchedule or NoExecute that none of the
/// tolerations tolerates (what the scheduler's TaintToleration filter looks at).
pub fn untolerated_taint<'a>(taints: &'a [Taint], tolerations: &[Toleration]) -> Option<&'a Taint> {
    taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .find(|taint| !tolerations.iter().any(|t| tolerates(t, taint)))
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&String>) -> bool {
    let values = r.values.as_deref().unwrap_or(&[]);
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Whether a node satisfies one node selector term (all its expressions and
/// fields; an empty term matches nothing, as in the API).
pub fn node_term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or(&[]);
    let fields = term.match_fields.as_deref().unwrap_or(&[]);
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = labels_of(node);
    let name = node.metadata.name.clone();
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key)))
        && fields
            .iter()
            .all(|r| r.key == "metadata.name" && requirement_matches(r, name.as_ref()))
}

/// Whether a pod's nodeSelector and required node affinity admit a node.
pub fn node_matches_pod(pod_spec: &k8s_openapi::api::core::v1::PodSpec, node: &Node) -> bool {
    if let Some(sel) = &pod_spec.node_selector
        && !map_selector_matches(sel, labels_of(node))
    {
        return false;
    }
    let required = pod_spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    match required {
        Some(r) => r
            .node_selector_terms
            .iter()
            .any(|t| node_term_matches(t, node)),
        None => true,
    }
}

const SAFE_CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// kube's `rand.SafeEncodeString`: maps each byte onto consonants and digits
/// so a hash cannot spell words or look like a number.
pub fn safe_encode(s: &str) -> String {
    s.bytes()
        .map(|b| SAFE_CHARS[usize::from(b) % SAFE_CHARS.len()] as char)
        .collect()
}

/// FNV-1a 32-bit, the hash kube-controller-manager uses for template hashes.
pub fn fnv32a(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in data {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The `pod-template-hash` of a template: FNV-32a over its canonical JSON
/// (the template without the hash label), plus the collision count, encoded
/// as kube-controller-manager encodes it (`7d9f8c6b5`-shaped).
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut t = template.clone();
    if let Some(l) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        l.remove("pod-template-hash");
    }
    // serde_json writes struct fields in declaration order and maps sorted:
    // the same template always gives the same bytes.
    let mut bytes = serde_json::to_vec(&t).unwrap_or_default();
    if let Some(c) = collision_count {
        bytes.extend_from_slice(&c.to_le_bytes());
    }
    safe_encode(&fnv32a(&bytes).to_string())
}

/// Whether two templates are the same once the hash label is ignored (how a
/// Deployment finds its current ReplicaSet).
pub fn same_template(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    let strip = |t: &PodTemplateSpec| {
        let mut t = t.clone();
        if let Some(m) = t.metadata.as_mut() {
            if let Some(l) = m.labels.as_mut() {
                l.remove("pod-template-hash");
                if l.is_empty() {
                    m.labels = None;
                }
            }
            m.creation_timestamp = None;
        }
        if t.metadata
            .as_ref()
            .is_some_and(|m| *m == Default::default())
        {
            t.metadata = None;
        }
        serde_json::to_value(&t).unwrap_or_default()
    };
    strip(a) == strip(b)
}

/// The current time as an API timestamp.
pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// `namespace/name` of an object, for logs and map keys.
pub fn key_of<K: Resource>(o: &K) -> String {
    format!(
        "{}/{}",
        o.meta().namespace.as_deref().unwrap_or(""),
        o.meta().name.as_deref().unwrap_or("")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        LabelSelectorRequirement, ObjectMeta as ObjectMetaForTest,
    };

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selectors() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "In".into(),
                values: Some(vec!["a".into(), "b".into()]),
            }]),
        };
        assert!(label_selector_matches(
            &sel,
            &labels(&[("app", "web"), ("tier", "b")])
        ));
        assert!(!label_selector_matches(
            &sel,
            &labels(&[("app", "web"), ("tier", "c")])
        ));
        assert!(!label_selector_matches(
            &sel,
            &labels(&[("app", "db"), ("tier", "a")])
        ));
        assert!(label_selector_matches(
            &LabelSelector::default(),
            &labels(&[])
        ));
    }

    #[test]
    fn tolerations() {
        let taint = Taint {
            key: "dedicated".into(),
            value: Some("gpu".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        };
        let exists = Toleration {
            key: Some("dedicated".into()),
            operator: Some("Exists".into()),
            ..Default::default()
        };
        let equal_wrong = Toleration {
            key: Some("dedicated".into()),
            value: Some("cpu".into()),
            ..Default::default()
        };
        let wrong_effect = Toleration {
            key: Some("dedicated".into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            ..Default::default()
        };
        assert!(tolerates(&exists, &taint));
        assert!(!tolerates(&equal_wrong, &taint));
        assert!(!tolerates(&wrong_effect, &taint));
        let all = Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        };
        assert!(tolerates(&all, &taint));
        let prefer = Taint {
            effect: "PreferNoSchedule".into(),
            ..taint.clone()
        };
        assert!(untolerated_taint(&[prefer], &[]).is_none());
        assert_eq!(
            untolerated_taint(std::slice::from_ref(&taint), &[equal_wrong]).map(|t| t.key.as_str()),
            Some("dedicated")
        );
    }

    #[test]
    fn hashes_look_like_kubes_and_ignore_the_hash_label() {
        assert_eq!(fnv32a(b""), 0x811c_9dc5);
        assert_eq!(fnv32a(b"a"), 0xe40c_292c);
        let t = PodTemplateSpec {
            metadata: Some(ObjectMetaForTest {
                labels: Some(labels(&[("app", "web")])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let h = template_hash(&t, None);
        assert!(h.chars().all(|c| SAFE_CHARS.contains(&(c as u8))), "{h}");
        assert!(!h.is_empty() && h.len() <= 10);
        let mut with_label = t.clone();
        with_label
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert("pod-template-hash".into(), h.clone());
        assert_eq!(template_hash(&with_label, None), h);
        assert!(same_template(&t, &with_label));
        assert_ne!(template_hash(&t, Some(1)), h);
        let mut other = t.clone();
        other
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert("v".into(), "2".into());
        assert!(!same_template(&t, &other));
    }
}
