//! The gateway as a SAML 2.0 service provider (`[[auth.saml]]`), for people signing in:
//!
//! - `GET /saml/{name}/metadata`: our SP metadata, to register at the IdP;
//! - `GET /saml/{name}/login`: starts a sign-in — with `cli_port`, `cli_state` and
//!   `cli_challenge` for `phigate login`, else for the web console (via
//!   `/console/signin/{name}`) — and sends the browser to the IdP (HTTP-Redirect binding);
//! - `POST /saml/{name}/acs`: the IdP's response (HTTP-POST binding, size-capped), verified by
//!   [`crate::auth::Authenticator::saml_assertion`]; the console's sign-in is then collected by
//!   the browser that started it (`/console/saml/finish`), `phigate login`'s by the CLI with a
//!   one-time code at `POST /v1/auth/saml/token` (form `code`, `code_verifier`).
//!
//! Every refusal is a `login_failed` audit record and counts towards the failed-login limit.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine;
use maud::html;
use serde_json::Value;
use sha2::Digest;

use super::error::{ApiError, ApiResult};
use crate::auth::saml::{Flight, Purpose};
use crate::auth::AuthError;
use crate::state::Shared;

/// The largest ACS form accepted: a base64 response of [`phigate_saml::MAX_RESPONSE_BYTES`]
/// and a RelayState.
const MAX_ACS_BODY: usize = phigate_saml::MAX_RESPONSE_BYTES * 4 / 3 + 8192;

pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/saml/{name}/metadata", get(metadata))
        .route("/saml/{name}/login", get(login))
        .route(
            "/saml/{name}/acs",
            post(acs).layer(DefaultBodyLimit::max(MAX_ACS_BODY)),
        )
        .route("/v1/auth/saml/token", post(token))
}

fn issuer(shared: &Shared, name: &str) -> ApiResult<Arc<crate::auth::saml::SamlIssuer>> {
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

/// `GET /saml/{name}/login`.
async fn login(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
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
            // Console sign-ins start at the console (its sealed cookie binds the browser).
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
    match shared.auth.saml_start(&issuer, purpose, peer.ip()).await {
        Ok((_, url)) => Redirect::to(&url).into_response(),
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

/// `POST /saml/{name}/acs`.
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
    let (verified, flight) = shared
        .auth
        .saml_assertion(
            peer.ip(),
            &issuer,
            &form.saml_response,
            form.relay_state.as_deref(),
        )
        .await;
    let person = match verified {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(%peer, issuer = %name, error = %e, "SAML sign-in refused");
            super::extract::audit_failed_login(&shared, peer, &format!("saml:{name}"), &e);
            // `phigate login` waits on its loopback port: tell it, so it ends with the reason.
            if let Some(Flight {
                purpose: Purpose::Cli { port, state, .. },
                ..
            }) = flight
            {
                if let Ok(mut to) =
                    reqwest::Url::parse(&format!("http://127.0.0.1:{port}/callback"))
                {
                    to.query_pairs_mut()
                        .append_pair("error", "access_denied")
                        .append_pair("error_description", &e.to_string())
                        .append_pair("state", &state);
                    return Redirect::to(to.as_str()).into_response();
                }
            }
            return page(status_of(&e), &e.to_string());
        }
    };
    let flights = shared.auth.saml_flights();
    match flight {
        Some(Flight {
            purpose:
                Purpose::Cli {
                    port,
                    state,
                    challenge,
                },
            ..
        }) => {
            let code = random_token();
            if let Err(e) = flights.finish(&code_key(&code), person, Some(challenge), false) {
                return page(status_of(&e), &e.to_string());
            }
            Redirect::to(&format!(
                "http://127.0.0.1:{port}/callback?code={code}&state={state}"
            ))
            .into_response()
        }
        console => {
            if !shared.started.console.enabled {
                return page(StatusCode::NOT_FOUND, "The web console is off.");
            }
            // Collected by the browser at the console; a sign-in started there is bound to
            // that browser's sealed cookie (it names the RelayState).
            let (key, bound) = match &console {
                Some(_) => (form.relay_state.unwrap_or_default(), true),
                None => (random_token(), false),
            };
            if let Err(e) = flights.finish(&key, person, None, bound) {
                return page(status_of(&e), &e.to_string());
            }
            Redirect::to(&format!("/console/saml/finish?key={key}")).into_response()
        }
    }
}

/// 256 random bits, URL-safe.
fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// One-time codes are kept by their hash.
fn code_key(code: &str) -> String {
    hex::encode(sha2::Sha256::digest(code.as_bytes()))
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
    let refused = || ApiError::unauthorized("authentication failed: unknown, used or expired code");
    if form.code.len() > 128 || form.code_verifier.len() > 128 {
        return Err(refused());
    }
    let finished = shared
        .auth
        .saml_flights()
        .collect(&code_key(&form.code))
        .ok_or_else(refused)?;
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(form.code_verifier.as_bytes()));
    let matches = finished.challenge.as_deref().is_some_and(|c| {
        use subtle::ConstantTimeEq;
        c.len() == challenge.len() && bool::from(c.as_bytes().ct_eq(challenge.as_bytes()))
    });
    if !matches {
        return Err(refused());
    }
    let p = finished.person;
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
fn page(status: StatusCode, message: &str) -> Response {
    let body = html! {
        (maud::DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "phigate sign-in" } }
            body {
                h1 { "Sign-in" }
                p { (crate::text::display(message).to_string()) }
            }
        }
    };
    let mut res = (status, body).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}
