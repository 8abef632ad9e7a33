//! The wait of a held statement: a review is opened, the client told, and the statement runs
//! or is refused as the review ends.

use bytes::BytesMut;
use phigate_wire::backend;
use tokio::io::AsyncReadExt;

use super::forward::{Forward, ForwardError};
use super::Event;
use crate::session::guard::Held;

impl Forward<'_> {
    pub(super) async fn hold(&mut self, held: Held) -> Result<(), ForwardError> {
        let shared = self.shared;
        let settings = self.guard.approval_settings(&held.refusal.rule);
        let timeout = std::time::Duration::from_secs(
            settings
                .timeout_secs
                .unwrap_or(shared.approvals.timeout_secs),
        );
        let (kinds, tables) = crate::session::guard::describe(&held.analysis);
        let identity = self.credential.identity.clone();
        // An approval with fingerprint scope covers this individual's statements of the same
        // shape (any literals) in the same role for a while: such a statement runs at once,
        // under that review. Only for reads and DML: a function or DDL body is no literal.
        let scope = (settings.scope == phigate_policy::ApprovalScope::Fingerprint
            && crate::session::guard::decide::dml_only(&held.analysis))
        .then(|| {
            use sha2::Digest;
            let (text, literals) = phigate_sql::redact_literals(&held.sql);
            let mut h = sha2::Sha256::new();
            h.update(text.as_bytes());
            // Dollar-quoted bodies are code more often than data: part of the shape.
            for l in literals.iter().filter(|l| l.starts_with('$')) {
                h.update([0]);
                h.update(l.as_bytes());
            }
            (
                hex::encode(&h.finalize()[..16]),
                settings.scope_minutes.unwrap_or(30),
            )
        });
        if let Some((fingerprint, _)) = &scope {
            if let Some((review, until)) = shared.reviews.granted(
                &identity.subject.0,
                &identity.role.0,
                &held.refusal.rule,
                fingerprint,
            ) {
                let mut notice = BytesMut::new();
                backend::Notice::note(
                    phigate_wire::sqlstate::WARNING,
                    &format!(
                        "phigate: runs under review {review}, which approved statements like this one until {until}"
                    ),
                )
                .write(&mut notice);
                let _ =
                    tokio::time::timeout(timeout, self.events.send(Event::Notice(notice))).await;
                self.settle_hold(phigate_wire::sqlstate::SUCCESSFUL_COMPLETION);
                let filtered = self.guard.release(&held, &review);
                self.apply(filtered, &held.frame);
                return Ok(());
            }
        }
        let reviewer_roles = if settings.reviewer_roles.is_empty() {
            shared.approvals.reviewer_roles.clone()
        } else {
            settings.reviewer_roles.clone()
        };
        let required = settings.approvals.unwrap_or(1);
        // The PHI columns of the tables it touches, for the reviewer.
        let phi_columns = crate::session::guard::phi_columns(&tables, &shared.phi_tags);
        let (review, mut decided) = shared.reviews.open_review(crate::reviews::Request {
            requester: &identity.subject.0,
            role: &identity.role.0,
            session: self.guard.session(),
            statement: &held.sql,
            kinds,
            tables,
            rule: &held.refusal.rule,
            timeout,
            approvals_required: required,
            reviewer_roles,
            scope,
            phi_columns,
            session_reason: self.guard.reason(),
        });
        let id = review.id.clone();
        if let Some(tape) = self.guard.tape() {
            tape.held(&id);
        }
        if let Some(audit) = &shared.audit {
            audit.submit(phigate_audit::Pending::Event(
                phigate_audit::Event::ReviewRequested {
                    review: id.clone(),
                    session: self.guard.session().to_string(),
                    subject: identity.subject.0.clone(),
                    role: identity.role.0.clone(),
                    rule: held.refusal.rule.clone(),
                    justification: review.justification.clone(),
                },
            ));
        }
        tracing::info!(review = %id, subject = %identity.subject, rule = %held.refusal.rule, "statement held for review");
        let who = if required > 1 {
            format!("{required} reviewers approve")
        } else {
            "a reviewer approves".to_owned()
        };
        let message = format!(
            "phigate: statement held for review {id} by rule {} ; it runs once {who} (waiting up to {} s)",
            held.refusal.rule,
            timeout.as_secs()
        );
        let hint = format!(
            "A reviewer runs: phigate review approve {id} --reason '...' (or POST /v1/reviews/{id}/approve). Cancel the query to withdraw it. {}",
            held.refusal.hint
        );
        let mut notice = BytesMut::new();
        backend::Notice::note(phigate_wire::sqlstate::WARNING, &message)
            .with_hint(&hint)
            .write(&mut notice);
        // However this function is left (a drain or an expiry may drop it mid-wait), a review
        // still pending is withdrawn.
        struct Withdraw<'a>(&'a crate::reviews::Reviews, String);
        impl Drop for Withdraw<'_> {
            fn drop(&mut self) {
                self.0.close(&self.1, "withdrawn");
            }
        }
        let _withdraw = Withdraw(&shared.reviews, id.clone());
        // A client that does not read cannot stall the hold past its timeout.
        let _ = tokio::time::timeout(timeout, self.events.send(Event::Notice(notice))).await;

        enum Waited {
            Decided(crate::reviews::Outcome),
            TimedOut,
            Withdrawn,
            Gone(std::io::Error),
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let cancelled = self.cancelled.clone();
        let waited = loop {
            tokio::select! {
                d = &mut decided => break match d {
                    Ok(o) => Waited::Decided(o),
                    Err(_) => Waited::Withdrawn,
                },
                _ = &mut deadline => break Waited::TimedOut,
                _ = cancelled.notified() => break Waited::Withdrawn,
                _ = shared.force_close.cancelled() => break Waited::Withdrawn,
                // Keep reading (a disconnect withdraws the review); what arrives waits behind
                // the held statement.
                n = self.client.read_buf(self.reader.buf_mut()), if self.reader.buffered() < (1 << 20) => match n {
                    Ok(0) => break Waited::Gone(std::io::ErrorKind::UnexpectedEof.into()),
                    Ok(_) => {}
                    Err(e) => break Waited::Gone(e),
                },
            }
        };
        let decided_event = |status: &str, by: Option<String>, reason: Option<String>| {
            phigate_audit::Pending::Event(phigate_audit::Event::ReviewDecided {
                review: id.clone(),
                status: status.to_owned(),
                by,
                reason,
                break_glass: false,
            })
        };
        let refusal = |message: String, sqlstate: &'static str| phigate_policy::Refusal {
            rule: held.refusal.rule.clone(),
            message,
            hint: "Nothing ran.".into(),
            sqlstate,
            position: None,
        };
        // A reviewer who decided just as the wait ended still decides.
        let waited = match waited {
            Waited::TimedOut | Waited::Withdrawn => {
                let status = if matches!(waited, Waited::TimedOut) {
                    "expired"
                } else {
                    "withdrawn"
                };
                if shared.reviews.close(&id, status) {
                    waited
                } else {
                    match decided.try_recv() {
                        Ok(o) => Waited::Decided(o),
                        Err(_) => waited,
                    }
                }
            }
            w => w,
        };
        // The credential may have ended, or the audit failed, while the statement waited: the
        // approval is recorded, and then that the statement did not run.
        let waited = match waited {
            Waited::Decided(crate::reviews::Outcome::Approved {
                by,
                reason,
                break_glass,
            }) if self.credential.check(shared).is_some()
                || shared.audit.as_ref().is_some_and(|a| !a.healthy()) =>
            {
                if let Some(a) = &shared.audit {
                    a.submit(phigate_audit::Pending::Event(
                        phigate_audit::Event::ReviewDecided {
                            review: id.clone(),
                            status: "approved".into(),
                            by: Some(by),
                            reason: Some(reason),
                            break_glass,
                        },
                    ));
                }
                Waited::Withdrawn
            }
            w => w,
        };
        let (event, rejection) = match waited {
            Waited::Decided(crate::reviews::Outcome::Approved {
                by,
                reason,
                break_glass,
            }) => {
                if break_glass {
                    tracing::warn!(review = %id, subject = %identity.subject, role = %identity.role, reason = %reason, "BREAK-GLASS: a statement approved by its own requester runs");
                }
                if let Some(a) = &shared.audit {
                    a.submit(phigate_audit::Pending::Event(
                        phigate_audit::Event::ReviewDecided {
                            review: id.clone(),
                            status: "approved".into(),
                            by: Some(by),
                            reason: Some(reason),
                            break_glass,
                        },
                    ));
                }
                self.settle_hold(phigate_wire::sqlstate::SUCCESSFUL_COMPLETION);
                let filtered = self.guard.release(&held, &id);
                self.apply(filtered, &held.frame);
                shared.reviews.grant_fingerprint(&id);
                return Ok(());
            }
            Waited::Decided(crate::reviews::Outcome::Denied { by, reason }) => (
                decided_event("denied", Some(by.clone()), Some(reason.clone())),
                refusal(
                    format!("phigate: review {id} denied by {by}: {reason}"),
                    phigate_wire::sqlstate::INSUFFICIENT_PRIVILEGE,
                ),
            ),
            Waited::TimedOut => {
                (
                    decided_event("expired", None, None),
                    refusal(
                        format!(
                            "phigate: review {id} was not decided within {} s; the statement did not run",
                            timeout.as_secs()
                        ),
                        phigate_wire::sqlstate::QUERY_CANCELED,
                    ),
                )
            }
            Waited::Withdrawn => {
                shared.reviews.close(&id, "withdrawn");
                (
                    decided_event("withdrawn", None, None),
                    refusal(
                        format!("phigate: review {id} withdrawn; the statement did not run"),
                        phigate_wire::sqlstate::QUERY_CANCELED,
                    ),
                )
            }
            Waited::Gone(e) => {
                self.settle_hold(phigate_wire::sqlstate::QUERY_CANCELED);
                shared.reviews.close(&id, "withdrawn");
                if let Some(a) = &shared.audit {
                    a.submit(decided_event(
                        "withdrawn",
                        None,
                        Some("client disconnected".into()),
                    ));
                }
                return Err(ForwardError::ClientIo(e));
            }
        };
        if let Some(a) = &shared.audit {
            a.submit(event);
        }
        self.settle_hold(rejection.sqlstate);
        let filtered = self.guard.reject(&held, &id, rejection);
        self.apply(filtered, &held.frame);
        Ok(())
    }
}
