//! Recorded sessions, for identities of `audit.reader_roles`: `GET /v1/sessions` (as
//! `phigate sessions list --json`) and `GET /v1/sessions/{id}` (as `phigate replay --json`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::extract::AuditReader;
use crate::recording::replay::{self, ReplayError};
use crate::state::Shared;

/// `GET /v1/sessions?subject=&role=&since=&until=&table=`
pub async fn list(
    Query(q): Query<HashMap<String, String>>,
    reader: AuditReader,
) -> ApiResult<Json<Value>> {
    let filter = replay::ListFilter {
        subject: q.get("subject").cloned(),
        role: q.get("role").cloned(),
        since: q.get("since").cloned(),
        until: q.get("until").cloned(),
        table: q.get("table").cloned(),
    };
    let dir = reader.dir;
    let found = tokio::task::spawn_blocking(move || replay::list(&dir, &filter)).await;
    match found {
        Ok(Ok(sessions)) => Ok(Json(json!({"sessions": sessions}))),
        _ => Err(ApiError::audit_unreadable()),
    }
}

/// `GET /v1/sessions/{id}`: the session's replay. Encrypted recordings are decrypted only for
/// identities of `recording.decrypt_roles`; every replay is audited before it is shown.
pub async fn replay(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    reader: AuditReader,
) -> ApiResult<Json<Value>> {
    let AuditReader { dir, who } = reader;
    let replay = audited_replay(&shared, dir, &who, id).await?;
    Ok(Json(json!(replay)))
}

/// Session `id`'s replay for `who`, decrypted if their role is in `recording.decrypt_roles`,
/// audited (`recording_replayed`) before it is returned. The HTTP API and the web console
/// both read recordings through it.
pub async fn audited_replay(
    shared: &Shared,
    dir: std::path::PathBuf,
    who: &crate::auth::Identity,
    id: String,
) -> ApiResult<replay::Replay> {
    let Some(recorder) = shared.recorder.clone() else {
        return Err(ApiError::not_found("session recordings are off"));
    };
    let may_decrypt = recorder.decrypt_roles.contains(&who.role.0);
    let session = id.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        let key = recorder.key().filter(|_| may_decrypt);
        replay::load(&dir, recorder.dir(), &id, key)
    })
    .await;
    let replay = match loaded {
        Ok(Ok(replay)) => replay,
        Ok(Err(ReplayError::Read(e))) if e.contains("encrypted") && !may_decrypt => {
            return Err(ApiError::forbidden(
                "the recording is encrypted and your role may not have it decrypted (recording.decrypt_roles)",
            ))
        }
        Ok(Err(e @ (ReplayError::UnknownSession(_) | ReplayError::NoRecording(_)))) => {
            return Err(ApiError::not_found(e.to_string()))
        }
        Ok(Err(e @ ReplayError::Altered { .. })) => {
            return Err(ApiError::new(StatusCode::CONFLICT, e.to_string()))
        }
        _ => return Err(ApiError::internal("cannot read the recording")),
    };
    if let Some(audit) = &shared.audit.log {
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
            return Err(ApiError::audit_unwritable());
        }
    }
    Ok(replay)
}
