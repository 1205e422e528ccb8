//! Decoding of Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`)
//! into JSON, for the objects kubectl's generator commands send
//! (`kubectl create namespace|configmap|serviceaccount|deployment|job|
//! cronjob|service|role|clusterrole|rolebinding|clusterrolebinding|token`,
//! `kubectl auth`):
//! the `k8s\0` envelope, `runtime.Unknown`, and the messages below by their
//! field numbers in k8s.io/api's generated.proto. A field this table does not
//! know is refused (415), never dropped.

use base64::Engine;
use serde_json::{Map, Value, json};

/// A body that cannot be decoded.
#[derive(Debug, thiserror::Error)]
#[error("protobuf: {0}")]
pub struct ProtoError(pub String);

#[derive(Clone, Copy)]
enum K {
    Str,
    Int,
    Bool,
    Msg(&'static [F]),
    MapStr,
    MapBytes,
    MapQty,
    RepStr,
    RepMsg(&'static [F]),
    IntOrStr,
    Time,
    /// An embedded message whose fields JSON inlines into its parent
    /// (`Volume.volumeSource`, `LocalObjectReference` in key selectors).
    Inline(&'static [F]),
    /// A `resource.Quantity` (a message holding its string form).
    Qty,
}

type F = (u64, &'static str, K);

const OWNER: &[F] = &[
    (1, "kind", K::Str),
    (3, "name", K::Str),
    (4, "uid", K::Str),
    (5, "apiVersion", K::Str),
    (6, "controller", K::Bool),
    (7, "blockOwnerDeletion", K::Bool),
];
const META: &[F] = &[
    (1, "name", K::Str),
    (2, "generateName", K::Str),
    (3, "namespace", K::Str),
    (5, "uid", K::Str),
    (6, "resourceVersion", K::Str),
    (7, "generation", K::Int),
    (8, "creationTimestamp", K::Time),
    (11, "labels", K::MapStr),
    (12, "annotations", K::MapStr),
    (13, "ownerReferences", K::RepMsg(OWNER)),
    (14, "finalizers", K::RepStr),
];
const REQ: &[F] = &[
    (1, "key", K::Str),
    (2, "operator", K::Str),
    (3, "values", K::RepStr),
];
const SELECTOR: &[F] = &[
    (1, "matchLabels", K::MapStr),
    (2, "matchExpressions", K::RepMsg(REQ)),
];
const CPORT: &[F] = &[
    (1, "name", K::Str),
    (2, "hostPort", K::Int),
    (3, "containerPort", K::Int),
    (4, "protocol", K::Str),
    (5, "hostIP", K::Str),
];
const FIELD_REF: &[F] = &[(1, "apiVersion", K::Str), (2, "fieldPath", K::Str)];
const QTY: &[F] = &[(1, "string", K::Str)];
const RESOURCE_REF: &[F] = &[
    (1, "containerName", K::Str),
    (2, "resource", K::Str),
    (3, "divisor", K::Qty),
];
const KEY_REF: &[F] = &[
    (1, "", K::Inline(LOCALREF)),
    (2, "key", K::Str),
    (3, "optional", K::Bool),
];
const ENV_SOURCE: &[F] = &[
    (1, "fieldRef", K::Msg(FIELD_REF)),
    (2, "resourceFieldRef", K::Msg(RESOURCE_REF)),
    (3, "configMapKeyRef", K::Msg(KEY_REF)),
    (4, "secretKeyRef", K::Msg(KEY_REF)),
];
const ENV: &[F] = &[
    (1, "name", K::Str),
    (2, "value", K::Str),
    (3, "valueFrom", K::Msg(ENV_SOURCE)),
];
const ENV_FROM_REF: &[F] = &[(1, "", K::Inline(LOCALREF)), (2, "optional", K::Bool)];
const ENV_FROM: &[F] = &[
    (1, "prefix", K::Str),
    (2, "configMapRef", K::Msg(ENV_FROM_REF)),
    (3, "secretRef", K::Msg(ENV_FROM_REF)),
];
const MOUNT: &[F] = &[
    (1, "name", K::Str),
    (2, "readOnly", K::Bool),
    (3, "mountPath", K::Str),
    (4, "subPath", K::Str),
    (5, "mountPropagation", K::Str),
    (6, "subPathExpr", K::Str),
];
const CAPABILITIES: &[F] = &[(1, "add", K::RepStr), (2, "drop", K::RepStr)];
const SECURITY: &[F] = &[
    (1, "capabilities", K::Msg(CAPABILITIES)),
    (2, "privileged", K::Bool),
    (4, "runAsUser", K::Int),
    (5, "runAsNonRoot", K::Bool),
    (6, "readOnlyRootFilesystem", K::Bool),
    (7, "allowPrivilegeEscalation", K::Bool),
    (8, "runAsGroup", K::Int),
];
const POD_SECURITY: &[F] = &[
    (2, "runAsUser", K::Int),
    (3, "runAsNonRoot", K::Bool),
    (5, "fsGroup", K::Int),
    (6, "runAsGroup", K::Int),
];
const TOLERATION: &[F] = &[
    (1, "key", K::Str),
    (2, "operator", K::Str),
    (3, "value", K::Str),
    (4, "effect", K::Str),
    (5, "tolerationSeconds", K::Int),
];
const KEY_TO_PATH: &[F] = &[(1, "key", K::Str), (2, "path", K::Str), (3, "mode", K::Int)];
const HOST_PATH: &[F] = &[(1, "path", K::Str), (2, "type", K::Str)];
const EMPTY_DIR: &[F] = &[(1, "medium", K::Str), (2, "sizeLimit", K::Qty)];
const SECRET_VOLUME: &[F] = &[
    (1, "secretName", K::Str),
    (2, "items", K::RepMsg(KEY_TO_PATH)),
    (3, "defaultMode", K::Int),
    (4, "optional", K::Bool),
];
const CONFIGMAP_VOLUME: &[F] = &[
    (1, "", K::Inline(LOCALREF)),
    (2, "items", K::RepMsg(KEY_TO_PATH)),
    (3, "defaultMode", K::Int),
    (4, "optional", K::Bool),
];
const VOLUME_SOURCE: &[F] = &[
    (1, "hostPath", K::Msg(HOST_PATH)),
    (2, "emptyDir", K::Msg(EMPTY_DIR)),
    (6, "secret", K::Msg(SECRET_VOLUME)),
    (19, "configMap", K::Msg(CONFIGMAP_VOLUME)),
];
const VOLUME: &[F] = &[(1, "name", K::Str), (2, "", K::Inline(VOLUME_SOURCE))];
const RESOURCES: &[F] = &[(1, "limits", K::MapQty), (2, "requests", K::MapQty)];
const CONTAINER: &[F] = &[
    (1, "name", K::Str),
    (2, "image", K::Str),
    (3, "command", K::RepStr),
    (4, "args", K::RepStr),
    (5, "workingDir", K::Str),
    (6, "ports", K::RepMsg(CPORT)),
    (7, "env", K::RepMsg(ENV)),
    (8, "resources", K::Msg(RESOURCES)),
    (9, "volumeMounts", K::RepMsg(MOUNT)),
    (13, "terminationMessagePath", K::Str),
    (14, "imagePullPolicy", K::Str),
    (15, "securityContext", K::Msg(SECURITY)),
    (16, "stdin", K::Bool),
    (17, "stdinOnce", K::Bool),
    (18, "tty", K::Bool),
    (19, "envFrom", K::RepMsg(ENV_FROM)),
    (20, "terminationMessagePolicy", K::Str),
];
const POD_SPEC: &[F] = &[
    (1, "volumes", K::RepMsg(VOLUME)),
    (2, "containers", K::RepMsg(CONTAINER)),
    (3, "restartPolicy", K::Str),
    (4, "terminationGracePeriodSeconds", K::Int),
    (6, "dnsPolicy", K::Str),
    (7, "nodeSelector", K::MapStr),
    (8, "serviceAccountName", K::Str),
    (10, "nodeName", K::Str),
    (11, "hostNetwork", K::Bool),
    (12, "hostPID", K::Bool),
    (13, "hostIPC", K::Bool),
    (14, "securityContext", K::Msg(POD_SECURITY)),
    (16, "hostname", K::Str),
    (17, "subdomain", K::Str),
    (19, "schedulerName", K::Str),
    (20, "initContainers", K::RepMsg(CONTAINER)),
    (21, "automountServiceAccountToken", K::Bool),
    (22, "tolerations", K::RepMsg(TOLERATION)),
    (9, "serviceAccount", K::Str),
    (25, "priority", K::Int),
    (30, "enableServiceLinks", K::Bool),
    (31, "preemptionPolicy", K::Str),
];
const POD: &[F] = &[
    (1, "metadata", K::Msg(META)),
    (2, "spec", K::Msg(POD_SPEC)),
    (3, "status", K::Msg(EMPTY)),
];
const TEMPLATE: &[F] = &[(1, "metadata", K::Msg(META)), (2, "spec", K::Msg(POD_SPEC))];
const ROLLING: &[F] = &[
    (1, "maxUnavailable", K::IntOrStr),
    (2, "maxSurge", K::IntOrStr),
];
const STRATEGY: &[F] = &[(1, "type", K::Str), (2, "rollingUpdate", K::Msg(ROLLING))];
const DEPLOY_SPEC: &[F] = &[
    (1, "replicas", K::Int),
    (2, "selector", K::Msg(SELECTOR)),
    (3, "template", K::Msg(TEMPLATE)),
    (4, "strategy", K::Msg(STRATEGY)),
    (5, "minReadySeconds", K::Int),
    (6, "revisionHistoryLimit", K::Int),
    (7, "paused", K::Bool),
    (9, "progressDeadlineSeconds", K::Int),
];
const EMPTY: &[F] = &[];
const DEPLOYMENT: &[F] = &[
    (1, "metadata", K::Msg(META)),
    (2, "spec", K::Msg(DEPLOY_SPEC)),
    (3, "status", K::Msg(EMPTY)),
];
const JOB_SPEC: &[F] = &[
    (1, "parallelism", K::Int),
    (2, "completions", K::Int),
    (3, "activeDeadlineSeconds", K::Int),
    (4, "selector", K::Msg(SELECTOR)),
    (5, "manualSelector", K::Bool),
    (6, "template", K::Msg(TEMPLATE)),
    (7, "backoffLimit", K::Int),
    (8, "ttlSecondsAfterFinished", K::Int),
    (9, "completionMode", K::Str),
    (10, "suspend", K::Bool),
    (14, "podReplacementPolicy", K::Str),
    (15, "managedBy", K::Str),
];
const JOB: &[F] = &[
    (1, "metadata", K::Msg(META)),
    (2, "spec", K::Msg(JOB_SPEC)),
    (3, "status", K::Msg(EMPTY)),
];
const JOB_TEMPLATE: &[F] = &[(1, "metadata", K::Msg(META)), (2, "spec", K::Msg(JOB_SPEC))];
const CRONJOB_SPEC: &[F] = &[
    (1, "schedule", K::Str),
    (2, "startingDeadlineSeconds", K::Int),
    (3, "concurrencyPolicy", K::Str),
    (4, "suspend", K::Bool),
    (5, "jobTemplate", K::Msg(JOB_TEMPLATE)),
    (6, "successfulJobsHistoryLimit", K::Int),
    (7, "failedJobsHistoryLimit", K::Int),
    (8, "timeZone", K::Str),
];
const CRONJOB: &[F] = &[
    (1, "metadata", K::Msg(META)),
    (2, "spec", K::Msg(CRONJOB_SPEC)),
    (3, "status", K::Msg(EMPTY)),
];
const NS_SPEC: &[F] = &[(1, "finalizers", K::RepStr)];
const NS_STATUS: &[F] = &[(1, "phase", K::Str)];
const NAMESPACE: &[F] = &[
    (1, "metadata", K::Msg(META)),
    (2, "spec", K::Msg(NS_SPEC)),
    (3, "status", K::Msg(NS_STATUS)),
];
const CONFIGMAP: &[F] = &[
    (1, "metadata", K::Msg(META)),
    (2, "data", K::MapStr),
    (3, "binaryData", K::MapBytes),
    (4, "immutable", K::Bool),
];
const SECRET: &[F] = &[
    (1, "metadata", K::Msg(META)),
    (2, "data", K::MapBytes),
    (3, "type", K::Str),
    (4, "stringData", K::MapStr),
    (5, "immutable", K::Bool),
];
const OBJREF: &[F] = &[
    (1, "kind", K::Str),
    (2, "namespace", K::Str),
    (3, "name", K::Str),
];
const LOCALREF: &[F] = &[(1, "name", K::Str)];
const SA: &[F] = &[
    (1, "metadata", K::Msg(META)),
    (2, "secrets", K::RepMsg(OBJREF)),
    (3, "imagePullSecrets", K::RepMsg(LOCALREF)),
    (4, "automountServiceAccountToken", K::Bool),
];
const SPORT: &[F] = &[
    (1, "name", K::Str),
    (2, "protocol", K::Str),
    (3, "port", K::Int),
    (4, "targetPort", K::IntOrStr),
    (5, "nodePort", K::Int),
    (6, "appProtocol", K::Str),
];
const SVC_SPEC: &[F] = &[
    (1, "ports", K::RepMsg(SPORT)),
    (2, "selector", K::MapStr),
    (3, "clusterIP", K::Str),
    (4, "type", K::Str),
    (5, "externalIPs", K::RepStr),
    (7, "sessionAffinity", K::Str),
    (10, "externalName", K::Str),
    (18, "clusterIPs", K::RepStr),
];
const SERVICE: &[F] = &[
    (1, "metadata", K::Msg(META)),
    (2, "spec", K::Msg(SVC_SPEC)),
    (3, "status", K::Msg(EMPTY)),
];

const RULE: &[F] = &[
    (1, "verbs", K::RepStr),
    (2, "apiGroups", K::RepStr),
    (3, "resources", K::RepStr),
    (4, "resourceNames", K::RepStr),
    (5, "nonResourceURLs", K::RepStr),
];
const ROLE: &[F] = &[(1, "metadata", K::Msg(META)), (2, "rules", K::RepMsg(RULE))];
const AGGREGATION: &[F] = &[(1, "clusterRoleSelectors", K::RepMsg(SELECTOR))];
const CLUSTER_ROLE: &[F] = &[
    (1, "metadata", K::Msg(META)),
    (2, "rules", K::RepMsg(RULE)),
    (3, "aggregationRule", K::Msg(AGGREGATION)),
];
const SUBJECT: &[F] = &[
    (1, "kind", K::Str),
    (2, "apiGroup", K::Str),
    (3, "name", K::Str),
    (4, "namespace", K::Str),
];
const ROLE_REF: &[F] = &[
    (1, "apiGroup", K::Str),
    (2, "kind", K::Str),
    (3, "name", K::Str),
];
const BINDING: &[F] = &[
    (1, "metadata", K::Msg(META)),
    (2, "subjects", K::RepMsg(SUBJECT)),
    (3, "roleRef", K::Msg(ROLE_REF)),
];
const BOUND_REF: &[F] = &[
    (1, "kind", K::Str),
    (2, "apiVersion", K::Str),
    (3, "name", K::Str),
    (4, "uid", K::Str),
];
const TOKEN_SPEC: &[F] = &[
    (1, "audiences", K::RepStr),
    (3, "boundObjectRef", K::Msg(BOUND_REF)),
    (4, "expirationSeconds", K::Int),
];
const TOKEN_REQUEST: &[F] = &[
    (1, "metadata", K::Msg(META)),
    (2, "spec", K::Msg(TOKEN_SPEC)),
    (3, "status", K::Msg(EMPTY)),
];
const TOKEN_REVIEW_SPEC: &[F] = &[(1, "token", K::Str), (2, "audiences", K::RepStr)];
const TOKEN_REVIEW: &[F] = &[
    (1, "metadata", K::Msg(META)),
    (2, "spec", K::Msg(TOKEN_REVIEW_SPEC)),
    (3, "status", K::Msg(EMPTY)),
];
const SELF_REVIEW: &[F] = &[(1, "metadata", K::Msg(META)), (2, "status", K::Msg(EMPTY))];
const RES_ATTRS: &[F] = &[
    (1, "namespace", K::Str),
    (2, "verb", K::Str),
    (3, "group", K::Str),
    (4, "version", K::Str),
    (5, "resource", K::Str),
    (6, "subresource", K::Str),
    (7, "name", K::Str),
];
const NON_RES_ATTRS: &[F] = &[(1, "path", K::Str), (2, "verb", K::Str)];
const SSAR_SPEC: &[F] = &[
    (1, "resourceAttributes", K::Msg(RES_ATTRS)),
    (2, "nonResourceAttributes", K::Msg(NON_RES_ATTRS)),
];
const SAR_SPEC: &[F] = &[
    (1, "resourceAttributes", K::Msg(RES_ATTRS)),
    (2, "nonResourceAttributes", K::Msg(NON_RES_ATTRS)),
    (3, "user", K::Str),
    (4, "groups", K::RepStr),
    (6, "uid", K::Str),
];
const SSAR: &[F] = &[
    (1, "metadata", K::Msg(META)),
    (2, "spec", K::Msg(SSAR_SPEC)),
    (3, "status", K::Msg(EMPTY)),
];
const SAR: &[F] = &[
    (1, "metadata", K::Msg(META)),
    (2, "spec", K::Msg(SAR_SPEC)),
    (3, "status", K::Msg(EMPTY)),
];
const SSRR_SPEC: &[F] = &[(1, "namespace", K::Str)];
const SSRR: &[F] = &[
    (1, "metadata", K::Msg(META)),
    (2, "spec", K::Msg(SSRR_SPEC)),
    (3, "status", K::Msg(EMPTY)),
];

fn schema(kind: &str) -> Option<&'static [F]> {
    Some(match kind {
        "Namespace" => NAMESPACE,
        "ConfigMap" => CONFIGMAP,
        "Secret" => SECRET,
        "Pod" => POD,
        "ServiceAccount" => SA,
        "Deployment" => DEPLOYMENT,
        "Job" => JOB,
        "CronJob" => CRONJOB,
        "Service" => SERVICE,
        "Role" => ROLE,
        "ClusterRole" => CLUSTER_ROLE,
        "RoleBinding" | "ClusterRoleBinding" => BINDING,
        "TokenRequest" => TOKEN_REQUEST,
        "TokenReview" => TOKEN_REVIEW,
        "SelfSubjectReview" => SELF_REVIEW,
        "SelfSubjectAccessReview" => SSAR,
        "SubjectAccessReview" | "LocalSubjectAccessReview" => SAR,
        "SelfSubjectRulesReview" => SSRR,
        _ => return None,
    })
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ProtoError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .b
                .get(self.pos)
                .ok_or_else(|| ProtoError("truncated varint".into()))?;
            self.pos += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ProtoError("varint too long".into()))
    }
    fn bytes(&mut self) -> Result<&'a [u8], ProtoError> {
        let n = self.varint()? as usize;
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or_else(|| ProtoError("truncated field".into()))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn done(&self) -> bool {
        self.pos >= self.b.len()
    }
    /// (field number, wire type)
    fn tag(&mut self) -> Result<(u64, u64), ProtoError> {
        let t = self.varint()?;
        Ok((t >> 3, t & 7))
    }
}

fn string(b: &[u8]) -> Result<String, ProtoError> {
    String::from_utf8(b.to_vec()).map_err(|_| ProtoError("invalid utf-8".into()))
}

/// Reads a field of wire type `wt`; true when it holds a zero value.
fn skip_zero(r: &mut Reader<'_>, wt: u64) -> Result<bool, ProtoError> {
    Ok(match wt {
        0 => r.varint()? == 0,
        2 => is_zero_message(r.bytes()?),
        _ => false,
    })
}

fn is_zero_message(b: &[u8]) -> bool {
    let mut r = Reader { b, pos: 0 };
    while !r.done() {
        match r.tag() {
            Ok((_, wt)) => match skip_zero(&mut r, wt) {
                Ok(true) => {}
                _ => return false,
            },
            Err(_) => return false,
        }
    }
    true
}

fn map_entry(b: &[u8]) -> Result<(String, Vec<u8>), ProtoError> {
    let mut r = Reader { b, pos: 0 };
    let (mut k, mut v) = (String::new(), Vec::new());
    while !r.done() {
        let (f, wt) = r.tag()?;
        if wt != 2 {
            return Err(ProtoError("unexpected map entry wire type".into()));
        }
        let x = r.bytes()?;
        match f {
            1 => k = string(x)?,
            2 => v = x.to_vec(),
            _ => return Err(ProtoError("unexpected map entry field".into())),
        }
    }
    Ok((k, v))
}

fn message(b: &[u8], fields: &'static [F], path: &str) -> Result<Value, ProtoError> {
    let mut r = Reader { b, pos: 0 };
    let mut out = Map::new();
    while !r.done() {
        let (num, wt) = r.tag()?;
        let Some((_, name, kind)) = fields.iter().find(|(n, _, _)| *n == num) else {
            // gogo-protobuf writes every non-pointer field, set or not: an
            // unknown field holding its zero value says nothing and is skipped.
            if skip_zero(&mut r, wt)? {
                continue;
            }
            return Err(ProtoError(format!(
                "field {num} of {} is not supported",
                if path.is_empty() { "the object" } else { path }
            )));
        };
        let p = if path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        };
        let value = match (*kind, wt) {
            (K::Int, 0) => {
                let v = r.varint()? as i64;
                (v != 0 || *name == "replicas").then(|| json!(v))
            }
            (K::Bool, 0) => {
                let b = r.varint()? != 0;
                b.then_some(json!(true))
            }
            (K::Str, 2) => {
                let s = string(r.bytes()?)?;
                (!s.is_empty()).then(|| json!(s))
            }
            (K::Msg(f), 2) => Some(message(r.bytes()?, f, &p)?),
            (K::Qty, 2) => {
                let q = message(r.bytes()?, QTY, &p)?;
                q["string"].as_str().map(|s| json!(s))
            }
            (K::Inline(f), 2) => {
                if let Value::Object(m) = message(r.bytes()?, f, path)? {
                    out.extend(m);
                }
                None
            }
            (K::Time, 2) => {
                let t = message(
                    r.bytes()?,
                    &[(1, "seconds", K::Int), (2, "nanos", K::Int)],
                    &p,
                )?;
                let secs = t["seconds"].as_i64().unwrap_or(0);
                jiff::Timestamp::from_second(secs)
                    .ok()
                    .filter(|_| secs != 0)
                    .map(|ts| json!(ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()))
            }
            (K::IntOrStr, 2) => {
                let v = message(
                    r.bytes()?,
                    &[
                        (1, "type", K::Int),
                        (2, "intVal", K::Int),
                        (3, "strVal", K::Str),
                    ],
                    &p,
                )?;
                Some(if v["type"].as_i64() == Some(1) {
                    v["strVal"].clone()
                } else {
                    json!(v["intVal"].as_i64().unwrap_or(0))
                })
            }
            (K::MapStr | K::MapBytes | K::MapQty, 2) => {
                let (k, v) = map_entry(r.bytes()?)?;
                let v = match *kind {
                    K::MapStr => json!(string(&v)?),
                    K::MapBytes => json!(base64::engine::general_purpose::STANDARD.encode(&v)),
                    _ => message(&v, &[(1, "string", K::Str)], &p)?["string"].clone(),
                };
                out.entry(name.to_string()).or_insert_with(|| json!({}))[&k] = v;
                None
            }
            (K::RepStr, 2) => {
                let s = string(r.bytes()?)?;
                out.entry(name.to_string())
                    .or_insert_with(|| json!([]))
                    .as_array_mut()
                    .expect("array")
                    .push(json!(s));
                None
            }
            (K::RepMsg(f), 2) => {
                let m = message(r.bytes()?, f, &p)?;
                out.entry(name.to_string())
                    .or_insert_with(|| json!([]))
                    .as_array_mut()
                    .expect("array")
                    .push(m);
                None
            }
            _ => return Err(ProtoError(format!("{p}: unexpected wire type {wt}"))),
        };
        if let Some(v) = value {
            out.insert(name.to_string(), v);
        }
    }
    Ok(Value::Object(out))
}

/// Decodes a protobuf-encoded object (with its `k8s\0` envelope) to JSON.
pub fn decode(body: &[u8]) -> Result<Value, ProtoError> {
    let rest = body
        .strip_prefix(b"k8s\0")
        .ok_or_else(|| ProtoError("missing the k8s envelope".into()))?;
    let mut r = Reader { b: rest, pos: 0 };
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    while !r.done() {
        let (f, wt) = r.tag()?;
        if wt != 2 {
            return Err(ProtoError("unexpected envelope wire type".into()));
        }
        let b = r.bytes()?;
        match f {
            1 => {
                let tm = message(
                    b,
                    &[(1, "apiVersion", K::Str), (2, "kind", K::Str)],
                    "typeMeta",
                )?;
                api_version = tm["apiVersion"].as_str().unwrap_or("").to_string();
                kind = tm["kind"].as_str().unwrap_or("").to_string();
            }
            2 => raw = b,
            3 | 4 => {}
            _ => return Err(ProtoError("unexpected envelope field".into())),
        }
    }
    let fields = schema(&kind)
        .ok_or_else(|| ProtoError(format!("{kind} is not accepted as protobuf; send JSON")))?;
    let mut v = message(raw, fields, "")?;
    v["apiVersion"] = json!(api_version);
    v["kind"] = json!(kind);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(n: u64, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![((n << 3) | 2) as u8, payload.len() as u8];
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn namespace_and_configmap() {
        let meta = field(1, b"team-a");
        let ns = field(1, &meta);
        let tm = [field(1, b"v1"), field(2, b"Namespace")].concat();
        let body = [b"k8s\0".to_vec(), field(1, &tm), field(2, &ns)].concat();
        let v = decode(&body).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}})
        );
        let entry = [field(1, b"k"), field(2, b"v")].concat();
        let cm = [field(1, &meta), field(2, &entry)].concat();
        let tm = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let v = decode(&[b"k8s\0".to_vec(), field(1, &tm), field(2, &cm)].concat()).unwrap();
        assert_eq!(v["data"], json!({"k": "v"}));
        let bad = [field(1, &meta), field(9, b"x")].concat();
        assert!(decode(&[b"k8s\0".to_vec(), field(1, &tm), field(2, &bad)].concat()).is_err());
    }
}
