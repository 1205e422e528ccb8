//! The lab installs podnet as an operator does: it applies the objects of
//! `deploy/` (the very files of `kubectl apply -k deploy/`, built into
//! this binary) through its API server, with the lab's values in the
//! `podnet-config` ConfigMap. The agents and the cluster DNS are then the
//! DaemonSet's and the Deployment's pods, run by the lab's kubelets.
//!
//! Only what `deploy/kustomization.yaml` uses of kustomize is done here:
//! its `resources` in order and its `replacements` (a ConfigMap value
//! copied into fields of other objects). A kustomization this code does
//! not understand is an error, so the lab cannot drift from `deploy/`.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use serde_json::Value;

/// `deploy/`, as the binary was built.
const KUSTOMIZATION: &str = include_str!("../../../../deploy/kustomization.yaml");
const FILES: &[(&str, &str)] = &[
    (
        "config.yaml",
        include_str!("../../../../deploy/config.yaml"),
    ),
    ("rbac.yaml", include_str!("../../../../deploy/rbac.yaml")),
    ("agent.yaml", include_str!("../../../../deploy/agent.yaml")),
    ("dns.yaml", include_str!("../../../../deploy/dns.yaml")),
];

/// The ConfigMap whose values the lab sets.
pub const CONFIG_MAP: &str = "podnet-config";

/// The objects of `deploy/`, rendered as `kubectl kustomize deploy/` would,
/// with `values` set in the `podnet-config` ConfigMap first (so that
/// replacements see them).
pub fn render(values: &BTreeMap<String, String>) -> anyhow::Result<Vec<Value>> {
    let kustomization: Value =
        serde_saphyr::from_str(KUSTOMIZATION).context("parsing deploy/kustomization.yaml")?;
    for key in kustomization.as_object().into_iter().flat_map(|m| m.keys()) {
        if !matches!(
            key.as_str(),
            "apiVersion" | "kind" | "resources" | "replacements"
        ) {
            bail!("deploy/kustomization.yaml uses {key:?}, which the lab's installer does not do");
        }
    }
    let mut objects = Vec::new();
    for file in kustomization["resources"]
        .as_array()
        .context("deploy/kustomization.yaml has no resources")?
    {
        let file = file.as_str().unwrap_or_default();
        let (_, text) = FILES
            .iter()
            .find(|(name, _)| *name == file)
            .with_context(|| format!("deploy/{file} is not built into podnet"))?;
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(text).with_context(|| format!("parsing deploy/{file}"))?;
        objects.extend(docs.into_iter().filter(|d| !d.is_null()));
    }
    let config = objects
        .iter_mut()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == CONFIG_MAP)
        .context("deploy/ has no podnet-config ConfigMap")?;
    for (k, v) in values {
        anyhow::ensure!(
            config["data"].get(k).is_some(),
            "podnet-config has no {k:?}: the lab's value would be ignored"
        );
        config["data"][k] = Value::String(v.clone());
    }
    for r in kustomization["replacements"]
        .as_array()
        .into_iter()
        .flatten()
    {
        replace(&mut objects, r)?;
    }
    Ok(objects)
}

/// One kustomize replacement: the source field's value into each target
/// field.
fn replace(objects: &mut [Value], r: &Value) -> anyhow::Result<()> {
    let src = &r["source"];
    let value = objects
        .iter()
        .find(|o| o["kind"] == src["kind"] && o["metadata"]["name"] == src["name"])
        .and_then(|o| field(o, src["fieldPath"].as_str().unwrap_or_default()).cloned())
        .with_context(|| format!("replacement source {src} not found"))?;
    for t in r["targets"].as_array().into_iter().flatten() {
        let sel = &t["select"];
        let mut hit = false;
        for o in objects
            .iter_mut()
            .filter(|o| o["kind"] == sel["kind"] && o["metadata"]["name"] == sel["name"])
        {
            for path in t["fieldPaths"].as_array().into_iter().flatten() {
                let path = path.as_str().unwrap_or_default();
                *field_mut(o, path).with_context(|| format!("replacement target {path}"))? =
                    value.clone();
                hit = true;
            }
        }
        anyhow::ensure!(hit, "replacement target {sel} not found");
    }
    Ok(())
}

fn field<'a>(o: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(o, |v, p| match p.parse::<usize>() {
            Ok(i) => v.get(i),
            Err(_) => v.get(p),
        })
}

fn field_mut<'a>(o: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    path.split('.')
        .try_fold(o, |v, p| match p.parse::<usize>() {
            Ok(i) => v.get_mut(i),
            Err(_) => v.get_mut(p),
        })
}

/// Creates each object that does not exist yet (an object already there,
/// from an earlier start of this lab or changed by its operator, is kept).
pub async fn apply(client: &kube::Client, objects: &[Value]) -> anyhow::Result<()> {
    use kube::api::{Api, DynamicObject, PostParams};
    use kube::core::{ApiResource, GroupVersionKind};
    for o in objects {
        let api_version = o["apiVersion"].as_str().unwrap_or_default();
        let kind = o["kind"].as_str().unwrap_or_default();
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
        let obj: DynamicObject = serde_json::from_value(o.clone())?;
        let api: Api<DynamicObject> = match o["metadata"]["namespace"].as_str() {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "creating {kind} {}",
                        o["metadata"]["name"].as_str().unwrap_or("")
                    )
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_deploy_with_the_labs_values() {
        let values = BTreeMap::from([
            (
                "PODNET_DNS_SERVICE_IP".to_string(),
                "10.96.0.53".to_string(),
            ),
            ("PODNET_ENCAP".to_string(), "host-gw".to_string()),
        ]);
        let objects = render(&values).unwrap();
        let kinds: Vec<&str> = objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap())
            .collect();
        for k in [
            "ConfigMap",
            "ServiceAccount",
            "ClusterRole",
            "DaemonSet",
            "Deployment",
            "Service",
        ] {
            assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
        }
        let svc = objects
            .iter()
            .find(|o| o["kind"] == "Service" && o["metadata"]["name"] == "kube-dns")
            .unwrap();
        assert_eq!(svc["spec"]["clusterIP"], "10.96.0.53");
        assert_eq!(svc["spec"]["clusterIPs"][0], "10.96.0.53");
        let cm = objects.iter().find(|o| o["kind"] == "ConfigMap").unwrap();
        assert_eq!(cm["data"]["PODNET_ENCAP"], "host-gw");
    }

    #[test]
    fn a_value_podnet_config_lacks_is_an_error() {
        let values = BTreeMap::from([("PODNET_NO_SUCH".to_string(), "x".to_string())]);
        let e = render(&values).unwrap_err().to_string();
        assert!(e.contains("PODNET_NO_SUCH"), "{e}");
    }
}
