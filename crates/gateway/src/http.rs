//! The HTTP side, JSON throughout:
//! - `/healthz` (the process is alive) and `/readyz` (it accepts sessions and can reach the
//!   database), for probes and for people;
//! - `/.well-known/openid-configuration` and `/.well-known/jwks.json`: the gateway as the issuer
//!   of its own session tokens, so others can verify them;
//! - `GET /v1/auth/config`: what `phigate login` needs (the OIDC issuers and client ids);
//! - `POST /v1/auth/token`: exchanges an IdP token (`Authorization: Bearer ...`) for a
//!   short-lived gateway session token.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::server::Shared;

pub struct HttpServer {
    listener: TcpListener,
    shared: Arc<Shared>,
}

pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (HTTP): {e}"))
}

impl HttpServer {
    pub fn new(listener: TcpListener, shared: Arc<Shared>) -> HttpServer {
        HttpServer { listener, shared }
    }

    pub async fn serve(self, stop: CancellationToken) {
        let app = Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route(
                "/.well-known/openid-configuration",
                get(openid_configuration),
            )
            .route("/.well-known/jwks.json", get(jwks))
            .route("/v1/auth/config", get(auth_config))
            .route("/v1/auth/token", post(exchange_token))
            .with_state(self.shared);
        let result = axum::serve(
            self.listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
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

fn error(code: StatusCode, message: &str) -> (StatusCode, Json<Value>) {
    (code, Json(json!({"error": message})))
}

async fn openid_configuration(State(shared): State<Arc<Shared>>) -> (StatusCode, Json<Value>) {
    let Some(signer) = shared.auth.signer() else {
        return error(
            StatusCode::NOT_FOUND,
            "this gateway signs no tokens (no data_dir)",
        );
    };
    let base = signer.issuer.trim_end_matches('/');
    (
        StatusCode::OK,
        Json(json!({
            "issuer": signer.issuer,
            "jwks_uri": format!("{base}/.well-known/jwks.json"),
            "id_token_signing_alg_values_supported": ["EdDSA"],
            "subject_types_supported": ["public"],
            "response_types_supported": [],
        })),
    )
}

async fn jwks(State(shared): State<Arc<Shared>>) -> (StatusCode, Json<Value>) {
    match shared.auth.signer() {
        Some(s) => (StatusCode::OK, Json(s.jwks())),
        None => error(
            StatusCode::NOT_FOUND,
            "this gateway signs no tokens (no data_dir)",
        ),
    }
}

async fn auth_config(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(json!({
        "issuers": shared.auth.login_issuers(),
        "session_token_ttl_secs": shared.session_token_ttl.as_secs(),
        "postgres_port": shared.pg_addr.port(),
        "database": shared.upstream.database,
        "development": shared.development,
    }))
}

/// `Authorization: Bearer <IdP token>` → a gateway session token for the same individual.
async fn exchange_token(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
    let Some(signer) = shared.auth.signer() else {
        return error(
            StatusCode::NOT_FOUND,
            "this gateway signs no tokens (no data_dir)",
        );
    };
    // The IdP token goes in and a session token comes out: never in plaintext across a
    // network. The HTTP port speaks plain HTTP, so only local callers (or a TLS-terminating
    // proxy on this machine) may exchange.
    if !peer.ip().is_loopback() {
        return error(
            StatusCode::FORBIDDEN,
            "the token exchange is served to local callers only; put a TLS-terminating proxy on this machine in front of the HTTP port",
        );
    }
    let Some(token) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return error(
            StatusCode::UNAUTHORIZED,
            "send the identity provider's token as Authorization: Bearer <token>",
        );
    };
    let (subject, groups, idp) = match shared.auth.exchange(peer.ip(), token).await {
        Ok(v) => v,
        Err(e @ crate::auth::AuthError::RateLimited(_)) => {
            return error(StatusCode::TOO_MANY_REQUESTS, &e.to_string())
        }
        Err(e) => {
            return error(
                StatusCode::UNAUTHORIZED,
                &format!("authentication failed: {e}"),
            )
        }
    };
    let roles = shared.auth.roles_for(&subject, &groups, &idp);
    if roles.is_empty() {
        return error(
            StatusCode::FORBIDDEN,
            &format!("identity {subject} is not granted any role"),
        );
    }
    match signer.mint(&subject, &groups, &idp, shared.session_token_ttl) {
        Ok((token, expires)) => {
            tracing::info!(%peer, %subject, issuer = %idp, "session token issued");
            (
                StatusCode::OK,
                Json(json!({
                    "token": token,
                    "expires_at": humantime::format_rfc3339_seconds(expires).to_string(),
                    "expires_in": shared.session_token_ttl.as_secs(),
                    "subject": subject,
                    "roles": roles,
                })),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot sign a session token");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot sign a session token",
            )
        }
    }
}
