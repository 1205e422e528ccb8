//! The OpenAPI documents `kubectl explain` reads: v3 (`/openapi/v3` and one
//! document per group-version) and v2 (`/openapi/v2`, for clients that still
//! ask for it). The schemas are generated from `k8s-openapi`'s types (their
//! `schemars` implementations carry the upstream descriptions), named as
//! upstream names them (`io.k8s.api.core.v1.Pod`) and tagged with
//! `x-kubernetes-group-version-kind`, so nothing here is written by hand.
//! Every document is rendered once and kept.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use k8s_openapi::schemars::JsonSchema;
use k8s_openapi::schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value, json};

use crate::api::ApiError;
use crate::discovery;
use crate::resources::GROUPS;

/// A rendered document and its hash (the `hash` of its `serverRelativeURL`).
#[derive(Debug)]
pub struct Doc {
    /// The JSON body.
    pub body: Bytes,
    /// Hex digest of `body`, also its ETag.
    pub hash: String,
}

/// The rendered documents, made at first use.
struct Docs {
    /// `api/v1`, `apis/apps/v1`, ... → the v3 document.
    v3: BTreeMap<String, Doc>,
    /// The v3 discovery document (`/openapi/v3`).
    v3_root: Bytes,
    /// The v2 (Swagger 2.0) document.
    v2: Doc,
}

static DOCS: OnceLock<Docs> = OnceLock::new();

fn docs() -> &'static Docs {
    DOCS.get_or_init(render)
}

/// The kinds of one group with their schema names, registered in `g`.
fn register(group: &str, g: &mut SchemaGenerator) -> Vec<(String, String, &'static str)> {
    use k8s_openapi::api::{
        apps::v1 as apps, authentication::v1 as authn, authorization::v1 as authz,
        autoscaling::v1 as autoscaling, batch::v1 as batch, coordination::v1 as coord,
        core::v1 as core, discovery::v1 as disc, events::v1 as events, networking::v1 as net,
        rbac::v1 as rbac,
    };
    let mut out = Vec::new();
    macro_rules! kinds {
        ($($t:ty),* $(,)?) => {{
            $(
                let _ = g.subschema_for::<$t>();
                let name = <$t as JsonSchema>::schema_name().into_owned();
                let kind = name.rsplit('.').next().unwrap_or_default().to_string();
                out.push((name, kind, group_of::<$t>(group)));
            )*
        }};
    }
    match group {
        "" => kinds!(
            core::Namespace,
            core::Node,
            core::Pod,
            core::Service,
            core::Endpoints,
            core::ConfigMap,
            core::Secret,
            core::ServiceAccount,
            core::Event,
            core::Binding,
            autoscaling::Scale,
            authn::TokenRequest,
        ),
        "apps" => kinds!(
            apps::Deployment,
            apps::ReplicaSet,
            apps::DaemonSet,
            apps::StatefulSet,
            autoscaling::Scale,
        ),
        "batch" => kinds!(batch::Job, batch::CronJob),
        "rbac.authorization.k8s.io" => kinds!(
            rbac::Role,
            rbac::ClusterRole,
            rbac::RoleBinding,
            rbac::ClusterRoleBinding,
        ),
        "discovery.k8s.io" => kinds!(disc::EndpointSlice),
        "networking.k8s.io" => kinds!(net::NetworkPolicy),
        "coordination.k8s.io" => kinds!(coord::Lease),
        "events.k8s.io" => kinds!(events::Event),
        "authentication.k8s.io" => kinds!(authn::TokenReview, authn::SelfSubjectReview),
        "authorization.k8s.io" => kinds!(
            authz::SubjectAccessReview,
            authz::LocalSubjectAccessReview,
            authz::SelfSubjectAccessReview,
            authz::SelfSubjectRulesReview,
        ),
        _ => {}
    }
    out
}

/// The API group a k8s-openapi type belongs to (its `GROUP` constant), or
/// the document's own group when the type is not a resource.
fn group_of<T: JsonSchema>(fallback: &str) -> &'static str {
    let name = T::schema_name();
    // io.k8s.api.<pkg>.v1.<Kind>: the package names its group.
    let pkg = name.split('.').nth(3).unwrap_or("");
    match pkg {
        "core" => "",
        "apps" => "apps",
        "batch" => "batch",
        "autoscaling" => "autoscaling",
        "rbac" => "rbac.authorization.k8s.io",
        "discovery" => "discovery.k8s.io",
        "networking" => "networking.k8s.io",
        "coordination" => "coordination.k8s.io",
        "events" => "events.k8s.io",
        "authentication" => "authentication.k8s.io",
        "authorization" => "authorization.k8s.io",
        _ => GROUPS.iter().find(|g| **g == fallback).copied().unwrap_or(""),
    }
}

/// The schemas of one group-version, OpenAPI v3 shaped, with every served
/// kind tagged with its group-version-kind.
fn schemas(group: &str, settings: SchemaSettings) -> Map<String, Value> {
    let mut g = settings.into_generator();
    let kinds = register(group, &mut g);
    let mut defs = g.take_definitions(true);
    for (name, kind, grp) in kinds {
        if let Some(s) = defs.get_mut(&name).and_then(Value::as_object_mut) {
            s.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": grp, "kind": kind, "version": "v1"}]),
            );
        }
    }
    defs
}

/// FNV-1a, 64 bits, twice with different offsets: a stable content hash for
/// cache keys (not for security).
fn digest(b: &[u8]) -> String {
    let h = |mut x: u64| {
        for c in b {
            x ^= u64::from(*c);
            x = x.wrapping_mul(0x100_0000_01b3);
        }
        x
    };
    format!(
        "{:016X}{:016X}",
        h(0xcbf2_9ce4_8422_2325),
        h(0x8422_2325_cbf2_9ce4)
    )
}

fn doc(v: &Value) -> Doc {
    let body = serde_json::to_vec(v).expect("json");
    Doc {
        hash: digest(&body),
        body: Bytes::from(body),
    }
}

fn render() -> Docs {
    let _span = tracing::debug_span!("openapi_render").entered();
    let mut v3 = BTreeMap::new();
    let mut all = Map::new();
    for g in GROUPS {
        let key = discovery::gv_key(g);
        let mut d = discovery::openapi_v3_doc(&key).expect("served group");
        let defs = schemas(g, SchemaSettings::openapi3());
        d["components"] = json!({"schemas": defs});
        v3.insert(key, doc(&d));
        let v2defs = schemas(
            g,
            // Swagger 2.0: `$ref` with sibling descriptions, no `nullable`.
            SchemaSettings::openapi3().with(|s| {
                s.definitions_path = "/definitions".into();
                s.transforms.clear();
            }),
        );
        all.extend(v2defs);
    }
    let mut paths = Map::new();
    for (key, d) in &v3 {
        paths.insert(
            key.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={}", d.hash)}),
        );
    }
    let v3_root = Bytes::from(serde_json::to_vec(&json!({"paths": paths})).expect("json"));
    let v2 = doc(&json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": discovery::GIT_VERSION},
        "paths": {},
        "definitions": all,
    }));
    tracing::debug!(documents = v3.len(), "openapi documents rendered");
    Docs { v3, v3_root, v2 }
}

/// `/openapi/v3`.
pub fn v3_root() -> Bytes {
    docs().v3_root.clone()
}

/// `/openapi/v3/<key>` (`api/v1`, `apis/apps/v1`, ...).
pub fn v3_doc(key: &str) -> Option<&'static Doc> {
    docs().v3.get(key)
}

/// `/openapi/v2`.
pub fn v2_doc() -> &'static Doc {
    &docs().v2
}

fn json_body(body: Bytes, etag: Option<&str>) -> Response {
    let mut r = Response::new(Body::from(body));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(tag) = etag.and_then(|t| HeaderValue::from_str(&format!("\"{t}\"")).ok()) {
        h.insert(header::ETAG, tag);
        // The URL names the content (`?hash=`): it never changes.
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, immutable"),
        );
    }
    r
}

/// The `/openapi/v3` response.
pub fn v3_root_response() -> Response {
    json_body(v3_root(), None)
}

/// A v3 document's response; `304` when the client has it (`If-None-Match`).
pub fn doc_response(d: &'static Doc, headers: &HeaderMap) -> Response {
    let tag = format!("\"{}\"", d.hash);
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag))
    {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        return r;
    }
    json_body(d.body.clone(), Some(&d.hash))
}

/// `/openapi/v2`: JSON when the client accepts it. kubectl asks for the
/// gnostic protobuf encoding only, which is not served: `406`, as from a
/// server without it, and kubectl falls back to its built-in types.
pub fn v2_response(headers: &HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("*/*");
    let json_ok = accept.split(',').any(|a| {
        let m = a.split(';').next().unwrap_or("").trim();
        matches!(m, "application/json" | "*/*" | "application/*")
    });
    if json_ok {
        return doc_response(v2_doc(), headers);
    }
    ApiError::new(
        406,
        "NotAcceptable",
        format!("only the following media types are accepted: application/json (asked for {accept})"),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_schema_is_named_tagged_and_described() {
        let d: Value = serde_json::from_slice(&v3_doc("api/v1").unwrap().body).unwrap();
        let pod = &d["components"]["schemas"]["io.k8s.api.core.v1.Pod"];
        assert_eq!(pod["x-kubernetes-group-version-kind"][0]["kind"], "Pod");
        assert!(
            pod["description"]
                .as_str()
                .unwrap()
                .contains("collection of containers")
        );
        let spec = serde_json::to_string(&pod["properties"]["spec"]).unwrap();
        assert!(
            spec.contains("#/components/schemas/io.k8s.api.core.v1.PodSpec"),
            "{spec}"
        );
        assert!(
            d["components"]["schemas"]["io.k8s.api.core.v1.Container"]["properties"]["image"]
                .is_object()
        );
        let root: Value = serde_json::from_slice(&v3_root()).unwrap();
        let url = root["paths"]["apis/apps/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap();
        assert!(url.ends_with(&v3_doc("apis/apps/v1").unwrap().hash));
        let v2: Value = serde_json::from_slice(&v2_doc().body).unwrap();
        let np = &v2["definitions"]["io.k8s.api.networking.v1.NetworkPolicy"];
        assert_eq!(np["x-kubernetes-group-version-kind"][0]["group"], "networking.k8s.io");
        assert!(
            serde_json::to_string(np)
                .unwrap()
                .contains("#/definitions/io.k8s.api.networking.v1.NetworkPolicySpec")
        );
    }
}
