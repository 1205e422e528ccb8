//! The REST layer: routes `/api/v1/...` and `/apis/<group>/<version>/...`
//! requests to the verbs (get, list, watch, create, update, patch, delete,
//! deletecollection) over the store, with kube-apiserver's status codes and
//! `Status` bodies.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::kinds::{self, FieldError};
use crate::managed::{self, Scope};
use crate::patch::{self, PatchType};
use crate::resources::{self, Resource};
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{Change, Event, EventType, Obj, Store, StoreError, StoreTxn};
use crate::table;

/// The largest request body accepted (kube-apiserver's limit).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// How long an Event lives after its last update (kube-apiserver's
/// `--event-ttl` default).
pub const EVENT_TTL: Duration = Duration::from_secs(3600);

/// An API error, rendered as a `Status` object.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// Status reason ("NotFound", "Invalid", ...).
    pub reason: &'static str,
    /// Human message, as kubectl prints it after "Error from server (Reason): ".
    pub message: String,
    /// Status details (name, kind, causes).
    pub details: Option<Value>,
}

impl ApiError {
    /// A new error without details.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }
    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }
    /// 404 for an object.
    pub fn not_found(res: &Resource, name: &str) -> ApiError {
        let mut e = ApiError::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", qualified(res)),
        );
        e.details = Some(json!({"name": name, "group": res.group, "kind": res.plural}));
        e
    }
    fn exists(res: &Resource, name: &str) -> ApiError {
        let mut e = ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", qualified(res)),
        );
        e.details = Some(json!({"name": name, "group": res.group, "kind": res.plural}));
        e
    }
    fn conflict(res: &Resource, name: &str, why: &str) -> ApiError {
        let mut e = ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                qualified(res)
            ),
        );
        e.details = Some(json!({"name": name, "group": res.group, "kind": res.plural}));
        e
    }
    /// 422 Invalid with one cause per field.
    pub fn invalid(kind: &str, group: &str, name: &str, errs: &[FieldError]) -> ApiError {
        let texts: Vec<String> = errs.iter().map(FieldError::text).collect();
        let joined = if texts.len() == 1 {
            texts[0].clone()
        } else {
            format!("[{}]", texts.join(", "))
        };
        let causes: Vec<Value> = errs
            .iter()
            .map(|e| json!({"reason": e.reason, "message": e.message, "field": e.field}))
            .collect();
        let qualified = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let mut e = ApiError::new(
            422,
            "Invalid",
            format!("{qualified} \"{name}\" is invalid: {joined}"),
        );
        e.details = Some(json!({"name": name, "group": group, "kind": kind, "causes": causes}));
        e
    }
    /// 401.
    pub fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }
    /// The `Status` object.
    pub fn status(&self) -> Value {
        let mut s = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code});
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Db(m) => ApiError::new(
                500,
                "InternalError",
                format!("Internal error occurred: {m}"),
            ),
            other => ApiError::new(500, "InternalError", other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(
            StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &self.status(),
        )
    }
}

/// A boolean query parameter as kube-apiserver reads it (Go's
/// `strconv.ParseBool`): clients differ in spelling, e.g. the official
/// Python client sends `watch=True`. None when it is not a boolean.
pub(crate) fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Whether boolean query parameter `k` is present and true.
pub(crate) fn query_flag(q: &Query, k: &str) -> bool {
    q.get(k).and_then(|v| parse_bool(v)) == Some(true)
}

fn qualified(res: &Resource) -> String {
    if res.group.is_empty() {
        res.plural.to_string()
    } else {
        format!("{}.{}", res.plural, res.group)
    }
}

/// A JSON response.
pub fn json_response(code: StatusCode, v: &Value) -> Response {
    bytes_response(code, Bytes::from(serde_json::to_vec(v).expect("json")))
}

fn bytes_response(code: StatusCode, b: Bytes) -> Response {
    let mut r = Response::new(Body::from(b));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The request's query parameters.
pub type Query = HashMap<String, String>;

/// Parses a query string (percent-decoding, '+' as space).
pub fn parse_query(q: Option<&str>) -> Query {
    let mut out = HashMap::new();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(pct_decode(k), pct_decode(v));
    }
    out
}

/// Percent-decodes a query component ('+' as space).
pub fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where a request goes.
#[derive(Debug)]
pub struct Target {
    /// The resource.
    pub res: &'static Resource,
    /// Namespace in the URL.
    pub ns: Option<String>,
    /// Object name in the URL.
    pub name: Option<String>,
    /// Subresource.
    pub sub: Option<String>,
    /// Legacy `/watch/` path.
    pub watch_path: bool,
}

/// Parses an API path; Err(404) when it names nothing served.
pub fn route(path: &str) -> Result<Target, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => {
            return Err(ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ));
        }
    };
    let (watch_path, rest) = match rest {
        ["watch", r @ ..] => (true, r),
        r => (false, r),
    };
    let nf = || {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    };
    let find = |p: &str| resources::find(group, version, p);
    let t = match rest {
        ["namespaces", ns, plural, more @ ..] if find(plural).is_some_and(|r| r.namespaced) => {
            let res = find(plural).ok_or_else(nf)?;
            match more {
                [] => Target {
                    res,
                    ns: Some(ns.to_string()),
                    name: None,
                    sub: None,
                    watch_path,
                },
                [name] => Target {
                    res,
                    ns: Some(ns.to_string()),
                    name: Some(name.to_string()),
                    sub: None,
                    watch_path,
                },
                [name, sub] => Target {
                    res,
                    ns: Some(ns.to_string()),
                    name: Some(name.to_string()),
                    sub: Some(sub.to_string()),
                    watch_path,
                },
                _ => return Err(nf()),
            }
        }
        [plural] => Target {
            res: find(plural).ok_or_else(nf)?,
            ns: None,
            name: None,
            sub: None,
            watch_path,
        },
        [plural, name] => {
            let res = find(plural).ok_or_else(nf)?;
            if res.namespaced {
                return Err(nf());
            }
            Target {
                res,
                ns: None,
                name: Some(name.to_string()),
                sub: None,
                watch_path,
            }
        }
        [plural, name, sub] => {
            let res = find(plural).ok_or_else(nf)?;
            if res.namespaced {
                return Err(nf());
            }
            Target {
                res,
                ns: None,
                name: Some(name.to_string()),
                sub: Some(sub.to_string()),
                watch_path,
            }
        }
        _ => return Err(nf()),
    };
    if let Some(sub) = &t.sub
        && !t.res.subresources.contains(&sub.as_str())
    {
        return Err(nf());
    }
    Ok(t)
}

/// Settings of the API layer.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The service CIDR (ClusterIPs come from it).
    pub service_cidr: ipnet::Ipv4Net,
    /// NodePort range, inclusive.
    pub node_ports: (u16, u16),
    /// How long a deleted namespace keeps its contents before the namespace
    /// controller deletes them (a real one takes seconds to get there, and
    /// `kubectl delete -f` of a namespace and its objects relies on it).
    pub namespace_deletion_delay: Duration,
}

/// The API over a store.
pub struct Api {
    /// The store.
    pub store: Arc<Store>,
    /// Settings.
    pub cfg: ApiConfig,
    /// The cluster CA (PEM), published in every namespace's `kube-root-ca.crt`.
    pub ca_pem: String,
}

/// The ConfigMap every namespace gets with the cluster CA.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";

/// How the response should be shaped (from the Accept header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Plain objects.
    Object,
    /// meta.k8s.io Table.
    Table,
    /// PartialObjectMetadata(List).
    Metadata,
}

/// The shape an Accept header asks for.
pub fn shape(headers: &HeaderMap) -> Shape {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    for part in accept.split(',') {
        if part.contains("as=Table") && part.contains("g=meta.k8s.io") {
            return Shape::Table;
        }
        if part.contains("as=PartialObjectMetadata")
            && part.contains("g=meta.k8s.io")
            && part.contains("v=v1")
        {
            return Shape::Metadata;
        }
        let p = part.split(';').next().unwrap_or("").trim();
        if p == "application/json" || p == "*/*" || p == "application/*" {
            return Shape::Object;
        }
    }
    Shape::Object
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn new_uid() -> String {
    let b: [u8; 16] = rand::random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

fn random_suffix() -> String {
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHA[rand::random_range(0..ALPHA.len())] as char)
        .collect()
}

fn dry_run(q: &Query) -> Result<bool, ApiError> {
    match q.get("dryRun").map(String::as_str) {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(o) => Err(ApiError::bad_request(format!(
            "Invalid dryRun value: {o}: supported values: \"All\""
        ))),
    }
}

/// Decodes a request body (JSON or YAML) into a value.
pub fn decode_body(headers: &HeaderMap, body: &[u8], what: &str) -> Result<Value, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let ct = ct.split(';').next().unwrap_or("").trim();
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(format!(
            "{what}: the body of the request was empty"
        )));
    }
    let v: Value = match ct {
        "application/json" | "" | "*/*" => serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!(
                "{what}: couldn't get version/kind; json parse error: {e}"
            ))
        })?,
        "application/yaml" | "application/x-yaml" | "text/yaml" => {
            let s = std::str::from_utf8(body)
                .map_err(|e| ApiError::bad_request(format!("{what}: {e}")))?;
            serde_saphyr::from_str(s)
                .map_err(|e| ApiError::bad_request(format!("{what}: yaml: {e}")))?
        }
        "application/vnd.kubernetes.protobuf" => crate::protobuf::decode(body).map_err(|e| {
            ApiError::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "{what}: {e}; accepted media types include: application/json, application/yaml"
                ),
            )
        })?,
        other => {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {other})"
                ),
            ));
        }
    };
    if !v.is_object() {
        return Err(ApiError::bad_request(format!(
            "{what}: the body must be an object"
        )));
    }
    Ok(v)
}

/// Fills an object's missing `apiVersion` and `kind` from the resource it
/// was sent to, and refuses ones that name another (kube-apiserver's 400).
pub(crate) fn check_type(res: &Resource, obj: &mut Value) -> Result<(), ApiError> {
    let want_av = res.api_version();
    match obj["apiVersion"].as_str() {
        None | Some("") => obj["apiVersion"] = json!(want_av),
        Some(av) if av == want_av => {}
        Some(av) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({want_av})"
            )));
        }
    }
    match obj["kind"].as_str() {
        None | Some("") => obj["kind"] = json!(res.kind),
        Some(k) if k == res.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: the kind in the data ({k}) does not match the expected kind ({})",
                res.kind, res.version, res.kind, res.kind
            )));
        }
    }
    if !obj["metadata"].is_object() {
        if obj["metadata"].is_null() {
            obj["metadata"] = json!({});
        } else {
            return Err(ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: metadata must be an object",
                res.kind, res.version, res.kind
            )));
        }
    }
    Ok(())
}

/// Checks decoding (types, unknown fields) per the fieldValidation
/// directive; prunes unknown fields; returns the warnings to send.
fn field_validation(res: &Resource, q: &Query, obj: &mut Value) -> Result<Vec<String>, ApiError> {
    let mode = q
        .get("fieldValidation")
        .map(String::as_str)
        .unwrap_or("Warn");
    if !matches!(mode, "Strict" | "Warn" | "Ignore" | "") {
        return Err(ApiError::bad_request(format!(
            "fieldValidation parameter unsupported: {mode}"
        )));
    }
    *obj = kinds::quantities_as_strings(std::mem::take(obj));
    let typed_kind = if res.group == crate::events::GROUP {
        "events.k8s.io/Event"
    } else {
        res.kind
    };
    let typed = kinds::typed_view(typed_kind, obj).map_err(|e| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {e}",
            res.kind, res.version, res.kind
        ))
    })?;
    let unknown = kinds::unknown_fields(obj, &typed);
    if unknown.is_empty() {
        return Ok(Vec::new());
    }
    if mode == "Strict" {
        let list: Vec<String> = unknown
            .iter()
            .map(|u| format!("unknown field \"{u}\""))
            .collect();
        return Err(ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
            res.kind,
            res.version,
            res.kind,
            list.join(", ")
        )));
    }
    kinds::prune(obj, &unknown);
    if mode == "Ignore" {
        return Ok(Vec::new());
    }
    Ok(unknown
        .iter()
        .map(|u| format!("unknown field \"{u}\""))
        .collect())
}

/// Whether objects of `res` are stored in another version's form
/// (events.k8s.io Events are core/v1 Events).
fn converted(res: &Resource) -> bool {
    res.group == crate::events::GROUP
}

/// A stored object as `res` shows it.
fn external(res: &Resource, v: &Value) -> Value {
    if converted(res) {
        crate::events::from_core(v)
    } else {
        v.clone()
    }
}

/// A stored object's JSON as `res` shows it (the stored bytes when no
/// conversion is needed).
fn external_json(res: &Resource, o: &Obj) -> Bytes {
    if converted(res) {
        Bytes::from(serde_json::to_vec(&crate::events::from_core(&o.value)).expect("json"))
    } else {
        o.json.clone()
    }
}

/// A written object in its stored form.
fn internal(res: &Resource, v: Value) -> Value {
    if converted(res) {
        crate::events::to_core(&v)
    } else {
        v
    }
}

/// Rewrites a written object the way kube-apiserver's conversion does
/// before it is decoded as its type: a Secret's `stringData` is folded into
/// `data`, whose values must be base64 (a 422 naming `data[key]`).
fn prepare(res: &Resource, obj: &mut Value) -> Result<(), ApiError> {
    if res.kind == "Secret" {
        let errs = crate::secret::normalize(obj);
        if !errs.is_empty() {
            return Err(ApiError::invalid(res.kind, res.group, obj_name(obj), &errs));
        }
    }
    Ok(())
}

/// Who a write is recorded for in `managedFields`.
enum Manage {
    /// An update (create, PUT, PATCH other than apply) by this manager.
    Update(String),
    /// A server-side apply by this manager of this configuration.
    Apply(String, Value),
}

/// The manager of an update: `fieldManager`, else the user agent's
/// product (`kubectl`), as kube-apiserver defaults it.
fn field_manager(q: &Query, headers: &HeaderMap) -> String {
    match q.get("fieldManager") {
        Some(m) if !m.is_empty() => m.clone(),
        _ => managed::manager_from_user_agent(
            headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok()),
        ),
    }
}

/// The part of the object a write to `sub` may set.
fn scope(res: &Resource, sub: Option<&str>) -> Scope {
    match sub {
        Some("status") => Scope::Status,
        _ if res.has_status => Scope::NoStatus,
        _ => Scope::All,
    }
}

/// kube-apiserver's 409 for an apply that conflicts with other managers.
fn apply_conflict(e: managed::ApplyError) -> ApiError {
    let managed::ApplyError::Conflicts(cs) = &e;
    let causes: Vec<Value> = cs
        .iter()
        .map(|(m, p)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with {m}"), "field": p}))
        .collect();
    let mut err = ApiError::new(409, "Conflict", e.to_string());
    err.details = Some(json!({"causes": causes}));
    err
}

/// A 422 on the PATCH options (`PatchOptions.meta.k8s.io "" is invalid`).
fn patch_options_invalid(field: &str, reason: &'static str, message: &str) -> ApiError {
    let mut e = ApiError::new(
        422,
        "Invalid",
        format!("PatchOptions.meta.k8s.io \"\" is invalid: {field}: {message}"),
    );
    e.details = Some(json!({"group": "meta.k8s.io", "kind": "PatchOptions",
        "causes": [{"reason": reason, "message": message, "field": field}]}));
    e
}

/// Parses and checks a server-side apply configuration: `400` naming what
/// is wrong with it.
fn apply_config(res: &Resource, name: &str, body: &[u8]) -> Result<Value, ApiError> {
    let cfg = patch::parse_apply(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
    if !cfg.is_object() {
        return Err(ApiError::bad_request(
            "error decoding YAML: an apply configuration must be an object",
        ));
    }
    let kind = cfg["kind"].as_str().unwrap_or("");
    if kind.is_empty() {
        return Err(ApiError::bad_request(format!(
            "Object 'Kind' is missing in '{}'",
            serde_json::to_string(&cfg).unwrap_or_default()
        )));
    }
    let api_version = cfg["apiVersion"].as_str().unwrap_or("");
    if api_version != res.api_version() {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({})",
            res.api_version()
        )));
    }
    if kind != res.kind {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({kind}) does not match the expected kind ({})",
            res.kind
        )));
    }
    if !cfg["metadata"].is_object() && !cfg["metadata"].is_null() {
        return Err(ApiError::bad_request(
            "error decoding YAML: metadata must be an object",
        ));
    }
    if cfg["metadata"]["name"].as_str() != Some(name) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            cfg["metadata"]["name"].as_str().unwrap_or("")
        )));
    }
    Ok(cfg)
}

fn with_warnings(mut r: Response, warnings: &[String]) -> Response {
    for w in warnings {
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{}\"", w.replace('"', "\\\""))) {
            r.headers_mut().append("Warning", v);
        }
    }
    r
}

fn obj_name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or("")
}

/// Allocates a ClusterIP and NodePorts for a service under the write lock.
fn allocate_service(
    cfg: &ApiConfig,
    svc: &mut Value,
    old: Option<&Value>,
    txn: &StoreTxn,
) -> Result<(), ApiError> {
    let name = obj_name(svc).to_string();
    let mut used_ips = std::collections::HashSet::new();
    let mut used_ports = std::collections::HashSet::new();
    let me = (
        svc["metadata"]["namespace"].clone(),
        svc["metadata"]["name"].clone(),
    );
    for o in txn.all("services") {
        if (
            o.value["metadata"]["namespace"].clone(),
            o.value["metadata"]["name"].clone(),
        ) == me
        {
            continue;
        }
        if let Some(ip) = o.value["spec"]["clusterIP"].as_str() {
            used_ips.insert(ip.to_string());
        }
        for p in o.value["spec"]["ports"].as_array().into_iter().flatten() {
            if let Some(np) = p["nodePort"].as_i64() {
                used_ports.insert(np);
            }
        }
    }
    let ty = svc["spec"]["type"]
        .as_str()
        .unwrap_or("ClusterIP")
        .to_string();
    let old_ip = old
        .and_then(|o| o["spec"]["clusterIP"].as_str())
        .map(str::to_string);
    if ty == "ExternalName" {
        if let Some(m) = svc["spec"].as_object_mut() {
            m.remove("clusterIP");
            m.remove("clusterIPs");
        }
    } else {
        let want = svc["spec"]["clusterIP"].as_str().unwrap_or("").to_string();
        let ip = if want == "None" {
            "None".to_string()
        } else if !want.is_empty() {
            let addr: Ipv4Addr = want.parse().map_err(|_| {
                ApiError::invalid(
                    "Service",
                    "",
                    &name,
                    &[FieldError {
                        reason: "FieldValueInvalid",
                        field: "spec.clusterIPs[0]".into(),
                        message: format!("Invalid value: \"{want}\": must be a valid IP"),
                    }],
                )
            })?;
            if !cfg.service_cidr.contains(&addr) {
                return Err(ApiError::invalid(
                    "Service",
                    "",
                    &name,
                    &[FieldError {
                        reason: "FieldValueInvalid",
                        field: "spec.clusterIPs".into(),
                        message: format!(
                            "Invalid value: []string{{\"{want}\"}}: failed to allocate IP {want}: the provided IP ({want}) is not in the valid range. The range of valid IPs is {}",
                            cfg.service_cidr
                        ),
                    }],
                ));
            }
            if used_ips.contains(&want) && old_ip.as_deref() != Some(want.as_str()) {
                return Err(ApiError::invalid(
                    "Service",
                    "",
                    &name,
                    &[FieldError {
                        reason: "FieldValueInvalid",
                        field: "spec.clusterIPs".into(),
                        message: format!(
                            "Invalid value: []string{{\"{want}\"}}: failed to allocate IP {want}: provided IP is already allocated"
                        ),
                    }],
                ));
            }
            want
        } else if let Some(o) = old_ip.clone().filter(|o| !o.is_empty()) {
            o
        } else {
            let net = cfg.service_cidr;
            let base = u32::from(net.network());
            let size = 1u64 << (32 - net.prefix_len());
            let mut found = None;
            // .0 is the network; .1 is the kubernetes service; spread the rest.
            let start = rand::random_range(2..size.saturating_sub(1).max(3));
            for off in (start..size - 1).chain(1..start) {
                let a = Ipv4Addr::from(base + off as u32);
                if !used_ips.contains(&a.to_string()) {
                    found = Some(a.to_string());
                    break;
                }
            }
            found.ok_or_else(|| {
                ApiError::new(
                    500,
                    "InternalError",
                    "Internal error occurred: failed to allocate a serviceIP: range is full",
                )
            })?
        };
        svc["spec"]["clusterIP"] = json!(ip);
        svc["spec"]["clusterIPs"] = json!([ip]);
        if ip == "None" {
            svc["spec"]["clusterIPs"] = json!(["None"]);
        }
    }
    let node_port = ty == "NodePort" || ty == "LoadBalancer";
    let old_ports: Vec<Value> = old
        .and_then(|o| o["spec"]["ports"].as_array().cloned())
        .unwrap_or_default();
    if let Some(ports) = svc["spec"].get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut() {
            if !node_port {
                if let Some(m) = p.as_object_mut() {
                    m.remove("nodePort");
                }
                continue;
            }
            let want = p["nodePort"].as_i64().unwrap_or(0);
            if want != 0 {
                let mine = old_ports
                    .iter()
                    .any(|o| o["nodePort"].as_i64() == Some(want));
                if used_ports.contains(&want) && !mine {
                    return Err(ApiError::invalid(
                        "Service",
                        "",
                        &name,
                        &[FieldError {
                            reason: "FieldValueInvalid",
                            field: "spec.ports[0].nodePort".into(),
                            message: format!(
                                "Invalid value: {want}: provided port is already allocated"
                            ),
                        }],
                    ));
                }
                used_ports.insert(want);
                continue;
            }
            let reuse = old_ports
                .iter()
                .find(|o| o["port"] == p["port"] && o["protocol"] == p["protocol"])
                .and_then(|o| o["nodePort"].as_i64());
            let np = match reuse {
                Some(n) if n != 0 => n,
                _ => {
                    let (lo, hi) = (cfg.node_ports.0 as i64, cfg.node_ports.1 as i64);
                    let span = hi - lo + 1;
                    let start = rand::random_range(0..span);
                    (0..span).map(|i| lo + (start + i) % span).find(|n| !used_ports.contains(n)).ok_or_else(|| ApiError::new(500, "InternalError", "Internal error occurred: failed to allocate a nodePort: range is full"))?
                }
            };
            used_ports.insert(np);
            p["nodePort"] = json!(np);
        }
    }
    Ok(())
}

impl Api {
    /// Handles one API request (auth already checked).
    pub async fn handle(
        self: &Arc<Self>,
        method: &Method,
        t: Target,
        q: Query,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Response {
        let r = match (method.clone(), &t.name, t.sub.as_deref()) {
            (Method::GET, None, _) => {
                if t.watch_path || query_flag(&q, "watch") {
                    self.watch(&t, &q, headers).await
                } else {
                    self.list(&t, &q, headers)
                }
            }
            (Method::GET, Some(name), None | Some("status" | "ephemeralcontainers")) => {
                self.get(&t, name, &q, headers)
            }
            (Method::GET, Some(name), Some("scale")) => self.get_scale(&t, name),
            (Method::POST, None, _) => {
                let m = Manage::Update(field_manager(&q, headers));
                self.create(&t, &q, headers, &body, m).await
            }
            (Method::POST, Some(name), Some("binding")) => {
                self.bind(&t, name, &q, headers, &body).await
            }
            (Method::PUT, Some(name), None | Some("status" | "ephemeralcontainers")) => {
                self.update(&t, name, &q, headers, &body).await
            }
            (Method::PUT, Some(name), Some("finalize")) => {
                self.update(&t, name, &q, headers, &body).await
            }
            (Method::PUT | Method::PATCH, Some(name), Some("scale")) => {
                self.scale(method, &t, name, &q, headers, &body).await
            }
            (Method::PATCH, Some(name), None | Some("status" | "ephemeralcontainers")) => {
                self.patch(&t, name, &q, headers, &body).await
            }
            (Method::DELETE, Some(name), None) => self.delete(&t, name, &q, headers, &body).await,
            (Method::DELETE, None, None) => self.delete_collection(&t, &q, headers, &body).await,
            _ => Err(ApiError::new(
                405,
                "MethodNotAllowed",
                format!(
                    "the server does not allow this method on the requested resource ({method})"
                ),
            )),
        };
        r.unwrap_or_else(IntoResponse::into_response)
    }

    fn check_namespace(&self, t: &Target) -> Result<(), ApiError> {
        if let Some(ns) = &t.ns
            && t.res.namespaced
            && self.store.get("namespaces", "", ns).is_none()
        {
            return Err(ApiError::not_found(
                resources::find("", "v1", "namespaces").expect("served"),
                ns,
            ));
        }
        Ok(())
    }

    fn render_one(
        &self,
        t: &Target,
        obj: &Arc<Obj>,
        headers: &HeaderMap,
        q: &Query,
        code: StatusCode,
    ) -> Response {
        match shape(headers) {
            Shape::Table => {
                let include = q
                    .get("includeObject")
                    .map(String::as_str)
                    .unwrap_or("Metadata");
                let v = json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": obj.rv.to_string()},
                    "columnDefinitions": table::columns(t.res.kind), "rows": [table::row(t.res.kind, &obj.value, table::now_secs(), include)]});
                json_response(code, &v)
            }
            Shape::Metadata => json_response(code, &table::partial_metadata(&obj.value)),
            Shape::Object => bytes_response(code, external_json(t.res, obj)),
        }
    }

    fn get(
        &self,
        t: &Target,
        name: &str,
        q: &Query,
        headers: &HeaderMap,
    ) -> Result<Response, ApiError> {
        let obj = self
            .store
            .get(&t.res.id(), t.ns.as_deref().unwrap_or(""), name)
            .ok_or_else(|| ApiError::not_found(t.res, name))?;
        Ok(self.render_one(t, &obj, headers, q, StatusCode::OK))
    }

    fn selectors(&self, t: &Target, q: &Query) -> Result<(LabelSelector, FieldSelector), ApiError> {
        let ls = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let mut fs = FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        if converted(t.res) {
            for (f, _, _) in fs.0.iter_mut() {
                *f = crate::events::field_label(f);
            }
        }
        let probe = json!({});
        for (f, _, _) in &fs.0 {
            if kinds::field_value(t.res.kind, &probe, f).is_err() {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {f}"
                )));
            }
        }
        Ok((ls, fs))
    }

    fn list(&self, t: &Target, q: &Query, headers: &HeaderMap) -> Result<Response, ApiError> {
        let (ls, fs) = self.selectors(t, q)?;
        let limit: usize = q
            .get("limit")
            .and_then(|l| l.parse().ok())
            .filter(|l| *l > 0)
            .unwrap_or(usize::MAX);
        let after = match q.get("continue").filter(|c| !c.is_empty()) {
            Some(c) => {
                let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(c)
                    .map_err(|_| {
                        ApiError::bad_request("continue key is not valid: illegal base64 data")
                    })?;
                let s = String::from_utf8(raw)
                    .map_err(|_| ApiError::bad_request("continue key is not valid"))?;
                let (ns, name) = s
                    .split_once('/')
                    .ok_or_else(|| ApiError::bad_request("continue key is not valid"))?;
                Some((ns.to_string(), name.to_string()))
            }
            None => None,
        };
        // kube-apiserver counts the remaining items only for a list without
        // selectors; with one, it says only that there are more. So a
        // selected page stops at the first match past the limit, and an
        // unselected one counts the rest without matching them.
        let selected = !ls.0.is_empty() || !fs.0.is_empty();
        let mut out: Vec<Arc<Obj>> = Vec::new();
        let mut remaining = 0usize;
        let mut next = None;
        let rv = self
            .store
            .scan(&t.res.id(), t.ns.as_deref(), after.as_ref(), |key, o| {
                if out.len() >= limit {
                    if !selected {
                        remaining += 1;
                        return true;
                    }
                    if self.matches(t.res.kind, &o.value, &ls, &fs) {
                        remaining = 1;
                        return false;
                    }
                    return true;
                }
                if !self.matches(t.res.kind, &o.value, &ls, &fs) {
                    return true;
                }
                out.push(o.clone());
                if out.len() == limit {
                    next = Some(key.clone());
                }
                true
            });
        let cont = if remaining > 0 {
            next.map(|(ns, n)| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{ns}/{n}"))
            })
        } else {
            None
        };
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if let Some(c) = &cont {
            meta["continue"] = json!(c);
            if !selected {
                meta["remainingItemCount"] = json!(remaining);
            }
        }
        match shape(headers) {
            Shape::Table => {
                let now = table::now_secs();
                let include = q
                    .get("includeObject")
                    .map(String::as_str)
                    .unwrap_or("Metadata");
                // Written row by row into one buffer: no tree of the whole table.
                let head = json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": table::columns(t.res.kind)});
                let head = serde_json::to_vec(&head).expect("json");
                let mut buf = Vec::with_capacity(head.len() + out.len() * 512);
                buf.extend_from_slice(&head[..head.len() - 1]);
                buf.extend_from_slice(b",\"rows\":[");
                for (i, o) in out.iter().enumerate() {
                    if i > 0 {
                        buf.push(b',');
                    }
                    table::write_row(&mut buf, t.res.kind, o, now, include);
                }
                buf.extend_from_slice(b"]}");
                Ok(bytes_response(StatusCode::OK, Bytes::from(buf)))
            }
            Shape::Metadata => {
                let items: Vec<Value> = out
                    .iter()
                    .map(|o| table::partial_metadata(&o.value))
                    .collect();
                let v = json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "items": items});
                Ok(json_response(StatusCode::OK, &v))
            }
            Shape::Object => {
                let head = json!({"kind": format!("{}List", t.res.kind), "apiVersion": t.res.api_version(), "metadata": meta});
                let head = serde_json::to_string(&head).expect("json");
                let mut buf = Vec::with_capacity(
                    out.iter().map(|o| o.json.len() + 1).sum::<usize>() + head.len() + 16,
                );
                buf.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
                buf.extend_from_slice(b",\"items\":[");
                for (i, o) in out.iter().enumerate() {
                    if i > 0 {
                        buf.push(b',');
                    }
                    if converted(t.res) {
                        buf.extend_from_slice(&external_json(t.res, o));
                    } else {
                        buf.extend_from_slice(&o.json);
                    }
                }
                buf.extend_from_slice(b"]}");
                Ok(bytes_response(StatusCode::OK, Bytes::from(buf)))
            }
        }
    }

    fn matches(&self, kind: &str, o: &Value, ls: &LabelSelector, fs: &FieldSelector) -> bool {
        let empty = serde_json::Map::new();
        let labels = o["metadata"]["labels"].as_object().unwrap_or(&empty);
        if !ls.matches(labels) {
            return false;
        }
        fs.0.iter().all(|(f, eq, want)| {
            let v = kinds::field_value(kind, o, f).ok().flatten().unwrap_or("");
            (v == want) == *eq
        })
    }

    async fn watch(
        self: &Arc<Self>,
        t: &Target,
        q: &Query,
        headers: &HeaderMap,
    ) -> Result<Response, ApiError> {
        let (ls, fs) = self.selectors(t, q)?;
        let rv_param = q.get("resourceVersion").cloned().unwrap_or_default();
        let send_initial = query_flag(q, "sendInitialEvents");
        let from = if rv_param.is_empty() || rv_param == "0" || send_initial {
            None
        } else {
            Some(rv_param.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("invalid resource version: {rv_param}"))
            })?)
        };
        let bookmarks = query_flag(q, "allowWatchBookmarks");
        let timeout = q
            .get("timeoutSeconds")
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(1800);
        let table_shape = shape(headers) == Shape::Table;
        let include = q
            .get("includeObject")
            .cloned()
            .unwrap_or_else(|| "Metadata".into());
        let rid = t.res.id();
        let ns = t.ns.clone();
        let res = t.res;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(256);
        let started = self.store.watch(&rid, ns.as_deref(), from);
        let me = self.clone();
        tokio::spawn(async move {
            let mut first_table = true;
            let mut encode = |ty: &str, obj: &Value| -> Bytes {
                let object = if table_shape && ty != "BOOKMARK" && ty != "ERROR" {
                    let mut tb = json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                        "rows": [table::row(res.kind, obj, table::now_secs(), &include)]});
                    if first_table {
                        tb["columnDefinitions"] = json!(table::columns(res.kind));
                        first_table = false;
                    } else {
                        tb["columnDefinitions"] = json!([]);
                    }
                    tb
                } else {
                    obj.clone()
                };
                let mut line =
                    serde_json::to_vec(&json!({"type": ty, "object": object})).expect("json");
                line.push(b'\n');
                Bytes::from(line)
            };
            // Plain events reuse the object's stored bytes: no re-serialisation per watcher.
            let encode_obj =
                |ty: &str, o: &Obj, encode: &mut dyn FnMut(&str, &Value) -> Bytes| -> Bytes {
                    if table_shape {
                        return encode(ty, &o.value);
                    }
                    if converted(res) {
                        return encode(ty, &external(res, &o.value));
                    }
                    let mut line = Vec::with_capacity(o.json.len() + 32);
                    line.extend_from_slice(b"{\"type\":\"");
                    line.extend_from_slice(ty.as_bytes());
                    line.extend_from_slice(b"\",\"object\":");
                    line.extend_from_slice(&o.json);
                    line.extend_from_slice(b"}\n");
                    Bytes::from(line)
                };
            let (initial, start) = match started {
                Ok(s) => s,
                Err(crate::store::TooOld) => {
                    let e = ApiError::new(
                        410,
                        "Expired",
                        format!(
                            "too old resource version: {rv_param} ({})",
                            me.store.published_rv()
                        ),
                    );
                    let _ = tx.send(Ok(encode("ERROR", &e.status()))).await;
                    return;
                }
            };
            let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
            let mut last = start.rv;
            for o in &initial {
                if me.matches(res.kind, &o.value, &ls, &fs)
                    && tx
                        .send(Ok(encode_obj("ADDED", o, &mut encode)))
                        .await
                        .is_err()
                {
                    return;
                }
            }
            if send_initial && bookmarks {
                let bm = json!({"kind": res.kind, "apiVersion": res.api_version(), "metadata": {"resourceVersion": last.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}});
                if tx.send(Ok(encode("BOOKMARK", &bm))).await.is_err() {
                    return;
                }
            }
            let mut rx_live = start.rx;
            let mut replay = start.replay.into_iter();
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            loop {
                let ev: Event = if let Some(e) = replay.next() {
                    e
                } else {
                    tokio::select! {
                        r = rx_live.recv() => match r {
                            Ok(e) => e,
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                                let e = ApiError::new(410, "Expired", "watch fell behind: too old resource version");
                                let _ = tx.send(Ok(encode("ERROR", &e.status()))).await;
                                return;
                            }
                            Err(_) => return,
                        },
                        _ = tokio::time::sleep_until(deadline) => return,
                        _ = tick.tick() => {
                            if bookmarks {
                                let bm = json!({"kind": res.kind, "apiVersion": res.api_version(), "metadata": {"resourceVersion": last.max(me.store.published_rv()).to_string()}});
                                if tx.send(Ok(encode("BOOKMARK", &bm))).await.is_err() { return; }
                            } else if tx.is_closed() {
                                return;
                            }
                            continue;
                        }
                    }
                };
                if ev.rv <= last
                    || *ev.resource != *rid
                    || ns.as_deref().is_some_and(|n| ev.namespace() != n)
                {
                    continue;
                }
                last = ev.rv;
                let now_match = me.matches(res.kind, &ev.obj.value, &ls, &fs);
                let was_match = ev
                    .prev
                    .as_ref()
                    .map(|p| me.matches(res.kind, &p.value, &ls, &fs));
                let ty = match (ev.kind, was_match, now_match) {
                    (EventType::Added, _, true) => "ADDED",
                    (EventType::Deleted, _, true) => "DELETED",
                    (EventType::Modified, Some(false), true) => "ADDED",
                    (EventType::Modified, Some(true) | None, true) => "MODIFIED",
                    (EventType::Modified, Some(true), false) => "DELETED",
                    _ => continue,
                };
                if tx
                    .send(Ok(encode_obj(ty, &ev.obj, &mut encode)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        let stream =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
        let mut r = Response::new(Body::from_stream(stream));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache, private"),
        );
        Ok(r)
    }

    async fn create(
        self: &Arc<Self>,
        t: &Target,
        q: &Query,
        headers: &HeaderMap,
        body: &[u8],
        manage: Manage,
    ) -> Result<Response, ApiError> {
        let res = t.res;
        let mut obj = decode_body(
            headers,
            body,
            &format!(
                "{} in version \"{}\" cannot be handled as a {}",
                res.kind, res.version, res.kind
            ),
        )?;
        check_type(res, &mut obj)?;
        let dry = dry_run(q)?;
        prepare(res, &mut obj)?;
        let warnings = field_validation(res, q, &mut obj)?;
        if converted(res) {
            let errs = crate::events::validate_create(&obj);
            if !errs.is_empty() {
                return Err(ApiError::invalid(
                    res.kind,
                    res.group,
                    obj_name(&obj),
                    &errs,
                ));
            }
            obj = internal(res, obj);
        }
        let ns = if res.namespaced {
            let url_ns = t.ns.clone().unwrap_or_default();
            match obj["metadata"]["namespace"].as_str() {
                None | Some("") => obj["metadata"]["namespace"] = json!(url_ns),
                Some(n) if n == url_ns => {}
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
            }
            url_ns
        } else {
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove("namespace");
            }
            String::new()
        };
        let mut name = obj_name(&obj).to_string();
        if name.is_empty() {
            match obj["metadata"]["generateName"].as_str() {
                Some(g) if !g.is_empty() => {
                    name = format!("{g}{}", random_suffix());
                    obj["metadata"]["name"] = json!(name);
                }
                _ => {
                    return Err(ApiError::invalid(
                        res.kind,
                        res.group,
                        "",
                        &[FieldError {
                            reason: "FieldValueRequired",
                            field: "metadata.name".into(),
                            message: "Required value: name or generateName is required".into(),
                        }],
                    ));
                }
            }
        }
        if let Some(msg) = kinds::validate_name(res.kind, &name) {
            return Err(ApiError::invalid(
                res.kind,
                res.group,
                &name,
                &[FieldError {
                    reason: "FieldValueInvalid",
                    field: "metadata.name".into(),
                    message: format!("Invalid value: \"{name}\": {msg}"),
                }],
            ));
        }
        self.check_namespace(t)?;
        if res.namespaced
            && let Some(n) = self.store.get("namespaces", "", &ns)
            && n.value["metadata"]["deletionTimestamp"].is_string()
        {
            let mut e = ApiError::new(
                403,
                "Forbidden",
                format!(
                    "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                    qualified(res)
                ),
            );
            e.details = Some(json!({"name": name, "group": res.group, "kind": res.plural,
                "causes": [{"reason": "NamespaceTerminating", "message": format!("namespace {ns} is being terminated"), "field": "metadata.namespace"}]}));
            return Err(e);
        }
        {
            let m = obj["metadata"].as_object_mut().expect("checked");
            for k in [
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "selfLink",
            ] {
                m.remove(k);
            }
            m.insert("uid".into(), json!(new_uid()));
            m.insert("creationTimestamp".into(), json!(now_rfc3339()));
            if kinds::has_generation(res.kind) {
                m.insert("generation".into(), json!(1));
            }
        }
        if res.has_status && res.kind != "Node" {
            obj["status"] = Value::Null;
            if let Some(m) = obj.as_object_mut() {
                m.remove("status");
            }
        }
        kinds::apply_defaults(res.kind, &mut obj);
        let errs = kinds::validate(res.kind, &obj);
        if !errs.is_empty() {
            return Err(ApiError::invalid(res.kind, res.group, &name, &errs));
        }
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
        let now = now_rfc3339();
        let sc = scope(res, None);
        match &manage {
            Manage::Update(m) => {
                managed::record_update(None, &mut obj, m, res.kind, sc, None, &now)
            }
            Manage::Apply(m, applied) => {
                let owned = managed::apply(&json!({}), applied, m, false, res.kind, sc, &now)
                    .map_err(apply_conflict)?;
                obj["metadata"]["managedFields"] = owned["metadata"]["managedFields"].clone();
            }
        }
        let cfg = self.cfg.clone();
        let (created, _) = self
            .store
            .mutate(
                &res.id(),
                &ns,
                &name,
                dry,
                |cur, txn| -> Result<Change, ApiError> {
                    if let Some(c) = cur {
                        let mut e = ApiError::exists(res, &name);
                        if c.value["metadata"]["deletionTimestamp"].is_string() {
                            e.message = format!("object is being deleted: {}", e.message);
                        }
                        return Err(e);
                    }
                    if res.kind == "Service" {
                        allocate_service(&cfg, &mut obj, None, txn)?;
                    }
                    Ok(Change::Put(obj))
                },
            )
            .await?;
        let created = created.expect("created");
        if res.kind == "Namespace" && !dry {
            let me = self.clone();
            let ns = name.clone();
            tokio::spawn(async move {
                me.ensure_default_sa(&ns).await;
                me.ensure_root_ca(&ns).await;
            });
        }
        Ok(with_warnings(
            self.render_one(t, &created, headers, q, StatusCode::CREATED),
            &warnings,
        ))
    }

    /// Creates the `default` ServiceAccount of a namespace, as the
    /// serviceaccount controller does.
    pub async fn ensure_default_sa(&self, ns: &str) {
        let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns, "uid": new_uid(), "creationTimestamp": now_rfc3339()}});
        let _ = self
            .store
            .mutate(
                "serviceaccounts",
                ns,
                "default",
                false,
                |cur, _| -> Result<Change, ApiError> {
                    Ok(if cur.is_some() {
                        Change::Keep
                    } else {
                        Change::Put(sa)
                    })
                },
            )
            .await;
    }

    /// Publishes the cluster CA as ConfigMap `kube-root-ca.crt` in a
    /// namespace (restoring it if changed), as kube-controller-manager's
    /// root CA publisher does, so pods can verify the API server.
    pub async fn ensure_root_ca(&self, ns: &str) {
        if self
            .store
            .get("namespaces", "", ns)
            .is_none_or(|n| n.value["metadata"]["deletionTimestamp"].is_string())
        {
            return;
        }
        let data = json!({"ca.crt": self.ca_pem});
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": ROOT_CA_CONFIGMAP, "namespace": ns, "uid": new_uid(), "creationTimestamp": now_rfc3339(),
            "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
            "data": data});
        let r = self
            .store
            .mutate(
                "configmaps",
                ns,
                ROOT_CA_CONFIGMAP,
                false,
                |cur, _| -> Result<Change, ApiError> {
                    Ok(match cur {
                        Some(c) if c.value["data"] == data && c.value["binaryData"].is_null() => {
                            Change::Keep
                        }
                        Some(c) => {
                            let mut v = c.value.clone();
                            v["data"] = data;
                            if let Some(m) = v.as_object_mut() {
                                m.remove("binaryData");
                            }
                            Change::Put(v)
                        }
                        None => Change::Put(cm),
                    })
                },
            )
            .await;
        if let Err(e) = r {
            tracing::warn!(namespace = ns, error = %e.message, "publishing kube-root-ca.crt failed");
        }
    }

    /// The shared update path: `propose` turns the current object into the
    /// desired one; system fields are kept, defaults, validation and
    /// immutability checks applied, and the write made if anything changed.
    #[allow(clippy::too_many_arguments)] // the request's parts, the recorded manager, the proposal
    async fn update_with<F>(
        &self,
        t: &Target,
        name: &str,
        q: &Query,
        headers: &HeaderMap,
        warnings: Vec<String>,
        manager: Option<String>,
        propose: F,
    ) -> Result<Response, ApiError>
    where
        F: FnOnce(&Value) -> Result<Value, ApiError>,
    {
        let res = t.res;
        let dry = dry_run(q)?;
        let ns = t.ns.clone().unwrap_or_default();
        let sub = t.sub.clone();
        let cfg = self.cfg.clone();
        let (obj, _) = self
            .store
            .mutate(&res.id(), &ns, name, dry, |cur, txn| -> Result<Change, ApiError> {
                let cur = cur.ok_or_else(|| ApiError::not_found(res, name))?;
                let old = &cur.value;
                let mut new = propose(&external(res, old))?;
                check_type(res, &mut new)?;
                let mut new = internal(res, new);
                if obj_name(&new) != name {
                    return Err(ApiError::bad_request(format!("the name of the object ({}) does not match the name on the URL ({name})", obj_name(&new))));
                }
                if res.namespaced && new["metadata"]["namespace"].as_str().is_some_and(|n| n != ns) {
                    return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
                }
                match new["metadata"]["resourceVersion"].as_str() {
                    Some(rv) if !rv.is_empty() && rv != cur.rv.to_string() => {
                        return Err(ApiError::conflict(res, name, "the object has been modified; please apply your changes to the latest version and try again"));
                    }
                    _ => {}
                }
                // System metadata is the server's.
                for k in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation", "namespace"] {
                    match old["metadata"].get(k) {
                        Some(v) => new["metadata"][k] = v.clone(),
                        None => {
                            if let Some(m) = new["metadata"].as_object_mut() {
                                m.remove(k);
                            }
                        }
                    }
                }
                match sub.as_deref() {
                    Some("status") => {
                        let mut merged = old.clone();
                        merged["status"] = new["status"].clone();
                        for k in ["labels", "annotations", "managedFields"] {
                            if !new["metadata"][k].is_null() {
                                merged["metadata"][k] = new["metadata"][k].clone();
                            }
                        }
                        new = merged;
                    }
                    Some("finalize") => {
                        let mut merged = old.clone();
                        merged["spec"] = new["spec"].clone();
                        new = merged;
                    }
                    Some("ephemeralcontainers") => {
                        // Only the ephemeral containers are this
                        // subresource's; the rest is the pod as stored.
                        let mut merged = old.clone();
                        merged["spec"]["ephemeralContainers"] = new["spec"]["ephemeralContainers"].clone();
                        if merged["spec"]["ephemeralContainers"].is_null()
                            && let Some(m) = merged["spec"].as_object_mut()
                        {
                            m.remove("ephemeralContainers");
                        }
                        new = merged;
                    }
                    _ if res.has_status => {
                        match old.get("status") {
                            Some(s) => new["status"] = s.clone(),
                            None => {
                                if let Some(m) = new.as_object_mut() {
                                    m.remove("status");
                                }
                            }
                        }
                    }
                    _ => {}
                }
                kinds::apply_defaults(res.kind, &mut new);
                if res.kind == "Service" {
                    if new["spec"]["clusterIP"].as_str().is_none_or(str::is_empty) {
                        new["spec"]["clusterIP"] = old["spec"]["clusterIP"].clone();
                    }
                    if new["spec"]["clusterIPs"].is_null() {
                        new["spec"]["clusterIPs"] = old["spec"]["clusterIPs"].clone();
                    }
                }
                let mut errs = kinds::validate(res.kind, &new);
                if sub.as_deref() == Some("ephemeralcontainers") {
                    errs.extend(kinds::validate_ephemeral_update(old, &new));
                } else {
                    errs.extend(kinds::validate_update(res.kind, old, &new));
                }
                if !errs.is_empty() {
                    return Err(ApiError::invalid(res.kind, res.group, name, &errs));
                }
                if res.kind == "Service" {
                    allocate_service(&cfg, &mut new, Some(old), txn)?;
                }
                if kinds::has_generation(res.kind) && old["spec"] != new["spec"] {
                    new["metadata"]["generation"] = json!(old["metadata"]["generation"].as_i64().unwrap_or(1) + 1);
                }
                // Absent or `[]` keeps the stored entries (clients that do not
                // know the field never strip it); `[{}]` clears them.
                if new["metadata"]
                    .get("managedFields")
                    .is_none_or(|m| m.is_null() || m.as_array().is_some_and(Vec::is_empty))
                {
                    match old["metadata"].get("managedFields") {
                        Some(mf) => new["metadata"]["managedFields"] = mf.clone(),
                        None => {
                            if let Some(m) = new["metadata"].as_object_mut() {
                                m.remove("managedFields");
                            }
                        }
                    }
                }
                managed::normalize(&mut new);
                if let Some(m) = &manager {
                    let sc = scope(res, sub.as_deref());
                    let subresource = sub.as_deref().filter(|s| *s == "status");
                    managed::record_update(Some(old), &mut new, m, res.kind, sc, subresource, &now_rfc3339());
                }
                new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
                if new == *old {
                    return Ok(Change::Keep);
                }
                if old["metadata"]["deletionTimestamp"].is_string()
                    && new["metadata"]["finalizers"].as_array().is_none_or(Vec::is_empty)
                    && !(res.kind == "Pod" && !new["spec"]["nodeName"].as_str().unwrap_or("").is_empty() && !pod_terminal(&new))
                    && res.kind != "Namespace"
                {
                    return Ok(Change::Delete);
                }
                Ok(Change::Put(new))
            })
            .await?;
        match obj {
            Some(o) => Ok(with_warnings(
                self.render_one(t, &o, headers, q, StatusCode::OK),
                &warnings,
            )),
            None => Ok(json_response(
                StatusCode::OK,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": {"name": name, "group": res.group, "kind": res.plural}}),
            )),
        }
    }

    async fn update(
        &self,
        t: &Target,
        name: &str,
        q: &Query,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Response, ApiError> {
        let res = t.res;
        let mut obj = decode_body(
            headers,
            body,
            &format!(
                "{} in version \"{}\" cannot be handled as a {}",
                res.kind, res.version, res.kind
            ),
        )?;
        check_type(res, &mut obj)?;
        prepare(res, &mut obj)?;
        let warnings = field_validation(res, q, &mut obj)?;
        let m = field_manager(q, headers);
        self.update_with(t, name, q, headers, warnings, Some(m), move |_| Ok(obj))
            .await
    }

    async fn patch(
        self: &Arc<Self>,
        t: &Target,
        name: &str,
        q: &Query,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Response, ApiError> {
        let res = t.res;
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let ty = PatchType::from_content_type(ct).ok_or_else(|| {
            ApiError::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {ct})"))
        })?;
        let force = match q.get("force").map(String::as_str) {
            None | Some("") => false,
            Some(o) if parse_bool(o).is_some() => parse_bool(o) == Some(true),
            Some(o) => {
                return Err(ApiError::bad_request(format!(
                    "failed to parse \"force\" ({o}): expected a boolean"
                )));
            }
        };
        if ty != PatchType::Apply && force {
            return Err(patch_options_invalid(
                "force",
                "FieldValueForbidden",
                "Forbidden: may not be specified for non-apply patch",
            ));
        }
        if ty == PatchType::Apply {
            return self
                .server_side_apply(t, name, q, headers, body, force)
                .await;
        }
        let body = body.to_vec();
        let q2 = q.clone();
        let warnings = std::sync::Mutex::new(Vec::new());
        let r = self
            .update_with(
                t,
                name,
                q,
                headers,
                Vec::new(),
                Some(field_manager(q, headers)),
                |old| {
                    let mut new = patch::apply(ty, res.kind, old, &body).map_err(|e| match e {
                        patch::PatchError::Malformed(m) => ApiError::bad_request(m),
                        patch::PatchError::Failed(m) => ApiError::new(422, "Invalid", m),
                    })?;
                    prepare(res, &mut new)?;
                    *warnings.lock().expect("lock") = field_validation(res, &q2, &mut new)?;
                    Ok(new)
                },
            )
            .await?;
        let w = warnings.into_inner().expect("lock");
        Ok(with_warnings(r, &w))
    }

    /// PATCH with `application/apply-patch+yaml`: creates the object when
    /// missing, else merges the configuration with field ownership
    /// (conflicts are `409` unless `force=true`).
    async fn server_side_apply(
        self: &Arc<Self>,
        t: &Target,
        name: &str,
        q: &Query,
        headers: &HeaderMap,
        body: &[u8],
        force: bool,
    ) -> Result<Response, ApiError> {
        let res = t.res;
        let manager = match q.get("fieldManager") {
            Some(m) if !m.is_empty() => m.clone(),
            _ => {
                return Err(patch_options_invalid(
                    "fieldManager",
                    "FieldValueRequired",
                    "Required value: is required for apply patch",
                ));
            }
        };
        let cfg = apply_config(res, name, body)?;
        if t.sub.is_none()
            && self
                .store
                .get(&res.id(), t.ns.as_deref().unwrap_or(""), name)
                .is_none()
        {
            let mut h = headers.clone();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            let target = Target {
                res,
                ns: t.ns.clone(),
                name: None,
                sub: None,
                watch_path: false,
            };
            let body = serde_json::to_vec(&cfg).expect("json");
            return self
                .create(&target, q, &h, &body, Manage::Apply(manager, cfg))
                .await;
        }
        let q2 = q.clone();
        let warnings = std::sync::Mutex::new(Vec::new());
        let sc = scope(res, t.sub.as_deref());
        let r = self
            .update_with(t, name, q, headers, Vec::new(), None, |old| {
                let mut new =
                    managed::apply(old, &cfg, &manager, force, res.kind, sc, &now_rfc3339())
                        .map_err(apply_conflict)?;
                prepare(res, &mut new)?;
                *warnings.lock().expect("lock") = field_validation(res, &q2, &mut new)?;
                Ok(new)
            })
            .await?;
        let w = warnings.into_inner().expect("lock");
        Ok(with_warnings(r, &w))
    }

    fn scale_of(&self, res: &Resource, o: &Value) -> Value {
        let sel = crate::selector::label_selector_string(&o["spec"]["selector"]);
        json!({"kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {"name": o["metadata"]["name"], "namespace": o["metadata"]["namespace"], "uid": o["metadata"]["uid"],
                "resourceVersion": o["metadata"]["resourceVersion"], "creationTimestamp": o["metadata"]["creationTimestamp"]},
            "spec": {"replicas": o["spec"]["replicas"].as_i64().unwrap_or(if res.kind == "DaemonSet" { 0 } else { 1 })},
            "status": {"replicas": o["status"]["replicas"].as_i64().unwrap_or(0), "selector": sel}})
    }

    fn get_scale(&self, t: &Target, name: &str) -> Result<Response, ApiError> {
        let obj = self
            .store
            .get(&t.res.id(), t.ns.as_deref().unwrap_or(""), name)
            .ok_or_else(|| ApiError::not_found(t.res, name))?;
        Ok(json_response(
            StatusCode::OK,
            &self.scale_of(t.res, &obj.value),
        ))
    }

    async fn scale(
        &self,
        method: &Method,
        t: &Target,
        name: &str,
        q: &Query,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Response, ApiError> {
        let res = t.res;
        let body = body.to_vec();
        let is_patch = *method == Method::PATCH;
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let target = Target {
            res,
            ns: t.ns.clone(),
            name: t.name.clone(),
            sub: None,
            watch_path: false,
        };
        let hdrs = headers.clone();
        let accept_json = HeaderMap::new();
        let r = self
            .update_with(&target, name, q, &accept_json, Vec::new(), Some(field_manager(q, headers)), |old| {
                let scale = self.scale_of(res, old);
                let new_scale = if is_patch {
                    let ty = PatchType::from_content_type(&ct).ok_or_else(|| ApiError::new(415, "UnsupportedMediaType", "unsupported patch type"))?;
                    patch::apply(ty, "Scale", &scale, &body).map_err(|e| ApiError::bad_request(e.to_string()))?
                } else {
                    decode_body(&hdrs, &body, "Scale")?
                };
                if let Some(rv) = new_scale["metadata"]["resourceVersion"].as_str()
                    && !rv.is_empty()
                    && Some(rv) != old["metadata"]["resourceVersion"].as_str()
                {
                    return Err(ApiError::conflict(res, name, "the object has been modified; please apply your changes to the latest version and try again"));
                }
                let replicas = new_scale["spec"]["replicas"].as_i64().ok_or_else(|| {
                    ApiError::invalid("Scale", "autoscaling", name, &[FieldError { reason: "FieldValueRequired", field: "spec.replicas".into(), message: "Required value".into() }])
                })?;
                if replicas < 0 {
                    return Err(ApiError::invalid("Scale", "autoscaling", name, &[FieldError { reason: "FieldValueInvalid", field: "spec.replicas".into(), message: format!("Invalid value: {replicas}: must be greater than or equal to 0") }]));
                }
                let mut new = old.clone();
                new["spec"]["replicas"] = json!(replicas);
                Ok(new)
            })
            .await?;
        let _ = r;
        let obj = self
            .store
            .get(&res.id(), t.ns.as_deref().unwrap_or(""), name)
            .ok_or_else(|| ApiError::not_found(res, name))?;
        Ok(json_response(
            StatusCode::OK,
            &self.scale_of(res, &obj.value),
        ))
    }

    async fn bind(
        &self,
        t: &Target,
        name: &str,
        q: &Query,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Response, ApiError> {
        let b = decode_body(headers, body, "Binding")?;
        let node = b["target"]["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .ok_or_else(|| {
                ApiError::invalid(
                    "Binding",
                    "",
                    name,
                    &[FieldError {
                        reason: "FieldValueRequired",
                        field: "target.name".into(),
                        message: "Required value".into(),
                    }],
                )
            })?;
        let res = t.res;
        let ns = t.ns.clone().unwrap_or_default();
        let dry = dry_run(q)?;
        self.store
            .mutate(&res.id(), &ns, name, dry, |cur, _| -> Result<Change, ApiError> {
                let cur = cur.ok_or_else(|| ApiError::not_found(res, name))?;
                let mut v = cur.value.clone();
                if v["metadata"]["deletionTimestamp"].is_string() {
                    return Err(ApiError::conflict(res, name, "pod is being deleted, cannot be assigned to a host"));
                }
                if v["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty()) {
                    return Err(ApiError::conflict(res, name, &format!("pod {name} is already assigned to node \"{}\"", v["spec"]["nodeName"].as_str().unwrap_or(""))));
                }
                v["spec"]["nodeName"] = json!(node);
                let cond = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now_rfc3339()});
                let conds = v["status"]["conditions"].as_array().cloned().unwrap_or_default();
                let mut conds: Vec<Value> = conds.into_iter().filter(|c| c["type"] != "PodScheduled").collect();
                conds.push(cond);
                v["status"]["conditions"] = Value::Array(conds);
                Ok(Change::Put(v))
            })
            .await?;
        Ok(json_response(
            StatusCode::CREATED,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        ))
    }

    /// Deletes one object with DeleteOptions semantics.
    pub async fn delete_one(
        &self,
        res: &'static Resource,
        ns: &str,
        name: &str,
        opts: &Value,
        dry: bool,
    ) -> Result<(Option<Arc<Obj>>, Option<Arc<Obj>>), ApiError> {
        if res.kind == "Namespace"
            && let Some(e) = crate::lifecycle::protected_namespace(name)
        {
            return Err(e);
        }
        let propagation = crate::lifecycle::Propagation::of(opts)?;
        let grace_opt = opts["gracePeriodSeconds"].as_i64();
        let pre_uid = opts["preconditions"]["uid"].as_str().map(str::to_string);
        let pre_rv = opts["preconditions"]["resourceVersion"]
            .as_str()
            .map(str::to_string);
        self.store
            .mutate(&res.id(), ns, name, dry, |cur, _| -> Result<Change, ApiError> {
                let cur = cur.ok_or_else(|| ApiError::not_found(res, name))?;
                let v = &cur.value;
                if let Some(u) = &pre_uid
                    && v["metadata"]["uid"].as_str() != Some(u.as_str())
                {
                    return Err(ApiError::conflict(res, name, &format!("Precondition failed: UID in precondition: {u}, UID in object meta: {}", v["metadata"]["uid"].as_str().unwrap_or(""))));
                }
                if let Some(r) = &pre_rv
                    && cur.rv.to_string() != *r
                {
                    return Err(ApiError::conflict(res, name, &format!("Precondition failed: ResourceVersion in precondition: {r}, ResourceVersion in object meta: {}", cur.rv)));
                }
                let mut new = v.clone();
                let terminating = v["metadata"]["deletionTimestamp"].is_string();
                if res.kind == "Namespace" {
                    if !terminating {
                        new["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
                        new["status"]["phase"] = json!("Terminating");
                        return Ok(Change::Put(new));
                    }
                    return Ok(Change::Keep);
                }
                let has_finalizers = v["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
                if res.kind == "Pod" && v["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty()) && !pod_terminal(v) {
                    let grace = grace_opt.unwrap_or_else(|| v["spec"]["terminationGracePeriodSeconds"].as_i64().unwrap_or(30)).max(0);
                    if grace == 0 && !has_finalizers {
                        return Ok(Change::Delete);
                    }
                    let ts = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() + grace).unwrap_or(jiff::Timestamp::now());
                    let cur_grace = v["metadata"]["deletionGracePeriodSeconds"].as_i64();
                    if terminating && cur_grace.is_some_and(|c| c <= grace) {
                        return Ok(Change::Keep);
                    }
                    new["metadata"]["deletionTimestamp"] = json!(ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
                    new["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                    return Ok(Change::Put(new));
                }
                if let Some(f) = propagation.finalizer() {
                    // The garbage collector finishes it (lifecycle::sync_owner).
                    let mut fins = v["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
                    if terminating && fins.iter().any(|x| x == f) {
                        return Ok(Change::Keep);
                    }
                    fins.push(json!(f));
                    new["metadata"]["finalizers"] = Value::Array(fins);
                    if !terminating {
                        new["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
                        new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                    }
                    return Ok(Change::Put(new));
                }
                if has_finalizers {
                    if terminating {
                        return Ok(Change::Keep);
                    }
                    new["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
                    new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                    return Ok(Change::Put(new));
                }
                Ok(Change::Delete)
            })
            .await
    }

    fn delete_options(
        &self,
        q: &Query,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Value, ApiError> {
        let mut opts = if body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            decode_body(headers, body, "DeleteOptions")?
        };
        if let Some(g) = q.get("gracePeriodSeconds") {
            opts["gracePeriodSeconds"] =
                json!(g.parse::<i64>().map_err(|_| ApiError::bad_request(format!(
                    "invalid gracePeriodSeconds: {g}"
                )))?);
        }
        if let Some(p) = q.get("propagationPolicy") {
            opts["propagationPolicy"] = json!(p);
        }
        if let Some(d) = opts["dryRun"].as_array()
            && !d.is_empty()
        {
            opts["dryRunAll"] = json!(true);
        }
        Ok(opts)
    }

    async fn delete(
        self: &Arc<Self>,
        t: &Target,
        name: &str,
        q: &Query,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Response, ApiError> {
        let opts = self.delete_options(q, headers, body)?;
        let dry = dry_run(q)? || opts["dryRunAll"] == json!(true);
        let ns = t.ns.clone().unwrap_or_default();
        let (after, before) = self.delete_one(t.res, &ns, name, &opts, dry).await?;
        if !dry && let Some(o) = &after {
            self.follow_up_delete(t.res, &o.value);
        }
        match (after, before) {
            (Some(o), _) => Ok(self.render_one(t, &o, headers, q, StatusCode::OK)),
            (None, Some(b)) if t.res.kind == "Pod" => {
                Ok(self.render_one(t, &b, headers, q, StatusCode::OK))
            }
            (None, b) => Ok(json_response(
                StatusCode::OK,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": {"name": name, "group": t.res.group, "kind": t.res.plural, "uid": b.map(|b| b.value["metadata"]["uid"].clone()).unwrap_or(Value::Null)}}),
            )),
        }
    }

    async fn delete_collection(
        self: &Arc<Self>,
        t: &Target,
        q: &Query,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Response, ApiError> {
        let (ls, fs) = self.selectors(t, q)?;
        let opts = self.delete_options(q, headers, body)?;
        let dry = dry_run(q)? || opts["dryRunAll"] == json!(true);
        let (items, _) = self.store.list(&t.res.id(), t.ns.as_deref());
        let mut deleted = Vec::new();
        for o in items {
            if !self.matches(t.res.kind, &o.value, &ls, &fs) {
                continue;
            }
            let ns = o.value["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string();
            match self
                .delete_one(t.res, &ns, obj_name(&o.value), &opts, dry)
                .await
            {
                Ok((after, before)) => {
                    if !dry && let Some(o) = &after {
                        self.follow_up_delete(t.res, &o.value);
                    }
                    if let Some(v) = after.or(before) {
                        deleted.push(external(t.res, &v.value));
                    }
                }
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let rv = self.store.rv();
        Ok(json_response(
            StatusCode::OK,
            &json!({"kind": format!("{}List", t.res.kind), "apiVersion": t.res.api_version(), "metadata": {"resourceVersion": rv.to_string()}, "items": deleted}),
        ))
    }

    /// What a deletion that did not remove the object at once leaves to
    /// the controllers: a terminating namespace to empty, an owner's
    /// `orphan`/`foregroundDeletion` finalizer to carry out.
    fn follow_up_delete(self: &Arc<Self>, res: &'static Resource, v: &Value) {
        let name = obj_name(v).to_string();
        if res.kind == "Namespace" {
            self.schedule_namespace(&name);
            return;
        }
        let gc = v["metadata"]["finalizers"].as_array().is_some_and(|f| {
            f.iter()
                .any(|x| x == crate::lifecycle::ORPHAN || x == crate::lifecycle::FOREGROUND)
        });
        if gc {
            let me = self.clone();
            let ns = v["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string();
            tokio::spawn(async move { me.sync_owner(res, &ns, &name).await });
        }
    }

    /// Background upkeep: removes pods whose grace period ran out (their node
    /// never confirmed) and garbage-collects objects whose owners are gone.
    pub async fn upkeep(self: Arc<Self>) {
        let mut rx = self.store.watch("", None, None).map(|(_, s)| s.rx).ok();
        self.resume_deletions().await;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut ticks: u64 = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.reap_pods().await;
                    self.sync_terminating_namespaces().await;
                    ticks += 1;
                    if ticks.is_multiple_of(5) {
                        self.reap_events().await;
                    }
                }
                ev = async { match rx.as_mut() { Some(r) => r.recv().await.ok(), None => std::future::pending().await } } => {
                    if let Some(ev) = ev {
                        if ev.kind == EventType::Deleted {
                            self.collect_dependents(&ev).await;
                            self.after_delete(&ev).await;
                        }
                        if &*ev.resource == "namespaces"
                            && ev.kind == EventType::Modified
                            && ev.obj.value["metadata"]["deletionTimestamp"].is_string()
                            && ev.prev.as_ref().is_none_or(|p| p.value["spec"] != ev.obj.value["spec"] || p.value["metadata"]["finalizers"] != ev.obj.value["metadata"]["finalizers"])
                        {
                            self.sync_namespace(obj_name(&ev.obj.value)).await;
                        }
                        if &*ev.resource == "configmaps"
                            && ev.kind != EventType::Added
                            && obj_name(&ev.obj.value) == ROOT_CA_CONFIGMAP
                        {
                            self.ensure_root_ca(ev.namespace()).await;
                        }
                    }
                }
            }
        }
    }

    /// Deletes Events not updated for [`EVENT_TTL`] (kube-apiserver's
    /// `--event-ttl`, default 1 h): events are a story of the recent past,
    /// and a busy cluster would otherwise keep every one forever.
    async fn reap_events(&self) {
        let now = jiff::Timestamp::now().as_second();
        let (events, _) = self.store.list("events", None);
        for e in events {
            let m = &e.value;
            let last = ["lastTimestamp", "eventTime", "firstTimestamp"]
                .iter()
                .find_map(|f| m[*f].as_str())
                .or_else(|| m["metadata"]["creationTimestamp"].as_str())
                .and_then(|s| s.parse::<jiff::Timestamp>().ok());
            let Some(last) = last else { continue };
            if now - last.as_second() < EVENT_TTL.as_secs() as i64 {
                continue;
            }
            let ns = m["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let rv = m["metadata"]["resourceVersion"].clone();
            let _ = self
                .store
                .mutate(
                    "events",
                    &ns,
                    obj_name(m),
                    false,
                    |cur, _| -> Result<Change, ApiError> {
                        // Not if it was updated meanwhile.
                        Ok(match cur {
                            Some(c) if c.value["metadata"]["resourceVersion"] == rv => {
                                Change::Delete
                            }
                            _ => Change::Keep,
                        })
                    },
                )
                .await;
        }
    }

    async fn reap_pods(&self) {
        let now = jiff::Timestamp::now().as_second();
        let (pods, _) = self.store.list("pods", None);
        for p in pods {
            let Some(ts) = p.value["metadata"]["deletionTimestamp"]
                .as_str()
                .and_then(|s| s.parse::<jiff::Timestamp>().ok())
            else {
                continue;
            };
            if ts.as_second() > now {
                continue;
            }
            let ns = p.value["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let uid = p.value["metadata"]["uid"].clone();
            let _ = self
                .store
                .mutate(
                    "pods",
                    &ns,
                    obj_name(&p.value),
                    false,
                    |cur, _| -> Result<Change, ApiError> {
                        Ok(match cur {
                            Some(c)
                                if c.value["metadata"]["uid"] == uid
                                    && c.value["metadata"]["finalizers"]
                                        .as_array()
                                        .is_none_or(Vec::is_empty) =>
                            {
                                Change::Delete
                            }
                            _ => Change::Keep,
                        })
                    },
                )
                .await;
        }
    }

    async fn collect_dependents(&self, ev: &Event) {
        let uid = ev.obj.value["metadata"]["uid"].clone();
        if uid.is_null() {
            return;
        }
        let ns = ev.namespace().to_string();
        for res in resources::RESOURCES.iter().filter(|r| r.namespaced) {
            if ns.is_empty() {
                continue;
            }
            let (items, _) = self.store.list(&res.id(), Some(&ns));
            for o in items {
                let owned = o.value["metadata"]["ownerReferences"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|r| r["uid"] == uid);
                if owned {
                    let _ = self
                        .delete_one(res, &ns, obj_name(&o.value), &json!({}), false)
                        .await;
                }
            }
        }
    }

    /// Creates the built-in namespaces and the `kubernetes` Service.
    pub async fn bootstrap(
        &self,
        advertise: Option<std::net::IpAddr>,
        port: u16,
    ) -> Result<(), ApiError> {
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let mut obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "uid": new_uid(), "creationTimestamp": now_rfc3339()}});
            kinds::apply_defaults("Namespace", &mut obj);
            self.store
                .mutate(
                    "namespaces",
                    "",
                    ns,
                    false,
                    |cur, _| -> Result<Change, ApiError> {
                        Ok(if cur.is_some() {
                            Change::Keep
                        } else {
                            Change::Put(obj)
                        })
                    },
                )
                .await?;
        }
        let (namespaces, _) = self.store.list("namespaces", None);
        for n in namespaces {
            let ns = obj_name(&n.value);
            if n.value["metadata"]["deletionTimestamp"].is_string() {
                continue;
            }
            self.ensure_default_sa(ns).await;
            self.ensure_root_ca(ns).await;
        }
        crate::rbac::bootstrap(&self.store, &now_rfc3339(), new_uid).await?;
        let first = Ipv4Addr::from(u32::from(self.cfg.service_cidr.network()) + 1).to_string();
        let mut svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kubernetes", "namespace": "default", "uid": new_uid(), "creationTimestamp": now_rfc3339(),
            "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": first, "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]}});
        kinds::apply_defaults("Service", &mut svc);
        let cfg = self.cfg.clone();
        self.store
            .mutate(
                "services",
                "default",
                "kubernetes",
                false,
                |cur, txn| -> Result<Change, ApiError> {
                    if cur.is_some() {
                        return Ok(Change::Keep);
                    }
                    allocate_service(&cfg, &mut svc, None, txn)?;
                    Ok(Change::Put(svc))
                },
            )
            .await?;
        if let Some(ip) = advertise {
            let ep = json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "kubernetes", "namespace": "default", "uid": new_uid(), "creationTimestamp": now_rfc3339(),
                "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
                "subsets": [{"addresses": [{"ip": ip.to_string()}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]});
            let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "kubernetes", "namespace": "default", "uid": new_uid(), "creationTimestamp": now_rfc3339(),
                "labels": {"kubernetes.io/service-name": "kubernetes", "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
                "addressType": if ip.is_ipv4() { "IPv4" } else { "IPv6" },
                "endpoints": [{"addresses": [ip.to_string()], "conditions": {"ready": true, "serving": true, "terminating": false}}],
                "ports": [{"name": "https", "port": port, "protocol": "TCP"}]});
            for (rid, obj) in [
                ("endpoints", ep),
                ("discovery.k8s.io/endpointslices", slice),
            ] {
                self.store
                    .mutate(
                        rid,
                        "default",
                        "kubernetes",
                        false,
                        |cur, _| -> Result<Change, ApiError> {
                            Ok(match cur {
                                Some(c)
                                    if c.value["subsets"] == obj["subsets"]
                                        && c.value["endpoints"] == obj["endpoints"] =>
                                {
                                    Change::Keep
                                }
                                Some(c) => {
                                    let mut o = obj;
                                    o["metadata"]["uid"] = c.value["metadata"]["uid"].clone();
                                    o["metadata"]["creationTimestamp"] =
                                        c.value["metadata"]["creationTimestamp"].clone();
                                    Change::Put(o)
                                }
                                None => Change::Put(obj),
                            })
                        },
                    )
                    .await?;
            }
        }
        Ok(())
    }
}

fn pod_terminal(v: &Value) -> bool {
    matches!(v["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let t = route("/api/v1/namespaces/default/pods/web/status").unwrap();
        assert_eq!(
            (
                t.res.plural,
                t.ns.as_deref(),
                t.name.as_deref(),
                t.sub.as_deref()
            ),
            ("pods", Some("default"), Some("web"), Some("status"))
        );
        let t = route("/api/v1/namespaces/kube-system").unwrap();
        assert_eq!(
            (t.res.plural, t.name.as_deref()),
            ("namespaces", Some("kube-system"))
        );
        let t = route("/apis/apps/v1/deployments").unwrap();
        assert_eq!((t.res.plural, t.ns.as_deref()), ("deployments", None));
        assert!(route("/api/v1/namespaces/default/pods/web/bogus").is_err());
        assert!(route("/apis/apps/v2/deployments").is_err());
        let t = route("/api/v1/watch/namespaces/a/pods").unwrap();
        assert!(t.watch_path);
    }

    #[test]
    fn queries_decode() {
        let q = parse_query(Some("labelSelector=app%3Dweb%2Ctier+in+%28a%29&limit=5"));
        assert_eq!(q["labelSelector"], "app=web,tier in (a)");
        assert_eq!(q["limit"], "5");
    }

    #[test]
    fn boolean_parameters_are_read_as_go_parses_them() {
        // The official Python client sends watch=True.
        for v in ["true", "True", "TRUE", "1", "t", "T"] {
            assert!(
                query_flag(&parse_query(Some(&format!("watch={v}"))), "watch"),
                "{v}"
            );
        }
        for v in ["false", "False", "0", "f", "", "yes"] {
            assert!(
                !query_flag(&parse_query(Some(&format!("watch={v}"))), "watch"),
                "{v}"
            );
        }
        assert_eq!(parse_bool("yes"), None);
    }
}
