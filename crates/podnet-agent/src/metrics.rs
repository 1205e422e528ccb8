//! The agent's `/metrics` endpoint (Prometheus text format). Why: "which
//! policy dropped this?" must be answerable from a scrape, per pod and
//! direction, without shelling into the node to read nft counters.
//!
//! Counters are read from the kernel on each scrape (the kernel is the only
//! place they exist) and attributed with the policy state last applied.

use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

/// Serves `GET /metrics`, `/healthz` and `/readyz` on `addr` (in the
/// node's network namespace) until the agent ends.
pub async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/drops", get(crate::drops::serve))
        .route("/drops/status", get(crate::drops::status))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics endpoint on {addr}"))?;
    tracing::info!(%addr, "serving /metrics");
    axum::serve(listener, router)
        .await
        .context("serving /metrics")
}

async fn metrics() -> impl IntoResponse {
    match tokio::task::spawn_blocking(crate::policy::metrics).await {
        Ok(Ok(mut text)) => {
            text.push_str(&crate::drops::metrics());
            text.push_str(&crate::drift::metrics());
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                text,
            )
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "reading policy counters");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/plain")],
                format!("reading policy counters: {e}\n"),
            )
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("{e}\n"),
        ),
    }
}

async fn readyz() -> impl IntoResponse {
    let (ready, phase) = crate::health::ready();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, format!("{phase}\n"))
}
