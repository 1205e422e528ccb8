//! Per-kind behaviour: decoding checks (wrong types, unknown fields), defaults,
//! validation and immutable fields, with errors that name the field as
//! kube-apiserver's do.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

/// One invalid field: the `causes` of a 422 Status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// "FieldValueRequired", "FieldValueInvalid", "FieldValueForbidden", ...
    pub reason: &'static str,
    /// The field path ("spec.containers[0].name").
    pub field: String,
    /// What is wrong, as kube-apiserver words it ("Required value", ...).
    pub message: String,
}

impl FieldError {
    fn required(field: impl Into<String>) -> FieldError {
        FieldError {
            reason: "FieldValueRequired",
            field: field.into(),
            message: "Required value".into(),
        }
    }
    fn invalid(field: impl Into<String>, value: &Value, detail: &str) -> FieldError {
        let v = match value {
            Value::String(s) => format!("\"{s}\""),
            other => other.to_string(),
        };
        FieldError {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {v}: {detail}"),
        }
    }
    fn forbidden(field: impl Into<String>, detail: &str) -> FieldError {
        FieldError {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("Forbidden: {detail}"),
        }
    }
    fn duplicate(field: impl Into<String>, value: &Value) -> FieldError {
        FieldError {
            reason: "FieldValueDuplicate",
            field: field.into(),
            message: format!("Duplicate value: {value}"),
        }
    }
    /// "field: message", as kubectl shows each cause.
    pub fn text(&self) -> String {
        format!("{}: {}", self.field, self.message)
    }
}

fn roundtrip<T: DeserializeOwned + Serialize>(v: &Value) -> Result<Value, String> {
    let t: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(&t).map_err(|e| e.to_string())
}

/// Decodes `v` as its typed kind and back: Err on a wrong type, Ok with the
/// typed view (which has no unknown fields) otherwise.
pub fn typed_view(kind: &str, v: &Value) -> Result<Value, String> {
    use k8s_openapi::api::batch::v1 as batch;
    use k8s_openapi::api::{
        apps::v1 as apps, coordination::v1 as coord, core::v1 as core, discovery::v1 as disc,
        networking::v1 as net, rbac::v1 as rbac,
    };
    let v = &quantities_as_strings(v.clone());
    match kind {
        "Namespace" => roundtrip::<core::Namespace>(v),
        "Node" => roundtrip::<core::Node>(v),
        "Pod" => roundtrip::<core::Pod>(v),
        "Service" => roundtrip::<core::Service>(v),
        "Endpoints" => roundtrip::<core::Endpoints>(v),
        "Event" => roundtrip::<core::Event>(v),
        "events.k8s.io/Event" => roundtrip::<k8s_openapi::api::events::v1::Event>(v),
        "ConfigMap" => roundtrip::<core::ConfigMap>(v),
        "Secret" => roundtrip::<core::Secret>(v),
        "ServiceAccount" => roundtrip::<core::ServiceAccount>(v),
        "EndpointSlice" => roundtrip::<disc::EndpointSlice>(v),
        "NetworkPolicy" => roundtrip::<net::NetworkPolicy>(v),
        "Deployment" => roundtrip::<apps::Deployment>(v),
        "ReplicaSet" => roundtrip::<apps::ReplicaSet>(v),
        "DaemonSet" => roundtrip::<apps::DaemonSet>(v),
        "StatefulSet" => roundtrip::<apps::StatefulSet>(v),
        "Job" => roundtrip::<batch::Job>(v),
        "CronJob" => roundtrip::<batch::CronJob>(v),
        "Lease" => roundtrip::<coord::Lease>(v),
        "Role" => roundtrip::<rbac::Role>(&rbac_required(v)),
        "ClusterRole" => roundtrip::<rbac::ClusterRole>(&rbac_required(v)),
        "RoleBinding" => roundtrip::<rbac::RoleBinding>(&rbac_required(v)),
        "ClusterRoleBinding" => roundtrip::<rbac::ClusterRoleBinding>(&rbac_required(v)),
        "Binding" => roundtrip::<core::Binding>(v),
        "Scale" => roundtrip::<k8s_openapi::api::autoscaling::v1::Scale>(v),
        "DeleteOptions" => {
            roundtrip::<k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions>(v)
        }
        _ => Ok(v.clone()),
    }
}

/// The RBAC types' required fields, filled with zero values when missing so
/// that their absence is a 422 naming the field (as kube-apiserver, whose
/// decoder takes zero values, answers), not a decoding error.
fn rbac_required(v: &Value) -> Value {
    let mut v = v.clone();
    if v.get("roleRef")
        .is_some_and(|r| !r.is_object() && !r.is_null())
    {
        return v;
    }
    if v["kind"] == "RoleBinding" || v["kind"] == "ClusterRoleBinding" {
        if v["roleRef"].is_null() {
            v["roleRef"] = json!({});
        }
        for k in ["apiGroup", "kind", "name"] {
            if v["roleRef"][k].is_null() {
                v["roleRef"][k] = json!("");
            }
        }
    }
    if let Some(subjects) = v.get_mut("subjects").and_then(Value::as_array_mut) {
        for s in subjects.iter_mut().filter(|s| s.is_object()) {
            for k in ["kind", "name"] {
                if s[k].is_null() {
                    s[k] = json!("");
                }
            }
        }
    }
    if let Some(rules) = v.get_mut("rules").and_then(Value::as_array_mut) {
        for r in rules.iter_mut().filter(|r| r.is_object()) {
            if r["verbs"].is_null() {
                r["verbs"] = json!([]);
            }
        }
    }
    v
}

/// Quantities may be written as numbers (`cpu: 1`); kube-apiserver stores
/// them as strings, and so do we.
pub fn quantities_as_strings(mut v: Value) -> Value {
    fn walk(v: &mut Value, quantity_map: bool) {
        match v {
            Value::Object(m) => {
                for (k, x) in m.iter_mut() {
                    if quantity_map && x.is_number() {
                        *x = Value::String(x.to_string());
                    } else {
                        let q = matches!(
                            k.as_str(),
                            "limits" | "requests" | "capacity" | "allocatable" | "hard" | "used"
                        );
                        walk(x, q);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, false)),
            _ => {}
        }
    }
    walk(&mut v, false);
    v
}

/// Paths of the fields of `input` that the typed view does not know.
pub fn unknown_fields(input: &Value, typed: &Value) -> Vec<String> {
    fn walk(i: &Value, t: &Value, path: &str, out: &mut Vec<String>) {
        match (i, t) {
            (Value::Object(im), Value::Object(tm)) => {
                for (k, iv) in im {
                    if iv.is_null() {
                        continue;
                    }
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    match tm.get(k) {
                        None => out.push(p),
                        Some(tv) => walk(iv, tv, &p, out),
                    }
                }
            }
            (Value::Array(ia), Value::Array(ta)) => {
                for (n, (iv, tv)) in ia.iter().zip(ta).enumerate() {
                    walk(iv, tv, &format!("{path}[{n}]"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(input, typed, "", &mut out);
    out
}

/// Removes the fields at `paths` (as `unknown_fields` names them).
pub fn prune(v: &mut Value, paths: &[String]) {
    enum Seg {
        Key(String),
        Idx(usize),
    }
    fn remove(v: &mut Value, segs: &[Seg]) {
        match segs {
            [Seg::Key(k)] => {
                if let Some(m) = v.as_object_mut() {
                    m.remove(k);
                }
            }
            [Seg::Key(k), rest @ ..] => {
                if let Some(next) = v.get_mut(k.as_str()) {
                    remove(next, rest);
                }
            }
            [Seg::Idx(i), rest @ ..] => {
                if let Some(next) = v.get_mut(*i) {
                    remove(next, rest);
                }
            }
            [] => {}
        }
    }
    for p in paths {
        let mut segs = Vec::new();
        for part in p.split('.') {
            let mut it = part.split('[');
            if let Some(name) = it.next()
                && !name.is_empty()
            {
                segs.push(Seg::Key(name.to_string()));
            }
            for idx in it {
                if let Ok(i) = idx.trim_end_matches(']').parse() {
                    segs.push(Seg::Idx(i));
                }
            }
        }
        remove(v, &segs);
    }
}

/// DNS-1123 label: lower-case alphanumerics and '-', at most 63.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// DNS-1123 subdomain: labels joined by '.', at most 253.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Checks a name for a kind, with kube-apiserver's message.
pub fn validate_name(kind: &str, name: &str) -> Option<String> {
    match kind {
        "Namespace" | "Service" => {
            let ok = is_dns_label(name) && (kind != "Service" || name.starts_with(|c: char| c.is_ascii_lowercase()));
            if ok {
                None
            } else if kind == "Service" {
                Some("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')".into())
            } else {
                Some("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')".into())
            }
        }
        "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding" => rbac_name(name),
        _ if is_dns_subdomain(name) => None,
        _ => Some("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".into()),
    }
}

/// RBAC names are path segments (`system:node` is one).
fn rbac_name(name: &str) -> Option<String> {
    if name == "." || name == ".." {
        return Some(format!("may not be '{name}'"));
    }
    for bad in ["/", "%"] {
        if name.contains(bad) {
            return Some(format!("may not contain '{bad}'"));
        }
    }
    None
}

fn not_supported(field: impl Into<String>, got: &Value, supported: &[&str]) -> FieldError {
    let list: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
    let got = match got {
        Value::String(s) => format!("\"{s}\""),
        Value::Null => "\"\"".to_string(),
        o => o.to_string(),
    };
    FieldError {
        reason: "FieldValueNotSupported",
        field: field.into(),
        message: format!(
            "Unsupported value: {got}: supported values: {}",
            list.join(", ")
        ),
    }
}

fn required_because(field: impl Into<String>, why: &str) -> FieldError {
    FieldError {
        reason: "FieldValueRequired",
        field: field.into(),
        message: format!("Required value: {why}"),
    }
}

fn check_rules(obj: &Value, namespaced: bool, errs: &mut Vec<FieldError>) {
    let empty = |v: &Value| v.as_array().is_none_or(Vec::is_empty);
    for (i, r) in obj["rules"].as_array().into_iter().flatten().enumerate() {
        let p = format!("rules[{i}]");
        if empty(&r["verbs"]) {
            errs.push(required_because(
                format!("{p}.verbs"),
                "verbs must contain at least one value",
            ));
        }
        if !empty(&r["nonResourceURLs"]) {
            if namespaced {
                errs.push(FieldError::invalid(
                    format!("{p}.nonResourceURLs"),
                    &r["nonResourceURLs"],
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if !empty(&r["apiGroups"]) || !empty(&r["resources"]) || !empty(&r["resourceNames"]) {
                errs.push(FieldError::invalid(
                    format!("{p}.nonResourceURLs"),
                    &r["nonResourceURLs"],
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            continue;
        }
        if empty(&r["apiGroups"]) {
            errs.push(required_because(
                format!("{p}.apiGroups"),
                "resource rules must supply at least one api group",
            ));
        }
        if empty(&r["resources"]) {
            errs.push(required_because(
                format!("{p}.resources"),
                "resource rules must supply at least one resource",
            ));
        }
    }
}

fn check_binding(kind: &str, obj: &Value, errs: &mut Vec<FieldError>) {
    let rr = &obj["roleRef"];
    if rr["apiGroup"] != crate::resources::RBAC_GROUP {
        errs.push(not_supported(
            "roleRef.apiGroup",
            &rr["apiGroup"],
            &[crate::resources::RBAC_GROUP],
        ));
    }
    let kinds: &[&str] = if kind == "RoleBinding" {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    if !rr["kind"].as_str().is_some_and(|k| kinds.contains(&k)) {
        errs.push(not_supported("roleRef.kind", &rr["kind"], kinds));
    }
    match rr["name"].as_str() {
        None | Some("") => errs.push(FieldError::required("roleRef.name")),
        Some(n) => {
            if let Some(msg) = rbac_name(n) {
                errs.push(FieldError::invalid("roleRef.name", &rr["name"], &msg));
            }
        }
    }
    for (i, s) in obj["subjects"].as_array().into_iter().flatten().enumerate() {
        let p = format!("subjects[{i}]");
        let name = s["name"].as_str().unwrap_or("");
        if name.is_empty() {
            errs.push(FieldError::required(format!("{p}.name")));
        }
        let group = s["apiGroup"].as_str().unwrap_or("");
        match s["kind"].as_str().unwrap_or("") {
            "ServiceAccount" => {
                if !name.is_empty() && !is_dns_subdomain(name) {
                    errs.push(FieldError::invalid(format!("{p}.name"), &s["name"], "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"));
                }
                if !group.is_empty() {
                    errs.push(not_supported(
                        format!("{p}.apiGroup"),
                        &s["apiGroup"],
                        &[""],
                    ));
                }
                if kind == "ClusterRoleBinding" && s["namespace"].as_str().is_none_or(str::is_empty)
                {
                    errs.push(FieldError::required(format!("{p}.namespace")));
                }
            }
            "User" | "Group" => {
                if group != crate::resources::RBAC_GROUP {
                    errs.push(not_supported(
                        format!("{p}.apiGroup"),
                        &s["apiGroup"],
                        &[crate::resources::RBAC_GROUP],
                    ));
                }
            }
            _ => errs.push(not_supported(
                format!("{p}.kind"),
                &s["kind"],
                &["ServiceAccount", "User", "Group"],
            )),
        }
    }
}

/// Go's `%#v` of an rbac.RoleRef, as kube-apiserver prints it.
fn role_ref_text(r: &Value) -> String {
    let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
    format!(
        "rbac.RoleRef{{APIGroup:{:?}, Kind:{:?}, Name:{:?}}}",
        s("apiGroup"),
        s("kind"),
        s("name")
    )
}

fn label_value_ok(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

fn label_key_ok(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    prefix.is_none_or(is_dns_subdomain) && !name.is_empty() && label_value_ok(name)
}

fn check_labels(labels: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let Some(m) = labels.as_object() else { return };
    for (k, v) in m {
        if !label_key_ok(k) {
            errs.push(FieldError::invalid(path, &Value::String(k.clone()), "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
        }
        match v.as_str() {
            Some(s) if label_value_ok(s) => {}
            _ => errs.push(FieldError::invalid(
                path.to_string(),
                v,
                "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            )),
        }
    }
}

fn check_port(v: &Value, path: &str, errs: &mut Vec<FieldError>) {
    match v.as_i64() {
        Some(p) if (1..=65535).contains(&p) => {}
        Some(_) => errs.push(FieldError::invalid(
            path,
            v,
            "must be between 1 and 65535, inclusive",
        )),
        None => errs.push(FieldError::required(path)),
    }
}

fn check_pod_spec(spec: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let containers = spec["containers"].as_array();
    match containers {
        None => errs.push(FieldError::required(format!("{path}.containers"))),
        Some(cs) if cs.is_empty() => errs.push(FieldError::required(format!("{path}.containers"))),
        Some(cs) => {
            let mut names = std::collections::HashSet::new();
            for (i, c) in cs.iter().enumerate() {
                let cp = format!("{path}.containers[{i}]");
                match c["name"].as_str() {
                    None | Some("") => errs.push(FieldError::required(format!("{cp}.name"))),
                    Some(n) if !is_dns_label(n) => errs.push(FieldError::invalid(format!("{cp}.name"), &c["name"], "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character")),
                    Some(n) => {
                        if !names.insert(n.to_string()) {
                            errs.push(FieldError::duplicate(format!("{cp}.name"), &c["name"]));
                        }
                    }
                }
                if c["image"].as_str().is_none_or(|s| s.trim().is_empty()) {
                    errs.push(FieldError::required(format!("{cp}.image")));
                }
                for (j, p) in c["ports"].as_array().into_iter().flatten().enumerate() {
                    check_port(
                        &p["containerPort"],
                        &format!("{cp}.ports[{j}].containerPort"),
                        errs,
                    );
                }
            }
        }
    }
    if let Some(rp) = spec["restartPolicy"].as_str()
        && !matches!(rp, "Always" | "OnFailure" | "Never")
    {
        errs.push(FieldError { reason: "FieldValueNotSupported", field: format!("{path}.restartPolicy"), message: format!("Unsupported value: \"{rp}\": supported values: \"Always\", \"OnFailure\", \"Never\"") });
    }
}

fn check_selector_matches(obj: &Value, errs: &mut Vec<FieldError>) {
    let sel = &obj["spec"]["selector"];
    if sel.is_null() || sel.as_object().is_some_and(|m| m.is_empty()) {
        errs.push(FieldError::required("spec.selector"));
        return;
    }
    let labels = &obj["spec"]["template"]["metadata"]["labels"];
    let empty = Map::new();
    let lm = labels.as_object().unwrap_or(&empty);
    let matches = crate::selector::label_selector_matches(sel, lm);
    if !matches {
        errs.push(FieldError::invalid(
            "spec.template.metadata.labels",
            labels,
            "`selector` does not match template `labels`",
        ));
    }
}

/// The label (and generated selector key) tying a Job's pods to it.
pub const JOB_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";

/// A Job's spec defaults: one pod to run once, six retries. (A CronJob's
/// job template keeps its gaps; the Job made from it is defaulted.)
fn default_job_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    if spec["completions"].is_null() && spec["parallelism"].is_null() {
        spec["completions"] = json!(1);
    }
    set_default(spec, "parallelism", json!(1));
    if spec["backoffLimitPerIndex"].is_null() {
        set_default(spec, "backoffLimit", json!(6));
    }
    set_default(spec, "completionMode", json!("NonIndexed"));
    set_default(spec, "suspend", json!(false));
    let policy = if spec["podFailurePolicy"].is_null() {
        "TerminatingOrFailed"
    } else {
        "Failed"
    };
    set_default(spec, "podReplacementPolicy", json!(policy));
}

fn nonnegative(v: &Value, path: &str, errs: &mut Vec<FieldError>) {
    if let Some(n) = v.as_i64()
        && n < 0
    {
        errs.push(FieldError::invalid(
            path,
            v,
            "must be greater than or equal to 0",
        ));
    }
}

fn check_statefulset(obj: &Value, errs: &mut Vec<FieldError>) {
    let spec = &obj["spec"];
    check_selector_matches(obj, errs);
    check_pod_spec(&spec["template"]["spec"], "spec.template.spec", errs);
    nonnegative(&spec["replicas"], "spec.replicas", errs);
    nonnegative(&spec["minReadySeconds"], "spec.minReadySeconds", errs);
    match spec["podManagementPolicy"].as_str() {
        Some("OrderedReady" | "Parallel") => {}
        _ => errs.push(not_supported(
            "spec.podManagementPolicy",
            &spec["podManagementPolicy"],
            &["OrderedReady", "Parallel"],
        )),
    }
    match spec["updateStrategy"]["type"].as_str() {
        Some("RollingUpdate") => nonnegative(
            &spec["updateStrategy"]["rollingUpdate"]["partition"],
            "spec.updateStrategy.rollingUpdate.partition",
            errs,
        ),
        Some("OnDelete") => {}
        _ => errs.push(not_supported(
            "spec.updateStrategy.type",
            &spec["updateStrategy"]["type"],
            &["OnDelete", "RollingUpdate"],
        )),
    }
    if spec["template"]["spec"]["restartPolicy"]
        .as_str()
        .is_some_and(|p| p != "Always")
    {
        errs.push(not_supported(
            "spec.template.spec.restartPolicy",
            &spec["template"]["spec"]["restartPolicy"],
            &["Always"],
        ));
    }
}

/// A Job's spec at `path` ("spec", or "spec.jobTemplate.spec" in a
/// CronJob); `is_job` says whether it has a selector to check.
fn check_job_spec(spec: &Value, path: &str, is_job: bool, errs: &mut Vec<FieldError>) {
    for k in [
        "parallelism",
        "completions",
        "backoffLimit",
        "ttlSecondsAfterFinished",
    ] {
        nonnegative(&spec[k], &format!("{path}.{k}"), errs);
    }
    if let Some(n) = spec["activeDeadlineSeconds"].as_i64()
        && n <= 0
    {
        errs.push(FieldError::invalid(
            format!("{path}.activeDeadlineSeconds"),
            &spec["activeDeadlineSeconds"],
            "must be greater than 0",
        ));
    }
    if let Some(m) = spec["completionMode"].as_str()
        && !matches!(m, "NonIndexed" | "Indexed")
    {
        errs.push(not_supported(
            format!("{path}.completionMode"),
            &spec["completionMode"],
            &["NonIndexed", "Indexed"],
        ));
    }
    let tpath = format!("{path}.template.spec");
    check_pod_spec(&spec["template"]["spec"], &tpath, errs);
    match spec["template"]["spec"]["restartPolicy"].as_str() {
        Some("OnFailure" | "Never") => {}
        _ => errs.push(not_supported(
            format!("{tpath}.restartPolicy"),
            &spec["template"]["spec"]["restartPolicy"],
            &["OnFailure", "Never"],
        )),
    }
    let sel = &spec["selector"];
    if !is_job || sel.is_null() {
        return;
    }
    let labels = &spec["template"]["metadata"]["labels"];
    let empty = Map::new();
    if !crate::selector::label_selector_matches(sel, labels.as_object().unwrap_or(&empty)) {
        errs.push(FieldError::invalid(
            format!("{path}.template.metadata.labels"),
            labels,
            "`selector` does not match template `labels`",
        ));
    }
}

fn check_cronjob(obj: &Value, errs: &mut Vec<FieldError>) {
    let spec = &obj["spec"];
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    if name.len() > 52 {
        errs.push(FieldError::invalid(
            "metadata.name",
            &obj["metadata"]["name"],
            "must be no more than 52 characters",
        ));
    }
    match spec["schedule"].as_str() {
        None | Some("") => errs.push(FieldError::required("spec.schedule")),
        Some(s) if s.contains("TZ=") => errs.push(FieldError::invalid(
            "spec.schedule",
            &spec["schedule"],
            "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
        )),
        Some(s) => {
            if let Err(e) = podnet_core::cron::Schedule::parse(s) {
                errs.push(FieldError::invalid(
                    "spec.schedule",
                    &spec["schedule"],
                    &e.0,
                ));
            }
        }
    }
    if let Some(tz) = spec["timeZone"].as_str()
        && let Err(e) = podnet_core::cron::time_zone(Some(tz))
    {
        errs.push(FieldError::invalid(
            "spec.timeZone",
            &spec["timeZone"],
            &e.0,
        ));
    }
    if let Some(p) = spec["concurrencyPolicy"].as_str()
        && !matches!(p, "Allow" | "Forbid" | "Replace")
    {
        errs.push(not_supported(
            "spec.concurrencyPolicy",
            &spec["concurrencyPolicy"],
            &["Allow", "Forbid", "Replace"],
        ));
    }
    for k in [
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ] {
        nonnegative(&spec[k], &format!("spec.{k}"), errs);
    }
    check_job_spec(
        &spec["jobTemplate"]["spec"],
        "spec.jobTemplate.spec",
        false,
        errs,
    );
}

/// Validates an object of `kind` (after defaulting).
pub fn validate(kind: &str, obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    check_labels(&obj["metadata"]["labels"], "metadata.labels", &mut errs);
    match kind {
        "Pod" => check_pod_spec(&obj["spec"], "spec", &mut errs),
        "Deployment" | "ReplicaSet" | "DaemonSet" => {
            check_selector_matches(obj, &mut errs);
            check_pod_spec(
                &obj["spec"]["template"]["spec"],
                "spec.template.spec",
                &mut errs,
            );
            if let Some(r) = obj["spec"]["replicas"].as_i64()
                && r < 0
            {
                errs.push(FieldError::invalid(
                    "spec.replicas",
                    &obj["spec"]["replicas"],
                    "must be greater than or equal to 0",
                ));
            }
        }
        "StatefulSet" => check_statefulset(obj, &mut errs),
        "Job" => {
            check_job_spec(&obj["spec"], "spec", true, &mut errs);
            let sel = &obj["spec"]["selector"];
            let mut own = Map::new();
            own.insert(JOB_UID_LABEL.into(), obj["metadata"]["uid"].clone());
            if obj["spec"]["manualSelector"] != json!(true)
                && !sel.is_null()
                && !crate::selector::label_selector_matches(sel, &own)
            {
                errs.push(FieldError::invalid(
                    "spec.selector",
                    sel,
                    "`selector` not auto-generated",
                ));
            }
        }
        "CronJob" => check_cronjob(obj, &mut errs),
        "Service" => {
            let spec = &obj["spec"];
            let ty = spec["type"].as_str().unwrap_or("ClusterIP");
            if !matches!(
                ty,
                "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
            ) {
                errs.push(FieldError { reason: "FieldValueNotSupported", field: "spec.type".into(), message: format!("Unsupported value: \"{ty}\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"") });
            }
            let ports = spec["ports"]
                .as_array()
                .map(|a| a.as_slice())
                .unwrap_or(&[]);
            if ports.is_empty()
                && ty != "ExternalName"
                && spec["clusterIP"].as_str() != Some("None")
            {
                errs.push(FieldError::required("spec.ports"));
            }
            let mut names = std::collections::HashSet::new();
            for (i, p) in ports.iter().enumerate() {
                check_port(&p["port"], &format!("spec.ports[{i}].port"), &mut errs);
                let name = p["name"].as_str().unwrap_or("");
                if ports.len() > 1 && name.is_empty() {
                    errs.push(FieldError::required(format!("spec.ports[{i}].name")));
                }
                if !names.insert(name.to_string()) && !name.is_empty() {
                    errs.push(FieldError::duplicate(
                        format!("spec.ports[{i}].name"),
                        &p["name"],
                    ));
                }
                if let Some(np) = p["nodePort"].as_i64()
                    && np != 0
                    && !(30000..=32767).contains(&np)
                {
                    errs.push(FieldError::invalid(format!("spec.ports[{i}].nodePort"), &p["nodePort"], "provided port is not in the valid range. The range of valid ports is 30000-32767"));
                }
            }
            if ty == "ExternalName" && spec["externalName"].as_str().is_none_or(str::is_empty) {
                errs.push(FieldError::required("spec.externalName"));
            }
        }
        "NetworkPolicy" if obj["spec"]["podSelector"].is_null() => {
            errs.push(FieldError::required("spec.podSelector"));
        }
        "EndpointSlice" => match obj["addressType"].as_str() {
            Some("IPv4" | "IPv6" | "FQDN") => {}
            None => errs.push(FieldError::required("addressType")),
            Some(_) => errs.push(FieldError {
                reason: "FieldValueNotSupported",
                field: "addressType".into(),
                message: "Unsupported value: supported values: \"IPv4\", \"IPv6\", \"FQDN\"".into(),
            }),
        },
        "Event" if obj["involvedObject"].is_null() => {
            errs.push(FieldError::required("involvedObject"));
        }
        "Secret" => crate::secret::validate(obj, &mut errs),
        "Role" => check_rules(obj, true, &mut errs),
        "ClusterRole" => check_rules(obj, false, &mut errs),
        "RoleBinding" | "ClusterRoleBinding" => check_binding(kind, obj, &mut errs),
        _ => {}
    }
    errs
}

/// What `pods/ephemeralcontainers` may change: ephemeral containers are
/// only ever added (as kube-apiserver rules: none removed or changed), with
/// names of their own and a target that is one of the pod's containers.
pub fn validate_ephemeral_update(old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let empty = Vec::new();
    let list = |v: &Value| v["spec"]["ephemeralContainers"].as_array().cloned();
    let (olds, news) = (list(old).unwrap_or_default(), list(new).unwrap_or_default());
    for o in &olds {
        let name = o["name"].as_str().unwrap_or_default();
        match news.iter().position(|n| n["name"] == o["name"]) {
            None => errs.push(FieldError::forbidden(
                "spec.ephemeralContainers",
                &format!("existing ephemeral containers \"{name}\" may not be removed"),
            )),
            Some(i) if news[i] != *o => errs.push(FieldError::forbidden(
                format!("spec.ephemeralContainers[{i}]"),
                &format!("existing ephemeral containers \"{name}\" may not be changed"),
            )),
            Some(_) => {}
        }
    }
    let regular: Vec<&str> = ["containers", "initContainers"]
        .iter()
        .flat_map(|l| new["spec"][*l].as_array().unwrap_or(&empty))
        .filter_map(|c| c["name"].as_str())
        .collect();
    let mut seen = std::collections::HashSet::new();
    for (i, c) in news.iter().enumerate() {
        let field = format!("spec.ephemeralContainers[{i}]");
        let name = c["name"].as_str().unwrap_or_default();
        if name.is_empty() {
            errs.push(FieldError::required(format!("{field}.name")));
        } else if regular.contains(&name) || !seen.insert(name) {
            errs.push(FieldError::duplicate(format!("{field}.name"), &c["name"]));
        }
        if c["image"].as_str().is_none_or(str::is_empty) {
            errs.push(FieldError::required(format!("{field}.image")));
        }
        if let Some(t) = c["targetContainerName"].as_str()
            && !t.is_empty()
            && !regular.contains(&t)
        {
            errs.push(FieldError {
                reason: "FieldValueNotFound",
                field: format!("{field}.targetContainerName"),
                message: format!("Not found: \"{t}\""),
            });
        }
        for port in [
            "ports",
            "readinessProbe",
            "livenessProbe",
            "startupProbe",
            "lifecycle",
            "resources",
        ] {
            if c[port].as_array().is_some_and(|a| !a.is_empty())
                || c[port].as_object().is_some_and(|o| !o.is_empty())
            {
                errs.push(FieldError::forbidden(
                    format!("{field}.{port}"),
                    "cannot be set for an Ephemeral Container",
                ));
            }
        }
    }
    let mut o = old["spec"].clone();
    let mut n = new["spec"].clone();
    for spec in [&mut o, &mut n] {
        if let Some(m) = spec.as_object_mut() {
            m.remove("ephemeralContainers");
        }
    }
    if o != n {
        errs.push(FieldError::forbidden(
            "spec",
            "pod updates through ephemeralcontainers may only change `spec.ephemeralContainers`",
        ));
    }
    errs
}

/// Fields an update may not change.
pub fn validate_update(kind: &str, old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    match kind {
        "Service" => {
            let (o, n) = (&old["spec"]["clusterIP"], &new["spec"]["clusterIP"]);
            if !o.is_null() && o != n && !(n.is_null() || n == "") {
                errs.push(FieldError::invalid(
                    "spec.clusterIPs[0]",
                    n,
                    "may not change once set",
                ));
            }
        }
        "Pod" => {
            let mut o = old["spec"].clone();
            let mut n = new["spec"].clone();
            for spec in [&mut o, &mut n] {
                for list in ["containers", "initContainers"] {
                    if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
                        for c in cs {
                            c["image"] = Value::Null;
                        }
                    }
                }
                if let Some(m) = spec.as_object_mut() {
                    m.remove("activeDeadlineSeconds");
                    m.remove("tolerations");
                    m.remove("terminationGracePeriodSeconds");
                }
            }
            if o != n {
                errs.push(FieldError::forbidden("spec", "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"));
            }
        }
        "Deployment" | "ReplicaSet" | "DaemonSet"
            if old["spec"]["selector"] != new["spec"]["selector"] =>
        {
            errs.push(FieldError::invalid(
                "spec.selector",
                &new["spec"]["selector"],
                "field is immutable",
            ));
        }
        "StatefulSet" => {
            let strip = |v: &Value| {
                let mut spec = v["spec"].clone();
                if let Some(m) = spec.as_object_mut() {
                    for k in [
                        "replicas",
                        "ordinals",
                        "template",
                        "updateStrategy",
                        "revisionHistoryLimit",
                        "persistentVolumeClaimRetentionPolicy",
                        "minReadySeconds",
                    ] {
                        m.remove(k);
                    }
                }
                spec
            };
            if strip(old) != strip(new) {
                errs.push(FieldError::forbidden("spec", "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden"));
            }
        }
        "Job" => {
            for (k, path) in [
                ("selector", "spec.selector"),
                ("completionMode", "spec.completionMode"),
            ] {
                if old["spec"][k] != new["spec"][k] {
                    errs.push(FieldError::invalid(
                        path,
                        &new["spec"][k],
                        "field is immutable",
                    ));
                }
            }
            // The template may change only while the Job is suspended.
            if old["spec"]["template"] != new["spec"]["template"]
                && new["spec"]["suspend"] != json!(true)
            {
                errs.push(FieldError::invalid(
                    "spec.template",
                    &new["spec"]["template"],
                    "field is immutable",
                ));
            }
        }
        "RoleBinding" | "ClusterRoleBinding" if old["roleRef"] != new["roleRef"] => {
            errs.push(FieldError {
                reason: "FieldValueInvalid",
                field: "roleRef".into(),
                message: format!(
                    "Invalid value: {}: cannot change roleRef",
                    role_ref_text(&new["roleRef"])
                ),
            });
        }
        "Secret" => crate::secret::validate_update(old, new, &mut errs),
        "EndpointSlice" if old["addressType"] != new["addressType"] => {
            errs.push(FieldError::invalid(
                "addressType",
                &new["addressType"],
                "field is immutable",
            ));
        }
        _ => {}
    }
    errs
}

fn set_default(m: &mut Value, key: &str, v: Value) {
    if let Some(o) = m.as_object_mut()
        && o.get(key).is_none_or(Value::is_null)
    {
        o.insert(key.to_string(), v);
    }
}

fn default_pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "enableServiceLinks", json!(true));
    set_default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    set_default(spec, "priority", json!(0));
    for list in ["containers", "initContainers"] {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in cs {
                set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
                set_default(c, "terminationMessagePolicy", json!("File"));
                set_default(c, "resources", json!({}));
                let image = c["image"].as_str().unwrap_or("");
                let last = image.rsplit('/').next().unwrap_or("");
                let latest = !last.contains(':') || last.ends_with(":latest");
                let policy = if latest && !image.contains('@') {
                    "Always"
                } else {
                    "IfNotPresent"
                };
                set_default(c, "imagePullPolicy", json!(policy));
                if let Some(ps) = c.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ps {
                        set_default(p, "protocol", json!("TCP"));
                    }
                }
            }
        }
    }
}

fn default_template(obj: &mut Value) {
    if let Some(spec) = obj
        .get_mut("spec")
        .and_then(|s| s.get_mut("template"))
        .and_then(|t| t.get_mut("spec"))
    {
        default_pod_spec(spec);
    }
    if obj["spec"]["template"]["metadata"].is_object() {
        set_default(
            &mut obj["spec"]["template"]["metadata"],
            "creationTimestamp",
            Value::Null,
        );
    }
}

/// Fills in what kube-apiserver's defaulting (and admission) fills in.
pub fn apply_defaults(kind: &str, obj: &mut Value) {
    match kind {
        "Pod" => {
            let spec = &mut obj["spec"];
            default_pod_spec(spec);
            if spec.is_object() {
                set_default(spec, "serviceAccountName", json!("default"));
                let sa = spec["serviceAccountName"].clone();
                set_default(spec, "serviceAccount", sa);
                if spec["tolerations"].is_null() {
                    spec["tolerations"] = json!([
                        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
                    ]);
                }
            }
            if obj["status"].as_object().is_none_or(|m| m.is_empty()) {
                obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
            }
        }
        "Service" => {
            let spec = &mut obj["spec"];
            if !spec.is_object() {
                *spec = json!({});
            }
            set_default(spec, "type", json!("ClusterIP"));
            set_default(spec, "sessionAffinity", json!("None"));
            let ty = spec["type"].as_str().unwrap_or("").to_string();
            if ty != "ExternalName" {
                set_default(spec, "internalTrafficPolicy", json!("Cluster"));
                set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
                set_default(spec, "ipFamilies", json!(["IPv4"]));
            }
            if ty == "NodePort" || ty == "LoadBalancer" {
                set_default(spec, "externalTrafficPolicy", json!("Cluster"));
            }
            if let Some(ps) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ps {
                    set_default(p, "protocol", json!("TCP"));
                    let port = p["port"].clone();
                    set_default(p, "targetPort", port);
                }
            }
            if obj["status"].is_null() {
                obj["status"] = json!({"loadBalancer": {}});
            }
        }
        "Deployment" => {
            let spec = &mut obj["spec"];
            if spec.is_object() {
                set_default(spec, "replicas", json!(1));
                set_default(spec, "revisionHistoryLimit", json!(10));
                set_default(spec, "progressDeadlineSeconds", json!(600));
                if spec["strategy"]["type"].is_null() {
                    spec["strategy"] = json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}});
                } else if spec["strategy"]["type"] == "RollingUpdate"
                    && spec["strategy"]["rollingUpdate"].is_null()
                {
                    spec["strategy"]["rollingUpdate"] =
                        json!({"maxUnavailable": "25%", "maxSurge": "25%"});
                }
            }
            default_template(obj);
            if obj["status"].is_null() {
                obj["status"] = json!({});
            }
        }
        "ReplicaSet" => {
            if obj["spec"].is_object() {
                set_default(&mut obj["spec"], "replicas", json!(1));
            }
            default_template(obj);
            if obj["status"].is_null() {
                obj["status"] = json!({"replicas": 0});
            }
        }
        "DaemonSet" => {
            let spec = &mut obj["spec"];
            if spec.is_object() {
                set_default(spec, "revisionHistoryLimit", json!(10));
                set_default(
                    spec,
                    "updateStrategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
                );
            }
            default_template(obj);
            if obj["status"].is_null() {
                obj["status"] = json!({"currentNumberScheduled": 0, "numberMisscheduled": 0, "desiredNumberScheduled": 0, "numberReady": 0});
            }
        }
        "StatefulSet" => {
            let spec = &mut obj["spec"];
            if spec.is_object() {
                set_default(spec, "replicas", json!(1));
                set_default(spec, "podManagementPolicy", json!("OrderedReady"));
                set_default(spec, "revisionHistoryLimit", json!(10));
                set_default(
                    spec,
                    "persistentVolumeClaimRetentionPolicy",
                    json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
                );
                if spec["updateStrategy"]["type"].is_null() {
                    spec["updateStrategy"] =
                        json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}});
                } else if spec["updateStrategy"]["type"] == "RollingUpdate" {
                    if spec["updateStrategy"]["rollingUpdate"].is_null() {
                        spec["updateStrategy"]["rollingUpdate"] = json!({});
                    }
                    set_default(
                        &mut spec["updateStrategy"]["rollingUpdate"],
                        "partition",
                        json!(0),
                    );
                }
                if let Some(ts) = spec
                    .get_mut("volumeClaimTemplates")
                    .and_then(Value::as_array_mut)
                {
                    for t in ts.iter_mut().filter(|t| t.is_object()) {
                        set_default(t, "apiVersion", json!("v1"));
                        set_default(t, "kind", json!("PersistentVolumeClaim"));
                        if t["spec"].is_object() {
                            set_default(&mut t["spec"], "volumeMode", json!("Filesystem"));
                        }
                        set_default(t, "status", json!({"phase": "Pending"}));
                    }
                }
            }
            default_template(obj);
            if obj["status"].is_null() {
                obj["status"] = json!({"replicas": 0, "availableReplicas": 0});
            }
        }
        "Job" => {
            default_job_spec(&mut obj["spec"]);
            let (uid, name) = (
                obj["metadata"]["uid"].clone(),
                obj["metadata"]["name"].clone(),
            );
            let spec = &mut obj["spec"];
            if spec.is_object() && spec["manualSelector"] != json!(true) && uid.is_string() {
                if spec["selector"].is_null() {
                    spec["selector"] = json!({"matchLabels": {JOB_UID_LABEL: uid.clone()}});
                }
                if spec["template"].is_object() {
                    if !spec["template"]["metadata"].is_object() {
                        spec["template"]["metadata"] = json!({});
                    }
                    let meta = &mut spec["template"]["metadata"];
                    if !meta["labels"].is_object() {
                        meta["labels"] = json!({});
                    }
                    let labels = &mut meta["labels"];
                    set_default(labels, "controller-uid", uid.clone());
                    set_default(labels, "job-name", name.clone());
                    set_default(labels, JOB_UID_LABEL, uid);
                    set_default(labels, "batch.kubernetes.io/job-name", name);
                }
            }
            default_template(obj);
            if obj["status"].is_null() {
                obj["status"] = json!({});
            }
        }
        "CronJob" => {
            let spec = &mut obj["spec"];
            if spec.is_object() {
                set_default(spec, "concurrencyPolicy", json!("Allow"));
                set_default(spec, "suspend", json!(false));
                set_default(spec, "successfulJobsHistoryLimit", json!(3));
                set_default(spec, "failedJobsHistoryLimit", json!(1));
                if let Some(ps) = spec
                    .get_mut("jobTemplate")
                    .and_then(|j| j.get_mut("spec"))
                    .and_then(|j| j.get_mut("template"))
                {
                    if let Some(ps) = ps.get_mut("spec") {
                        default_pod_spec(ps);
                    }
                    if ps["metadata"].is_object() {
                        set_default(&mut ps["metadata"], "creationTimestamp", Value::Null);
                    }
                }
                if spec["jobTemplate"]["metadata"].is_object() {
                    set_default(
                        &mut spec["jobTemplate"]["metadata"],
                        "creationTimestamp",
                        Value::Null,
                    );
                }
            }
            if obj["status"].is_null() {
                obj["status"] = json!({});
            }
        }
        "Namespace" => {
            let name = obj["metadata"]["name"].clone();
            if !obj["metadata"]["labels"].is_object() {
                obj["metadata"]["labels"] = json!({});
            }
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
            if obj["spec"]["finalizers"].is_null() {
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
            }
            if obj["status"]["phase"].is_null() {
                obj["status"] = json!({"phase": "Active"});
            }
        }
        "Secret" => crate::secret::apply_defaults(obj),
        "NetworkPolicy" => {
            let spec = &mut obj["spec"];
            if spec.is_object() && spec["policyTypes"].is_null() {
                let mut types = vec![json!("Ingress")];
                if spec["egress"].is_array() {
                    types.push(json!("Egress"));
                }
                spec["policyTypes"] = Value::Array(types);
            }
            for dir in ["ingress", "egress"] {
                if let Some(rules) = spec.get_mut(dir).and_then(Value::as_array_mut) {
                    for rule in rules {
                        if let Some(ps) = rule.get_mut("ports").and_then(Value::as_array_mut) {
                            for p in ps {
                                set_default(p, "protocol", json!("TCP"));
                            }
                        }
                    }
                }
            }
        }
        "Endpoints" => {
            if let Some(subsets) = obj.get_mut("subsets").and_then(Value::as_array_mut) {
                for s in subsets {
                    if let Some(ps) = s.get_mut("ports").and_then(Value::as_array_mut) {
                        for p in ps {
                            set_default(p, "protocol", json!("TCP"));
                        }
                    }
                }
            }
        }
        "EndpointSlice" => {
            if let Some(ps) = obj.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ps {
                    set_default(p, "protocol", json!("TCP"));
                }
            }
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            if obj["roleRef"].is_null() {
                obj["roleRef"] = json!({"kind": "", "name": ""});
            }
            if obj["roleRef"].is_object()
                && obj["roleRef"]["apiGroup"]
                    .as_str()
                    .is_none_or(str::is_empty)
            {
                obj["roleRef"]["apiGroup"] = json!(crate::resources::RBAC_GROUP);
            }
            for s in obj
                .get_mut("subjects")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                let k = s["kind"].as_str().unwrap_or("");
                if (k == "User" || k == "Group") && s["apiGroup"].as_str().is_none_or(str::is_empty)
                {
                    s["apiGroup"] = json!(crate::resources::RBAC_GROUP);
                }
            }
        }
        "Event"
            if obj["involvedObject"]["namespace"].is_null()
                && obj["involvedObject"].is_object() =>
        {
            let ns = obj["metadata"]["namespace"].clone();
            obj["involvedObject"]["namespace"] = ns;
        }
        _ => {}
    }
}

/// Whether this kind bumps metadata.generation on spec changes.
pub fn has_generation(kind: &str) -> bool {
    matches!(
        kind,
        "Deployment"
            | "ReplicaSet"
            | "DaemonSet"
            | "StatefulSet"
            | "Job"
            | "CronJob"
            | "NetworkPolicy"
            | "Pod"
    )
}

/// A field selector names a field the kind cannot be selected on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsupportedField;

/// The value of a field-selector field of an object, or Err when the kind
/// does not support selecting on that field (400, as kube-apiserver does).
pub fn field_value<'a>(
    kind: &str,
    obj: &'a Value,
    field: &str,
) -> Result<Option<&'a str>, UnsupportedField> {
    let allowed = match field {
        "metadata.name" | "metadata.namespace" => true,
        "spec.nodeName"
        | "status.phase"
        | "spec.restartPolicy"
        | "spec.schedulerName"
        | "spec.serviceAccountName"
        | "status.podIP"
        | "status.nominatedNodeName"
        | "spec.hostNetwork" => kind == "Pod",
        "involvedObject.kind"
        | "involvedObject.namespace"
        | "involvedObject.name"
        | "involvedObject.uid"
        | "involvedObject.apiVersion"
        | "involvedObject.resourceVersion"
        | "involvedObject.fieldPath"
        | "reason"
        | "reportingComponent"
        | "source" => kind == "Event",
        "type" => kind == "Event" || kind == "Secret",
        "spec.unschedulable" => kind == "Node",
        "spec.clusterIP" | "spec.type" => kind == "Service",
        _ => false,
    };
    if !allowed {
        return Err(UnsupportedField);
    }
    if field == "source" {
        return Ok(obj["source"]["component"].as_str());
    }
    let mut cur = obj;
    for part in field.split('.') {
        cur = &cur[part];
    }
    Ok(cur.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_dns_label("web-1"));
        assert!(!is_dns_label("Web"));
        assert!(!is_dns_label("-a"));
        assert!(is_dns_subdomain("a.b-c.d"));
        assert!(!is_dns_subdomain("a..b"));
        assert!(validate_name("Service", "1abc").is_some());
        assert!(validate_name("Pod", "1abc").is_none());
    }

    #[test]
    fn unknown_fields_are_found_and_pruned() {
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "bogus": 1},
            "spec": {"containers": [{"name": "c", "image": "nginx", "colour": "red"}]}});
        let typed = typed_view("Pod", &pod).unwrap();
        let unknown = unknown_fields(&pod, &typed);
        assert_eq!(
            unknown,
            vec![
                "metadata.bogus".to_string(),
                "spec.containers[0].colour".to_string()
            ]
        );
        prune(&mut pod, &unknown);
        assert!(unknown_fields(&pod, &typed).is_empty());
    }

    #[test]
    fn wrong_types_are_refused() {
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "a"}, "spec": {"replicas": "three"}});
        assert!(typed_view("Deployment", &d).is_err());
        let q = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"},
            "spec": {"containers": [{"name": "c", "image": "x", "resources": {"limits": {"cpu": 1}}}]}});
        assert!(typed_view("Pod", &q).is_ok());
    }

    #[test]
    fn service_defaults_and_validation() {
        let mut s = json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}});
        apply_defaults("Service", &mut s);
        assert_eq!(s["spec"]["type"], "ClusterIP");
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(s["spec"]["ports"][0]["protocol"], "TCP");
        assert!(validate("Service", &s).is_empty());
        let bad = json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 70000}]}});
        assert_eq!(validate("Service", &bad)[0].field, "spec.ports[0].port");
    }

    #[test]
    fn ephemeral_containers_are_only_added() {
        let pod = |ecs: Value| {
            json!({"metadata": {"name": "p"}, "spec": {
                "containers": [{"name": "app", "image": "nginx"}],
                "ephemeralContainers": ecs}})
        };
        let dbg = json!({"name": "dbg", "image": "busybox", "targetContainerName": "app"});
        let old = pod(json!([dbg]));
        let added = pod(json!([dbg, {"name": "dbg2", "image": "busybox"}]));
        assert!(validate_ephemeral_update(&old, &added).is_empty());
        let removed = pod(json!([]));
        assert!(
            validate_ephemeral_update(&old, &removed)[0]
                .message
                .contains("may not be removed")
        );
        let changed = pod(json!([{"name": "dbg", "image": "alpine"}]));
        assert!(
            validate_ephemeral_update(&old, &changed)[0]
                .message
                .contains("may not be changed")
        );
        let clash = pod(json!([dbg, {"name": "app", "image": "busybox"}]));
        assert_eq!(
            validate_ephemeral_update(&old, &clash)[0].reason,
            "FieldValueDuplicate"
        );
        let no_target =
            pod(json!([dbg, {"name": "x", "image": "b", "targetContainerName": "nope"}]));
        assert_eq!(
            validate_ephemeral_update(&old, &no_target)[0].field,
            "spec.ephemeralContainers[1].targetContainerName"
        );
        // The main endpoint refuses them as any other spec change.
        assert!(!validate_update("Pod", &old, &added).is_empty());
    }
}
