//! The gateway as a SAML 2.0 service provider (`[[auth.saml]]`), for people signing in:
//!
//! - `GET /saml/{name}/metadata`: our SP metadata, to register at the IdP;
//! - `GET /saml/{name}/login`: starts a sign-in — with `cli_port`, `cli_state` and
//!   `cli_challenge` for `phigate login`, else for the web console (via
//!   `/console/signin/{name}`) — and sends the browser to the IdP (HTTP-Redirect binding);
//! - `POST /saml/{name}/acs`: the IdP's response (HTTP-POST binding, size-capped), verified by
//!   [`crate::auth::Authenticator::saml_assertion`]; the browser is then sent, with a one-time
//!   key, to collect the outcome where the ticket cookie of the sign-in it started must name
//!   the same RelayState ([`crate::auth::saml_state`]): the console's at
//!   `/console/saml/finish`, `phigate login`'s at `GET /saml/{name}/finish`, which takes a
//!   one-time code (or the refusal) to the CLI's loopback port; the CLI redeems the code with
//!   its PKCE verifier at `POST /v1/auth/saml/token` (form `code`, `code_verifier`).
//!
//! Every refusal is a `login_failed` audit record and counts towards the failed-login limit.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use maud::html;
use serde_json::Value;

use super::error::{ApiError, ApiResult};
use crate::auth::saml::SamlIssuer;
use crate::auth::saml_state::{same, Kind, Person, Purpose, Ticket};
use crate::auth::AuthError;
use crate::state::Shared;

/// The largest ACS form accepted: a base64, form-encoded response of
/// [`phigate_saml::MAX_RESPONSE_BYTES`] and a RelayState.
const MAX_ACS_BODY: usize = super::conn::MAX_SAML_BODY;

pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/saml/{name}/metadata", get(metadata))
        .route("/saml/{name}/login", get(login))
        .route(
            "/saml/{name}/acs",
            post(acs).layer(DefaultBodyLimit::max(MAX_ACS_BODY)),
        )
        .route("/saml/{name}/finish", get(confirm).post(finish))
        .route("/v1/auth/saml/token", post(token))
}

fn issuer(shared: &Shared, name: &str) -> ApiResult<Arc<SamlIssuer>> {
    shared
        .auth
        .saml_issuer(name)
        .ok_or_else(|| ApiError::not_found("no such SAML identity provider"))
}

/// `GET /saml/{name}/metadata`.
async fn metadata(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    match issuer(&shared, &name) {
        Ok(i) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/samlmetadata+xml"),
            )],
            i.sp.metadata(),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(serde::Deserialize)]
struct Login {
    cli_port: Option<u16>,
    cli_state: Option<String>,
    cli_challenge: Option<String>,
}

/// A `phigate login` state or S256 challenge: URL-safe base64, 16 to 128 characters.
fn url_safe_token(s: &str) -> bool {
    (16..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The ticket cookie's name: `__Host-` and `Secure` when the ACS is reached over https.
fn ticket_cookie_name(issuer: &SamlIssuer) -> (&'static str, bool) {
    if issuer
        .cfg
        .acs_url
        .to_ascii_lowercase()
        .starts_with("https://")
    {
        ("__Host-phigate-saml", true)
    } else {
        ("phigate-saml", false)
    }
}

/// The `Set-Cookie` value for a sign-in's ticket (empty: removed). `SameSite=Lax`: it comes
/// along to the finish URL (a top-level GET), never on the IdP's cross-site POST.
pub(super) fn ticket_cookie(issuer: &SamlIssuer, ticket: &str) -> HeaderValue {
    let (name, secure) = ticket_cookie_name(issuer);
    let secure = if secure { "; Secure" } else { "" };
    let age = if ticket.is_empty() {
        0
    } else {
        crate::auth::saml_state::FLIGHT_TTL.as_secs()
    };
    let v = format!("{name}={ticket}; Path=/; HttpOnly; SameSite=Lax{secure}; Max-Age={age}");
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The ticket this browser holds for a sign-in at `issuer`, if genuine and current.
pub(super) fn ticket(shared: &Shared, issuer: &SamlIssuer, headers: &HeaderMap) -> Option<Ticket> {
    let (name, _) = ticket_cookie_name(issuer);
    let value = super::console::cookie_value(headers, name)?;
    shared
        .auth
        .saml_flights()
        .ticket(value)
        .filter(|t| t.issuer == issuer.cfg.name)
}

/// `GET /saml/{name}/login`.
async fn login(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(q): Query<Login>,
) -> Response {
    let issuer = match issuer(&shared, &name) {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    let (port, state, challenge) = match (q.cli_port, q.cli_state, q.cli_challenge) {
        (Some(p), Some(s), Some(c))
            if p != 0 && url_safe_token(&s) && c.len() == 43 && url_safe_token(&c) =>
        {
            (p, s, c)
        }
        (None, None, None) => {
            // A console sign-in starts at the console.
            return Redirect::to(&format!("/console/signin/{name}")).into_response();
        }
        _ => {
            return page(
                StatusCode::BAD_REQUEST,
                "cli_port, cli_state and cli_challenge (S256, 43 characters) go together.",
            )
        }
    };
    let purpose = Purpose::Cli {
        port,
        state,
        challenge,
    };
    match shared.auth.saml_start(&issuer, purpose).await {
        Ok((started, url)) => {
            let mut res = Redirect::to(&url).into_response();
            res.headers_mut()
                .insert(header::SET_COOKIE, ticket_cookie(&issuer, &started.ticket));
            res
        }
        Err(e) => page(status_of(&e), &e.to_string()),
    }
}

fn status_of(e: &AuthError) -> StatusCode {
    match e {
        AuthError::IdpUnavailable => StatusCode::BAD_GATEWAY,
        AuthError::SignInsBusy => StatusCode::SERVICE_UNAVAILABLE,
        AuthError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
        AuthError::NoRole { .. } | AuthError::RoleNotAllowed { .. } => StatusCode::FORBIDDEN,
        _ => StatusCode::UNAUTHORIZED,
    }
}

#[derive(serde::Deserialize)]
struct Acs {
    #[serde(rename = "SAMLResponse")]
    saml_response: String,
    #[serde(rename = "RelayState")]
    relay_state: Option<String>,
}

/// `POST /saml/{name}/acs`: verifies, then sends the browser on to collect the outcome with
/// the ticket of the sign-in it started.
async fn acs(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    Form(form): Form<Acs>,
) -> Response {
    let issuer = match issuer(&shared, &name) {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    let relay = form.relay_state.as_deref().unwrap_or_default();
    let (verified, flight) = shared
        .auth
        .saml_assertion(&issuer, &form.saml_response, form.relay_state.as_deref())
        .await;
    let flights = shared.auth.saml_flights();
    let person = match verified {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(%peer, issuer = %name, error = %e, "SAML sign-in refused");
            super::extract::audit_failed_login(&shared, peer, &format!("saml:{name}"), &e);
            // `phigate login` waits on its loopback port: its browser takes the reason there.
            if flight.as_ref().is_some_and(|f| f.kind == Kind::Cli) {
                if let Some(key) = flights.refused(e.to_string(), relay) {
                    return Redirect::to(&format!("/saml/{name}/finish?key={key}")).into_response();
                }
            }
            return page(status_of(&e), &e.to_string());
        }
    };
    let Some(flight) = flight else {
        // Unsolicited (allowed for this IdP): the person is signed in at the IdP, so a sign-in
        // the gateway starts goes through at once, bound to this browser. The response itself
        // is spent (its assertion ID is remembered); it signs no one in.
        return Redirect::to(&format!("/console/signin/{name}")).into_response();
    };
    let key = match flights.verified(person, relay) {
        Ok(k) => k,
        Err(e) => return page(status_of(&e), &e.to_string()),
    };
    match flight.kind {
        Kind::Cli => Redirect::to(&format!("/saml/{name}/finish?key={key}")).into_response(),
        Kind::Console => Redirect::to(&format!("/console/saml/finish?key={key}")).into_response(),
    }
}

#[derive(serde::Deserialize)]
pub(super) struct Finish {
    pub key: String,
}

/// Collects a sign-in's outcome for the browser holding the ticket that started it, of
/// `kind`. A refusal names the subject a mismatched browser tried to collect.
pub(super) fn collect(
    shared: &Shared,
    issuer: &SamlIssuer,
    headers: &HeaderMap,
    peer: SocketAddr,
    key: &str,
    kind: Kind,
) -> Result<(Ticket, Result<Person, String>), Box<Response>> {
    let ticket = ticket(shared, issuer, headers);
    // Neither an unknown key nor a mismatched ticket counts towards the failed-login limit: a
    // key cannot be guessed (256 bits), and any web page can send a browser here.
    let Some(outcome) = shared.auth.saml_flights().collect(key) else {
        return Err(Box::new(page(
            StatusCode::BAD_REQUEST,
            "This sign-in is unknown, already used, or took too long. Start again.",
        )));
    };
    match ticket {
        Some(t) if same(&t.relay, &outcome.relay) && t.purpose.kind() == kind => {
            Ok((t, outcome.result))
        }
        _ => {
            let subject = outcome.result.as_ref().ok().map(|p| p.subject.clone());
            let e = AuthError::Saml(
                "a sign-in was collected by a browser that did not start it".into(),
            );
            shared.metrics.login_failed(e.kind(), "http");
            if let Some(audit) = &shared.audit.log {
                audit.submit(phigate_audit::Pending::Event(
                    phigate_audit::Event::LoginFailed {
                        client_addr: peer.to_string(),
                        user: format!("saml:{}", issuer.cfg.name),
                        reason: e.to_string(),
                        via: Some("http".into()),
                        subject,
                    },
                ));
            }
            Err(Box::new(page(
                StatusCode::BAD_REQUEST,
                "This sign-in was not started in this browser. Start again.",
            )))
        }
    }
}

/// `GET /saml/{name}/finish?key=...`: before a code for `phigate login` leaves for a loopback
/// port, the person confirms that they started it (any web page can send a browser that is
/// signed in at the IdP through a sign-in it started, with a loopback port and challenge of its
/// choosing, and a process on this computer could be listening there). A refusal goes on at
/// once.
async fn confirm(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Query(q): Query<Finish>,
) -> Response {
    let issuer = match issuer(&shared, &name) {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    let ticket = ticket(&shared, &issuer, &headers);
    let peeked = shared.auth.saml_flights().peek(&q.key);
    let (Some(t), Some((relay, Some(subject)))) = (&ticket, &peeked) else {
        return deliver(&shared, &issuer, &headers, peer, &q.key);
    };
    let Purpose::Cli { port, .. } = &t.purpose else {
        return deliver(&shared, &issuer, &headers, peer, &q.key);
    };
    if !same(&t.relay, relay) {
        return deliver(&shared, &issuer, &headers, peer, &q.key);
    }
    document(
        StatusCode::OK,
        "phigate login",
        html! {
            h1 { "Sign in phigate login on this computer?" }
            p {
                "A phigate login command on this computer (waiting on port " (port)
                ") asks for a gateway session as "
                strong { (crate::text::display(subject).to_string()) }
                "."
            }
            p { "Continue only if you just ran phigate login yourself." }
            form method="post" action={ "/saml/" (name) "/finish" } {
                input type="hidden" name="key" value=(q.key);
                button type="submit" id="continue" { "Continue" }
            }
        },
    )
}

/// `POST /saml/{name}/finish` (form `key`): `phigate login`'s browser collects the outcome and
/// takes it to the CLI's loopback port: a one-time code, or the reason for a refusal.
async fn finish(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(q): Form<Finish>,
) -> Response {
    match issuer(&shared, &name) {
        Ok(issuer) => deliver(&shared, &issuer, &headers, peer, &q.key),
        Err(e) => e.into_response(),
    }
}

fn deliver(
    shared: &Shared,
    issuer: &SamlIssuer,
    headers: &HeaderMap,
    peer: SocketAddr,
    key: &str,
) -> Response {
    let (ticket, result) = match collect(shared, issuer, headers, peer, key, Kind::Cli) {
        Ok(v) => v,
        Err(res) => return *res,
    };
    let Purpose::Cli {
        port,
        state,
        challenge,
    } = ticket.purpose
    else {
        return page(
            StatusCode::BAD_REQUEST,
            "This sign-in is not for phigate login.",
        );
    };
    let Ok(mut to) = reqwest::Url::parse(&format!("http://127.0.0.1:{port}/callback")) else {
        return page(StatusCode::BAD_REQUEST, "Bad loopback port.");
    };
    let code = match result.map(|p| shared.auth.saml_flights().code(p, &challenge)) {
        Ok(Ok(code)) => Ok(code),
        Ok(Err(e)) => return page(status_of(&e), &e.to_string()),
        Err(reason) => Err(reason),
    };
    {
        let mut query = to.query_pairs_mut();
        match &code {
            Ok(code) => query.append_pair("code", code),
            Err(reason) => query
                .append_pair("error", "access_denied")
                .append_pair("error_description", reason),
        };
        query.append_pair("state", &state);
    }
    let mut res = Redirect::to(to.as_str()).into_response();
    res.headers_mut()
        .insert(header::SET_COOKIE, ticket_cookie(issuer, ""));
    res
}

#[derive(serde::Deserialize)]
struct TokenForm {
    code: String,
    code_verifier: String,
}

/// `POST /v1/auth/saml/token`: `phigate login` redeems its one-time code.
async fn token(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Form(form): Form<TokenForm>,
) -> ApiResult<Json<Value>> {
    if !shared.listen.credentials_from(peer.ip()) {
        return Err(ApiError::forbidden(
            "the session token is served to local callers only over plain HTTP; set listen.http_tls, or put a TLS-terminating proxy on this machine in front of the HTTP port",
        ));
    }
    let p = match shared
        .auth
        .saml_redeem(peer.ip(), &form.code, &form.code_verifier)
    {
        Ok(p) => p,
        Err(e @ AuthError::RateLimited(_)) => {
            return Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()))
        }
        Err(e) => {
            super::extract::audit_failed_login(&shared, peer, "saml-token", &e);
            return Err(ApiError::unauthorized(format!(
                "authentication failed: {e}"
            )));
        }
    };
    super::tokens::session_token(
        &shared,
        peer,
        &p.subject,
        &p.groups,
        &p.issuer,
        p.expires_at,
    )
}

/// A small HTML page for the person in the browser (a refusal, mostly).
pub(super) fn page(status: StatusCode, message: &str) -> Response {
    document(
        status,
        "phigate sign-in",
        html! {
            h1 { "Sign-in" }
            p { (crate::text::display(message).to_string()) }
        },
    )
}

/// A page of its own (not the console's layout): no script, no framing, not cached.
fn document(status: StatusCode, title: &str, body: maud::Markup) -> Response {
    let page = html! {
        (maud::DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { (title) } }
            body { (body) }
        }
    };
    let mut res = (status, page).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}
