//! For probes and people: `/healthz` (the process is alive), `/readyz` (it accepts sessions
//! and can reach the database; degraded when an OIDC issuer cannot be reached), `/metrics` (Prometheus text: sessions, by role too; statements
//! by decision and their latency; holds pending; failed logins; audit and recording writer
//! counters with the audit fsync latency; health).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::state::Shared;

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(shared): State<Arc<Shared>>) -> (StatusCode, Json<Value>) {
    let accepting = shared.lifecycle.accepting.load(Ordering::Acquire);
    let reachable = upstream_reachable(&shared).await;
    let audit_ok = shared.audit.log.as_ref().is_none_or(|a| a.healthy());
    let ready = accepting && reachable && audit_ok;
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // An unreachable IdP degrades the gateway but does not make it unready: sessions still
    // open with API keys, static identities, gateway tokens and tokens whose keys are cached.
    let issuers = shared.auth.probe_issuers().await;
    // A cluster node without its control database serves ordinary statements but refuses
    // holds and works from its last copy of keys and revocations: degraded, not unready.
    let control = shared
        .control
        .as_ref()
        .map(|c| (c.node_id(), c.client().is_ok()));
    let degraded =
        issuers.iter().any(|(_, ok)| !ok) || control.is_some_and(|(_, reachable)| !reachable);
    let status = match (ready, degraded) {
        (false, _) => "not ready",
        (true, true) => "degraded",
        (true, false) => "ready",
    };
    let issuers: serde_json::Map<String, Value> = issuers
        .into_iter()
        .map(|(name, ok)| (name, json!(if ok { "reachable" } else { "unreachable" })))
        .collect();
    let mut body = json!({
        "status": status,
        "issuers": issuers,
        "accepting": accepting,
        "upstream": if reachable { "reachable" } else { "unreachable" },
        "audit": match &shared.audit.log {
            None => "disabled",
            Some(a) if a.healthy() => "ok",
            Some(_) => "failing",
        },
    });
    if let Some((node_id, reachable)) = control {
        body["cluster"] = json!({
            "node_id": node_id,
            "control_database": if reachable { "reachable" } else { "unreachable" },
        });
    }
    (code, Json(body))
}

/// Whether the database accepts a connection: while it does, probed at most once per
/// [`crate::state::READY_PROBE_TTL`], one probe at a time (callers meanwhile wait for its
/// answer): an unauthenticated caller cannot make the gateway open connections to the database
/// at its pace. A failure is reused only by the callers that waited for that very probe, and a
/// session that fails to reach the database clears the cache: a database that is gone is never
/// reported reachable, and one that is back is seen at the next call.
async fn upstream_reachable(shared: &Shared) -> bool {
    let asked = std::time::Instant::now();
    let mut last = shared.lifecycle.upstream_probe.lock().await;
    if let Some((at, ok)) = *last {
        let fresh = if ok {
            at.elapsed() < crate::state::READY_PROBE_TTL
        } else {
            at >= asked
        };
        if fresh {
            return ok;
        }
    }
    let addr = format!("{}:{}", shared.upstream.host, shared.upstream.port);
    let ok = matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(&addr)
        )
        .await,
        Ok(Ok(_))
    );
    *last = Some((std::time::Instant::now(), ok));
    ok
}

/// Prometheus text format, for the callers `listen.metrics` admits.
pub async fn metrics(
    _caller: super::extract::MetricsReader,
    State(shared): State<Arc<Shared>>,
) -> String {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mut out = String::new();
    if let Some(a) = &shared.audit.log {
        let s = a.stats();
        out.push_str(&format!(
            "# TYPE phigate_audit_healthy gauge\nphigate_audit_healthy {}\n\
             # TYPE phigate_audit_records_total counter\nphigate_audit_records_total {}\n\
             # TYPE phigate_audit_fsyncs_total counter\nphigate_audit_fsyncs_total {}\n\
             # TYPE phigate_audit_write_failures_total counter\nphigate_audit_write_failures_total {}\n\
             # TYPE phigate_audit_checkpoints_total counter\nphigate_audit_checkpoints_total {}\n\
             # TYPE phigate_audit_bytes_total counter\nphigate_audit_bytes_total {}\n\
             # TYPE phigate_audit_last_seq gauge\nphigate_audit_last_seq {}\n\
             # TYPE phigate_audit_durable_waits_total counter\nphigate_audit_durable_waits_total {}\n\
             # TYPE phigate_audit_durable_wait_fsyncs_total counter\nphigate_audit_durable_wait_fsyncs_total {}\n",
            u8::from(a.healthy()),
            get(&s.records),
            get(&s.fsyncs),
            get(&s.failures),
            get(&s.checkpoints),
            get(&s.bytes),
            get(&s.last_seq),
            get(&s.waits),
            get(&s.wait_fsyncs),
        ));
        s.fsync_latency.render(
            &mut out,
            "phigate_audit_fsync_duration_seconds",
            "How long each fsync of the audit log took.",
        );
    }
    if let Some(r) = &shared.recorder {
        let s = &r.stats;
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
        "# TYPE phigate_accepting gauge\nphigate_accepting {}\n\
         # TYPE phigate_sessions gauge\nphigate_sessions {}\n\
         # TYPE phigate_connections gauge\nphigate_connections {}\n",
        u8::from(shared.lifecycle.accepting.load(Ordering::Acquire)),
        shared.admission.sessions(),
        shared.admission.connections(),
    ));
    sessions_by_role(&shared, &mut out);
    holds_pending(&shared, &mut out).await;
    shared.metrics.render(&mut out);
    out
}

/// `phigate_sessions_by_role{role}`: every configured role, 0 when it has no session.
fn sessions_by_role(shared: &Shared, out: &mut String) {
    let (policy, _) = shared.policy.store.snapshot();
    let mut counts: std::collections::BTreeMap<String, usize> = policy
        .role_names()
        .into_iter()
        .map(|r| (r.to_string(), 0))
        .collect();
    for (role, n) in shared.admission.sessions_by_role() {
        counts.insert(role, n);
    }
    out.push_str("# HELP phigate_sessions_by_role Sessions open now, by gateway role.\n");
    out.push_str("# TYPE phigate_sessions_by_role gauge\n");
    for (role, n) in counts {
        let role = crate::text::prometheus_label(&role);
        out.push_str(&format!(
            "phigate_sessions_by_role{{role=\"{role}\"}} {n}\n"
        ));
    }
}

/// `phigate_holds_pending` (held statements) and `phigate_access_requests_pending`.
async fn holds_pending(shared: &Shared, out: &mut String) {
    let Ok(pending) = shared.approvals.reviews.list(false).await else {
        return;
    };
    let pending: Vec<_> = pending
        .iter()
        .filter(|r| r.status == crate::approvals::Status::Pending)
        .collect();
    let requests = pending.iter().filter(|r| r.rule == "elevation").count();
    let holds = pending.len() - requests;
    out.push_str(&format!(
        "# HELP phigate_holds_pending Held statements waiting for a reviewer.\n\
         # TYPE phigate_holds_pending gauge\nphigate_holds_pending {holds}\n\
         # HELP phigate_access_requests_pending Access requests waiting for a reviewer.\n\
         # TYPE phigate_access_requests_pending gauge\n\
         phigate_access_requests_pending {requests}\n"
    ));
}
