//! kube-rs against the server: a watcher sees creates, updates and deletes in
//! order; it resumes across a crash-restart without a gap; a watch from a
//! resourceVersion older than the log gets the in-stream 410 and re-lists.

mod common;

use std::time::Duration;

use common::Lab;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Init,
    InitApply(String),
    InitDone,
    Apply(String, String),
    Delete(String),
}

fn client(rt: &tokio::runtime::Runtime, lab: &Lab) -> kube::Client {
    rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(lab.kubeconfig()).unwrap();
        let cfg =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .unwrap();
        kube::Client::try_from(cfg).unwrap()
    })
}

fn cm(name: &str, v: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"v": v}})).unwrap()
}

fn next(rt: &tokio::runtime::Runtime, rx: &mut tokio::sync::mpsc::UnboundedReceiver<Seen>) -> Seen {
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("watcher event within 30s")
            .expect("watcher alive")
    })
}

#[test]
fn watcher_sees_everything_in_order_across_restarts_and_410() {
    let mut lab = Lab::start_with(8);
    let crt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = client(&crt, &lab);
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let wapi = api.clone();
    crt.spawn(async move {
        let mut s = watcher::watcher(wapi, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(ev) = s.next().await {
            let seen = match ev {
                Ok(Event::Init) => Seen::Init,
                Ok(Event::InitApply(c)) => Seen::InitApply(c.metadata.name.unwrap()),
                Ok(Event::InitDone) => Seen::InitDone,
                Ok(Event::Apply(c)) => Seen::Apply(
                    c.metadata.name.clone().unwrap(),
                    c.data
                        .unwrap_or_default()
                        .get("v")
                        .cloned()
                        .unwrap_or_default(),
                ),
                Ok(Event::Delete(c)) => Seen::Delete(c.metadata.name.unwrap()),
                Err(e) => {
                    eprintln!("watcher error (retried): {e}");
                    continue;
                }
            };
            if tx.send(seen).is_err() {
                return;
            }
        }
    });
    assert_eq!(next(&crt, &mut rx), Seen::Init);
    // The namespace starts with the cluster CA, as on any cluster.
    assert_eq!(
        next(&crt, &mut rx),
        Seen::InitApply("kube-root-ca.crt".into())
    );
    assert_eq!(next(&crt, &mut rx), Seen::InitDone);

    crt.block_on(async {
        api.create(&PostParams::default(), &cm("a", "1"))
            .await
            .unwrap();
        api.patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"v": "2"}})),
        )
        .await
        .unwrap();
        api.delete("a", &DeleteParams::default()).await.unwrap();
    });
    assert_eq!(next(&crt, &mut rx), Seen::Apply("a".into(), "1".into()));
    assert_eq!(next(&crt, &mut rx), Seen::Apply("a".into(), "2".into()));
    assert_eq!(next(&crt, &mut rx), Seen::Delete("a".into()));

    // A crash and restart: the watch resumes from its resourceVersion,
    // which the persisted log still holds, so nothing is missed or re-listed.
    crt.block_on(async {
        api.create(&PostParams::default(), &cm("b", "1"))
            .await
            .unwrap()
    });
    assert_eq!(next(&crt, &mut rx), Seen::Apply("b".into(), "1".into()));
    lab.restart();
    crt.block_on(async {
        for _ in 0..100 {
            if api
                .create(&PostParams::default(), &cm("c", "1"))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("create after restart failed");
    });
    assert_eq!(next(&crt, &mut rx), Seen::Apply("c".into(), "1".into()));

    // While the server is down, more changes than its log keeps happen (the
    // store written directly, as another server instance would): the
    // watcher's resourceVersion is too old, it gets 410 and re-lists.
    lab.kill();
    {
        let wrt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = loop {
            match podnet_apiserver::store::Store::open_with(lab.dir.path(), 8) {
                Ok(s) => break s,
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        wrt.block_on(async {
            for i in 0..20 {
                let name = format!("d{i}");
                let v = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default", "uid": format!("u{i}"), "creationTimestamp": "2025-01-01T00:00:00Z"}, "data": {"v": "1"}});
                store
                    .mutate("configmaps", "default", &name, false, |_, _| -> Result<_, podnet_apiserver::store::StoreError> { Ok(podnet_apiserver::store::Change::Put(v)) })
                    .await
                    .unwrap();
            }
        });
    }
    lab.start_again();
    let mut seen = Vec::new();
    loop {
        let s = next(&crt, &mut rx);
        if s == Seen::InitDone {
            break;
        }
        seen.push(s);
    }
    assert_eq!(seen.first(), Some(&Seen::Init), "{seen:?}");
    let mut names: Vec<String> = seen
        .iter()
        .filter_map(|s| {
            if let Seen::InitApply(n) = s {
                Some(n.clone())
            } else {
                None
            }
        })
        .collect();
    names.sort();
    let mut want: Vec<String> = (0..20)
        .map(|i| format!("d{i}"))
        .chain(["b", "c", "kube-root-ca.crt"].map(String::from))
        .collect();
    want.sort();
    assert_eq!(names, want);
}

#[test]
fn too_old_resource_version_gets_an_in_stream_410() {
    let lab = Lab::start_with(4);
    for i in 0..10 {
        let body = format!("{{\"metadata\":{{\"name\":\"c{i}\"}}}}");
        let (code, _) = lab.curl(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            Some(body.as_bytes()),
            true,
        );
        assert_eq!(code, 201);
    }
    let (code, body) = lab.curl(
        "GET",
        "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=2&timeoutSeconds=1",
        "application/json",
        None,
        true,
    );
    assert_eq!(code, 200);
    let ev: serde_json::Value = serde_json::from_str(body.lines().next().unwrap()).unwrap();
    assert_eq!(ev["type"], "ERROR");
    assert_eq!(ev["object"]["code"], 410);
    assert_eq!(ev["object"]["reason"], "Expired");
    // A recent version replays what came after it, then the stream ends at the timeout.
    let rv = lab.rv();
    let (_, body) = lab.curl(
        "GET",
        &format!(
            "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={}&timeoutSeconds=1",
            rv - 2
        ),
        "application/json",
        None,
        true,
    );
    let types: Vec<String> = body
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["object"]["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(types, ["c8", "c9"]);
}

/// As kube-apiserver: the first apply creates; the same manager's second
/// apply, which no longer names `data.a`, removes it (the manager alone
/// owned it) and adds what it names now; `managedFields` holds one `Apply`
/// entry with exactly the fields of the last configuration.
#[test]
fn server_side_apply_creates_then_owns_fields() {
    let lab = Lab::start();
    let crt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client(&crt, &lab), "default");
    let pp = PatchParams::apply("podnet-test");
    crt.block_on(async {
        let applied = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"a": "1"}});
        let c = api.patch("ssa", &pp, &Patch::Apply(&applied)).await.unwrap();
        assert_eq!(c.data.unwrap()["a"], "1");
        let again = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa", "labels": {"x": "y"}}, "data": {"b": "2"}});
        let c = api.patch("ssa", &pp, &Patch::Apply(&again)).await.unwrap();
        let data = c.data.clone().unwrap();
        assert_eq!(data.len(), 1, "{data:?}");
        assert_eq!(data["b"], "2");
        assert_eq!(c.metadata.labels.clone().unwrap()["x"], "y");
        let mf = c.metadata.managed_fields.clone().unwrap();
        assert_eq!(mf.len(), 1, "{mf:?}");
        assert_eq!(mf[0].manager.as_deref(), Some("podnet-test"));
        assert_eq!(mf[0].operation.as_deref(), Some("Apply"));
        assert_eq!(mf[0].api_version.as_deref(), Some("v1"));
        assert_eq!(mf[0].fields_type.as_deref(), Some("FieldsV1"));
        assert_eq!(
            mf[0].fields_v1.as_ref().unwrap().0,
            json!({"f:data": {"f:b": {}}, "f:metadata": {"f:labels": {"f:x": {}}}})
        );
        // Another manager setting `b` differently conflicts (409) and
        // changes nothing; forced, it takes `b` over.
        let other = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"b": "3"}});
        let err = api
            .patch("ssa", &PatchParams::apply("other"), &Patch::Apply(&other))
            .await
            .unwrap_err();
        match err {
            kube::Error::Api(s) => {
                assert_eq!(s.code, 409);
                assert_eq!(s.message, r#"Apply failed with 1 conflict: conflict with "podnet-test": .data.b"#);
            }
            e => panic!("{e}"),
        }
        let c = api
            .patch("ssa", &PatchParams::apply("other").force(), &Patch::Apply(&other))
            .await
            .unwrap();
        assert_eq!(c.data.unwrap()["b"], "3");
    });
}
