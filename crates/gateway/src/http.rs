//! The HTTP side: `/healthz` (the process is alive) and `/readyz` (it accepts sessions and can
//! reach the database). JSON bodies, for probes and for people.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::server::Shared;

pub struct HttpServer {
    pub local_addr: SocketAddr,
    listener: TcpListener,
    shared: Arc<Shared>,
}

pub async fn bind(addr: SocketAddr, shared: Arc<Shared>) -> anyhow::Result<HttpServer> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (HTTP): {e}"))?;
    Ok(HttpServer {
        local_addr: listener.local_addr()?,
        listener,
        shared,
    })
}

impl HttpServer {
    pub async fn serve(self, stop: CancellationToken) {
        let app = Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(self.shared);
        let result = axum::serve(self.listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "HTTP server failed");
        }
    }
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(shared): State<Arc<Shared>>) -> (StatusCode, Json<Value>) {
    let accepting = shared.accepting.load(Ordering::Acquire);
    let addr = format!("{}:{}", shared.upstream.host, shared.upstream.port);
    let reachable = matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(&addr)
        )
        .await,
        Ok(Ok(_))
    );
    let ready = accepting && reachable;
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(json!({
            "status": if ready { "ready" } else { "not ready" },
            "accepting": accepting,
            "upstream": if reachable { "reachable" } else { "unreachable" },
        })),
    )
}
