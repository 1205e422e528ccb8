//! events.k8s.io/v1 Events: the same objects as core/v1 Events (one store,
//! two versions, as in kube-apiserver), converted field by field so either
//! API sees every event whichever wrote it.

use serde_json::{Map, Value, json};

use crate::kinds::FieldError;

/// The API group of the newer Event API.
pub const GROUP: &str = "events.k8s.io";

/// (events.k8s.io/v1 field, core/v1 field) of the renamed top-level fields.
const RENAMED: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
    ("reportingController", "reportingComponent"),
];

fn rename(v: &Value, from_new: bool, api_version: &str) -> Value {
    let Some(m) = v.as_object() else {
        return v.clone();
    };
    let mut out = Map::new();
    for (k, x) in m {
        let key = RENAMED
            .iter()
            .find(|(new, old)| if from_new { new == k } else { old == k })
            .map(|(new, old)| if from_new { *old } else { *new })
            .unwrap_or(k.as_str());
        out.insert(key.to_string(), x.clone());
    }
    out.insert("apiVersion".into(), json!(api_version));
    Value::Object(out)
}

/// A stored (core/v1) Event as events.k8s.io/v1 shows it.
pub fn from_core(v: &Value) -> Value {
    let mut out = rename(v, false, "events.k8s.io/v1");
    // core/v1 always has an involvedObject; an events.k8s.io Event may not
    // have said what it regards.
    if out["regarding"].as_object().is_some_and(Map::is_empty)
        && let Some(m) = out.as_object_mut()
    {
        m.remove("regarding");
    }
    out
}

/// An events.k8s.io/v1 Event in its stored (core/v1) form.
pub fn to_core(v: &Value) -> Value {
    let mut out = rename(v, true, "v1");
    if out["involvedObject"].is_null() {
        out["involvedObject"] = json!({});
    }
    out
}

/// The core/v1 field selector label of an events.k8s.io/v1 one
/// (`regarding.name` selects on `involvedObject.name`).
pub fn field_label(f: &str) -> String {
    for (new, old) in RENAMED {
        if f == *new {
            return (*old).to_string();
        }
        if let Some(rest) = f.strip_prefix(&format!("{new}.")) {
            return format!("{old}.{rest}");
        }
    }
    f.to_string()
}

fn required(field: &str) -> FieldError {
    FieldError {
        reason: "FieldValueRequired",
        field: field.into(),
        message: "Required value".into(),
    }
}

fn unset(field: &str) -> FieldError {
    FieldError {
        reason: "FieldValueInvalid",
        field: field.into(),
        message: "Invalid value: \"\": needs to be unset".into(),
    }
}

/// What kube-apiserver requires of an Event created through
/// events.k8s.io/v1 (stricter than core/v1): when and by whom it was
/// reported, what was done, why, a known type, and no deprecated fields.
pub fn validate_create(v: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let empty = |k: &str| v[k].as_str().is_none_or(str::is_empty);
    if empty("eventTime") {
        errs.push(required("eventTime"));
    }
    if !matches!(v["type"].as_str(), Some("Normal" | "Warning")) {
        errs.push(FieldError {
            reason: "FieldValueInvalid",
            field: "type".into(),
            message: format!(
                "Invalid value: \"\": has invalid value: {}",
                v["type"].as_str().unwrap_or("")
            ),
        });
    }
    for k in [
        "reportingController",
        "reportingInstance",
        "action",
        "reason",
    ] {
        if empty(k) {
            errs.push(required(k));
        }
    }
    for (k, limit) in [("action", 128), ("reason", 128), ("reportingInstance", 128)] {
        if v[k].as_str().is_some_and(|s| s.len() > limit) {
            errs.push(FieldError {
                reason: "FieldValueInvalid",
                field: k.into(),
                message: format!("Invalid value: \"\": can have at most {limit} characters"),
            });
        }
    }
    if v["note"].as_str().is_some_and(|s| s.len() > 1024) {
        errs.push(FieldError {
            reason: "FieldValueInvalid",
            field: "note".into(),
            message: "Invalid value: \"\": can have at most 1024 characters".into(),
        });
    }
    for k in [
        "deprecatedFirstTimestamp",
        "deprecatedLastTimestamp",
        "deprecatedSource",
    ] {
        if !v[k].is_null() && v[k] != json!({}) {
            errs.push(unset(k));
        }
    }
    if v["deprecatedCount"].as_i64().is_some_and(|c| c != 0) {
        errs.push(unset("deprecatedCount"));
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_convert_both_ways() {
        let core = json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e"},
            "involvedObject": {"kind": "Pod", "name": "p"}, "message": "hi", "count": 3,
            "source": {"component": "kubelet"}, "reportingComponent": "kubelet", "reason": "Pulled"});
        let new = from_core(&core);
        assert_eq!(new["apiVersion"], "events.k8s.io/v1");
        assert_eq!(new["regarding"]["name"], "p");
        assert_eq!(new["note"], "hi");
        assert_eq!(new["deprecatedCount"], 3);
        assert_eq!(new["deprecatedSource"]["component"], "kubelet");
        assert_eq!(new["reportingController"], "kubelet");
        assert_eq!(to_core(&new), core);
        assert_eq!(field_label("regarding.name"), "involvedObject.name");
        assert_eq!(field_label("reason"), "reason");
    }

    #[test]
    fn creates_need_the_new_fields() {
        let errs = validate_create(&json!({"type": "Normal", "deprecatedCount": 2}));
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "eventTime",
                "reportingController",
                "reportingInstance",
                "action",
                "reason",
                "deprecatedCount"
            ]
        );
    }
}
