//! Who is asking and whether they may: bearer tokens (the static token file
//! and ServiceAccount tokens from TokenRequest), impersonation, the request
//! attributes kube-apiserver derives from a URL, its 403 wording, and the
//! review APIs (SelfSubjectAccessReview, SubjectAccessReview,
//! SelfSubjectRulesReview, SelfSubjectReview, TokenReview).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::api::{ApiError, Query, decode_body, json_response};
use crate::kinds::FieldError;
use crate::rbac::{AUTHENTICATED, Attributes, Rbac, UNAUTHENTICATED};
use crate::resources::Resource;
use crate::security::{SecurityError, Tokens, User, write_private};
use crate::store::Store;

/// The audience of tokens meant for this API server (kube-apiserver's
/// default issuer and API audience).
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// How long a requested token lives unless asked otherwise (kube's default).
pub const DEFAULT_TOKEN_SECONDS: i64 = 3600;

/// The groups of every ServiceAccount in `ns`.
pub fn service_account_groups(ns: &str) -> Vec<String> {
    vec![
        "system:serviceaccounts".to_string(),
        format!("system:serviceaccounts:{ns}"),
    ]
}

/// An object a token is bound to (its lifetime ends with the object's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundObject {
    /// Object name.
    pub name: String,
    /// Object uid.
    pub uid: String,
}

/// One issued ServiceAccount token, as recorded in the state directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    /// The bearer token.
    pub token: String,
    /// The ServiceAccount's namespace.
    pub namespace: String,
    /// The ServiceAccount's name.
    pub service_account: String,
    /// The ServiceAccount's uid when issued (a re-created account is another one).
    pub uid: String,
    /// Audiences.
    pub audiences: Vec<String>,
    /// Expiry, seconds since the epoch.
    pub expires: i64,
    /// A unique id (kube's `jti`), shown as the credential id.
    pub id: String,
    /// The Pod it is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<BoundObject>,
    /// The Node it is bound to (or the bound Pod's node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<BoundObject>,
}

struct TokenFile {
    file: std::fs::File,
    lines: usize,
}

/// ServiceAccount tokens: opaque random strings recorded with their subject
/// in `serviceaccount-tokens.jsonl` (one record a line, appended and synced
/// before the token is handed out; compacted through a temporary file and a
/// rename), so they survive restarts. A token is only as good as its
/// ServiceAccount (and bound Pod): both are checked on every use.
#[derive(Clone)]
pub struct BoundTokens {
    path: PathBuf,
    map: Arc<RwLock<HashMap<String, Arc<TokenRecord>>>>,
    file: Arc<Mutex<TokenFile>>,
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SecurityError + '_ {
    move |source| SecurityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn open_append(path: &Path) -> Result<std::fs::File, SecurityError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))
}

impl BoundTokens {
    /// Loads `dir/serviceaccount-tokens.jsonl`, dropping expired records
    /// (and a torn last line), and rewrites it compacted.
    pub fn load(dir: &Path) -> Result<BoundTokens, SecurityError> {
        let path = dir.join("serviceaccount-tokens.jsonl");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io(&path)(e)),
        };
        let t = now();
        let map: HashMap<String, Arc<TokenRecord>> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<TokenRecord>(l).ok())
            .filter(|r| r.expires > t)
            .map(|r| (r.token.clone(), Arc::new(r)))
            .collect();
        let lines = map.len();
        write_records(&path, map.values())?;
        let file = open_append(&path)?;
        Ok(BoundTokens {
            path,
            map: Arc::new(RwLock::new(map)),
            file: Arc::new(Mutex::new(TokenFile { file, lines })),
        })
    }

    /// Records a token durably, then makes it valid.
    pub fn record(&self, r: TokenRecord) -> Result<(), SecurityError> {
        let mut line = serde_json::to_vec(&r).expect("json");
        line.push(b'\n');
        let mut f = self.file.lock().expect("token file lock");
        f.file.write_all(&line).map_err(io(&self.path))?;
        f.file.sync_data().map_err(io(&self.path))?;
        f.lines += 1;
        let mut map = self.map.write().expect("tokens lock");
        map.insert(r.token.clone(), Arc::new(r));
        if f.lines > 2 * map.len() + 256 {
            let t = now();
            map.retain(|_, r| r.expires > t);
            write_records(&self.path, map.values())?;
            f.file = open_append(&self.path)?;
            f.lines = map.len();
        }
        Ok(())
    }

    /// The record of a token, if it was issued (expired or not).
    pub fn get(&self, token: &str) -> Option<Arc<TokenRecord>> {
        self.map.read().expect("tokens lock").get(token).cloned()
    }
}

fn write_records<'a>(
    path: &Path,
    records: impl Iterator<Item = &'a Arc<TokenRecord>>,
) -> Result<(), SecurityError> {
    let mut text = Vec::new();
    for r in records {
        serde_json::to_writer(&mut text, &**r).expect("json");
        text.push(b'\n');
    }
    write_private(path, &text)
}

/// Turns bearer tokens into users.
#[derive(Clone)]
pub struct Authenticator {
    /// The static token file (admin, nodes, ...).
    pub tokens: Tokens,
    /// ServiceAccount tokens.
    pub bound: BoundTokens,
    store: Arc<Store>,
}

impl Authenticator {
    /// An authenticator over both token sources.
    pub fn new(tokens: Tokens, bound: BoundTokens, store: Arc<Store>) -> Authenticator {
        Authenticator {
            tokens,
            bound,
            store,
        }
    }

    /// The user of a bearer token meant for `audience` (None: unknown,
    /// expired, or its ServiceAccount or bound Pod is gone). Every
    /// authenticated user is in `system:authenticated`.
    pub fn authenticate(&self, token: &str) -> Option<User> {
        let mut user = match self.bound.get(token) {
            Some(r) => self.service_account_user(&r, API_AUDIENCE)?,
            None => self.tokens.check(token)?,
        };
        if !user.in_group(AUTHENTICATED) {
            user.groups.push(AUTHENTICATED.to_string());
        }
        Some(user)
    }

    fn service_account_user(&self, r: &TokenRecord, audience: &str) -> Option<User> {
        if r.expires <= now() || !r.audiences.iter().any(|a| a == audience) {
            return None;
        }
        let sa = self
            .store
            .get("serviceaccounts", &r.namespace, &r.service_account)?;
        if sa.value["metadata"]["uid"].as_str() != Some(r.uid.as_str()) {
            return None;
        }
        let mut extra = std::collections::BTreeMap::new();
        extra.insert(
            "authentication.kubernetes.io/credential-id".to_string(),
            vec![format!("JTI={}", r.id)],
        );
        if let Some(p) = &r.pod {
            let pod = self.store.get("pods", &r.namespace, &p.name)?;
            if pod.value["metadata"]["uid"].as_str() != Some(p.uid.as_str()) {
                return None;
            }
            extra.insert(
                "authentication.kubernetes.io/pod-name".into(),
                vec![p.name.clone()],
            );
            extra.insert(
                "authentication.kubernetes.io/pod-uid".into(),
                vec![p.uid.clone()],
            );
        }
        if let Some(n) = &r.node {
            if r.pod.is_none() {
                let node = self.store.get("nodes", "", &n.name)?;
                if node.value["metadata"]["uid"].as_str() != Some(n.uid.as_str()) {
                    return None;
                }
            }
            extra.insert(
                "authentication.kubernetes.io/node-name".into(),
                vec![n.name.clone()],
            );
            extra.insert(
                "authentication.kubernetes.io/node-uid".into(),
                vec![n.uid.clone()],
            );
        }
        Some(User {
            name: format!(
                "system:serviceaccount:{}:{}",
                r.namespace, r.service_account
            ),
            uid: r.uid.clone(),
            groups: service_account_groups(&r.namespace),
            extra,
        })
    }

    /// TokenReview's view: the user of `token` for any of `audiences`
    /// (the API server's when empty), and the audiences it matched.
    pub fn review(&self, token: &str, audiences: &[String]) -> Option<(User, Vec<String>)> {
        let wanted: Vec<String> = if audiences.is_empty() {
            vec![API_AUDIENCE.to_string()]
        } else {
            audiences.to_vec()
        };
        let (mut user, matched) = match self.bound.get(token) {
            Some(r) => {
                let a = wanted.iter().find(|a| r.audiences.contains(a))?;
                (self.service_account_user(&r, a)?, vec![a.clone()])
            }
            // Static tokens are for the API server only.
            None if wanted.iter().any(|a| a == API_AUDIENCE) => {
                (self.tokens.check(token)?, vec![API_AUDIENCE.to_string()])
            }
            None => return None,
        };
        if !user.in_group(AUTHENTICATED) {
            user.groups.push(AUTHENTICATED.to_string());
        }
        Some((user, matched))
    }
}

fn random_token() -> String {
    let b: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn rfc3339(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn invalid(kind: &str, group: &str, name: &str, field: &str, value: &str, why: &str) -> ApiError {
    ApiError::invalid(
        kind,
        group,
        name,
        &[FieldError {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {value}: {why}"),
        }],
    )
}

/// Issues a token for ServiceAccount `ns/name` as TokenRequest does:
/// `spec` is a TokenRequestSpec (audiences, expirationSeconds,
/// boundObjectRef to a Pod or Node); the answer is the TokenRequest with
/// `status.token` and `status.expirationTimestamp`.
pub async fn request_token(
    store: &Store,
    bound: &BoundTokens,
    ns: &str,
    name: &str,
    spec: &Value,
) -> Result<Value, ApiError> {
    let sa_res = crate::resources::find("", "v1", "serviceaccounts").expect("served");
    let sa = store
        .get("serviceaccounts", ns, name)
        .ok_or_else(|| ApiError::not_found(sa_res, name))?;
    const KIND: &str = "TokenRequest";
    const GROUP: &str = "authentication.k8s.io";
    let seconds = match &spec["expirationSeconds"] {
        Value::Null => DEFAULT_TOKEN_SECONDS,
        v => v.as_i64().ok_or_else(|| {
            ApiError::bad_request(
                "TokenRequest in version \"v1\" cannot be handled as a TokenRequest: spec.expirationSeconds must be an integer",
            )
        })?,
    };
    if seconds < 600 {
        return Err(invalid(
            KIND,
            GROUP,
            name,
            "spec.expirationSeconds",
            &seconds.to_string(),
            "may not specify a duration less than 10 minutes",
        ));
    }
    if seconds > 1 << 32 {
        return Err(invalid(
            KIND,
            GROUP,
            name,
            "spec.expirationSeconds",
            &seconds.to_string(),
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    let mut audiences: Vec<String> = spec["audiences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    if audiences.is_empty() {
        audiences.push(API_AUDIENCE.to_string());
    }
    let (mut pod, mut node) = (None, None);
    let r = &spec["boundObjectRef"];
    if r.is_object() {
        let kind = r["kind"].as_str().unwrap_or("");
        let av = r["apiVersion"].as_str().unwrap_or("v1");
        let obj_name = r["name"].as_str().unwrap_or("");
        let want_uid = r["uid"].as_str().unwrap_or("");
        let (rid, obj_ns) = match (av, kind) {
            ("v1", "Pod") => ("pods", ns),
            ("v1", "Node") => ("nodes", ""),
            _ => {
                let gvk = match av.split_once('/') {
                    Some((g, v)) => format!("{g}/{v}, Kind={kind}"),
                    None => format!("/{av}, Kind={kind}"),
                };
                return Err(ApiError::bad_request(format!(
                    "cannot bind token for object of type {gvk}"
                )));
            }
        };
        let res = crate::resources::find("", "v1", rid).expect("served");
        let obj = store
            .get(rid, obj_ns, obj_name)
            .ok_or_else(|| ApiError::not_found(res, obj_name))?;
        let uid = obj.value["metadata"]["uid"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if !want_uid.is_empty() && want_uid != uid {
            let mut e = ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {kind} {obj_name:?}: the UID in the bound object reference ({want_uid}) does not match the UID in record. The object might have been deleted and then recreated"
                ),
            );
            e.details = Some(json!({"name": obj_name, "kind": kind}));
            return Err(e);
        }
        if kind == "Pod" {
            let pod_sa = obj.value["spec"]["serviceAccountName"]
                .as_str()
                .unwrap_or("default");
            if pod_sa != name {
                return Err(ApiError::bad_request(format!(
                    "cannot bind token for serviceaccount {name:?} to pod running with different serviceaccount name."
                )));
            }
            pod = Some(BoundObject {
                name: obj_name.to_string(),
                uid: uid.clone(),
            });
            if let Some(n) = obj.value["spec"]["nodeName"]
                .as_str()
                .filter(|n| !n.is_empty())
                && let Some(no) = store.get("nodes", "", n)
            {
                node = Some(BoundObject {
                    name: n.to_string(),
                    uid: no.value["metadata"]["uid"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                });
            }
        } else {
            node = Some(BoundObject {
                name: obj_name.to_string(),
                uid,
            });
        }
    }
    let issued = now();
    let record = TokenRecord {
        token: random_token(),
        namespace: ns.to_string(),
        service_account: name.to_string(),
        uid: sa.value["metadata"]["uid"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        audiences: audiences.clone(),
        expires: issued + seconds,
        id: {
            let b: [u8; 16] = rand::random();
            b.iter().map(|x| format!("{x:02x}")).collect()
        },
        pod,
        node,
    };
    let token = record.token.clone();
    let b = bound.clone();
    tokio::task::spawn_blocking(move || b.record(record))
        .await
        .map_err(|e| {
            ApiError::new(
                500,
                "InternalError",
                format!("Internal error occurred: {e}"),
            )
        })?
        .map_err(|e| {
            ApiError::new(
                500,
                "InternalError",
                format!("Internal error occurred: {e}"),
            )
        })?;
    tracing::debug!(namespace = ns, serviceaccount = name, "token issued");
    let mut out_spec = spec.clone();
    if !out_spec.is_object() {
        out_spec = json!({});
    }
    out_spec["audiences"] = json!(audiences);
    out_spec["expirationSeconds"] = json!(seconds);
    if out_spec["boundObjectRef"].is_null()
        && let Some(m) = out_spec.as_object_mut()
    {
        m.remove("boundObjectRef");
    }
    Ok(
        json!({"kind": KIND, "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": rfc3339(issued)},
        "spec": out_spec,
        "status": {"token": token, "expirationTimestamp": rfc3339(issued + seconds)}}),
    )
}

/// `POST .../serviceaccounts/{name}/token`.
pub async fn token_request_endpoint(
    store: &Store,
    bound: &BoundTokens,
    ns: &str,
    name: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let req = decode_body(
        headers,
        body,
        "TokenRequest in version \"v1\" cannot be handled as a TokenRequest",
    )?;
    match req["kind"].as_str() {
        None | Some("" | "TokenRequest") => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "TokenRequest in version \"v1\" cannot be handled as a TokenRequest: the kind in the data ({k}) does not match the expected kind (TokenRequest)"
            )));
        }
    }
    let out = request_token(store, bound, ns, name, &req["spec"]).await?;
    Ok(json_response(StatusCode::CREATED, &out))
}

/// kube's request attributes of a URL (its RequestInfoFactory): resource
/// requests under `/api/v1` and `/apis/<group>/<version>`, everything else a
/// non-resource path; `get` without a name is `list` (or `watch`), `delete`
/// without one `deletecollection`; `/namespaces/<ns>` is the namespace itself.
pub fn request_info(method: &Method, path: &str, q: &Query) -> Attributes {
    let non_resource = || Attributes {
        verb: method.as_str().to_ascii_lowercase(),
        path: path.to_string(),
        ..Attributes::default()
    };
    let mut parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.len() < 3 {
        return non_resource();
    }
    let group = match parts[0] {
        "api" => {
            parts.remove(0);
            ""
        }
        "apis" => {
            if parts.len() < 4 {
                return non_resource();
            }
            parts.remove(0);
            parts.remove(0)
        }
        _ => return non_resource(),
    };
    parts.remove(0); // the version
    let mut a = Attributes {
        resource_request: true,
        api_group: group.to_string(),
        ..Attributes::default()
    };
    if matches!(parts[0], "watch" | "proxy") {
        a.verb = parts.remove(0).to_string();
    } else {
        a.verb = match *method {
            Method::POST => "create",
            Method::GET | Method::HEAD => "get",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE => "delete",
            _ => "",
        }
        .to_string();
    }
    if parts.first() == Some(&"namespaces")
        && let Some(ns) = parts.get(1)
    {
        a.namespace = ns.to_string();
        if parts.len() > 2 && !matches!(parts[2], "status" | "finalize") {
            parts.drain(..2);
        }
    }
    if parts.len() >= 3 && a.verb != "proxy" {
        a.subresource = parts[2].to_string();
    }
    if parts.len() >= 2 {
        a.name = parts[1].to_string();
    }
    if let Some(r) = parts.first() {
        a.resource = r.to_string();
    }
    if a.name.is_empty() && a.verb == "get" {
        a.verb = if crate::api::query_flag(q, "watch") {
            "watch"
        } else {
            "list"
        }
        .into();
        if let Some(fs) = q.get("fieldSelector")
            && let Some(n) = fs
                .strip_prefix("metadata.name=")
                .or_else(|| fs.strip_prefix("metadata.name=="))
            && !n.contains(',')
            && !n.is_empty()
            && !n.contains('/')
            && n != "."
            && n != ".."
        {
            a.name = n.trim_start_matches('=').to_string();
        }
    }
    if a.name.is_empty() && a.verb == "delete" {
        a.verb = "deletecollection".into();
    }
    a
}

fn sanitize(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// kube-apiserver's 403 for a refused request, word for word
/// (`pods is forbidden: User "x" cannot list resource "pods" in API group ""
/// in the namespace "default"`), with the authorizer's reason appended.
pub fn forbidden(user: &str, a: &Attributes, reason: &str) -> ApiError {
    let mut msg = if !a.resource_request {
        format!("User {user:?} cannot {} path {:?}", a.verb, a.path)
    } else {
        let resource = if a.subresource.is_empty() {
            a.resource.clone()
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        if a.namespace.is_empty() {
            format!(
                "User {user:?} cannot {} resource {resource:?} in API group {:?} at the cluster scope",
                a.verb, a.api_group
            )
        } else {
            format!(
                "User {user:?} cannot {} resource {resource:?} in API group {:?} in the namespace {:?}",
                a.verb, a.api_group, a.namespace
            )
        }
    };
    msg = sanitize(&msg);
    if !reason.is_empty() {
        msg = format!("{msg}: {reason}");
    }
    let qualified = if a.api_group.is_empty() {
        a.resource.clone()
    } else {
        format!("{}.{}", a.resource, a.api_group)
    };
    let (message, mut details) = if !a.resource_request || a.resource.is_empty() {
        (format!("forbidden: {msg}"), json!({}))
    } else if a.name.is_empty() {
        (
            format!("{qualified} is forbidden: {msg}"),
            json!({"kind": a.resource}),
        )
    } else {
        (
            format!("{qualified} {:?} is forbidden: {msg}", a.name),
            json!({"name": a.name, "kind": a.resource}),
        )
    };
    if a.resource_request && !a.api_group.is_empty() {
        details["group"] = json!(a.api_group);
    }
    let mut e = ApiError::new(403, "Forbidden", message);
    e.details = Some(details);
    e
}

/// Whether the request carries impersonation headers.
pub fn wants_impersonation(headers: &HeaderMap) -> bool {
    headers
        .keys()
        .any(|k| k.as_str().starts_with("impersonate-"))
}

/// The identity a request acts as after its `Impersonate-*` headers, each
/// one authorized (`impersonate` on users, groups, serviceaccounts, uids,
/// userextras) for the caller, as kube-apiserver's impersonation filter does.
pub fn impersonate(rbac: &Rbac, caller: &User, headers: &HeaderMap) -> Result<User, ApiError> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect()
    };
    let user = values("impersonate-user").into_iter().next();
    let groups = values("impersonate-group");
    let uid = values("impersonate-uid").into_iter().next();
    let mut extra: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (k, v) in headers {
        if let Some(key) = k.as_str().strip_prefix("impersonate-extra-")
            && let Ok(v) = v.to_str()
        {
            let key = crate::api::pct_decode(key);
            extra.entry(key).or_default().push(v.to_string());
        }
    }
    let Some(name) = user else {
        let mut asked: Vec<String> = groups.iter().map(|g| format!("group {g:?}")).collect();
        if let Some(u) = &uid {
            asked.push(format!("uid {u:?}"));
        }
        for k in extra.keys() {
            asked.push(format!("extra {k:?}"));
        }
        return Err(ApiError::bad_request(format!(
            "requested [{}] without impersonating a user",
            asked.join(" ")
        )));
    };
    let check = |a: Attributes| -> Result<(), ApiError> {
        let d = rbac.authorize(caller, &a);
        if d.allowed {
            Ok(())
        } else {
            tracing::debug!(user = %caller.name, reason = %d.reason, "impersonation refused");
            Err(forbidden(&caller.name, &a, &d.reason))
        }
    };
    let ask = |group: &str, resource: &str, sub: &str, ns: &str, name: &str| {
        Attributes::resource("impersonate", group, resource, sub, ns, name)
    };
    let mut out_groups = Vec::new();
    match name
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'))
    {
        Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains(':') => {
            check(ask("", "serviceaccounts", "", ns, sa))?;
            if groups.is_empty() {
                out_groups = service_account_groups(ns);
            }
        }
        _ => check(ask("", "users", "", "", &name))?,
    }
    for g in &groups {
        check(ask("", "groups", "", "", g))?;
        out_groups.push(g.clone());
    }
    for (k, vs) in &extra {
        for v in vs {
            check(ask("authentication.k8s.io", "userextras", k, "", v))?;
        }
    }
    if let Some(u) = &uid {
        check(ask("authentication.k8s.io", "uids", "", "", u))?;
    }
    if name != "system:anonymous"
        && !out_groups
            .iter()
            .any(|g| g == AUTHENTICATED || g == UNAUTHENTICATED)
    {
        out_groups.push(AUTHENTICATED.to_string());
    }
    Ok(User {
        name,
        uid: uid.unwrap_or_default(),
        groups: out_groups,
        extra,
    })
}

fn user_info(u: &User) -> Value {
    let mut v = json!({"username": u.name, "groups": u.groups});
    if !u.uid.is_empty() {
        v["uid"] = json!(u.uid);
    }
    if !u.extra.is_empty() {
        v["extra"] = json!(u.extra);
    }
    v
}

fn attributes_of(spec: &Value) -> Option<Attributes> {
    let r = &spec["resourceAttributes"];
    if r.is_object() {
        let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
        return Some(Attributes {
            verb: s("verb"),
            resource_request: true,
            api_group: s("group"),
            resource: s("resource"),
            subresource: s("subresource"),
            namespace: s("namespace"),
            name: s("name"),
            path: String::new(),
        });
    }
    let n = &spec["nonResourceAttributes"];
    n.is_object().then(|| Attributes {
        verb: n["verb"].as_str().unwrap_or("").to_string(),
        path: n["path"].as_str().unwrap_or("").to_string(),
        ..Attributes::default()
    })
}

/// Answers a review (`res` is one of the authentication.k8s.io or
/// authorization.k8s.io review resources) for `caller`: 201 with the
/// review and its status, as kube-apiserver does. Nothing is stored.
pub fn review(
    rbac: &Rbac,
    authn: &Authenticator,
    caller: &User,
    res: &Resource,
    url_ns: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let what = format!(
        "{} in version \"v1\" cannot be handled as a {}",
        res.kind, res.kind
    );
    let mut obj = decode_body(headers, body, &what)?;
    crate::api::check_type(res, &mut obj)?;
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({"creationTimestamp": null});
    }
    let spec = obj["spec"].clone();
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    let access = |who: &User, spec: &Value| -> Result<Value, ApiError> {
        let both =
            spec["resourceAttributes"].is_object() && spec["nonResourceAttributes"].is_object();
        let Some(a) = attributes_of(spec).filter(|_| !both) else {
            let (field, why) = if both {
                (
                    "spec.nonResourceAttributes",
                    "cannot be specified in combination with resourceAttributes",
                )
            } else {
                (
                    "spec.resourceAttributes",
                    "exactly one of nonResourceAttributes or resourceAttributes must be specified",
                )
            };
            return Err(invalid(res.kind, res.group, &name, field, "\"null\"", why));
        };
        let d = rbac.authorize(who, &a);
        let mut st = json!({"allowed": d.allowed});
        if !d.reason.is_empty() {
            st["reason"] = json!(d.reason);
        }
        Ok(st)
    };
    let status = match res.kind {
        "SelfSubjectAccessReview" => access(caller, &spec)?,
        "SubjectAccessReview" | "LocalSubjectAccessReview" => {
            let mut spec = spec.clone();
            if let Some(ns) = url_ns {
                let given = spec["resourceAttributes"]["namespace"]
                    .as_str()
                    .unwrap_or("");
                if spec["nonResourceAttributes"].is_object() {
                    return Err(invalid(
                        res.kind,
                        res.group,
                        &name,
                        "spec.nonResourceAttributes",
                        "\"null\"",
                        "disallowed on this kind of request",
                    ));
                }
                if !given.is_empty() && given != ns {
                    return Err(invalid(
                        res.kind,
                        res.group,
                        &name,
                        "spec.resourceAttributes.namespace",
                        &format!("{given:?}"),
                        "must match metadata.namespace",
                    ));
                }
                if spec["resourceAttributes"].is_object() {
                    spec["resourceAttributes"]["namespace"] = json!(ns);
                }
                obj["metadata"]["namespace"] = json!(ns);
            }
            let user = spec["user"].as_str().unwrap_or("").to_string();
            let groups: Vec<String> = spec["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect();
            if user.is_empty() && groups.is_empty() {
                return Err(invalid(
                    res.kind,
                    res.group,
                    &name,
                    "spec.user",
                    "\"\"",
                    "at least one of user or group must be specified",
                ));
            }
            let mut extra = std::collections::BTreeMap::new();
            for (k, v) in spec["extra"].as_object().into_iter().flatten() {
                extra.insert(
                    k.clone(),
                    v.as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect(),
                );
            }
            let who = User {
                name: user,
                uid: spec["uid"].as_str().unwrap_or("").to_string(),
                groups,
                extra,
            };
            access(&who, &spec)?
        }
        "SelfSubjectRulesReview" => {
            let ns = spec["namespace"].as_str().unwrap_or("");
            let (rules, errors) = rbac.rules_for(caller, ns);
            let (res_rules, url_rules): (Vec<_>, Vec<_>) =
                rules.iter().partition(|r| r.non_resource_urls.is_empty());
            let resource_rules: Vec<Value> = res_rules
                .iter()
                .map(|r| {
                    let mut v = json!({"verbs": r.verbs});
                    if !r.api_groups.is_empty() {
                        v["apiGroups"] = json!(r.api_groups);
                    }
                    if !r.resources.is_empty() {
                        v["resources"] = json!(r.resources);
                    }
                    if !r.resource_names.is_empty() {
                        v["resourceNames"] = json!(r.resource_names);
                    }
                    v
                })
                .collect();
            let url_rules: Vec<Value> = url_rules
                .iter()
                .map(|r| json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}))
                .collect();
            let mut st = json!({"resourceRules": resource_rules, "nonResourceRules": url_rules, "incomplete": false});
            if !errors.is_empty() {
                st["evaluationError"] = json!(errors.join(", "));
            }
            st
        }
        "SelfSubjectReview" => json!({"userInfo": user_info(caller)}),
        "TokenReview" => {
            let token = spec["token"].as_str().unwrap_or("");
            let audiences: Vec<String> = spec["audiences"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect();
            match authn.review(token, &audiences) {
                Some((u, matched)) => {
                    json!({"authenticated": true, "user": user_info(&u), "audiences": matched})
                }
                None => json!({"user": {}, "error": "invalid bearer token"}),
            }
        }
        _ => {
            return Err(ApiError::new(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            ));
        }
    };
    if res.kind == "TokenReview"
        && let Some(m) = obj["spec"].as_object_mut()
    {
        // The token is not echoed back.
        m.remove("token");
    }
    obj["status"] = status;
    Ok(json_response(StatusCode::CREATED, &obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(m: Method, path: &str, query: &str) -> Attributes {
        request_info(&m, path, &crate::api::parse_query(Some(query)))
    }

    #[test]
    fn request_attributes_as_kube_derives_them() {
        let a = info(Method::GET, "/api/v1/namespaces/default/pods", "");
        assert_eq!(
            (a.verb.as_str(), a.resource.as_str(), a.namespace.as_str()),
            ("list", "pods", "default")
        );
        let a = info(Method::GET, "/api/v1/pods", "watch=true");
        assert_eq!((a.verb.as_str(), a.namespace.as_str()), ("watch", ""));
        let a = info(Method::GET, "/api/v1/watch/namespaces/a/pods", "");
        assert_eq!(a.verb, "watch");
        let a = info(Method::GET, "/api/v1/namespaces/kube-system", "");
        assert_eq!(
            (a.resource.as_str(), a.name.as_str(), a.namespace.as_str()),
            ("namespaces", "kube-system", "kube-system")
        );
        let a = info(Method::PUT, "/api/v1/namespaces/x/finalize", "");
        assert_eq!(
            (a.verb.as_str(), a.resource.as_str(), a.subresource.as_str()),
            ("update", "namespaces", "finalize")
        );
        let a = info(Method::PATCH, "/api/v1/namespaces/d/pods/web/status", "");
        assert_eq!(
            (a.verb.as_str(), a.subresource.as_str(), a.name.as_str()),
            ("patch", "status", "web")
        );
        let a = info(Method::DELETE, "/apis/apps/v1/namespaces/d/deployments", "");
        assert_eq!(
            (a.verb.as_str(), a.api_group.as_str()),
            ("deletecollection", "apps")
        );
        let a = info(
            Method::GET,
            "/api/v1/nodes",
            "fieldSelector=metadata.name%3Dn1",
        );
        assert_eq!((a.verb.as_str(), a.name.as_str()), ("list", "n1"));
        for p in [
            "/api",
            "/api/v1",
            "/apis/apps/v1",
            "/version",
            "/openapi/v3/api/v1",
        ] {
            let a = info(Method::GET, p, "");
            assert!(!a.resource_request, "{p}");
            assert_eq!(a.path, p);
        }
    }

    #[test]
    fn forbidden_words() {
        let a = info(Method::GET, "/api/v1/namespaces/default/pods", "");
        let e = forbidden("system:serviceaccount:default:nobody", &a, "");
        assert_eq!(
            e.message,
            "pods is forbidden: User \"system:serviceaccount:default:nobody\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        );
        assert_eq!(e.status()["details"], json!({"kind": "pods"}));
        let a = info(Method::DELETE, "/api/v1/nodes/n1", "");
        assert_eq!(
            forbidden("bob", &a, "").message,
            "nodes \"n1\" is forbidden: User \"bob\" cannot delete resource \"nodes\" in API group \"\" at the cluster scope"
        );
        let a = info(Method::GET, "/api/v1/namespaces/d/pods/web/log", "");
        assert_eq!(
            forbidden("bob", &a, "").message,
            "pods \"web\" is forbidden: User \"bob\" cannot get resource \"pods/log\" in API group \"\" in the namespace \"d\""
        );
        let a = info(
            Method::POST,
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            "",
        );
        assert_eq!(
            forbidden("bob", &a, "").message,
            "clusterroles.rbac.authorization.k8s.io is forbidden: User \"bob\" cannot create resource \"clusterroles\" in API group \"rbac.authorization.k8s.io\" at the cluster scope"
        );
        let a = info(Method::GET, "/apis", "");
        assert_eq!(
            forbidden("bob", &a, "").message,
            "forbidden: User \"bob\" cannot get path \"/apis\""
        );
    }
}
