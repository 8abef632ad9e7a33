//! The HTTP side, JSON throughout:
//! - `/healthz` (the process is alive) and `/readyz` (it accepts sessions and can reach the
//!   database), for probes and for people;
//! - `/.well-known/openid-configuration` and `/.well-known/jwks.json`: the gateway as the issuer
//!   of its own session tokens, so others can verify them;
//! - `GET /v1/auth/config`: what `phigate login` needs (the OIDC issuers and client ids);
//! - `POST /v1/auth/token`: exchanges an IdP token (`Authorization: Bearer ...`) for a
//!   short-lived gateway session token;
//! - `GET /v1/audit/records`, `/v1/audit/report`, `/v1/audit/verify`: the audit log, for
//!   identities of `audit.reader_roles` (`Authorization: Bearer <token or API key>`);
//! - `GET /v1/sessions`, `GET /v1/sessions/{id}`: recorded sessions and their replay, for the
//!   same identities;
//! - `GET /v1/reviews`, `GET /v1/reviews/{id}`, `POST /v1/reviews/{id}/approve|deny`: held
//!   statements, for identities of `approvals.reviewer_roles` (or a rule's own reviewer roles;
//!   the requester under break-glass);
//! - `POST /v1/access-requests`: an identity asks for a role of `approvals.elevation_roles` for
//!   a while (decided like a review);
//! - `GET /v1/openapi.json`: this API, described;
//! - `GET /metrics`: Prometheus text (sessions accepted, audit and recording writer counters,
//!   health).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Query, State};
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
            .route("/v1/audit/records", get(audit_records))
            .route("/v1/audit/report", get(audit_report))
            .route("/v1/audit/verify", get(audit_verify))
            .route("/v1/sessions", get(sessions_list))
            .route("/v1/sessions/{id}", get(session_replay))
            .route("/metrics", get(metrics))
            .route("/v1/reviews", get(reviews_list))
            .route("/v1/reviews/{id}", get(review_show))
            .route("/v1/reviews/{id}/approve", post(review_approve))
            .route("/v1/reviews/{id}/deny", post(review_deny))
            .route("/v1/access-requests", post(access_request))
            .route("/v1/openapi.json", get(openapi))
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
    let audit_ok = shared.audit.as_ref().is_none_or(|a| a.healthy());
    let ready = accepting && reachable && audit_ok;
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
            "audit": match &shared.audit {
                None => "disabled",
                Some(a) if a.healthy() => "ok",
                Some(_) => "failing",
            },
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

type Reply = (StatusCode, Json<Value>);

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// The caller's identity, if its bearer credential is valid for one of `roles`. Credentials
/// travel in the Authorization header of plain HTTP: served to local callers only (a
/// TLS-terminating proxy on this machine for remote ones).
async fn authorize(
    shared: &Shared,
    peer: SocketAddr,
    headers: &HeaderMap,
    roles: &[String],
    what: &str,
) -> Result<crate::auth::Identity, Reply> {
    if !peer.ip().is_loopback() {
        return Err(error(
            StatusCode::FORBIDDEN,
            "credentials are accepted from local callers only; put a TLS-terminating proxy on this machine in front of the HTTP port",
        ));
    }
    let Some(token) = bearer(headers) else {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "send a token or API key as Authorization: Bearer <credential>",
        ));
    };
    if roles.is_empty() {
        return Err(error(
            StatusCode::FORBIDDEN,
            &format!("no role may {what} over HTTP"),
        ));
    }
    let (policy, _) = shared.policy.snapshot();
    let is_role = |r: &str| policy.role(r).is_some();
    for role in roles {
        match shared
            .auth
            .authenticate_api(peer.ip(), role, token, &is_role)
            .await
        {
            Ok(id) => {
                tracing::info!(%peer, subject = %id.subject, role = %id.role, what, "HTTP API call");
                return Ok(id);
            }
            Err(
                crate::auth::AuthError::RoleNotAllowed { .. }
                | crate::auth::AuthError::NoRole { .. },
            ) => continue,
            Err(e) => {
                return Err(error(
                    StatusCode::UNAUTHORIZED,
                    &format!("authentication failed: {e}"),
                ))
            }
        }
    }
    Err(error(
        StatusCode::FORBIDDEN,
        &format!("this identity may not {what}"),
    ))
}

/// The caller must hold a credential for one of `audit.reader_roles`: the log's directory and
/// who the caller is.
async fn audit_reader(
    shared: &Shared,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<(std::path::PathBuf, crate::auth::Identity), Reply> {
    let Some(dir) = shared.audit_dir.clone() else {
        return Err(error(StatusCode::NOT_FOUND, "the audit log is disabled"));
    };
    let who = authorize(
        shared,
        peer,
        headers,
        &shared.audit_reader_roles,
        "read the audit log (audit.reader_roles)",
    )
    .await?;
    Ok((dir, who))
}

async fn reviewer(
    shared: &Shared,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<crate::auth::Identity, Reply> {
    let (policy, _) = shared.policy.snapshot();
    let mut roles = shared.approvals.reviewer_roles.clone();
    roles.extend(policy.rule_reviewer_roles().map(str::to_owned));
    authorize(
        shared,
        peer,
        headers,
        &roles,
        "review held statements (approvals.reviewer_roles or a rule's reviewer_roles)",
    )
    .await
}

/// `GET /v1/reviews?all=true`: pending reviews (all recent ones with `all`).
async fn reviews_list(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Reply {
    let who = match reviewer(&shared, peer, &headers).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let all = q.get("all").is_some_and(|v| v == "true" || v == "1");
    // Only the reviews this reviewer may decide: a statement's exact text may carry PHI.
    let Ok(list) = shared.reviews.list(all) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the review store is unavailable",
        );
    };
    let mine: Vec<_> = list
        .into_iter()
        .filter(|r| r.reviewer_roles.contains(&who.role.0))
        .collect();
    (StatusCode::OK, Json(json!({ "reviews": mine })))
}

async fn review_show(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Reply {
    let who = match reviewer(&shared, peer, &headers).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    match shared.reviews.get(&id).ok().flatten() {
        Some(r) if r.reviewer_roles.contains(&who.role.0) => (StatusCode::OK, Json(json!(r))),
        _ => error(StatusCode::NOT_FOUND, &format!("no review {id} for you")),
    }
}

#[derive(serde::Deserialize)]
struct DecisionBody {
    reason: String,
    #[serde(default)]
    break_glass: bool,
}

async fn decide(
    shared: &Shared,
    peer: SocketAddr,
    headers: &HeaderMap,
    id: &str,
    approve: bool,
    body: &[u8],
) -> Reply {
    let Ok(d) = serde_json::from_slice::<DecisionBody>(body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "send JSON {\"reason\": \"...\"} (and \"break_glass\": true for emergency self-approval)",
        );
    };
    // Break-glass: the requester approves their own statement; anyone else decides as a
    // reviewer of some rule.
    let who = if d.break_glass {
        authorize(
            shared,
            peer,
            headers,
            &shared.approvals.break_glass_roles,
            "approve your own statement under break-glass (approvals.break_glass_roles)",
        )
        .await
    } else {
        // The review's own reviewer roles (its rule's, else approvals.reviewer_roles).
        let Some(review) = shared.reviews.get(id).ok().flatten() else {
            return error(StatusCode::NOT_FOUND, &format!("no review {id}"));
        };
        authorize(
            shared,
            peer,
            headers,
            &review.reviewer_roles,
            "decide this review (its rule's reviewer roles)",
        )
        .await
    };
    let who = match who {
        Ok(i) => i,
        Err(r) => return r,
    };
    let reason = d.reason.trim();
    if reason.is_empty() || reason.len() > 2000 {
        return error(
            StatusCode::BAD_REQUEST,
            "a reason (1 to 2000 characters) is required",
        );
    }
    if d.break_glass && reason.chars().count() < 20 {
        return error(
            StatusCode::BAD_REQUEST,
            "break-glass needs a justification of at least 20 characters",
        );
    }
    let decision = crate::approvals::Decision {
        reviewer: &who.subject.0,
        role: &who.role.0,
        approve,
        reason,
        break_glass: d.break_glass,
        break_glass_roles: &shared.approvals.break_glass_roles,
    };
    match shared.reviews.decide(id, &decision) {
        Ok(done) => {
            if d.break_glass {
                tracing::warn!(review = %id, by = %who.subject, "BREAK-GLASS approval");
            } else {
                tracing::info!(review = %id, by = %who.subject, approve, last = done.last, "review decided");
            }
            (StatusCode::OK, Json(json!(done.review)))
        }
        Err(e @ crate::approvals::DecideError::NotFound(_)) => {
            error(StatusCode::NOT_FOUND, &e.to_string())
        }
        Err(
            e @ (crate::approvals::DecideError::OwnStatement(_)
            | crate::approvals::DecideError::WrongRole { .. }
            | crate::approvals::DecideError::BreakGlassRefused),
        ) => error(StatusCode::FORBIDDEN, &e.to_string()),
        Err(e @ crate::approvals::DecideError::Store(_)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
        Err(e) => error(StatusCode::CONFLICT, &e.to_string()),
    }
}

async fn review_approve(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
    body: axum::body::Bytes,
) -> Reply {
    decide(&shared, peer, &headers, &id, true, &body).await
}

async fn review_deny(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
    body: axum::body::Bytes,
) -> Reply {
    decide(&shared, peer, &headers, &id, false, &body).await
}

#[derive(serde::Deserialize)]
struct AccessRequestBody {
    role: String,
    minutes: u64,
    reason: String,
}

/// `POST /v1/access-requests` `{"role", "minutes", "reason"}`: the caller asks to act as a
/// role of `approvals.elevation_roles` for a while; a reviewer decides it like a held
/// statement (`/v1/reviews/{id}/approve`). Approved, the caller may log in with that role
/// until it runs out (the session ends then).
async fn access_request(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Reply {
    let (policy, _) = shared.policy.snapshot();
    let who = match authorize(
        &shared,
        peer,
        &headers,
        &policy.role_names(),
        "ask for a role",
    )
    .await
    {
        Ok(i) => i,
        Err(r) => return r,
    };
    if matches!(
        who.credential,
        crate::auth::Credential::StaticToken | crate::auth::Credential::ApiKey { .. }
    ) {
        return error(
            StatusCode::FORBIDDEN,
            "API keys and static tokens carry a fixed list of roles and are never elevated: ask with your own sign-in (phigate login)",
        );
    }
    let Ok(req) = serde_json::from_slice::<AccessRequestBody>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "send JSON {\"role\": \"...\", \"minutes\": N, \"reason\": \"...\"}",
        );
    };
    let approvals = &shared.approvals;
    if !approvals.elevation_roles.contains(&req.role) {
        return error(
            StatusCode::FORBIDDEN,
            "that role cannot be asked for (approvals.elevation_roles)",
        );
    }
    if req.minutes == 0 || req.minutes > approvals.max_elevation_minutes {
        return error(
            StatusCode::BAD_REQUEST,
            &format!(
                "minutes is 1 to {} (approvals.max_elevation_minutes)",
                approvals.max_elevation_minutes
            ),
        );
    }
    let reason = req.reason.trim();
    if reason.chars().count() < 10 || reason.len() > 2000 {
        return error(
            StatusCode::BAD_REQUEST,
            "a reason of 10 to 2000 characters is required",
        );
    }
    let opened = shared
        .reviews
        .open_elevation(
            shared.audit.as_ref(),
            crate::approvals::ElevationRequest {
                issuer: &who.issuer,
                requester: &who.subject.0,
                current_role: &who.role.0,
                role: &req.role,
                minutes: req.minutes,
                reason,
                timeout: Duration::from_secs(approvals.timeout_secs.max(3600)),
                reviewer_roles: approvals.reviewer_roles.clone(),
            },
        )
        .await;
    let review = match opened {
        Ok(r) => r,
        Err(crate::approvals::OpenError::Audit) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the audit log cannot be written",
            )
        }
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    tracing::info!(review = %review.id, subject = %who.subject, role = %req.role, minutes = req.minutes, "access requested");
    (StatusCode::CREATED, Json(json!(review)))
}

/// The API, as OpenAPI 3.1 (docs/openapi.json).
async fn openapi() -> Json<Value> {
    Json(serde_json::from_str(include_str!("../../../docs/openapi.json")).unwrap_or(Value::Null))
}

fn filter_from(q: &std::collections::HashMap<String, String>) -> phigate_audit::query::Filter {
    let get = |k: &str| q.get(k).cloned();
    phigate_audit::query::Filter {
        subject: get("subject"),
        role: get("role"),
        table: get("table"),
        column: get("column"),
        since: get("since"),
        until: get("until"),
        decision: get("decision"),
        session: get("session"),
        kind: get("type"),
    }
}

/// `GET /v1/audit/records?subject=&role=&table=&column=&since=&until=&decision=&session=&type=&limit=`
async fn audit_records(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Reply {
    let (dir, _) = match audit_reader(&shared, peer, &headers).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let filter = filter_from(&q);
    let limit = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(1000usize)
        .min(100_000);
    let found =
        tokio::task::spawn_blocking(move || phigate_audit::query::search(&dir, &filter, limit))
            .await;
    match found {
        Ok(Ok(records)) => (StatusCode::OK, Json(json!({"records": records}))),
        _ => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot read the audit log",
        ),
    }
}

/// `GET /v1/sessions?subject=&role=&since=&until=&table=`: as `phigate sessions list --json`.
async fn sessions_list(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Reply {
    let (dir, _) = match audit_reader(&shared, peer, &headers).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let filter = crate::recording::replay::ListFilter {
        subject: q.get("subject").cloned(),
        role: q.get("role").cloned(),
        since: q.get("since").cloned(),
        until: q.get("until").cloned(),
        table: q.get("table").cloned(),
    };
    let found =
        tokio::task::spawn_blocking(move || crate::recording::replay::list(&dir, &filter)).await;
    match found {
        Ok(Ok(sessions)) => (StatusCode::OK, Json(json!({"sessions": sessions}))),
        _ => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot read the audit log",
        ),
    }
}

/// `GET /v1/sessions/{id}`: the session's replay, as `phigate replay --json`. Encrypted
/// recordings are decrypted only for identities of `recording.decrypt_roles`; every replay is
/// audited.
async fn session_replay(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Reply {
    let (dir, who) = match audit_reader(&shared, peer, &headers).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let Some(recorder) = shared.recorder.clone() else {
        return error(StatusCode::NOT_FOUND, "session recordings are off");
    };
    let may_decrypt = recorder.decrypt_roles.contains(&who.role.0);
    let session = id.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        let key = recorder.key().filter(|_| may_decrypt);
        crate::recording::replay::load(&dir, recorder.dir(), &id, key)
    })
    .await;
    use crate::recording::replay::ReplayError;
    match loaded {
        Ok(Ok(replay)) => {
            if let Some(audit) = &shared.audit {
                let done = audit.write(phigate_audit::Pending::Event(
                    phigate_audit::Event::RecordingReplayed {
                        session,
                        subject: who.subject.0.clone(),
                        role: who.role.0.clone(),
                        decrypted: replay.recording.encrypted,
                    },
                ));
                // Nothing is shown that the audit log does not know was shown.
                if done.await.is_err() {
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the audit log cannot be written",
                    );
                }
            }
            (StatusCode::OK, Json(json!(replay)))
        }
        Ok(Err(ReplayError::Read(e))) if e.contains("encrypted") && !may_decrypt => error(
            StatusCode::FORBIDDEN,
            "the recording is encrypted and your role may not have it decrypted (recording.decrypt_roles)",
        ),
        Ok(Err(e @ (ReplayError::UnknownSession(_) | ReplayError::NoRecording(_)))) => {
            error(StatusCode::NOT_FOUND, &e.to_string())
        }
        Ok(Err(e @ ReplayError::Altered { .. })) => error(StatusCode::CONFLICT, &e.to_string()),
        _ => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot read the recording",
        ),
    }
}

/// `GET /v1/audit/report?since=&until=`
async fn audit_report(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Reply {
    let (dir, _) = match audit_reader(&shared, peer, &headers).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let (since, until) = (q.get("since").cloned(), q.get("until").cloned());
    let report = tokio::task::spawn_blocking(move || {
        phigate_audit::query::report(&dir, since.as_deref(), until.as_deref())
    })
    .await;
    match report {
        Ok(Ok(r)) => (StatusCode::OK, Json(json!(r))),
        _ => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot read the audit log",
        ),
    }
}

/// `GET /v1/audit/verify`: the same proof as `phigate audit verify`, with the key beside the
/// log and the configured mirror.
async fn audit_verify(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Reply {
    let (dir, _) = match audit_reader(&shared, peer, &headers).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let mirrors: Vec<_> = shared.audit_mirror.iter().cloned().collect();
    let recordings = shared.recorder.as_ref().map(|r| r.dir().to_path_buf());
    let result = tokio::task::spawn_blocking(move || {
        let key = phigate_audit::PublicKey::load(&dir.join(phigate_audit::store::PUBLIC_KEY))?;
        Ok::<_, std::io::Error>(phigate_audit::verify::verify(
            &dir,
            &key,
            &mirrors,
            recordings.as_deref(),
        ))
    })
    .await;
    match result {
        Ok(Ok(Ok(report))) => (StatusCode::OK, Json(json!({"ok": true, "report": report}))),
        Ok(Ok(Err(failure))) => (
            StatusCode::OK,
            Json(json!({"ok": false, "failure": failure})),
        ),
        _ => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot read the audit log",
        ),
    }
}

/// Prometheus text format.
async fn metrics(State(shared): State<Arc<Shared>>) -> String {
    let mut out = String::new();
    if let Some(a) = &shared.audit {
        let s = a.stats();
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        out.push_str(&format!(
            "# TYPE phigate_audit_healthy gauge\nphigate_audit_healthy {}\n\
             # TYPE phigate_audit_records_total counter\nphigate_audit_records_total {}\n\
             # TYPE phigate_audit_fsyncs_total counter\nphigate_audit_fsyncs_total {}\n\
             # TYPE phigate_audit_write_failures_total counter\nphigate_audit_write_failures_total {}\n\
             # TYPE phigate_audit_checkpoints_total counter\nphigate_audit_checkpoints_total {}\n\
             # TYPE phigate_audit_bytes_total counter\nphigate_audit_bytes_total {}\n\
             # TYPE phigate_audit_last_seq gauge\nphigate_audit_last_seq {}\n",
            u8::from(a.healthy()),
            get(&s.records),
            get(&s.fsyncs),
            get(&s.failures),
            get(&s.checkpoints),
            get(&s.bytes),
            get(&s.last_seq),
        ));
    }
    if let Some(r) = &shared.recorder {
        let s = &r.stats;
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        out.push_str(&format!(
            "# TYPE phigate_recordings_total counter\nphigate_recordings_total {}\n\
             # TYPE phigate_recordings_skipped_total counter\nphigate_recordings_skipped_total {}\n\
             # TYPE phigate_recording_bytes_total counter\nphigate_recording_bytes_total {}\n\
             # TYPE phigate_recording_dropped_events_total counter\nphigate_recording_dropped_events_total {}\n\
             # TYPE phigate_recording_write_failures_total counter\nphigate_recording_write_failures_total {}\n",
            get(&s.sessions),
            get(&s.skipped),
            get(&s.bytes),
            get(&s.dropped_events),
            get(&s.failures),
        ));
    }
    out.push_str(&format!(
        "# TYPE phigate_accepting gauge\nphigate_accepting {}\n",
        u8::from(shared.accepting.load(Ordering::Acquire))
    ));
    out
}
