//! The audit log, for identities of `audit.reader_roles`: `GET /v1/audit/records`,
//! `/v1/audit/report`, `/v1/audit/verify`. The log is read off the async threads.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::Json;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::extract::AuditReader;
use crate::state::Shared;

fn filter_from(q: &HashMap<String, String>) -> Result<phigate_audit::query::Filter, ApiError> {
    use phigate_audit::record::{DECISIONS, TYPES};
    let get = |k: &str| q.get(k).cloned();
    // An unknown value would match nothing: say so rather than answer an empty list.
    for (key, valid) in [("type", TYPES), ("decision", DECISIONS)] {
        if let Some(v) = q.get(key).filter(|v| !valid.contains(&v.as_str())) {
            return Err(ApiError::bad_request(format!(
                "{key}: {} is not one of {}",
                crate::text::display(v),
                valid.join(", ")
            )));
        }
    }
    Ok(phigate_audit::query::Filter {
        subject: get("subject"),
        role: get("role"),
        table: get("table"),
        column: get("column"),
        since: get("since"),
        until: get("until"),
        decision: get("decision"),
        session: get("session"),
        kind: get("type"),
    })
}

/// `GET /v1/audit/records?subject=&role=&table=&column=&since=&until=&decision=&session=&type=&limit=`
pub async fn records(
    Query(q): Query<HashMap<String, String>>,
    reader: AuditReader,
) -> ApiResult<Json<Value>> {
    let filter = filter_from(&q)?;
    let limit = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(1000usize)
        .min(100_000);
    let dir = reader.dir;
    let found =
        tokio::task::spawn_blocking(move || phigate_audit::query::search(&dir, &filter, limit))
            .await;
    match found {
        Ok(Ok(records)) => Ok(Json(json!({"records": records}))),
        _ => Err(ApiError::audit_unreadable()),
    }
}

/// `GET /v1/audit/report?since=&until=`
pub async fn report(
    Query(q): Query<HashMap<String, String>>,
    reader: AuditReader,
) -> ApiResult<Json<Value>> {
    let (since, until) = (q.get("since").cloned(), q.get("until").cloned());
    let dir = reader.dir;
    let report = tokio::task::spawn_blocking(move || {
        phigate_audit::query::report(&dir, since.as_deref(), until.as_deref())
    })
    .await;
    match report {
        Ok(Ok(r)) => Ok(Json(json!(r))),
        _ => Err(ApiError::audit_unreadable()),
    }
}

/// `GET /v1/audit/verify`: the same proof as `phigate audit verify`, with the key beside the
/// log and the configured mirror.
pub async fn verify(
    State(shared): State<Arc<Shared>>,
    reader: AuditReader,
) -> ApiResult<Json<Value>> {
    let dir = reader.dir;
    let mirrors: Vec<_> = shared.audit.mirror.iter().cloned().collect();
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
        Ok(Ok(Ok(report))) => Ok(Json(json!({"ok": true, "report": report}))),
        Ok(Ok(Err(failure))) => Ok(Json(json!({"ok": false, "failure": failure}))),
        _ => Err(ApiError::audit_unreadable()),
    }
}
