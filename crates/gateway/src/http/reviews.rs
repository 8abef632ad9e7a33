//! Held statements and access requests: `GET /v1/reviews`, `GET /v1/reviews/{id}`,
//! `POST /v1/reviews/{id}/approve|deny`, `POST /v1/access-requests`. What a review becomes is
//! the approvals module's business; these handlers check who asks and what they send.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::extract::{Credentials, Member, Reviewer};
use crate::approvals::{Decision, ElevationRequest, OpenError};
use crate::state::Shared;

/// `GET /v1/reviews?all=true`: pending reviews (all recent ones with `all`).
pub async fn list(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
    Reviewer(who): Reviewer,
) -> ApiResult<Json<Value>> {
    let all = q.get("all").is_some_and(|v| v == "true" || v == "1");
    let list = shared
        .approvals
        .reviews
        .list(all)
        .await
        .map_err(|_| ApiError::unavailable("the review store is unavailable"))?;
    // Only the reviews this reviewer may decide: a statement's exact text may carry PHI.
    let mine: Vec<_> = list
        .into_iter()
        .filter(|r| r.reviewer_roles.contains(&who.role.0))
        .collect();
    Ok(Json(json!({ "reviews": mine })))
}

/// `GET /v1/reviews/{id}`
pub async fn show(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Reviewer(who): Reviewer,
) -> ApiResult<Json<Value>> {
    let found = shared
        .approvals
        .reviews
        .get(&id)
        .await
        .map_err(|_| ApiError::unavailable("the review store is unavailable"))?;
    match found {
        Some(r) if r.reviewer_roles.contains(&who.role.0) => Ok(Json(json!(r))),
        _ => Err(not_for_you()),
    }
}

#[derive(serde::Deserialize)]
pub struct DecisionBody {
    pub reason: String,
    #[serde(default)]
    pub break_glass: bool,
}

/// `POST /v1/reviews/{id}/approve` `{"reason", "break_glass"?}`
pub async fn approve(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    credentials: Credentials,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    decide(&shared, &credentials, &id, true, &body).await
}

/// `POST /v1/reviews/{id}/deny` `{"reason"}`
pub async fn deny(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    credentials: Credentials,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    decide(&shared, &credentials, &id, false, &body).await
}

/// What every caller hears of a review they may not see or decide, and of an unknown one: the
/// same answer, so the API is no oracle of which review ids exist.
const NOT_FOR_YOU: &str = "no such review for you";

fn not_for_you() -> ApiError {
    ApiError::not_found(NOT_FOR_YOU)
}

/// A reviewer's or requester's reason, as it will travel: trimmed, 1 to 2000 bytes, no control
/// characters (it reaches the client's ErrorResponse, the logs and the audit log).
pub fn checked_reason(reason: &str) -> Result<&str, ApiError> {
    let reason = reason.trim();
    if reason.is_empty() || reason.len() > 2000 {
        return Err(ApiError::bad_request(
            "a reason (1 to 2000 bytes) is required",
        ));
    }
    if reason.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "a reason may not contain control characters (newlines, tabs, NUL, ...)",
        ));
    }
    Ok(reason)
}

async fn decide(
    shared: &Shared,
    credentials: &Credentials,
    id: &str,
    approve: bool,
    body: &[u8],
) -> ApiResult<Json<Value>> {
    // Who asks comes first: an unauthenticated caller learns nothing of the body's shape or of
    // which review ids exist.
    let (policy, _) = shared.policy.store.snapshot();
    let caller = credentials
        .authorize(shared, &policy.role_names(), "decide reviews")
        .await?;
    let d = serde_json::from_slice::<DecisionBody>(body).map_err(|_| {
        ApiError::bad_request(
            "send JSON {\"reason\": \"...\"} (and \"break_glass\": true for emergency self-approval)",
        )
    })?;
    decide_review(shared, credentials, &caller, id, approve, &d)
        .await
        .map(|r| Json(json!(r)))
}

/// The one decision path: the HTTP API and the web console both decide through it (who may,
/// separation of duties, break-glass, the reason's checks; the approvals module audits the
/// transition). `caller` is who `credentials` authenticate as (any role of the policy).
pub async fn decide_review(
    shared: &Shared,
    credentials: &Credentials,
    caller: &crate::auth::Identity,
    id: &str,
    approve: bool,
    d: &DecisionBody,
) -> ApiResult<crate::approvals::Review> {
    let found = shared
        .approvals
        .reviews
        .get(id)
        .await
        .map_err(|_| ApiError::unavailable("the review store is unavailable"))?;
    let Some(review) = found else {
        return Err(not_for_you());
    };
    // The review's own reviewer roles (its rule's, else approvals.reviewer_roles).
    let as_reviewer = credentials
        .authorize(
            shared,
            &review.reviewer_roles,
            "decide this review (its rule's reviewer roles)",
        )
        .await;
    // Its requester knows it exists (the notice named it); its reviewers may list it. Anyone
    // else hears what an unknown id gets.
    // The requester is an individual: the same subject at the same issuer.
    let may_see = as_reviewer.is_ok()
        || (review.requester == caller.subject.0
            && review.issuer.as_deref() == Some(caller.issuer.as_str()));
    // Break-glass: the requester approves their own statement; anyone else decides as a
    // reviewer of its rule.
    let who = if d.break_glass {
        credentials
            .authorize(
                shared,
                &shared.approvals.config.get().break_glass_roles,
                "approve your own statement under break-glass (approvals.break_glass_roles)",
            )
            .await
    } else {
        as_reviewer
    };
    let who = match who {
        Ok(who) => who,
        Err(e) if may_see => return Err(e),
        Err(_) => return Err(not_for_you()),
    };
    let reason = checked_reason(&d.reason)?;
    if d.break_glass && reason.chars().count() < 20 {
        return Err(ApiError::bad_request(
            "break-glass needs a justification of at least 20 characters",
        ));
    }
    let approvals = shared.approvals.config.get();
    let decision = Decision {
        reviewer: &who.subject.0,
        reviewer_issuer: &who.issuer,
        role: &who.role.0,
        approve,
        reason,
        break_glass: d.break_glass,
        break_glass_roles: &approvals.break_glass_roles,
    };
    let done = match shared.approvals.reviews.decide(id, &decision).await {
        Ok(done) => done,
        Err(crate::approvals::DecideError::NotFound(_)) => return Err(not_for_you()),
        // Break-glass on someone else's review tells only those who may see it why not.
        Err(crate::approvals::DecideError::BreakGlassRefused) if !may_see => {
            return Err(not_for_you())
        }
        Err(e) => return Err(e.into()),
    };
    if d.break_glass {
        tracing::warn!(review = %id, by = %who.subject, "BREAK-GLASS approval");
    } else {
        tracing::info!(review = %id, by = %who.subject, approve, last = done.last, "review decided");
    }
    Ok(done.review)
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
pub async fn access_request(
    State(shared): State<Arc<Shared>>,
    Member(who): Member,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    if matches!(
        who.credential,
        crate::auth::Credential::StaticToken { .. } | crate::auth::Credential::ApiKey { .. }
    ) {
        return Err(ApiError::forbidden(
            "API keys and static tokens carry a fixed list of roles and are never elevated: ask with your own sign-in (phigate login)",
        ));
    }
    let req = serde_json::from_slice::<AccessRequestBody>(&body).map_err(|_| {
        ApiError::bad_request("send JSON {\"role\": \"...\", \"minutes\": N, \"reason\": \"...\"}")
    })?;
    let approvals = shared.approvals.config.get();
    if !approvals.elevation_roles.contains(&req.role) {
        return Err(ApiError::forbidden(
            "that role cannot be asked for (approvals.elevation_roles)",
        ));
    }
    if req.minutes == 0 || req.minutes > approvals.max_elevation_minutes {
        return Err(ApiError::bad_request(format!(
            "minutes is 1 to {} (approvals.max_elevation_minutes)",
            approvals.max_elevation_minutes
        )));
    }
    let reason = checked_reason(&req.reason)?;
    if reason.chars().count() < 10 {
        return Err(ApiError::bad_request(
            "a reason of 10 to 2000 characters is required",
        ));
    }
    let request = ElevationRequest {
        issuer: &who.issuer,
        requester: &who.subject.0,
        current_role: &who.role.0,
        role: &req.role,
        minutes: req.minutes,
        reason,
        timeout: Duration::from_secs(approvals.timeout_secs.max(3600)),
        reviewer_roles: approvals.reviewer_roles.clone(),
    };
    let review = match shared
        .approvals
        .reviews
        .open_elevation(shared.audit.log.as_ref(), request)
        .await
    {
        Ok(r) => r,
        Err(OpenError::Audit) => return Err(ApiError::audit_unwritable()),
        Err(e @ OpenError::Store(_)) => return Err(ApiError::unavailable(e.to_string())),
        Err(e @ (OpenError::TooOften(_) | OpenError::QueueFull(_))) => {
            return Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()))
        }
    };
    tracing::info!(review = %review.id, subject = %who.subject, role = %req.role, minutes = req.minutes, "access requested");
    Ok((StatusCode::CREATED, Json(json!(review))))
}
