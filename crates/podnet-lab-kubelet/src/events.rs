//! The kubelet's side of a pod's story, in the real kubelet's reasons and
//! words (`kubectl describe pod`, `kubectl get events`): Pulled, Created,
//! Started, Killing, Unhealthy, BackOff, Failed, FailedCreatePodSandBox.
//! Recorded in the background (a pod start never waits for an Event) and
//! counted on one Event when repeated (`podnet_controllers::events`).

use std::sync::Arc;

use crate::{Kubelet, PodHandle};

/// `Normal` or `Warning`.
pub const NORMAL: &str = "Normal";
/// `Normal` or `Warning`.
pub const WARNING: &str = "Warning";

/// Records an Event about `h`'s pod from this node's kubelet.
pub fn pod_event(
    k: &Kubelet,
    h: &PodHandle,
    type_: &'static str,
    reason: &'static str,
    msg: String,
) {
    pod_events(k, h, vec![(type_, reason, msg)]);
}

/// Records Events about `h`'s pod, in this order.
fn pod_events(k: &Kubelet, h: &PodHandle, events: Vec<(&'static str, &'static str, String)>) {
    let pod = h.pod.lock().unwrap().clone();
    let client = k.client.clone();
    let source = podnet_controllers::events::Source {
        component: "kubelet".into(),
        host: Some(k.args.node.clone()),
    };
    tokio::spawn(async move {
        for (type_, reason, msg) in events {
            if let Err(e) =
                podnet_controllers::events::record(&client, &source, &pod, type_, reason, &msg)
                    .await
            {
                tracing::debug!(error = %e, reason, "event not recorded");
            }
        }
    });
}

/// The events of a container's start: the image is there (the lab pulls
/// none, as a node with `IfNotPresent` and the image cached), created,
/// started.
pub fn container_started(k: &Arc<Kubelet>, h: &PodHandle, name: &str, image: &str) {
    pod_events(
        k,
        h,
        vec![
            (
                NORMAL,
                "Pulled",
                format!("Container image {image:?} already present on machine"),
            ),
            (NORMAL, "Created", format!("Created container: {name}")),
            (NORMAL, "Started", format!("Started container {name}")),
        ],
    );
}
