//! The controllers against the real podnet-apiserver, driven with kube-rs
//! and the real kubectl; a stand-in kubelet plays the nodes.

mod common;

use std::collections::{BTreeMap, HashSet};

use anyhow::Result;
use common::{Lab, active, eventually, pod_ready};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Endpoints, Event, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

fn pod_json(name: &str, labels: serde_json::Value, extra_spec: serde_json::Value) -> Pod {
    let mut spec =
        json!({"containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}]});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra_spec.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}, "spec": spec})).unwrap()
}

fn deployment_json(name: &str, replicas: i32, image: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "web", "image": image, "ports": [{"name": "http", "containerPort": 8080}]}]}}}
    }))
    .unwrap()
}

fn node_of(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

async fn scale(lab: &Lab, name: &str, replicas: i32) -> Result<()> {
    let api: kube::Api<Deployment> = kube::Api::namespaced(lab.client.clone(), "default");
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"replicas": replicas}})),
    )
    .await?;
    Ok(())
}

/// Waits until exactly `n` active pods labelled app=`app` are Ready.
async fn ready_pods(lab: &Lab, app: &str, n: usize) -> Result<Vec<Pod>> {
    eventually(&format!("{n} ready pods of {app}"), || async {
        let pods = active(lab.pods("default", &format!("app={app}")).await?);
        let ready = pods.iter().filter(|p| pod_ready(p)).count();
        Ok(if pods.len() == n && ready == n {
            Ok(pods)
        } else {
            Err(format!("{} active, {ready} ready", pods.len()))
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_ipam_gives_distinct_cidrs_and_survives_restart() -> Result<()> {
    let mut lab = Lab::start().await?;
    let nodes: kube::Api<Node> = kube::Api::all(lab.client.clone());
    // A node that already holds the first subnet (e.g. from before a restart).
    let mut pre: Node = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "pre"}, "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"]}}),
    )?;
    pre = nodes.create(&PostParams::default(), &pre).await?;
    assert_eq!(pre.spec.unwrap().pod_cidr.as_deref(), Some("10.244.0.0/24"));
    for n in ["a", "b", "c"] {
        lab.node(n, true, &[], json!([])).await?;
    }
    lab.start_controllers();
    let cidrs = |want: usize| {
        let nodes = nodes.clone();
        async move {
            let list = nodes.list(&ListParams::default()).await?.items;
            let cidrs: Vec<(String, String)> = list
                .iter()
                .filter_map(|n| {
                    Some((n.metadata.name.clone()?, n.spec.as_ref()?.pod_cidr.clone()?))
                })
                .collect();
            Ok(if cidrs.len() == want {
                Ok(cidrs)
            } else {
                Err(format!("{cidrs:?}"))
            })
        }
    };
    let got = eventually("3 nodes get pod CIDRs", || cidrs(4)).await?;
    let set: HashSet<&str> = got.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(set.len(), 4, "CIDRs must be distinct: {got:?}");
    for (n, c) in &got {
        let net: ipnet::Ipv4Net = c.parse()?;
        assert_eq!(net.prefix_len(), 24, "{n}: {c}");
        assert!(
            "10.244.0.0/16".parse::<ipnet::Ipv4Net>()?.contains(&net),
            "{n}: {c}"
        );
        let node = nodes.get(n).await?;
        assert_eq!(
            node.spec.unwrap().pod_cidrs.unwrap(),
            vec![c.clone()],
            "podCIDRs follows podCIDR"
        );
    }
    assert_eq!(
        got.iter().find(|(n, _)| n == "pre").unwrap().1,
        "10.244.0.0/24",
        "a set CIDR is never changed"
    );

    // Restart: the used set comes from the nodes, so the next node gets a fresh subnet.
    lab.stop_controllers();
    lab.node("d", true, &[], json!([])).await?;
    lab.start_controllers();
    let got = eventually("the node added across a restart gets a CIDR", || cidrs(5)).await?;
    let set: HashSet<&str> = got.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(
        set.len(),
        5,
        "CIDRs must stay distinct across restarts: {got:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduler_spreads_over_ready_nodes_and_explains_misfits() -> Result<()> {
    let lab = Lab::full().await?;
    for n in ["node-a", "node-b", "node-c"] {
        lab.node(n, true, &[], json!([])).await?;
    }
    lab.node("node-down", false, &[], json!([])).await?;
    lab.node(
        "node-gpu",
        true,
        &[("gpu", "yes")],
        json!([{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]),
    )
    .await?;
    let pods: kube::Api<Pod> = kube::Api::namespaced(lab.client.clone(), "default");
    for i in 0..10 {
        pods.create(
            &PostParams::default(),
            &pod_json(&format!("p{i}"), json!({"batch": "ten"}), json!({})),
        )
        .await?;
    }
    let bound = eventually("10 pods bound", || async {
        let ps = lab.pods("default", "batch=ten").await?;
        let n = ps.iter().filter(|p| !node_of(p).is_empty()).count();
        Ok(if n == 10 {
            Ok(ps)
        } else {
            Err(format!("{n} bound"))
        })
    })
    .await?;
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for p in &bound {
        *per_node.entry(node_of(p)).or_default() += 1;
        let sched = p
            .status
            .as_ref()
            .unwrap()
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "PodScheduled")
            .unwrap();
        assert_eq!(sched.status, "True");
    }
    assert_eq!(
        per_node.keys().cloned().collect::<Vec<_>>(),
        ["node-a", "node-b", "node-c"],
        "only Ready, untainted nodes: {per_node:?}"
    );
    let (min, max) = (
        per_node.values().min().unwrap(),
        per_node.values().max().unwrap(),
    );
    assert!(max - min <= 1, "pods spread evenly: {per_node:?}");

    // nodeSelector + toleration: only the gpu node fits.
    let gpu = pod_json(
        "gpu-job",
        json!({}),
        json!({"nodeSelector": {"gpu": "yes"}, "tolerations": [{"key": "gpu", "operator": "Equal", "value": "yes", "effect": "NoSchedule"}]}),
    );
    pods.create(&PostParams::default(), &gpu).await?;
    let p = eventually("gpu pod bound", || async {
        let p = pods.get("gpu-job").await?;
        Ok(if node_of(&p).is_empty() {
            Err("unbound".into())
        } else {
            Ok(p)
        })
    })
    .await?;
    assert_eq!(node_of(&p), "node-gpu");

    // A pod that fits nowhere: PodScheduled=False/Unschedulable and an Event.
    pods.create(
        &PostParams::default(),
        &pod_json(
            "nowhere",
            json!({}),
            json!({"nodeSelector": {"disk": "ssd"}}),
        ),
    )
    .await?;
    let cond = eventually("nowhere marked unschedulable", || async {
        let p = pods.get("nowhere").await?;
        let c = p
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False");
        Ok(c.ok_or_else(|| "no condition".to_string()))
    })
    .await?;
    assert_eq!(cond.reason.as_deref(), Some("Unschedulable"));
    let msg = cond.message.unwrap();
    assert!(msg.starts_with("0/5 nodes are available: "), "{msg}");
    assert!(
        msg.contains("4 node(s) didn't match Pod's node affinity/selector"),
        "{msg}"
    );
    assert!(
        msg.contains("1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }"),
        "{msg}"
    );
    let events: kube::Api<Event> = kube::Api::namespaced(lab.client.clone(), "default");
    let evs = eventually("a FailedScheduling event", || async {
        let evs = events
            .list(&ListParams::default().fields("involvedObject.name=nowhere"))
            .await?
            .items;
        Ok(
            if evs
                .iter()
                .any(|e| e.reason.as_deref() == Some("FailedScheduling"))
            {
                Ok(evs)
            } else {
                Err(format!("{} events", evs.len()))
            },
        )
    })
    .await?;
    let ev = evs
        .iter()
        .find(|e| e.reason.as_deref() == Some("FailedScheduling"))
        .unwrap();
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert_eq!(ev.message.as_deref(), Some(msg.as_str()));
    let described = lab.kubectl(&["describe", "pod", "nowhere"])?;
    assert!(described.contains("FailedScheduling"), "{described}");

    // Once a node fits, the pending pod is bound.
    let nodes: kube::Api<Node> = kube::Api::all(lab.client.clone());
    nodes
        .patch(
            "node-b",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"disk": "ssd"}}})),
        )
        .await?;
    let p = eventually("nowhere bound after a node fits", || async {
        let p = pods.get("nowhere").await?;
        Ok(if node_of(&p).is_empty() {
            Err("unbound".into())
        } else {
            Ok(p)
        })
    })
    .await?;
    assert_eq!(node_of(&p), "node-b");

    // A pod for another scheduler is left alone. The proof that the
    // scheduler saw it: pods of ours created after it get bound. The
    // scheduler's cache follows one watch in order, so the pass that binds
    // "zz-seen-1" had "other" in hand too (and, by creation time then name,
    // would have started binding it first); "zz-seen-2", created once
    // "zz-seen-1" is bound, is bound by a later pass still.
    pods.create(
        &PostParams::default(),
        &pod_json("other", json!({}), json!({"schedulerName": "someone-else"})),
    )
    .await?;
    for seen in ["zz-seen-1", "zz-seen-2"] {
        pods.create(
            &PostParams::default(),
            &pod_json(seen, json!({}), json!({})),
        )
        .await?;
        eventually(
            &format!("{seen} bound after `other` was created"),
            || async {
                Ok(if node_of(&pods.get(seen).await?).is_empty() {
                    Err("unbound".to_string())
                } else {
                    Ok(())
                })
            },
        )
        .await?;
    }
    assert_eq!(
        node_of(&pods.get("other").await?),
        "",
        "pods of another scheduler are not bound"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deployment_replicaset_pods_scale_replace_roll_and_delete() -> Result<()> {
    let lab = Lab::full().await?;
    for n in ["w1", "w2", "w3"] {
        lab.node(n, true, &[], json!([])).await?;
    }
    let deps: kube::Api<Deployment> = kube::Api::namespaced(lab.client.clone(), "default");
    let rss: kube::Api<ReplicaSet> = kube::Api::namespaced(lab.client.clone(), "default");
    let pods: kube::Api<Pod> = kube::Api::namespaced(lab.client.clone(), "default");
    deps.create(&PostParams::default(), &deployment_json("web", 3, "nginx"))
        .await?;
    let three = ready_pods(&lab, "web", 3).await?;
    let rs_list = rss.list(&ListParams::default()).await?.items;
    assert_eq!(rs_list.len(), 1);
    let rs = &rs_list[0];
    let rs_name = rs.metadata.name.clone().unwrap();
    let hash = rs.metadata.labels.as_ref().unwrap()["pod-template-hash"].clone();
    assert_eq!(
        rs_name,
        format!("web-{hash}"),
        "ReplicaSets are named <deployment>-<pod-template-hash>"
    );
    assert_eq!(
        rs.metadata.owner_references.as_ref().unwrap()[0].kind,
        "Deployment"
    );
    assert_eq!(
        rs.spec
            .as_ref()
            .unwrap()
            .selector
            .match_labels
            .as_ref()
            .unwrap()["pod-template-hash"],
        hash
    );
    let nodes: HashSet<String> = three.iter().map(node_of).collect();
    assert_eq!(nodes.len(), 3, "replicas spread over the three nodes");
    for p in &three {
        let name = p.metadata.name.clone().unwrap();
        let suffix = name
            .strip_prefix(&format!("{rs_name}-"))
            .unwrap_or_else(|| panic!("pod {name} named after its ReplicaSet"));
        assert_eq!(suffix.len(), 5, "{name}");
        let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("ReplicaSet", rs_name.as_str(), Some(true))
        );
        assert_eq!(
            p.metadata.labels.as_ref().unwrap()["pod-template-hash"],
            hash
        );
    }
    // A pod relabelled out of the selector is released and replaced;
    // relabelled back, it is adopted again and the surplus removed.
    let quarantined = three[0].metadata.name.clone().unwrap();
    lab.kubectl(&["label", "pod", &quarantined, "app=debug", "--overwrite"])?;
    ready_pods(&lab, "web", 3).await?;
    let released = eventually("quarantined pod released", || async {
        let p = pods.get(&quarantined).await?;
        Ok(
            if p.metadata
                .owner_references
                .as_ref()
                .is_none_or(Vec::is_empty)
            {
                Ok(p)
            } else {
                Err(format!("{:?}", p.metadata.owner_references))
            },
        )
    })
    .await?;
    assert!(
        released.metadata.deletion_timestamp.is_none(),
        "a released pod keeps running"
    );
    lab.kubectl(&["label", "pod", &quarantined, "app=web", "--overwrite"])?;
    let back = eventually("pod adopted back and surplus removed", || async {
        let ps = active(lab.pods("default", "app=web").await?);
        let owned = ps.iter().all(|p| {
            p.metadata
                .owner_references
                .as_ref()
                .is_some_and(|r| r.iter().any(|o| o.name == rs_name))
        });
        Ok(if ps.len() == 3 && owned && ps.iter().all(pod_ready) {
            Ok(ps)
        } else {
            Err(format!("{} active, all owned: {owned}", ps.len()))
        })
    })
    .await?;
    assert_eq!(back.len(), 3);

    // kubectl sees a finished rollout and the status columns.
    let out = lab.kubectl(&["rollout", "status", "deployment/web", "--timeout=30s"])?;
    assert!(out.contains("successfully rolled out"), "{out}");
    let d = eventually("deployment status", || async {
        let d = deps.get("web").await?;
        let s = d.status.clone().unwrap_or_default();
        Ok(
            if s.available_replicas == Some(3) && s.updated_replicas == Some(3) {
                Ok(d)
            } else {
                Err(format!("{s:?}"))
            },
        )
    })
    .await?;
    let s = d.status.unwrap();
    assert_eq!(
        (s.replicas, s.ready_replicas, s.observed_generation),
        (Some(3), Some(3), d.metadata.generation)
    );
    let conds = s.conditions.unwrap();
    assert!(
        conds.iter().any(|c| c.type_ == "Available"
            && c.status == "True"
            && c.reason.as_deref() == Some("MinimumReplicasAvailable")),
        "{conds:?}"
    );
    assert!(
        conds.iter().any(|c| c.type_ == "Progressing"
            && c.status == "True"
            && c.reason.as_deref() == Some("NewReplicaSetAvailable")),
        "{conds:?}"
    );
    // The surplus pod of the adoption above may still be counted by a
    // ReplicaSet status written a moment earlier: wait for the columns.
    eventually("kubectl's deployment columns", || async {
        let table = lab.kubectl(&["get", "deploy", "web", "--no-headers"])?;
        Ok(
            if table.split_whitespace().take(4).collect::<Vec<_>>() == ["web", "3/3", "3", "3"] {
                Ok(())
            } else {
                Err(table)
            },
        )
    })
    .await?;

    // Scale up, replace a deleted pod, scale to zero and back.
    scale(&lab, "web", 5).await?;
    let five = ready_pods(&lab, "web", 5).await?;
    let victim = five[0].metadata.name.clone().unwrap();
    pods.delete(&victim, &DeleteParams::default()).await?;
    let after = eventually("the deleted pod replaced", || async {
        let ps = active(lab.pods("default", "app=web").await?);
        let ready = ps.iter().filter(|p| pod_ready(p)).count();
        let has_victim = ps
            .iter()
            .any(|p| p.metadata.name.as_deref() == Some(&victim));
        Ok(if ps.len() == 5 && ready == 5 && !has_victim {
            Ok(ps)
        } else {
            Err(format!(
                "{} active, {ready} ready, victim present: {has_victim}",
                ps.len()
            ))
        })
    })
    .await?;
    assert_eq!(after.len(), 5);
    scale(&lab, "web", 0).await?;
    eventually("no pods at scale 0", || async {
        let ps = lab.pods("default", "app=web").await?;
        Ok(if ps.is_empty() {
            Ok(())
        } else {
            Err(format!("{} pods", ps.len()))
        })
    })
    .await?;
    scale(&lab, "web", 3).await?;
    ready_pods(&lab, "web", 3).await?;

    // A failed pod is replaced.
    let failed = active(lab.pods("default", "app=web").await?)[0]
        .metadata
        .name
        .clone()
        .unwrap();
    pods.patch_status(
        &failed,
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": {"phase": "Failed"}})),
    )
    .await?;
    ready_pods(&lab, "web", 3).await?;

    // A new template rolls: a second ReplicaSet takes over, the old one goes to 0.
    deps.patch("web", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:1.27", "ports": [{"name": "http", "containerPort": 8080}]}]}}}}))).await?;
    let out = lab.kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"])?;
    assert!(out.contains("successfully rolled out"), "{out}");
    let rs_list = rss.list(&ListParams::default()).await?.items;
    assert_eq!(rs_list.len(), 2, "old and new ReplicaSets");
    let new_rs = rs_list
        .iter()
        .find(|r| r.metadata.name.as_deref() != Some(&rs_name))
        .unwrap();
    let old_rs = rs_list
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(&rs_name))
        .unwrap();
    assert_eq!(new_rs.spec.as_ref().unwrap().replicas, Some(3));
    assert_eq!(old_rs.spec.as_ref().unwrap().replicas, Some(0));
    assert_eq!(
        new_rs.metadata.annotations.as_ref().unwrap()["deployment.kubernetes.io/revision"],
        "2"
    );
    let rolled = ready_pods(&lab, "web", 3).await?;
    let new_hash = new_rs.metadata.labels.as_ref().unwrap()["pod-template-hash"].clone();
    assert_ne!(new_hash, hash);
    for p in &rolled {
        assert_eq!(
            p.metadata.labels.as_ref().unwrap()["pod-template-hash"],
            new_hash
        );
        assert_eq!(
            p.spec.as_ref().unwrap().containers[0].image.as_deref(),
            Some("nginx:1.27")
        );
    }
    assert_eq!(
        deps.get("web").await?.metadata.annotations.unwrap()["deployment.kubernetes.io/revision"],
        "2"
    );

    // kubectl delete deployment removes its ReplicaSets and pods.
    lab.kubectl(&["delete", "deployment", "web"])?;
    eventually(
        "ReplicaSets and pods of a deleted deployment gone",
        || async {
            let r = rss.list(&ListParams::default()).await?.items.len();
            let p = lab.pods("default", "app=web").await?.len();
            Ok(if r == 0 && p == 0 {
                Ok(())
            } else {
                Err(format!("{r} ReplicaSets, {p} pods"))
            })
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn daemonset_runs_one_pod_per_matching_ready_node() -> Result<()> {
    let lab = Lab::full().await?;
    lab.node("n1", true, &[("edge", "true")], json!([])).await?;
    lab.node("n2", true, &[], json!([])).await?;
    lab.node(
        "n3",
        true,
        &[],
        json!([{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]),
    )
    .await?;
    lab.node("n4", false, &[], json!([])).await?;
    let dss: kube::Api<DaemonSet> = kube::Api::namespaced(lab.client.clone(), "default");
    let ds = |name: &str, selector: serde_json::Value| -> DaemonSet {
        serde_json::from_value(json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": {"app": name}}, "template": {"metadata": {"labels": {"app": name}},
                "spec": {"nodeSelector": selector, "containers": [{"name": "c", "image": "busybox"}]}}}}))
        .unwrap()
    };
    dss.create(&PostParams::default(), &ds("agent", json!({})))
        .await?;
    dss.create(&PostParams::default(), &ds("edge", json!({"edge": "true"})))
        .await?;
    let agents = ready_pods(&lab, "agent", 2).await?;
    let nodes: BTreeMap<String, usize> = agents.iter().fold(BTreeMap::new(), |mut m, p| {
        *m.entry(node_of(p)).or_default() += 1;
        m
    });
    assert_eq!(
        nodes.into_iter().collect::<Vec<_>>(),
        [("n1".to_string(), 1), ("n2".to_string(), 1)],
        "one pod per Ready, untainted node"
    );
    let edge = ready_pods(&lab, "edge", 1).await?;
    assert_eq!(node_of(&edge[0]), "n1");
    assert!(
        edge[0]
            .metadata
            .name
            .as_deref()
            .unwrap()
            .starts_with("edge-")
    );
    // The node becoming Ready gets its pod; so does a new node.
    lab.set_node_ready("n4", true).await?;
    lab.node("n5", true, &[], json!([])).await?;
    let agents = ready_pods(&lab, "agent", 4).await?;
    let on: HashSet<String> = agents.iter().map(node_of).collect();
    assert_eq!(
        on,
        ["n1", "n2", "n4", "n5"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    let s = eventually("DaemonSet status", || async {
        let s = dss.get("agent").await?.status.unwrap_or_default();
        Ok(if s.number_ready == 4 && s.desired_number_scheduled == 4 {
            Ok(s)
        } else {
            Err(format!("{s:?}"))
        })
    })
    .await?;
    assert_eq!(
        (
            s.current_number_scheduled,
            s.updated_number_scheduled,
            s.number_available,
            s.number_misscheduled
        ),
        (4, Some(4), Some(4), 0)
    );
    let out = lab.kubectl(&["rollout", "status", "daemonset/agent", "--timeout=30s"])?;
    assert!(out.contains("successfully rolled out"), "{out}");
    // A deleted daemon pod comes back on the same node.
    let pods: kube::Api<Pod> = kube::Api::namespaced(lab.client.clone(), "default");
    let victim = agents.iter().find(|p| node_of(p) == "n2").unwrap();
    pods.delete(
        victim.metadata.name.as_deref().unwrap(),
        &DeleteParams::default(),
    )
    .await?;
    eventually("daemon pod replaced on n2", || async {
        let ps = active(lab.pods("default", "app=agent").await?);
        let on_n2: Vec<&Pod> = ps
            .iter()
            .filter(|p| node_of(p) == "n2" && pod_ready(p))
            .collect();
        Ok(
            if ps.len() == 4 && on_n2.len() == 1 && on_n2[0].metadata.uid != victim.metadata.uid {
                Ok(())
            } else {
                Err(format!("{} pods, {} on n2", ps.len(), on_n2.len()))
            },
        )
    })
    .await?;
    // A new template rolls node by node: every pod ends on the new hash.
    let old_hash = agents[0].metadata.labels.as_ref().unwrap()["controller-revision-hash"].clone();
    dss.patch(
        "agent",
        &PatchParams::default(),
        &Patch::Merge(
            &json!({"spec": {"template": {"metadata": {"labels": {"app": "agent", "v": "2"}}}}}),
        ),
    )
    .await?;
    let rolled = eventually("DaemonSet rolled to the new template", || async {
        let ps = active(lab.pods("default", "app=agent").await?);
        let new: Vec<&Pod> = ps
            .iter()
            .filter(|p| {
                p.metadata
                    .labels
                    .as_ref()
                    .unwrap()
                    .get("v")
                    .map(String::as_str)
                    == Some("2")
                    && pod_ready(p)
            })
            .collect();
        Ok(if ps.len() == 4 && new.len() == 4 {
            Ok(ps)
        } else {
            Err(format!("{} pods, {} new and ready", ps.len(), new.len()))
        })
    })
    .await?;
    let on: HashSet<String> = rolled.iter().map(node_of).collect();
    assert_eq!(on.len(), 4, "still one pod per node");
    assert!(
        rolled
            .iter()
            .all(|p| p.metadata.labels.as_ref().unwrap()["controller-revision-hash"] != old_hash)
    );
    let out = lab.kubectl(&["rollout", "status", "daemonset/agent", "--timeout=30s"])?;
    assert!(out.contains("successfully rolled out"), "{out}");

    // Label removed from n1: the edge pod leaves it.
    let nodes_api: kube::Api<Node> = kube::Api::all(lab.client.clone());
    nodes_api
        .patch(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"edge": null}}})),
        )
        .await?;
    ready_pods(&lab, "edge", 0).await?;
    Ok(())
}

/// The slices of a service, as (ready addresses, not-ready addresses, ports).
async fn slice_view(
    lab: &Lab,
    svc: &str,
) -> Result<(
    Vec<EndpointSlice>,
    BTreeMap<String, bool>,
    Vec<(String, i32)>,
)> {
    let api: kube::Api<EndpointSlice> = kube::Api::namespaced(lab.client.clone(), "default");
    let slices = api
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={svc}")))
        .await?
        .items;
    let mut addrs = BTreeMap::new();
    let mut ports = Vec::new();
    for s in &slices {
        for e in &s.endpoints {
            addrs.insert(
                e.addresses[0].clone(),
                e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false),
            );
        }
        for p in s.ports.iter().flatten() {
            ports.push((p.name.clone().unwrap_or_default(), p.port.unwrap_or(0)));
        }
    }
    ports.sort();
    ports.dedup();
    Ok((slices, addrs, ports))
}

fn ips(pods: &[Pod]) -> Vec<String> {
    let mut v: Vec<String> = pods
        .iter()
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn endpointslices_follow_ready_pods_and_scale() -> Result<()> {
    let lab = Lab::full().await?;
    for n in ["w1", "w2"] {
        lab.node(n, true, &[], json!([])).await?;
    }
    let deps: kube::Api<Deployment> = kube::Api::namespaced(lab.client.clone(), "default");
    deps.create(&PostParams::default(), &deployment_json("web", 3, "nginx"))
        .await?;
    lab.kubectl(&[
        "expose",
        "deployment",
        "web",
        "--port=80",
        "--target-port=http",
        "--name=web",
    ])?;
    let svcs: kube::Api<Service> = kube::Api::namespaced(lab.client.clone(), "default");
    let svc = svcs.get("web").await?;
    let pods = ready_pods(&lab, "web", 3).await?;
    let want: BTreeMap<String, bool> = ips(&pods).into_iter().map(|ip| (ip, true)).collect();
    let (slices, _, ports) = eventually("slice lists the 3 ready pods", || async {
        let v = slice_view(&lab, "web").await?;
        Ok(if v.1 == want {
            Ok(v)
        } else {
            Err(format!("{:?}", v.1))
        })
    })
    .await?;
    assert_eq!(
        ports,
        [(String::new(), 8080)],
        "named targetPort resolved to the container port"
    );
    assert_eq!(slices.len(), 1);
    let s = &slices[0];
    let l = s.metadata.labels.as_ref().unwrap();
    assert_eq!(
        l["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );
    assert!(s.metadata.name.as_deref().unwrap().starts_with("web-"));
    assert_eq!(s.address_type, "IPv4");
    let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Service", svc.metadata.uid.as_deref().unwrap())
    );
    for e in &s.endpoints {
        let tr = e.target_ref.as_ref().unwrap();
        let pod = pods
            .iter()
            .find(|p| p.metadata.name == tr.name)
            .expect("targetRef names a pod");
        assert_eq!(e.node_name.as_deref(), Some(node_of(pod).as_str()));
        assert_eq!(
            Some(&e.addresses[0]),
            pod.status.as_ref().unwrap().pod_ip.as_ref()
        );
        let c = e.conditions.as_ref().unwrap();
        assert_eq!(
            (c.ready, c.serving, c.terminating),
            (Some(true), Some(true), Some(false))
        );
    }
    // Legacy Endpoints in step.
    let eps: kube::Api<Endpoints> = kube::Api::namespaced(lab.client.clone(), "default");
    let ep = eventually("Endpoints lists the 3 pods", || async {
        let e = eps.get("web").await?;
        let n = e
            .subsets
            .iter()
            .flatten()
            .flat_map(|s| s.addresses.iter().flatten())
            .count();
        Ok(if n == 3 {
            Ok(e)
        } else {
            Err(format!("{n} addresses"))
        })
    })
    .await?;
    let mut got: Vec<String> = ep
        .subsets
        .iter()
        .flatten()
        .flat_map(|s| s.addresses.iter().flatten())
        .map(|a| a.ip.clone())
        .collect();
    got.sort();
    assert_eq!(got, ips(&pods));
    assert_eq!(
        ep.subsets.as_ref().unwrap()[0].ports.as_ref().unwrap()[0].port,
        8080
    );
    let out = lab.kubectl(&["get", "endpoints", "web", "--no-headers"])?;
    assert!(out.contains(":8080"), "{out}");

    // A pod turning unready is listed as not ready (and in notReadyAddresses).
    let podapi: kube::Api<Pod> = kube::Api::namespaced(lab.client.clone(), "default");
    let sick = &pods[0];
    let sick_ip = sick.status.as_ref().unwrap().pod_ip.clone().unwrap();
    podapi
        .patch_status(
            sick.metadata.name.as_deref().unwrap(),
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
            ),
        )
        .await?;
    eventually("unready pod marked not ready", || async {
        let v = slice_view(&lab, "web").await?;
        let e = eps.get("web").await?;
        let not_ready: Vec<String> = e
            .subsets
            .iter()
            .flatten()
            .flat_map(|s| s.not_ready_addresses.iter().flatten())
            .map(|a| a.ip.clone())
            .collect();
        Ok(
            if v.1.get(&sick_ip) == Some(&false) && v.1.len() == 3 && not_ready == [sick_ip.clone()]
            {
                Ok(())
            } else {
                Err(format!("{:?} / {not_ready:?}", v.1))
            },
        )
    })
    .await?;

    // Scale to 0: the slice stays and empties; back to 2: it refills.
    let slice_name = slices[0].metadata.name.clone();
    lab.kubectl(&["scale", "deployment", "web", "--replicas=0"])?;
    eventually("slice empty at scale 0", || async {
        let v = slice_view(&lab, "web").await?;
        let e = eps.get("web").await?;
        Ok(
            if v.0.len() == 1 && v.1.is_empty() && e.subsets.as_ref().is_none_or(Vec::is_empty) {
                Ok(())
            } else {
                Err(format!("{} slices, {:?}", v.0.len(), v.1))
            },
        )
    })
    .await?;
    lab.kubectl(&["scale", "deployment", "web", "--replicas=2"])?;
    let pods = ready_pods(&lab, "web", 2).await?;
    let want: BTreeMap<String, bool> = ips(&pods).into_iter().map(|ip| (ip, true)).collect();
    let (slices, _, ports) = eventually("slice refilled", || async {
        let v = slice_view(&lab, "web").await?;
        Ok(if v.1 == want {
            Ok(v)
        } else {
            Err(format!("{:?}", v.1))
        })
    })
    .await?;
    assert_eq!(ports, [(String::new(), 8080)]);
    assert_eq!(slices.len(), 1);
    assert_eq!(
        slices[0].metadata.name, slice_name,
        "the same slice is updated in place"
    );

    // Headless, publishNotReadyAddresses, hostname/subdomain.
    let headless: Service = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"},
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": true, "selector": {"app": "db"}, "ports": [{"name": "pg", "port": 5432}]}}),
    )?;
    svcs.create(&PostParams::default(), &headless).await?;
    let db = pod_json(
        "db-0",
        json!({"app": "db"}),
        json!({"hostname": "db-0", "subdomain": "db"}),
    );
    podapi.create(&PostParams::default(), &db).await?;
    eventually("db-0 ready", || async {
        let p = podapi.get("db-0").await?;
        Ok(if pod_ready(&p) {
            Ok(())
        } else {
            Err("not ready".into())
        })
    })
    .await?;
    podapi
        .patch_status(
            "db-0",
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
            ),
        )
        .await?;
    let dbslices = eventually("headless slice publishes the unready pod", || async {
        let v = slice_view(&lab, "db").await?;
        Ok(
            if v.1.len() == 1
                && v.1.values().all(|r| *r)
                && v.0.iter().all(|s| {
                    s.endpoints
                        .iter()
                        .all(|e| e.conditions.as_ref().unwrap().serving == Some(true))
                })
            {
                Ok(v.0)
            } else {
                Err(format!("{:?}", v.1))
            },
        )
    })
    .await?;
    let e = &dbslices[0].endpoints[0];
    assert_eq!(e.hostname.as_deref(), Some("db-0"));
    assert_eq!(
        dbslices[0]
            .metadata
            .labels
            .as_ref()
            .unwrap()
            .get("service.kubernetes.io/headless")
            .map(String::as_str),
        Some("")
    );

    // Deleting the service removes its slices and Endpoints.
    svcs.delete("web", &DeleteParams::default()).await?;
    eventually("slices and Endpoints of a deleted service gone", || async {
        let v = slice_view(&lab, "web").await?;
        let e = eps.get_opt("web").await?;
        Ok(if v.0.is_empty() && e.is_none() {
            Ok(())
        } else {
            Err(format!("{} slices, endpoints: {}", v.0.len(), e.is_some()))
        })
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orphaned_pods_are_collected_and_others_kept() -> Result<()> {
    let lab = Lab::full().await?;
    lab.node("w1", true, &[], json!([])).await?;
    let pods: kube::Api<Pod> = kube::Api::namespaced(lab.client.clone(), "default");
    let owned_by = |name: &str, kind: &str, api_version: &str| -> Pod {
        let mut p = pod_json(name, json!({"gc": "test"}), json!({}));
        p.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: api_version.into(),
                kind: kind.into(),
                name: "gone".into(),
                uid: "00000000-0000-0000-0000-000000000000".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            },
        ]);
        p
    };
    // Owners that never existed (or went while nobody watched).
    pods.create(
        &PostParams::default(),
        &owned_by("orphan-of-rs", "ReplicaSet", "apps/v1"),
    )
    .await?;
    pods.create(
        &PostParams::default(),
        &owned_by("orphan-of-ds", "DaemonSet", "apps/v1"),
    )
    .await?;
    // An owner of a kind this collector does not know stays untouched.
    pods.create(
        &PostParams::default(),
        &owned_by("widget-pod", "Widget", "example.com/v1"),
    )
    .await?;
    pods.create(
        &PostParams::default(),
        &pod_json("bare", json!({"gc": "test"}), json!({})),
    )
    .await?;
    eventually("orphans collected", || async {
        let names: Vec<String> = lab
            .pods("default", "gc=test")
            .await?
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect();
        Ok(if names == ["bare", "widget-pod"] {
            Ok(())
        } else {
            Err(format!("{names:?}"))
        })
    })
    .await?;
    // The proof that the collector had judged "bare" and "widget-pod" and
    // kept them: orphans created after them are collected, one after the
    // other. The collector's pod cache follows one watch in order, so the
    // pass that collects "late-1" had both in hand; "late-2", created once
    // "late-1" is gone, is collected by a later pass, so that one has run
    // to its end (its deletions are made one by one).
    for late in ["late-1", "late-2"] {
        pods.create(
            &PostParams::default(),
            &owned_by(late, "ReplicaSet", "apps/v1"),
        )
        .await?;
        eventually(&format!("{late} collected"), || async {
            Ok(if pods.get_opt(late).await?.is_none() {
                Ok(())
            } else {
                Err("still there".to_string())
            })
        })
        .await?;
    }
    let names: Vec<String> = lab
        .pods("default", "gc=test")
        .await?
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(
        names,
        ["bare", "widget-pod"],
        "the collector kept a pod without owners and one owned by a kind it does not know"
    );
    Ok(())
}
