//! Who is calling: extractors for the caller's identity.
//!
//! Credentials travel in the Authorization header of plain HTTP, so they are accepted from
//! local callers only (a TLS-terminating proxy on this machine for remote ones). A caller is
//! authenticated for one of the roles an endpoint takes, in order ([`Credentials::authorize`]);
//! [`Reviewer`], [`AuditReader`] and [`Member`] name the usual sets.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::HeaderMap;

use super::error::ApiError;
use crate::auth::{AuthError, Identity};
use crate::state::Shared;

/// `Authorization: Bearer <credential>`, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Where the call comes from, and its bearer credential (not yet checked).
pub struct Credentials {
    pub peer: SocketAddr,
    token: Option<String>,
}

fn peer(parts: &Parts) -> Result<SocketAddr, ApiError> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .ok_or_else(|| ApiError::internal("the caller's address is unknown"))
}

impl<S: Send + Sync> FromRequestParts<S> for Credentials {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(Credentials {
            peer: peer(parts)?,
            token: bearer(&parts.headers).map(str::to_owned),
        })
    }
}

impl Credentials {
    /// A caller's credential from elsewhere than the Authorization header: the gateway
    /// session token a console sign-in holds.
    pub fn new(peer: SocketAddr, token: String) -> Credentials {
        Credentials {
            peer,
            token: Some(token),
        }
    }

    /// The caller's identity, if its credential is valid for one of `roles` (tried in order);
    /// `what` says what they would be allowed to do, for the log and the refusal.
    pub async fn authorize(
        &self,
        shared: &Shared,
        roles: &[String],
        what: &str,
    ) -> Result<Identity, ApiError> {
        let peer = self.peer;
        if !shared.listen.credentials_from(peer.ip()) {
            return Err(ApiError::forbidden(
                "credentials are accepted from local callers only over plain HTTP; set listen.http_tls, or put a TLS-terminating proxy on this machine in front of the HTTP port",
            ));
        }
        let Some(token) = &self.token else {
            return Err(ApiError::unauthorized(
                "send a token or API key as Authorization: Bearer <credential>",
            ));
        };
        if roles.is_empty() {
            return Err(ApiError::forbidden(format!("no role may {what} over HTTP")));
        }
        let (policy, _) = shared.policy.store.snapshot();
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
                Err(AuthError::RoleNotAllowed { .. } | AuthError::NoRole { .. }) => continue,
                Err(e) => {
                    // Like a failed login on the wire: the same record (and the same limiter,
                    // which authenticate_api has counted). There is no startup `user` here;
                    // the role the call was tried for stands in for it.
                    audit_failed_login(shared, peer, role, &e);
                    return Err(ApiError::unauthorized(format!(
                        "authentication failed: {e}"
                    )));
                }
            }
        }
        Err(ApiError::forbidden(format!("this identity may not {what}")))
    }
}

/// A credential refused on the HTTP API, counted in `/metrics` and kept as a `login_failed`
/// record (`via: "http"`); `user`
/// is what the call stood for (the role tried, or `token-exchange`).
pub fn audit_failed_login(shared: &Shared, peer: SocketAddr, user: &str, e: &AuthError) {
    shared.metrics.login_failed(e.kind(), "http");
    if let Some(audit) = &shared.audit.log {
        audit.submit(phigate_audit::Pending::Event(
            phigate_audit::Event::LoginFailed {
                client_addr: peer.to_string(),
                user: user.chars().take(64).collect(),
                reason: e.to_string(),
                via: Some("http".into()),
                subject: e.subject().map(str::to_owned),
            },
        ));
    }
}

/// A caller who may review held statements: a role of `approvals.reviewer_roles` or of a
/// rule's own reviewer roles.
pub struct Reviewer(pub Identity);

impl FromRequestParts<Arc<Shared>> for Reviewer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, shared: &Arc<Shared>) -> Result<Self, ApiError> {
        let credentials = Credentials::from_request_parts(parts, shared).await?;
        let (policy, _) = shared.policy.store.snapshot();
        let mut roles = shared.approvals.config.get().reviewer_roles.clone();
        roles.extend(policy.rule_reviewer_roles().map(str::to_owned));
        let who = credentials
            .authorize(
                shared,
                &roles,
                "review held statements (approvals.reviewer_roles or a rule's reviewer_roles)",
            )
            .await?;
        Ok(Reviewer(who))
    }
}

/// A caller who may read the audit log (`audit.reader_roles`), and where the log is.
pub struct AuditReader {
    pub dir: PathBuf,
    pub who: Identity,
}

impl FromRequestParts<Arc<Shared>> for AuditReader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, shared: &Arc<Shared>) -> Result<Self, ApiError> {
        let Some(dir) = shared.audit.dir.clone() else {
            return Err(ApiError::not_found("the audit log is disabled"));
        };
        let credentials = Credentials::from_request_parts(parts, shared).await?;
        let who = credentials
            .authorize(
                shared,
                &shared.audit.reader_roles.get(),
                "read the audit log (audit.reader_roles)",
            )
            .await?;
        Ok(AuditReader { dir, who })
    }
}

/// A caller with any role of the policy (who may ask for another one).
pub struct Member(pub Identity);

impl FromRequestParts<Arc<Shared>> for Member {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, shared: &Arc<Shared>) -> Result<Self, ApiError> {
        let credentials = Credentials::from_request_parts(parts, shared).await?;
        let (policy, _) = shared.policy.store.snapshot();
        let who = credentials
            .authorize(shared, &policy.role_names(), "ask for a role")
            .await?;
        Ok(Member(who))
    }
}

/// A caller `listen.metrics` admits to `/metrics`.
pub struct MetricsReader;

impl FromRequestParts<Arc<Shared>> for MetricsReader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, shared: &Arc<Shared>) -> Result<Self, ApiError> {
        use crate::config::MetricsAccess;
        let credentials = Credentials::from_request_parts(parts, shared).await?;
        match shared.listen.metrics {
            MetricsAccess::Public => Ok(MetricsReader),
            MetricsAccess::Loopback if credentials.peer.ip().is_loopback() => Ok(MetricsReader),
            MetricsAccess::Loopback => Err(ApiError::forbidden(
                "metrics are served to callers on this machine (listen.metrics)",
            )),
            MetricsAccess::Readers => {
                credentials
                    .authorize(
                        shared,
                        &shared.audit.reader_roles.get(),
                        "read the metrics (audit.reader_roles)",
                    )
                    .await?;
                Ok(MetricsReader)
            }
        }
    }
}
