//! Server-side printing: the `Table` kube-apiserver returns for
//! `kubectl get`, with the same columns and cell formats per kind (wide
//! columns at priority 1) and the object's metadata in each row.

use serde_json::{Map, Value, json};

use crate::selector::label_selector_string;

/// Seconds since the epoch, now.
pub fn now_secs() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// kube's `HumanDuration` (the AGE column: "45s", "5m2s", "3h", "2d4h").
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    if secs < 0 {
        return "0s".into();
    }
    if secs < 120 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        let s = secs % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

fn since(ts: &Value, now: i64) -> String {
    match ts.as_str().and_then(|s| s.parse::<jiff::Timestamp>().ok()) {
        Some(t) => human_duration(now - t.as_second()),
        None => "<unknown>".into(),
    }
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn or_none(v: String) -> String {
    if v.is_empty() { "<none>".into() } else { v }
}

fn int(v: &Value) -> Value {
    json!(v.as_i64().unwrap_or(0))
}

fn format_labels(m: &Value) -> String {
    let mut parts: Vec<String> = m
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", s(v)))
        .collect();
    parts.sort();
    or_none(parts.join(","))
}

fn containers_images(spec: &Value) -> (String, String) {
    let cs = spec["containers"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or(&[]);
    let names: Vec<&str> = cs.iter().map(|c| s(&c["name"])).collect();
    let images: Vec<&str> = cs.iter().map(|c| s(&c["image"])).collect();
    (names.join(","), images.join(","))
}

fn col(name: &str, ty: &str, priority: i64, description: &str) -> Value {
    let mut c = json!({"name": name, "type": ty, "format": "", "description": description, "priority": priority});
    if name == "Name" {
        c["format"] = json!("name");
    }
    c
}

const NAME: &str = "Name must be unique within a namespace.";
const AGE: &str =
    "CreationTimestamp is a timestamp representing the server time when this object was created.";

const CONTAINERS: &str = "Names of each container in the template.";
const IMAGES: &str = "Images referenced by each container in the template.";
const JOB_SELECTOR: &str = "A label query over pods that should match the pod count. Normally, the system sets this field for you. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors";

/// The column definitions of a kind.
pub fn columns(kind: &str) -> Vec<Value> {
    let c = |n: &str, t: &str, p: i64| {
        col(
            n,
            t,
            p,
            if n == "Name" {
                NAME
            } else if n == "Age" {
                AGE
            } else {
                ""
            },
        )
    };
    match kind {
        "Pod" => vec![
            c("Name", "string", 0),
            col(
                "Ready",
                "string",
                0,
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            col(
                "Status",
                "string",
                0,
                "The aggregate status of the containers in this pod.",
            ),
            col(
                "Restarts",
                "string",
                0,
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            c("Age", "string", 0),
            col(
                "IP",
                "string",
                1,
                "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.",
            ),
            col(
                "Node",
                "string",
                1,
                "NodeName indicates in which node this pod is scheduled.",
            ),
            col(
                "Nominated Node",
                "string",
                1,
                "nominatedNodeName is set only when this pod preempts other pods on the node.",
            ),
            col(
                "Readiness Gates",
                "string",
                1,
                "If specified, all readiness gates will be evaluated for pod readiness.",
            ),
        ],
        "Service" => vec![
            c("Name", "string", 0),
            col(
                "Type",
                "string",
                0,
                "type determines how the Service is exposed.",
            ),
            col(
                "Cluster-IP",
                "string",
                0,
                "clusterIP is the IP address of the service.",
            ),
            col(
                "External-IP",
                "string",
                0,
                "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.",
            ),
            col(
                "Port(s)",
                "string",
                0,
                "The list of ports that are exposed by this service.",
            ),
            c("Age", "string", 0),
            col(
                "Selector",
                "string",
                1,
                "Route service traffic to pods with label keys and values matching this selector.",
            ),
        ],
        "Deployment" => vec![
            c("Name", "string", 0),
            col("Ready", "string", 0, "Number of the pod with ready state"),
            col(
                "Up-to-date",
                "string",
                0,
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
            ),
            col(
                "Available",
                "string",
                0,
                "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
            ),
            c("Age", "string", 0),
            col(
                "Containers",
                "string",
                1,
                "Names of each container in the template.",
            ),
            col(
                "Images",
                "string",
                1,
                "Images referenced by each container in the template.",
            ),
            col("Selector", "string", 1, "Label selector for pods."),
        ],
        "ReplicaSet" => vec![
            c("Name", "string", 0),
            col(
                "Desired",
                "integer",
                0,
                "Replicas is the number of desired replicas.",
            ),
            col(
                "Current",
                "integer",
                0,
                "Replicas is the most recently observed number of replicas.",
            ),
            col(
                "Ready",
                "integer",
                0,
                "readyReplicas is the number of pods targeted by this ReplicaSet with a Ready Condition.",
            ),
            c("Age", "string", 0),
            col(
                "Containers",
                "string",
                1,
                "Names of each container in the template.",
            ),
            col(
                "Images",
                "string",
                1,
                "Images referenced by each container in the template.",
            ),
            col(
                "Selector",
                "string",
                1,
                "Selector is a label query over pods that should match the replica count.",
            ),
        ],
        "StatefulSet" => vec![
            c("Name", "string", 0),
            col("Ready", "string", 0, "Number of the pod with ready state"),
            c("Age", "string", 0),
            col("Containers", "string", 1, CONTAINERS),
            col("Images", "string", 1, IMAGES),
        ],
        "Job" => vec![
            c("Name", "string", 0),
            col("Status", "string", 0, "Status of the job."),
            col(
                "Completions",
                "string",
                0,
                "The number of pods which reached phase Succeeded. The value increases monotonically for a given spec. However, it may decrease in reaction to scale down of elastic indexed jobs.",
            ),
            col(
                "Duration",
                "string",
                0,
                "Time required to complete the job.",
            ),
            c("Age", "string", 0),
            col("Containers", "string", 1, CONTAINERS),
            col("Images", "string", 1, IMAGES),
            col("Selector", "string", 1, JOB_SELECTOR),
        ],
        "CronJob" => vec![
            c("Name", "string", 0),
            col(
                "Schedule",
                "string",
                0,
                "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron.",
            ),
            col(
                "Timezone",
                "string",
                0,
                "The time zone name for the given schedule, see https://en.wikipedia.org/wiki/List_of_tz_database_time_zones. If not specified, this will default to the time zone of the kube-controller-manager process. The set of valid time zone names and the time zone offset is loaded from the system-wide time zone database by the API server during CronJob validation and the controller manager during execution. If no system-wide time zone database can be found a bundled version of the database is used instead. If the time zone name becomes invalid during the lifetime of a CronJob or due to a change in host configuration, the controller will stop creating new new Jobs and will create a system event with the reason UnknownTimeZone. More information can be found in https://kubernetes.io/docs/concepts/workloads/controllers/cron-jobs/#time-zones",
            ),
            col(
                "Suspend",
                "boolean",
                0,
                "This flag tells the controller to suspend subsequent executions, it does not apply to already started executions.  Defaults to false.",
            ),
            col(
                "Active",
                "integer",
                0,
                "A list of pointers to currently running jobs.",
            ),
            col(
                "Last Schedule",
                "string",
                0,
                "Information when was the last time the job was successfully scheduled.",
            ),
            c("Age", "string", 0),
            col("Containers", "string", 1, CONTAINERS),
            col("Images", "string", 1, IMAGES),
            col("Selector", "string", 1, JOB_SELECTOR),
        ],
        "DaemonSet" => vec![
            c("Name", "string", 0),
            col(
                "Desired",
                "integer",
                0,
                "The total number of nodes that should be running the daemon pod.",
            ),
            col(
                "Current",
                "integer",
                0,
                "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod.",
            ),
            col(
                "Ready",
                "integer",
                0,
                "numberReady is the number of nodes that should be running the daemon pod and have one or more of the daemon pod running with a Ready Condition.",
            ),
            col(
                "Up-to-date",
                "integer",
                0,
                "The total number of nodes that are running updated daemon pod",
            ),
            col(
                "Available",
                "integer",
                0,
                "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available.",
            ),
            col(
                "Node Selector",
                "string",
                0,
                "NodeSelector is a selector which must be true for the pod to fit on a node.",
            ),
            c("Age", "string", 0),
            col(
                "Containers",
                "string",
                1,
                "Names of each container in the template.",
            ),
            col(
                "Images",
                "string",
                1,
                "Images referenced by each container in the template.",
            ),
            col(
                "Selector",
                "string",
                1,
                "A label query over pods that are managed by the daemon set.",
            ),
        ],
        "Endpoints" => vec![
            c("Name", "string", 0),
            col(
                "Endpoints",
                "string",
                0,
                "The set of all endpoints is the union of all subsets.",
            ),
            c("Age", "string", 0),
        ],
        "EndpointSlice" => vec![
            c("Name", "string", 0),
            col(
                "AddressType",
                "string",
                0,
                "addressType specifies the type of address carried by this EndpointSlice.",
            ),
            col(
                "Ports",
                "string",
                0,
                "ports specifies the list of network ports exposed by each endpoint in this slice.",
            ),
            col(
                "Endpoints",
                "string",
                0,
                "endpoints is a list of unique endpoints in this slice.",
            ),
            c("Age", "string", 0),
        ],
        "Node" => vec![
            c("Name", "string", 0),
            col("Status", "string", 0, "The status of the node"),
            col("Roles", "string", 0, "The roles of the node"),
            c("Age", "string", 0),
            col(
                "Version",
                "string",
                0,
                "Kubelet Version reported by the node.",
            ),
            col(
                "Internal-IP",
                "string",
                1,
                "List of addresses reachable to the node.",
            ),
            col(
                "External-IP",
                "string",
                1,
                "List of addresses reachable to the node.",
            ),
            col(
                "OS-Image",
                "string",
                1,
                "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
            ),
            col(
                "Kernel-Version",
                "string",
                1,
                "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
            ),
            col(
                "Container-Runtime",
                "string",
                1,
                "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
            ),
        ],
        "Event" => vec![
            col(
                "Last Seen",
                "string",
                0,
                "The time at which the most recent occurrence of this event was recorded.",
            ),
            col(
                "Type",
                "string",
                0,
                "Type of this event (Normal, Warning), new types could be added in the future",
            ),
            col(
                "Reason",
                "string",
                0,
                "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
            ),
            col(
                "Object",
                "string",
                0,
                "The object that this event is about.",
            ),
            col(
                "Subobject",
                "string",
                1,
                "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement.",
            ),
            col(
                "Source",
                "string",
                1,
                "The component reporting this event. Should be a short machine understandable string.",
            ),
            col(
                "Message",
                "string",
                0,
                "A human-readable description of the status of this operation.",
            ),
            col(
                "First Seen",
                "string",
                1,
                "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)",
            ),
            col(
                "Count",
                "string",
                1,
                "The number of times this event has occurred.",
            ),
            col("Name", "string", 1, NAME),
        ],
        "Namespace" => vec![
            c("Name", "string", 0),
            col("Status", "string", 0, "The status of the namespace"),
            c("Age", "string", 0),
        ],
        "ConfigMap" => vec![
            c("Name", "string", 0),
            col("Data", "string", 0, "Data contains the configuration data."),
            c("Age", "string", 0),
        ],
        "Secret" => vec![
            c("Name", "string", 0),
            col(
                "Type",
                "string",
                0,
                "Used to facilitate programmatic handling of secret data. More info: https://kubernetes.io/docs/concepts/configuration/secret/#secret-types",
            ),
            col(
                "Data",
                "string",
                0,
                "Data contains the secret data. Each key must consist of alphanumeric characters, '-', '_' or '.'. The serialized form of the secret data is a base64 encoded string, representing the arbitrary (possibly non-string) data value here. Described in https://tools.ietf.org/html/rfc4648#section-4",
            ),
            c("Age", "string", 0),
        ],
        "ServiceAccount" => vec![
            c("Name", "string", 0),
            col(
                "Secrets",
                "string",
                0,
                "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use.",
            ),
            c("Age", "string", 0),
        ],
        "NetworkPolicy" => vec![
            c("Name", "string", 0),
            col(
                "Pod-Selector",
                "string",
                0,
                "Selects the pods to which this NetworkPolicy object applies.",
            ),
            c("Age", "string", 0),
        ],
        "Lease" => vec![
            c("Name", "string", 0),
            col(
                "Holder",
                "string",
                0,
                "holderIdentity contains the identity of the holder of a current lease.",
            ),
            c("Age", "string", 0),
        ],
        "RoleBinding" | "ClusterRoleBinding" => {
            let what = if kind == "RoleBinding" {
                "roleBinding"
            } else {
                "clusterRoleBinding"
            };
            vec![
                c("Name", "string", 0),
                col(
                    "Role",
                    "string",
                    0,
                    "RoleRef can reference a Role in the current namespace or a ClusterRole in the global namespace. If the RoleRef cannot be resolved, the Authorizer must return an error. This field is immutable.",
                ),
                c("Age", "string", 0),
                col("Users", "string", 1, &format!("Users in the {what}")),
                col("Groups", "string", 1, &format!("Groups in the {what}")),
                col(
                    "ServiceAccounts",
                    "string",
                    1,
                    &format!("ServiceAccounts in the {what}"),
                ),
            ]
        }
        // kube-apiserver's default table (no printer for these kinds).
        "Role" | "ClusterRole" => vec![c("Name", "string", 0), col("Created At", "date", 0, AGE)],
        _ => vec![c("Name", "string", 0), c("Age", "string", 0)],
    }
}

/// Users, groups and ServiceAccounts ("ns/name") of a binding.
fn subjects(o: &Value) -> [String; 3] {
    let mut out: [Vec<String>; 3] = Default::default();
    for sub in o["subjects"].as_array().into_iter().flatten() {
        let name = s(&sub["name"]);
        match s(&sub["kind"]) {
            "User" => out[0].push(name.to_string()),
            "Group" => out[1].push(name.to_string()),
            "ServiceAccount" => out[2].push(format!("{}/{name}", s(&sub["namespace"]))),
            _ => {}
        }
    }
    out.map(|v| v.join(", "))
}

fn pod_cells(o: &Value, now: i64) -> Vec<Value> {
    let spec = &o["spec"];
    let st = &o["status"];
    let total = spec["containers"].as_array().map(Vec::len).unwrap_or(0);
    let mut ready = 0;
    let mut restarts = 0;
    let mut last_restart: Option<i64> = None;
    let mut reason = s(&st["phase"]).to_string();
    if !s(&st["reason"]).is_empty() {
        reason = s(&st["reason"]).to_string();
    }
    let mut initializing = false;
    let init = st["initContainerStatuses"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or(&[]);
    let n_init = spec["initContainers"].as_array().map(Vec::len).unwrap_or(0);
    for (i, c) in init.iter().enumerate() {
        restarts += c["restartCount"].as_i64().unwrap_or(0);
        let term = &c["state"]["terminated"];
        let waiting = &c["state"]["waiting"];
        if term.is_object() && term["exitCode"].as_i64() == Some(0) {
            continue;
        }
        if c["state"]["running"].is_object() && c["ready"].as_bool() == Some(true) {
            continue;
        }
        initializing = true;
        reason = if term.is_object() {
            if !s(&term["reason"]).is_empty() {
                format!("Init:{}", s(&term["reason"]))
            } else if term["signal"].as_i64().unwrap_or(0) != 0 {
                format!("Init:Signal:{}", term["signal"])
            } else {
                format!("Init:ExitCode:{}", term["exitCode"].as_i64().unwrap_or(0))
            }
        } else if waiting.is_object()
            && !s(&waiting["reason"]).is_empty()
            && s(&waiting["reason"]) != "PodInitializing"
        {
            format!("Init:{}", s(&waiting["reason"]))
        } else {
            format!("Init:{i}/{n_init}")
        };
        break;
    }
    if !initializing {
        let mut has_running = false;
        let cs = st["containerStatuses"]
            .as_array()
            .map(|a| a.as_slice())
            .unwrap_or(&[]);
        for c in cs.iter().rev() {
            restarts += c["restartCount"].as_i64().unwrap_or(0);
            if let Some(t) = c["lastState"]["terminated"]["finishedAt"]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            {
                last_restart =
                    Some(last_restart.map_or(t.as_second(), |l: i64| l.max(t.as_second())));
            }
            let waiting = &c["state"]["waiting"];
            let term = &c["state"]["terminated"];
            if waiting.is_object() && !s(&waiting["reason"]).is_empty() {
                reason = s(&waiting["reason"]).to_string();
            } else if term.is_object() && !s(&term["reason"]).is_empty() {
                reason = s(&term["reason"]).to_string();
            } else if term.is_object() {
                let sig = term["signal"].as_i64().unwrap_or(0);
                reason = if sig != 0 {
                    format!("Signal:{sig}")
                } else {
                    format!("ExitCode:{}", term["exitCode"].as_i64().unwrap_or(0))
                };
            } else if c["ready"].as_bool() == Some(true) && c["state"]["running"].is_object() {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            let pod_ready = st["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| s(&c["type"]) == "Ready" && s(&c["status"]) == "True");
            reason = if pod_ready {
                "Running".into()
            } else {
                "NotReady".into()
            };
        }
    }
    let phase = s(&st["phase"]);
    if o["metadata"]["deletionTimestamp"].is_string() && s(&st["reason"]) == "NodeLost" {
        reason = "Unknown".into();
    } else if o["metadata"]["deletionTimestamp"].is_string()
        && phase != "Succeeded"
        && phase != "Failed"
    {
        reason = "Terminating".into();
    }
    let restarts_str = match last_restart {
        Some(t) if restarts != 0 => format!("{restarts} ({} ago)", human_duration(now - t)),
        _ => restarts.to_string(),
    };
    let ip = st["podIPs"][0]["ip"]
        .as_str()
        .or(st["podIP"].as_str())
        .unwrap_or("")
        .to_string();
    let gates = spec["readinessGates"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or(&[]);
    let gates_str = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let conds = st["conditions"]
            .as_array()
            .map(|a| a.as_slice())
            .unwrap_or(&[]);
        let t = gates
            .iter()
            .filter(|g| {
                conds
                    .iter()
                    .any(|c| c["type"] == g["conditionType"] && s(&c["status"]) == "True")
            })
            .count();
        format!("{t}/{}", gates.len())
    };
    vec![
        json!(s(&o["metadata"]["name"])),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts_str),
        json!(since(&o["metadata"]["creationTimestamp"], now)),
        json!(or_none(ip)),
        json!(or_none(s(&spec["nodeName"]).to_string())),
        json!(or_none(s(&st["nominatedNodeName"]).to_string())),
        json!(gates_str),
    ]
}

fn service_cells(o: &Value, now: i64) -> Vec<Value> {
    let spec = &o["spec"];
    let ty = s(&spec["type"]);
    let cluster_ip = spec["clusterIPs"][0]
        .as_str()
        .or(spec["clusterIP"].as_str())
        .unwrap_or("")
        .to_string();
    let ext_ips: Vec<&str> = spec["externalIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let external = match ty {
        "ClusterIP" | "NodePort" => or_none(ext_ips.join(",")),
        "ExternalName" => s(&spec["externalName"]).to_string(),
        "LoadBalancer" => {
            let lb: Vec<&str> = o["status"]["loadBalancer"]["ingress"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["ip"].as_str().or(i["hostname"].as_str()))
                .collect();
            let mut all: Vec<&str> = ext_ips.clone();
            all.extend(lb.iter());
            if !all.is_empty() {
                all.join(",")
            } else {
                "<pending>".into()
            }
        }
        _ => "<unknown>".into(),
    };
    let ports: Vec<String> = spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let np = p["nodePort"].as_i64().unwrap_or(0);
            if np != 0 {
                format!(
                    "{}:{}/{}",
                    p["port"].as_i64().unwrap_or(0),
                    np,
                    s(&p["protocol"])
                )
            } else {
                format!("{}/{}", p["port"].as_i64().unwrap_or(0), s(&p["protocol"]))
            }
        })
        .collect();
    vec![
        json!(s(&o["metadata"]["name"])),
        json!(ty),
        json!(or_none(cluster_ip)),
        json!(external),
        json!(or_none(ports.join(","))),
        json!(since(&o["metadata"]["creationTimestamp"], now)),
        json!(format_labels(&spec["selector"])),
    ]
}

fn endpoints_cell(o: &Value) -> String {
    let subsets = o["subsets"].as_array().map(|a| a.as_slice()).unwrap_or(&[]);
    if subsets.is_empty() {
        return "<none>".into();
    }
    let (mut list, max, mut more, mut count) = (Vec::new(), 3, false, 0);
    for ss in subsets {
        let addrs = ss["addresses"]
            .as_array()
            .map(|a| a.as_slice())
            .unwrap_or(&[]);
        let ports = ss["ports"].as_array().map(|a| a.as_slice()).unwrap_or(&[]);
        if ports.is_empty() {
            count += addrs.len();
            for a in addrs {
                if list.len() == max {
                    more = true;
                    break;
                }
                list.push(s(&a["ip"]).to_string());
            }
        } else {
            for p in ports {
                count += addrs.len();
                for a in addrs {
                    if list.len() == max {
                        more = true;
                        break;
                    }
                    let ip = s(&a["ip"]);
                    let port = p["port"].as_i64().unwrap_or(0);
                    list.push(if ip.contains(':') {
                        format!("[{ip}]:{port}")
                    } else {
                        format!("{ip}:{port}")
                    });
                }
            }
        }
    }
    let ret = list.join(",");
    if more {
        format!("{ret} + {} more...", count - max)
    } else {
        ret
    }
}

fn slice_cells(o: &Value) -> (String, String) {
    let ports = o["ports"].as_array().map(|a| a.as_slice()).unwrap_or(&[]);
    let ports_str = if ports.is_empty() {
        "<unset>".to_string()
    } else {
        let mut list: Vec<String> = ports
            .iter()
            .take(3)
            .map(|p| {
                p["port"]
                    .as_i64()
                    .map_or("<unset>".to_string(), |n| n.to_string())
            })
            .collect();
        if ports.len() > 3 {
            let l = list.join(",");
            list = vec![format!("{l} + {} more...", ports.len() - 3)];
        }
        list.join(",")
    };
    let addrs: Vec<&str> = o["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| e["addresses"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    let eps = if addrs.is_empty() {
        "<unset>".to_string()
    } else if addrs.len() > 3 {
        format!("{} + {} more...", addrs[..3].join(","), addrs.len() - 3)
    } else {
        addrs.join(",")
    };
    (ports_str, eps)
}

fn node_cells(o: &Value, now: i64) -> Vec<Value> {
    let st = &o["status"];
    let mut status = Vec::new();
    if let Some(c) = st["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| s(&c["type"]) == "Ready")
    {
        status.push(if s(&c["status"]) == "True" {
            "Ready"
        } else {
            "NotReady"
        });
    }
    if status.is_empty() {
        status.push("Unknown");
    }
    if o["spec"]["unschedulable"].as_bool() == Some(true) {
        status.push("SchedulingDisabled");
    }
    let mut roles: Vec<String> = Vec::new();
    for (k, v) in o["metadata"]["labels"].as_object().into_iter().flatten() {
        if let Some(r) = k.strip_prefix("node-role.kubernetes.io/") {
            if !r.is_empty() {
                roles.push(r.to_string());
            }
        } else if k == "kubernetes.io/role" && !s(v).is_empty() {
            roles.push(s(v).to_string());
        }
    }
    roles.sort();
    roles.dedup();
    let addr = |t: &str| {
        st["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| s(&a["type"]) == t)
            .map(|a| s(&a["address"]).to_string())
            .unwrap_or_default()
    };
    let info = &st["nodeInfo"];
    let unknown = |v: &Value| {
        if s(v).is_empty() {
            "<unknown>".to_string()
        } else {
            s(v).to_string()
        }
    };
    vec![
        json!(s(&o["metadata"]["name"])),
        json!(status.join(",")),
        json!(or_none(roles.join(","))),
        json!(since(&o["metadata"]["creationTimestamp"], now)),
        json!(s(&info["kubeletVersion"])),
        json!(or_none(addr("InternalIP"))),
        json!(or_none(addr("ExternalIP"))),
        json!(unknown(&info["osImage"])),
        json!(unknown(&info["kernelVersion"])),
        json!(unknown(&info["containerRuntimeVersion"])),
    ]
}

fn event_cells(o: &Value, now: i64) -> Vec<Value> {
    let first = if o["firstTimestamp"].is_string() {
        since(&o["firstTimestamp"], now)
    } else {
        since(&o["eventTime"], now)
    };
    let mut last = if o["lastTimestamp"].is_string() {
        since(&o["lastTimestamp"], now)
    } else {
        first.clone()
    };
    let mut count = o["count"].as_i64().unwrap_or(0);
    if o["series"].is_object() {
        last = since(&o["series"]["lastObservedTime"], now);
        count = o["series"]["count"].as_i64().unwrap_or(0);
    } else if count == 0 {
        count = 1;
    }
    let io = &o["involvedObject"];
    let kind = s(&io["kind"]).to_lowercase();
    let target = if s(&io["name"]).is_empty() {
        kind
    } else {
        format!("{kind}/{}", s(&io["name"]))
    };
    let (comp, host) = if s(&o["source"]["component"]).is_empty() {
        (s(&o["reportingComponent"]), s(&o["reportingInstance"]))
    } else {
        (s(&o["source"]["component"]), s(&o["source"]["host"]))
    };
    let source = if host.is_empty() {
        comp.to_string()
    } else {
        format!("{comp}, {host}")
    };
    vec![
        json!(last),
        json!(s(&o["type"])),
        json!(s(&o["reason"])),
        json!(target),
        json!(s(&io["fieldPath"])),
        json!(source),
        json!(s(&o["message"]).trim()),
        json!(first),
        json!(count),
        json!(s(&o["metadata"]["name"])),
    ]
}

/// A Job's row: its status word (as kubectl shows it), `succeeded/wanted`,
/// and how long it ran (or has been running).
fn job_cells(o: &Value, now: i64) -> Vec<Value> {
    let spec = &o["spec"];
    let st = &o["status"];
    let succeeded = st["succeeded"].as_i64().unwrap_or(0);
    let completions = match spec["completions"].as_i64() {
        Some(c) => format!("{succeeded}/{c}"),
        None => match spec["parallelism"].as_i64().unwrap_or(0) {
            p if p > 1 => format!("{succeeded}/1 of {p}"),
            _ => format!("{succeeded}/1"),
        },
    };
    let time = |v: &Value| {
        v.as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_second())
    };
    let duration = match (time(&st["startTime"]), time(&st["completionTime"])) {
        (None, _) => String::new(),
        (Some(a), None) => human_duration(now - a),
        (Some(a), Some(b)) => human_duration(b - a),
    };
    let has = |ty: &str| {
        st["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == ty && c["status"] == "True")
    };
    let status = if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else if o["metadata"]["deletionTimestamp"].is_string() {
        "Terminating"
    } else if has("Suspended") {
        "Suspended"
    } else if has("FailureTarget") {
        "FailureTarget"
    } else if has("SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    };
    let (c, i) = containers_images(&spec["template"]["spec"]);
    vec![
        json!(s(&o["metadata"]["name"])),
        json!(status),
        json!(completions),
        json!(duration),
        json!(since(&o["metadata"]["creationTimestamp"], now)),
        json!(c),
        json!(i),
        json!(or_none(label_selector_string(&spec["selector"]))),
    ]
}

/// The cells of one object's row.
pub fn cells(kind: &str, o: &Value, now: i64) -> Vec<Value> {
    let name = json!(s(&o["metadata"]["name"]));
    let age = json!(since(&o["metadata"]["creationTimestamp"], now));
    match kind {
        "Pod" => pod_cells(o, now),
        "Service" => service_cells(o, now),
        "Deployment" => {
            let (c, i) = containers_images(&o["spec"]["template"]["spec"]);
            let st = &o["status"];
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    st["readyReplicas"].as_i64().unwrap_or(0),
                    o["spec"]["replicas"].as_i64().unwrap_or(0)
                )),
                int(&st["updatedReplicas"]),
                int(&st["availableReplicas"]),
                age,
                json!(c),
                json!(i),
                json!(or_none(label_selector_string(&o["spec"]["selector"]))),
            ]
        }
        "ReplicaSet" => {
            let (c, i) = containers_images(&o["spec"]["template"]["spec"]);
            let st = &o["status"];
            vec![
                name,
                int(&o["spec"]["replicas"]),
                int(&st["replicas"]),
                int(&st["readyReplicas"]),
                age,
                json!(c),
                json!(i),
                json!(or_none(label_selector_string(&o["spec"]["selector"]))),
            ]
        }
        "DaemonSet" => {
            let (c, i) = containers_images(&o["spec"]["template"]["spec"]);
            let st = &o["status"];
            vec![
                name,
                int(&st["desiredNumberScheduled"]),
                int(&st["currentNumberScheduled"]),
                int(&st["numberReady"]),
                int(&st["updatedNumberScheduled"]),
                int(&st["numberAvailable"]),
                json!(format_labels(
                    &o["spec"]["template"]["spec"]["nodeSelector"]
                )),
                age,
                json!(c),
                json!(i),
                json!(or_none(label_selector_string(&o["spec"]["selector"]))),
            ]
        }
        "StatefulSet" => {
            let (c, i) = containers_images(&o["spec"]["template"]["spec"]);
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    o["status"]["readyReplicas"].as_i64().unwrap_or(0),
                    o["spec"]["replicas"].as_i64().unwrap_or(0)
                )),
                age,
                json!(c),
                json!(i),
            ]
        }
        "Job" => job_cells(o, now),
        "CronJob" => {
            let tmpl = &o["spec"]["jobTemplate"]["spec"];
            let (c, i) = containers_images(&tmpl["template"]["spec"]);
            let last = if o["status"]["lastScheduleTime"].is_string() {
                since(&o["status"]["lastScheduleTime"], now)
            } else {
                "<none>".into()
            };
            let suspend = match o["spec"]["suspend"].as_bool() {
                Some(true) => "True",
                Some(false) => "False",
                None => "<unset>",
            };
            vec![
                name,
                json!(s(&o["spec"]["schedule"])),
                json!(o["spec"]["timeZone"].as_str().unwrap_or("<none>")),
                json!(suspend),
                json!(o["status"]["active"].as_array().map(Vec::len).unwrap_or(0)),
                json!(last),
                age,
                json!(c),
                json!(i),
                json!(or_none(label_selector_string(&tmpl["selector"]))),
            ]
        }
        "Endpoints" => vec![name, json!(endpoints_cell(o)), age],
        "EndpointSlice" => {
            let (p, e) = slice_cells(o);
            vec![name, json!(s(&o["addressType"])), json!(p), json!(e), age]
        }
        "Node" => node_cells(o, now),
        "Event" => event_cells(o, now),
        "Namespace" => vec![name, json!(s(&o["status"]["phase"])), age],
        "ConfigMap" => {
            let n = o["data"].as_object().map(Map::len).unwrap_or(0)
                + o["binaryData"].as_object().map(Map::len).unwrap_or(0);
            vec![name, json!(n), age]
        }
        "Secret" => vec![
            name,
            json!(s(&o["type"])),
            json!(o["data"].as_object().map(Map::len).unwrap_or(0)),
            age,
        ],
        "ServiceAccount" => vec![
            name,
            json!(o["secrets"].as_array().map(Vec::len).unwrap_or(0)),
            age,
        ],
        "NetworkPolicy" => vec![
            name,
            json!(or_none(label_selector_string(&o["spec"]["podSelector"]))),
            age,
        ],
        "Lease" => vec![name, json!(s(&o["spec"]["holderIdentity"])), age],
        "RoleBinding" | "ClusterRoleBinding" => {
            let [u, g, sa] = subjects(o);
            let role = format!("{}/{}", s(&o["roleRef"]["kind"]), s(&o["roleRef"]["name"]));
            vec![name, json!(role), age, json!(u), json!(g), json!(sa)]
        }
        "Role" | "ClusterRole" => vec![name, o["metadata"]["creationTimestamp"].clone()],
        _ => vec![name, age],
    }
}

/// `PartialObjectMetadata` of an object, as rows carry it.
pub fn partial_metadata(o: &Value) -> Value {
    let mut meta = o["metadata"].clone();
    if let Some(m) = meta.as_object_mut() {
        m.remove("managedFields");
    }
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta})
}

/// Writes one row as JSON into `buf` (the object as stored bytes or its
/// metadata, without copying the object).
pub fn write_row(buf: &mut Vec<u8>, kind: &str, o: &crate::store::Obj, now: i64, include: &str) {
    buf.extend_from_slice(b"{\"cells\":");
    serde_json::to_writer(&mut *buf, &cells(kind, &o.value, now)).expect("json");
    match include {
        "None" => {}
        "Object" => {
            buf.extend_from_slice(b",\"object\":");
            buf.extend_from_slice(&o.json);
        }
        _ => {
            buf.extend_from_slice(b",\"object\":{\"kind\":\"PartialObjectMetadata\",\"apiVersion\":\"meta.k8s.io/v1\",\"metadata\":");
            serde_json::to_writer(&mut *buf, &o.value["metadata"]).expect("json");
            buf.push(b'}');
        }
    }
    buf.push(b'}');
}

/// One row: cells and the object (as `includeObject` asks: None, Metadata, Object).
pub fn row(kind: &str, o: &Value, now: i64, include: &str) -> Value {
    let mut r = json!({"cells": cells(kind, o, now)});
    match include {
        "None" => {}
        "Object" => r["object"] = o.clone(),
        _ => r["object"] = partial_metadata(o),
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        for (secs, want) in [
            (5, "5s"),
            (119, "119s"),
            (302, "5m2s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (9 * 3600, "9h"),
            (50 * 3600, "2d2h"),
            (10 * 86400, "10d"),
            (800 * 86400, "2y70d"),
        ] {
            assert_eq!(human_duration(secs), want);
        }
    }

    #[test]
    fn pod_row() {
        let pod = json!({"metadata": {"name": "web", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.244.1.5", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        let now = "2020-01-01T00:05:02Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_second();
        let c = cells("Pod", &pod, now);
        assert_eq!(
            c[..5],
            [
                json!("web"),
                json!("1/2"),
                json!("CrashLoopBackOff"),
                json!("2"),
                json!("5m2s")
            ]
        );
        assert_eq!(
            c[5..],
            [
                json!("10.244.1.5"),
                json!("n1"),
                json!("<none>"),
                json!("<none>")
            ]
        );
        assert_eq!(columns("Pod").len(), c.len());
    }

    #[test]
    fn service_row() {
        let svc = json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "clusterIP": "10.96.0.5", "clusterIPs": ["10.96.0.5"],
            "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}], "selector": {"run": "web"}}});
        let c = cells("Service", &svc, 0);
        assert_eq!(
            c,
            vec![
                json!("web"),
                json!("NodePort"),
                json!("10.96.0.5"),
                json!("<none>"),
                json!("80:30080/TCP"),
                json!("<unknown>"),
                json!("run=web")
            ]
        );
    }
}
