//! The console's static files, compiled into the binary: htmx (vendored from npm, version
//! and SHA-256 in docs/console.md), the stylesheet and one small ES module. Nothing is loaded
//! from elsewhere.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// htmx 2.0.11 (`htmx.org` on npm, `dist/htmx.min.js`).
const HTMX: &[u8] = include_bytes!("assets/htmx-2.0.11.min.js");
const CSS: &[u8] = include_bytes!("assets/console.css");
const JS: &[u8] = include_bytes!("assets/console.js");

/// `GET /console/assets/{file}`
pub async fn serve(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "htmx.min.js" => (HTMX, "text/javascript; charset=utf-8"),
        "console.js" => (JS, "text/javascript; charset=utf-8"),
        "console.css" => (CSS, "text/css; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}
