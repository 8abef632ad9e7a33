//! Just-in-time approval: a statement a rule holds waits on the wire while a reviewer decides
//! (docs/approvals.md).
//!
//! The session that holds a statement hands it to [`Approvals::hold`], which opens a review,
//! waits for its outcome and settles what the session does with the statement; reviewers decide
//! through the HTTP API (`phigate review approve|deny`). Separation of duties: nobody decides a
//! review of their own statement.
//!
//! This module alone changes a review's state. Every transition — open, approve (one of
//! several, the last one, break-glass), deny, expire, withdraw, execute, forfeit — is one
//! compare-and-set on the stored review ([`ApprovalStore::swap`]): among racing transitions
//! exactly one wins, and the winner alone emits the transition's audit event, announces it and
//! applies its effect (a fingerprint grant, an elevation grant). The rules of each transition are
//! pure ([`machine`]); the store only keeps reviews and wakes waiters.
//!
//! Pending reviews live in memory (the statement text may carry PHI); every step is written to
//! the audit log, and `reviews.jsonl` in the data directory keeps a redacted history so that a
//! review pending when the gateway stopped is reported expired after the restart.

mod hold;
pub mod machine;
mod notifier;
mod shared;
mod store;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;

pub use hold::{
    settle, ClientEnd, HoldClient, HoldRequest, Interrupts, Settled, Settlement, Transition,
    WaitEnd,
};
pub use machine::{Action, Decision};
pub use notifier::Notifier;
pub use shared::SharedStore;
pub use store::{ApprovalStore, GrantKey, MemoryStore, StoreError, StoreFuture};

/// Where a review stands, as the API and the history show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Approved,
    Denied,
    Expired,
    Withdrawn,
    /// The node holding the statement stopped renewing its lease (a cluster).
    Abandoned,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Denied => "denied",
            Status::Expired => "expired",
            Status::Withdrawn => "withdrawn",
            Status::Abandoned => "abandoned",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is reviewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A held statement: a session waits on the wire.
    Statement,
    /// An access request for a role: nobody waits.
    Elevation,
}

/// What an approval covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The held statement, once.
    Once,
    /// The requester's statements of the same shape, for `scope_minutes`.
    Fingerprint,
    /// A role, for `scope_minutes`.
    Elevation,
}

/// What became of an approved statement (not shown: its status stays `approved`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// The session ran it.
    Executed,
    /// The session could not run it (credential ended, audit failing, client gone).
    Forfeited,
}

/// How a held statement's review was decided.
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
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Approval {
    pub by: String,
    pub reason: String,
    pub at: String,
}

/// What opening a review needs: who asks, what, and the rule's approval settings.
pub struct Request<'a> {
    pub requester: &'a str,
    /// Who vouched for the requester: break-glass needs the same subject *and* issuer.
    pub issuer: &'a str,
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

/// An access request: `requester` (vouched for by `issuer`, now in `current_role`) asks to act
/// as `role` for `minutes`, because `reason`.
pub struct ElevationRequest<'a> {
    pub issuer: &'a str,
    pub requester: &'a str,
    pub current_role: &'a str,
    pub role: &'a str,
    pub minutes: u64,
    pub reason: &'a str,
    pub timeout: Duration,
    pub reviewer_roles: Vec<String>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Review {
    pub id: String,
    pub status: Status,
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
    /// `scope_minutes`: how long a fingerprint approval or an elevation lasts.
    pub scope: Scope,
    pub scope_minutes: Option<u64>,
    /// Approved by the requester under break-glass.
    pub break_glass: bool,
    pub kind: Kind,
    /// For an elevation: the role asked for (for `scope_minutes` once approved).
    pub elevate_to: Option<String>,
    /// Who vouched for the requester: for an elevation, the grant is for that issuer only;
    /// for a statement, only the requester at that issuer may approve it under break-glass.
    pub issuer: Option<String>,
    #[serde(skip)]
    pub(crate) fingerprint: Option<String>,
    /// For an approved statement: whether it ran (set once, by the holding session).
    #[serde(skip)]
    pub run: Option<Run>,
    /// Bumped by every stored transition: the compare in compare-and-set.
    #[serde(skip)]
    pub version: u64,
}

impl Review {
    /// The decision, once there is one.
    pub fn outcome(&self) -> Option<Outcome> {
        let by = self.decided_by.clone().unwrap_or_default();
        let reason = self.decision_reason.clone().unwrap_or_default();
        match self.status {
            Status::Approved => Some(Outcome::Approved {
                by,
                reason,
                break_glass: self.break_glass,
            }),
            Status::Denied => Some(Outcome::Denied { by, reason }),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecideError {
    #[error("no review {0}")]
    NotFound(String),
    #[error("review {id} is already {status}")]
    NotPending { id: String, status: Status },
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
    #[error("the review store is unavailable: {0}")]
    Store(String),
}

impl From<StoreError> for DecideError {
    fn from(e: StoreError) -> Self {
        DecideError::Store(e.to_string())
    }
}

/// What a decision did.
pub struct Decided {
    pub review: Review,
    /// The review is over (approved or denied); otherwise it waits for more approvals.
    pub last: bool,
}

/// Opening an access request failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the review store is unavailable: {0}")]
    Store(#[from] StoreError),
    #[error("the audit log cannot be written")]
    Audit,
    /// The requester asked too often (`limits.access_requests_per_hour`).
    #[error("you made {0} access requests in the last hour (limits.access_requests_per_hour); wait before asking again")]
    TooOften(u32),
    /// Too many requests wait for a decision (`limits.pending_access_requests`).
    #[error("{0} access requests already wait for a decision; try again once reviewers have decided some")]
    QueueFull(usize),
}

/// How often access requests may be made, and how many may wait.
struct RequestLimits {
    per_hour: u32,
    max_pending: usize,
    /// When each individual (issuer, subject) asked within the last hour. Holds only those who
    /// asked within the hour, each at most `per_hour` times.
    recent: Mutex<HashMap<(String, String), VecDeque<SystemTime>>>,
}

/// The approvals of one gateway: the store, and what every transition tells (the audit log,
/// the webhook) and grants (elevations).
pub struct Approvals {
    store: Box<dyn ApprovalStore>,
    audit: Option<phigate_audit::AuditHandle>,
    /// Replaced by a reload (`approvals.webhook_url`).
    notifier: crate::live::Live<Option<Notifier>>,
    /// Where approved elevations go (the authenticator reads them at login).
    elevations: Arc<crate::auth::Elevations>,
    /// Reviews that were pending when the gateway last stopped.
    pub expired_at_start: usize,
    requests: RequestLimits,
    /// Reviews of holds that ended without settling, to settle (bounded: 4,096).
    left: Mutex<Vec<String>>,
}

pub(crate) fn new_id() -> String {
    format!("r-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
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

impl Approvals {
    /// Approvals kept in memory, with the history in `data_dir` (if any): reviews left pending
    /// there are recorded expired.
    pub fn open(data_dir: Option<&std::path::Path>) -> Approvals {
        let store = MemoryStore::open(data_dir);
        let expired_at_start = store.expired_at_start();
        Approvals {
            store: Box::new(store),
            audit: None,
            notifier: Default::default(),
            elevations: Default::default(),
            expired_at_start,
            requests: RequestLimits::default(),
            left: Mutex::default(),
        }
    }

    /// Over any store (a control database shared by several gateways, for one).
    pub fn with_store(store: Box<dyn ApprovalStore>) -> Approvals {
        Approvals {
            store,
            audit: None,
            notifier: Default::default(),
            elevations: Default::default(),
            expired_at_start: 0,
            requests: RequestLimits::default(),
            left: Mutex::default(),
        }
    }

    /// At most `per_hour` access requests per individual in any hour, at most `max_pending`
    /// waiting for a decision.
    pub fn limit_requests(mut self, per_hour: u32, max_pending: usize) -> Self {
        self.requests.per_hour = per_hour;
        self.requests.max_pending = max_pending;
        self
    }

    /// Every transition's audit event goes to `audit`.
    pub fn audit_to(mut self, audit: Option<phigate_audit::AuditHandle>) -> Self {
        self.audit = audit;
        self
    }

    /// Every review state is announced by `notifier`.
    pub fn notify(self, notifier: Option<Notifier>) -> Self {
        self.notifier.set(notifier);
        self
    }

    /// From now on, review states are announced by `notifier` (a reload).
    pub fn set_notifier(&self, notifier: Option<Notifier>) {
        self.notifier.set(notifier);
    }

    /// Approved elevations are granted in `elevations`.
    pub fn grant_elevations_in(mut self, elevations: Arc<crate::auth::Elevations>) -> Self {
        self.elevations = elevations;
        self
    }

    fn submit(&self, event: phigate_audit::Event) {
        if let Some(a) = &self.audit {
            a.submit(phigate_audit::Pending::Event(event));
        }
    }

    fn announce(&self, review: &Review) {
        if let Some(n) = self.notifier.get().as_ref() {
            n.send(review);
        }
    }

    /// Opens a review of a held statement (its `review_requested` is queued for the log).
    pub async fn open_review(&self, req: Request<'_>) -> Result<Review, StoreError> {
        let review = machine::statement_review(req, SystemTime::now());
        self.store.create(&review).await?;
        self.announce(&review);
        self.submit(machine::requested_event(
            &review,
            review.justification.clone(),
        ));
        Ok(review)
    }

    /// Opens an access request. Nobody waits on the wire; an approval lets the requester log in
    /// with that role until it runs out. Its `review_requested` is durable before it returns.
    pub async fn open_elevation(
        &self,
        audit: Option<&phigate_audit::Auditor>,
        req: ElevationRequest<'_>,
    ) -> Result<Review, OpenError> {
        let now = SystemTime::now();
        let waiting = self
            .store
            .list(false)
            .await?
            .iter()
            .filter(|r| r.kind == Kind::Elevation)
            .count();
        if waiting >= self.requests.max_pending {
            return Err(OpenError::QueueFull(waiting));
        }
        self.requests.admit(req.issuer, req.requester, now)?;
        let justification = Some(req.reason.to_owned());
        let review = machine::elevation_review(req, now);
        self.store.create(&review).await?;
        self.announce(&review);
        if let Some(audit) = audit {
            let event =
                phigate_audit::Pending::Event(machine::requested_event(&review, justification));
            audit.write(event).await.map_err(|_| OpenError::Audit)?;
        }
        Ok(review)
    }

    /// Runs `action` on review `id` with compare-and-set: the review is read, the action's rules
    /// checked against what was read, and the result stored only if nobody changed the review
    /// meanwhile (else all of it again, so a transition that lost a race sees the winner's
    /// state and fails). The winner emits the audit event and applies the effects.
    pub async fn transition(&self, id: &str, action: &Action<'_>) -> Result<Review, DecideError> {
        let mut action = action;
        let mut lapsed = false;
        loop {
            let current = self
                .store
                .get(id)
                .await?
                .ok_or_else(|| DecideError::NotFound(id.to_owned()))?;
            let now = SystemTime::now();
            let step = match machine::apply(&current, action, now) {
                Ok(step) => step,
                // An access request nobody decided in time lapses when someone tries.
                Err(machine::Refused::Lapsed) => {
                    action = &Action::Expire;
                    lapsed = true;
                    continue;
                }
                Err(machine::Refused::Decide(e)) => return Err(e),
            };
            if !self.store.swap(current.version, &step.review).await? {
                continue;
            }
            for event in step.events {
                self.submit(event);
            }
            if step.announce {
                self.announce(&step.review);
            }
            match step.effect {
                machine::Effect::None => {}
                machine::Effect::GrantElevation {
                    issuer,
                    subject,
                    role,
                    until,
                } => {
                    self.elevations.grant(&issuer, &subject, &role, until);
                    if let Err(e) = self
                        .store
                        .elevate(&issuer, &subject, &role, id, until)
                        .await
                    {
                        tracing::error!(review = %id, error = %e, "an approved elevation holds on this node only: the control database did not take it");
                    }
                }
                machine::Effect::GrantFingerprint { key, until } => {
                    self.store.grant(&key, id, until).await?
                }
            }
            if lapsed {
                return Err(DecideError::NotPending {
                    id: id.to_owned(),
                    status: Status::Expired,
                });
            }
            return Ok(step.review);
        }
    }

    /// Expires every pending review whose time has passed (run now and then, so that a request
    /// nobody decides does not wait, nor stay in memory, forever). Returns how many.
    pub async fn expire_due(&self) -> usize {
        let Ok(due) = self.store.due().await else {
            return 0;
        };
        let mut expired = 0;
        for r in &due {
            if self.transition(&r.id, &Action::Expire).await.is_ok() {
                expired += 1;
            }
        }
        expired
    }

    /// Marks abandoned every pending review of a statement held by a node whose lease lapsed,
    /// and forfeits every approved one it had not run (a cluster: that node's client is gone
    /// with it). Returns how many.
    pub async fn abandon_orphans(&self) -> usize {
        let Ok(orphans) = self.store.orphaned().await else {
            return 0;
        };
        let mut abandoned = 0;
        for r in &orphans {
            // Pending: abandoned. Approved but not run: it never will be (its client went with
            // its node): forfeited.
            let action = match r.status {
                Status::Pending => Action::Abandon,
                _ => Action::Forfeit {
                    reason: Some("the node holding the statement is gone"),
                },
            };
            if self.transition(&r.id, &action).await.is_ok() {
                abandoned += 1;
            }
        }
        abandoned
    }

    /// Grants here the elevations other nodes approved (a cluster). Returns how many hold.
    pub async fn sync_elevations(&self) -> usize {
        let Ok(all) = self.store.elevations().await else {
            return 0;
        };
        for (issuer, subject, role, until) in &all {
            self.elevations.grant(issuer, subject, role, *until);
        }
        all.len()
    }

    /// Settles the reviews of holds that ended without settling (a session dropped while its
    /// statement waited) that could not be settled at once.
    pub async fn settle_left(&self) {
        let left = std::mem::take(&mut *self.left.lock().unwrap_or_else(|e| e.into_inner()));
        for id in left {
            self.withdraw_left(&id).await;
        }
    }

    /// Withdraws the review of a hold that ended without settling (or forfeits its approval).
    async fn withdraw_left(&self, id: &str) {
        let withdraw = Action::Withdraw { reason: None };
        if self.transition(id, &withdraw).await.is_err() {
            let _ = self.transition(id, &Action::Forfeit { reason: None }).await;
        }
    }

    /// A hold ended without settling its review: settled now if the store answers at once,
    /// else by the next [`settle_left`](Approvals::settle_left).
    pub(crate) fn left_behind(&self, id: String) {
        use futures_util::FutureExt;
        if self.withdraw_left(&id).now_or_never().is_none() {
            let mut left = self.left.lock().unwrap_or_else(|e| e.into_inner());
            // Bounded: a store that stays unreachable loses these (each review then expires).
            if left.len() < 4096 {
                left.push(id);
            }
        }
    }

    /// A reviewer's decision (approve or deny; with `break_glass`, the requester approves their
    /// own statement).
    pub async fn decide(&self, id: &str, decision: &Decision<'_>) -> Result<Decided, DecideError> {
        let review = self
            .transition(id, &Action::Decide(decision.clone()))
            .await?;
        let last = review.status != Status::Pending;
        Ok(Decided { review, last })
    }

    /// A live `fingerprint` approval covering this statement: the review that granted it and
    /// until when.
    pub async fn granted(&self, key: &GrantKey) -> Option<(String, String)> {
        let (review, until) = self.store.granted(key).await.ok().flatten()?;
        (until > SystemTime::now()).then(|| (review, rfc3339(until)))
    }

    pub async fn list(&self, all: bool) -> Result<Vec<Review>, StoreError> {
        let mut v = self.store.list(all).await?;
        v.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(v)
    }

    pub async fn get(&self, id: &str) -> Result<Option<Review>, StoreError> {
        self.store.get(id).await
    }

    /// Ticks whenever a review is opened or changes (the console's live inbox).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.store.changes()
    }
}

impl Default for RequestLimits {
    fn default() -> Self {
        let limits = crate::config::Limits::default();
        RequestLimits {
            per_hour: limits.access_requests_per_hour,
            max_pending: limits.pending_access_requests,
            recent: Mutex::default(),
        }
    }
}

impl RequestLimits {
    /// Counts one request of (issuer, subject) at `now`, or refuses it.
    fn admit(&self, issuer: &str, subject: &str, now: SystemTime) -> Result<(), OpenError> {
        let hour_ago = now - Duration::from_secs(3600);
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.retain(|_, times| {
            while times.front().is_some_and(|t| *t < hour_ago) {
                times.pop_front();
            }
            !times.is_empty()
        });
        let times = recent
            .entry((issuer.to_owned(), subject.to_owned()))
            .or_default();
        if times.len() >= self.per_hour as usize {
            return Err(OpenError::TooOften(self.per_hour));
        }
        times.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
