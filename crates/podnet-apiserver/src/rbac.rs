//! RBAC as kube-apiserver enforces it: Roles, ClusterRoles and their
//! bindings decide every request, ClusterRoles with an `aggregationRule`
//! are filled from the ClusterRoles their selectors match, and the default
//! roles of kube-apiserver's bootstrap policy are made at start.
//!
//! Rules are not looked up in the store per request: an [`Index`] maps each
//! user and group to the rules bound to it (cluster-wide and per namespace)
//! and is rebuilt whenever an RBAC object changes.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde_json::{Map, Value, json};

use crate::security::User;
use crate::store::{Change, Store, StoreError};

/// The group kube-apiserver allows everything, before RBAC is asked.
pub const MASTERS: &str = "system:masters";
/// The group of every authenticated user.
pub const AUTHENTICATED: &str = "system:authenticated";
/// The group of requests without credentials.
pub const UNAUTHENTICATED: &str = "system:unauthenticated";

const GROUP: &str = crate::resources::RBAC_GROUP;
/// Store id of ClusterRoles.
pub const CLUSTER_ROLES: &str = "rbac.authorization.k8s.io/clusterroles";
/// Store id of ClusterRoleBindings.
pub const CLUSTER_ROLE_BINDINGS: &str = "rbac.authorization.k8s.io/clusterrolebindings";
/// Store id of Roles.
pub const ROLES: &str = "rbac.authorization.k8s.io/roles";
/// Store id of RoleBindings.
pub const ROLE_BINDINGS: &str = "rbac.authorization.k8s.io/rolebindings";

/// What a request asks to do (kube's `authorizer.Attributes`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    /// get, list, watch, create, update, patch, delete, deletecollection,
    /// impersonate, ...; for non-resource requests the lower-case method.
    pub verb: String,
    /// A resource request (else `path` is what is asked for).
    pub resource_request: bool,
    /// API group ("" for core).
    pub api_group: String,
    /// Resource plural.
    pub resource: String,
    /// Subresource ("status", "exec", "token", ...).
    pub subresource: String,
    /// Namespace ("" at the cluster scope).
    pub namespace: String,
    /// Object name ("" for collections).
    pub name: String,
    /// URL path of a non-resource request.
    pub path: String,
}

impl Attributes {
    /// A resource request: `verb` on `group`/`resource`/`sub`, object
    /// `name` in `ns` (empty strings where the request has none).
    pub fn resource(
        verb: &str,
        group: &str,
        resource: &str,
        sub: &str,
        ns: &str,
        name: &str,
    ) -> Self {
        Attributes {
            verb: verb.into(),
            resource_request: true,
            api_group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: ns.into(),
            name: name.into(),
            path: String::new(),
        }
    }
}

/// One PolicyRule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    /// Verbs ("*" for all).
    pub verbs: Vec<String>,
    /// API groups ("*" for all).
    pub api_groups: Vec<String>,
    /// Resources, "resource/subresource", "*/subresource" or "*".
    pub resources: Vec<String>,
    /// Object names (empty for all).
    pub resource_names: Vec<String>,
    /// Non-resource URLs ("/healthz", "/apis/*", "*").
    pub non_resource_urls: Vec<String>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|x| x == "*" || x == want)
}

impl Rule {
    /// Reads a PolicyRule object.
    pub fn from_value(v: &Value) -> Rule {
        Rule {
            verbs: strings(&v["verbs"]),
            api_groups: strings(&v["apiGroups"]),
            resources: strings(&v["resources"]),
            resource_names: strings(&v["resourceNames"]),
            non_resource_urls: strings(&v["nonResourceURLs"]),
        }
    }

    /// The PolicyRule object.
    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("verbs".into(), json!(self.verbs));
        for (k, v) in [
            ("apiGroups", &self.api_groups),
            ("resources", &self.resources),
            ("resourceNames", &self.resource_names),
            ("nonResourceURLs", &self.non_resource_urls),
        ] {
            if !v.is_empty() {
                m.insert(k.into(), json!(v));
            }
        }
        Value::Object(m)
    }

    /// Whether the rule allows the request, with kube's matching: `*`
    /// wildcards, `*/subresource`, resourceNames, URL prefixes ending in `*`.
    pub fn allows(&self, a: &Attributes) -> bool {
        if !has(&self.verbs, &a.verb) {
            return false;
        }
        if !a.resource_request {
            return self.non_resource_urls.iter().any(|u| {
                u == "*"
                    || *u == a.path
                    || u.strip_suffix('*').is_some_and(|p| a.path.starts_with(p))
            });
        }
        if !has(&self.api_groups, &a.api_group) {
            return false;
        }
        let resource_ok = self.resources.iter().any(|r| {
            if r == "*" {
                return true;
            }
            if a.subresource.is_empty() {
                return *r == a.resource;
            }
            r.strip_prefix(&a.resource)
                .and_then(|s| s.strip_prefix('/'))
                .is_some_and(|s| s == a.subresource)
                || r.strip_prefix("*/").is_some_and(|s| s == a.subresource)
        });
        resource_ok && (self.resource_names.is_empty() || self.resource_names.contains(&a.name))
    }
}

/// Rules bound to a subject by one binding, or why they are missing.
#[derive(Debug, Clone)]
struct Grant {
    rules: Result<Arc<[Rule]>, Arc<str>>,
    /// `ClusterRoleBinding "x" of ClusterRole "y" to Group "z"`.
    source: Arc<str>,
}

#[derive(Debug, Default)]
struct Scope {
    users: HashMap<String, Vec<Grant>>,
    groups: HashMap<String, Vec<Grant>>,
}

impl Scope {
    fn add(&mut self, subject: &Value, binding_ns: &str, grant: Grant) {
        let name = subject["name"].as_str().unwrap_or("");
        match subject["kind"].as_str() {
            Some("User") => self.users.entry(name.into()).or_default().push(grant),
            Some("Group") => self.groups.entry(name.into()).or_default().push(grant),
            Some("ServiceAccount") => {
                let ns = subject["namespace"]
                    .as_str()
                    .filter(|n| !n.is_empty())
                    .unwrap_or(binding_ns);
                if !ns.is_empty() && !name.is_empty() {
                    self.users
                        .entry(format!("system:serviceaccount:{ns}:{name}"))
                        .or_default()
                        .push(grant);
                }
            }
            _ => {}
        }
    }

    fn grants<'a>(&'a self, user: &'a User) -> impl Iterator<Item = &'a Grant> + 'a {
        self.users
            .get(&user.name)
            .into_iter()
            .chain(user.groups.iter().filter_map(|g| self.groups.get(g)))
            .flatten()
    }
}

fn q(s: &str) -> String {
    format!("{s:?}")
}

fn describe_subject(s: &Value, binding_ns: &str) -> String {
    let kind = s["kind"].as_str().unwrap_or("");
    let name = s["name"].as_str().unwrap_or("");
    if kind == "ServiceAccount" {
        let ns = s["namespace"]
            .as_str()
            .filter(|n| !n.is_empty())
            .unwrap_or(binding_ns);
        return format!("{kind} {}", q(&format!("{name}/{ns}")));
    }
    format!("{kind} {}", q(name))
}

/// Who may do what: every binding's rules keyed by subject.
#[derive(Debug, Default)]
pub struct Index {
    cluster: Scope,
    namespaces: HashMap<String, Scope>,
}

fn meta_name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or("")
}

fn meta_ns(o: &Value) -> &str {
    o["metadata"]["namespace"].as_str().unwrap_or("")
}

fn rules_of(o: &Value) -> Arc<[Rule]> {
    o["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .map(Rule::from_value)
        .collect()
}

impl Index {
    /// Reads every RBAC object of the store.
    pub fn build(store: &Store) -> Index {
        let cluster_roles: HashMap<String, Arc<[Rule]>> = store
            .list(CLUSTER_ROLES, None)
            .0
            .iter()
            .map(|o| (meta_name(&o.value).to_string(), rules_of(&o.value)))
            .collect();
        let roles: HashMap<(String, String), Arc<[Rule]>> = store
            .list(ROLES, None)
            .0
            .iter()
            .map(|o| {
                (
                    (
                        meta_ns(&o.value).to_string(),
                        meta_name(&o.value).to_string(),
                    ),
                    rules_of(&o.value),
                )
            })
            .collect();
        let mut idx = Index::default();
        let cluster_role = |name: &str| -> Result<Arc<[Rule]>, Arc<str>> {
            cluster_roles.get(name).cloned().ok_or_else(|| {
                Arc::from(
                    format!(
                        "clusterrole.rbac.authorization.k8s.io {} not found",
                        q(name)
                    )
                    .as_str(),
                )
            })
        };
        for b in store.list(CLUSTER_ROLE_BINDINGS, None).0 {
            let v = &b.value;
            let role = v["roleRef"]["name"].as_str().unwrap_or("");
            if v["roleRef"]["kind"] != "ClusterRole" {
                continue;
            }
            let rules = cluster_role(role);
            for s in v["subjects"].as_array().into_iter().flatten() {
                let source = format!(
                    "ClusterRoleBinding {} of ClusterRole {} to {}",
                    q(meta_name(v)),
                    q(role),
                    describe_subject(s, "")
                );
                idx.cluster.add(
                    s,
                    "",
                    Grant {
                        rules: rules.clone(),
                        source: source.into(),
                    },
                );
            }
        }
        for b in store.list(ROLE_BINDINGS, None).0 {
            let v = &b.value;
            let ns = meta_ns(v);
            let kind = v["roleRef"]["kind"].as_str().unwrap_or("");
            let role = v["roleRef"]["name"].as_str().unwrap_or("");
            let rules = match kind {
                "ClusterRole" => cluster_role(role),
                "Role" => roles
                    .get(&(ns.to_string(), role.to_string()))
                    .cloned()
                    .ok_or_else(|| {
                        Arc::from(
                            format!("role.rbac.authorization.k8s.io {} not found", q(role))
                                .as_str(),
                        )
                    }),
                _ => continue,
            };
            let scope = idx.namespaces.entry(ns.to_string()).or_default();
            for s in v["subjects"].as_array().into_iter().flatten() {
                let source = format!(
                    "RoleBinding {} of {kind} {} to {}",
                    q(&format!("{}/{ns}", meta_name(v))),
                    q(role),
                    describe_subject(s, ns)
                );
                scope.add(
                    s,
                    ns,
                    Grant {
                        rules: rules.clone(),
                        source: source.into(),
                    },
                );
            }
        }
        idx
    }

    fn scopes<'a>(&'a self, ns: &str) -> impl Iterator<Item = &'a Scope> + 'a {
        std::iter::once(&self.cluster).chain(if ns.is_empty() {
            None
        } else {
            self.namespaces.get(ns)
        })
    }
}

/// An authorizer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allowed.
    pub allowed: bool,
    /// Why (kube's wording: "RBAC: allowed by ..."; a denial names only
    /// bindings to missing roles; often empty).
    pub reason: String,
}

/// The authorizer: the privileged group first, then RBAC over the index.
#[derive(Default)]
pub struct Rbac {
    index: RwLock<Arc<Index>>,
    sync: tokio::sync::Mutex<()>,
}

impl Rbac {
    /// An authorizer with no bindings (everyone but system:masters denied).
    pub fn new() -> Rbac {
        Rbac::default()
    }

    fn index(&self) -> Arc<Index> {
        self.index.read().expect("rbac lock").clone()
    }

    /// Decides a request of `user`.
    pub fn authorize(&self, user: &User, a: &Attributes) -> Decision {
        if user.in_group(MASTERS) {
            return Decision {
                allowed: true,
                reason: String::new(),
            };
        }
        let idx = self.index();
        let mut errors: Vec<&str> = Vec::new();
        for scope in idx.scopes(&a.namespace) {
            for g in scope.grants(user) {
                match &g.rules {
                    Ok(rules) => {
                        if rules.iter().any(|r| r.allows(a)) {
                            return Decision {
                                allowed: true,
                                reason: format!("RBAC: allowed by {}", g.source),
                            };
                        }
                    }
                    Err(e) => errors.push(e),
                }
            }
        }
        let reason = match errors.as_slice() {
            [] => String::new(),
            [one] => format!("RBAC: {one}"),
            many => format!("RBAC: [{}]", many.join(", ")),
        };
        Decision {
            allowed: false,
            reason,
        }
    }

    /// Every rule that applies to `user` in `namespace` (cluster-wide ones
    /// included), and the errors of bindings to missing roles.
    pub fn rules_for(&self, user: &User, namespace: &str) -> (Vec<Rule>, Vec<String>) {
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        if user.in_group(MASTERS) {
            rules.push(Rule {
                verbs: vec!["*".into()],
                api_groups: vec!["*".into()],
                resources: vec!["*".into()],
                ..Rule::default()
            });
            rules.push(Rule {
                verbs: vec!["*".into()],
                non_resource_urls: vec!["*".into()],
                ..Rule::default()
            });
        }
        let idx = self.index();
        for scope in idx.scopes(namespace) {
            for g in scope.grants(user) {
                match &g.rules {
                    Ok(r) => rules.extend(r.iter().cloned()),
                    Err(e) => errors.push(e.to_string()),
                }
            }
        }
        (rules, errors)
    }

    /// Rebuilds the index from the store.
    pub fn rebuild(&self, store: &Store) {
        let idx = Arc::new(Index::build(store));
        *self.index.write().expect("rbac lock") = idx;
    }

    /// Fills aggregated ClusterRoles, then rebuilds the index; one at a time.
    pub async fn sync(&self, store: &Store) {
        let _one = self.sync.lock().await;
        if let Err(e) = aggregate(store).await {
            tracing::warn!(error = %e, "clusterrole aggregation failed");
        }
        self.rebuild(store);
    }

    /// Keeps the index and aggregated roles current as RBAC objects change
    /// (also through in-process writes and namespace deletion).
    pub async fn run(self: Arc<Self>, store: Arc<Store>) {
        let Ok((_, start)) = store.watch("", None, None) else {
            return;
        };
        let mut rx = start.rx;
        loop {
            let relevant = match rx.recv().await {
                Ok(ev) => ev.resource.starts_with("rbac.authorization.k8s.io/"),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            if !relevant {
                continue;
            }
            // Take whatever else is already queued: one rebuild for a burst.
            while let Ok(_) | Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) =
                rx.try_recv()
            {}
            self.sync(&store).await;
        }
    }
}

/// Fills `rules` of every ClusterRole with an aggregationRule from the
/// ClusterRoles its selectors match (sorted by name, duplicates dropped),
/// until nothing changes (aggregated roles may feed others: view -> edit -> admin).
pub async fn aggregate(store: &Store) -> Result<(), StoreError> {
    for _ in 0..8 {
        let (roles, _) = store.list(CLUSTER_ROLES, None);
        let mut changed = false;
        for cr in &roles {
            let Some(sels) = cr.value["aggregationRule"]["clusterRoleSelectors"].as_array() else {
                continue;
            };
            let me = meta_name(&cr.value);
            let mut rules: Vec<Value> = Vec::new();
            let empty = Map::new();
            for other in &roles {
                if meta_name(&other.value) == me {
                    continue;
                }
                let labels = other.value["metadata"]["labels"]
                    .as_object()
                    .unwrap_or(&empty);
                if !sels
                    .iter()
                    .any(|s| crate::selector::label_selector_matches(s, labels))
                {
                    continue;
                }
                for r in other.value["rules"].as_array().into_iter().flatten() {
                    let r = Rule::from_value(r).to_value();
                    if !rules.contains(&r) {
                        rules.push(r);
                    }
                }
            }
            let current: Vec<Value> = cr.value["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| Rule::from_value(r).to_value())
                .collect();
            if current == rules {
                continue;
            }
            let uid = cr.value["metadata"]["uid"].clone();
            store
                .mutate(
                    CLUSTER_ROLES,
                    "",
                    me,
                    false,
                    |cur, _| -> Result<Change, StoreError> {
                        Ok(match cur {
                            Some(c) if c.value["metadata"]["uid"] == uid => {
                                let mut v = c.value.clone();
                                v["rules"] = Value::Array(rules);
                                Change::Put(v)
                            }
                            _ => Change::Keep,
                        })
                    },
                )
                .await?;
            changed = true;
        }
        if !changed {
            break;
        }
    }
    Ok(())
}

const AGG_ADMIN: &str = "rbac.authorization.k8s.io/aggregate-to-admin";
const AGG_EDIT: &str = "rbac.authorization.k8s.io/aggregate-to-edit";
const AGG_VIEW: &str = "rbac.authorization.k8s.io/aggregate-to-view";
const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
/// Every verb of a resource, as discovery lists them.
const READ_WRITE: &[&str] = crate::resources::VERBS;

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

fn urls(verbs: &[&str], urls: &[&str]) -> Value {
    json!({"nonResourceURLs": urls, "verbs": verbs})
}

fn cluster_role(
    name: &str,
    labels: Value,
    rules: Vec<Value>,
    aggregate_from: Option<&str>,
) -> Value {
    let mut l = json!({"kubernetes.io/bootstrapping": "rbac-defaults"});
    for (k, v) in labels.as_object().into_iter().flatten() {
        l[k] = v.clone();
    }
    let mut o = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name, "labels": l, "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
        "rules": rules});
    if let Some(label) = aggregate_from {
        o["aggregationRule"] = json!({"clusterRoleSelectors": [{"matchLabels": {label: "true"}}]});
    }
    o
}

fn cluster_role_binding(name: &str, groups: &[&str]) -> Value {
    let subjects: Vec<Value> = groups
        .iter()
        .map(|g| json!({"apiGroup": GROUP, "kind": "Group", "name": g}))
        .collect();
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
        "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": name},
        "subjects": subjects})
}

/// The ClusterRoles of kube-apiserver's bootstrap policy that matter here,
/// with rules for the kinds this server serves, and `system:node`: the
/// stand-in for the Node authorizer (what the lab's node agents do).
pub fn bootstrap_cluster_roles() -> Vec<Value> {
    let discovery_urls = [
        "/api",
        "/api/*",
        "/apis",
        "/apis/*",
        "/healthz",
        "/livez",
        "/openapi",
        "/openapi/*",
        "/readyz",
        "/version",
        "/version/",
    ];
    vec![
        cluster_role(
            "cluster-admin",
            json!({}),
            vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])],
            None,
        ),
        cluster_role(
            "system:discovery",
            json!({}),
            vec![urls(&["get"], &discovery_urls)],
            None,
        ),
        cluster_role(
            "system:basic-user",
            json!({}),
            vec![
                rule(
                    &["create"],
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                ),
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
            ],
            None,
        ),
        cluster_role(
            "system:public-info-viewer",
            json!({}),
            vec![urls(
                &["get"],
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
            )],
            None,
        ),
        cluster_role("admin", json!({}), vec![], Some(AGG_ADMIN)),
        cluster_role("edit", json!({AGG_ADMIN: "true"}), vec![], Some(AGG_EDIT)),
        cluster_role("view", json!({AGG_EDIT: "true"}), vec![], Some(AGG_VIEW)),
        cluster_role(
            "system:aggregate-to-admin",
            json!({AGG_ADMIN: "true"}),
            vec![
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["localsubjectaccessreviews"],
                ),
                rule(READ_WRITE, &[GROUP], &["rolebindings", "roles"]),
            ],
            None,
        ),
        cluster_role(
            "system:aggregate-to-edit",
            json!({AGG_ADMIN: "true", AGG_EDIT: "true"}),
            vec![
                rule(
                    READ,
                    &[""],
                    &["pods/attach", "pods/exec", "pods/portforward", "secrets"],
                ),
                rule(&["impersonate"], &[""], &["serviceaccounts"]),
                rule(
                    WRITE,
                    &[""],
                    &["pods", "pods/attach", "pods/exec", "pods/portforward"],
                ),
                rule(
                    WRITE,
                    &[""],
                    &[
                        "configmaps",
                        "events",
                        "secrets",
                        "serviceaccounts",
                        "services",
                    ],
                ),
                rule(&["create"], &[""], &["serviceaccounts/token"]),
                rule(
                    WRITE,
                    &["apps"],
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/scale",
                        "replicasets",
                        "replicasets/scale",
                        "statefulsets",
                        "statefulsets/scale",
                    ],
                ),
                rule(WRITE, &["batch"], &["cronjobs", "jobs"]),
                rule(WRITE, &["networking.k8s.io"], &["networkpolicies"]),
            ],
            None,
        ),
        cluster_role(
            "system:aggregate-to-view",
            json!({AGG_ADMIN: "true", AGG_EDIT: "true", AGG_VIEW: "true"}),
            vec![
                rule(
                    READ,
                    &[""],
                    &[
                        "configmaps",
                        "endpoints",
                        "pods",
                        "serviceaccounts",
                        "services",
                        "services/status",
                    ],
                ),
                rule(
                    READ,
                    &[""],
                    &[
                        "bindings",
                        "events",
                        "namespaces/status",
                        "pods/log",
                        "pods/status",
                    ],
                ),
                rule(READ, &[""], &["namespaces"]),
                rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
                rule(
                    READ,
                    &["apps"],
                    &[
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "statefulsets",
                        "statefulsets/scale",
                        "statefulsets/status",
                    ],
                ),
                rule(
                    READ,
                    &["batch"],
                    &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
                ),
                rule(READ, &["networking.k8s.io"], &["networkpolicies"]),
            ],
            None,
        ),
        cluster_role(
            "system:node",
            json!({}),
            vec![
                rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["localsubjectaccessreviews", "subjectaccessreviews"],
                ),
                rule(READ, &[""], &["services", "endpoints"]),
                rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
                rule(
                    &[
                        "create", "delete", "get", "list", "patch", "update", "watch",
                    ],
                    &[""],
                    &["nodes"],
                ),
                rule(&["get", "patch", "update"], &[""], &["nodes/status"]),
                rule(
                    &["create", "patch", "update"],
                    &["", "events.k8s.io"],
                    &["events"],
                ),
                rule(
                    &["create", "delete", "get", "list", "patch", "watch"],
                    &[""],
                    &["pods"],
                ),
                rule(&["get", "patch", "update"], &[""], &["pods/status"]),
                rule(READ, &[""], &["configmaps", "secrets", "serviceaccounts"]),
                rule(&["create"], &[""], &["serviceaccounts/token"]),
                rule(READ_WRITE, &["coordination.k8s.io"], &["leases"]),
            ],
            None,
        ),
    ]
}

/// The ClusterRoleBindings of the bootstrap policy.
pub fn bootstrap_cluster_role_bindings() -> Vec<Value> {
    vec![
        cluster_role_binding("cluster-admin", &[MASTERS]),
        cluster_role_binding("system:discovery", &[AUTHENTICATED]),
        cluster_role_binding("system:basic-user", &[AUTHENTICATED]),
        cluster_role_binding(
            "system:public-info-viewer",
            &[AUTHENTICATED, UNAUTHENTICATED],
        ),
        cluster_role_binding("system:node", &["system:nodes"]),
    ]
}

fn union(cur: &Value, want: &Value) -> Value {
    let mut out: Vec<Value> = cur.as_array().cloned().unwrap_or_default();
    for w in want.as_array().into_iter().flatten() {
        if !out.contains(w) {
            out.push(w.clone());
        }
    }
    Value::Array(out)
}

/// Makes the bootstrap roles and bindings; existing ones marked
/// `rbac.authorization.kubernetes.io/autoupdate: "true"` get missing rules
/// and subjects added (kube-apiserver's reconciliation is additive too).
pub async fn bootstrap(
    store: &Store,
    now: &str,
    uid: impl Fn() -> String,
) -> Result<(), StoreError> {
    let objects = bootstrap_cluster_roles()
        .into_iter()
        .map(|o| (CLUSTER_ROLES, o))
        .chain(
            bootstrap_cluster_role_bindings()
                .into_iter()
                .map(|o| (CLUSTER_ROLE_BINDINGS, o)),
        );
    for (rid, mut obj) in objects {
        let name = meta_name(&obj).to_string();
        obj["metadata"]["uid"] = json!(uid());
        obj["metadata"]["creationTimestamp"] = json!(now);
        store
            .mutate(
                rid,
                "",
                &name,
                false,
                |cur, _| -> Result<Change, StoreError> {
                    let Some(cur) = cur else {
                        return Ok(Change::Put(obj));
                    };
                    let v = &cur.value;
                    if v["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"]
                        == "false"
                    {
                        return Ok(Change::Keep);
                    }
                    let mut new = v.clone();
                    if rid == CLUSTER_ROLES {
                        if obj["aggregationRule"].is_null() {
                            new["rules"] = union(&v["rules"], &obj["rules"]);
                        } else if v["aggregationRule"].is_null() {
                            new["aggregationRule"] = obj["aggregationRule"].clone();
                        }
                    } else {
                        new["subjects"] = union(&v["subjects"], &obj["subjects"]);
                    }
                    Ok(if new == *v {
                        Change::Keep
                    } else {
                        Change::Put(new)
                    })
                },
            )
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(verb: &str, group: &str, resource: &str, sub: &str, ns: &str, name: &str) -> Attributes {
        Attributes::resource(verb, group, resource, sub, ns, name)
    }

    #[test]
    fn rules_match_like_kube() {
        let r = Rule::from_value(
            &json!({"apiGroups": [""], "resources": ["pods", "*/status"], "verbs": ["get", "list"]}),
        );
        assert!(r.allows(&res("list", "", "pods", "", "a", "")));
        assert!(!r.allows(&res("delete", "", "pods", "", "a", "x")));
        assert!(!r.allows(&res("get", "", "pods", "log", "a", "x")));
        assert!(r.allows(&res("get", "", "nodes", "status", "", "n")));
        assert!(!r.allows(&res("get", "apps", "pods", "", "a", "x")));
        let named = Rule::from_value(
            &json!({"apiGroups": ["*"], "resources": ["configmaps"], "resourceNames": ["one"], "verbs": ["*"]}),
        );
        assert!(named.allows(&res("update", "", "configmaps", "", "a", "one")));
        assert!(!named.allows(&res("list", "", "configmaps", "", "a", "")));
        let u = Rule::from_value(
            &json!({"nonResourceURLs": ["/apis/*", "/version"], "verbs": ["get"]}),
        );
        let path = |p: &str| Attributes {
            verb: "get".into(),
            path: p.into(),
            ..Attributes::default()
        };
        assert!(u.allows(&path("/apis/apps/v1")));
        assert!(u.allows(&path("/version")));
        assert!(!u.allows(&path("/version/")));
        assert!(!u.allows(&path("/api")));
    }
}
