//! The audit page, for identities of `audit.reader_roles`: search (the audit crate's own
//! query, keyset-paginated by `seq`), CSV download (its own export rows), the access report
//! for a period, and the log's verify status (chain intact, last signed checkpoint). The log
//! is read off the async threads.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use phigate_audit::query::{AccessReport, Filter};
use phigate_audit::record::{Event, Record, DECISIONS, TYPES};

use super::{layout, Console, Viewer};

/// Records per page.
const PAGE: usize = 50;
/// Most records one CSV download holds.
const CSV_MAX: usize = 100_000;

#[derive(serde::Deserialize, Default, Clone)]
pub struct Search {
    #[serde(default)]
    subject: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    table: String,
    #[serde(default)]
    column: String,
    #[serde(default)]
    decision: String,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    /// Keyset: records after this `seq`.
    #[serde(default)]
    after: u64,
    /// Show the access report for since..until.
    #[serde(default)]
    report: String,
}

fn opt(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

impl Search {
    fn filter(&self) -> Result<Filter, String> {
        if opt(&self.kind).is_some_and(|k| !TYPES.contains(&k.as_str())) {
            return Err("Unknown record type.".into());
        }
        if opt(&self.decision).is_some_and(|d| !DECISIONS.contains(&d.as_str())) {
            return Err("Unknown decision.".into());
        }
        Ok(Filter {
            subject: opt(&self.subject),
            role: opt(&self.role),
            table: opt(&self.table),
            column: opt(&self.column),
            since: opt(&self.since),
            until: opt(&self.until),
            decision: opt(&self.decision),
            session: None,
            kind: opt(&self.kind),
        })
    }

    /// The query string of this search, starting after `after`.
    fn query(&self, after: u64) -> String {
        let mut u = match reqwest::Url::parse("http://x/") {
            Ok(u) => u,
            Err(_) => return String::new(),
        };
        u.query_pairs_mut()
            .append_pair("subject", &self.subject)
            .append_pair("role", &self.role)
            .append_pair("table", &self.table)
            .append_pair("column", &self.column)
            .append_pair("decision", &self.decision)
            .append_pair("type", &self.kind)
            .append_pair("since", &self.since)
            .append_pair("until", &self.until)
            .append_pair("after", &after.to_string());
        u.query().unwrap_or_default().to_owned()
    }
}

/// Checks the viewer reads the audit log as the API's `AuditReader` does; the log's directory.
async fn reader(c: &Console, v: &Viewer) -> Result<std::path::PathBuf, Response> {
    let shared = &c.shared;
    let Some(dir) = shared.audit.dir.clone() else {
        return Err(layout::error_for(
            v,
            StatusCode::NOT_FOUND,
            "The audit log is disabled.",
        ));
    };
    v.authorize(
        shared,
        &shared.audit.reader_roles.get(),
        "read the audit log (console)",
    )
    .await
    .map_err(|e| layout::api_error(v, e))?;
    Ok(dir)
}

/// One record's decision and a one-line summary of what it says.
fn summary(r: &Record) -> (String, String) {
    match &r.event {
        Event::Statement(s) => (s.decision.clone(), s.text.clone()),
        other => {
            let mut v = serde_json::to_value(other).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.remove("type");
            }
            let mut text = v.to_string();
            if text.len() > 240 {
                let cut = (0..=240)
                    .rev()
                    .find(|i| text.is_char_boundary(*i))
                    .unwrap_or(0);
                text.truncate(cut);
                text.push('…');
            }
            (String::new(), text)
        }
    }
}

fn select(name: &str, id: &str, label: &str, options: &[&str], chosen: &str) -> Markup {
    html! {
        div { label for=(id) { (label) }
            select id=(id) name=(name) {
                option value="" selected[chosen.is_empty()] { "any" }
                @for o in options { option value=(o) selected[*o == chosen] { (o) } }
            } }
    }
}

fn text_field(name: &str, label: &str, value: &str, hint: Option<&str>) -> Markup {
    let id = format!("a-{name}");
    html! {
        div { label for=(id) { (label) @if let Some(h) = hint { " " span.muted { (h) } } }
            input id=(id) type="text" name=(name) value=(value); }
    }
}

fn search_form(s: &Search) -> Markup {
    html! {
        form.filters method="get" action="/console/audit" {
            (text_field("subject", "Subject", &s.subject, None))
            (text_field("role", "Role", &s.role, None))
            (text_field("table", "Table", &s.table, None))
            (text_field("column", "Column", &s.column, None))
            (select("decision", "a-decision", "Decision", DECISIONS, &s.decision))
            (select("type", "a-type", "Type", TYPES, &s.kind))
            (text_field("since", "Since", &s.since, Some("(RFC 3339)")))
            (text_field("until", "Until", &s.until, Some("(RFC 3339)")))
            div { button type="submit" { "Search" } }
            div { button type="submit" name="report" value="1" { "Access report" } }
        }
    }
}

fn results(s: &Search, records: &[Record], more: bool) -> Markup {
    html! {
        h2 { "Records" }
        p role="status" { (records.len()) " records" @if s.after > 0 { " after #" (s.after) } "." }
        @if !records.is_empty() {
            table {
                thead { tr {
                    th scope="col" { "Seq" } th scope="col" { "Time (UTC)" } th scope="col" { "Type" }
                    th scope="col" { "Subject" } th scope="col" { "Role" } th scope="col" { "Decision" }
                    th scope="col" { "Details" }
                } }
                tbody { @for r in records {
                    @let (decision, detail) = summary(r);
                    tr {
                        td { (r.seq) } td { (r.ts) } td { (r.kind()) }
                        td { (super::layout::shown(r.subject().unwrap_or(""))) }
                        td { (r.role().unwrap_or("")) }
                        td { (decision) }
                        td { code { (super::layout::shown(&detail)) } }
                    }
                } }
            }
        }
        p {
            @if let (true, Some(last)) = (more, records.last()) {
                a href={ "/console/audit?" (s.query(last.seq)) } { "Next page" } " · "
            }
            a href={ "/console/audit.csv?" (s.query(s.after)) } { "Download these results as CSV" }
        }
    }
}

fn report_markup(r: &AccessReport) -> Markup {
    html! {
        h2 { "Access report" }
        table {
            caption.muted { "Who touched what, " (r.since.as_deref().unwrap_or("from the start")) " to " (r.until.as_deref().unwrap_or("now")) }
            thead { tr {
                th scope="col" { "Subject" } th scope="col" { "Roles" } th scope="col" { "Sessions" }
                th scope="col" { "Statements" } th scope="col" { "Denied" } th scope="col" { "Held" }
                th scope="col" { "Tables (statements, rows, masked)" }
            } }
            tbody { @for i in &r.identities {
                tr {
                    td { (super::layout::shown(&i.subject)) }
                    td { (i.roles.iter().cloned().collect::<Vec<_>>().join(", ")) }
                    td { (i.sessions) } td { (i.statements) } td { (i.denied) } td { (i.approvals_required) }
                    td { @for (t, a) in &i.tables {
                        (t) ": " (a.statements) ", " (a.rows) " rows, " (if a.masked { "masked" } else { "UNMASKED rows" }) br;
                    } }
                }
            } }
        }
        p { (r.approvals.len()) " approvals, " (r.failed_logins.len()) " failed logins in the period." }
    }
}

/// How long a verification's result is shown before the log is verified again: a page view
/// never costs more than one pass over the log a minute, however many auditors look.
const VERIFY_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// What the last verification found.
#[derive(Clone)]
pub enum Verified {
    Intact(phigate_audit::verify::Report),
    Failed(phigate_audit::verify::Failure),
    Unreadable,
}

/// The last verification and when it ran; one runs at a time (the others wait for it).
pub type VerifyCache = tokio::sync::Mutex<Option<(std::time::Instant, Verified)>>;

async fn verified(c: &Console, dir: std::path::PathBuf) -> (Verified, std::time::Instant) {
    let mut last = c.verified.lock().await;
    if let Some((at, v)) = last.as_ref().filter(|(at, _)| at.elapsed() < VERIFY_EVERY) {
        return (v.clone(), *at);
    }
    let mirrors: Vec<_> = c.shared.audit.mirror.iter().cloned().collect();
    let recordings = c.shared.recorder.as_ref().map(|r| r.dir().to_path_buf());
    let result = tokio::task::spawn_blocking(move || {
        let key = phigate_audit::PublicKey::load(&dir.join(phigate_audit::store::PUBLIC_KEY))?;
        Ok::<_, std::io::Error>(phigate_audit::verify::verify(
            &dir,
            &key,
            &mirrors,
            recordings.as_deref(),
        ))
    })
    .await;
    let v = match result {
        Ok(Ok(Ok(r))) => Verified::Intact(r),
        Ok(Ok(Err(f))) => Verified::Failed(f),
        _ => Verified::Unreadable,
    };
    let at = std::time::Instant::now();
    *last = Some((at, v.clone()));
    (v, at)
}

async fn verify_markup(c: &Console, dir: std::path::PathBuf) -> Markup {
    let (v, at) = verified(c, dir).await;
    html! {
        h2 { "Integrity" }
        @match v {
            Verified::Intact(r) => p role="status" {
                span.status-ok { "Chain intact" } ": " (r.records) " records (#" (r.first_seq) " to #" (r.last_seq) "), "
                (r.checkpoints) " signed checkpoints, the last at #" (r.last_checkpoint_seq) " ("
                (r.unsigned_tail) " records after it not yet signed), " (r.recordings) " recordings checked."
            },
            Verified::Failed(f) => p role="alert" {
                span.status-bad { "Verification FAILED" } ": " (super::layout::shown(&f.what))
                @if let Some(seq) = f.seq { " (record #" (seq) ")" }
            },
            Verified::Unreadable => p role="alert" { span.status-bad { "The audit log cannot be read." } },
        }
        p.muted { "Verified " (at.elapsed().as_secs()) " s ago (at most once a minute; "
            code { "phigate audit verify" } " checks it in full)." }
    }
}

/// `GET /console/audit`
pub async fn page(State(c): State<Arc<Console>>, v: Viewer, Query(s): Query<Search>) -> Response {
    let dir = match reader(&c, &v).await {
        Ok(d) => d,
        Err(e) => return e,
    };
    let filter = match s.filter() {
        Ok(f) => f,
        Err(msg) => return layout::error_for(&v, StatusCode::BAD_REQUEST, &msg),
    };
    let (d, after) = (dir.clone(), s.after);
    let found = tokio::task::spawn_blocking(move || {
        phigate_audit::query::search_after(&d, &filter, after, PAGE + 1)
    })
    .await;
    let Ok(Ok(mut records)) = found else {
        return layout::error_for(
            &v,
            StatusCode::INTERNAL_SERVER_ERROR,
            "The audit log cannot be read.",
        );
    };
    let more = records.len() > PAGE;
    records.truncate(PAGE);
    let report = if s.report.is_empty() {
        None
    } else {
        let (d, since, until) = (dir.clone(), opt(&s.since), opt(&s.until));
        tokio::task::spawn_blocking(move || {
            phigate_audit::query::report(&d, since.as_deref(), until.as_deref())
        })
        .await
        .ok()
        .and_then(Result::ok)
    };
    let verify = verify_markup(&c, dir).await;
    let body = html! {
        (verify)
        (search_form(&s))
        @if let Some(r) = &report { (report_markup(r)) }
        (results(&s, &records, more))
    };
    layout::respond(StatusCode::OK, layout::page("Audit", Some(&v), body))
}

/// `GET /console/audit.csv`: the search's records (from `after`), as `phigate audit export
/// --format csv` writes them.
pub async fn csv(State(c): State<Arc<Console>>, v: Viewer, Query(s): Query<Search>) -> Response {
    let dir = match reader(&c, &v).await {
        Ok(d) => d,
        Err(e) => return e,
    };
    let filter = match s.filter() {
        Ok(f) => f,
        Err(msg) => return layout::error_for(&v, StatusCode::BAD_REQUEST, &msg),
    };
    let after = s.after;
    let found = tokio::task::spawn_blocking(move || {
        phigate_audit::query::search_after(&dir, &filter, after, CSV_MAX)
    })
    .await;
    let Ok(Ok(records)) = found else {
        return layout::error_for(
            &v,
            StatusCode::INTERNAL_SERVER_ERROR,
            "The audit log cannot be read.",
        );
    };
    let mut out = String::from(phigate_audit::query::CSV_HEADER);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    for r in &records {
        out.push_str(&phigate_audit::query::csv_row(r));
        out.push('\n');
    }
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"phigate-audit.csv\"",
            ),
        ],
        out,
    )
        .into_response()
}
