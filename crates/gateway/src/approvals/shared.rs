//! The store of a cluster: reviews in the control database (docs/cluster.md).
//!
//! A review is one row: its state machine's `version` is the compare-and-set (`UPDATE ... WHERE
//! version = $n`: among racing transitions on any nodes exactly one row is updated), and every
//! write notifies `phigate_reviews` at commit, which ticks [`changes`](ApprovalStore::changes)
//! on every node. Holding nodes also read their reviews again on the cluster's poll interval
//! and after every reconnect, so a lost notification costs a poll, never a decision.
//!
//! The node that opened a review holds its client and alone runs the statement (approvals never
//! migrate); the row names the node and its instance, and a review whose instance no longer
//! holds a live lease is orphaned ([`ApprovalStore::orphaned`]). A held statement's text may
//! carry PHI: it is kept whole only while it can still run, and redacted (literals out) once
//! the review is settled.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;
use tokio_postgres::Row;

use super::store::{ApprovalStore, GrantKey, StoreError, StoreFuture};
use super::{Kind, Review, Run, Status};
use crate::control::{Control, OPERATION_TIMEOUT};

pub struct SharedStore {
    control: Arc<Control>,
}

impl SharedStore {
    pub fn new(control: Arc<Control>) -> SharedStore {
        SharedStore { control }
    }

    /// The reviews `rest` selects (`r` is the reviews table: a WHERE, ORDER BY and LIMIT).
    async fn select(
        &self,
        rest: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Review>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM phigate.reviews r {rest}");
        let rows = on(
            &self.control,
            |c| async move { c.query(&sql, params).await },
        )
        .await?;
        rows.iter().map(review).collect()
    }
}

/// Runs `op` against the control database, failing (closed) when it is unreachable or slow.
async fn on<T, F, Fut>(control: &Control, op: F) -> Result<T, StoreError>
where
    F: FnOnce(Arc<tokio_postgres::Client>) -> Fut,
    Fut: std::future::Future<Output = Result<T, tokio_postgres::Error>>,
{
    let client = control.client().map_err(|e| StoreError(e.to_string()))?;
    match tokio::time::timeout(OPERATION_TIMEOUT, op(client)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            tracing::warn!(error = %crate::control::describe(&e), "a control database operation failed");
            Err(StoreError(
                "the control database refused the operation".into(),
            ))
        }
        Err(_) => Err(StoreError(
            "the control database did not answer in time".into(),
        )),
    }
}

const COLUMNS: &str = "version, run, fingerprint, body";

fn run_text(run: Option<Run>) -> Option<&'static str> {
    run.map(|r| match r {
        Run::Executed => "executed",
        Run::Forfeited => "forfeited",
    })
}

/// A review as stored: its body, with the statement redacted once nothing can run it.
fn body(review: &Review) -> Result<String, StoreError> {
    let settled = review.status != Status::Pending
        && (review.kind == Kind::Elevation
            || review.status != Status::Approved
            || review.run.is_some());
    let json = if settled {
        // The audit log keeps the justification; here it is free text that may name a
        // patient, and nothing needs it any more.
        let mut r = review.clone();
        r.statement = phigate_sql::redact_literals(&review.statement).0;
        r.justification = None;
        serde_json::to_string(&r)
    } else {
        serde_json::to_string(review)
    };
    json.map_err(|e| StoreError(format!("cannot encode a review: {e}")))
}

fn review(row: &Row) -> Result<Review, StoreError> {
    let body: String = row.get("body");
    let mut r: Review = serde_json::from_str(&body)
        .map_err(|_| StoreError("a review in the control database cannot be read".into()))?;
    r.version = row.get::<_, i64>("version") as u64;
    r.run = match row.get::<_, Option<String>>("run").as_deref() {
        Some("executed") => Some(Run::Executed),
        Some("forfeited") => Some(Run::Forfeited),
        _ => None,
    };
    r.fingerprint = row.get("fingerprint");
    Ok(r)
}

/// Seconds from now until `until` by this node's clock (0 if past): stored as the control
/// database's `now()` plus that, so that times in the control database are all its clock's.
fn remaining(until: SystemTime) -> f64 {
    until
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .as_secs_f64()
}

/// A time the control database gave as seconds from its `now()`, on this node's clock.
fn local_until(seconds: f64) -> SystemTime {
    let now = SystemTime::now();
    if seconds.is_finite() && seconds > 0.0 {
        now + std::time::Duration::from_secs_f64(seconds.min(1e9))
    } else {
        now
    }
}

fn kind_text(kind: Kind) -> &'static str {
    match kind {
        Kind::Statement => "statement",
        Kind::Elevation => "elevation",
    }
}

impl ApprovalStore for SharedStore {
    fn create<'a>(&'a self, r: &'a Review) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let body = body(r)?;
            // When it expires, by the control database's clock: every node then agrees.
            let left = humantime::parse_rfc3339_weak(&r.expires_at)
                .ok()
                .and_then(|t| t.duration_since(SystemTime::now()).ok())
                .unwrap_or_default()
                .as_secs_f64();
            on(&self.control, |c| async move {
                c.execute(
                    "INSERT INTO phigate.reviews (id, version, status, kind, node_id, instance,
                         run, fingerprint, expires_at, body)
                     VALUES ($1, 0, $2, $3, $4, $5, NULL, $6,
                         now() + $8::float8 * interval '1 second', $7)",
                    &[
                        &r.id,
                        &r.status.as_str(),
                        &kind_text(r.kind),
                        &self.control.node_id(),
                        &self.control.instance(),
                        &r.fingerprint,
                        &body,
                        &left,
                    ],
                )
                .await
            })
            .await
            .map(drop)
        })
    }

    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Review>> {
        Box::pin(async move { Ok(self.select("WHERE id = $1", &[&id]).await?.pop()) })
    }

    fn pending<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<bool>> {
        Box::pin(async move {
            let rows = on(&self.control, |c| async move {
                c.query("SELECT status FROM phigate.reviews WHERE id = $1", &[&id])
                    .await
            })
            .await?;
            Ok(rows
                .first()
                .map(|r| r.get::<_, String>(0) == Status::Pending.as_str()))
        })
    }

    fn list(&self, all: bool) -> StoreFuture<'_, Vec<Review>> {
        Box::pin(async move {
            let rest = if all {
                "ORDER BY created_at DESC LIMIT 10000"
            } else {
                "WHERE status = 'pending' ORDER BY created_at LIMIT 10000"
            };
            self.select(rest, &[]).await
        })
    }

    fn swap<'a>(&'a self, expected: u64, next: &'a Review) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let body = body(next)?;
            let n = on(&self.control, |c| async move {
                c.execute(
                    "UPDATE phigate.reviews SET version = version + 1, status = $3, run = $4,
                         body = $5, updated_at = now()
                     WHERE id = $1 AND version = $2",
                    &[
                        &next.id,
                        &(expected as i64),
                        &next.status.as_str(),
                        &run_text(next.run),
                        &body,
                    ],
                )
                .await
            })
            .await?;
            Ok(n == 1)
        })
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.control.changes()
    }

    fn recheck(&self) -> std::time::Duration {
        self.control.poll_interval()
    }

    fn grant<'a>(
        &'a self,
        key: &'a GrantKey,
        review: &'a str,
        until: SystemTime,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            on(&self.control, |c| async move {
                c.execute(
                    "INSERT INTO phigate.fingerprint_grants
                         (issuer, subject, role, rule, fingerprint, review, until)
                     VALUES ($1, $2, $3, $4, $5, $6, now() + $7::float8 * interval '1 second')
                     ON CONFLICT (issuer, subject, role, rule, fingerprint)
                     DO UPDATE SET review = EXCLUDED.review, until = EXCLUDED.until",
                    &[
                        &key.issuer,
                        &key.subject,
                        &key.role,
                        &key.rule,
                        &key.fingerprint,
                        &review,
                        &remaining(until),
                    ],
                )
                .await
            })
            .await
            .map(drop)
        })
    }

    fn granted<'a>(&'a self, key: &'a GrantKey) -> StoreFuture<'a, Option<(String, SystemTime)>> {
        Box::pin(async move {
            let rows = on(&self.control, |c| async move {
                c.query(
                    "SELECT review, extract(epoch FROM until - now())::float8
                     FROM phigate.fingerprint_grants
                     WHERE issuer = $1 AND subject = $2 AND role = $3 AND rule = $4
                       AND fingerprint = $5",
                    &[
                        &key.issuer,
                        &key.subject,
                        &key.role,
                        &key.rule,
                        &key.fingerprint,
                    ],
                )
                .await
            })
            .await?;
            Ok(rows.first().map(|r| (r.get(0), local_until(r.get(1)))))
        })
    }

    fn due(&self) -> StoreFuture<'_, Vec<Review>> {
        Box::pin(async move {
            self.select(
                "WHERE status = 'pending' AND expires_at < now()
                   AND (kind = 'elevation' OR instance = $1)
                 LIMIT 1000",
                &[&self.control.instance()],
            )
            .await
        })
    }

    fn orphaned(&self) -> StoreFuture<'_, Vec<Review>> {
        Box::pin(async move {
            self.select(
                "WHERE r.kind = 'statement'
                   AND (r.status = 'pending' OR (r.status = 'approved' AND r.run IS NULL))
                   AND NOT EXISTS (SELECT FROM phigate.nodes n
                       WHERE n.node_id = r.node_id AND n.instance = r.instance
                         AND n.lease_until > now())
                 LIMIT 1000",
                &[],
            )
            .await
        })
    }

    fn elevate<'a>(
        &'a self,
        issuer: &'a str,
        subject: &'a str,
        role: &'a str,
        review: &'a str,
        until: SystemTime,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            on(&self.control, |c| async move {
                c.execute(
                    "INSERT INTO phigate.elevations (issuer, subject, role, review, until)
                     VALUES ($1, $2, $3, $4, now() + $5::float8 * interval '1 second')
                     ON CONFLICT (issuer, subject, role)
                     DO UPDATE SET review = EXCLUDED.review, until = EXCLUDED.until",
                    &[&issuer, &subject, &role, &review, &remaining(until)],
                )
                .await
            })
            .await
            .map(drop)
        })
    }

    fn elevations(&self) -> StoreFuture<'_, Vec<(String, String, String, SystemTime)>> {
        Box::pin(async move {
            let rows = on(&self.control, |c| async move {
                c.query(
                    "SELECT issuer, subject, role, extract(epoch FROM until - now())::float8
                     FROM phigate.elevations WHERE until > now() LIMIT 10000",
                    &[],
                )
                .await
            })
            .await?;
            Ok(rows
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), local_until(r.get(3))))
                .collect())
        })
    }
}
