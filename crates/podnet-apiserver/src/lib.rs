//! podnet-apiserver (see README.md and docs/apiserver.md): the lab's Kubernetes API server. A small, honest
//! implementation of the API a pod network needs (core namespaces, nodes,
//! pods, services, endpoints, events, configmaps, secrets, serviceaccounts;
//! EndpointSlices; NetworkPolicies; Deployments, ReplicaSets, DaemonSets,
//! StatefulSets; Jobs, CronJobs; Leases; events.k8s.io Events), with
//! namespace termination and deletion propagation as a controller manager
//! would carry them out, so the real `kubectl` and kube-rs work against it
//! unchanged.
//!
//! Run it in-process with [`Server::start`] (the lab supervisor does) or as
//! the `podnet-apiserver` binary. Controllers are not here: they are API
//! clients (kube-rs), or use [`Server::store`] in-process.

pub mod api;
pub mod auth;
pub mod discovery;
pub mod events;
pub mod kinds;
pub mod lifecycle;
pub mod managed;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod rbac;
pub mod resources;
pub mod secret;
pub mod security;
pub mod selector;
pub mod spdy;
pub mod store;
pub mod stream;
pub mod table;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;

use crate::api::{Api, ApiConfig, ApiError, json_response};
use crate::auth::{Authenticator, BoundTokens};
use crate::rbac::Rbac;
use crate::security::{Ca, Tokens};
use crate::store::Store;

/// Everything the server needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen (port 0 picks a free one).
    pub listen: SocketAddr,
    /// The state directory: store, CA, tokens, kubeconfig.
    pub state_dir: PathBuf,
    /// The service CIDR; its first address is the `kubernetes` Service.
    pub service_cidr: ipnet::Ipv4Net,
    /// NodePort range, inclusive.
    pub node_ports: (u16, u16),
    /// The address pods and nodes reach the server at (the `kubernetes`
    /// endpoints); None leaves them out.
    pub advertise_address: Option<IpAddr>,
    /// Extra names and addresses for the serving certificate.
    pub extra_sans: Vec<String>,
    /// The cluster's name in the kubeconfig.
    pub cluster_name: String,
    /// Serve TLS (the default); plain HTTP only for in-process embedding.
    pub tls: bool,
    /// How many events are kept for watches resuming from an older
    /// resourceVersion (older ones get 410 Gone and re-list).
    pub event_log_len: usize,
    /// How long a deleted namespace keeps its contents before they are
    /// deleted (see [`ApiConfig::namespace_deletion_delay`](api::ApiConfig)).
    pub namespace_deletion_delay: std::time::Duration,
}

impl Config {
    /// The lab defaults: 10.96.0.0/12, NodePorts 30000-32767, TLS.
    pub fn new(listen: SocketAddr, state_dir: PathBuf) -> Config {
        Config {
            listen,
            state_dir,
            service_cidr: "10.96.0.0/12".parse().expect("valid cidr"),
            node_ports: (30000, 32767),
            advertise_address: None,
            extra_sans: Vec::new(),
            cluster_name: "podnet".into(),
            tls: true,
            event_log_len: store::EVENT_LOG_LEN,
            namespace_deletion_delay: std::time::Duration::from_secs(2),
        }
    }
}

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed to open.
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    /// Credentials failed.
    #[error("security: {0}")]
    Security(#[from] security::SecurityError),
    /// Socket or file trouble.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// TLS configuration failed.
    #[error("tls: {0}")]
    Tls(String),
    /// Bootstrapping objects failed.
    #[error("bootstrap: {0}")]
    Bootstrap(String),
}

struct Shared {
    api: Arc<Api>,
    authn: Authenticator,
    rbac: Arc<Rbac>,
    node_token: String,
    server_url: String,
}

/// A running server.
pub struct Server {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// `https://addr` (or http).
    pub url: String,
    /// The admin kubeconfig it wrote.
    pub kubeconfig: PathBuf,
    /// The admin bearer token.
    pub admin_token: String,
    /// The CA certificate (PEM) clients trust.
    pub ca_pem: String,
    /// The token the server shows to node endpoints (`kubelet-client.token`).
    pub node_client_token: String,
    /// The API, for in-process controllers.
    pub api: Arc<Api>,
    /// Tokens, to issue node tokens in-process.
    pub tokens: Tokens,
    /// ServiceAccount tokens (what TokenRequest issues).
    pub service_account_tokens: BoundTokens,
    /// The authorizer (RBAC), for in-process checks.
    pub rbac: Arc<Rbac>,
    task: tokio::task::JoinHandle<()>,
    upkeep: tokio::task::JoinHandle<()>,
    rbac_task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Opens the store, makes or loads credentials, bootstraps built-in
    /// objects, binds and starts serving in the background.
    pub async fn start(config: Config) -> Result<Server, Error> {
        let dir = config.state_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| Error::Io(dir.display().to_string(), e))?;
        let store = Store::open_with(&dir, config.event_log_len)?;
        let ca = Ca::load_or_create(&dir)?;
        let tokens = Tokens::load_or_create(&dir)?;
        let bound = BoundTokens::load(&dir)?;
        let admin_token = tokens.token_of("kubernetes-admin").expect("made at load");
        let node_token_path = dir.join("kubelet-client.token");
        let node_client_token = match std::fs::read_to_string(&node_token_path) {
            Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => {
                let b: [u8; 24] = rand::random();
                let t: String = b.iter().map(|x| format!("{x:02x}")).collect();
                security::write_private(&node_token_path, t.as_bytes())?;
                t
            }
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| Error::Io(format!("bind {}", config.listen), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Io("local_addr".into(), e))?;
        let scheme = if config.tls { "https" } else { "http" };
        let host = if addr.ip().is_unspecified() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            addr.ip()
        };
        let url = match host {
            IpAddr::V6(h) => format!("{scheme}://[{h}]:{}", addr.port()),
            IpAddr::V4(h) => format!("{scheme}://{h}:{}", addr.port()),
        };
        let api = Arc::new(Api {
            store,
            cfg: ApiConfig {
                service_cidr: config.service_cidr,
                node_ports: config.node_ports,
                namespace_deletion_delay: config.namespace_deletion_delay,
            },
            ca_pem: ca.cert_pem.clone(),
        });
        api.bootstrap(config.advertise_address, addr.port())
            .await
            .map_err(|e| Error::Bootstrap(e.message))?;
        let rbac = Arc::new(Rbac::new());
        rbac.sync(&api.store).await;
        let kubeconfig = dir.join("admin.kubeconfig");
        security::write_kubeconfig(
            &kubeconfig,
            &config.cluster_name,
            &url,
            &ca.cert_pem,
            "kubernetes-admin",
            &admin_token,
        )?;
        let tls = if config.tls {
            let mut names: Vec<String> = vec![
                "localhost".into(),
                "127.0.0.1".into(),
                "::1".into(),
                "kubernetes".into(),
                "kubernetes.default".into(),
                "kubernetes.default.svc".into(),
                "kubernetes.default.svc.cluster.local".into(),
            ];
            names.push(
                std::net::Ipv4Addr::from(u32::from(config.service_cidr.network()) + 1).to_string(),
            );
            if !addr.ip().is_unspecified() {
                names.push(addr.ip().to_string());
            }
            if let Some(a) = config.advertise_address {
                names.push(a.to_string());
            }
            names.extend(config.extra_sans.iter().cloned());
            names.sort();
            names.dedup();
            let (cert, key) = ca.serving_cert(&names)?;
            Some(tls_acceptor(&cert, &key)?)
        } else {
            None
        };
        let shared = Arc::new(Shared {
            api: api.clone(),
            authn: Authenticator::new(tokens.clone(), bound.clone(), api.store.clone()),
            rbac: rbac.clone(),
            node_token: node_client_token.clone(),
            server_url: url.clone(),
        });
        let router = axum::Router::new().fallback(dispatch).with_state(shared);
        let task = tokio::spawn(accept_loop(listener, tls, router));
        let upkeep = tokio::spawn(api.clone().upkeep());
        // Render the OpenAPI documents off the request path.
        tokio::task::spawn_blocking(openapi::warm);
        let rbac_task = tokio::spawn(rbac.clone().run(api.store.clone()));
        tracing::info!(%url, state = %dir.display(), "podnet-apiserver serving");
        Ok(Server {
            addr,
            url,
            kubeconfig,
            admin_token,
            ca_pem: ca.cert_pem,
            node_client_token,
            api,
            tokens,
            service_account_tokens: bound,
            rbac,
            task,
            upkeep,
            rbac_task,
        })
    }

    /// Issues a token for ServiceAccount `namespace/name`, in-process, as
    /// `POST /api/v1/namespaces/{namespace}/serviceaccounts/{name}/token`
    /// does over HTTP: `spec` is a TokenRequestSpec (`audiences`,
    /// `expirationSeconds`, `boundObjectRef`); the answer is the
    /// TokenRequest with `status.token`.
    pub async fn request_token(
        &self,
        namespace: &str,
        name: &str,
        spec: &serde_json::Value,
    ) -> Result<serde_json::Value, ApiError> {
        auth::request_token(
            &self.api.store,
            &self.service_account_tokens,
            namespace,
            name,
            spec,
        )
        .await
    }

    /// The store, for in-process controllers.
    pub fn store(&self) -> &Arc<Store> {
        &self.api.store
    }

    /// Serves until the task ends (it does not, unless the runtime stops).
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    /// Waits for the accept loop without consuming the server.
    pub async fn wait_ref(&self) {
        while !self.task.is_finished() {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }

    /// Stops accepting and ends background work (open connections end with the runtime).
    pub fn shutdown(self) {
        self.task.abort();
        self.upkeep.abort();
        self.rbac_task.abort();
    }
}

/// Runs the server until the process ends.
pub async fn serve(config: Config) -> Result<(), Error> {
    let s = Server::start(config).await?;
    s.wait().await;
    Ok(())
}

fn tls_acceptor(cert_pem: &str, key_pem: &str) -> Result<tokio_rustls::TlsAcceptor, Error> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Tls(e.to_string()))?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| Error::Tls(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: axum::Router,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let svc = hyper_util::service::TowerToHyperService::new(router);
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let res = match tls {
                Some(acc) => match acc.accept(tcp).await {
                    Ok(s) => {
                        builder
                            .serve_connection_with_upgrades(TokioIo::new(s), svc)
                            .await
                    }
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "tls handshake failed");
                        return;
                    }
                },
                None => {
                    builder
                        .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                        .await
                }
            };
            if let Err(e) = res {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
}

fn ok_text(s: &'static str) -> Response {
    let mut r = Response::new(Body::from(s));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn dispatch(State(sh): State<Arc<Shared>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let raw_query = req.uri().query().unwrap_or("").to_string();
    let method = req.method().clone();
    match path.as_str() {
        "/healthz" | "/livez" | "/readyz" | "/healthz/ping" | "/livez/ping" | "/readyz/ping" => {
            return ok_text("ok");
        }
        "/version" | "/version/" => return json_response(StatusCode::OK, &discovery::version()),
        _ => {}
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let user = token.and_then(|t| sh.authn.authenticate(t));
    let Some(mut user) = user else {
        return ApiError::unauthorized().into_response();
    };
    if auth::wants_impersonation(req.headers()) {
        user = match auth::impersonate(&sh.rbac, &user, req.headers()) {
            Ok(u) => u,
            Err(e) => return e.into_response(),
        };
    }
    tracing::debug!(user = %user.name, %method, %path, "request");
    // system:masters is allowed everything before RBAC is asked (as
    // kube-apiserver's privileged group authorizer): nothing to derive.
    if !user.in_group(rbac::MASTERS) {
        let q = api::parse_query(Some(&raw_query));
        let mut attrs = auth::request_info(&method, &path, &q);
        let d = sh.rbac.authorize(&user, &attrs);
        if !d.allowed {
            return auth::forbidden(&user.name, &attrs, &d.reason).into_response();
        }
        // A WebSocket exec/attach is a GET; kube-apiserver also asks for
        // `create` on it, as for the POST that SPDY sends.
        let upgrade = req
            .headers()
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        if upgrade
            && attrs.verb == "get"
            && attrs.resource == "pods"
            && matches!(
                attrs.subresource.as_str(),
                "exec" | "attach" | "portforward"
            )
        {
            attrs.verb = "create".into();
            let d = sh.rbac.authorize(&user, &attrs);
            if !d.allowed {
                return auth::forbidden(&user.name, &attrs, &d.reason).into_response();
            }
        }
    }
    let headers = req.headers().clone();
    match path.trim_end_matches('/') {
        "/api" => {
            return if discovery::wants_aggregated(&headers) {
                discovery::aggregated(true)
            } else {
                json_response(
                    StatusCode::OK,
                    &discovery::api_versions(
                        sh.server_url
                            .trim_start_matches("https://")
                            .trim_start_matches("http://"),
                    ),
                )
            };
        }
        "/apis" => {
            return if discovery::wants_aggregated(&headers) {
                discovery::aggregated(false)
            } else {
                json_response(StatusCode::OK, &discovery::group_list())
            };
        }
        "/api/v1" => {
            return json_response(StatusCode::OK, &discovery::resource_list("").expect("core"));
        }
        "/openapi/v3" => return openapi::v3_root_response(),
        "/openapi/v2" => return openapi::v2_response(&headers),
        "" => {
            let paths = json!({"paths": ["/api", "/api/v1", "/apis", "/healthz", "/livez", "/openapi/v2", "/openapi/v3", "/readyz", "/version"]});
            return json_response(StatusCode::OK, &paths);
        }
        _ => {}
    }
    if let Some(key) = path.strip_prefix("/openapi/v3/") {
        return match openapi::v3_doc(key.trim_end_matches('/')) {
            Some(d) => openapi::doc_response(d, &headers),
            None => ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )
            .into_response(),
        };
    }
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["apis", g] => {
            return match discovery::group(g) {
                Some(v) => json_response(StatusCode::OK, &v),
                None => ApiError::new(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                )
                .into_response(),
            };
        }
        ["apis", g, "v1"] => {
            return match discovery::resource_list(g).filter(|_| !g.is_empty()) {
                Some(v) => json_response(StatusCode::OK, &v),
                None => ApiError::new(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                )
                .into_response(),
            };
        }
        _ => {}
    }
    let target = match api::route(&path) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let q = api::parse_query(Some(&raw_query));
    if target.res.verbs == ["create"] || target.sub.as_deref() == Some("token") {
        return answer_create_only(&sh, &user, &method, target, req).await;
    }
    if target.res.kind == "Pod"
        && let (Some(name), Some(sub @ ("log" | "exec" | "attach" | "portforward"))) =
            (target.name.clone(), target.sub.as_deref())
    {
        let ns = target.ns.clone().unwrap_or_default();
        let r = match (sub, &method) {
            ("log", &Method::GET) => {
                Some(stream::logs(&sh.api.store, &sh.node_token, &ns, &name, &q, &raw_query).await)
            }
            ("exec" | "attach", &Method::GET | &Method::POST) => Some(
                stream::exec_or_attach(
                    &sh.api.store,
                    sh.node_token.clone(),
                    sub,
                    &ns,
                    &name,
                    &q,
                    &raw_query,
                    req,
                )
                .await,
            ),
            ("portforward", &Method::GET | &Method::POST) => Some(
                stream::port_forward(&sh.api.store, sh.node_token.clone(), &ns, &name, req).await,
            ),
            _ => None,
        };
        if let Some(r) = r {
            return r.unwrap_or_else(IntoResponse::into_response);
        }
        return ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
        .into_response();
    }
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let rbac_write = target.res.group == resources::RBAC_GROUP && method != Method::GET;
    let r = sh.api.handle(&method, target, q, &headers, body).await;
    if rbac_write && r.status().is_success() {
        // Read-your-writes: the next request sees the new rules.
        sh.rbac.sync(&sh.api.store).await;
    }
    r
}

/// The request's body, up to `api::MAX_BODY`; kube-apiserver's 413 beyond
/// it, whether declared by Content-Length or found while reading.
async fn read_body(req: Request) -> Result<axum::body::Bytes, Response> {
    let too_large = || {
        ApiError::new(
            413,
            "RequestEntityTooLarge",
            format!("Request entity too large: limit is {}", api::MAX_BODY),
        )
        .into_response()
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > api::MAX_BODY) {
        return Err(too_large());
    }
    axum::body::to_bytes(req.into_body(), api::MAX_BODY)
        .await
        .map_err(|_| too_large())
}

/// Reviews and TokenRequest: POST only, answered, not stored.
async fn answer_create_only(
    sh: &Shared,
    user: &security::User,
    method: &Method,
    target: api::Target,
    req: Request,
) -> Response {
    if *method != Method::POST || (target.name.is_some() && target.sub.is_none()) {
        return ApiError::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
        )
        .into_response();
    }
    let headers = req.headers().clone();
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let r = match (&target.name, target.sub.as_deref()) {
        (Some(name), Some("token")) => {
            auth::token_request_endpoint(
                &sh.api.store,
                &sh.authn.bound,
                target.ns.as_deref().unwrap_or(""),
                name,
                &headers,
                &body,
            )
            .await
        }
        _ => auth::review(
            &sh.rbac,
            &sh.authn,
            user,
            target.res,
            target.ns.as_deref().filter(|_| target.res.namespaced),
            &headers,
            &body,
        ),
    };
    r.unwrap_or_else(IntoResponse::into_response)
}
