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
                            span { "Signed in as " strong { (v.who.subject) } " (" (v.who.issuer) ")" }
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
