//! The inbox (pending reviews and access requests, live over SSE), a review's page with its
//! decision form, and everyone's own requests.
//!
//! A decision goes through the HTTP API's own path ([`decide_review`]): the same checks (who
//! may, separation of duties, break-glass) and the same audit records. The console adds only
//! what a browser needs: the CSRF token, the statement's digest (a reviewer approves exactly
//! the text they saw) and a minimum reason length.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use sha2::{Digest, Sha256};

use super::super::reviews::{decide_review, DecisionBody};
use super::{layout, reviewer_roles, Console, Viewer};
use crate::approvals::{Kind, Review, Scope, Status};

/// Shortest reason the console accepts for a decision.
pub const MIN_REASON_CHARS: usize = 10;
/// An SSE stream ends after this long (the browser reconnects, and its session is checked).
const EVENTS_FOR: Duration = Duration::from_secs(300);

/// What the inbox shows.
#[derive(serde::Deserialize, Default, Clone)]
pub struct Filters {
    #[serde(default)]
    rule: String,
    #[serde(default)]
    requester: String,
    #[serde(default)]
    table: String,
    /// `waiting`: only reviews this viewer may still approve; otherwise all they may decide.
    #[serde(default)]
    show: String,
}

impl Filters {
    fn query(&self) -> String {
        let mut q = reqwest::Url::parse("http://x/").ok();
        if let Some(u) = q.as_mut() {
            u.query_pairs_mut()
                .append_pair("rule", &self.rule)
                .append_pair("requester", &self.requester)
                .append_pair("table", &self.table)
                .append_pair("show", &self.show);
        }
        q.and_then(|u| u.query().map(str::to_owned))
            .unwrap_or_default()
    }

    fn keep(&self, r: &Review, v: &Viewer) -> bool {
        let has = |want: &str, got: &str| want.is_empty() || got.contains(want.trim());
        has(&self.rule, &r.rule)
            && has(&self.requester, &r.requester)
            && (self.table.is_empty() || r.tables.iter().any(|t| has(&self.table, t)))
            && (self.show != "waiting"
                || (!is_requester(r, v) && !r.approvals.iter().any(|a| a.by == v.who.subject)))
    }
}

fn is_requester(r: &Review, v: &Viewer) -> bool {
    r.requester == v.who.subject && r.issuer.as_deref() == Some(v.who.issuer.as_str())
}

/// Whether the viewer's roles include one that may decide `r`.
fn may_decide(r: &Review, v: &Viewer) -> bool {
    r.reviewer_roles.iter().any(|role| v.roles.contains(role))
}

/// Pending reviews this viewer may decide, filtered; `None` if they are no reviewer.
async fn visible(c: &Console, v: &Viewer, f: &Filters) -> Result<Vec<Review>, Response> {
    let shared = &c.shared;
    v.authorize(
        shared,
        &reviewer_roles(shared),
        "review held statements (console)",
    )
    .await
    .map_err(|e| layout::api_error(v, e))?;
    let list = shared.approvals.reviews.list(false).await.map_err(|_| {
        layout::error_for(
            v,
            StatusCode::SERVICE_UNAVAILABLE,
            "The review store is unavailable.",
        )
    })?;
    Ok(list
        .into_iter()
        .filter(|r| may_decide(r, v) && f.keep(r, v))
        .collect())
}

fn time_left(r: &Review) -> String {
    let Ok(until) = humantime::parse_rfc3339(&r.expires_at) else {
        return r.expires_at.clone();
    };
    match until.duration_since(SystemTime::now()) {
        Ok(d) => {
            let s = d.as_secs();
            if s >= 3600 {
                format!("{} h {} min", s / 3600, (s % 3600) / 60)
            } else {
                format!("{} min {} s", s / 60, s % 60)
            }
        }
        Err(_) => "expired".into(),
    }
}

fn what(r: &Review) -> String {
    match r.kind {
        Kind::Statement => format!("{} on {}", r.kinds.join(", "), r.tables.join(", ")),
        Kind::Elevation => format!(
            "access request: role {} for {} min",
            r.elevate_to.as_deref().unwrap_or("?"),
            r.scope_minutes.unwrap_or(0)
        ),
    }
}

fn rows_markup(list: &[Review]) -> Markup {
    html! {
        @if list.is_empty() {
            p role="status" { "Nothing waits for a decision." }
        } @else {
            p role="status" { (list.len()) " waiting for a decision." }
            table {
                caption.muted { "Pending reviews and access requests, oldest first" }
                thead { tr {
                    th scope="col" { "Review" } th scope="col" { "What" }
                    th scope="col" { "Requester" } th scope="col" { "Rule" }
                    th scope="col" { "Approvals" } th scope="col" { "Time left" }
                } }
                tbody {
                    @for r in list {
                        tr {
                            td { a href={ "/console/reviews/" (r.id) } { "Review " (r.id) } }
                            td { (super::layout::shown(&what(r))) }
                            td { (super::layout::shown(&r.requester)) }
                            td { (r.rule) }
                            td { (r.approvals.len()) " of " (r.approvals_required) }
                            td { (time_left(r)) }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /console/inbox`
pub async fn page(State(c): State<Arc<Console>>, v: Viewer, Query(f): Query<Filters>) -> Response {
    let list = match visible(&c, &v, &f).await {
        Ok(l) => l,
        Err(e) => return e,
    };
    let rows_url = format!("/console/inbox/rows?{}", f.query());
    let body = html! {
        form.filters method="get" action="/console/inbox" {
            div { label for="f-show" { "Show" }
                select #f-show name="show" {
                    option value="" selected[f.show != "waiting"] { "All I may decide" }
                    option value="waiting" selected[f.show == "waiting"] { "Waiting for my decision" }
                } }
            div { label for="f-rule" { "Rule" } input #f-rule type="text" name="rule" value=(f.rule); }
            div { label for="f-requester" { "Requester" } input #f-requester type="text" name="requester" value=(f.requester); }
            div { label for="f-table" { "Table" } input #f-table type="text" name="table" value=(f.table); }
            div { button type="submit" { "Filter" } }
        }
        section #inbox aria-live="polite" aria-label="Pending reviews"
            hx-get=(rows_url) hx-trigger="reviews-changed from:body" hx-swap="innerHTML" {
            (rows_markup(&list))
        }
        p.muted { "This list updates by itself when a statement is held or a review is decided. "
            span #live-status { "Live updates: connecting…" } }
    };
    layout::respond(StatusCode::OK, layout::page("Inbox", Some(&v), body))
}

/// `GET /console/inbox/rows`: the inbox's list alone (htmx swaps it in on every change).
pub async fn rows(State(c): State<Arc<Console>>, v: Viewer, Query(f): Query<Filters>) -> Response {
    match visible(&c, &v, &f).await {
        Ok(list) => Html(rows_markup(&list).into_string()).into_response(),
        Err(e) => e,
    }
}

/// `GET /console/events`: an SSE event `reviews` whenever a review opens or changes, for
/// reviewers; ends when the sign-in does, and after [`EVENTS_FOR`] (the browser reconnects).
/// Each stream holds one HTTP connection, within `listen.http_max_connections`.
pub async fn events(State(c): State<Arc<Console>>, v: Viewer) -> Response {
    if !v.can_review {
        return layout::error_for(&v, StatusCode::FORBIDDEN, "Only reviewers see the inbox.");
    }
    let rx = c.shared.approvals.reviews.changes();
    let until = Instant::now() + EVENTS_FOR;
    let state = (rx, c, v.session_id);
    let stream = futures_util::stream::unfold(state, move |(mut rx, c, sid)| async move {
        let left = until.checked_duration_since(Instant::now())?;
        let changed = tokio::time::timeout(left, rx.changed()).await;
        c.sessions.peek(&sid)?;
        match changed {
            Ok(Ok(())) => {
                let ev = Event::default().event("reviews").data("changed");
                Some((Ok::<_, Infallible>(ev), (rx, c, sid)))
            }
            _ => None,
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// The sha256, hex, of what an approval grants — the statement and how far the approval
/// reaches (its scope and minutes): the decision form carries it, so a decision applies only
/// to what the page showed.
fn digest(r: &Review) -> String {
    let mut h = Sha256::new();
    h.update(r.statement.as_bytes());
    h.update([0]);
    h.update(
        serde_json::to_string(&r.scope)
            .unwrap_or_default()
            .as_bytes(),
    );
    h.update([0]);
    h.update(r.scope_minutes.unwrap_or(0).to_be_bytes());
    hex::encode(h.finalize())
}

/// What approving grants, in words: beyond the statement shown, when it reaches beyond it.
fn reach(r: &Review) -> (bool, String) {
    match r.scope {
        Scope::Once if has_parameters(&r.statement) => (
            true,
            "This statement, once. Its parameters ($1, ...) are bound by the client after \
             approval: their values are not part of what you approve."
                .into(),
        ),
        Scope::Once => (false, "This statement, once.".into()),
        Scope::Fingerprint => (
            true,
            format!(
                "This statement, and for {} minutes every statement of the same shape by this \
                 requester, with any values.",
                r.scope_minutes.unwrap_or(0)
            ),
        ),
        Scope::Elevation => (
            true,
            format!(
                "Acting as role {} for {} minutes: every statement that role may run.",
                r.elevate_to.as_deref().unwrap_or("?"),
                r.scope_minutes.unwrap_or(0)
            ),
        ),
    }
}

/// Whether a statement has `$n` placeholders (a Parse of the extended protocol).
fn has_parameters(sql: &str) -> bool {
    sql.as_bytes()
        .windows(2)
        .any(|w| w[0] == b'$' && w[1].is_ascii_digit())
}

/// A review the viewer may see: its reviewers, and its requester.
async fn viewable(c: &Console, v: &Viewer, id: &str) -> Option<Review> {
    let r = c.shared.approvals.reviews.get(id).await.ok().flatten()?;
    (may_decide(&r, v) || is_requester(&r, v)).then_some(r)
}

/// The session's statements before the held one (its requester's recent activity).
async fn recent_activity(c: &Console, session: &str) -> Vec<(u64, String, String)> {
    let Some(dir) = c.shared.audit.dir.clone() else {
        return Vec::new();
    };
    let filter = phigate_audit::query::Filter {
        session: Some(session.to_owned()),
        kind: Some("statement".into()),
        ..Default::default()
    };
    let found =
        tokio::task::spawn_blocking(move || phigate_audit::query::last(&dir, &filter, 5)).await;
    let Ok(Ok(records)) = found else {
        return Vec::new();
    };
    let mut out: Vec<_> = records
        .into_iter()
        .filter_map(|r| match r.event {
            phigate_audit::record::Event::Statement(s) => Some((s.n, s.text, s.decision)),
            _ => None,
        })
        .collect();
    let skip = out.len().saturating_sub(5);
    out.drain(..skip);
    out
}

fn facts(r: &Review) -> Markup {
    let status_class = match r.status {
        Status::Pending => "status-warn",
        Status::Approved => "status-ok",
        _ => "status-bad",
    };
    html! {
        dl.facts {
            dt { "Status" } dd { span class=(status_class) { (r.status) } }
            @let (wide, grants) = reach(r);
            dt { "Approving grants" } dd { @if wide { strong.status-bad { (grants) } } @else { (grants) } }
            dt { "Kind" } dd { (super::layout::shown(&what(r))) }
            dt { "Requester" } dd { (super::layout::shown(&r.requester)) " (" (r.issuer.as_deref().unwrap_or("?")) "), role " (r.role) }
            dt { "Justification" } dd { (super::layout::shown(r.justification.as_deref().unwrap_or("none given"))) }
            dt { "Rule" } dd { (r.rule) }
            dt { "Statement kinds" } dd { (r.kinds.join(", ")) }
            dt { "Tables" } dd { (super::layout::shown(&r.tables.join(", "))) }
            dt { "PHI columns" } dd { @if r.phi_columns.is_empty() { "none tagged" } @else { (super::layout::shown(&r.phi_columns.join(", "))) } }
            dt { "Session" } dd { code { (r.session) } }
            dt { "Approvals" } dd { (r.approvals.len()) " of " (r.approvals_required)
                @for a in &r.approvals { br; (super::layout::shown(&a.by)) " at " (a.at) ": " (super::layout::shown(&a.reason)) } }
            dt { "Time left" } dd { (time_left(r)) " (expires " (r.expires_at) ")" }
            @if let Some(by) = &r.decided_by {
                dt { "Decided by" } dd { (super::layout::shown(by)) ": " (super::layout::shown(r.decision_reason.as_deref().unwrap_or(""))) }
            }
            @if r.break_glass { dt { "Break-glass" } dd { span.status-bad { "approved by its requester under break-glass" } } }
        }
    }
}

async fn review_page(
    c: &Console,
    v: &Viewer,
    r: &Review,
    status: StatusCode,
    problem: Option<&str>,
) -> Response {
    let activity = recent_activity(c, &r.session).await;
    let own = is_requester(r, v);
    let decide = r.status == Status::Pending && may_decide(r, v) && !own;
    let body = html! {
        @if let Some(p) = problem { p role="alert" { (p) } }
        h2 { "Statement" }
        pre { code { (super::layout::shown(&r.statement)) } }
        (facts(r))
        @if !activity.is_empty() {
            h2 { "Recent activity in this session" }
            table {
                thead { tr { th scope="col" { "#" } th scope="col" { "Statement (as audited)" } th scope="col" { "Decision" } } }
                tbody { @for (n, text, decision) in &activity {
                    tr { td { (n) } td { code { (super::layout::shown(text)) } } td { (decision) } }
                } }
            }
        }
        @if decide {
            h2 { "Decision" }
            form method="post" action={ "/console/reviews/" (r.id) "/decide" } {
                input type="hidden" name="csrf" value=(v.csrf);
                input type="hidden" name="digest" value=(digest(r));
                label for="reason" { "Reason" }
                p #reason-help.muted { "Required, at least " (MIN_REASON_CHARS) " characters. It is kept in the audit log and shown to the requester." }
                textarea #reason name="reason" rows="3" required minlength=(MIN_REASON_CHARS) maxlength="2000" aria-describedby="reason-help" {}
                p {
                    button.approve type="submit" name="decision" value="approve" { "Approve" }
                    " "
                    button.deny type="submit" name="decision" value="deny" { "Deny" }
                }
            }
        } @else if own && r.status == Status::Pending {
            p role="status" { "This is your own request: another reviewer decides it. Break-glass self-approval, where a rule allows it, is announced and audited: "
                code { "phigate review approve " (r.id) " --break-glass --reason ..." } }
        }
    };
    layout::respond(
        status,
        layout::page(&format!("Review {}", r.id), Some(v), body),
    )
}

/// `GET /console/reviews/{id}`
pub async fn review(State(c): State<Arc<Console>>, v: Viewer, Path(id): Path<String>) -> Response {
    match viewable(&c, &v, &id).await {
        Some(r) => review_page(&c, &v, &r, StatusCode::OK, None).await,
        None => layout::error_for(&v, StatusCode::NOT_FOUND, "No such review for you."),
    }
}

#[derive(serde::Deserialize)]
pub struct DecisionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    decision: String,
}

/// `POST /console/reviews/{id}/decide`
pub async fn decide(
    State(c): State<Arc<Console>>,
    v: Viewer,
    Path(id): Path<String>,
    Form(f): Form<DecisionForm>,
) -> Response {
    if !super::csrf_ok(&c, &v, &f.csrf) {
        return layout::error_for(
            &v,
            StatusCode::FORBIDDEN,
            "This form has expired or did not come from this console; reload the page.",
        );
    }
    let Some(r) = viewable(&c, &v, &id).await else {
        return layout::error_for(&v, StatusCode::NOT_FOUND, "No such review for you.");
    };
    let approve = match f.decision.as_str() {
        "approve" => true,
        "deny" => false,
        _ => {
            return review_page(
                &c,
                &v,
                &r,
                StatusCode::BAD_REQUEST,
                Some("Choose Approve or Deny."),
            )
            .await
        }
    };
    // Who may decide comes before what: a requester's forged post is refused as such.
    if is_requester(&r, &v) || !may_decide(&r, &v) {
        return layout::error_for(
            &v,
            StatusCode::FORBIDDEN,
            "You may not decide this review here (your own request, or not one of its reviewer \
             roles; break-glass self-approval is on the CLI and API only).",
        );
    }
    if f.digest != digest(&r) {
        return review_page(
            &c,
            &v,
            &r,
            StatusCode::CONFLICT,
            Some("The statement is not the one this form was made for; read it again."),
        )
        .await;
    }
    // A textarea's line breaks become spaces (a reason travels on one line: the client's
    // error, the logs, the audit log).
    let reason = f.reason.split_whitespace().collect::<Vec<_>>().join(" ");
    if reason.chars().count() < MIN_REASON_CHARS {
        let msg = format!("A reason of at least {MIN_REASON_CHARS} characters is required.");
        return review_page(&c, &v, &r, StatusCode::UNPROCESSABLE_ENTITY, Some(&msg)).await;
    }
    let shared = &c.shared;
    let credentials = v.credentials();
    let (policy, _) = shared.policy.store.snapshot();
    let caller = match credentials
        .authorize(shared, &policy.role_names(), "decide reviews (console)")
        .await
    {
        Ok(who) => who,
        Err(e) => return layout::api_error(&v, e),
    };
    let body = DecisionBody {
        reason,
        break_glass: false,
    };
    match decide_review(shared, &credentials, &caller, &id, approve, &body).await {
        Ok(_) => Redirect::to(&format!("/console/reviews/{id}")).into_response(),
        Err(e) => {
            let r = viewable(&c, &v, &id).await.unwrap_or(r);
            review_page(&c, &v, &r, e.status(), Some(e.message())).await
        }
    }
}

/// `GET /console/requests`: the viewer's own held statements and access requests.
pub async fn my_requests(State(c): State<Arc<Console>>, v: Viewer) -> Response {
    let list: Vec<Review> = c
        .shared
        .approvals
        .reviews
        .list(true)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|r| is_requester(r, &v))
        .collect();
    let body = html! {
        @if list.is_empty() {
            p role="status" { "You have no held statements or access requests." }
        } @else {
            table {
                thead { tr { th scope="col" { "Review" } th scope="col" { "What" } th scope="col" { "Status" } th scope="col" { "Decided by" } th scope="col" { "Reason" } } }
                tbody { @for r in &list {
                    tr {
                        td { a href={ "/console/reviews/" (r.id) } { "Review " (r.id) } }
                        td { (super::layout::shown(&what(r))) }
                        td { (r.status) }
                        td { (super::layout::shown(r.decided_by.as_deref().unwrap_or("-"))) }
                        td { (super::layout::shown(r.decision_reason.as_deref().unwrap_or("-"))) }
                    }
                } }
            }
        }
    };
    layout::respond(StatusCode::OK, layout::page("My requests", Some(&v), body))
}
