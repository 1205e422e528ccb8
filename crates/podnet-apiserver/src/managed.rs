//! Field ownership (`metadata.managedFields`) and server-side apply, after
//! kube-apiserver's structured-merge-diff: every write records which manager
//! set which fields (`FieldsV1`: `{"f:spec":{"f:replicas":{}}}`, list items by
//! their keys `k:{"name":"x"}`), an apply that changes a field another
//! manager owns is a conflict unless forced, and a field an applier stops
//! applying goes when nobody else owns it.
//!
//! The schema knowledge is the part kubectl users meet: lists merge by key
//! where upstream declares `x-kubernetes-list-map-keys` (containers, ports,
//! env, volumes, volume mounts, service ports, owner references); every other
//! list is atomic, as are label selectors and node selectors, except the
//! few `x-kubernetes-list-type: set` lists (finalizers, a node's pod CIDRs,
//! an endpoint's addresses), whose items are owned one by one
//! (`v:"example.com/x"`). A container's `args` and `command` are atomic.
//!
//! An update owns a map it adds as a whole (`".": {}`), as upstream does
//! for Go maps, pointer structs and lists; the non-pointer structs (spec,
//! template, strategy, ...) are always there in Go, so never added.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

/// One field path, each element as FieldsV1 spells it (`f:spec`,
/// `k:{"name":"x"}`, `v:"x"`).
pub type Path = Vec<String>;

/// A set of field paths (structured-merge-diff's `fieldpath.Set`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet(pub BTreeSet<Path>);

impl FieldSet {
    fn insert(&mut self, p: &[String]) {
        self.0.insert(p.to_vec());
    }
    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Whether `p` is a member.
    pub fn contains(&self, p: &Path) -> bool {
        self.0.contains(p)
    }
    fn union(&self, o: &FieldSet) -> FieldSet {
        FieldSet(self.0.union(&o.0).cloned().collect())
    }
    fn minus(&self, o: &FieldSet) -> FieldSet {
        FieldSet(self.0.difference(&o.0).cloned().collect())
    }
    fn intersect(&self, o: &FieldSet) -> FieldSet {
        FieldSet(self.0.intersection(&o.0).cloned().collect())
    }
    /// Drops every path at or under one of `gone`.
    fn minus_under(&self, gone: &FieldSet) -> FieldSet {
        FieldSet(
            self.0
                .iter()
                .filter(|p| !gone.0.iter().any(|g| p.starts_with(g)))
                .cloned()
                .collect(),
        )
    }
    /// Whether `p` or anything under it is a member.
    fn owns_at_or_under(&self, p: &Path) -> bool {
        self.0.iter().any(|q| q.starts_with(p))
    }

    /// Parses a `fieldsV1` tree.
    pub fn from_fields_v1(v: &Value) -> FieldSet {
        fn walk(v: &Value, prefix: &mut Path, out: &mut FieldSet) {
            let Some(m) = v.as_object() else { return };
            for (k, c) in m {
                if k == "." {
                    out.insert(prefix);
                    continue;
                }
                prefix.push(k.clone());
                if c.as_object().is_some_and(Map::is_empty) {
                    out.insert(prefix);
                } else {
                    walk(c, prefix, out);
                }
                prefix.pop();
            }
        }
        let mut out = FieldSet::default();
        walk(v, &mut Vec::new(), &mut out);
        out
    }

    /// Renders the `fieldsV1` tree: members with children get `"."`.
    pub fn to_fields_v1(&self) -> Value {
        #[derive(Default)]
        struct Node {
            member: bool,
            kids: BTreeMap<String, Node>,
        }
        let mut root = Node::default();
        for p in &self.0 {
            let mut n = &mut root;
            for e in p {
                n = n.kids.entry(e.clone()).or_default();
            }
            n.member = true;
        }
        fn render(n: &Node) -> Value {
            let mut m = Map::new();
            if n.member && !n.kids.is_empty() {
                m.insert(".".into(), json!({}));
            }
            for (k, c) in &n.kids {
                m.insert(k.clone(), render(c));
            }
            Value::Object(m)
        }
        render(&root)
    }
}

/// A path as kube-apiserver prints it in conflicts:
/// `.spec.template.spec.containers[name="x"].image`.
pub fn path_string(p: &Path) -> String {
    let mut s = String::new();
    for e in p {
        if let Some(f) = e.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = e.strip_prefix("k:") {
            let m: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
            s.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = e.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        } else if let Some(i) = e.strip_prefix("i:") {
            s.push_str(&format!("[{i}]"));
        }
    }
    s
}

/// Which top-level part of the object a write may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The whole object (kinds without a status subresource).
    All,
    /// Everything but `.status` (the main endpoint of a kind with status).
    NoStatus,
    /// Only `.status` (the status subresource).
    Status,
}

/// The keys a list merges by, from its field path (field names only).
fn list_keys(kind: &str, names: &[String]) -> Option<&'static [&'static str]> {
    let field = names.last()?.as_str();
    let parent = names
        .len()
        .checked_sub(2)
        .map(|i| names[i].as_str())
        .unwrap_or("");
    Some(match field {
        "containers" | "initContainers" | "ephemeralContainers" | "volumes" | "env" => &["name"],
        "ports"
            if matches!(
                parent,
                "containers" | "initContainers" | "ephemeralContainers"
            ) =>
        {
            &["containerPort", "protocol"]
        }
        "ports" if kind == "Service" && names.len() == 2 => &["port", "protocol"],
        "volumeMounts" => &["mountPath"],
        "ownerReferences" if names.len() == 2 => &["uid"],
        _ => return None,
    })
}

/// Lists of scalars merged as sets (`x-kubernetes-list-type: set`): items
/// are owned one by one. Every other list of scalars is atomic.
fn set_list(kind: &str, names: &[String]) -> bool {
    match names {
        [m, f] if m == "metadata" && f == "finalizers" => true,
        [s, f] if kind == "Node" && s == "spec" && f == "podCIDRs" => true,
        [e, a] if kind == "EndpointSlice" && e == "endpoints" && a == "addresses" => true,
        _ => false,
    }
}

/// The set list's items, if `names` is one and they are all scalars.
fn set_items<'a>(kind: &str, names: &[String], v: &'a Value) -> Option<&'a [Value]> {
    let a = v.as_array()?;
    (set_list(kind, names) && a.iter().all(|i| !i.is_object() && !i.is_array()))
        .then_some(a.as_slice())
}

/// `v:"x"`: a set item's element.
fn value_element(item: &Value) -> String {
    format!("v:{item}")
}

/// Fields holding a Go struct that is not a pointer: present (`{}`) in every
/// object, so an update never adds it and does not own it as a whole.
fn non_pointer_struct(names: &[String]) -> bool {
    names.last().is_some_and(|f| {
        matches!(
            f.as_str(),
            "metadata"
                | "spec"
                | "status"
                | "template"
                | "jobTemplate"
                | "strategy"
                | "updateStrategy"
                | "resources"
                | "port"
                | "conditions"
                | "roleRef"
                | "involvedObject"
                | "source"
                | "scaleTargetRef"
                | "state"
                | "lastState"
                | "nodeInfo"
                | "daemonEndpoints"
                | "kubeletEndpoint"
                | "loadBalancer"
        )
    })
}

/// Maps replaced as a whole (label selectors, node selectors).
fn atomic_map(names: &[String]) -> bool {
    names.last().is_some_and(|f| {
        matches!(
            f.as_str(),
            "selector" | "podSelector" | "namespaceSelector" | "nodeSelector" | "labelSelector"
        )
    })
}

/// The server's own fields, never owned.
fn skipped(scope: Scope, names: &[String], k: &str) -> bool {
    match names.len() {
        0 => match k {
            "apiVersion" | "kind" => true,
            "status" => scope == Scope::NoStatus,
            "metadata" => scope == Scope::Status,
            _ => scope == Scope::Status,
        },
        1 if names[0] == "metadata" => matches!(
            k,
            "name"
                | "namespace"
                | "uid"
                | "resourceVersion"
                | "generation"
                | "creationTimestamp"
                | "managedFields"
                | "selfLink"
                | "deletionTimestamp"
                | "deletionGracePeriodSeconds"
        ),
        _ => false,
    }
}

fn key_value(k: &str, item: &Value) -> Option<Value> {
    match item.get(k) {
        Some(v) if !v.is_null() => Some(v.clone()),
        _ if k == "protocol" => Some(json!("TCP")),
        _ => None,
    }
}

/// `k:{"containerPort":80,"protocol":"TCP"}` for an item, keys sorted.
fn item_element(keys: &[&str], item: &Value) -> Option<String> {
    let mut ks: Vec<&str> = keys.to_vec();
    ks.sort_unstable();
    let mut parts = Vec::new();
    for k in ks {
        let v = key_value(k, item)?;
        parts.push(format!("{}:{}", json!(k), v));
    }
    Some(format!("k:{{{}}}", parts.join(",")))
}

/// The keys of a list whose every item has them (else the list is atomic).
fn keyed(kind: &str, names: &[String], list: &[Value]) -> Option<&'static [&'static str]> {
    let keys = list_keys(kind, names)?;
    list.iter()
        .all(|i| i.is_object() && keys.iter().all(|k| key_value(k, i).is_some()))
        .then_some(keys)
}

struct Walk<'a> {
    kind: &'a str,
    scope: Scope,
    /// Newly added maps of strings are members (an update's view) or not
    /// (an applied configuration's view).
    added: bool,
}

impl Walk<'_> {
    /// The fields of `v`, found at `p`.
    fn collect(&self, v: &Value, p: &mut Path, names: &mut Vec<String>, out: &mut FieldSet) {
        match v {
            Value::Object(m) if !atomic_map(names) && !m.is_empty() => {
                if self.added && !names.is_empty() && !non_pointer_struct(names) {
                    out.insert(p);
                }
                self.fields(m, p, names, out);
            }
            Value::Array(a) if !a.is_empty() && set_items(self.kind, names, v).is_some() => {
                if self.added {
                    out.insert(p);
                }
                for item in a {
                    p.push(value_element(item));
                    out.insert(p);
                    p.pop();
                }
            }
            Value::Array(a) if !a.is_empty() => match keyed(self.kind, names, a) {
                Some(keys) => {
                    for item in a {
                        p.push(item_element(keys, item).expect("keyed"));
                        out.insert(p);
                        if let Some(m) = item.as_object() {
                            self.fields(m, p, names, out);
                        }
                        p.pop();
                    }
                }
                None => out.insert(p),
            },
            _ => out.insert(p),
        }
    }

    fn fields(
        &self,
        m: &Map<String, Value>,
        p: &mut Path,
        names: &mut Vec<String>,
        out: &mut FieldSet,
    ) {
        for (k, c) in m {
            if skipped(self.scope, names, k) {
                continue;
            }
            p.push(format!("f:{k}"));
            names.push(k.clone());
            self.collect(c, p, names, out);
            names.pop();
            p.pop();
        }
    }

    /// What changed from `old` to `new`: (set or changed, removed).
    fn diff(
        &self,
        old: &Value,
        new: &Value,
        p: &mut Path,
        names: &mut Vec<String>,
        out: &mut (FieldSet, FieldSet),
    ) {
        if old == new {
            return;
        }
        match (old, new) {
            (Value::Object(o), Value::Object(n)) if !atomic_map(names) => {
                for (k, nv) in n {
                    if skipped(self.scope, names, k) {
                        continue;
                    }
                    p.push(format!("f:{k}"));
                    names.push(k.clone());
                    match o.get(k) {
                        Some(ov) => self.diff(ov, nv, p, names, out),
                        None => self.collect(nv, p, names, &mut out.0),
                    }
                    names.pop();
                    p.pop();
                }
                for k in o.keys() {
                    if !n.contains_key(k) && !skipped(self.scope, names, k) {
                        p.push(format!("f:{k}"));
                        out.1.insert(p);
                        p.pop();
                    }
                }
            }
            (Value::Array(o), Value::Array(n))
                if set_items(self.kind, names, old).is_some()
                    && set_items(self.kind, names, new).is_some() =>
            {
                for (from, to, into) in [(n, o, &mut out.0), (o, n, &mut out.1)] {
                    for item in from.iter().filter(|i| !to.contains(i)) {
                        p.push(value_element(item));
                        into.insert(p);
                        p.pop();
                    }
                }
            }
            (Value::Array(o), Value::Array(n)) => {
                let keys = keyed(self.kind, names, o).and(keyed(self.kind, names, n));
                let Some(keys) = keys else {
                    out.0.insert(p);
                    return;
                };
                let olds: BTreeMap<String, &Value> = o
                    .iter()
                    .map(|i| (item_element(keys, i).expect("keyed"), i))
                    .collect();
                let mut seen = BTreeSet::new();
                for item in n {
                    let e = item_element(keys, item).expect("keyed");
                    p.push(e.clone());
                    match olds.get(&e) {
                        Some(oi) => self.diff(oi, item, p, names, out),
                        None => {
                            out.0.insert(p);
                            if let Some(m) = item.as_object() {
                                self.fields(m, p, names, &mut out.0);
                            }
                        }
                    }
                    p.pop();
                    seen.insert(e);
                }
                for e in olds.keys().filter(|e| !seen.contains(*e)) {
                    p.push(e.clone());
                    out.1.insert(p);
                    p.pop();
                }
            }
            _ => out.0.insert(p),
        }
    }

    /// `cfg` merged into `live`: maps by field, keyed lists by key, anything
    /// else replaced.
    fn merge(&self, live: &Value, cfg: &Value, names: &mut Vec<String>) -> Value {
        match (live, cfg) {
            (Value::Object(l), Value::Object(c)) if !atomic_map(names) => {
                let mut out = l.clone();
                for (k, cv) in c {
                    if cv.is_null() {
                        out.remove(k);
                        continue;
                    }
                    names.push(k.clone());
                    let v = match l.get(k) {
                        Some(lv) => self.merge(lv, cv, names),
                        None => cv.clone(),
                    };
                    names.pop();
                    out.insert(k.clone(), v);
                }
                Value::Object(out)
            }
            (Value::Array(l), Value::Array(c))
                if set_items(self.kind, names, live).is_some()
                    && set_items(self.kind, names, cfg).is_some() =>
            {
                // A set: the applied items join the others' (an item the
                // applier stops applying goes with the fields it dropped).
                let mut out = l.clone();
                for ci in c {
                    if !out.contains(ci) {
                        out.push(ci.clone());
                    }
                }
                Value::Array(out)
            }
            (Value::Array(l), Value::Array(c)) => {
                let keys = keyed(self.kind, names, l).and(keyed(self.kind, names, c));
                let Some(keys) = keys else {
                    return cfg.clone();
                };
                let mut out: Vec<Value> = l.clone();
                for ci in c {
                    let e = item_element(keys, ci);
                    match out.iter().position(|li| item_element(keys, li) == e) {
                        Some(i) => out[i] = self.merge(&out[i], ci, names),
                        None => out.push(ci.clone()),
                    }
                }
                Value::Array(out)
            }
            _ => cfg.clone(),
        }
    }
}

/// Removes the field or list item at `p` from `v`.
fn remove_path(v: &mut Value, p: &[String]) {
    let Some((first, rest)) = p.split_first() else {
        return;
    };
    if let Some(f) = first.strip_prefix("f:") {
        let Some(m) = v.as_object_mut() else { return };
        if rest.is_empty() {
            m.remove(f);
        } else if let Some(c) = m.get_mut(f) {
            remove_path(c, rest);
            // A set emptied of its last item goes (Go omits an empty slice).
            if rest.len() == 1
                && rest[0].starts_with("v:")
                && c.as_array().is_some_and(Vec::is_empty)
            {
                m.remove(f);
            }
        }
    } else if let Some(item) = first.strip_prefix("v:") {
        let Ok(item) = serde_json::from_str::<Value>(item) else {
            return;
        };
        if let Some(a) = v.as_array_mut() {
            a.retain(|i| *i != item);
        }
    } else if let Some(k) = first.strip_prefix("k:") {
        let Ok(key) = serde_json::from_str::<Map<String, Value>>(k) else {
            return;
        };
        let Some(a) = v.as_array_mut() else { return };
        let found = a.iter().position(|i| {
            key.iter()
                .all(|(k, kv)| key_value(k, i).as_ref() == Some(kv))
        });
        if let Some(i) = found {
            if rest.is_empty() {
                a.remove(i);
            } else {
                remove_path(&mut a[i], rest);
            }
        }
    }
}

/// One `managedFields` entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The manager's name (`kubectl`, `kubectl-client-side-apply`, ...).
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    /// The API version the manager wrote with.
    pub api_version: String,
    /// When the manager last changed its fields.
    pub time: String,
    /// The subresource written (`status`, `scale`), if any.
    pub subresource: Option<String>,
    /// The fields it owns.
    pub fields: FieldSet,
}

impl Entry {
    fn from_json(v: &Value) -> Option<Entry> {
        Some(Entry {
            manager: v["manager"].as_str()?.to_string(),
            operation: v["operation"].as_str().unwrap_or("Update").to_string(),
            api_version: v["apiVersion"].as_str().unwrap_or("").to_string(),
            time: v["time"].as_str().unwrap_or("").to_string(),
            subresource: v["subresource"].as_str().map(str::to_string),
            fields: FieldSet::from_fields_v1(&v["fieldsV1"]),
        })
    }
    fn to_json(&self) -> Value {
        let mut v = json!({"manager": self.manager, "operation": self.operation,
            "apiVersion": self.api_version, "time": self.time, "fieldsType": "FieldsV1",
            "fieldsV1": self.fields.to_fields_v1()});
        if let Some(s) = &self.subresource {
            v["subresource"] = json!(s);
        }
        v
    }
    fn same(&self, manager: &str, operation: &str, sub: Option<&str>) -> bool {
        self.manager == manager && self.operation == operation && self.subresource.as_deref() == sub
    }
    /// The manager as kube-apiserver names it in a conflict.
    fn display(&self) -> String {
        if self.operation == "Update" {
            format!("{:?} using {}", self.manager, self.api_version)
        } else {
            format!("{:?}", self.manager)
        }
    }
}

/// The entries of an object.
pub fn entries(obj: &Value) -> Vec<Entry> {
    obj["metadata"]["managedFields"]
        .as_array()
        .map(|a| a.iter().filter_map(Entry::from_json).collect())
        .unwrap_or_default()
}

fn set_entries(obj: &mut Value, es: &[Entry]) {
    let Some(m) = obj["metadata"].as_object_mut() else {
        return;
    };
    let list: Vec<Value> = es
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(Entry::to_json)
        .collect();
    if list.is_empty() {
        m.remove("managedFields");
    } else {
        m.insert("managedFields".into(), Value::Array(list));
    }
}

/// Drops entries without a manager (`managedFields: [{}]` is how a client
/// clears them all).
pub fn normalize(obj: &mut Value) {
    let bad = obj["metadata"]["managedFields"]
        .as_array()
        .is_some_and(|a| a.iter().any(|e| !e["manager"].is_string()));
    if bad {
        let es = entries(obj);
        set_entries(obj, &es);
    }
}

/// The default manager of a request without `fieldManager`: the user
/// agent up to its first `/`, as kube-apiserver takes it.
pub fn manager_from_user_agent(ua: Option<&str>) -> String {
    let ua = ua.unwrap_or("").split('/').next().unwrap_or("").trim();
    let ua: String = ua.chars().take(128).collect();
    if ua.is_empty() { "unknown".into() } else { ua }
}

/// Records a create (`old` None) or an update of `new` by `manager`: it
/// owns what it set or changed, and nobody else owns that any more.
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    kind: &str,
    scope: Scope,
    subresource: Option<&str>,
    now: &str,
) {
    let w = Walk {
        kind,
        scope,
        added: true,
    };
    let mut changes = (FieldSet::default(), FieldSet::default());
    let empty = json!({});
    w.diff(
        old.unwrap_or(&empty),
        new,
        &mut Vec::new(),
        &mut Vec::new(),
        &mut changes,
    );
    let (set, removed) = changes;
    if set.is_empty() && removed.is_empty() {
        return;
    }
    let api_version = new["apiVersion"].as_str().unwrap_or("v1").to_string();
    let mut es = entries(new);
    let touched = set.union(&removed);
    for e in es.iter_mut() {
        if !e.same(manager, "Update", subresource) {
            e.fields = e.fields.minus(&touched).minus_under(&removed);
        }
    }
    match es
        .iter_mut()
        .find(|e| e.same(manager, "Update", subresource))
    {
        Some(e) => {
            e.fields = e.fields.union(&set).minus_under(&removed);
            e.time = now.to_string();
            e.api_version = api_version;
        }
        None => es.push(Entry {
            manager: manager.to_string(),
            operation: "Update".into(),
            api_version,
            time: now.to_string(),
            subresource: subresource.map(str::to_string),
            fields: set,
        }),
    }
    set_entries(new, &es);
}

/// Why an apply was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Fields set to other values by other managers: (manager as printed, path).
    #[error("{}", conflict_message(.0))]
    Conflicts(Vec<(String, String)>),
}

/// kube-apiserver's words: `Apply failed with 1 conflict: conflict with
/// "mgr": .spec.replicas`.
fn conflict_message(cs: &[(String, String)]) -> String {
    if let [(m, p)] = cs {
        return format!("Apply failed with 1 conflict: conflict with {m}: {p}");
    }
    let mut by: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (m, p) in cs {
        by.entry(m).or_default().push(p);
    }
    let mut s = format!("Apply failed with {} conflicts: conflicts with", cs.len());
    if by.len() == 1 {
        for (m, ps) in &by {
            s.push_str(&format!(" {m}"));
            for p in ps {
                s.push_str(&format!("\n- {p}"));
            }
        }
    } else {
        for (m, ps) in &by {
            s.push_str(&format!("\n{m}:"));
            for p in ps {
                s.push_str(&format!("\n- {p}"));
            }
        }
    }
    s
}

/// The annotation client-side `kubectl apply` keeps its configuration in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The fields (as printed in conflicts) of the object's client-side-apply
/// configuration that still have the value it set: the conflicts a move to
/// server-side apply by `kubectl` may take over.
fn allowed_from_last_applied(live: &Value, kind: &str, scope: Scope) -> Option<BTreeSet<String>> {
    let text = live["metadata"]["annotations"][LAST_APPLIED].as_str()?;
    let last: Value = serde_json::from_str(text).ok()?;
    let apply_walk = Walk {
        kind,
        scope,
        added: false,
    };
    let mut set = FieldSet::default();
    apply_walk.collect(&last, &mut Vec::new(), &mut Vec::new(), &mut set);
    // Paths whose live value differs: set by someone since.
    let mut changes = (FieldSet::default(), FieldSet::default());
    Walk {
        kind,
        scope,
        added: true,
    }
    .diff(&last, live, &mut Vec::new(), &mut Vec::new(), &mut changes);
    Some(set.minus(&changes.0).0.iter().map(path_string).collect())
}

/// Server-side apply of configuration `cfg` by `manager` to `live` (`{}`
/// when creating): the merged object with its `managedFields`, or the
/// conflicts (unless `force`, which takes the fields over).
///
/// As kube-apiserver does for `kubectl` moving from client-side apply:
/// when the manager is `kubectl` and every conflict is a field of the
/// object's last-applied configuration that still has that value, the
/// apply takes those fields over without `force`.
pub fn apply(
    live: &Value,
    cfg: &Value,
    manager: &str,
    force: bool,
    kind: &str,
    scope: Scope,
    now: &str,
) -> Result<Value, ApplyError> {
    match apply_once(live, cfg, manager, force, kind, scope, now) {
        Err(ApplyError::Conflicts(cs)) if manager == "kubectl" => {
            let Some(allowed) = allowed_from_last_applied(live, kind, scope) else {
                return Err(ApplyError::Conflicts(cs));
            };
            let left: Vec<(String, String)> = cs
                .into_iter()
                .filter(|(_, p)| !allowed.contains(p))
                .collect();
            if left.is_empty() {
                apply_once(live, cfg, manager, true, kind, scope, now)
            } else {
                Err(ApplyError::Conflicts(left))
            }
        }
        r => r,
    }
}

fn apply_once(
    live: &Value,
    cfg: &Value,
    manager: &str,
    force: bool,
    kind: &str,
    scope: Scope,
    now: &str,
) -> Result<Value, ApplyError> {
    // An apply to the status subresource is its own entry.
    let sub = (scope == Scope::Status).then_some("status");
    let mut cfg = cfg.clone();
    if let Some(m) = cfg["metadata"].as_object_mut() {
        m.remove("managedFields");
    }
    let apply_walk = Walk {
        kind,
        scope,
        added: false,
    };
    let update_walk = Walk {
        kind,
        scope,
        added: true,
    };
    let mut merged = apply_walk.merge(live, &cfg, &mut Vec::new());
    let mut changes = (FieldSet::default(), FieldSet::default());
    update_walk.diff(
        live,
        &merged,
        &mut Vec::new(),
        &mut Vec::new(),
        &mut changes,
    );
    let changed = changes.0.union(&changes.1);
    let mut applied = FieldSet::default();
    apply_walk.collect(&cfg, &mut Vec::new(), &mut Vec::new(), &mut applied);

    let mut es = entries(live);
    let mut conflicts = Vec::new();
    for e in es.iter_mut() {
        if e.same(manager, "Apply", sub) {
            continue;
        }
        let c = e.fields.intersect(&changed);
        if c.is_empty() {
            continue;
        }
        for p in &c.0 {
            conflicts.push((e.display(), path_string(p)));
        }
        e.fields = e.fields.minus(&c);
    }
    if !conflicts.is_empty() && !force {
        return Err(ApplyError::Conflicts(conflicts));
    }
    let prev = es
        .iter()
        .find(|e| e.same(manager, "Apply", sub))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let others = es
        .iter()
        .filter(|e| !e.same(manager, "Apply", sub))
        .fold(FieldSet::default(), |a, e| a.union(&e.fields));
    // Fields this applier set before, no longer applies, and alone owned.
    let dropped = prev.minus(&applied);
    let gone: Vec<&Path> = dropped
        .0
        .iter()
        .filter(|p| !others.owns_at_or_under(p) && !applied.owns_at_or_under(p))
        .collect();
    // The outermost of them only: a list item is found by its keys, which
    // must still be there when it is removed.
    for p in &gone {
        if !gone.iter().any(|q| q.len() < p.len() && p.starts_with(q)) {
            remove_path(&mut merged, p);
        }
    }
    let api_version = cfg["apiVersion"].as_str().unwrap_or("v1").to_string();
    let unchanged = {
        let strip = |v: &Value| {
            let mut v = v.clone();
            if let Some(m) = v["metadata"].as_object_mut() {
                m.remove("managedFields");
            }
            v
        };
        strip(&merged) == strip(live) && prev == applied
    };
    if unchanged {
        return Ok(live.clone());
    }
    match es.iter_mut().find(|e| e.same(manager, "Apply", sub)) {
        Some(e) => {
            e.fields = applied;
            e.time = now.to_string();
            e.api_version = api_version;
        }
        None => es.push(Entry {
            manager: manager.to_string(),
            operation: "Apply".into(),
            api_version,
            time: now.to_string(),
            subresource: sub.map(str::to_string),
            fields: applied,
        }),
    }
    set_entries(&mut merged, &es);
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"app": "d"}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "d"}},
                "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [
                    {"name": "c", "image": image, "ports": [{"containerPort": 80}]}]}}}})
    }

    #[test]
    fn fields_v1_is_upstreams_shape() {
        let obj = apply(
            &json!({}),
            &deploy(2, "nginx"),
            "a",
            false,
            "Deployment",
            Scope::NoStatus,
            "t",
        )
        .unwrap();
        let f = &obj["metadata"]["managedFields"][0];
        assert_eq!(f["operation"], "Apply");
        let v = &f["fieldsV1"];
        assert_eq!(v["f:spec"]["f:replicas"], json!({}));
        assert_eq!(v["f:spec"]["f:selector"], json!({}));
        let c = &v["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"];
        assert_eq!(c["."], json!({}));
        assert_eq!(c["f:image"], json!({}));
        assert_eq!(
            c["f:ports"]["k:{\"containerPort\":80,\"protocol\":\"TCP\"}"]["f:containerPort"],
            json!({})
        );
        assert!(v["f:metadata"].get("f:name").is_none());
        assert_eq!(FieldSet::from_fields_v1(v).to_fields_v1(), *v);
    }

    #[test]
    fn conflicts_force_and_removal() {
        let a = apply(
            &json!({}),
            &deploy(2, "nginx"),
            "a",
            false,
            "Deployment",
            Scope::NoStatus,
            "t",
        )
        .unwrap();
        let err = apply(
            &a,
            &deploy(3, "nginx"),
            "b",
            false,
            "Deployment",
            Scope::NoStatus,
            "t",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Apply failed with 1 conflict: conflict with \"a\": .spec.replicas"
        );
        // Same values: shared, no conflict.
        let shared = apply(
            &a,
            &deploy(2, "nginx"),
            "b",
            false,
            "Deployment",
            Scope::NoStatus,
            "t",
        )
        .unwrap();
        assert_eq!(entries(&shared).len(), 2);
        let mut b = deploy(3, "nginx");
        b["metadata"].as_object_mut().unwrap().remove("labels");
        let forced = apply(&a, &b, "b", true, "Deployment", Scope::NoStatus, "t").unwrap();
        assert_eq!(forced["spec"]["replicas"], 3);
        let es = entries(&forced);
        assert!(
            !es[0]
                .fields
                .contains(&vec!["f:spec".into(), "f:replicas".into()])
        );
        // a keeps the image (shared with b) and drops the label it alone set.
        let mut cfg = deploy(3, "nginx");
        cfg["metadata"]["labels"] = json!({});
        let again = apply(
            &forced,
            &cfg,
            "a",
            false,
            "Deployment",
            Scope::NoStatus,
            "t",
        )
        .unwrap();
        assert_eq!(
            again["spec"]["template"]["spec"]["containers"][0]["image"],
            "nginx"
        );
        let mut cfg = deploy(3, "nginx");
        cfg["metadata"].as_object_mut().unwrap().remove("labels");
        let dropped = apply(
            &forced,
            &cfg,
            "a",
            false,
            "Deployment",
            Scope::NoStatus,
            "t",
        )
        .unwrap();
        assert!(
            dropped["metadata"]
                .get("labels")
                .is_none_or(|l| l.get("app").is_none()),
            "{dropped}"
        );
    }

    #[test]
    fn dropped_list_items_go_whole() {
        let two = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
            "spec": {"ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]}});
        let live = apply(
            &json!({}),
            &two,
            "a",
            false,
            "Service",
            Scope::NoStatus,
            "t",
        )
        .unwrap();
        let mut one = two.clone();
        one["spec"]["ports"].as_array_mut().unwrap().pop();
        let after = apply(&live, &one, "a", false, "Service", Scope::NoStatus, "t").unwrap();
        assert_eq!(
            after["spec"]["ports"],
            json!([{"name": "http", "port": 80}])
        );
    }

    #[test]
    fn updates_take_fields_from_appliers() {
        let a = apply(
            &json!({}),
            &deploy(2, "nginx"),
            "a",
            false,
            "Deployment",
            Scope::NoStatus,
            "t",
        )
        .unwrap();
        let mut edited = a.clone();
        edited["spec"]["replicas"] = json!(5);
        record_update(
            Some(&a),
            &mut edited,
            "kubectl-edit",
            "Deployment",
            Scope::NoStatus,
            None,
            "t",
        );
        let es = entries(&edited);
        assert_eq!(es[1].manager, "kubectl-edit");
        assert_eq!(
            es[1].fields.to_fields_v1(),
            json!({"f:spec": {"f:replicas": {}}})
        );
        let err = apply(
            &edited,
            &deploy(2, "nginx"),
            "a",
            false,
            "Deployment",
            Scope::NoStatus,
            "t",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("conflict with \"kubectl-edit\" using apps/v1: .spec.replicas")
        );
    }

    /// The `fieldsV1` of `obj`'s entry of `manager`.
    fn fields_of(obj: &Value, manager: &str) -> Value {
        obj["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["manager"] == manager)
            .map(|e| e["fieldsV1"].clone())
            .unwrap_or(Value::Null)
    }

    #[test]
    fn an_update_owns_what_it_adds_as_a_whole_but_not_non_pointer_structs() {
        // As kube-apiserver records `kubectl create` of such a Deployment:
        // rollingUpdate (a pointer) and the labels map get ".", strategy,
        // template, its metadata and spec (Go structs) do not.
        let mut d = deploy(2, "nginx");
        d["spec"]["strategy"] = json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}});
        d["spec"]["template"]["spec"]["containers"][0]["livenessProbe"] =
            json!({"httpGet": {"path": "/", "port": 80}});
        record_update(
            None,
            &mut d,
            "kubectl-create",
            "Deployment",
            Scope::NoStatus,
            None,
            "t",
        );
        let v = fields_of(&d, "kubectl-create");
        assert_eq!(
            v["f:spec"]["f:strategy"],
            json!({"f:type": {}, "f:rollingUpdate": {".": {}, "f:maxSurge": {}}})
        );
        let t = &v["f:spec"]["f:template"];
        assert!(
            t.get(".").is_none() && t["f:spec"].get(".").is_none(),
            "{t}"
        );
        assert!(t["f:metadata"].get(".").is_none(), "{t}");
        assert_eq!(t["f:metadata"]["f:labels"]["."], json!({}));
        let c = &t["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"];
        assert_eq!(
            c["f:livenessProbe"],
            json!({".": {}, "f:httpGet": {".": {}, "f:path": {}, "f:port": {}}})
        );
        assert!(v["f:spec"].get(".").is_none() && v["f:metadata"].get(".").is_none());
    }

    #[test]
    fn finalizers_are_a_set_owned_item_by_item() {
        let cm = |fins: Value| {
            json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "x", "namespace": "default", "finalizers": fins}})
        };
        // An update adding finalizers owns the list and its item, as
        // `{"f:finalizers":{".":{},"v:\"example.com/a\"":{}}}` upstream.
        let mut obj = cm(json!(["example.com/a"]));
        record_update(None, &mut obj, "ctl", "ConfigMap", Scope::All, None, "t");
        assert_eq!(
            fields_of(&obj, "ctl")["f:metadata"]["f:finalizers"],
            json!({".": {}, "v:\"example.com/a\"": {}})
        );
        // Two appliers each add theirs: no conflict, both stay.
        let a = apply(
            &json!({}),
            &cm(json!(["example.com/a"])),
            "a",
            false,
            "ConfigMap",
            Scope::All,
            "t",
        )
        .unwrap();
        let ab = apply(
            &a,
            &cm(json!(["example.com/b"])),
            "b",
            false,
            "ConfigMap",
            Scope::All,
            "t",
        )
        .unwrap();
        assert_eq!(
            ab["metadata"]["finalizers"],
            json!(["example.com/a", "example.com/b"])
        );
        assert_eq!(
            fields_of(&ab, "b")["f:metadata"]["f:finalizers"],
            json!({"v:\"example.com/b\"": {}})
        );
        // An applier that stops applying its finalizer removes it alone.
        let mut none = cm(json!([]));
        none["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("finalizers");
        let b = apply(&ab, &none, "a", false, "ConfigMap", Scope::All, "t").unwrap();
        assert_eq!(b["metadata"]["finalizers"], json!(["example.com/b"]));
        let gone = apply(&b, &none, "b", false, "ConfigMap", Scope::All, "t").unwrap();
        assert!(gone["metadata"].get("finalizers").is_none(), "{gone}");
    }

    #[test]
    fn container_args_are_atomic() {
        // `args` has no list type upstream: atomic, so a second applier
        // with other args conflicts on the whole list.
        let with_args = |args: Value| {
            let mut d = deploy(2, "nginx");
            d["spec"]["template"]["spec"]["containers"][0]["args"] = args;
            d
        };
        let a = apply(
            &json!({}),
            &with_args(json!(["-x"])),
            "a",
            false,
            "Deployment",
            Scope::NoStatus,
            "t",
        )
        .unwrap();
        let c = &fields_of(&a, "a")["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"];
        assert_eq!(c["f:args"], json!({}));
        let err = apply(
            &a,
            &with_args(json!(["-y"])),
            "b",
            false,
            "Deployment",
            Scope::NoStatus,
            "t",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Apply failed with 1 conflict: conflict with \"a\": .spec.template.spec.containers[name=\"c\"].args"
        );
    }
}
