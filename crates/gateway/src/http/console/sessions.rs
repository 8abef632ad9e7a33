//! Recorded sessions, for identities of `audit.reader_roles`: the list (`phigate sessions
//! list`'s reading code) and a session's replay timeline (the API's own audited replay:
//! encrypted recordings decrypted only for `recording.decrypt_roles`, `recording_replayed`
//! written before anything is shown; each step rendered as `phigate replay` prints it).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::html;

use super::super::sessions::audited_replay;
use super::{layout, Console, Viewer};
use crate::recording::replay;

#[derive(serde::Deserialize, Default)]
pub struct ListQuery {
    #[serde(default)]
    subject: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    table: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
}

fn opt(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

async fn reader(
    c: &Console,
    v: &Viewer,
) -> Result<(std::path::PathBuf, crate::auth::Identity), Response> {
    let shared = &c.shared;
    let Some(dir) = shared.audit.dir.clone() else {
        return Err(layout::error_for(
            v,
            StatusCode::NOT_FOUND,
            "The audit log is disabled.",
        ));
    };
    let who = v
        .authorize(
            shared,
            &shared.audit.reader_roles.get(),
            "read recorded sessions (console)",
        )
        .await
        .map_err(|e| layout::api_error(v, e))?;
    Ok((dir, who))
}

/// Text of several lines, each with its control characters made visible (the CLI's rendering
/// keeps client text on one line already; this is the belt to its braces).
fn multiline(text: &str) -> String {
    text.split('\n')
        .map(|l| crate::text::display(l).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `GET /console/sessions`
pub async fn list(
    State(c): State<Arc<Console>>,
    v: Viewer,
    Query(q): Query<ListQuery>,
) -> Response {
    let (dir, _) = match reader(&c, &v).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let filter = replay::ListFilter {
        subject: opt(&q.subject),
        role: opt(&q.role),
        since: opt(&q.since),
        until: opt(&q.until),
        table: opt(&q.table),
    };
    let found = tokio::task::spawn_blocking(move || replay::list(&dir, &filter)).await;
    let Ok(Ok(mut sessions)) = found else {
        return layout::error_for(
            &v,
            StatusCode::INTERNAL_SERVER_ERROR,
            "The audit log cannot be read.",
        );
    };
    // Newest first.
    sessions.reverse();
    let body = html! {
        form.filters method="get" action="/console/sessions" {
            div { label for="s-subject" { "Subject" } input #s-subject type="text" name="subject" value=(q.subject); }
            div { label for="s-role" { "Role" } input #s-role type="text" name="role" value=(q.role); }
            div { label for="s-table" { "Table" } input #s-table type="text" name="table" value=(q.table); }
            div { label for="s-since" { "Since" } input #s-since type="text" name="since" value=(q.since); }
            div { label for="s-until" { "Until" } input #s-until type="text" name="until" value=(q.until); }
            div { button type="submit" { "Filter" } }
        }
        p role="status" { (sessions.len()) " sessions." }
        @if !sessions.is_empty() {
            table {
                thead { tr {
                    th scope="col" { "Session" } th scope="col" { "Started (UTC)" } th scope="col" { "Ended" }
                    th scope="col" { "Statements" } th scope="col" { "Denied" } th scope="col" { "Held" }
                    th scope="col" { "Recording" }
                } }
                tbody { @for s in &sessions {
                    tr {
                        td { a href={ "/console/sessions/" (s.session) } {
                            (super::layout::shown(&s.subject)) " as " (s.role) " (" (s.session) ")" } }
                        td { (s.started) }
                        td { (s.ended.as_deref().unwrap_or("still open")) }
                        td { (s.statements) } td { (s.denied) } td { (s.held) }
                        td { @match &s.recording {
                            Some(r) if r.encrypted => "encrypted",
                            Some(_) => "recorded",
                            None => "none",
                        } }
                    }
                } }
            }
        }
    };
    layout::respond(StatusCode::OK, layout::page("Sessions", Some(&v), body))
}

/// `GET /console/sessions/{id}`: the replay timeline.
pub async fn replay(State(c): State<Arc<Console>>, v: Viewer, Path(id): Path<String>) -> Response {
    let (dir, who) = match reader(&c, &v).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let r = match audited_replay(&c.shared, dir, &who, id.clone()).await {
        Ok(r) => r,
        Err(e) => return layout::api_error(&v, e),
    };
    let mut header = Vec::new();
    let _ = replay::render_header(&r, &mut header);
    let steps: Vec<String> = r
        .steps
        .iter()
        .map(|s| {
            let mut out = Vec::new();
            let _ = replay::render_step(s, &mut out);
            multiline(&String::from_utf8_lossy(&out))
        })
        .collect();
    let body = html! {
        pre { (multiline(&String::from_utf8_lossy(&header))) }
        p {
            button #replay-play type="button" hidden { "Play" } " "
            button #replay-step type="button" hidden { "Step" } " "
            span #replay-status role="status" { (steps.len()) " steps" }
        }
        ol #timeline.timeline {
            @for (i, s) in steps.iter().enumerate() {
                li.step { h2 { "Step " (i + 1) } pre { (s) } }
            }
        }
    };
    layout::respond(
        StatusCode::OK,
        layout::page(&format!("Session {}", r.session.session), Some(&v), body),
    )
}
