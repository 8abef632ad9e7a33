//! Just-in-time approval: a statement a rule holds waits on the wire while a reviewer decides
//! (docs/approvals.md).
//!
//! The session that holds a statement creates a review here and awaits its outcome; reviewers
//! decide through the HTTP API (`phigate review approve|deny`). Separation of duties: nobody
//! decides a review of their own statement. Pending reviews live in memory (the statement text
//! may carry PHI); every step is written to the audit log, and `reviews.jsonl` in the data
//! directory keeps a redacted history so that a review pending when the gateway stopped is
//! reported expired after the restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::oneshot;

/// How a held statement ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Approved { by: String, reason: String },
    Denied { by: String, reason: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct Review {
    pub id: String,
    /// pending, approved, denied, expired, withdrawn
    pub status: String,
    pub requester: String,
    pub role: String,
    pub session: String,
    /// The statement exactly as it will run.
    pub statement: String,
    pub kinds: Vec<String>,
    pub tables: Vec<String>,
    pub rule: String,
    /// The requester's justification: `/* phigate: reason=... */` in the statement.
    pub justification: Option<String>,
    pub created_at: String,
    pub expires_at: String,
    pub decided_by: Option<String>,
    pub decision_reason: Option<String>,
    pub decided_at: Option<String>,
}

struct Entry {
    review: Review,
    waiter: Option<oneshot::Sender<Outcome>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecideError {
    #[error("no review {0}")]
    NotFound(String),
    #[error("review {id} is already {status}")]
    NotPending { id: String, status: String },
    #[error("separation of duties: {0} may not decide a review of their own statement")]
    OwnStatement(String),
}

/// Where reviews are announced: a webhook, retried with backoff.
pub struct Notifier {
    url: String,
    slack: bool,
    client: reqwest::Client,
}

impl Notifier {
    pub fn new(url: &str, slack: bool) -> Option<Notifier> {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .ok()?;
        Some(Notifier {
            url: url.to_owned(),
            slack,
            client,
        })
    }

    /// Announces a review's state (in the background: nothing waits for the webhook).
    fn send(&self, review: &Review) {
        let (statement, _) = phigate_sql::redact_literals(&review.statement);
        let body = if self.slack {
            let text = if review.status == "pending" {
                format!(
                    ":hourglass: phigate review *{}*: {} (role {}) wants to run `{}` (rule {}){}. Approve: `phigate review approve {} --reason \"...\"`",
                    review.id,
                    review.requester,
                    review.role,
                    statement,
                    review.rule,
                    review
                        .justification
                        .as_deref()
                        .map(|j| format!(", because: {j}"))
                        .unwrap_or_default(),
                    review.id
                )
            } else {
                format!(
                    "phigate review *{}* {}{}{}",
                    review.id,
                    review.status,
                    review
                        .decided_by
                        .as_deref()
                        .map(|b| format!(" by {b}"))
                        .unwrap_or_default(),
                    review
                        .decision_reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                )
            };
            serde_json::json!({ "text": text })
        } else {
            let mut r = serde_json::json!(review);
            r["statement"] = serde_json::Value::String(statement);
            serde_json::json!({
                "event": if review.status == "pending" { "review.requested" } else { "review.decided" },
                "review": r,
            })
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (url, client, id) = (self.url.clone(), self.client.clone(), review.id.clone());
        handle.spawn(async move {
            let mut wait = Duration::from_millis(500);
            for attempt in 1..=5 {
                match client.post(&url).json(&body).send().await {
                    Ok(r) if r.status().is_success() => {
                        tracing::info!(review = %id, attempt, "review webhook delivered");
                        return;
                    }
                    Ok(r) => tracing::warn!(review = %id, attempt, status = %r.status(), "review webhook refused"),
                    Err(e) => tracing::warn!(review = %id, attempt, error = %e, "review webhook failed"),
                }
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            tracing::error!(review = %id, "review webhook not delivered after 5 attempts");
        });
    }
}

pub struct Reviews {
    entries: Mutex<HashMap<String, Entry>>,
    history: Option<PathBuf>,
    /// Announces every review state.
    pub notifier: Option<Notifier>,
    /// Reviews that were pending when the gateway last stopped.
    pub expired_at_start: usize,
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// `/* phigate: reason=... */` or `-- phigate: reason=...` in the statement text.
pub fn justification(sql: &str) -> Option<String> {
    let start = sql.find("phigate: reason=")? + "phigate: reason=".len();
    let rest = &sql[start..];
    let end = rest
        .find("*/")
        .or_else(|| rest.find('\n'))
        .unwrap_or(rest.len());
    let r = rest[..end].trim();
    (!r.is_empty()).then(|| r.chars().take(500).collect())
}

impl Reviews {
    /// Opens the history in `data_dir` (if any); reviews left pending are recorded expired.
    pub fn open(data_dir: Option<&std::path::Path>) -> Reviews {
        let history = data_dir.map(|d| d.join("reviews.jsonl"));
        let mut expired = 0;
        if let Some(path) = &history {
            if let Ok(text) = std::fs::read_to_string(path) {
                let mut status: HashMap<String, String> = HashMap::new();
                for line in text.lines() {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                        if let (Some(id), Some(s)) = (v["id"].as_str(), v["status"].as_str()) {
                            status.insert(id.to_owned(), s.to_owned());
                        }
                    }
                }
                for (id, s) in status {
                    if s == "pending" {
                        expired += 1;
                        append(
                            path,
                            &serde_json::json!({"id": id, "status": "expired", "reason": "the gateway stopped while it was pending", "at": now()}),
                        );
                    }
                }
            }
        }
        Reviews {
            entries: Mutex::new(HashMap::new()),
            history,
            notifier: None,
            expired_at_start: expired,
        }
    }

    fn log(&self, review: &Review) {
        if let Some(n) = &self.notifier {
            n.send(review);
        }
        if let Some(path) = &self.history {
            // Redacted: the history outlives the session; the text may carry PHI.
            let (text, _) = phigate_sql::redact_literals(&review.statement);
            append(
                path,
                &serde_json::json!({
                    "id": review.id, "status": review.status, "requester": review.requester,
                    "role": review.role, "rule": review.rule, "statement": text,
                    "decided_by": review.decided_by, "at": now(),
                }),
            );
        }
    }

    /// Opens a review; the receiver yields the decision.
    #[allow(clippy::too_many_arguments)]
    pub fn open_review(
        &self,
        requester: &str,
        role: &str,
        session: &str,
        statement: &str,
        kinds: Vec<String>,
        tables: Vec<String>,
        rule: &str,
        timeout: Duration,
    ) -> (Review, oneshot::Receiver<Outcome>) {
        let id = format!("r-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        let review = Review {
            id: id.clone(),
            status: "pending".into(),
            requester: requester.to_owned(),
            role: role.to_owned(),
            session: session.to_owned(),
            statement: statement.to_owned(),
            kinds,
            tables,
            rule: rule.to_owned(),
            justification: justification(statement),
            created_at: now(),
            expires_at: humantime::format_rfc3339_seconds(SystemTime::now() + timeout).to_string(),
            decided_by: None,
            decision_reason: None,
            decided_at: None,
        };
        let (tx, rx) = oneshot::channel();
        self.log(&review);
        if let Ok(mut m) = self.entries.lock() {
            // Decided reviews are kept for the API until the map grows large.
            if m.len() > 10_000 {
                m.retain(|_, e| e.review.status == "pending");
            }
            m.insert(
                id,
                Entry {
                    review: review.clone(),
                    waiter: Some(tx),
                },
            );
        }
        (review, rx)
    }

    /// A reviewer's decision.
    pub fn decide(
        &self,
        id: &str,
        reviewer: &str,
        approve: bool,
        reason: &str,
    ) -> Result<Review, DecideError> {
        let mut m = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let e = m
            .get_mut(id)
            .ok_or_else(|| DecideError::NotFound(id.to_owned()))?;
        if e.review.status != "pending" {
            return Err(DecideError::NotPending {
                id: id.to_owned(),
                status: e.review.status.clone(),
            });
        }
        if e.review.requester == reviewer {
            return Err(DecideError::OwnStatement(reviewer.to_owned()));
        }
        e.review.status = if approve { "approved" } else { "denied" }.into();
        e.review.decided_by = Some(reviewer.to_owned());
        e.review.decision_reason = Some(reason.to_owned());
        e.review.decided_at = Some(now());
        let outcome = if approve {
            Outcome::Approved {
                by: reviewer.to_owned(),
                reason: reason.to_owned(),
            }
        } else {
            Outcome::Denied {
                by: reviewer.to_owned(),
                reason: reason.to_owned(),
            }
        };
        if let Some(tx) = e.waiter.take() {
            let _ = tx.send(outcome);
        }
        let review = e.review.clone();
        drop(m);
        self.log(&review);
        Ok(review)
    }

    /// The session stopped waiting: timeout, cancel or disconnect. False if a reviewer decided
    /// first (the decision then stands and is on its way to the session).
    pub fn close(&self, id: &str, status: &str) -> bool {
        let review = {
            let mut m = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            let Some(e) = m.get_mut(id) else { return false };
            if e.review.status != "pending" {
                return false;
            }
            e.review.status = status.to_owned();
            e.review.decided_at = Some(now());
            e.waiter = None;
            e.review.clone()
        };
        self.log(&review);
        true
    }

    pub fn list(&self, all: bool) -> Vec<Review> {
        let m = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<Review> = m
            .values()
            .filter(|e| all || e.review.status == "pending")
            .map(|e| e.review.clone())
            .collect();
        v.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        v
    }

    pub fn get(&self, id: &str) -> Option<Review> {
        let m = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        m.get(id).map(|e| e.review.clone())
    }
}

fn append(path: &std::path::Path, v: &serde_json::Value) {
    use std::io::Write;
    let line = format!("{v}\n");
    let result = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot record a review in the history");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separation_of_duties_and_one_decision() {
        let r = Reviews::open(None);
        let (rev, mut rx) = r.open_review(
            "agent",
            "ai-agent",
            "s1",
            "DELETE FROM t /* phigate: reason=cleanup of test rows */",
            vec![],
            vec![],
            "rule",
            Duration::from_secs(60),
        );
        assert_eq!(rev.justification.as_deref(), Some("cleanup of test rows"));
        assert_eq!(
            r.decide(&rev.id, "agent", true, "mine").map(|r| r.id),
            Err(DecideError::OwnStatement("agent".into()))
        );
        assert!(r.decide(&rev.id, "reviewer", true, "ok").is_ok());
        assert!(matches!(rx.try_recv(), Ok(Outcome::Approved { .. })));
        assert!(matches!(
            r.decide(&rev.id, "reviewer2", false, "no"),
            Err(DecideError::NotPending { .. })
        ));
    }
}
