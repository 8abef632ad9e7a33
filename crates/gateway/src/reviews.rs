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
    Approved {
        by: String,
        reason: String,
        /// The requester approved it under break-glass (emergency access).
        break_glass: bool,
    },
    Denied {
        by: String,
        reason: String,
    },
}

/// One reviewer's approval of a review that needs several.
#[derive(Debug, Clone, Serialize)]
pub struct Approval {
    pub by: String,
    pub reason: String,
    pub at: String,
}

/// What opening a review needs: who asks, what, and the rule's approval settings.
pub struct Request<'a> {
    pub requester: &'a str,
    pub role: &'a str,
    pub session: &'a str,
    pub statement: &'a str,
    pub kinds: Vec<String>,
    pub tables: Vec<String>,
    pub rule: &'a str,
    pub timeout: Duration,
    pub approvals_required: u32,
    pub reviewer_roles: Vec<String>,
    /// `Some((fingerprint, minutes))` when an approval covers the statement's fingerprint.
    pub scope: Option<(String, u64)>,
    /// PHI columns (`schema.table.column`) of the tables the statement touches.
    pub phi_columns: Vec<String>,
    /// The session's `SET phigate.reason`, used when the statement carries no reason.
    pub session_reason: Option<String>,
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
    /// PHI columns (tagged in `[[phi]]`) of the tables it touches.
    pub phi_columns: Vec<String>,
    pub rule: String,
    /// The requester's justification: `/* phigate: reason=... */` in the statement, else the
    /// session's `SET phigate.reason = '...'`.
    pub justification: Option<String>,
    pub created_at: String,
    pub expires_at: String,
    pub decided_by: Option<String>,
    pub decision_reason: Option<String>,
    pub decided_at: Option<String>,
    /// Distinct approvals needed, and those given so far.
    pub approvals_required: u32,
    pub approvals: Vec<Approval>,
    /// Roles that may decide it.
    pub reviewer_roles: Vec<String>,
    /// `once`, `fingerprint`, or `elevation`; `scope_minutes`: how long a fingerprint
    /// approval or an elevation lasts.
    pub scope: String,
    pub scope_minutes: Option<u64>,
    /// Approved by the requester under break-glass.
    pub break_glass: bool,
    /// `statement` (a held statement) or `elevation` (an access request for a role).
    pub kind: String,
    /// For an elevation: the role asked for (for `scope_minutes` once approved).
    pub elevate_to: Option<String>,
    /// For an elevation: who vouched for the requester (the grant is for that issuer only).
    pub issuer: Option<String>,
    #[serde(skip)]
    fingerprint: Option<String>,
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
    #[error("role {role} may not decide review {id} (its rule takes reviewers of {allowed})")]
    WrongRole {
        id: String,
        role: String,
        allowed: String,
    },
    #[error("{0} has approved this review already; it needs another reviewer")]
    AlreadyApproved(String),
    #[error("break-glass: only the requester may approve their own statement this way, and only for roles in approvals.break_glass_roles")]
    BreakGlassRefused,
}

/// What a decision did.
pub struct Decided {
    pub review: Review,
    /// The review is over (approved or denied); otherwise it waits for more approvals.
    pub last: bool,
}

/// Where reviews are announced: a webhook, retried with backoff.
pub struct Notifier {
    url: String,
    slack: bool,
    client: reqwest::Client,
    /// Where deliveries (and give-ups) are recorded.
    pub audit: Option<phigate_audit::AuditHandle>,
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
            audit: None,
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
            } else if review.break_glass {
                format!(
                    ":rotating_light: BREAK-GLASS: {} (role {}) approved their own statement `{}` (rule {}), review *{}*: {}",
                    review.requester,
                    review.role,
                    statement,
                    review.rule,
                    review.id,
                    review.decision_reason.as_deref().unwrap_or("")
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
            let event = match (review.status.as_str(), review.break_glass) {
                ("pending", _) => "review.requested",
                (_, true) => "review.break_glass",
                _ => "review.decided",
            };
            serde_json::json!({ "event": event, "review": r })
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (url, client, id) = (self.url.clone(), self.client.clone(), review.id.clone());
        let (audit, status) = (self.audit.clone(), review.status.clone());
        let record = move |delivered: bool, attempts: u32| {
            if let Some(a) = &audit {
                a.submit(phigate_audit::Pending::Event(
                    phigate_audit::Event::ReviewNotified {
                        review: id.clone(),
                        status: status.clone(),
                        delivered,
                        attempts,
                    },
                ));
            }
        };
        let id = review.id.clone();
        handle.spawn(async move {
            let mut wait = Duration::from_millis(500);
            for attempt in 1..=5 {
                match client.post(&url).json(&body).send().await {
                    Ok(r) if r.status().is_success() => {
                        tracing::info!(review = %id, attempt, "review webhook delivered");
                        record(true, attempt);
                        return;
                    }
                    Ok(r) => tracing::warn!(review = %id, attempt, status = %r.status(), "review webhook refused"),
                    Err(e) => tracing::warn!(review = %id, attempt, error = %e, "review webhook failed"),
                }
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            tracing::error!(review = %id, "review webhook not delivered after 5 attempts");
            record(false, 5);
        });
    }
}

/// An approval with `fingerprint` scope: (subject, role, rule, fingerprint) → (review, until).
type Grants = HashMap<(String, String, String, String), (String, SystemTime)>;

pub struct Reviews {
    entries: Mutex<HashMap<String, Entry>>,
    grants: Mutex<Grants>,
    /// Where approved elevations go (the authenticator reads them at login).
    pub elevations: std::sync::Arc<crate::auth::Elevations>,
    history: Option<PathBuf>,
    /// Announces every review state.
    pub notifier: Option<Notifier>,
    /// Reviews that were pending when the gateway last stopped.
    pub expired_at_start: usize,
}

fn new_id() -> String {
    format!("r-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
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
            grants: Mutex::new(HashMap::new()),
            elevations: Default::default(),
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
    pub fn open_review(&self, req: Request<'_>) -> (Review, oneshot::Receiver<Outcome>) {
        let review = Review {
            id: new_id(),
            status: "pending".into(),
            requester: req.requester.to_owned(),
            role: req.role.to_owned(),
            session: req.session.to_owned(),
            statement: req.statement.to_owned(),
            kinds: req.kinds,
            tables: req.tables,
            phi_columns: req.phi_columns,
            rule: req.rule.to_owned(),
            justification: justification(req.statement).or(req.session_reason),
            created_at: now(),
            expires_at: humantime::format_rfc3339_seconds(SystemTime::now() + req.timeout)
                .to_string(),
            decided_by: None,
            decision_reason: None,
            decided_at: None,
            approvals_required: req.approvals_required.max(1),
            approvals: Vec::new(),
            reviewer_roles: req.reviewer_roles,
            scope: if req.scope.is_some() {
                "fingerprint"
            } else {
                "once"
            }
            .into(),
            scope_minutes: req.scope.as_ref().map(|(_, m)| *m),
            break_glass: false,
            kind: "statement".into(),
            elevate_to: None,
            issuer: None,
            fingerprint: req.scope.map(|(f, _)| f),
        };
        let (tx, rx) = oneshot::channel();
        self.register(&review, Some(tx));
        (review, rx)
    }

    /// Announces and keeps a new review (`waiter`: the session holding its statement).
    fn register(&self, review: &Review, waiter: Option<oneshot::Sender<Outcome>>) {
        self.log(review);
        let mut m = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        // Decided reviews are kept for the API until the map grows large.
        if m.len() > 10_000 {
            m.retain(|_, e| e.review.status == "pending");
        }
        m.insert(
            review.id.clone(),
            Entry {
                review: review.clone(),
                waiter,
            },
        );
    }

    /// An access request: `requester` asks to act as `role` for `minutes`, because `reason`.
    /// Nobody waits on the wire; an approval lets the requester log in with that role until
    /// it runs out.
    #[allow(clippy::too_many_arguments)]
    pub fn open_elevation(
        &self,
        issuer: &str,
        requester: &str,
        current_role: &str,
        role: &str,
        minutes: u64,
        reason: &str,
        timeout: Duration,
        reviewer_roles: Vec<String>,
    ) -> Review {
        let review = Review {
            id: new_id(),
            status: "pending".into(),
            requester: requester.to_owned(),
            role: current_role.to_owned(),
            session: String::new(),
            statement: format!("act as role {role} for {minutes} minutes"),
            kinds: vec!["elevation".into()],
            tables: Vec::new(),
            phi_columns: Vec::new(),
            rule: "elevation".into(),
            justification: Some(reason.chars().take(500).collect()),
            created_at: now(),
            expires_at: humantime::format_rfc3339_seconds(SystemTime::now() + timeout).to_string(),
            decided_by: None,
            decision_reason: None,
            decided_at: None,
            approvals_required: 1,
            approvals: Vec::new(),
            reviewer_roles,
            scope: "elevation".into(),
            scope_minutes: Some(minutes),
            break_glass: false,
            kind: "elevation".into(),
            elevate_to: Some(role.to_owned()),
            issuer: Some(issuer.to_owned()),
            fingerprint: None,
        };
        self.register(&review, None);
        review
    }

    /// A reviewer's decision (`role`: the reviewer's gateway role). With `break_glass`, the
    /// requester approves their own statement (`break_glass_roles`: roles allowed to).
    #[allow(clippy::too_many_arguments)]
    pub fn decide(
        &self,
        id: &str,
        reviewer: &str,
        role: &str,
        approve: bool,
        reason: &str,
        break_glass: bool,
        break_glass_roles: &[String],
    ) -> Result<Decided, DecideError> {
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
        // An access request nobody decided in time lapses.
        if e.review.kind == "elevation"
            && humantime::parse_rfc3339_weak(&e.review.expires_at)
                .is_ok_and(|t| t < SystemTime::now())
        {
            e.review.status = "expired".into();
            return Err(DecideError::NotPending {
                id: id.to_owned(),
                status: "expired".into(),
            });
        }
        if break_glass && e.review.kind == "elevation" {
            return Err(DecideError::BreakGlassRefused);
        }
        let at = now();
        if break_glass {
            if !approve
                || e.review.requester != reviewer
                || !break_glass_roles.contains(&e.review.role)
            {
                return Err(DecideError::BreakGlassRefused);
            }
            e.review.break_glass = true;
        } else {
            if e.review.requester == reviewer {
                return Err(DecideError::OwnStatement(reviewer.to_owned()));
            }
            if !e.review.reviewer_roles.iter().any(|r| r == role) {
                return Err(DecideError::WrongRole {
                    id: id.to_owned(),
                    role: role.to_owned(),
                    allowed: e.review.reviewer_roles.join(", "),
                });
            }
            if approve {
                if e.review.approvals.iter().any(|a| a.by == reviewer) {
                    return Err(DecideError::AlreadyApproved(reviewer.to_owned()));
                }
                e.review.approvals.push(Approval {
                    by: reviewer.to_owned(),
                    reason: reason.to_owned(),
                    at: at.clone(),
                });
                if (e.review.approvals.len() as u32) < e.review.approvals_required {
                    let review = e.review.clone();
                    drop(m);
                    self.log(&review);
                    return Ok(Decided {
                        review,
                        last: false,
                    });
                }
            }
        }
        let by = if approve && !break_glass {
            e.review
                .approvals
                .iter()
                .map(|a| a.by.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            reviewer.to_owned()
        };
        e.review.status = if approve { "approved" } else { "denied" }.into();
        e.review.decided_by = Some(by.clone());
        e.review.decision_reason = Some(reason.to_owned());
        e.review.decided_at = Some(at);
        let outcome = if approve {
            Outcome::Approved {
                by,
                reason: reason.to_owned(),
                break_glass,
            }
        } else {
            Outcome::Denied {
                by,
                reason: reason.to_owned(),
            }
        };
        if approve {
            if let (Some(role), Some(minutes), Some(issuer)) = (
                &e.review.elevate_to,
                e.review.scope_minutes,
                &e.review.issuer,
            ) {
                let until = SystemTime::now() + Duration::from_secs(minutes * 60);
                self.elevations
                    .grant(issuer, &e.review.requester, role, until);
            }
        }
        if let Some(tx) = e.waiter.take() {
            let _ = tx.send(outcome);
        }
        let review = e.review.clone();
        drop(m);
        self.log(&review);
        Ok(Decided { review, last: true })
    }

    /// The held statement of review `id` ran: an approval with `fingerprint` scope now covers
    /// its requester's statements of the same shape, in the same role, under the same rule,
    /// for its minutes. A break-glass approval covers nothing further.
    pub fn grant_fingerprint(&self, id: &str) {
        let Some(r) = self.get(id) else {
            return;
        };
        if r.status != "approved" || r.break_glass {
            return;
        }
        let (Some(fp), Some(minutes)) = (r.fingerprint, r.scope_minutes) else {
            return;
        };
        let until = SystemTime::now() + Duration::from_secs(minutes * 60);
        let mut g = self.grants.lock().unwrap_or_else(|e| e.into_inner());
        g.retain(|_, (_, t)| *t > SystemTime::now());
        g.insert((r.requester, r.role, r.rule, fp), (id.to_owned(), until));
    }

    /// A live `fingerprint` approval covering this statement: the review that granted it and
    /// until when.
    pub fn granted(
        &self,
        subject: &str,
        role: &str,
        rule: &str,
        fingerprint: &str,
    ) -> Option<(String, String)> {
        let g = self.grants.lock().unwrap_or_else(|e| e.into_inner());
        let key = (
            subject.to_owned(),
            role.to_owned(),
            rule.to_owned(),
            fingerprint.to_owned(),
        );
        let (review, until) = g.get(&key)?;
        (*until > SystemTime::now()).then(|| {
            (
                review.clone(),
                humantime::format_rfc3339_seconds(*until).to_string(),
            )
        })
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
        let (rev, mut rx) = r.open_review(request(
            "DELETE FROM t /* phigate: reason=cleanup of test rows */",
            1,
        ));
        assert_eq!(rev.justification.as_deref(), Some("cleanup of test rows"));
        assert_eq!(
            r.decide(&rev.id, "agent", "reviewer", true, "mine", false, &[])
                .map(|d| d.review.id),
            Err(DecideError::OwnStatement("agent".into()))
        );
        assert!(matches!(
            r.decide(&rev.id, "dba", "ai-agent", true, "ok", false, &[]),
            Err(DecideError::WrongRole { .. })
        ));
        assert!(r
            .decide(&rev.id, "reviewer", "reviewer", true, "ok", false, &[])
            .is_ok_and(|d| d.last));
        assert!(matches!(rx.try_recv(), Ok(Outcome::Approved { .. })));
        assert!(matches!(
            r.decide(&rev.id, "reviewer2", "reviewer", false, "no", false, &[]),
            Err(DecideError::NotPending { .. })
        ));
    }

    fn request(sql: &str, approvals: u32) -> Request<'_> {
        Request {
            requester: "agent",
            role: "ai-agent",
            session: "s1",
            statement: sql,
            kinds: vec![],
            tables: vec![],
            rule: "rule",
            timeout: Duration::from_secs(60),
            approvals_required: approvals,
            reviewer_roles: vec!["reviewer".into()],
            scope: Some(("fp".into(), 5)),
            phi_columns: Vec::new(),
            session_reason: None,
        }
    }

    #[test]
    fn two_approvals_from_two_people_then_a_fingerprint_grant() {
        let r = Reviews::open(None);
        let (rev, mut rx) = r.open_review(request("UPDATE t SET a = 1", 2));
        let first = r
            .decide(&rev.id, "ann", "reviewer", true, "fine", false, &[])
            .expect("first approval");
        assert!(!first.last && first.review.status == "pending");
        assert!(
            rx.try_recv().is_err(),
            "one approval of two does not release it"
        );
        assert_eq!(
            r.decide(&rev.id, "ann", "reviewer", true, "again", false, &[])
                .map(|d| d.last),
            Err(DecideError::AlreadyApproved("ann".into()))
        );
        assert!(r.granted("agent", "ai-agent", "rule", "fp").is_none());
        let second = r
            .decide(&rev.id, "bob", "reviewer", true, "ok", false, &[])
            .expect("second approval");
        assert!(second.last);
        assert!(matches!(rx.try_recv(), Ok(Outcome::Approved { by, .. }) if by == "ann, bob"));
        // The grant starts when the statement runs.
        assert!(r.granted("agent", "ai-agent", "rule", "fp").is_none());
        r.grant_fingerprint(&rev.id);
        assert_eq!(
            r.granted("agent", "ai-agent", "rule", "fp").map(|g| g.0),
            Some(rev.id)
        );
        assert!(r
            .granted("someone-else", "ai-agent", "rule", "fp")
            .is_none());
        assert!(r.granted("agent", "clinician", "rule", "fp").is_none());
        assert!(r.granted("agent", "ai-agent", "rule", "other").is_none());
    }

    #[test]
    fn break_glass_is_the_requesters_and_only_for_listed_roles() {
        let r = Reviews::open(None);
        let (rev, mut rx) = r.open_review(request("UPDATE t SET a = 1", 2));
        let allowed = vec!["ai-agent".to_owned()];
        assert_eq!(
            r.decide(&rev.id, "someone", "x", true, "emergency", true, &allowed)
                .map(|d| d.last),
            Err(DecideError::BreakGlassRefused)
        );
        assert_eq!(
            r.decide(&rev.id, "agent", "x", true, "emergency", true, &[])
                .map(|d| d.last),
            Err(DecideError::BreakGlassRefused)
        );
        let d = r
            .decide(
                &rev.id,
                "agent",
                "x",
                true,
                "patient coding, no reviewer",
                true,
                &allowed,
            )
            .expect("break-glass");
        assert!(d.last && d.review.break_glass);
        r.grant_fingerprint(&rev.id);
        assert!(
            r.granted("agent", "ai-agent", "rule", "fp").is_none(),
            "break-glass covers nothing further"
        );
        assert!(matches!(
            rx.try_recv(),
            Ok(Outcome::Approved {
                break_glass: true,
                ..
            })
        ));
    }
}
