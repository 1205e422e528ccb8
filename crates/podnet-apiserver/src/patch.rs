//! PATCH: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and strategic
//! merge patch, whose lists merge by the patch merge keys of the served kinds
//! (containers by name, container ports by containerPort, service ports by
//! port, env by name, ...), with the `$patch`, `$retainKeys`,
//! `$setElementOrder/` and `$deleteFromPrimitiveList/` directives that
//! `kubectl apply` sends.

use serde_json::{Map, Value};

/// A patch that cannot be applied (400 / 422 at the API).
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// The patch is not valid JSON or has the wrong shape.
    #[error("{0}")]
    Malformed(String),
    /// A JSON patch operation failed (test failed, path missing).
    #[error("{0}")]
    Failed(String),
}

/// The patch types of the Content-Type header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// application/json-patch+json
    Json,
    /// application/merge-patch+json
    Merge,
    /// application/strategic-merge-patch+json
    Strategic,
    /// application/apply-patch+yaml: server-side apply, carried out by
    /// [`crate::managed::apply`] with field ownership; [`apply`] merges it
    /// like a strategic merge patch, without ownership.
    Apply,
}

impl PatchType {
    /// From a Content-Type.
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        let ct = ct.split(';').next().unwrap_or("").trim();
        Some(match ct {
            "application/json-patch+json" => PatchType::Json,
            "application/merge-patch+json" => PatchType::Merge,
            "application/strategic-merge-patch+json" => PatchType::Strategic,
            "application/apply-patch+yaml" | "application/apply-patch+json" => PatchType::Apply,
            _ => return None,
        })
    }
}

/// Parses an apply configuration (YAML or JSON).
pub fn parse_apply(body: &[u8]) -> Result<Value, PatchError> {
    match serde_json::from_slice(body) {
        Ok(v) => Ok(v),
        Err(_) => {
            let s = std::str::from_utf8(body).map_err(|e| PatchError::Malformed(e.to_string()))?;
            serde_saphyr::from_str(s).map_err(|e| PatchError::Malformed(format!("yaml: {e}")))
        }
    }
}

/// Applies a patch of `ty` to `orig`.
pub fn apply(ty: PatchType, kind: &str, orig: &Value, patch: &[u8]) -> Result<Value, PatchError> {
    match ty {
        PatchType::Json => {
            let p: json_patch::Patch =
                serde_json::from_slice(patch).map_err(|e| PatchError::Malformed(e.to_string()))?;
            let mut v = orig.clone();
            json_patch::patch(&mut v, &p).map_err(|e| PatchError::Failed(e.to_string()))?;
            Ok(v)
        }
        PatchType::Merge => {
            let p: Value =
                serde_json::from_slice(patch).map_err(|e| PatchError::Malformed(e.to_string()))?;
            if !p.is_object() {
                return Err(PatchError::Malformed(
                    "a merge patch must be a JSON object".into(),
                ));
            }
            let mut v = orig.clone();
            json_patch::merge(&mut v, &p);
            Ok(v)
        }
        PatchType::Strategic | PatchType::Apply => {
            let p: Value = if ty == PatchType::Apply {
                parse_apply(patch)?
            } else {
                serde_json::from_slice(patch).map_err(|e| PatchError::Malformed(e.to_string()))?
            };
            if !p.is_object() {
                return Err(PatchError::Malformed(
                    "a strategic merge patch must be a JSON object".into(),
                ));
            }
            let mut v = orig.clone();
            let mut path = vec![kind.to_string()];
            strategic(&mut v, &p, &mut path)?;
            Ok(v)
        }
    }
}

/// The merge key of the list `field` found under `path` (field names from the
/// kind down), or None when the list is replaced as a whole.
fn merge_key(path: &[String], field: &str) -> Option<&'static str> {
    let parent = path.last().map(String::as_str).unwrap_or("");
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "imagePullSecrets"
        | "env"
        | "resourceClaims" => "name",
        "ports"
            if matches!(
                parent,
                "containers" | "initContainers" | "ephemeralContainers"
            ) =>
        {
            "containerPort"
        }
        "ports" if path.len() == 2 && path[0] == "Service" && parent == "spec" => "port",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "hostAliases" => "ip",
        "conditions" => "type",
        "addresses" if path.len() == 2 && path[0] == "Node" => "type",
        "ownerReferences" => "uid",
        "taints" => "key",
        "topologySpreadConstraints" => "topologyKey",
        _ => return None,
    })
}

fn is_merged_primitive_list(field: &str) -> bool {
    field == "finalizers"
}

fn strategic(orig: &mut Value, patch: &Value, path: &mut Vec<String>) -> Result<(), PatchError> {
    let Some(pm) = patch.as_object() else {
        *orig = patch.clone();
        return Ok(());
    };
    if pm.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut m = pm.clone();
        m.remove("$patch");
        *orig = Value::Object(m);
        return Ok(());
    }
    if !orig.is_object() {
        *orig = Value::Object(Map::new());
    }
    let mut orders: Vec<(String, Vec<Value>)> = Vec::new();
    for (k, v) in pm {
        if k == "$patch" || k == "$retainKeys" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            orders.push((field.to_string(), v.as_array().cloned().unwrap_or_default()));
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let del = v.as_array().cloned().unwrap_or_default();
            if let Some(a) = orig.get_mut(field).and_then(Value::as_array_mut) {
                a.retain(|x| !del.contains(x));
            }
            continue;
        }
        let om = orig.as_object_mut().expect("made an object");
        match v {
            Value::Null => {
                om.remove(k);
            }
            Value::Object(inner) => {
                if inner.get("$patch").and_then(Value::as_str) == Some("delete") {
                    om.remove(k);
                    continue;
                }
                let slot = om.entry(k.clone()).or_insert(Value::Null);
                path.push(k.clone());
                strategic(slot, v, path)?;
                path.pop();
            }
            Value::Array(items) => {
                let slot = om.entry(k.clone()).or_insert(Value::Null);
                merge_list(slot, items, path, k)?;
            }
            other => {
                om.insert(k.clone(), other.clone());
            }
        }
    }
    if let Some(keep) = pm.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        if let Some(om) = orig.as_object_mut() {
            om.retain(|k, _| keep.contains(&k.as_str()));
        }
    }
    for (field, order) in orders {
        let key = merge_key(path, &field);
        if let Some(list) = orig.get_mut(&field).and_then(Value::as_array_mut) {
            let pos = |item: &Value| -> usize {
                let id = match key {
                    Some(k) => &item[k],
                    None => item,
                };
                order
                    .iter()
                    .position(|o| match key {
                        Some(k) => &o[k] == id,
                        None => o == id,
                    })
                    .unwrap_or(usize::MAX)
            };
            list.sort_by_key(|i| pos(i));
        }
    }
    Ok(())
}

fn merge_list(
    orig: &mut Value,
    items: &[Value],
    path: &mut Vec<String>,
    field: &str,
) -> Result<(), PatchError> {
    let key = merge_key(path, field);
    if items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *orig = Value::Array(
            items
                .iter()
                .filter(|i| i.get("$patch").is_none())
                .cloned()
                .collect(),
        );
        return Ok(());
    }
    let Some(key) = key else {
        if is_merged_primitive_list(field) {
            let mut cur = orig.as_array().cloned().unwrap_or_default();
            for i in items {
                if !cur.contains(i) {
                    cur.push(i.clone());
                }
            }
            *orig = Value::Array(cur);
        } else {
            *orig = Value::Array(items.to_vec());
        }
        return Ok(());
    };
    let mut cur = orig.as_array().cloned().unwrap_or_default();
    for item in items {
        let Some(id) = item.get(key) else {
            return Err(PatchError::Malformed(format!(
                "map: {item} does not contain declared merge key: {key}"
            )));
        };
        let existing = cur.iter().position(|c| c.get(key) == Some(id));
        if item.get("$patch").and_then(Value::as_str) == Some("delete") {
            cur.retain(|c| c.get(key) != Some(id));
            continue;
        }
        match existing {
            Some(n) => {
                path.push(field.to_string());
                strategic(&mut cur[n], item, path)?;
                path.pop();
            }
            None => {
                let mut fresh = Value::Null;
                path.push(field.to_string());
                strategic(&mut fresh, item, path)?;
                path.pop();
                cur.push(fresh);
            }
        }
    }
    *orig = Value::Array(cur);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(kind: &str, orig: Value, patch: Value) -> Value {
        apply(
            PatchType::Strategic,
            kind,
            &orig,
            patch.to_string().as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn containers_merge_by_name_and_ports_by_container_port() {
        let d = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "nginx:1", "ports": [{"containerPort": 80, "name": "http"}]},
            {"name": "b", "image": "busybox"}]}}}});
        let out = smp(
            "Deployment",
            d,
            json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "containers": [{"name": "a", "image": "nginx:2", "ports": [{"containerPort": 443}]}]}}}}),
        );
        let cs = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs[0]["image"], "nginx:2");
        assert_eq!(cs[0]["ports"].as_array().unwrap().len(), 2);
        assert_eq!(cs[1]["name"], "b");
    }

    #[test]
    fn directives() {
        let o = json!({"metadata": {"finalizers": ["a"], "labels": {"x": "1", "y": "2"}},
            "spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}, "containers": [{"name": "a"}, {"name": "b"}]}});
        let out = smp(
            "Deployment",
            o,
            json!({
            "metadata": {"finalizers": ["b"], "labels": {"x": null}},
            "spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null},
                     "containers": [{"name": "a", "$patch": "delete"}]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(out["metadata"]["labels"], json!({"y": "2"}));
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        assert_eq!(out["spec"]["containers"], json!([{"name": "b"}]));
    }

    #[test]
    fn service_ports_merge_by_port_and_unkeyed_lists_replace() {
        let s = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}], "externalIPs": ["1.1.1.1"]}});
        let out = smp(
            "Service",
            s,
            json!({"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443}], "externalIPs": ["2.2.2.2"]}}),
        );
        assert_eq!(
            out["spec"]["ports"][0],
            json!({"port": 80, "targetPort": 8080, "name": "http"})
        );
        assert_eq!(out["spec"]["ports"][1], json!({"port": 443}));
        assert_eq!(out["spec"]["externalIPs"], json!(["2.2.2.2"]));
    }

    #[test]
    fn json_and_merge_patches() {
        let o = json!({"spec": {"replicas": 1, "x": [1, 2]}});
        let j = apply(
            PatchType::Json,
            "Deployment",
            &o,
            br#"[{"op":"replace","path":"/spec/replicas","value":3}]"#,
        )
        .unwrap();
        assert_eq!(j["spec"]["replicas"], 3);
        assert!(
            apply(
                PatchType::Json,
                "Deployment",
                &o,
                br#"[{"op":"test","path":"/spec/replicas","value":9}]"#
            )
            .is_err()
        );
        let m = apply(PatchType::Merge, "Deployment", &o, br#"{"spec":{"x":[3]}}"#).unwrap();
        assert_eq!(m["spec"]["x"], json!([3]));
        assert!(apply(PatchType::Merge, "Deployment", &o, b"{bad").is_err());
    }
}
