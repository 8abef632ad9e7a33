//! The wait of a held statement, and its settlement.
//!
//! A session hands its held statement to [`Approvals::hold`] with the few things only it has
//! ([`HoldClient`]: the way to send the client a notice, its socket to keep reading, whether it
//! may still run what was approved; [`Interrupts`]: its CancelRequest and the gateway's
//! force-close). The hold opens a review (or finds a `fingerprint` approval that covers the
//! statement), tells the client, waits for the review to leave `pending` — a decision, the
//! timeout, a cancel, the client gone — and then [`settle`]s, purely: run under the review, or
//! refuse with this error, and which transition that takes. The transition is applied with
//! compare-and-set; one that loses a race (a reviewer decided just as the wait ended) is settled
//! again from the winner's state, so a decision that came first still decides.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use phigate_policy::Refusal;
use phigate_wire::backend::Notice;
use phigate_wire::sqlstate;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Action, Approvals, DecideError, GrantKey, Request, Review, Run, Status};

/// What the session holds, and who holds it.
pub struct HoldRequest<'a> {
    pub subject: &'a str,
    /// Who vouched for the subject.
    pub issuer: &'a str,
    pub role: &'a str,
    pub session: &'a str,
    /// The statement exactly as it will run.
    pub sql: &'a str,
    pub analysis: &'a phigate_sql::Analysis,
    /// The rule that holds it, and its hint.
    pub rule: &'a str,
    pub hint: &'a str,
    pub settings: phigate_policy::ApprovalSettings,
    /// `[approvals]`: timeout and reviewer roles where the rule sets none.
    pub defaults: &'a crate::config::ApprovalsConfig,
    /// Statement kinds and tables, and the PHI columns of those tables, for the reviewer.
    pub kinds: Vec<String>,
    pub tables: Vec<String>,
    pub phi_columns: Vec<String>,
    /// The session's `SET phigate.reason`.
    pub session_reason: Option<String>,
}

/// The session's side of a hold.
pub trait HoldClient {
    /// Sends the client this NoticeResponse (encoded).
    fn notice(&mut self, notice: BytesMut) -> impl Future<Output = ()> + Send;
    /// Reads what the client sends while it waits (it waits behind the held statement);
    /// resolves only when the client is gone (EOF or an error) or the session's credential
    /// ended (expired or revoked). Cancel-safe.
    fn gone(&mut self) -> impl Future<Output = ClientEnd> + Send;
    /// Whether the session may still run an approved statement (its credential is still
    /// valid, the audit log healthy). Asked once, when the statement was approved.
    fn can_run(&mut self) -> bool;
    /// The review was opened (for the session's recording).
    fn opened(&mut self, review: &str);
}

/// Why a waiting client stopped waiting, on its own side.
#[derive(Debug)]
pub enum ClientEnd {
    /// It disconnected or its socket failed.
    Gone(std::io::Error),
    /// Its credential expired or was revoked: nothing it asked for may run, so its review is
    /// withdrawn rather than left for a reviewer to approve in vain.
    CredentialEnded,
}

/// What withdraws a waiting statement besides its client going away.
pub struct Interrupts<'a> {
    /// The session's CancelRequest.
    pub cancel: &'a Arc<Notify>,
    /// The gateway's shutdown deadline.
    pub force_close: &'a CancellationToken,
}

/// How the wait ended.
#[derive(Debug)]
pub enum WaitEnd {
    /// The review left `pending` (decided, or ended by someone else).
    Decided,
    TimedOut,
    /// A CancelRequest, or the gateway closing sessions.
    Withdrawn,
    /// The client disconnected or its socket failed.
    ClientGone(std::io::Error),
    /// The session's credential expired or was revoked.
    CredentialEnded,
}

/// What the session does with the held statement.
#[derive(Debug)]
pub enum Settlement {
    /// Forward it; its audit record names the review.
    Run { review: String },
    /// Refuse it in its place (the session goes on).
    Refuse { review: String, refusal: Refusal },
    /// The client is gone: the session ends.
    Gone(std::io::Error),
}

/// The transition a settlement takes (and so the audit event it emits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing: the review already ended (its transition was audited then).
    None,
    Execute,
    Forfeit {
        reason: Option<&'static str>,
    },
    Expire,
    Withdraw {
        reason: Option<&'static str>,
    },
}

#[derive(Debug)]
pub struct Settled {
    pub settlement: Settlement,
    pub transition: Transition,
}

const DISCONNECTED: &str = "client disconnected";
const CREDENTIAL_ENDED: &str = "the session's credential ended";

fn copy(e: &std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), e.to_string())
}

/// Settles a held statement, purely: given the review as it stands after the wait, how the wait
/// ended, and whether the session can still run an approved statement, what the session does
/// and which transition that takes. `rule` and `timeout` are the hold's, for the refusal.
pub fn settle(
    review: &Review,
    end: &WaitEnd,
    can_run: bool,
    rule: &str,
    timeout: Duration,
) -> Settled {
    let id = &review.id;
    let refuse = |message: String, code: &'static str, transition| Settled {
        settlement: Settlement::Refuse {
            review: id.clone(),
            refusal: Refusal {
                rule: rule.to_owned(),
                message,
                hint: "Nothing ran.".into(),
                sqlstate: code,
                position: None,
            },
        },
        transition,
    };
    let withdrawn = |transition| {
        refuse(
            format!("phigate: review {id} withdrawn; the statement did not run"),
            sqlstate::QUERY_CANCELED,
            transition,
        )
    };
    let gone = |e: &std::io::Error, transition| Settled {
        settlement: Settlement::Gone(copy(e)),
        transition,
    };
    let expired = |transition| {
        refuse(
            format!(
                "phigate: review {id} was not decided within {} s; the statement did not run",
                timeout.as_secs()
            ),
            sqlstate::QUERY_CANCELED,
            transition,
        )
    };
    // A reviewer who decided just as the wait ended still decides.
    match (review.status, end) {
        (Status::Approved, WaitEnd::ClientGone(e)) if review.run.is_none() => gone(
            e,
            Transition::Forfeit {
                reason: Some(DISCONNECTED),
            },
        ),
        (Status::Approved, _) if review.run.is_none() && can_run => Settled {
            settlement: Settlement::Run { review: id.clone() },
            transition: Transition::Execute,
        },
        // The credential ended, or the audit failed, while it waited: the approval stands in
        // the log, and then that the statement did not run.
        (Status::Approved, _) if review.run.is_none() => {
            withdrawn(Transition::Forfeit { reason: None })
        }
        (_, WaitEnd::ClientGone(e)) if review.status != Status::Pending => {
            gone(e, Transition::None)
        }
        (Status::Denied, _) => refuse(
            format!(
                "phigate: review {id} denied by {}: {}",
                review.decided_by.as_deref().unwrap_or_default(),
                review.decision_reason.as_deref().unwrap_or_default()
            ),
            sqlstate::INSUFFICIENT_PRIVILEGE,
            Transition::None,
        ),
        (Status::Expired, _) => expired(Transition::None),
        (Status::Pending, WaitEnd::TimedOut) => expired(Transition::Expire),
        (Status::Pending, WaitEnd::CredentialEnded) => withdrawn(Transition::Withdraw {
            reason: Some(CREDENTIAL_ENDED),
        }),
        (Status::Pending, WaitEnd::ClientGone(e)) => gone(
            e,
            Transition::Withdraw {
                reason: Some(DISCONNECTED),
            },
        ),
        // A cancel or shutdown; a review still pending after a wake-up cannot have ended the
        // wait, but if it did, it is withdrawn (fail closed).
        (Status::Pending, WaitEnd::Withdrawn | WaitEnd::Decided) => {
            withdrawn(Transition::Withdraw { reason: None })
        }
        (Status::Withdrawn | Status::Approved | Status::Abandoned, _) => {
            withdrawn(Transition::None)
        }
    }
}

/// Only reads and DML may be covered by a `fingerprint` approval: a function or DDL body is no
/// literal.
fn dml_only(analysis: &phigate_sql::Analysis) -> bool {
    use phigate_sql::Kind;
    match analysis {
        phigate_sql::Analysis::Parsed(stmts) => stmts.iter().all(|st| {
            matches!(
                st.kind,
                Kind::Select | Kind::Insert | Kind::Update | Kind::Delete | Kind::Merge
            )
        }),
        phigate_sql::Analysis::Invalid { .. } => false,
    }
}

/// The statement's shape: its text with literals redacted (any literals match), dollar-quoted
/// bodies kept (they are code more often than data).
fn fingerprint(sql: &str) -> String {
    use sha2::Digest;
    let (text, literals) = phigate_sql::redact_literals(sql);
    let mut h = sha2::Sha256::new();
    h.update(text.as_bytes());
    for l in literals.iter().filter(|l| l.starts_with('$')) {
        h.update([0]);
        h.update(l.as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

fn note(message: &str, hint: Option<&str>) -> BytesMut {
    let mut out = BytesMut::new();
    let notice = Notice::note(sqlstate::WARNING, message);
    match hint {
        Some(h) => notice.with_hint(h).write(&mut out),
        None => notice.write(&mut out),
    }
    out
}

/// The refusal of a statement whose review could not be opened or settled.
fn unavailable(review: String, rule: &str) -> Settlement {
    Settlement::Refuse {
        review,
        refusal: Refusal {
            rule: rule.to_owned(),
            message:
                "phigate: the review of this statement is unavailable; the statement did not run"
                    .into(),
            hint: "Nothing ran.".into(),
            sqlstate: sqlstate::QUERY_CANCELED,
            position: None,
        },
    }
}

/// However the hold is left (a drain or an expiry may drop it mid-wait), a review still pending
/// is withdrawn, and an approval not yet acted on is forfeited.
struct Abandon<'a> {
    approvals: &'a Approvals,
    id: Option<String>,
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.approvals.left_behind(id);
        }
    }
}

impl Approvals {
    /// Holds a statement until its review ends, and settles it.
    pub async fn hold<C: HoldClient>(
        &self,
        req: HoldRequest<'_>,
        client: &mut C,
        interrupts: Interrupts<'_>,
    ) -> Settlement {
        let settings = &req.settings;
        let timeout =
            Duration::from_secs(settings.timeout_secs.unwrap_or(req.defaults.timeout_secs));
        // An approval with fingerprint scope covers this individual's statements of the same
        // shape (any literals) in the same role for a while: such a statement runs at once,
        // under that review.
        let scope = (settings.scope == phigate_policy::ApprovalScope::Fingerprint
            && dml_only(req.analysis))
        .then(|| (fingerprint(req.sql), settings.scope_minutes.unwrap_or(30)));
        if let Some((fingerprint, _)) = &scope {
            let key = GrantKey {
                issuer: req.issuer.to_owned(),
                subject: req.subject.to_owned(),
                role: req.role.to_owned(),
                rule: req.rule.to_owned(),
                fingerprint: fingerprint.clone(),
            };
            if let Some((review, until)) = self.granted(&key).await {
                let message = format!("phigate: runs under review {review}, which approved statements like this one until {until}");
                let _ = tokio::time::timeout(timeout, client.notice(note(&message, None))).await;
                return Settlement::Run { review };
            }
        }
        let reviewer_roles = if settings.reviewer_roles.is_empty() {
            req.defaults.reviewer_roles.clone()
        } else {
            settings.reviewer_roles.clone()
        };
        let required = settings.approvals.unwrap_or(1);
        let opened = self
            .open_review(Request {
                requester: req.subject,
                issuer: req.issuer,
                role: req.role,
                session: req.session,
                statement: req.sql,
                kinds: req.kinds,
                tables: req.tables,
                rule: req.rule,
                timeout,
                approvals_required: required,
                reviewer_roles,
                scope,
                phi_columns: req.phi_columns,
                session_reason: req.session_reason,
            })
            .await;
        let review = match opened {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot open a review: the held statement is refused");
                return unavailable(String::new(), req.rule);
            }
        };
        let id = review.id.clone();
        client.opened(&id);
        tracing::info!(review = %id, subject = %req.subject, rule = %req.rule, "statement held for review");
        let mut abandon = Abandon {
            approvals: self,
            id: Some(id.clone()),
        };
        let mut changes = self.store.changes();
        let who = if required > 1 {
            format!("{required} reviewers approve")
        } else {
            "a reviewer approves".to_owned()
        };
        let message = format!(
            "phigate: statement held for review {id} by rule {}; it runs once {who} (waiting up to {} s)",
            req.rule,
            timeout.as_secs()
        );
        let hint = format!(
            "A reviewer runs: phigate review approve {id} --reason '...' (or POST /v1/reviews/{id}/approve). Cancel the query to withdraw it. {}",
            req.hint
        );
        // A client that does not read cannot stall the hold past its timeout.
        let _ = tokio::time::timeout(timeout, client.notice(note(&message, Some(&hint)))).await;
        let end = self
            .wait(&id, timeout, client, &interrupts, &mut changes)
            .await;
        abandon.id = None;
        self.conclude(&id, end, client, req.rule, timeout).await
    }

    /// Waits until the review leaves `pending`, the timeout, a cancel, or the client is gone.
    async fn wait<C: HoldClient>(
        &self,
        id: &str,
        timeout: Duration,
        client: &mut C,
        interrupts: &Interrupts<'_>,
        changes: &mut tokio::sync::watch::Receiver<u64>,
    ) -> WaitEnd {
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        // The store's wake-ups are a hint: the review is read again on each, and now and then
        // without one.
        let mut woken = true;
        let mut unreadable = false;
        let recheck = self.store.recheck();
        // Reads on wake-ups: a burst of 5 at once, then one per 50 ms (a flood of notifications
        // costs the store at most 20 reads a second per held statement).
        let mut credit = 5u32;
        let mut refilled = tokio::time::Instant::now();
        loop {
            match self.store.pending(id).await {
                Ok(Some(true)) => unreadable = false,
                Ok(_) => return WaitEnd::Decided,
                // Once per outage, not on every read.
                Err(e) if !std::mem::replace(&mut unreadable, true) => {
                    tracing::warn!(review = %id, error = %e, "cannot read a held review")
                }
                Err(_) => {}
            }
            tokio::select! {
                c = changes.changed(), if woken => {
                    woken = c.is_ok();
                    let step = Duration::from_millis(50);
                    let earned = (refilled.elapsed().as_millis() / step.as_millis()) as u32;
                    if earned > 0 {
                        credit = (credit + earned).min(5);
                        refilled = tokio::time::Instant::now();
                    }
                    if credit == 0 {
                        tokio::time::sleep_until(refilled + step).await;
                        refilled += step;
                    } else {
                        credit -= 1;
                    }
                }
                _ = tokio::time::sleep(recheck) => {}
                _ = &mut deadline => return WaitEnd::TimedOut,
                _ = interrupts.cancel.notified() => return WaitEnd::Withdrawn,
                _ = interrupts.force_close.cancelled() => return WaitEnd::Withdrawn,
                end = client.gone() => return match end {
                    ClientEnd::Gone(e) => WaitEnd::ClientGone(e),
                    ClientEnd::CredentialEnded => WaitEnd::CredentialEnded,
                },
            }
        }
    }

    /// Settles the held statement and applies the settlement's transition; one that lost a
    /// race is settled again from the state that won.
    async fn conclude<C: HoldClient>(
        &self,
        id: &str,
        end: WaitEnd,
        client: &mut C,
        rule: &str,
        timeout: Duration,
    ) -> Settlement {
        for _ in 0..8 {
            let review = match self.store.get(id).await {
                Ok(Some(r)) => r,
                _ => break,
            };
            let approved = review.status == Status::Approved && review.run.is_none();
            let can_run = approved
                && !matches!(end, WaitEnd::ClientGone(_) | WaitEnd::CredentialEnded)
                && client.can_run();
            let settled = settle(&review, &end, can_run, rule, timeout);
            let action = match settled.transition {
                Transition::None => return settled.settlement,
                Transition::Execute => Action::Execute,
                Transition::Forfeit { reason } => Action::Forfeit { reason },
                Transition::Expire => Action::Expire,
                Transition::Withdraw { reason } => Action::Withdraw { reason },
            };
            match self.transition(id, &action).await {
                Ok(r) => {
                    if r.run == Some(Run::Executed) && r.break_glass {
                        tracing::warn!(review = %id, subject = %r.requester, role = %r.role, reason = %r.decision_reason.as_deref().unwrap_or_default(), "BREAK-GLASS: a statement approved by its own requester runs");
                    }
                    return settled.settlement;
                }
                Err(DecideError::Store(e)) => {
                    tracing::error!(review = %id, error = %e, "cannot store how a held statement ended");
                    // The review must not stay open (or approved) for a statement that will
                    // never run: it is withdrawn once the store answers again.
                    self.left_behind(id.to_owned());
                    if !matches!(settled.settlement, Settlement::Run { .. }) {
                        return settled.settlement;
                    }
                    return unavailable(id.to_owned(), rule);
                }
                // Lost a race: settle from the winner's state.
                Err(_) => continue,
            }
        }
        // Fail closed: nothing runs that could not be settled, and its review is withdrawn
        // once the store answers again.
        self.left_behind(id.to_owned());
        unavailable(id.to_owned(), rule)
    }
}
