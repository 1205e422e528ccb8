#!/usr/bin/python3
"""Drives the lab's API server with the official Kubernetes Python client
(Debian's python3-kubernetes): what people's scripts and operators use.

Usage: official_client.py KUBECONFIG. Exits non-zero, with the failed
assertion or the client's exception, when the server answers differently
from a kube-apiserver. Run by tests/python_client.rs against a lab with
controllers and a stand-in kubelet, so workloads get Running pods.
"""

import base64
import sys

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

NS = "pyclient"
# Bounds how long a watch waits for a workload; the lab converges far sooner.
WATCH_SECONDS = 60


def meta(name, **labels):
    return client.V1ObjectMeta(name=name, labels=labels or None)


def template(app, command=None, restart="Always"):
    return client.V1PodTemplateSpec(
        metadata=client.V1ObjectMeta(labels={"app": app}),
        spec=client.V1PodSpec(
            restart_policy=restart,
            containers=[client.V1Container(name="c", image="busybox", command=command)],
        ),
    )


def watch_until(list_fn, what, done, **kw):
    """Watches `list_fn` until `done(object)` holds; returns that object."""
    w = watch.Watch()
    last = None
    for ev in w.stream(list_fn, NS, timeout_seconds=WATCH_SECONDS, **kw):
        last = ev["object"]
        if done(last):
            w.stop()
            return last
    raise AssertionError(f"watch ended before {what}; last seen: {last}")


def not_found(read, *args):
    try:
        read(*args)
    except ApiException as e:
        return e.status == 404
    return False


def main(kubeconfig):
    config.load_kube_config(config_file=kubeconfig)
    core = client.CoreV1Api()
    apps = client.AppsV1Api()
    batch = client.BatchV1Api()

    # Namespace: create, read, list by label.
    core.create_namespace(client.V1Namespace(metadata=meta(NS, team="py")))
    ns = core.read_namespace(NS)
    assert ns.status.phase == "Active", ns.status
    listed = [n.metadata.name for n in core.list_namespace(label_selector="team=py").items]
    assert listed == [NS], listed

    # ConfigMap: create, patch, list by label, and a watch from the created
    # version sees the patch.
    cm = core.create_namespaced_config_map(
        NS, client.V1ConfigMap(metadata=meta("settings", app="py"), data={"a": "1"})
    )
    core.patch_namespaced_config_map("settings", NS, {"data": {"b": "2"}})
    cms = core.list_namespaced_config_map(NS, label_selector="app=py")
    assert [c.metadata.name for c in cms.items] == ["settings"], cms
    assert cms.metadata.resource_version, cms.metadata
    seen = watch_until(
        core.list_namespaced_config_map,
        "the patch of ConfigMap settings",
        lambda o: (o.data or {}).get("b") == "2",
        resource_version=cm.metadata.resource_version,
    )
    assert seen.data == {"a": "1", "b": "2"}, seen.data
    # A duplicate is a 409 with a Status the client parses.
    try:
        core.create_namespaced_config_map(NS, client.V1ConfigMap(metadata=meta("settings")))
        raise AssertionError("duplicate ConfigMap created")
    except ApiException as e:
        assert e.status == 409 and "already exists" in e.body, (e.status, e.body)

    # Secret: stringData is stored as base64 data.
    core.create_namespaced_secret(
        NS,
        client.V1Secret(metadata=meta("creds"), type="Opaque", string_data={"password": "s3cret"}),
    )
    s = core.read_namespaced_secret("creds", NS)
    assert base64.b64decode(s.data["password"]) == b"s3cret", s.data
    assert s.string_data is None

    # Deployment: two Ready replicas.
    apps.create_namespaced_deployment(
        NS,
        client.V1Deployment(
            metadata=meta("web"),
            spec=client.V1DeploymentSpec(
                replicas=2,
                selector=client.V1LabelSelector(match_labels={"app": "web"}),
                template=template("web"),
            ),
        ),
    )
    d = watch_until(
        apps.list_namespaced_deployment,
        "Deployment web to have 2 ready replicas",
        lambda o: (o.status.ready_replicas or 0) == 2,
        field_selector="metadata.name=web",
    )
    assert d.status.available_replicas == 2, d.status
    assert apps.read_namespaced_deployment_status("web", NS).status.replicas == 2
    # Scaling through the scale subresource.
    apps.patch_namespaced_deployment_scale("web", NS, {"spec": {"replicas": 3}})
    assert apps.read_namespaced_deployment_scale("web", NS).spec.replicas == 3

    # StatefulSet: pods named by ordinal.
    apps.create_namespaced_stateful_set(
        NS,
        client.V1StatefulSet(
            metadata=meta("db"),
            spec=client.V1StatefulSetSpec(
                service_name="db",
                replicas=2,
                selector=client.V1LabelSelector(match_labels={"app": "db"}),
                template=template("db"),
            ),
        ),
    )
    watch_until(
        apps.list_namespaced_stateful_set,
        "StatefulSet db to have 2 ready replicas",
        lambda o: (o.status.ready_replicas or 0) == 2,
        field_selector="metadata.name=db",
    )
    pods = core.list_namespaced_pod(NS, label_selector="app=db").items
    names = sorted(p.metadata.name for p in pods)
    assert names == ["db-0", "db-1"], names

    # Job: runs to completion.
    batch.create_namespaced_job(
        NS,
        client.V1Job(
            metadata=meta("once"),
            spec=client.V1JobSpec(
                backoff_limit=0, template=template("once", ["true"], restart="Never")
            ),
        ),
    )
    j = watch_until(
        batch.list_namespaced_job,
        "Job once to succeed",
        lambda o: (o.status.succeeded or 0) == 1,
        field_selector="metadata.name=once",
    )
    assert any(c.type == "Complete" and c.status == "True" for c in j.status.conditions), j.status

    # Deletes: a ConfigMap is gone at once; a Job with Foreground
    # propagation takes its pods with it; the namespace goes Terminating.
    status = core.delete_namespaced_config_map("settings", NS)
    assert status is not None
    assert not_found(core.read_namespaced_config_map, "settings", NS)
    batch.delete_namespaced_job("once", NS, propagation_policy="Foreground")
    apps.delete_namespaced_stateful_set("db", NS)
    core.delete_namespace(NS)
    gone = not_found(core.read_namespace, NS)
    assert gone or core.read_namespace(NS).status.phase == "Terminating"
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1])
