//! The resources this server serves: one table that discovery, OpenAPI,
//! routing and printing all read, so they never disagree.

/// One served resource.
#[derive(Debug)]
pub struct Resource {
    /// API group ("" for core).
    pub group: &'static str,
    /// API version.
    pub version: &'static str,
    /// Kind of its objects.
    pub kind: &'static str,
    /// Plural, lower-case name used in URLs.
    pub plural: &'static str,
    /// Singular name.
    pub singular: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// kubectl short names.
    pub short_names: &'static [&'static str],
    /// Subresources besides the object itself.
    pub subresources: &'static [&'static str],
    /// Whether the main endpoint ignores `.status` (it has a status subresource).
    pub has_status: bool,
    /// Whether it belongs to the `all` category.
    pub in_all: bool,
    /// The verbs it serves (reviews only `create`).
    pub verbs: &'static [&'static str],
}

impl Resource {
    /// "pods" for core, "apps/deployments" otherwise: the store key prefix.
    /// events.k8s.io Events are kept with core Events (one store, two versions).
    pub fn id(&self) -> String {
        if self.group.is_empty() || (self.group == "events.k8s.io" && self.plural == "events") {
            self.plural.to_string()
        } else {
            format!("{}/{}", self.group, self.plural)
        }
    }
    /// "v1" or "apps/v1".
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    /// The URL prefix of its group-version ("/api/v1", "/apis/apps/v1").
    pub fn gv_path(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }
}

#[allow(clippy::too_many_arguments)] // a table row constructor
const fn r(
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    subresources: &'static [&'static str],
    in_all: bool,
) -> Resource {
    let has_status = !subresources.is_empty() && matches!(subresources[0].as_bytes(), b"status");
    Resource {
        group,
        version: "v1",
        kind,
        plural,
        singular,
        namespaced,
        short_names,
        subresources,
        has_status,
        in_all,
        verbs: VERBS,
    }
}

/// A review: created, answered, never stored.
const fn review(
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
) -> Resource {
    Resource {
        group,
        version: "v1",
        kind,
        plural,
        singular: "",
        namespaced,
        short_names: &[],
        subresources: &[],
        has_status: false,
        in_all: false,
        verbs: &["create"],
    }
}

/// Every served resource.
pub static RESOURCES: &[Resource] = &[
    r(
        "",
        "Namespace",
        "namespaces",
        "namespace",
        false,
        &["ns"],
        &["status", "finalize"],
        false,
    ),
    r(
        "",
        "Node",
        "nodes",
        "node",
        false,
        &["no"],
        &["status"],
        false,
    ),
    r(
        "",
        "Pod",
        "pods",
        "pod",
        true,
        &["po"],
        &[
            "status",
            "binding",
            "log",
            "exec",
            "attach",
            "portforward",
            "ephemeralcontainers",
        ],
        true,
    ),
    r(
        "",
        "Service",
        "services",
        "service",
        true,
        &["svc"],
        &["status"],
        true,
    ),
    r(
        "",
        "Endpoints",
        "endpoints",
        "endpoints",
        true,
        &["ep"],
        &[],
        false,
    ),
    r("", "Event", "events", "event", true, &["ev"], &[], false),
    r(
        "",
        "ConfigMap",
        "configmaps",
        "configmap",
        true,
        &["cm"],
        &[],
        false,
    ),
    r("", "Secret", "secrets", "secret", true, &[], &[], false),
    r(
        "",
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
        true,
        &["sa"],
        &["token"],
        false,
    ),
    r(
        "discovery.k8s.io",
        "EndpointSlice",
        "endpointslices",
        "endpointslice",
        true,
        &[],
        &[],
        false,
    ),
    r(
        "networking.k8s.io",
        "NetworkPolicy",
        "networkpolicies",
        "networkpolicy",
        true,
        &["netpol"],
        &[],
        false,
    ),
    r(
        "apps",
        "Deployment",
        "deployments",
        "deployment",
        true,
        &["deploy"],
        &["status", "scale"],
        true,
    ),
    r(
        "apps",
        "ReplicaSet",
        "replicasets",
        "replicaset",
        true,
        &["rs"],
        &["status", "scale"],
        true,
    ),
    r(
        "apps",
        "DaemonSet",
        "daemonsets",
        "daemonset",
        true,
        &["ds"],
        &["status"],
        true,
    ),
    r(
        "events.k8s.io",
        "Event",
        "events",
        "event",
        true,
        &["ev"],
        &[],
        false,
    ),
    r(
        "apps",
        "StatefulSet",
        "statefulsets",
        "statefulset",
        true,
        &["sts"],
        &["status", "scale"],
        true,
    ),
    r("batch", "Job", "jobs", "job", true, &[], &["status"], true),
    r(
        "batch",
        "CronJob",
        "cronjobs",
        "cronjob",
        true,
        &["cj"],
        &["status"],
        true,
    ),
    r(
        "coordination.k8s.io",
        "Lease",
        "leases",
        "lease",
        true,
        &[],
        &[],
        false,
    ),
    r(
        RBAC_GROUP,
        "ClusterRole",
        "clusterroles",
        "clusterrole",
        false,
        &[],
        &[],
        false,
    ),
    r(
        RBAC_GROUP,
        "ClusterRoleBinding",
        "clusterrolebindings",
        "clusterrolebinding",
        false,
        &[],
        &[],
        false,
    ),
    r(RBAC_GROUP, "Role", "roles", "role", true, &[], &[], false),
    r(
        RBAC_GROUP,
        "RoleBinding",
        "rolebindings",
        "rolebinding",
        true,
        &[],
        &[],
        false,
    ),
    review(
        "authentication.k8s.io",
        "SelfSubjectReview",
        "selfsubjectreviews",
        false,
    ),
    review(
        "authentication.k8s.io",
        "TokenReview",
        "tokenreviews",
        false,
    ),
    review(
        "authorization.k8s.io",
        "LocalSubjectAccessReview",
        "localsubjectaccessreviews",
        true,
    ),
    review(
        "authorization.k8s.io",
        "SelfSubjectAccessReview",
        "selfsubjectaccessreviews",
        false,
    ),
    review(
        "authorization.k8s.io",
        "SelfSubjectRulesReview",
        "selfsubjectrulesreviews",
        false,
    ),
    review(
        "authorization.k8s.io",
        "SubjectAccessReview",
        "subjectaccessreviews",
        false,
    ),
];

/// The RBAC API group.
pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// The API groups in discovery order (core first).
pub static GROUPS: &[&str] = &[
    "",
    "apps",
    "authentication.k8s.io",
    "authorization.k8s.io",
    "batch",
    "rbac.authorization.k8s.io",
    "discovery.k8s.io",
    "networking.k8s.io",
    "coordination.k8s.io",
    "events.k8s.io",
];

/// The resource at `group`/`version`/`plural`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource of a kind.
pub fn by_kind(group: &str, kind: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.kind == kind)
}

/// The verbs of a subresource, as discovery lists them.
pub fn sub_verbs(sub: &str) -> &'static [&'static str] {
    match sub {
        "status" | "scale" | "ephemeralcontainers" => &["get", "patch", "update"],
        "binding" => &["create"],
        "finalize" => &["update"],
        "log" => &["get"],
        "exec" | "attach" | "portforward" => &["create", "get"],
        "token" => &["create"],
        _ => &[],
    }
}

/// The verbs of a resource.
pub const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
