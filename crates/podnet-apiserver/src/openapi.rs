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

/// The v2 document as gnostic's `openapi.v2.Document` protobuf
/// (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`), the only
/// encoding kubectl asks `/openapi/v2` for. Only what a schema lookup needs
/// is encoded: `swagger`, `info` and `definitions`.
mod pb {
    use serde_json::{Map, Value};

    fn varint(out: &mut Vec<u8>, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    fn bytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
        varint(out, field << 3 | 2);
        varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }
    fn string(out: &mut Vec<u8>, field: u64, s: &str) {
        bytes(out, field, s.as_bytes());
    }
    fn boolean(out: &mut Vec<u8>, field: u64, v: bool) {
        if v {
            varint(out, field << 3);
            varint(out, 1);
        }
    }
    fn int(out: &mut Vec<u8>, field: u64, v: i64) {
        varint(out, field << 3);
        varint(out, v as u64);
    }
    fn double(out: &mut Vec<u8>, field: u64, v: f64) {
        varint(out, field << 3 | 1);
        out.extend_from_slice(&v.to_le_bytes());
    }
    /// `Any{yaml}`: JSON is YAML.
    fn any(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        string(&mut out, 2, &v.to_string());
        out
    }
    fn named(name: &str, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        string(&mut out, 1, name);
        bytes(&mut out, 2, value);
        out
    }

    /// `openapi.v2.Schema`.
    fn schema(s: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        let Some(m) = s.as_object() else {
            return out;
        };
        let str_field = |out: &mut Vec<u8>, f: u64, k: &str| {
            if let Some(v) = m.get(k).and_then(Value::as_str) {
                string(out, f, v);
            }
        };
        str_field(&mut out, 1, "$ref");
        str_field(&mut out, 2, "format");
        str_field(&mut out, 3, "title");
        str_field(&mut out, 4, "description");
        if let Some(d) = m.get("default") {
            bytes(&mut out, 5, &any(d));
        }
        for (f, k) in [(6, "multipleOf"), (7, "maximum"), (9, "minimum")] {
            if let Some(v) = m.get(k).and_then(Value::as_f64) {
                double(&mut out, f, v);
            }
        }
        for (f, k) in [
            (8, "exclusiveMaximum"),
            (10, "exclusiveMinimum"),
            (16, "uniqueItems"),
            (27, "readOnly"),
        ] {
            if let Some(v) = m.get(k).and_then(Value::as_bool) {
                boolean(&mut out, f, v);
            }
        }
        for (f, k) in [
            (11, "maxLength"),
            (12, "minLength"),
            (14, "maxItems"),
            (15, "minItems"),
            (17, "maxProperties"),
            (18, "minProperties"),
        ] {
            if let Some(v) = m.get(k).and_then(Value::as_i64) {
                int(&mut out, f, v);
            }
        }
        str_field(&mut out, 13, "pattern");
        for r in m
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(r) = r.as_str() {
                string(&mut out, 19, r);
            }
        }
        for e in m
            .get("enum")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            bytes(&mut out, 20, &any(e));
        }
        match m.get("additionalProperties") {
            Some(Value::Bool(b)) => {
                let mut item = Vec::new();
                varint(&mut item, 2 << 3);
                varint(&mut item, u64::from(*b));
                bytes(&mut out, 21, &item);
            }
            Some(v @ Value::Object(_)) => {
                let mut item = Vec::new();
                bytes(&mut item, 1, &schema(v));
                bytes(&mut out, 21, &item);
            }
            _ => {}
        }
        let types: Vec<&str> = match m.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .filter(|t| *t != "null")
                .collect(),
            _ => vec![],
        };
        if !types.is_empty() {
            let mut item = Vec::new();
            for t in types {
                string(&mut item, 1, t);
            }
            bytes(&mut out, 22, &item);
        }
        if let Some(items) = m.get("items") {
            let mut item = Vec::new();
            match items {
                Value::Array(a) => a.iter().for_each(|i| bytes(&mut item, 1, &schema(i))),
                i => bytes(&mut item, 1, &schema(i)),
            }
            bytes(&mut out, 23, &item);
        }
        for a in m
            .get("allOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            bytes(&mut out, 24, &schema(a));
        }
        if let Some(props) = m.get("properties").and_then(Value::as_object) {
            bytes(&mut out, 25, &named_schemas(props));
        }
        for (k, v) in m.iter().filter(|(k, _)| k.starts_with("x-")) {
            bytes(&mut out, 31, &named(k, &any(v)));
        }
        out
    }

    /// `Properties`/`Definitions`: repeated `NamedSchema` as field 1.
    fn named_schemas(m: &Map<String, Value>) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in m {
            bytes(&mut out, 1, &named(k, &schema(v)));
        }
        out
    }

    /// `openapi.v2.Document`.
    pub fn document(title: &str, version: &str, defs: &Map<String, Value>) -> Vec<u8> {
        let mut out = Vec::new();
        string(&mut out, 1, "2.0");
        let mut info = Vec::new();
        string(&mut info, 1, title);
        string(&mut info, 2, version);
        bytes(&mut out, 2, &info);
        bytes(&mut out, 9, &named_schemas(defs));
        out
    }
}

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
    /// The v2 document as protobuf.
    v2_pb: Doc,
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
        _ => GROUPS
            .iter()
            .find(|g| **g == fallback)
            .copied()
            .unwrap_or(""),
    }
}

/// Upstream's strategic-merge-patch markers (`x-kubernetes-patch-strategy`,
/// `x-kubernetes-patch-merge-key`) on the fields that have them: kubectl's
/// client-side apply reads them from `/openapi/v2` to compute its patches,
/// so they must say what its built-in types say.
const PATCH_META: &[(&str, &str, &str, Option<&str>)] = &[
    (
        "io.k8s.api.core.v1.PodSpec",
        "containers",
        "merge",
        Some("name"),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "initContainers",
        "merge",
        Some("name"),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "ephemeralContainers",
        "merge",
        Some("name"),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "volumes",
        "merge,retainKeys",
        Some("name"),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "imagePullSecrets",
        "merge",
        Some("name"),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "hostAliases",
        "merge",
        Some("ip"),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "topologySpreadConstraints",
        "merge",
        Some("topologyKey"),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "resourceClaims",
        "merge,retainKeys",
        Some("name"),
    ),
    (
        "io.k8s.api.core.v1.Container",
        "ports",
        "merge",
        Some("containerPort"),
    ),
    ("io.k8s.api.core.v1.Container", "env", "merge", Some("name")),
    (
        "io.k8s.api.core.v1.Container",
        "volumeMounts",
        "merge",
        Some("mountPath"),
    ),
    (
        "io.k8s.api.core.v1.Container",
        "volumeDevices",
        "merge",
        Some("devicePath"),
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "env",
        "merge",
        Some("name"),
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeMounts",
        "merge",
        Some("mountPath"),
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeDevices",
        "merge",
        Some("devicePath"),
    ),
    (
        "io.k8s.api.core.v1.ServiceSpec",
        "ports",
        "merge",
        Some("port"),
    ),
    (
        "io.k8s.api.core.v1.PodStatus",
        "conditions",
        "merge",
        Some("type"),
    ),
    (
        "io.k8s.api.core.v1.NodeStatus",
        "conditions",
        "merge",
        Some("type"),
    ),
    (
        "io.k8s.api.core.v1.NodeStatus",
        "addresses",
        "merge",
        Some("type"),
    ),
    (
        "io.k8s.api.apps.v1.DeploymentSpec",
        "strategy",
        "retainKeys",
        None,
    ),
    (
        "io.k8s.api.apps.v1.DeploymentStatus",
        "conditions",
        "merge",
        Some("type"),
    ),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "ownerReferences",
        "merge",
        Some("uid"),
    ),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "finalizers",
        "merge",
        None,
    ),
];

/// The schemas of one group-version, OpenAPI v3 shaped, with every served
/// kind tagged with its group-version-kind.
fn schemas(group: &str, settings: SchemaSettings) -> Map<String, Value> {
    let mut g = settings.into_generator();
    let kinds = register(group, &mut g);
    let mut defs = g.take_definitions(true);
    for (def, field, strategy, key) in PATCH_META {
        if let Some(p) = defs
            .get_mut(*def)
            .and_then(|d| d.get_mut("properties"))
            .and_then(|p| p.get_mut(*field))
            .and_then(Value::as_object_mut)
        {
            p.insert("x-kubernetes-patch-strategy".into(), json!(strategy));
            if let Some(k) = key {
                p.insert("x-kubernetes-patch-merge-key".into(), json!(k));
            }
        }
    }
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
    let pb = Bytes::from(pb::document("Kubernetes", discovery::GIT_VERSION, &all));
    let v2_pb = Doc {
        hash: digest(&pb),
        body: pb,
    };
    let v2 = doc(&json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": discovery::GIT_VERSION},
        "paths": {},
        "definitions": all,
    }));
    tracing::debug!(documents = v3.len(), "openapi documents rendered");
    Docs {
        v3,
        v3_root,
        v2,
        v2_pb,
    }
}

/// Renders every document now, so that the first client does not wait.
pub fn warm() {
    let _ = docs();
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

/// A JSON body; with an ETag, and marked immutable when its URL names its
/// content (`?hash=`).
fn json_body(body: Bytes, etag: Option<&str>, immutable: bool) -> Response {
    let mut r = Response::new(Body::from(body));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(tag) = etag.and_then(|t| HeaderValue::from_str(&format!("\"{t}\"")).ok()) {
        h.insert(header::ETAG, tag);
        h.insert(header::VARY, HeaderValue::from_static("Accept"));
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(if immutable {
                "public, immutable"
            } else {
                "no-cache"
            }),
        );
    }
    r
}

/// The `/openapi/v3` response.
pub fn v3_root_response() -> Response {
    json_body(v3_root(), None, false)
}

/// A v3 document's response; `304` when the client has it (`If-None-Match`).
pub fn doc_response(d: &'static Doc, headers: &HeaderMap) -> Response {
    doc_response_with(d, headers, true)
}

fn doc_response_with(d: &'static Doc, headers: &HeaderMap, immutable: bool) -> Response {
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
    json_body(d.body.clone(), Some(&d.hash), immutable)
}

/// The media type of the v2 document as protobuf (the one kube-apiserver
/// answers with; clients may also ask for the older `...spec.v2@v1.0+protobuf`,
/// which Go's MIME parser cannot read back).
pub const V2_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";
const V2_PROTOBUF_OLD: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";

/// `/openapi/v2`: protobuf when asked for (kubectl asks for nothing else),
/// else JSON; `406` for anything else.
pub fn v2_response(headers: &HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("*/*");
    if accept.split(',').any(|a| {
        matches!(
            a.split(';').next().unwrap_or("").trim(),
            V2_PROTOBUF | V2_PROTOBUF_OLD
        )
    }) {
        let d = &docs().v2_pb;
        let mut r = doc_response_with(d, headers, false);
        if r.status() == StatusCode::OK {
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(V2_PROTOBUF));
        }
        return r;
    }
    let json_ok = accept.split(',').any(|a| {
        let m = a.split(';').next().unwrap_or("").trim();
        matches!(m, "application/json" | "*/*" | "application/*")
    });
    if json_ok {
        return doc_response_with(v2_doc(), headers, false);
    }
    ApiError::new(
        406,
        "NotAcceptable",
        format!("only the following media types are accepted: application/json, {V2_PROTOBUF} (asked for {accept})"),
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
        assert_eq!(
            np["x-kubernetes-group-version-kind"][0]["group"],
            "networking.k8s.io"
        );
        assert!(
            serde_json::to_string(np)
                .unwrap()
                .contains("#/definitions/io.k8s.api.networking.v1.NetworkPolicySpec")
        );
    }
}
