//! The review state machine, its races, the settlement table, and a hold driven in-process.

use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime};

use phigate_audit::Event;
use phigate_wire::sqlstate;

use super::machine::{self, Effect, Refused};
use super::*;

/// The embedded store answers at once: its operations complete on the first poll.
trait Now: std::future::Future + Sized {
    fn now(self) -> Self::Output {
        futures_util::FutureExt::now_or_never(self).expect("the embedded store answers at once")
    }
}

impl<F: std::future::Future> Now for F {}

fn request(sql: &str, approvals: u32) -> Request<'_> {
    Request {
        requester: "agent",
        issuer: "corp",
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

fn approve<'a>(reviewer: &'a str, role: &'a str) -> Decision<'a> {
    Decision {
        reviewer,
        reviewer_issuer: "corp",
        role,
        approve: true,
        reason: "ok",
        break_glass: false,
        break_glass_roles: &[],
    }
}

fn deny<'a>(reviewer: &'a str) -> Decision<'a> {
    Decision {
        approve: false,
        reason: "no",
        ..approve(reviewer, "reviewer")
    }
}

fn key(subject: &str, role: &str, fingerprint: &str) -> GrantKey {
    GrantKey {
        issuer: "corp".into(),
        subject: subject.into(),
        role: role.into(),
        rule: "rule".into(),
        fingerprint: fingerprint.into(),
    }
}

fn status(a: &Approvals, id: &str) -> Status {
    a.get(id)
        .now()
        .ok()
        .flatten()
        .map(|r| r.status)
        .expect("review")
}

#[test]
fn separation_of_duties_and_one_decision() {
    let r = Approvals::open(None);
    let rev = r
        .open_review(request(
            "DELETE FROM t /* phigate: reason=cleanup of test rows */",
            1,
        ))
        .now()
        .expect("open");
    assert_eq!(rev.justification.as_deref(), Some("cleanup of test rows"));
    assert_eq!(
        r.decide(&rev.id, &approve("agent", "reviewer"))
            .now()
            .map(|d| d.review.id),
        Err(DecideError::OwnStatement("agent".into()))
    );
    assert!(matches!(
        r.decide(&rev.id, &approve("dba", "ai-agent")).now(),
        Err(DecideError::WrongRole { .. })
    ));
    assert!(r
        .decide(&rev.id, &approve("reviewer", "reviewer"))
        .now()
        .is_ok_and(|d| d.last));
    assert!(matches!(
        r.get(&rev.id)
            .now()
            .ok()
            .flatten()
            .and_then(|r| r.outcome()),
        Some(Outcome::Approved { .. })
    ));
    assert_eq!(
        r.decide(&rev.id, &deny("reviewer2")).now().map(|d| d.last),
        Err(DecideError::NotPending {
            id: rev.id.clone(),
            status: Status::Approved
        })
    );
}

#[test]
fn two_approvals_from_two_people_then_a_fingerprint_grant() {
    let r = Approvals::open(None);
    let rev = r
        .open_review(request("UPDATE t SET a = 1", 2))
        .now()
        .expect("open");
    let first = r
        .decide(&rev.id, &approve("ann", "reviewer"))
        .now()
        .expect("first approval");
    assert!(!first.last && first.review.status == Status::Pending);
    assert_eq!(
        r.decide(&rev.id, &approve("ann", "reviewer"))
            .now()
            .map(|d| d.last),
        Err(DecideError::AlreadyApproved("ann".into()))
    );
    assert!(r.granted(&key("agent", "ai-agent", "fp")).now().is_none());
    let second = r
        .decide(&rev.id, &approve("bob", "reviewer"))
        .now()
        .expect("second approval");
    assert!(second.last);
    assert!(
        matches!(second.review.outcome(), Some(Outcome::Approved { by, .. }) if by == "ann, bob")
    );
    // The grant starts when the statement runs.
    assert!(r.granted(&key("agent", "ai-agent", "fp")).now().is_none());
    r.transition(&rev.id, &Action::Execute)
        .now()
        .expect("execute");
    assert_eq!(
        r.granted(&key("agent", "ai-agent", "fp"))
            .now()
            .map(|g| g.0),
        Some(rev.id.clone())
    );
    assert!(r
        .granted(&key("someone-else", "ai-agent", "fp"))
        .now()
        .is_none());
    assert!(r.granted(&key("agent", "clinician", "fp")).now().is_none());
    assert!(r
        .granted(&key("agent", "ai-agent", "other"))
        .now()
        .is_none());
    // It ran once: neither a second run nor a forfeit applies.
    assert!(r.transition(&rev.id, &Action::Execute).now().is_err());
    assert!(r
        .transition(&rev.id, &Action::Forfeit { reason: None })
        .now()
        .is_err());
}

#[test]
fn break_glass_is_the_requesters_and_only_for_listed_roles() {
    let r = Approvals::open(None);
    let rev = r
        .open_review(request("UPDATE t SET a = 1", 2))
        .now()
        .expect("open");
    let allowed = vec!["ai-agent".to_owned()];
    let glass = |who, roles| Decision {
        reviewer: who,
        reviewer_issuer: "corp",
        role: "x",
        approve: true,
        reason: "patient coding, no reviewer",
        break_glass: true,
        break_glass_roles: roles,
    };
    assert_eq!(
        r.decide(&rev.id, &glass("someone", &allowed))
            .now()
            .map(|d| d.last),
        Err(DecideError::BreakGlassRefused)
    );
    assert_eq!(
        r.decide(&rev.id, &glass("agent", &[]))
            .now()
            .map(|d| d.last),
        Err(DecideError::BreakGlassRefused)
    );
    let d = r
        .decide(&rev.id, &glass("agent", &allowed))
        .now()
        .expect("break-glass");
    assert!(d.last && d.review.break_glass);
    r.transition(&rev.id, &Action::Execute)
        .now()
        .expect("execute");
    assert!(
        r.granted(&key("agent", "ai-agent", "fp")).now().is_none(),
        "break-glass covers nothing further"
    );
}

/// Issue 23 item 6: identity is (issuer, subject). A namesake of the requester at another
/// issuer may not approve the statement as "their own" under break-glass; separation of duties
/// still treats the namesake as the requester (stricter); a fingerprint approval covers only
/// the requester at its own issuer.
#[test]
fn item6_break_glass_needs_the_requesters_issuer_too() {
    let r = Approvals::open(None);
    let rev = r
        .open_review(request("UPDATE t SET a = 1", 1))
        .now()
        .expect("open");
    let allowed = vec!["ai-agent".to_owned()];
    let glass = |issuer| Decision {
        reviewer: "agent",
        reviewer_issuer: issuer,
        role: "ai-agent",
        approve: true,
        reason: "patient coding, no reviewer",
        break_glass: true,
        break_glass_roles: &allowed,
    };
    assert_eq!(
        r.decide(&rev.id, &glass("partner")).now().map(|d| d.last),
        Err(DecideError::BreakGlassRefused)
    );
    let namesake = Decision {
        reviewer_issuer: "partner",
        ..approve("agent", "reviewer")
    };
    assert_eq!(
        r.decide(&rev.id, &namesake).now().map(|d| d.last),
        Err(DecideError::OwnStatement("agent".into()))
    );
    let d = r
        .decide(&rev.id, &glass("corp"))
        .now()
        .expect("own break-glass");
    assert!(d.last && d.review.break_glass);

    // A fingerprint approval by a reviewer covers the requester at "corp" only.
    let rev = r
        .open_review(request("UPDATE t SET a = 2", 1))
        .now()
        .expect("open");
    r.decide(&rev.id, &approve("ann", "reviewer"))
        .now()
        .expect("approve");
    r.transition(&rev.id, &Action::Execute)
        .now()
        .expect("execute");
    assert!(r.granted(&key("agent", "ai-agent", "fp")).now().is_some());
    let other = GrantKey {
        issuer: "partner".into(),
        ..key("agent", "ai-agent", "fp")
    };
    assert!(
        r.granted(&other).now().is_none(),
        "a namesake is not covered"
    );
}

/// Exactly one of racing transitions wins, whatever they are; the others see its state.
#[test]
fn racing_transitions_have_exactly_one_winner() {
    for round in 0..50 {
        let r = Arc::new(Approvals::open(None));
        let rev = r
            .open_review(request("DELETE FROM t", 1))
            .now()
            .expect("open");
        let barrier = Arc::new(Barrier::new(6));
        let threads: Vec<_> = (0..6)
            .map(|n| {
                let (r, id, barrier) = (r.clone(), rev.id.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let action = match (n + round) % 6 {
                        0 => Action::Decide(approve("ann", "reviewer")),
                        1 => Action::Decide(approve("bob", "reviewer")),
                        2 => Action::Decide(deny("cy")),
                        3 => Action::Expire,
                        4 => Action::Withdraw { reason: None },
                        _ => Action::Withdraw {
                            reason: Some("client disconnected"),
                        },
                    };
                    r.transition(&id, &action).now().map(|r| r.status)
                })
            })
            .collect();
        let results: Vec<_> = threads
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect();
        let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        assert_eq!(*winners[0], status(&r, &rev.id));
        assert!(results.iter().all(|r| match r {
            Ok(_) => true,
            Err(DecideError::NotPending { status, .. }) => *status == *winners[0],
            Err(_) => false,
        }));
    }
}

#[test]
fn an_approved_statement_runs_or_is_forfeited_once() {
    for _ in 0..20 {
        let r = Arc::new(Approvals::open(None));
        let rev = r
            .open_review(request("DELETE FROM t", 1))
            .now()
            .expect("open");
        r.decide(&rev.id, &approve("ann", "reviewer"))
            .now()
            .expect("approve");
        let threads: Vec<_> = [Action::Execute, Action::Forfeit { reason: None }]
            .into_iter()
            .map(|a| {
                let (r, id) = (r.clone(), rev.id.clone());
                std::thread::spawn(move || r.transition(&id, &a).now().is_ok())
            })
            .collect();
        let won = threads
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .filter(|w| *w)
            .count();
        assert_eq!(won, 1);
        assert_eq!(status(&r, &rev.id), Status::Approved, "the decision stands");
    }
}

#[test]
fn each_transition_emits_its_own_audit_event() {
    let now = SystemTime::now();
    let open = machine::statement_review(request("DELETE FROM t", 2), now);
    assert!(matches!(
        machine::requested_event(&open, open.justification.clone()),
        Event::ReviewRequested { ref subject, ref rule, .. } if subject == "agent" && rule == "rule"
    ));
    let one = machine::apply(&open, &Action::Decide(approve("ann", "reviewer")), now)
        .expect("one approval");
    assert!(matches!(
        one.events.as_slice(),
        [Event::ReviewApproval {
            count: 1,
            required: 2,
            ..
        }]
    ));
    let mut one_stored = one.review.clone();
    one_stored.version = 1;
    let last = machine::apply(
        &one_stored,
        &Action::Decide(approve("bob", "reviewer")),
        now,
    )
    .expect("last approval");
    assert!(matches!(
        last.events.as_slice(),
        [Event::ReviewDecided { status, by: Some(by), break_glass: false, .. }] if status == "approved" && by == "ann, bob"
    ));
    let ran = machine::apply(&last.review, &Action::Execute, now).expect("execute");
    assert!(
        ran.events.is_empty(),
        "the statement's own record names the review"
    );
    assert!(matches!(ran.effect, Effect::GrantFingerprint { .. }));
    let forfeit = machine::apply(
        &last.review,
        &Action::Forfeit {
            reason: Some("client disconnected"),
        },
        now,
    )
    .expect("forfeit");
    assert!(matches!(
        forfeit.events.as_slice(),
        [Event::ReviewDecided { status, by: None, reason: Some(r), .. }] if status == "withdrawn" && r == "client disconnected"
    ));
    let denied = machine::apply(&open, &Action::Decide(deny("cy")), now).expect("deny");
    assert!(matches!(
        denied.events.as_slice(),
        [Event::ReviewDecided { status, by: Some(by), reason: Some(r), .. }] if status == "denied" && by == "cy" && r == "no"
    ));
    for (action, name) in [
        (Action::Expire, "expired"),
        (Action::Withdraw { reason: None }, "withdrawn"),
    ] {
        let step = machine::apply(&open, &action, now).expect("end");
        assert!(matches!(
            step.events.as_slice(),
            [Event::ReviewDecided { status, by: None, reason: None, .. }] if status == name
        ));
    }
}

#[test]
fn an_access_request_decided_too_late_expires() {
    let now = SystemTime::now();
    let req = ElevationRequest {
        issuer: "idp",
        requester: "ann",
        current_role: "clinician",
        role: "dba",
        minutes: 30,
        reason: "on call for the night",
        timeout: Duration::from_secs(60),
        reviewer_roles: vec!["reviewer".into()],
    };
    let review = machine::elevation_review(req, now);
    let later = now + Duration::from_secs(120);
    assert_eq!(
        machine::apply(&review, &Action::Decide(approve("bob", "reviewer")), later).err(),
        Some(Refused::Lapsed)
    );
    let approved =
        machine::apply(&review, &Action::Decide(approve("bob", "reviewer")), now).expect("in time");
    assert!(matches!(
        approved.effect,
        Effect::GrantElevation { ref role, ref subject, .. } if role == "dba" && subject == "ann"
    ));
    assert!(machine::apply(&approved.review, &Action::Execute, now).is_err());
}

#[test]
fn statuses_kinds_and_scopes_serialize_as_before() {
    let review = machine::statement_review(request("SELECT 1", 1), SystemTime::now());
    let v = serde_json::json!(review);
    assert_eq!(v["status"], "pending");
    assert_eq!(v["kind"], "statement");
    assert_eq!(v["scope"], "fingerprint");
    assert!(v.get("version").is_none() && v.get("fingerprint").is_none());
    for (s, text) in [
        (Status::Approved, "approved"),
        (Status::Denied, "denied"),
        (Status::Expired, "expired"),
        (Status::Withdrawn, "withdrawn"),
    ] {
        assert_eq!(serde_json::json!(s), text);
    }
    assert_eq!(serde_json::json!(Kind::Elevation), "elevation");
    assert_eq!(serde_json::json!(Scope::Once), "once");
    assert_eq!(serde_json::json!(Scope::Elevation), "elevation");
}

/// The settlement of every way a wait can end.
#[test]
fn settlement_table() {
    let base = machine::statement_review(request("DELETE FROM t", 1), SystemTime::now());
    let with = |status: Status| {
        let mut r = base.clone();
        r.status = status;
        if matches!(status, Status::Approved | Status::Denied) {
            r.decided_by = Some("ann".into());
            r.decision_reason = Some("fine".into());
        }
        r
    };
    let gone = || WaitEnd::ClientGone(std::io::ErrorKind::UnexpectedEof.into());
    let t = Duration::from_secs(3);
    let id = &base.id;
    enum Want {
        Run,
        Refuse(&'static str, String),
        Gone,
    }
    let cases: Vec<(Review, WaitEnd, bool, Want, Transition)> = vec![
        (
            with(Status::Approved),
            WaitEnd::Decided,
            true,
            Want::Run,
            Transition::Execute,
        ),
        // Decided just as the wait timed out or was cancelled: the decision stands.
        (
            with(Status::Approved),
            WaitEnd::TimedOut,
            true,
            Want::Run,
            Transition::Execute,
        ),
        (
            with(Status::Approved),
            WaitEnd::Withdrawn,
            true,
            Want::Run,
            Transition::Execute,
        ),
        (
            with(Status::Approved),
            WaitEnd::Decided,
            false,
            Want::Refuse(
                sqlstate::QUERY_CANCELED,
                format!("phigate: review {id} withdrawn; the statement did not run"),
            ),
            Transition::Forfeit { reason: None },
        ),
        // The credential ended while it waited: a pending review is withdrawn (no reviewer
        // approves in vain), an approval not yet run is forfeited.
        (
            base.clone(),
            WaitEnd::CredentialEnded,
            false,
            Want::Refuse(
                sqlstate::QUERY_CANCELED,
                format!("phigate: review {id} withdrawn; the statement did not run"),
            ),
            Transition::Withdraw {
                reason: Some("the session's credential ended"),
            },
        ),
        (
            with(Status::Approved),
            WaitEnd::CredentialEnded,
            false,
            Want::Refuse(
                sqlstate::QUERY_CANCELED,
                format!("phigate: review {id} withdrawn; the statement did not run"),
            ),
            Transition::Forfeit { reason: None },
        ),
        (
            with(Status::Approved),
            gone(),
            true,
            Want::Gone,
            Transition::Forfeit {
                reason: Some("client disconnected"),
            },
        ),
        (
            with(Status::Denied),
            WaitEnd::Decided,
            true,
            Want::Refuse(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!("phigate: review {id} denied by ann: fine"),
            ),
            Transition::None,
        ),
        (
            with(Status::Denied),
            WaitEnd::TimedOut,
            true,
            Want::Refuse(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!("phigate: review {id} denied by ann: fine"),
            ),
            Transition::None,
        ),
        (
            with(Status::Denied),
            gone(),
            true,
            Want::Gone,
            Transition::None,
        ),
        (
            with(Status::Pending),
            WaitEnd::TimedOut,
            true,
            Want::Refuse(
                sqlstate::QUERY_CANCELED,
                format!(
                    "phigate: review {id} was not decided within 3 s; the statement did not run"
                ),
            ),
            Transition::Expire,
        ),
        (
            with(Status::Pending),
            WaitEnd::Withdrawn,
            true,
            Want::Refuse(
                sqlstate::QUERY_CANCELED,
                format!("phigate: review {id} withdrawn; the statement did not run"),
            ),
            Transition::Withdraw { reason: None },
        ),
        (
            with(Status::Pending),
            gone(),
            true,
            Want::Gone,
            Transition::Withdraw {
                reason: Some("client disconnected"),
            },
        ),
        (
            with(Status::Expired),
            WaitEnd::Decided,
            true,
            Want::Refuse(
                sqlstate::QUERY_CANCELED,
                format!(
                    "phigate: review {id} was not decided within 3 s; the statement did not run"
                ),
            ),
            Transition::None,
        ),
        (
            with(Status::Withdrawn),
            WaitEnd::Decided,
            true,
            Want::Refuse(
                sqlstate::QUERY_CANCELED,
                format!("phigate: review {id} withdrawn; the statement did not run"),
            ),
            Transition::None,
        ),
    ];
    for (n, (review, end, can_run, want, transition)) in cases.into_iter().enumerate() {
        let s = settle(&review, &end, can_run, "hold-deletes", t);
        assert_eq!(s.transition, transition, "case {n}");
        match (want, s.settlement) {
            (Want::Run, Settlement::Run { review }) => assert_eq!(&review, id, "case {n}"),
            (Want::Refuse(code, message), Settlement::Refuse { review, refusal }) => {
                assert_eq!(&review, id, "case {n}");
                assert_eq!(refusal.sqlstate, code, "case {n}");
                assert_eq!(refusal.message, message, "case {n}");
                assert_eq!(refusal.rule, "hold-deletes", "case {n}");
                assert_eq!(refusal.hint, "Nothing ran.", "case {n}");
            }
            (Want::Gone, Settlement::Gone(e)) => {
                assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "case {n}")
            }
            (_, other) => panic!("case {n}: {other:?}"),
        }
    }
}

/// A session's side of a hold, scripted.
struct Fake {
    notices: Vec<bytes::BytesMut>,
    opened: Option<String>,
    can_run: bool,
    gone: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl HoldClient for Fake {
    async fn notice(&mut self, notice: bytes::BytesMut) {
        self.notices.push(notice);
    }
    async fn gone(&mut self) -> super::ClientEnd {
        match &mut self.gone {
            Some(rx) => {
                let _ = rx.await;
                self.gone = None;
                super::ClientEnd::Gone(std::io::ErrorKind::UnexpectedEof.into())
            }
            None => std::future::pending().await,
        }
    }
    fn can_run(&mut self) -> bool {
        self.can_run
    }
    fn opened(&mut self, review: &str) {
        self.opened = Some(review.to_owned());
    }
}

fn fake(can_run: bool) -> Fake {
    Fake {
        notices: Vec::new(),
        opened: None,
        can_run,
        gone: None,
    }
}

/// Holds `DELETE FROM t` (timeout `secs`) while `act` does something to the review once it is
/// open; returns the settlement and the review as it ended.
async fn held(
    secs: u64,
    mut client: Fake,
    act: impl FnOnce(&Approvals, &str, &tokio::sync::Notify) + Send + 'static,
) -> (Settlement, Review, Fake) {
    let approvals = Arc::new(Approvals::open(None));
    let cancel = Arc::new(tokio::sync::Notify::new());
    let force_close = tokio_util::sync::CancellationToken::new();
    let analysis = phigate_sql::Analysis::Invalid {
        message: String::new(),
        position: None,
    };
    let defaults = crate::config::ApprovalsConfig::default();
    let (a, c) = (approvals.clone(), cancel.clone());
    let actor = tokio::spawn(async move {
        loop {
            let pending = a.list(false).now().unwrap_or_default();
            if let Some(r) = pending.first() {
                act(&a, &r.id, &c);
                return;
            }
            tokio::task::yield_now().await;
        }
    });
    let settings = phigate_policy::ApprovalSettings {
        timeout_secs: Some(secs),
        ..Default::default()
    };
    let request = HoldRequest {
        subject: "agent",
        issuer: "corp",
        role: "ai-agent",
        session: "s1",
        sql: "DELETE FROM t",
        analysis: &analysis,
        rule: "hold-deletes",
        hint: "",
        settings,
        defaults: &defaults,
        kinds: vec!["delete".into()],
        tables: vec!["public.t".into()],
        phi_columns: Vec::new(),
        session_reason: None,
    };
    let interrupts = Interrupts {
        cancel: &cancel,
        force_close: &force_close,
    };
    let settlement = approvals.hold(request, &mut client, interrupts).await;
    if secs > 0 {
        actor.await.expect("actor");
    } else {
        actor.abort();
    }
    let id = client.opened.clone().expect("a review was opened");
    let review = approvals.get(&id).now().ok().flatten().expect("review");
    (settlement, review, client)
}

#[tokio::test]
async fn a_hold_runs_once_a_reviewer_approves() {
    let (s, review, client) = held(600, fake(true), |a, id, _| {
        a.decide(id, &approve("reviewer", "reviewer"))
            .now()
            .expect("approve");
    })
    .await;
    assert!(matches!(s, Settlement::Run { review: ref r } if *r == review.id));
    assert_eq!(review.run, Some(Run::Executed));
    assert_eq!(client.notices.len(), 1, "the client is told it is held");
}

#[tokio::test]
async fn a_hold_is_refused_when_denied_or_the_session_cannot_run_it() {
    let (s, review, _) = held(600, fake(true), |a, id, _| {
        a.decide(id, &deny("reviewer")).now().expect("deny");
    })
    .await;
    assert!(
        matches!(s, Settlement::Refuse { ref refusal, .. } if refusal.sqlstate == sqlstate::INSUFFICIENT_PRIVILEGE)
    );
    assert_eq!(review.status, Status::Denied);
    let (s, review, _) = held(600, fake(false), |a, id, _| {
        a.decide(id, &approve("reviewer", "reviewer"))
            .now()
            .expect("approve");
    })
    .await;
    assert!(
        matches!(s, Settlement::Refuse { ref refusal, .. } if refusal.sqlstate == sqlstate::QUERY_CANCELED)
    );
    assert_eq!(
        (review.status, review.run),
        (Status::Approved, Some(Run::Forfeited))
    );
}

#[tokio::test]
async fn a_hold_ends_on_timeout_cancel_or_disconnect() {
    let (s, review, _) = held(0, fake(true), |_, _, _| {}).await;
    assert!(
        matches!(s, Settlement::Refuse { ref refusal, .. } if refusal.message.contains("not decided within 0 s"))
    );
    assert_eq!(review.status, Status::Expired);
    let (s, review, _) = held(600, fake(true), |_, _, cancel| cancel.notify_one()).await;
    assert!(
        matches!(s, Settlement::Refuse { ref refusal, .. } if refusal.message.contains("withdrawn"))
    );
    assert_eq!(review.status, Status::Withdrawn);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut client = fake(true);
    client.gone = Some(rx);
    let (s, review, _) = held(600, client, move |_, _, _| {
        let _ = tx.send(());
    })
    .await;
    assert!(matches!(s, Settlement::Gone(_)));
    assert_eq!(review.status, Status::Withdrawn);
}

#[tokio::test]
async fn a_fingerprint_approval_covers_the_next_statement_like_it() {
    let approvals = Approvals::open(None);
    let analysis = phigate_sql::analyze("UPDATE t SET a = 1 WHERE id = 7");
    let settings = phigate_policy::ApprovalSettings {
        scope: phigate_policy::ApprovalScope::Fingerprint,
        ..Default::default()
    };
    let defaults = crate::config::ApprovalsConfig::default();
    let req = |sql: &'static str| HoldRequest {
        subject: "agent",
        issuer: "corp",
        role: "ai-agent",
        session: "s1",
        sql,
        analysis: &analysis,
        rule: "hold-updates",
        hint: "",
        settings: settings.clone(),
        defaults: &defaults,
        kinds: Vec::new(),
        tables: Vec::new(),
        phi_columns: Vec::new(),
        session_reason: None,
    };
    let cancel = Arc::new(tokio::sync::Notify::new());
    let force_close = tokio_util::sync::CancellationToken::new();
    let interrupts = || Interrupts {
        cancel: &cancel,
        force_close: &force_close,
    };
    // A reviewer approves the first; it runs, and its approval covers the second.
    let mut client = fake(true);
    let first = tokio::select! {
        s = approvals.hold(req("UPDATE t SET a = 1 WHERE id = 7"), &mut client, interrupts()) => s,
        _ = async {
            loop {
                if let Some(r) = approvals.list(false).now().unwrap_or_default().first() {
                    approvals.decide(&r.id, &approve("reviewer", "reviewer")).now().expect("approve");
                    return std::future::pending::<()>().await;
                }
                tokio::task::yield_now().await;
            }
        } => unreachable!(),
    };
    let Settlement::Run { review } = first else {
        panic!("{first:?}")
    };
    let mut client = fake(true);
    let second = approvals
        .hold(
            req("UPDATE t SET a = 2 WHERE id = 8"),
            &mut client,
            interrupts(),
        )
        .await;
    assert!(matches!(second, Settlement::Run { review: ref r } if *r == review));
    assert!(client.opened.is_none(), "no new review");
    assert_eq!(client.notices.len(), 1);
}

fn elevation(requester: &str, timeout: Duration) -> ElevationRequest<'_> {
    ElevationRequest {
        issuer: "idp",
        requester,
        current_role: "clinician",
        role: "dba",
        minutes: 30,
        reason: "on call for the night",
        timeout,
        reviewer_roles: vec!["reviewer".into()],
    }
}

/// Access requests: a few per individual per hour, a bounded queue, and a request nobody
/// decides expires on time (it does not wait for someone to try deciding it).
#[tokio::test]
async fn access_requests_are_rate_limited_bounded_and_expire_on_time() {
    let approvals = Approvals::open(None).limit_requests(2, 3);
    let long = Duration::from_secs(3600);
    approvals
        .open_elevation(None, elevation("ann", long))
        .await
        .expect("first");
    approvals
        .open_elevation(None, elevation("ann", long))
        .await
        .expect("second");
    let third = approvals.open_elevation(None, elevation("ann", long)).await;
    assert!(matches!(third, Err(OpenError::TooOften(2))), "{third:?}");
    // Someone else is not limited by ann's requests, but by the queue.
    approvals
        .open_elevation(None, elevation("bob", long))
        .await
        .expect("bob");
    let full = approvals.open_elevation(None, elevation("cat", long)).await;
    assert!(matches!(full, Err(OpenError::QueueFull(3))), "{full:?}");
    assert_eq!(approvals.expire_due().now(), 0, "nothing is due yet");

    let quick = Approvals::open(None);
    let due = quick
        .open_elevation(None, elevation("dan", Duration::ZERO))
        .await
        .expect("open");
    let held = quick
        .open_review(Request {
            timeout: Duration::ZERO,
            ..request("DELETE FROM t", 1)
        })
        .now()
        .expect("held");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(quick.expire_due().now(), 2);
    for id in [&due.id, &held.id] {
        let r = quick.get(id).now().expect("store").expect("kept");
        assert_eq!(r.status, Status::Expired, "{id}");
    }
    assert!(quick.list(false).now().expect("list").is_empty());
}
