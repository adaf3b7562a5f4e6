//! The governor's HTTP endpoints: `/metrics`, `/healthz`, `/readyz`.
//!
//! They run on a thread and runtime of their own, so nothing a cycle does (planning, SQLite
//! writes, `syncfs`, a slow engine) can delay a scrape, and they only read what the governor
//! already measured: no request ever reaches the engine.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, CONTENT_TYPE};

/// Prometheus' classic text format, for clients that do not ask for OpenMetrics.
const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The routes.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(metrics)
}

async fn scrape(State(metrics): State<Arc<Metrics>>, headers: HeaderMap) -> impl IntoResponse {
    let open_metrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    if open_metrics {
        ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.encode())
    } else {
        (
            [(header::CONTENT_TYPE, TEXT_CONTENT_TYPE)],
            metrics.encode_text(),
        )
    }
}

/// Ready when the engine answered the governor's last attempt and the last state write
/// succeeded.
async fn ready(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    let mut problems = Vec::new();
    if !metrics.engine_up() {
        problems.push("the Docker engine is unreachable");
    }
    if !metrics.store_writable() {
        problems.push("the state database is not writable");
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", problems.join("; ")),
        )
    }
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds `addr` now (so a taken port fails the start with a clear message), then serves on a
/// thread of its own until `stop`. Returns the thread and the address bound (port 0 picks a
/// free port).
pub fn start(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> Result<(std::thread::JoinHandle<()>, SocketAddr)> {
    let listener = std::net::TcpListener::bind(addr).with_context(|| {
        format!("cannot listen on {addr} (`metrics.listen` in the config, or --listen)")
    })?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the HTTP runtime")?;
    let thread = std::thread::Builder::new()
        .name("dockgc-http".into())
        .spawn(move || {
            runtime.block_on(async move {
                let served = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => serve(l, metrics, async move { stop.cancelled().await }).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = served {
                    tracing::error!(error = %e, "the HTTP endpoints stopped");
                }
            });
        })
        .context("starting the HTTP thread")?;
    Ok((thread, bound))
}
