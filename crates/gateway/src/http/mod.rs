//! The HTTP side, JSON throughout:
//! - `/healthz` (the process is alive) and `/readyz` (it accepts sessions and can reach the
//!   database), for probes and for people (`health.rs`);
//! - `/.well-known/openid-configuration` and `/.well-known/jwks.json`: the gateway as the issuer
//!   of its own session tokens, so others can verify them (`tokens.rs`);
//! - `GET /v1/auth/config`: what `phigate login` needs (the OIDC issuers and client ids);
//! - `POST /v1/auth/token`: exchanges an IdP token (`Authorization: Bearer ...`) for a
//!   short-lived gateway session token;
//! - `GET /v1/audit/records`, `/v1/audit/report`, `/v1/audit/verify`: the audit log, for
//!   identities of `audit.reader_roles` (`Authorization: Bearer <token or API key>`) (`audit.rs`);
//! - `GET /v1/sessions`, `GET /v1/sessions/{id}`: recorded sessions and their replay, for the
//!   same identities (`sessions.rs`);
//! - `GET /v1/reviews`, `GET /v1/reviews/{id}`, `POST /v1/reviews/{id}/approve|deny`: held
//!   statements, for identities of `approvals.reviewer_roles` (or a rule's own reviewer roles;
//!   the requester under break-glass) (`reviews.rs`);
//! - `POST /v1/access-requests`: an identity asks for a role of `approvals.elevation_roles` for
//!   a while (decided like a review);
//! - `GET /v1/openapi.json`: this API, described;
//! - `/mcp`: the MCP server (Streamable HTTP) and `/.well-known/oauth-protected-resource`
//!   ([`crate::mcp`]);
//! - `/console/`: the reviewer and auditor web console, HTML (`console/`), and with
//!   `auth.development` the development issuer's sign-in page (`/dev/authorize`, `/dev/token`);
//! - `/saml/{name}/metadata`, `/saml/{name}/login`, `/saml/{name}/acs`, `/saml/{name}/finish` and
//!   `POST /v1/auth/saml/token`: the gateway as a SAML service provider for people signing in
//!   (`saml.rs`);
//! - `GET /metrics`: Prometheus text (sessions accepted, audit and recording writer counters,
//!   health).
//!
//! Who calls is established by extractors ([`extract`]); every failure is an [`ApiError`]
//! rendered as `{"error": "..."}` with its status code.

mod audit;
mod conn;
mod console;
pub mod error;
pub mod extract;
mod health;
mod reviews;
mod saml;
mod sessions;
mod tokens;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;

use crate::state::Shared;

pub struct HttpServer {
    listener: TcpListener,
    shared: Arc<Shared>,
}

pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (HTTP): {e}"))
}

/// Every route of the API.
fn router(shared: Arc<Shared>) -> Router {
    let console = console::router(shared.clone());
    let api = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route(
            "/.well-known/openid-configuration",
            get(tokens::openid_configuration),
        )
        .route("/.well-known/jwks.json", get(tokens::jwks))
        .route("/v1/auth/config", get(tokens::auth_config))
        .route("/v1/auth/token", post(tokens::exchange))
        .route("/v1/audit/records", get(audit::records))
        .route("/v1/audit/report", get(audit::report))
        .route("/v1/audit/verify", get(audit::verify))
        .route("/v1/sessions", get(sessions::list))
        .route("/v1/sessions/{id}", get(sessions::replay))
        .route("/metrics", get(health::metrics))
        .route("/v1/reviews", get(reviews::list))
        .route("/v1/reviews/{id}", get(reviews::show))
        .route("/v1/reviews/{id}/approve", post(reviews::approve))
        .route("/v1/reviews/{id}/deny", post(reviews::deny))
        .route("/v1/access-requests", post(reviews::access_request))
        .route("/v1/openapi.json", get(openapi))
        .merge(saml::routes())
        .merge(crate::mcp::routes(shared.clone()));
    let routes = match console {
        Some(c) => api.merge(c),
        None => api,
    };
    routes
        .layer(axum::middleware::from_fn_with_state(
            shared.listen.http_body_timeout,
            conn::body_deadline,
        ))
        .with_state(shared)
}

impl HttpServer {
    pub fn new(listener: TcpListener, shared: Arc<Shared>) -> HttpServer {
        HttpServer { listener, shared }
    }

    pub async fn serve(self, stop: CancellationToken) {
        let listen = &self.shared.listen;
        let limits = conn::Limits {
            max_connections: listen.http_max_connections,
            per_source: listen.http_connections_per_source,
            header_timeout: listen.http_header_timeout,
            body_timeout: listen.http_body_timeout,
        };
        let tls: Option<conn::TlsSource> = self.shared.listen.http_tls.then(|| {
            let shared = self.shared.clone();
            Box::new(move || shared.listen.tls.get().acceptor.clone()) as conn::TlsSource
        });
        let app = router(self.shared);
        conn::serve(self.listener, app, limits, tls, stop).await;
    }
}

/// The API, as OpenAPI 3.1 (docs/openapi.json).
async fn openapi() -> Json<Value> {
    Json(serde_json::from_str(include_str!("../../../../docs/openapi.json")).unwrap_or(Value::Null))
}
