//! The review state machine, pure: what each transition requires of the review as read, what
//! it turns the review into, the audit events it emits and the grant it makes. No IO, no clock
//! of its own (the caller passes `now`), so every rule is a unit test; [`super::Approvals`]
//! stores the result with compare-and-set.
//!
//! ```text
//!             approve (one of several) ─┐
//!                                       ▼
//! open ──▶ pending ──approve (last) / break-glass──▶ approved ──execute──▶ (ran)
//!             │                                         └──────forfeit──▶ (did not run)
//!             ├──deny──▶ denied
//!             ├──expire──▶ expired     (timeout; an access request decided too late)
//!             └──withdraw──▶ withdrawn (cancel, disconnect, shutdown)
//! ```

use std::time::{Duration, SystemTime};

use phigate_audit::Event;

use crate::auth::Individual;

use super::{
    justification, new_id, rfc3339, Approval, DecideError, ElevationRequest, GrantKey, Kind,
    Request, Review, Run, Scope, Status,
};

/// A reviewer's decision.
#[derive(Debug, Clone)]
pub struct Decision<'a> {
    pub reviewer: &'a str,
    /// Who vouched for the reviewer (break-glass: the requester is subject and issuer).
    pub reviewer_issuer: &'a str,
    /// The reviewer's gateway role.
    pub role: &'a str,
    pub approve: bool,
    pub reason: &'a str,
    /// The requester approves their own statement (emergency access).
    pub break_glass: bool,
    /// Roles whose requesters may do so (`approvals.break_glass_roles`).
    pub break_glass_roles: &'a [String],
}

/// A transition of one review.
#[derive(Debug, Clone)]
pub enum Action<'a> {
    /// Approve (one approval of several, or the last) or deny.
    Decide(Decision<'a>),
    /// Nobody decided in time.
    Expire,
    /// The requester stopped waiting: cancel, disconnect, shutdown (`reason` for the log).
    Withdraw { reason: Option<&'a str> },
    /// The approved statement runs: a `fingerprint` approval now covers statements like it.
    Execute,
    /// The approved statement cannot run (credential ended, audit failing, client gone): the
    /// log says it was withdrawn after its approval.
    Forfeit { reason: Option<&'a str> },
    /// The node holding the statement is gone (its lease lapsed): nobody can run it.
    Abandon,
}

/// Why a transition does not apply to the review as read.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Decide(DecideError),
    /// An access request decided after its time: it expires instead.
    Lapsed,
}

/// What a transition grants once it is stored.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    None,
    GrantElevation {
        issuer: String,
        subject: String,
        role: String,
        until: SystemTime,
    },
    GrantFingerprint {
        key: GrantKey,
        until: SystemTime,
    },
}

/// A transition's result: the review to store, and what its winner does then.
#[derive(Debug)]
pub struct Step {
    pub review: Review,
    pub events: Vec<Event>,
    /// Its status (or approvals) changed: announced to the webhook.
    pub announce: bool,
    pub effect: Effect,
}

fn not_pending(r: &Review) -> Refused {
    Refused::Decide(DecideError::NotPending {
        id: r.id.clone(),
        status: r.status,
    })
}

fn decided_event(r: &Review, status: Status, reason: Option<String>) -> Event {
    Event::ReviewDecided {
        review: r.id.clone(),
        status: status.as_str().to_owned(),
        by: r
            .decided_by
            .clone()
            .filter(|_| !matches!(status, Status::Withdrawn | Status::Abandoned)),
        reason,
        break_glass: r.break_glass && status == Status::Approved,
    }
}

/// The review's `review_requested` record (`justification`: as the requester gave it).
pub fn requested_event(r: &Review, justification: Option<String>) -> Event {
    let role = match (&r.kind, &r.elevate_to) {
        (Kind::Elevation, Some(to)) => to.clone(),
        _ => r.role.clone(),
    };
    Event::ReviewRequested {
        review: r.id.clone(),
        session: r.session.clone(),
        subject: r.requester.clone(),
        role,
        rule: r.rule.clone(),
        justification,
    }
}

fn pending(now: SystemTime, timeout: Duration) -> (String, String) {
    (rfc3339(now), rfc3339(now + timeout))
}

/// A new review of a held statement.
pub fn statement_review(req: Request<'_>, now: SystemTime) -> Review {
    let (created_at, expires_at) = pending(now, req.timeout);
    Review {
        id: new_id(),
        status: Status::Pending,
        requester: req.requester.to_owned(),
        role: req.role.to_owned(),
        session: req.session.to_owned(),
        statement: req.statement.to_owned(),
        kinds: req.kinds,
        tables: req.tables,
        phi_columns: req.phi_columns,
        rule: req.rule.to_owned(),
        justification: justification(req.statement).or(req.session_reason),
        created_at,
        expires_at,
        decided_by: None,
        decision_reason: None,
        decided_at: None,
        approvals_required: req.approvals_required.max(1),
        approvals: Vec::new(),
        reviewer_roles: req.reviewer_roles,
        scope: if req.scope.is_some() {
            Scope::Fingerprint
        } else {
            Scope::Once
        },
        scope_minutes: req.scope.as_ref().map(|(_, m)| *m),
        break_glass: false,
        kind: Kind::Statement,
        elevate_to: None,
        issuer: Some(req.issuer.to_owned()),
        fingerprint: req.scope.map(|(f, _)| f),
        run: None,
        version: 0,
    }
}

/// A new access request.
pub fn elevation_review(req: ElevationRequest<'_>, now: SystemTime) -> Review {
    let (created_at, expires_at) = pending(now, req.timeout);
    Review {
        id: new_id(),
        status: Status::Pending,
        requester: req.requester.to_owned(),
        role: req.current_role.to_owned(),
        session: String::new(),
        statement: format!("act as role {} for {} minutes", req.role, req.minutes),
        kinds: vec!["elevation".into()],
        tables: Vec::new(),
        phi_columns: Vec::new(),
        rule: "elevation".into(),
        justification: Some(req.reason.chars().take(500).collect()),
        created_at,
        expires_at,
        decided_by: None,
        decision_reason: None,
        decided_at: None,
        approvals_required: 1,
        approvals: Vec::new(),
        reviewer_roles: req.reviewer_roles,
        scope: Scope::Elevation,
        scope_minutes: Some(req.minutes),
        break_glass: false,
        kind: Kind::Elevation,
        elevate_to: Some(req.role.to_owned()),
        issuer: Some(req.issuer.to_owned()),
        fingerprint: None,
        run: None,
        version: 0,
    }
}

/// Applies `action` to the review as read at `now`.
pub fn apply(r: &Review, action: &Action<'_>, now: SystemTime) -> Result<Step, Refused> {
    match action {
        Action::Decide(d) => decide(r, d, now),
        Action::Expire => end(r, Status::Expired, None, now),
        Action::Withdraw { reason } => end(r, Status::Withdrawn, reason.map(str::to_owned), now),
        Action::Execute => settle_run(r, Run::Executed, None, now),
        Action::Forfeit { reason } => settle_run(r, Run::Forfeited, reason.map(str::to_owned), now),
        Action::Abandon if r.kind == Kind::Statement => end(
            r,
            Status::Abandoned,
            Some("the node holding the statement stopped renewing its lease".into()),
            now,
        ),
        Action::Abandon => Err(not_pending(r)),
    }
}

/// Expire or withdraw a pending review.
fn end(
    r: &Review,
    status: Status,
    reason: Option<String>,
    now: SystemTime,
) -> Result<Step, Refused> {
    if r.status != Status::Pending {
        return Err(not_pending(r));
    }
    let mut review = r.clone();
    review.status = status;
    review.decided_at = Some(rfc3339(now));
    Ok(Step {
        events: vec![decided_event(&review, status, reason)],
        review,
        announce: true,
        effect: Effect::None,
    })
}

/// Execute or forfeit an approved statement: once.
fn settle_run(
    r: &Review,
    run: Run,
    reason: Option<String>,
    now: SystemTime,
) -> Result<Step, Refused> {
    if r.status != Status::Approved || r.run.is_some() || r.kind != Kind::Statement {
        return Err(not_pending(r));
    }
    let mut review = r.clone();
    review.run = Some(run);
    let (events, effect) = match run {
        // The statement's own audit record names the review.
        Run::Executed => (Vec::new(), fingerprint_grant(&review, now)),
        Run::Forfeited => (
            vec![decided_event(&review, Status::Withdrawn, reason)],
            Effect::None,
        ),
    };
    Ok(Step {
        review,
        events,
        announce: false,
        effect,
    })
}

/// An approval with `fingerprint` scope covers its requester's statements of the same shape, in
/// the same role, under the same rule, for its minutes, from when the statement ran. A
/// break-glass approval covers nothing further.
fn fingerprint_grant(r: &Review, now: SystemTime) -> Effect {
    match (&r.fingerprint, r.scope_minutes) {
        (Some(fingerprint), Some(minutes)) if !r.break_glass => Effect::GrantFingerprint {
            key: GrantKey {
                issuer: r.issuer.clone().unwrap_or_default(),
                subject: r.requester.clone(),
                role: r.role.clone(),
                rule: r.rule.clone(),
                fingerprint: fingerprint.clone(),
            },
            until: now + Duration::from_secs(minutes * 60),
        },
        _ => Effect::None,
    }
}

fn decide(r: &Review, d: &Decision<'_>, now: SystemTime) -> Result<Step, Refused> {
    if r.status != Status::Pending {
        return Err(not_pending(r));
    }
    if r.kind == Kind::Elevation
        && humantime::parse_rfc3339_weak(&r.expires_at).is_ok_and(|t| t < now)
    {
        return Err(Refused::Lapsed);
    }
    let refuse = |e| Err(Refused::Decide(e));
    if d.break_glass && r.kind == Kind::Elevation {
        return refuse(DecideError::BreakGlassRefused);
    }
    let at = rfc3339(now);
    let mut review = r.clone();
    if d.break_glass {
        // The same individual: subject and issuer. A namesake at another issuer is someone
        // else, and a review that does not know its requester's issuer has no owner here.
        let requester = r
            .issuer
            .as_deref()
            .map(|i| Individual::new(i, &r.requester));
        let own = requester == Some(Individual::new(d.reviewer_issuer, d.reviewer));
        if !d.approve || !own || !d.break_glass_roles.contains(&r.role) {
            return refuse(DecideError::BreakGlassRefused);
        }
        review.break_glass = true;
    } else {
        // Separation of duties is stricter: the same subject text at any issuer counts as
        // the requester (a person with accounts at two IdPs must not approve themselves).
        if r.requester == d.reviewer {
            return refuse(DecideError::OwnStatement(d.reviewer.to_owned()));
        }
        if !r.reviewer_roles.iter().any(|x| x == d.role) {
            return refuse(DecideError::WrongRole {
                id: r.id.clone(),
                role: d.role.to_owned(),
                allowed: r.reviewer_roles.join(", "),
            });
        }
        if d.approve {
            if r.approvals.iter().any(|a| a.by == d.reviewer) {
                return refuse(DecideError::AlreadyApproved(d.reviewer.to_owned()));
            }
            review.approvals.push(Approval {
                by: d.reviewer.to_owned(),
                reason: d.reason.to_owned(),
                at: at.clone(),
            });
            let count = review.approvals.len() as u32;
            if count < review.approvals_required {
                return Ok(Step {
                    events: vec![Event::ReviewApproval {
                        review: r.id.clone(),
                        by: d.reviewer.to_owned(),
                        reason: d.reason.to_owned(),
                        count,
                        required: review.approvals_required,
                    }],
                    review,
                    announce: true,
                    effect: Effect::None,
                });
            }
        }
    }
    let by = if d.approve && !d.break_glass {
        let names: Vec<&str> = review.approvals.iter().map(|a| a.by.as_str()).collect();
        names.join(", ")
    } else {
        d.reviewer.to_owned()
    };
    let status = if d.approve {
        Status::Approved
    } else {
        Status::Denied
    };
    review.status = status;
    review.decided_by = Some(by);
    review.decision_reason = Some(d.reason.to_owned());
    review.decided_at = Some(at);
    let effect = match (&review.elevate_to, review.scope_minutes, &review.issuer) {
        (Some(role), Some(minutes), Some(issuer)) if d.approve => Effect::GrantElevation {
            issuer: issuer.clone(),
            subject: review.requester.clone(),
            role: role.clone(),
            until: now + Duration::from_secs(minutes * 60),
        },
        _ => Effect::None,
    };
    Ok(Step {
        events: vec![decided_event(&review, status, Some(d.reason.to_owned()))],
        review,
        announce: true,
        effect,
    })
}
