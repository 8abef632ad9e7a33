//! The gateway as an issuer of its own session tokens: `/.well-known/openid-configuration` and
//! `/.well-known/jwks.json` (so others can verify them), `GET /v1/auth/config` (what
//! `phigate login` needs) and `POST /v1/auth/token` (an IdP token in, a short-lived gateway
//! session token out).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::extract::bearer;
use crate::state::Shared;

fn signer(shared: &Shared) -> ApiResult<&crate::auth::signer::Signer> {
    shared
        .auth
        .signer()
        .map(|s| &**s)
        .ok_or_else(|| ApiError::not_found("this gateway signs no tokens (no data_dir)"))
}

pub async fn openid_configuration(State(shared): State<Arc<Shared>>) -> ApiResult<Json<Value>> {
    let signer = signer(&shared)?;
    let base = signer.issuer.trim_end_matches('/');
    let mut doc = json!({
        "issuer": signer.issuer,
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "id_token_signing_alg_values_supported": ["EdDSA"],
        "subject_types_supported": ["public"],
        "response_types_supported": [],
    });
    // The development issuer signs the web console in through its own code flow.
    if shared.tokens.development && shared.started.console.enabled {
        doc["authorization_endpoint"] = json!(format!("{base}/dev/authorize"));
        doc["token_endpoint"] = json!(format!("{base}/dev/token"));
        doc["response_types_supported"] = json!(["code"]);
        doc["grant_types_supported"] = json!(["authorization_code"]);
        doc["code_challenge_methods_supported"] = json!(["S256"]);
        doc["token_endpoint_auth_methods_supported"] = json!(["none"]);
        doc["scopes_supported"] = json!(["openid"]);
    }
    Ok(Json(doc))
}

pub async fn jwks(State(shared): State<Arc<Shared>>) -> ApiResult<Json<Value>> {
    Ok(Json(signer(&shared)?.jwks()))
}

pub async fn auth_config(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(json!({
        "issuers": shared.auth.login_issuers(),
        "session_token_ttl_secs": shared.tokens.session_ttl.as_secs(),
        "postgres_port": shared.listen.pg_addr.port(),
        "database": shared.upstream.database,
        "development": shared.tokens.development,
    }))
}

/// `Authorization: Bearer <IdP token>` → a gateway session token for the same individual.
pub async fn exchange(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    signer(&shared)?;
    // The IdP token goes in and a session token comes out: never in plaintext across a
    // network. Over plain HTTP only local callers (or a TLS-terminating proxy on this
    // machine) may exchange; over `listen.http_tls`, anyone.
    if !shared.listen.credentials_from(peer.ip()) {
        return Err(ApiError::forbidden(
            "the token exchange is served to local callers only over plain HTTP; set listen.http_tls, or put a TLS-terminating proxy on this machine in front of the HTTP port",
        ));
    }
    let Some(token) = bearer(&headers) else {
        return Err(ApiError::unauthorized(
            "send the identity provider's token as Authorization: Bearer <token>",
        ));
    };
    let exchange = match shared.auth.exchange(peer.ip(), token).await {
        Ok(v) => v,
        Err(
            e @ (crate::auth::AuthError::RateLimited(_) | crate::auth::AuthError::ExchangeTooOften),
        ) => return Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string())),
        Err(e @ crate::auth::AuthError::ExchangeBusy) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                e.to_string(),
            ))
        }
        Err(e) => {
            // A refused exchange (a forged, replayed, revoked or unverified token) is a failed
            // login like any other.
            super::extract::audit_failed_login(&shared, peer, "token-exchange", &e);
            return Err(ApiError::unauthorized(format!(
                "authentication failed: {e}"
            )));
        }
    };
    let crate::auth::Exchange {
        subject,
        groups,
        issuer,
        expires_at,
    } = exchange;
    session_token(&shared, peer, &subject, &groups, &issuer, expires_at)
}

/// Mints the gateway session token for an individual an IdP vouched for until `expires_at`,
/// and answers what `phigate login` reads: `token`, `expires_at`, `expires_in`, `subject`,
/// `roles`.
pub(super) fn session_token(
    shared: &Shared,
    peer: SocketAddr,
    subject: &str,
    groups: &[String],
    idp: &str,
    expires_at: std::time::SystemTime,
) -> ApiResult<Json<Value>> {
    let signer = signer(shared)?;
    // The session token never outlives the IdP token it was exchanged for (whole seconds,
    // rounded down), the leeway its expiry is checked with included.
    let left = expires_at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default()
        .saturating_sub(shared.auth.leeway());
    let ttl = shared
        .tokens
        .session_ttl
        .min(std::time::Duration::from_secs(left.as_secs()));
    if ttl.is_zero() {
        return Err(ApiError::unauthorized(
            "authentication failed: token expired",
        ));
    }
    let roles = shared.auth.roles_for(subject, groups, idp);
    if roles.is_empty() {
        return Err(ApiError::forbidden(format!(
            "identity {subject} is not granted any role"
        )));
    }
    let (token, expires) = signer.mint(subject, groups, idp, ttl).map_err(|e| {
        tracing::error!(error = %e, "cannot sign a session token");
        ApiError::internal("cannot sign a session token")
    })?;
    tracing::info!(%peer, %subject, issuer = %idp, "session token issued");
    Ok(Json(json!({
        "token": token,
        "expires_at": humantime::format_rfc3339_seconds(expires).to_string(),
        "expires_in": ttl.as_secs(),
        "subject": subject,
        "roles": roles,
    })))
}
