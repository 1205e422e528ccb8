//! Discovery (`/api`, `/apis`, group-versions, aggregated discovery v2),
//! `/version`, and the OpenAPI v3 documents kubectl reads to learn that the
//! server validates fields itself (so `kubectl apply`/`create` need no
//! `--validate=false`).

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

use crate::api::json_response;
use crate::resources::{GROUPS, RESOURCES, Resource, sub_verbs};

/// The Kubernetes version this server speaks.
pub const GIT_VERSION: &str = "v1.33.0-podnet";

/// `/version`.
pub fn version() -> Value {
    json!({"major": "1", "minor": "33", "gitVersion": GIT_VERSION, "gitCommit": "podnet", "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24.0", "compiler": "gc", "platform": "linux/amd64"})
}

fn group_resources(group: &str) -> impl Iterator<Item = &'static Resource> + '_ {
    RESOURCES.iter().filter(move |r| r.group == group)
}

fn categories(r: &Resource) -> Vec<&'static str> {
    if r.in_all { vec!["all"] } else { vec![] }
}

/// `/api/v1` or `/apis/<g>/v1` as an APIResourceList.
pub fn resource_list(group: &str) -> Option<Value> {
    if !GROUPS.contains(&group) {
        return None;
    }
    let mut out = Vec::new();
    for r in group_resources(group) {
        let mut e = json!({"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind, "verbs": r.verbs});
        if !r.short_names.is_empty() {
            e["shortNames"] = json!(r.short_names);
        }
        if r.in_all {
            e["categories"] = json!(categories(r));
        }
        out.push(e);
        for sub in r.subresources {
            let (kind, g, v) = sub_kind(r, sub);
            let mut s = json!({"name": format!("{}/{}", r.plural, sub), "singularName": "", "namespaced": r.namespaced, "kind": kind, "verbs": sub_verbs(sub)});
            if !g.is_empty() {
                s["group"] = json!(g);
                s["version"] = json!(v);
            }
            out.push(s);
        }
    }
    let gv = if group.is_empty() {
        "v1".to_string()
    } else {
        format!("{group}/v1")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out}),
    )
}

fn sub_kind(r: &Resource, sub: &str) -> (&'static str, &'static str, &'static str) {
    match sub {
        "scale" => ("Scale", "autoscaling", "v1"),
        "token" => ("TokenRequest", "authentication.k8s.io", "v1"),
        "binding" => ("Binding", "", ""),
        "log" | "exec" | "attach" | "portforward" => (
            match sub {
                "log" => "Pod",
                "exec" => "PodExecOptions",
                "portforward" => "PodPortForwardOptions",
                _ => "PodAttachOptions",
            },
            "",
            "",
        ),
        _ => (r.kind, "", ""),
    }
}

/// `/api` (APIVersions).
pub fn api_versions(server: &str) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}]})
}

/// `/apis` (APIGroupList).
pub fn group_list() -> Value {
    let groups: Vec<Value> = GROUPS
        .iter()
        .filter(|g| !g.is_empty())
        .map(|g| {
            let gv = json!({"groupVersion": format!("{g}/v1"), "version": "v1"});
            json!({"name": g, "versions": [gv], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<g>` (APIGroup).
pub fn group(name: &str) -> Option<Value> {
    if name.is_empty() || !GROUPS.contains(&name) {
        return None;
    }
    let gv = json!({"groupVersion": format!("{name}/v1"), "version": "v1"});
    Some(
        json!({"kind": "APIGroup", "apiVersion": "v1", "name": name, "versions": [gv], "preferredVersion": gv}),
    )
}

/// The aggregated discovery media type kubectl 1.30+ asks for.
pub const AGGREGATED_V2: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether the client accepts aggregated discovery v2.
pub fn wants_aggregated(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| {
            a.split(',').any(|p| {
                p.contains("g=apidiscovery.k8s.io") && p.contains("v=v2;")
                    || p.trim().ends_with("v=v2") && p.contains("apidiscovery")
                    || p.contains("v=v2;as=APIGroupDiscoveryList")
            })
        })
}

fn aggregated_group(group: &str) -> Value {
    let resources: Vec<Value> = group_resources(group)
        .map(|r| {
            let subs: Vec<Value> = r
                .subresources
                .iter()
                .map(|s| {
                    let (kind, g, v) = sub_kind(r, s);
                    let (g, v) = if kind == r.kind || g.is_empty() { (r.group, r.version) } else { (g, v) };
                    json!({"subresource": s, "responseKind": {"group": g, "version": v, "kind": kind}, "verbs": sub_verbs(s)})
                })
                .collect();
            let mut e = json!({"resource": r.plural, "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                "scope": if r.namespaced { "Namespaced" } else { "Cluster" }, "singularResource": r.singular, "verbs": r.verbs});
            if !r.short_names.is_empty() {
                e["shortNames"] = json!(r.short_names);
            }
            if r.in_all {
                e["categories"] = json!(categories(r));
            }
            if !subs.is_empty() {
                e["subresources"] = json!(subs);
            }
            e
        })
        .collect();
    let mut meta = json!({"creationTimestamp": null});
    if !group.is_empty() {
        meta["name"] = json!(group);
    }
    json!({"metadata": meta, "versions": [{"version": "v1", "resources": resources, "freshness": "Current"}]})
}

/// Aggregated discovery of `/api` (core) or `/apis` (all other groups).
pub fn aggregated(core: bool) -> Response {
    let items: Vec<Value> = if core {
        vec![aggregated_group("")]
    } else {
        GROUPS
            .iter()
            .filter(|g| !g.is_empty())
            .map(|g| aggregated_group(g))
            .collect()
    };
    let v = json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items});
    let mut r = json_response(StatusCode::OK, &v);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(AGGREGATED_V2),
    );
    r
}

/// The key of a group's OpenAPI v3 document (`api/v1`, `apis/apps/v1`).
pub fn gv_key(group: &str) -> String {
    if group.is_empty() {
        "api/v1".into()
    } else {
        format!("apis/{group}/v1")
    }
}

fn params(names: &[&str]) -> Vec<Value> {
    names.iter().map(|n| json!({"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": true}})).collect()
}

/// `/openapi/v3/<api/v1 | apis/g/v1>`: the operations this server serves,
/// with their query parameters, tagged with their group-version-kind.
pub fn openapi_v3_doc(key: &str) -> Option<Value> {
    let group = GROUPS.iter().find(|g| gv_key(g) == key)?;
    let mut paths = serde_json::Map::new();
    let ok = json!({"200": {"description": "OK"}, "401": {"description": "Unauthorized"}});
    for r in group_resources(group) {
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let base = if r.namespaced {
            format!("{}/namespaces/{{namespace}}/{}", r.gv_path(), r.plural)
        } else {
            format!("{}/{}", r.gv_path(), r.plural)
        };
        let op = |action: &str, p: &[&str], g: &Value| json!({"x-kubernetes-action": action, "x-kubernetes-group-version-kind": g, "parameters": params(p), "responses": ok, "operationId": format!("{action}{}", r.kind)});
        if !r.verbs.contains(&"get") {
            // A review: created and answered, never stored.
            paths.insert(
                base,
                json!({"post": op("post", &["dryRun", "fieldManager", "fieldValidation"], &gvk)}),
            );
            continue;
        }
        paths.insert(
            base.clone(),
            json!({
                "get": op("list", &["labelSelector", "fieldSelector", "limit", "continue", "resourceVersion", "timeoutSeconds", "watch", "allowWatchBookmarks", "sendInitialEvents"], &gvk),
                "post": op("post", &["dryRun", "fieldManager", "fieldValidation"], &gvk),
                "delete": op("deletecollection", &["labelSelector", "fieldSelector", "dryRun", "gracePeriodSeconds", "propagationPolicy"], &gvk),
            }),
        );
        paths.insert(
            format!("{base}/{{name}}"),
            json!({
                "get": op("get", &[], &gvk),
                "put": op("put", &["dryRun", "fieldManager", "fieldValidation"], &gvk),
                "patch": op("patch", &["dryRun", "fieldManager", "fieldValidation", "force"], &gvk),
                "delete": op("delete", &["dryRun", "gracePeriodSeconds", "propagationPolicy"], &gvk),
            }),
        );
        for sub in r.subresources {
            let g = match *sub {
                "scale" => json!({"group": "autoscaling", "version": "v1", "kind": "Scale"}),
                "token" => {
                    json!({"group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest"})
                }
                _ => gvk.clone(),
            };
            let mut item = serde_json::Map::new();
            for verb in sub_verbs(sub) {
                let (m, a, p): (&str, &str, &[&str]) = match *verb {
                    "get" => ("get", "get", &[]),
                    "patch" => (
                        "patch",
                        "patch",
                        &["dryRun", "fieldManager", "fieldValidation", "force"],
                    ),
                    "update" => ("put", "put", &["dryRun", "fieldManager", "fieldValidation"]),
                    "create" if *sub == "token" || *sub == "binding" => (
                        "post",
                        "post",
                        &["dryRun", "fieldManager", "fieldValidation"],
                    ),
                    "create" => (
                        "post",
                        "connect",
                        &["dryRun", "fieldManager", "fieldValidation"],
                    ),
                    _ => continue,
                };
                item.insert(m.into(), op(a, p, &g));
            }
            paths.insert(format!("{base}/{{name}}/{sub}"), Value::Object(item));
        }
    }
    Some(
        json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": GIT_VERSION}, "paths": paths, "components": {}}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_patch_operation_names_field_validation() {
        for g in GROUPS {
            let doc = openapi_v3_doc(&gv_key(g)).unwrap();
            for (path, item) in doc["paths"].as_object().unwrap() {
                if let Some(p) = item.get("patch") {
                    assert!(
                        p["parameters"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|x| x["name"] == "fieldValidation"),
                        "{path}"
                    );
                    assert!(p["x-kubernetes-group-version-kind"]["kind"].is_string());
                }
            }
        }
    }
}
