//! Streaming: `pods/log`, `pods/exec` and `pods/attach`. The API server
//! forwards them to the node that runs the pod, as kube-apiserver forwards
//! to the kubelet, over a kubelet-like node endpoint (see docs/apiserver.md):
//!
//! - `GET /containerLogs/{namespace}/{pod}/{container}?follow=&tailLines=&timestamps=&sinceSeconds=&previous=&limitBytes=`
//!   answers `text/plain`, streamed while `follow`.
//! - `GET /exec/{namespace}/{pod}/{container}?command=..&command=..&stdin=&stdout=&stderr=&tty=`
//!   and `GET /attach/{namespace}/{pod}/{container}?stdin=&stdout=&stderr=&tty=`
//!   are WebSocket upgrades speaking the same channel protocol as kubectl
//!   (`v5.channel.k8s.io`, `v4.channel.k8s.io`): each binary message starts
//!   with its channel (0 stdin, 1 stdout, 2 stderr, 3 error: a `Status` with
//!   the exit code, 4 resize: `{"Width":w,"Height":h}`, 255 close: `[255, ch]`).
//!
//! Every node request carries `Authorization: Bearer <token>`, the token in
//! `<state>/kubelet-client.token`. [`node_router`] implements the node side over
//! the [`NodeStreams`] trait, so the agent only runs processes.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::ws::{Message as AxMsg, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as TMsg;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::api::{ApiError, Query};
use crate::store::Store;

/// The WebSocket subprotocols spoken, best first.
pub const PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io"];

/// Where a pod's node endpoint is: (address:port, container).
fn locate(store: &Store, ns: &str, pod: &str, q: &Query) -> Result<(String, String), ApiError> {
    let res = crate::resources::find("", "v1", "pods").expect("served");
    let p = store
        .get("pods", ns, pod)
        .ok_or_else(|| ApiError::not_found(res, pod))?;
    let v = &p.value;
    let containers: Vec<&str> = v["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    // Init and ephemeral containers are named explicitly (`kubectl debug`
    // attaches to its ephemeral container by name).
    let inits: Vec<&str> = ["initContainers", "ephemeralContainers"]
        .iter()
        .flat_map(|l| v["spec"][*l].as_array().into_iter().flatten())
        .filter_map(|c| c["name"].as_str())
        .collect();
    let container = match q.get("container").filter(|c| !c.is_empty()) {
        Some(c) if containers.contains(&c.as_str()) || inits.contains(&c.as_str()) => c.clone(),
        Some(c) => {
            return Err(ApiError::bad_request(format!(
                "container {c} is not valid for pod {pod}"
            )));
        }
        None => {
            match v["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"].as_str() {
                Some(d) if containers.contains(&d) => d.to_string(),
                _ if containers.len() == 1 => containers[0].to_string(),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "a container name must be specified for pod {pod}, choose one of: [{}]",
                        containers.join(" ")
                    )));
                }
            }
        }
    };
    let node = v["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()).ok_or_else(|| {
        ApiError::bad_request(format!("container \"{container}\" in pod \"{pod}\" is waiting to start: pod is not scheduled to a node"))
    })?;
    let n = store.get("nodes", "", node).ok_or_else(|| {
        ApiError::bad_request(format!("node \"{node}\" of pod \"{pod}\" does not exist"))
    })?;
    let addrs = n.value["status"]["addresses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ip = addrs
        .iter()
        .find(|a| a["type"] == "InternalIP")
        .or_else(|| addrs.first())
        .and_then(|a| a["address"].as_str())
        .ok_or_else(|| ApiError::bad_request(format!("node \"{node}\" has no address")))?;
    let port = n.value["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_i64()
        .unwrap_or(10250);
    let host = if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    };
    Ok((host, container))
}

fn passthrough_query(raw: &str, drop: &[&str]) -> String {
    raw.split('&')
        .filter(|kv| !drop.iter().any(|d| kv.split('=').next() == Some(*d)) && !kv.is_empty())
        .collect::<Vec<_>>()
        .join("&")
}

/// Forwards `pods/log` to the pod's node and streams the answer back.
pub async fn logs(
    store: &Store,
    node_token: &str,
    ns: &str,
    pod: &str,
    q: &Query,
    raw_query: &str,
) -> Result<Response, ApiError> {
    let (host, container) = locate(store, ns, pod, q)?;
    let query = passthrough_query(raw_query, &["container"]);
    let path = format!("/containerLogs/{ns}/{pod}/{container}?{query}");
    let tcp = tokio::net::TcpStream::connect(&host).await.map_err(|e| {
        ApiError::new(
            500,
            "InternalError",
            format!("Get \"http://{host}{path}\": {e}"),
        )
    })?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| ApiError::new(500, "InternalError", format!("node {host}: {e}")))?;
    tokio::spawn(conn);
    let req = hyper::Request::get(&path)
        .header(header::HOST, &host)
        .header(header::AUTHORIZATION, format!("Bearer {node_token}"))
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| ApiError::new(500, "InternalError", format!("node {host}: {e}")))?;
    let status = resp.status();
    if !status.is_success() {
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let msg = String::from_utf8_lossy(&body).trim().to_string();
        return Err(ApiError::new(
            status.as_u16().max(400),
            if status == StatusCode::NOT_FOUND {
                "NotFound"
            } else {
                "BadRequest"
            },
            msg,
        ));
    }
    let mut r = Response::new(Body::new(resp.into_body()));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(r)
}

fn ax_to_t(m: AxMsg) -> Option<TMsg> {
    Some(match m {
        AxMsg::Binary(b) => TMsg::Binary(b),
        AxMsg::Text(t) => TMsg::Text(t.as_str().into()),
        AxMsg::Ping(p) => TMsg::Ping(p),
        AxMsg::Pong(p) => TMsg::Pong(p),
        AxMsg::Close(f) => {
            TMsg::Close(
                f.map(|f| tokio_tungstenite::tungstenite::protocol::CloseFrame {
                    code: f.code.into(),
                    reason: f.reason.as_str().into(),
                }),
            )
        }
    })
}

fn t_to_ax(m: TMsg) -> Option<AxMsg> {
    Some(match m {
        TMsg::Binary(b) => AxMsg::Binary(b),
        TMsg::Text(t) => AxMsg::Text(t.as_str().into()),
        TMsg::Ping(p) => AxMsg::Ping(p),
        TMsg::Pong(p) => AxMsg::Pong(p),
        TMsg::Close(f) => AxMsg::Close(f.map(|f| axum::extract::ws::CloseFrame {
            code: f.code.into(),
            reason: f.reason.as_str().into(),
        })),
        TMsg::Frame(_) => return None,
    })
}

/// Forwards `pods/exec` or `pods/attach` (a WebSocket upgrade) to the pod's
/// node, relaying frames both ways unchanged.
#[allow(clippy::too_many_arguments)] // the request, split as the router has it
pub async fn exec_or_attach(
    store: &Store,
    node_token: String,
    verb: &str,
    ns: &str,
    pod: &str,
    q: &Query,
    raw_query: &str,
    req: Request,
) -> Result<Response, ApiError> {
    let (host, container) = locate(store, ns, pod, q)?;
    let p = store.get("pods", ns, pod).ok_or_else(|| {
        ApiError::not_found(
            crate::resources::find("", "v1", "pods").expect("served"),
            pod,
        )
    })?;
    let phase = p.value["status"]["phase"].as_str().unwrap_or("");
    if phase == "Succeeded" || phase == "Failed" {
        return Err(ApiError::bad_request(format!(
            "cannot {verb} into a container in a completed pod; current phase is {phase}"
        )));
    }
    if is_spdy(req.headers()) {
        return spdy_exec(
            &host,
            &node_token,
            verb,
            ns,
            pod,
            &container,
            raw_query,
            q,
            req,
        )
        .await;
    }
    let (mut parts, _) = req.into_parts();
    let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &())
        .await
        .map_err(|_| {
            ApiError::new(
                400,
                "BadRequest",
                format!(
                    "{verb} requires a WebSocket upgrade with one of the subprotocols {}",
                    PROTOCOLS.join(", ")
                ),
            )
        })?;
    let offered: Vec<String> = parts
        .headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_string()))
        .collect();
    let proto = PROTOCOLS
        .iter()
        .find(|p| offered.iter().any(|o| o == *p))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "none of the offered WebSocket subprotocols {offered:?} is supported: {}",
                PROTOCOLS.join(", ")
            ))
        })?;
    let query = passthrough_query(raw_query, &["container"]);
    let url = format!("ws://{host}/{verb}/{ns}/{pod}/{container}?{query}");
    let mut nreq = url
        .as_str()
        .into_client_request()
        .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?;
    nreq.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(proto),
    );
    nreq.headers_mut().insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {node_token}"))
            .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?,
    );
    let (node_ws, _) = tokio_tungstenite::connect_async(nreq).await.map_err(|e| {
        ApiError::new(
            500,
            "InternalError",
            format!("error dialing node {host}: {e}"),
        )
    })?;
    Ok(upgrade
        .protocols([*proto])
        .on_upgrade(move |client: WebSocket| async move {
            let (mut ctx, mut crx) = client.split();
            let (mut ntx, mut nrx) = node_ws.split();
            let up = async {
                while let Some(Ok(m)) = crx.next().await {
                    let close = matches!(m, AxMsg::Close(_));
                    if let Some(t) = ax_to_t(m)
                        && ntx.send(t).await.is_err()
                    {
                        break;
                    }
                    if close {
                        break;
                    }
                }
            };
            let down = async {
                while let Some(Ok(m)) = nrx.next().await {
                    let close = matches!(m, TMsg::Close(_));
                    if let Some(a) = t_to_ax(m)
                        && ctx.send(a).await.is_err()
                    {
                        break;
                    }
                    if close {
                        break;
                    }
                }
                let _ = ctx.send(AxMsg::Close(None)).await;
            };
            tokio::select! { _ = down => {}, _ = up => {} }
        }))
}

/// A normal (1000) close, which clients read as the end of the stream.
fn normal_close() -> AxMsg {
    AxMsg::Close(Some(axum::extract::ws::CloseFrame {
        code: 1000,
        reason: "".into(),
    }))
}

/// What a node is asked to show: one container's log.
#[derive(Debug, Clone)]
pub struct LogRequest {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container name.
    pub container: String,
    /// Keep streaming new lines.
    pub follow: bool,
    /// Only the last N lines.
    pub tail_lines: Option<i64>,
    /// Prefix lines with RFC3339 timestamps.
    pub timestamps: bool,
    /// The previous (terminated) instance.
    pub previous: bool,
    /// Only lines newer than this many seconds.
    pub since_seconds: Option<i64>,
    /// Stop after this many bytes.
    pub limit_bytes: Option<i64>,
}

/// A command to run in (exec) or a process to join (attach).
#[derive(Debug, Clone)]
pub struct ExecRequest {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container name.
    pub container: String,
    /// The command (empty for attach).
    pub command: Vec<String>,
    /// Whether stdin is connected.
    pub stdin: bool,
    /// Whether stdout is wanted.
    pub stdout: bool,
    /// Whether stderr is wanted (never with a TTY).
    pub stderr: bool,
    /// Whether a TTY was asked for.
    pub tty: bool,
    /// true for attach, false for exec.
    pub attach: bool,
}

/// The streams of one exec/attach session, as the node implementation sees them.
pub struct StreamIo {
    /// Bytes typed by the user; None once stdin is closed.
    pub stdin: mpsc::Receiver<Bytes>,
    /// Output to the user's stdout.
    pub stdout: mpsc::Sender<Bytes>,
    /// Output to the user's stderr.
    pub stderr: mpsc::Sender<Bytes>,
    /// Terminal size changes (width, height).
    pub resize: mpsc::Receiver<(u16, u16)>,
}

/// A node-side failure, sent to the user as a Status.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NodeError(pub String);

/// What a node (the lab's kubelet in the agent) implements so that
/// `kubectl logs/exec/attach` reach its containers.
pub trait NodeStreams: Send + Sync + 'static {
    /// A container's log as a stream of bytes (ending unless `follow`).
    fn logs(
        &self,
        req: LogRequest,
    ) -> futures::future::BoxFuture<'static, Result<BoxStream<'static, Bytes>, NodeError>>;
    /// Runs `req` with `io`; returns the exit code.
    fn exec(
        &self,
        req: ExecRequest,
        io: StreamIo,
    ) -> futures::future::BoxFuture<'static, Result<i32, NodeError>>;
    /// A TCP connection to `port` on the pod's own localhost (inside its
    /// network namespace), as the kubelet makes one for `port-forward`.
    fn port_forward(
        &self,
        namespace: String,
        pod: String,
        port: u16,
    ) -> futures::future::BoxFuture<'static, Result<tokio::net::TcpStream, NodeError>> {
        let _ = (namespace, pod, port);
        Box::pin(async { Err(NodeError("port-forward is not served by this node".into())) })
    }
}

#[derive(Clone)]
struct NodeState {
    handler: Arc<dyn NodeStreams>,
    token: Arc<str>,
}

fn authorized(st: &NodeState, headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        == Some(&*st.token)
}

fn multi_query(raw: &str) -> Vec<(String, String)> {
    let q: Vec<(String, String)> = raw
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let one = crate::api::parse_query(Some(&format!("{k}={v}")));
            one.into_iter().next().unwrap_or_default()
        })
        .collect();
    q
}

fn flag(q: &[(String, String)], k: &str) -> bool {
    q.iter()
        .any(|(a, b)| a == k && crate::api::parse_bool(b) == Some(true))
}

async fn node_logs(
    State(st): State<NodeState>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    if !authorized(&st, &headers) {
        return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
    }
    let q = multi_query(raw.as_deref().unwrap_or(""));
    let num = |k: &str| {
        q.iter()
            .find(|(a, _)| a == k)
            .and_then(|(_, v)| v.parse::<i64>().ok())
    };
    let req = LogRequest {
        namespace: ns,
        pod,
        container,
        follow: flag(&q, "follow"),
        tail_lines: num("tailLines"),
        timestamps: flag(&q, "timestamps"),
        previous: flag(&q, "previous"),
        since_seconds: num("sinceSeconds"),
        limit_bytes: num("limitBytes"),
    };
    match st.handler.logs(req).await {
        Ok(s) => {
            let mut r = Response::new(Body::from_stream(s.map(Ok::<_, std::io::Error>)));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            r
        }
        Err(e) => (StatusCode::NOT_FOUND, e.0).into_response(),
    }
}

/// The exit Status sent on the error channel.
pub fn exit_status(code: i32, command: &[String]) -> Value {
    if code == 0 {
        json!({"metadata": {}, "status": "Success"})
    } else {
        json!({"metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command [{}], exit code {code}", command.join(" ")),
            "reason": "NonZeroExitCode", "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
    }
}

async fn node_exec(
    State(st): State<NodeState>,
    Path((verb, ns, pod, container)): Path<(String, String, String, String)>,
    RawQuery(raw): RawQuery,
    req: Request,
) -> Response {
    if !authorized(&st, req.headers()) {
        return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
    }
    if verb != "exec" && verb != "attach" {
        return StatusCode::NOT_FOUND.into_response();
    }
    let q = multi_query(raw.as_deref().unwrap_or(""));
    let command: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    let er = ExecRequest {
        namespace: ns,
        pod,
        container,
        command,
        stdin: flag(&q, "stdin") || flag(&q, "input"),
        stdout: flag(&q, "stdout") || flag(&q, "output"),
        stderr: flag(&q, "stderr") || flag(&q, "error"),
        tty: flag(&q, "tty"),
        attach: verb == "attach",
    };
    let (mut parts, _) = req.into_parts();
    let Ok(upgrade) = WebSocketUpgrade::from_request_parts(&mut parts, &()).await else {
        return (StatusCode::BAD_REQUEST, "websocket upgrade required").into_response();
    };
    let offered = parts
        .headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let Some(proto) = PROTOCOLS
        .iter()
        .find(|p| offered.split(',').any(|o| o.trim() == **p))
    else {
        return (StatusCode::BAD_REQUEST, "unsupported subprotocol").into_response();
    };
    let v5 = *proto == "v5.channel.k8s.io";
    let handler = st.handler.clone();
    upgrade.protocols([*proto]).on_upgrade(move |ws: WebSocket| async move {
        let (mut wtx, mut wrx) = ws.split();
        let (in_tx, in_rx) = mpsc::channel::<Bytes>(64);
        let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(64);
        let (err_tx, mut err_rx) = mpsc::channel::<Bytes>(64);
        let (rs_tx, rs_rx) = mpsc::channel::<(u16, u16)>(8);
        let command = er.command.clone();
        let io = StreamIo { stdin: in_rx, stdout: out_tx, stderr: err_tx, resize: rs_rx };
        let run = handler.exec(er, io);
        let reader = tokio::spawn(async move {
            let mut in_tx = Some(in_tx);
            while let Some(Ok(m)) = wrx.next().await {
                let AxMsg::Binary(b) = m else {
                    if matches!(m, AxMsg::Close(_)) {
                        break;
                    }
                    continue;
                };
                if b.is_empty() {
                    continue;
                }
                match b[0] {
                    0 => {
                        if let Some(t) = &in_tx {
                            let _ = t.send(b.slice(1..)).await;
                        }
                    }
                    4 => {
                        if let Ok(v) = serde_json::from_slice::<Value>(&b[1..]) {
                            let _ = rs_tx.send((v["Width"].as_u64().unwrap_or(80) as u16, v["Height"].as_u64().unwrap_or(24) as u16)).await;
                        }
                    }
                    255 if v5 && b.get(1) == Some(&0) => in_tx = None,
                    _ => {}
                }
            }
        });
        let frame = |ch: u8, b: &[u8]| {
            let mut v = Vec::with_capacity(b.len() + 1);
            v.push(ch);
            v.extend_from_slice(b);
            AxMsg::Binary(Bytes::from(v))
        };
        tokio::pin!(run);
        let mut out_open = true;
        let mut err_open = true;
        let mut result = None;
        loop {
            tokio::select! {
                r = &mut run, if result.is_none() => result = Some(r),
                o = out_rx.recv(), if out_open => match o {
                    Some(b) => { if wtx.send(frame(1, &b)).await.is_err() { result = Some(Err(NodeError("client went away".into()))); break; } }
                    None => out_open = false,
                },
                e = err_rx.recv(), if err_open => match e {
                    Some(b) => { if wtx.send(frame(2, &b)).await.is_err() { result = Some(Err(NodeError("client went away".into()))); break; } }
                    None => err_open = false,
                },
            }
            if result.is_some() && !out_open && !err_open {
                break;
            }
        }
        let result = result.unwrap_or(Err(NodeError("stream ended".into())));
        let status = match result {
            Ok(code) => exit_status(code, &command),
            Err(e) => json!({"metadata": {}, "status": "Failure", "message": e.0, "reason": "InternalError"}),
        };
        let _ = wtx.send(frame(3, &serde_json::to_vec(&status).expect("json"))).await;
        let _ = wtx.send(normal_close()).await;
        reader.abort();
    })
}

/// The node-side endpoint over a [`NodeStreams`] implementation: serve it on
/// the node's InternalIP at the port its Node object names in
/// `status.daemonEndpoints.kubeletEndpoint.Port`.
pub fn node_router(handler: Arc<dyn NodeStreams>, token: &str) -> axum::Router {
    axum::Router::new()
        .route(
            "/containerLogs/{ns}/{pod}/{container}",
            axum::routing::get(node_logs),
        )
        .route(
            "/{verb}/{ns}/{pod}/{container}",
            axum::routing::get(node_exec).post(node_exec),
        )
        .route(
            "/portForward/{ns}/{pod}",
            axum::routing::get(node_port_forward),
        )
        .with_state(NodeState {
            handler,
            token: Arc::from(token),
        })
}

/// The streaming protocols kubectl offers over SPDY for exec and attach
/// (`X-Stream-Protocol-Version`), best first.
pub const SPDY_EXEC_PROTOCOLS: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
/// The port-forward protocol over SPDY (and tunnelled in a WebSocket).
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";

/// Whether a request asks for a SPDY/3.1 upgrade (kubectl before 1.30).
pub fn is_spdy(h: &HeaderMap) -> bool {
    h.get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case(crate::spdy::UPGRADE))
        })
}

fn spdy_offered(h: &HeaderMap) -> Vec<String> {
    h.get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_string()))
        .collect()
}

/// 101 Switching Protocols for SPDY with the chosen stream protocol.
fn spdy_switch(proto: &str) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::UPGRADE,
        HeaderValue::from_static(crate::spdy::UPGRADE),
    );
    if let Ok(v) = HeaderValue::from_str(proto) {
        h.insert("x-stream-protocol-version", v);
    }
    r
}

fn node_ws_request(
    url: &str,
    proto: Option<&str>,
    node_token: &str,
) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request, ApiError> {
    let mut nreq = url
        .into_client_request()
        .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?;
    if let Some(p) = proto {
        nreq.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_str(p)
                .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?,
        );
    }
    nreq.headers_mut().insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {node_token}"))
            .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?,
    );
    Ok(nreq)
}

/// `exec`/`attach` over SPDY: the client's streams (error, stdin, stdout,
/// stderr, resize) are bridged to the node's WebSocket channels (v5).
#[allow(clippy::too_many_arguments)] // the request, split as the router has it
async fn spdy_exec(
    host: &str,
    node_token: &str,
    verb: &str,
    ns: &str,
    pod: &str,
    container: &str,
    raw_query: &str,
    q: &Query,
    mut req: Request,
) -> Result<Response, ApiError> {
    let offered = spdy_offered(req.headers());
    let proto = SPDY_EXEC_PROTOCOLS
        .iter()
        .find(|p| offered.iter().any(|o| o == *p))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "none of the offered stream protocols {offered:?} is supported: {}",
                SPDY_EXEC_PROTOCOLS.join(", ")
            ))
        })?;
    let on = |k: &str| q.get(k).and_then(|v| crate::api::parse_bool(v)) == Some(true);
    let tty = on("tty");
    let want = [
        ("error", true),
        ("stdin", on("stdin")),
        ("stdout", on("stdout")),
        ("stderr", on("stderr") && !tty),
        (
            "resize",
            tty && *proto != "channel.k8s.io" && *proto != "v2.channel.k8s.io",
        ),
    ];
    let query = passthrough_query(raw_query, &["container"]);
    let url = format!("ws://{host}/{verb}/{ns}/{pod}/{container}?{query}");
    let (node_ws, _) = tokio_tungstenite::connect_async(node_ws_request(
        &url,
        Some("v5.channel.k8s.io"),
        node_token,
    )?)
    .await
    .map_err(|e| {
        ApiError::new(
            500,
            "InternalError",
            format!("error dialing node {host}: {e}"),
        )
    })?;
    let upgrade = hyper::upgrade::on(&mut req);
    let v4 = *proto == "v4.channel.k8s.io";
    tokio::spawn(async move {
        let Ok(up) = upgrade.await else { return };
        let (mut incoming, ctl) = crate::spdy::serve(hyper_util::rt::TokioIo::new(up));
        let mut got: std::collections::HashMap<String, crate::spdy::Stream> = Default::default();
        let all = |got: &std::collections::HashMap<String, crate::spdy::Stream>| {
            want.iter().all(|(k, w)| !w || got.contains_key(*k))
        };
        while !all(&got) {
            match tokio::time::timeout(std::time::Duration::from_secs(30), incoming.recv()).await {
                Ok(Some(s)) => {
                    let kind = s.header("streamtype").unwrap_or("").to_string();
                    got.insert(kind, s);
                }
                _ => {
                    tracing::debug!("spdy exec: the client's streams did not all come");
                    ctl.shutdown().await;
                    return;
                }
            }
        }
        let (mut ntx, mut nrx) = node_ws.split();
        let stdin = got.remove("stdin");
        let resize = got.remove("resize");
        let up = async move {
            let (mut sin, mut srs) = (stdin.map(|s| s.data), resize.map(|s| s.data));
            let mut pending = Vec::new();
            loop {
                tokio::select! {
                    d = async { sin.as_mut().expect("guarded").recv().await }, if sin.is_some() => match d {
                        Some(b) => {
                            let mut m = vec![0u8];
                            m.extend_from_slice(&b);
                            if ntx.send(TMsg::Binary(m.into())).await.is_err() { return; }
                        }
                        None => {
                            sin = None;
                            if ntx.send(TMsg::Binary(vec![255u8, 0].into())).await.is_err() { return; }
                        }
                    },
                    d = async { srs.as_mut().expect("guarded").recv().await }, if srs.is_some() => match d {
                        Some(b) => {
                            pending.extend_from_slice(&b);
                            let mut it = serde_json::Deserializer::from_slice(&pending).into_iter::<Value>();
                            let mut used = 0;
                            while let Some(Ok(v)) = it.next() {
                                used = it.byte_offset();
                                let mut m = vec![4u8];
                                m.extend_from_slice(&serde_json::to_vec(&v).expect("json"));
                                if ntx.send(TMsg::Binary(m.into())).await.is_err() { return; }
                            }
                            pending.drain(..used);
                        }
                        None => srs = None,
                    },
                    else => { std::future::pending::<()>().await }
                }
            }
        };
        let up = tokio::spawn(up);
        let out = got.get("stdout").map(|s| s.writer.clone());
        let err = got.get("stderr").map(|s| s.writer.clone());
        let mut status: Option<Value> = None;
        while let Some(Ok(m)) = nrx.next().await {
            let TMsg::Binary(b) = m else {
                if matches!(m, TMsg::Close(_)) {
                    break;
                }
                continue;
            };
            let Some((&ch, rest)) = b.split_first() else {
                continue;
            };
            let rest = b.slice(b.len() - rest.len()..);
            let _ = match ch {
                1 => match &out {
                    Some(w) => w.write(rest).await,
                    None => Ok(()),
                },
                2 => match &err {
                    Some(w) => w.write(rest).await,
                    None => Ok(()),
                },
                3 => {
                    status = serde_json::from_slice(&rest).ok();
                    Ok(())
                }
                _ => Ok(()),
            };
        }
        up.abort();
        for w in [&out, &err].into_iter().flatten() {
            let _ = w.close().await;
        }
        if let Some(e) = got.get("error") {
            let failed = status.as_ref().is_some_and(|s| s["status"] == "Failure");
            let body = match &status {
                Some(s) if v4 => serde_json::to_vec(s).expect("json"),
                Some(s) if failed => s["message"].as_str().unwrap_or("").as_bytes().to_vec(),
                _ => Vec::new(),
            };
            if !body.is_empty() {
                let _ = e.writer.write(Bytes::from(body)).await;
            }
            let _ = e.writer.close().await;
        }
        ctl.shutdown().await;
    });
    Ok(spdy_switch(proto))
}

/// Where a pod's node endpoint is (address:port).
fn pod_node(store: &Store, ns: &str, pod: &str) -> Result<String, ApiError> {
    let res = crate::resources::find("", "v1", "pods").expect("served");
    let p = store
        .get("pods", ns, pod)
        .ok_or_else(|| ApiError::not_found(res, pod))?;
    let first = p.value["spec"]["containers"][0]["name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let q: Query = [("container".to_string(), first)].into_iter().collect();
    locate(store, ns, pod, &q).map(|(h, _)| h)
}

/// `pods/portforward`: SPDY (`portforward.k8s.io`), or SPDY tunnelled in a
/// WebSocket (`SPDY/3.1+portforward.k8s.io`, kubectl 1.31 and later). Each
/// forwarded connection is a pair of streams (error, data) that share a
/// `requestID`; its data reaches the node as one WebSocket, which the node
/// connects to the port inside the pod's network namespace.
pub async fn port_forward(
    store: &Store,
    node_token: String,
    ns: &str,
    pod: &str,
    req: Request,
) -> Result<Response, ApiError> {
    let host = pod_node(store, ns, pod)?;
    let (ns, pod) = (ns.to_string(), pod.to_string());
    if is_spdy(req.headers()) {
        let offered = spdy_offered(req.headers());
        if !offered.iter().any(|o| o == PORT_FORWARD_PROTOCOL) {
            return Err(ApiError::bad_request(format!(
                "none of the offered stream protocols {offered:?} is supported: {PORT_FORWARD_PROTOCOL}"
            )));
        }
        let mut req = req;
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = upgrade.await {
                let (incoming, ctl) = crate::spdy::serve(hyper_util::rt::TokioIo::new(up));
                forward_streams(incoming, host, node_token, ns, pod).await;
                ctl.shutdown().await;
            }
        });
        return Ok(spdy_switch(PORT_FORWARD_PROTOCOL));
    }
    let tunnel = format!("{}{PORT_FORWARD_PROTOCOL}", crate::spdy::WS_TUNNEL_PREFIX);
    let offers_tunnel = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == tunnel);
    let (mut parts, _) = req.into_parts();
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(u) if offers_tunnel => u,
        _ => {
            return Err(ApiError::bad_request(format!(
                "port-forward requires a SPDY/3.1 upgrade ({PORT_FORWARD_PROTOCOL}) or a WebSocket with the subprotocol {tunnel}"
            )));
        }
    };
    Ok(upgrade
        .protocols([tunnel])
        .on_upgrade(move |ws: WebSocket| async move {
            // The WebSocket carries SPDY's bytes: bridge it to a byte pipe.
            let (ours, theirs) = tokio::io::duplex(64 * 1024);
            let (incoming, ctl) = crate::spdy::serve(theirs);
            let pump = tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let (mut rd, mut wr) = tokio::io::split(ours);
                let (mut wtx, mut wrx) = ws.split();
                let down = async {
                    let mut buf = vec![0u8; 32 * 1024];
                    while let Ok(n) = rd.read(&mut buf).await {
                        if n == 0
                            || wtx
                                .send(AxMsg::Binary(Bytes::copy_from_slice(&buf[..n])))
                                .await
                                .is_err()
                        {
                            break;
                        }
                    }
                    let _ = wtx.send(normal_close()).await;
                };
                let up = async {
                    while let Some(Ok(m)) = wrx.next().await {
                        match m {
                            AxMsg::Binary(b) => {
                                let written = wr.write_all(&b).await;
                                if written.is_err() {
                                    break;
                                }
                            }
                            AxMsg::Close(_) => break,
                            _ => {}
                        }
                    }
                    let _ = wr.shutdown().await;
                };
                tokio::select! { _ = down => {}, _ = up => {} }
            });
            forward_streams(incoming, host, node_token, ns, pod).await;
            ctl.shutdown().await;
            let _ = pump.await;
        }))
}

async fn forward_streams(
    mut incoming: mpsc::Receiver<crate::spdy::Stream>,
    host: String,
    node_token: String,
    ns: String,
    pod: String,
) {
    let mut errors: std::collections::HashMap<String, crate::spdy::Stream> = Default::default();
    while let Some(s) = incoming.recv().await {
        let id = s.header("requestid").unwrap_or("").to_string();
        match s.header("streamtype") {
            Some("error") => {
                errors.insert(id, s);
            }
            Some("data") => {
                let err = errors.remove(&id);
                let port = s.header("port").and_then(|p| p.parse::<u16>().ok());
                let (host, token, ns, pod) =
                    (host.clone(), node_token.clone(), ns.clone(), pod.clone());
                tokio::spawn(async move {
                    let r = match port {
                        Some(p) => forward_one(s, &host, &token, &ns, &pod, p).await,
                        None => Err("invalid port".to_string()),
                    };
                    if let Some(e) = err {
                        if let Err(msg) = r {
                            let _ = e.writer.write(Bytes::from(msg)).await;
                        }
                        let _ = e.writer.close().await;
                    }
                });
            }
            _ => {
                let _ = s.writer.reset().await;
            }
        }
    }
}

/// One forwarded connection: the data stream to and from the node.
async fn forward_one(
    mut s: crate::spdy::Stream,
    host: &str,
    token: &str,
    ns: &str,
    pod: &str,
    port: u16,
) -> Result<(), String> {
    let url = format!("ws://{host}/portForward/{ns}/{pod}?port={port}");
    let req = node_ws_request(&url, None, token).map_err(|_| "bad node request".to_string())?;
    let node = tokio_tungstenite::connect_async(req).await;
    let (node_ws, _) = match node {
        Ok(x) => x,
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            let body = r
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .trim()
                .to_string();
            let _ = s.writer.close().await;
            return Err(format!("error forwarding port {port} to pod {pod}: {body}"));
        }
        Err(e) => {
            let _ = s.writer.close().await;
            return Err(format!("error forwarding port {port} to pod {pod}: {e}"));
        }
    };
    let (mut ntx, mut nrx) = node_ws.split();
    let w = s.writer.clone();
    let up = async move {
        while let Some(b) = s.data.recv().await {
            if ntx.send(TMsg::Binary(b)).await.is_err() {
                return;
            }
        }
        // The client half-closed: an empty message says so to the node.
        let _ = ntx.send(TMsg::Binary(Bytes::new())).await;
        std::future::pending::<()>().await;
    };
    let down = async move {
        while let Some(Ok(m)) = nrx.next().await {
            match m {
                TMsg::Binary(b) if b.is_empty() => break,
                TMsg::Binary(b) => {
                    let written = w.write(b).await;
                    if written.is_err() {
                        return;
                    }
                }
                TMsg::Close(_) => break,
                _ => {}
            }
        }
        let _ = w.close().await;
    };
    tokio::select! { _ = down => {}, _ = up => {} }
    Ok(())
}

/// The node side of port-forward: one WebSocket per connection; binary
/// messages are the bytes, an empty one is a half-close.
async fn node_port_forward(
    State(st): State<NodeState>,
    Path((ns, pod)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    req: Request,
) -> Response {
    if !authorized(&st, req.headers()) {
        return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
    }
    let q = multi_query(raw.as_deref().unwrap_or(""));
    let Some(port) = q
        .iter()
        .find(|(k, _)| k == "port")
        .and_then(|(_, v)| v.parse::<u16>().ok())
    else {
        return (StatusCode::BAD_REQUEST, "a port is required").into_response();
    };
    let (mut parts, _) = req.into_parts();
    let Ok(upgrade) = WebSocketUpgrade::from_request_parts(&mut parts, &()).await else {
        return (StatusCode::BAD_REQUEST, "websocket upgrade required").into_response();
    };
    let tcp = match st.handler.port_forward(ns, pod, port).await {
        Ok(t) => t,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.0).into_response(),
    };
    upgrade.on_upgrade(move |ws: WebSocket| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut rd, mut wr) = tcp.into_split();
        let (mut wtx, mut wrx) = ws.split();
        let down = async {
            let mut buf = vec![0u8; 32 * 1024];
            while let Ok(n) = rd.read(&mut buf).await {
                if n == 0
                    || wtx
                        .send(AxMsg::Binary(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                {
                    break;
                }
            }
            let _ = wtx.send(AxMsg::Binary(Bytes::new())).await;
            let _ = wtx.send(normal_close()).await;
        };
        let up = async {
            while let Some(Ok(m)) = wrx.next().await {
                match m {
                    AxMsg::Binary(b) if b.is_empty() => break,
                    AxMsg::Binary(b) => {
                        let written = wr.write_all(&b).await;
                        if written.is_err() {
                            break;
                        }
                    }
                    AxMsg::Close(_) => break,
                    _ => {}
                }
            }
            let _ = wr.shutdown().await;
            std::future::pending::<()>().await;
        };
        tokio::select! { _ = down => {}, _ = up => {} }
    })
}
