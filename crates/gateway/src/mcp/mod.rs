//! The MCP server: AI agents call phigate's tools (`list_tables`, `describe_table`, `query`,
//! `execute`, `explain`, `approval_wait`) over Streamable HTTP at `/mcp` on the HTTP
//! listener, or through `phigate mcp --stdio` (`stdio`), which relays to it.
//!
//! Not a second enforcement path: every tool call runs its statements through an internal
//! session of the gateway ([`client`]), started with the caller's own bearer credential as the
//! password and its role as the user, over an in-memory stream to the same session handler
//! as the wire; the session's audit records carry `channel: "mcp"` and the tool, given out of
//! band ([`crate::session::Origin`]).
//!
//! HTTP here ([`guard`], a middleware before the SDK): credentials from local callers only,
//! as for the rest of the API; no or a bad credential → 401 with
//! `WWW-Authenticate: Bearer resource_metadata=…` (`/.well-known/oauth-protected-resource`);
//! a browser `Origin` other than the gateway's own → 403. The SDK's types stay in [`edge`].
//!
//! Bounds: a request body is at most [`MAX_REQUEST`] (as the rest of the HTTP API); a `query` returns at most
//! [`tools::MAX_ROWS`] rows and [`tools::MAX_RESULT_BYTES`] bytes of values; an
//! `approval_wait` waits at most [`tools::MAX_WAIT_SECS`]; held executes per individual
//! [`held::MAX_PER_IDENTITY`]. Every call's session takes a seat under the identity's and the
//! role's session caps (`limits`), like any session.

pub mod client;
mod edge;
pub mod held;
pub mod judge;
mod refused;
pub mod stdio;
pub mod tools;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::state::Shared;

/// Largest MCP request body (the HTTP API's own cap on every body is the same).
pub const MAX_REQUEST: usize = 64 * 1024;

/// The caller of an MCP request, established by [`guard`] before the SDK sees it.
#[derive(Clone)]
pub struct Authed {
    pub caller: client::Caller,
    /// The identity in its default role (what `tools/list` shows).
    pub identity: crate::auth::Identity,
}

/// The MCP routes: `/mcp` and its protected-resource metadata.
pub fn routes(shared: Arc<Shared>) -> Router<Arc<Shared>> {
    let tools = tools::Tools {
        shared: shared.clone(),
        held: Arc::new(held::Held::default()),
        inflight: Arc::new(held::InFlight::default()),
    };
    let state = (shared.clone(), tools.inflight.clone());
    Router::new()
        .route_service(
            "/mcp",
            edge::service(tools, shared.lifecycle.force_close.clone()),
        )
        .layer(axum::middleware::from_fn_with_state(state, guard))
        .route(
            "/.well-known/oauth-protected-resource",
            get(protected_resource),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(protected_resource),
        )
}

/// The gateway's own base URL (what its HTTP listener is, as seen from this machine).
fn base(shared: &Shared) -> String {
    let scheme = if shared.listen.http_tls {
        "https"
    } else {
        "http"
    };
    match shared.listen.http_addr {
        Some(a) => format!("{scheme}://{a}"),
        None => format!("{scheme}://127.0.0.1"),
    }
}

/// RFC 9728: what this resource is and who issues tokens for it.
async fn protected_resource(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let base = base(&shared);
    let mut servers: Vec<String> = shared
        .auth
        .login_issuers()
        .iter()
        .filter_map(|i| i["issuer"].as_str().map(str::to_owned))
        .collect();
    if let Some(s) = shared.auth.signer() {
        servers.push(s.issuer.clone());
    }
    Json(json!({
        "resource": format!("{base}/mcp"),
        "authorization_servers": servers,
        "bearer_methods_supported": ["header"],
        "resource_name": "phigate",
    }))
}

fn refuse(shared: &Shared, status: StatusCode, message: &str) -> Response {
    let mut r = (status, Json(json!({ "error": message }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        let meta = format!(
            "Bearer resource_metadata=\"{}/.well-known/oauth-protected-resource\"",
            base(shared)
        );
        if let Ok(v) = HeaderValue::from_str(&meta) {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
    }
    r
}

/// Whether a browser's `Origin` is the gateway's own HTTP origin (agents send none).
fn origin_allowed(shared: &Shared, origin: &str) -> bool {
    let Some(port) = shared.listen.http_addr.map(|a| a.port()) else {
        return false;
    };
    ["127.0.0.1", "localhost", "[::1]"]
        .iter()
        .any(|h| origin == format!("http://{h}:{port}") || origin == format!("https://{h}:{port}"))
}

/// Before the SDK: the caller's address, its `Origin`, its bearer credential; and the
/// caller's `notifications/cancelled` (which the SDK's stateless mode drops): it cancels the
/// caller's own call of that id.
async fn guard(
    State((shared, inflight)): State<(Arc<Shared>, Arc<held::InFlight>)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let ok = origin.to_str().is_ok_and(|o| origin_allowed(&shared, o));
        if !ok {
            return refuse(
                &shared,
                StatusCode::FORBIDDEN,
                "this Origin may not call the MCP server",
            );
        }
    }
    if !shared.listen.credentials_from(peer.ip()) {
        return refuse(
            &shared,
            StatusCode::FORBIDDEN,
            "credentials are accepted from local callers only over plain HTTP; set listen.http_tls, or put a TLS-terminating proxy on this machine in front of the HTTP port",
        );
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let Some(token) = token else {
        return refuse(
            &shared,
            StatusCode::UNAUTHORIZED,
            "send a token or API key as Authorization: Bearer <credential>",
        );
    };
    let (policy, _) = shared.policy.store.snapshot();
    let is_role = |r: &str| policy.role(r).is_some();
    match shared
        .auth
        .authenticate(peer.ip(), "", &token, &is_role)
        .await
    {
        Ok(identity) => {
            let caller = client::Caller {
                token: Arc::from(token.as_str()),
                role: String::new(),
                peer,
            };
            let (parts, body) = req.into_parts();
            let Ok(bytes) = axum::body::to_bytes(body, MAX_REQUEST).await else {
                return refuse(
                    &shared,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body too large",
                );
            };
            if let Some(id) = cancelled_request(&bytes) {
                let found = inflight.cancel(&identity, id);
                tracing::info!(subject = %identity.subject, found, "MCP call cancelled by its caller");
                return StatusCode::ACCEPTED.into_response();
            }
            let mut req = Request::from_parts(parts, axum::body::Body::from(bytes));
            req.extensions_mut().insert(Authed { caller, identity });
            next.run(req).await
        }
        Err(e) => {
            failed_login(&shared, peer, &e);
            refuse(
                &shared,
                StatusCode::UNAUTHORIZED,
                &format!("authentication failed: {e}"),
            )
        }
    }
}

/// The request id a `notifications/cancelled` names (as JSON text), if the body is one.
fn cancelled_request(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    if v.get("method")?.as_str()? != "notifications/cancelled" || v.get("id").is_some() {
        return None;
    }
    let id = v.get("params")?.get("requestId")?;
    (id.is_string() || id.is_number()).then(|| id.to_string())
}

/// A refused credential at `/mcp`: counted and audited like one on the HTTP API.
fn failed_login(shared: &Shared, peer: SocketAddr, e: &crate::auth::AuthError) {
    shared.metrics.login_failed(e.kind(), "http");
    if let Some(audit) = &shared.audit.log {
        audit.submit(phigate_audit::Pending::Event(
            phigate_audit::Event::LoginFailed {
                client_addr: peer.to_string(),
                user: "mcp".into(),
                reason: e.to_string(),
                via: Some("mcp".into()),
                subject: e.subject().map(str::to_owned),
            },
        ));
    }
}

/// How a column of `table` (`schema.table`) reaches `role`: `none` (as stored, or not PHI),
/// `tokenized`, `masked` (redacted, partial, generalized, NULL).
pub fn protection(
    shared: &Shared,
    role: &phigate_policy::Role,
    table: &str,
) -> impl Fn(&str) -> &'static str {
    let login = role
        .masked
        .then(|| {
            shared
                .policy
                .masked
                .read()
                .ok()
                .and_then(|m| m.get(&role.name).cloned())
        })
        .flatten();
    let computed = login
        .as_ref()
        .and_then(|l| l.unwritable.get(table).cloned())
        .unwrap_or_default();
    let guarded = login
        .as_ref()
        .and_then(|l| l.predicate_guarded.get(table).cloned())
        .unwrap_or_default();
    let masked_role = role.masked;
    move |column: &str| {
        let has = |v: &Vec<String>| v.iter().any(|c| c == column);
        if !masked_role || !has(&computed) {
            "none"
        } else if has(&guarded) {
            "masked"
        } else {
            "tokenized"
        }
    }
}

/// Whether `tools/list` shows `execute` to `identity`: its role has a grant that changes
/// something, or a rule may hold its statements for approval.
pub fn may_execute(shared: &Shared, identity: &crate::auth::Identity) -> bool {
    let (policy, _) = shared.policy.store.snapshot();
    policy
        .role(&identity.role.0)
        .is_some_and(|r| r.may_change() || policy.holds_for(&r.name))
}
