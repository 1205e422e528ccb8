//! What a real kubelet gives a container besides its process: environment
//! from the pod's spec (`value`, `valueFrom` a ConfigMap, Secret, field of
//! the pod or resource, `envFrom`), the `kubernetes` Service's variables,
//! and volumes (hostPath in the node's own filesystem, emptyDir, configMap,
//! secret, downwardAPI, projected, and the ServiceAccount token the API
//! server's admission would add as `kube-api-access-*`).
//!
//! Volumes are files under the pod's directory, bound by the sandbox at
//! each `mountPath` the pod's containers name: the containers of a lab pod
//! share one mount namespace, so every container sees every mount.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::api::Api;
use serde_json::json;

use crate::Kubelet;

/// Why a container cannot start yet, in the kubelet's words (the
/// container waits with reason `CreateContainerConfigError`).
#[derive(Debug)]
pub struct ConfigError(pub String);

/// Where the ServiceAccount token is mounted, as in every pod.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

async fn config_map(k: &Kubelet, ns: &str, name: &str) -> Result<Option<ConfigMap>, ConfigError> {
    Api::<ConfigMap>::namespaced(k.client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| ConfigError(format!("reading configmap {name:?}: {e}")))
}

async fn secret(k: &Kubelet, ns: &str, name: &str) -> Result<Option<Secret>, ConfigError> {
    Api::<Secret>::namespaced(k.client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| ConfigError(format!("reading secret {name:?}: {e}")))
}

fn config_map_data(cm: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = cm
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    for (k, v) in cm.binary_data.clone().unwrap_or_default() {
        out.insert(k, v.0);
    }
    out
}

fn secret_data(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = s
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    for (k, v) in s.string_data.clone().unwrap_or_default() {
        out.insert(k, v.into_bytes());
    }
    out
}

/// A field of the pod, as the downward API reads `fieldPath`.
fn field(pod: &Pod, host_ip: &str, path: &str) -> Option<String> {
    let m = &pod.metadata;
    let st = pod.status.as_ref();
    let spec = pod.spec.as_ref();
    let keyed = |prefix: &str, map: Option<&BTreeMap<String, String>>| {
        let key = path
            .strip_prefix(prefix)?
            .strip_prefix("['")?
            .strip_suffix("']")?;
        map.and_then(|m| m.get(key).cloned())
    };
    let pairs = |map: Option<&BTreeMap<String, String>>| {
        map.map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect::<Vec<_>>()
                .join("\n")
        })
    };
    match path {
        "metadata.name" => m.name.clone(),
        "metadata.namespace" => m.namespace.clone(),
        "metadata.uid" => m.uid.clone(),
        "metadata.labels" => pairs(m.labels.as_ref()),
        "metadata.annotations" => pairs(m.annotations.as_ref()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "status.hostIP" => Some(host_ip.to_string()),
        "status.hostIPs" => Some(host_ip.to_string()),
        "status.podIP" => st.and_then(|s| s.pod_ip.clone()),
        "status.podIPs" => st.and_then(|s| {
            s.pod_ips.as_ref().map(|ips| {
                ips.iter()
                    .map(|i| i.ip.clone())
                    .collect::<Vec<_>>()
                    .join(",")
            })
        }),
        p if p.starts_with("metadata.labels[") => keyed("metadata.labels", m.labels.as_ref()),
        p if p.starts_with("metadata.annotations[") => {
            keyed("metadata.annotations", m.annotations.as_ref())
        }
        _ => None,
    }
}

/// A container's resource, as `resourceFieldRef` reads it: its limit (or
/// request), else the node's allocatable, in units of `divisor`.
fn resource(c: &Container, resource: &str, divisor: Option<&str>) -> String {
    let res = c.resources.as_ref();
    let (kind, which) = resource.split_once('.').unwrap_or(("limits", resource));
    let set = match kind {
        "requests" => res.and_then(|r| r.requests.as_ref()),
        _ => res.and_then(|r| r.limits.as_ref()),
    };
    let value = set
        .and_then(|m| m.get(which))
        .map(|q| q.0.clone())
        .unwrap_or_else(|| if which == "cpu" { "2" } else { "8Gi" }.to_string());
    let n = quantity(&value);
    let d = divisor.map(quantity).filter(|d| *d > 0.0).unwrap_or(1.0);
    // Rounded up, as the kubelet does.
    format!(
        "{}",
        (n / d).ceil().max(if n > 0.0 { 1.0 } else { 0.0 }) as i64
    )
}

fn quantity(q: &str) -> f64 {
    let units: [(&str, f64); 11] = [
        ("Ki", 1024.0),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("m", 0.001),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    for (suffix, mult) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<f64>().unwrap_or(0.0) * mult;
        }
    }
    q.parse().unwrap_or(0.0)
}

/// The container's environment beyond the runtime's own (PATH, HOME,
/// HOSTNAME): the `kubernetes` Service's variables, then `envFrom`, then
/// `env`, later names winning, as the kubelet builds it.
pub async fn environment(
    k: &Kubelet,
    pod: &Pod,
    c: &Container,
    ip: Option<&str>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let host_ip = k.args.node_ip.to_string();
    let mut pod = pod.clone();
    if let Some(ip) = ip {
        let st = pod.status.get_or_insert_with(Default::default);
        st.pod_ip = Some(ip.to_string());
        st.pod_ips = Some(vec![k8s_openapi::api::core::v1::PodIP { ip: ip.into() }]);
    }
    let svc = k.args.kubernetes_service_host.to_string();
    let mut env: Vec<(String, String)> = vec![
        ("KUBERNETES_SERVICE_HOST".into(), svc.clone()),
        ("KUBERNETES_SERVICE_PORT".into(), "443".into()),
        ("KUBERNETES_SERVICE_PORT_HTTPS".into(), "443".into()),
        ("KUBERNETES_PORT".into(), format!("tcp://{svc}:443")),
        ("KUBERNETES_PORT_443_TCP".into(), format!("tcp://{svc}:443")),
        ("KUBERNETES_PORT_443_TCP_PROTO".into(), "tcp".into()),
        ("KUBERNETES_PORT_443_TCP_PORT".into(), "443".into()),
        ("KUBERNETES_PORT_443_TCP_ADDR".into(), svc),
    ];
    let set = |env: &mut Vec<(String, String)>, name: String, value: String| {
        env.retain(|(n, _)| *n != name);
        env.push((name, value));
    };
    for from in c.env_from.clone().unwrap_or_default() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match config_map(k, &ns, &r.name).await? {
                Some(cm) => {
                    for (key, v) in config_map_data(&cm) {
                        set(&mut env, format!("{prefix}{key}"), lossy(v));
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(ConfigError(format!("configmap {:?} not found", r.name))),
            }
        }
        if let Some(r) = &from.secret_ref {
            match secret(k, &ns, &r.name).await? {
                Some(s) => {
                    for (key, v) in secret_data(&s) {
                        set(&mut env, format!("{prefix}{key}"), lossy(v));
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(ConfigError(format!("secret {:?} not found", r.name))),
            }
        }
    }
    for e in c.env.clone().unwrap_or_default() {
        if let Some(v) = e.value {
            let expanded = expand(&v, &env);
            set(&mut env, e.name, expanded);
            continue;
        }
        let Some(from) = e.value_from else {
            set(&mut env, e.name, String::new());
            continue;
        };
        if let Some(r) = from.config_map_key_ref {
            let cm = config_map(k, &ns, &r.name).await?;
            match cm.map(|cm| config_map_data(&cm).remove(&r.key)) {
                Some(Some(v)) => set(&mut env, e.name, lossy(v)),
                _ if r.optional == Some(true) => {}
                None => return Err(ConfigError(format!("configmap {:?} not found", r.name))),
                Some(None) => {
                    return Err(ConfigError(format!(
                        "couldn't find key {} in ConfigMap {ns}/{}",
                        r.key, r.name
                    )));
                }
            }
        } else if let Some(r) = from.secret_key_ref {
            let s = secret(k, &ns, &r.name).await?;
            match s.map(|s| secret_data(&s).remove(&r.key)) {
                Some(Some(v)) => set(&mut env, e.name, lossy(v)),
                _ if r.optional == Some(true) => {}
                None => return Err(ConfigError(format!("secret {:?} not found", r.name))),
                Some(None) => {
                    return Err(ConfigError(format!(
                        "couldn't find key {} in Secret {ns}/{}",
                        r.key, r.name
                    )));
                }
            }
        } else if let Some(r) = from.field_ref {
            let v = field(&pod, &host_ip, &r.field_path).unwrap_or_default();
            set(&mut env, e.name, v);
        } else if let Some(r) = from.resource_field_ref {
            let target = match &r.container_name {
                Some(n) => pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.containers.iter().find(|c| &c.name == n).cloned())
                    .unwrap_or_else(|| c.clone()),
                None => c.clone(),
            };
            let v = resource(
                &target,
                &r.resource,
                r.divisor.as_ref().map(|d| d.0.as_str()),
            );
            set(&mut env, e.name, v);
        }
    }
    Ok(env)
}

fn lossy(v: Vec<u8>) -> String {
    String::from_utf8_lossy(&v).into_owned()
}

/// `$(VAR)` references to earlier variables, as the kubelet expands them
/// (`$$` escapes; an unknown reference stays as written). The kubelet
/// also expands a container's `command` and `args` with its environment.
pub fn expand(v: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = v;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.iter().rev().find(|(n, _)| n == name) {
                Some((_, val)) => out.push_str(val),
                None => out.push_str(&format!("$({name})")),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// One bind mount the sandbox makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// What is bound (a directory or file on the node).
    pub source: PathBuf,
    /// Where, inside the pod.
    pub target: String,
    /// Read-only.
    pub read_only: bool,
}

impl Mount {
    /// The sandbox's command-line form, `SOURCE:TARGET[:ro]`.
    pub fn arg(&self) -> String {
        format!(
            "{}:{}{}",
            self.source.display(),
            self.target,
            if self.read_only { ":ro" } else { "" }
        )
    }
}

fn write_files(dir: &Path, files: &BTreeMap<String, Vec<u8>>) -> Result<(), ConfigError> {
    let io = |e: std::io::Error| ConfigError(format!("writing {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    for (name, data) in files {
        if name.contains("..") {
            continue;
        }
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        crate::write_atomic(&path, data).map_err(io)?;
    }
    Ok(())
}

/// Keys picked by `items` (key -> path), or every key under its own name.
fn pick(
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<k8s_openapi::api::core::v1::KeyToPath>>,
) -> BTreeMap<String, Vec<u8>> {
    match items {
        Some(items) if !items.is_empty() => items
            .iter()
            .filter_map(|i| data.get(&i.key).map(|v| (i.path.clone(), v.clone())))
            .collect(),
        _ => data,
    }
}

/// A bound ServiceAccount token, as the kubelet asks for one
/// (TokenRequest bound to the pod), with the cluster CA and the namespace.
async fn service_account_files(
    k: &Kubelet,
    pod: &Pod,
) -> Result<BTreeMap<String, Vec<u8>>, ConfigError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let request = json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": [], "expirationSeconds": 3607, "boundObjectRef": {
            "kind": "Pod", "apiVersion": "v1",
            "name": pod.metadata.name, "uid": pod.metadata.uid}},
    });
    let api: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(k.client.clone(), &ns);
    let answer: serde_json::Value = api
        .create_subresource("token", &sa, &Default::default(), &request)
        .await
        .map_err(|e| ConfigError(format!("serviceaccount {ns}/{sa}: token: {e}")))?;
    let token = answer["status"]["token"].as_str().unwrap_or_default();
    let mut files = BTreeMap::new();
    files.insert("token".to_string(), token.as_bytes().to_vec());
    files.insert("namespace".to_string(), ns.as_bytes().to_vec());
    if let Some(cm) = config_map(k, &ns, "kube-root-ca.crt").await?
        && let Some(ca) = config_map_data(&cm).remove("ca.crt")
    {
        files.insert("ca.crt".to_string(), ca);
    }
    Ok(files)
}

/// Makes every volume the pod's containers mount and returns the binds.
pub async fn volumes(k: &Kubelet, pod: &Pod, dir: &Path) -> Result<Vec<Mount>, ConfigError> {
    let spec = pod.spec.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let base = dir.join("volumes");
    let mut sources: BTreeMap<String, (PathBuf, bool)> = BTreeMap::new();
    for v in spec.volumes.clone().unwrap_or_default() {
        let vdir = base.join(&v.name);
        let io = |e: std::io::Error| ConfigError(format!("volume {:?}: {e}", v.name));
        if let Some(hp) = &v.host_path {
            let path = PathBuf::from(&hp.path);
            match hp.type_.as_deref() {
                Some("DirectoryOrCreate") => std::fs::create_dir_all(&path).map_err(io)?,
                Some("FileOrCreate") if !path.exists() => {
                    if let Some(p) = path.parent() {
                        std::fs::create_dir_all(p).map_err(io)?;
                    }
                    std::fs::write(&path, b"").map_err(io)?;
                }
                Some("Directory") if !path.is_dir() => {
                    return Err(ConfigError(format!(
                        "MountVolume.SetUp failed for volume {:?} : hostPath type check failed: {} is not a directory",
                        v.name, hp.path
                    )));
                }
                _ => {}
            }
            sources.insert(v.name.clone(), (path, false));
        } else if v.empty_dir.is_some() {
            std::fs::create_dir_all(&vdir).map_err(io)?;
            sources.insert(v.name.clone(), (vdir, false));
        } else if let Some(c) = &v.config_map {
            match config_map(k, &ns, &c.name).await? {
                Some(cm) => write_files(&vdir, &pick(config_map_data(&cm), c.items.as_ref()))?,
                None if c.optional == Some(true) => write_files(&vdir, &BTreeMap::new())?,
                None => {
                    return Err(ConfigError(format!(
                        "MountVolume.SetUp failed for volume {:?} : configmap {:?} not found",
                        v.name, c.name
                    )));
                }
            }
            sources.insert(v.name.clone(), (vdir, true));
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            match secret(k, &ns, &name).await? {
                Some(sec) => write_files(&vdir, &pick(secret_data(&sec), s.items.as_ref()))?,
                None if s.optional == Some(true) => write_files(&vdir, &BTreeMap::new())?,
                None => {
                    return Err(ConfigError(format!(
                        "MountVolume.SetUp failed for volume {:?} : secret {name:?} not found",
                        v.name
                    )));
                }
            }
            sources.insert(v.name.clone(), (vdir, true));
        } else if let Some(d) = &v.downward_api {
            let mut files = BTreeMap::new();
            for item in d.items.clone().unwrap_or_default() {
                if let Some(f) = item.field_ref {
                    let value =
                        field(pod, &k.args.node_ip.to_string(), &f.field_path).unwrap_or_default();
                    files.insert(item.path, value.into_bytes());
                }
            }
            write_files(&vdir, &files)?;
            sources.insert(v.name.clone(), (vdir, true));
        } else if let Some(p) = &v.projected {
            let mut files = BTreeMap::new();
            for src in p.sources.clone().unwrap_or_default() {
                if let Some(c) = src.config_map
                    && let Some(cm) = config_map(k, &ns, &c.name).await?
                {
                    files.extend(pick(config_map_data(&cm), c.items.as_ref()));
                }
                if let Some(s) = src.secret
                    && let Some(sec) = secret(k, &ns, &s.name).await?
                {
                    files.extend(pick(secret_data(&sec), s.items.as_ref()));
                }
                if let Some(t) = src.service_account_token {
                    let sa = service_account_files(k, pod).await?;
                    if let Some(tok) = sa.get("token") {
                        files.insert(t.path, tok.clone());
                    }
                }
                if let Some(d) = src.downward_api {
                    for item in d.items.unwrap_or_default() {
                        if let Some(f) = item.field_ref {
                            let value = field(pod, &k.args.node_ip.to_string(), &f.field_path)
                                .unwrap_or_default();
                            files.insert(item.path, value.into_bytes());
                        }
                    }
                }
            }
            write_files(&vdir, &files)?;
            sources.insert(v.name.clone(), (vdir, true));
        }
    }
    let mut mounts: Vec<Mount> = Vec::new();
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter());
    let mut has_sa_mount = false;
    for c in containers {
        for m in c.volume_mounts.clone().unwrap_or_default() {
            if m.mount_path == SERVICE_ACCOUNT_DIR {
                has_sa_mount = true;
            }
            let Some((src, ro)) = sources.get(&m.name) else {
                return Err(ConfigError(format!(
                    "volume {:?} of container {:?} is not a volume of the pod (or of a type the lab does not mount)",
                    m.name, c.name
                )));
            };
            let source = match &m.sub_path {
                Some(sp) if !sp.is_empty() && !sp.contains("..") => src.join(sp),
                _ => src.clone(),
            };
            let mount = Mount {
                source,
                target: m.mount_path.clone(),
                read_only: m.read_only.unwrap_or(*ro),
            };
            if !mounts.iter().any(|x| x.target == mount.target) {
                mounts.push(mount);
            }
        }
    }
    // The ServiceAccount admission plugin's `kube-api-access-*` volume.
    if !has_sa_mount && spec.automount_service_account_token != Some(false) {
        match service_account_files(k, pod).await {
            Ok(files) => {
                let vdir = base.join("kube-api-access");
                write_files(&vdir, &files)?;
                mounts.push(Mount {
                    source: vdir,
                    target: SERVICE_ACCOUNT_DIR.into(),
                    read_only: true,
                });
            }
            Err(e) => {
                tracing::warn!(pod = ?pod.metadata.name, error = %e.0, "no ServiceAccount token for the pod")
            }
        }
    }
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_earlier_variables_as_the_kubelet_does() {
        let env = vec![("A".to_string(), "x".to_string())];
        assert_eq!(expand("$(A)-$(B)-$$(A)", &env), "x-$(B)-$(A)");
    }

    #[test]
    fn resources_round_up_in_divisor_units() {
        let c: Container = serde_json::from_value(
            json!({"name": "c", "resources": {"limits": {"cpu": "250m", "memory": "64Mi"}}}),
        )
        .unwrap();
        assert_eq!(resource(&c, "limits.cpu", None), "1");
        assert_eq!(resource(&c, "limits.cpu", Some("1m")), "250");
        assert_eq!(resource(&c, "limits.memory", Some("1Mi")), "64");
    }
}
