//! The page frame every console page shares: the head (the stylesheet and scripts, all from
//! `/console/assets/`, no inline code), a skip link, the navigation the viewer's roles allow,
//! and the sign-out form.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

use super::Viewer;

/// htmx's settings: no inline indicator styles (the CSP forbids them), no `eval`, no scripts
/// in swapped content.
const HTMX_CONFIG: &str = r#"{"includeIndicatorStyles":false,"allowEval":false,"allowScriptTags":false,"selfRequestsOnly":true}"#;

/// The console is served over plain HTTP on loopback (development): every page says so. Set
/// once when the console's routes are built (one console per process).
pub static PLAIN_HTTP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A whole page titled `title`, for `viewer` (none: the sign-in pages).
pub fn page(title: &str, viewer: Option<&Viewer>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="htmx-config" content=(HTMX_CONFIG);
                title { (title) " · phigate console" }
                link rel="stylesheet" href="/console/assets/console.css";
                script src="/console/assets/htmx.min.js" defer {}
                script type="module" src="/console/assets/console.js" {}
            }
            body {
                a.skip href="#main" { "Skip to the content" }
                @if PLAIN_HTTP.load(std::sync::atomic::Ordering::Relaxed) {
                    p.insecure role="alert" {
                        "Development only: this console is served over plain HTTP, so any program on this \
                         machine can take over your sign-in. Production consoles use HTTPS \
                         (listen.http_tls)."
                    }
                }
                header {
                    span.brand { "phigate console" }
                    @if let Some(v) = viewer {
                        nav aria-label="Main" {
                            ul {
                                @if v.can_review {
                                    li { a href="/console/inbox" { "Inbox" } }
                                }
                                @if v.can_audit {
                                    li { a href="/console/audit" { "Audit" } }
                                    li { a href="/console/sessions" { "Sessions" } }
                                }
                                li { a href="/console/requests" { "My requests" } }
                            }
                        }
                        div.who {
                            span { "Signed in as " strong { (shown(&v.who.subject)) } " (" (v.who.issuer) ")" }
                            form method="post" action="/console/logout" {
                                input type="hidden" name="csrf" value=(v.csrf);
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main #main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// Client data on a page, made visible as [`crate::text::display`] does, each made-visible
/// character in a marked span (styled apart and named for screen readers): the typed text
/// `\u{a}` and a real line break never look alike.
pub fn shown(text: &str) -> Markup {
    let mut runs: Vec<Result<&str, char>> = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if crate::text::invisible(c) {
            if start < i {
                runs.push(Ok(&text[start..i]));
            }
            runs.push(Err(c));
            start = i + c.len_utf8();
        }
    }
    if start < text.len() {
        runs.push(Ok(&text[start..]));
    }
    html! {
        @for run in runs {
            @match run {
                Ok(t) => (t),
                Err(c) => span.esc title="hidden character" { (format!("\\u{{{:x}}}", c as u32)) },
            }
        }
    }
}

/// A page as a response.
pub fn respond(status: StatusCode, m: Markup) -> Response {
    (status, Html(m.into_string())).into_response()
}

/// A short error page (no viewer details: it may answer a request that is not signed in).
pub fn error(status: StatusCode, message: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    respond(
        status,
        page(
            title,
            None,
            html! {
                p role="alert" { (message) }
                p { a href="/console/" { "Back to the console" } }
            },
        ),
    )
}

/// An error page inside the frame of a signed-in viewer.
pub fn error_for(v: &Viewer, status: StatusCode, message: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    respond(
        status,
        page(title, Some(v), html! { p role="alert" { (message) } }),
    )
}

/// An API error (from the shared authorization and decision code) as a page.
pub fn api_error(v: &Viewer, e: super::super::ApiError) -> Response {
    let status = e.status();
    error_for(v, status, e.message())
}
