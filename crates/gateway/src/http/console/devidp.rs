//! The development issuer's sign-in page (`auth.development`, the demo): a minimal OpenID
//! provider for the console's own code flow, so `phigate demo` needs no external IdP.
//!
//! - `GET /dev/authorize`: lists the demo identities, one button each, showing the subject;
//! - `POST /dev/authorize`: issues a one-time code (60 s) for the chosen identity and sends
//!   the browser back to the console's callback, the only redirect URI it accepts;
//! - `POST /dev/token`: the code and its PKCE verifier in, an EdDSA ID token (signed by the
//!   gateway's key, `aud` = the console client) out.
//!
//! From this machine, anyone who can reach the page can sign in as any demo identity: that is
//! what the development issuer is (its tokens are printed by `phigate demo` anyway). From
//! elsewhere (`listen.http_tls` takes credentials from anywhere) the page also asks for the
//! *development sign-in code*, a random value of this process that the gateway writes to its
//! log at start: reaching the port is not enough to become a reviewer. At most [`MAX_CODES`]
//! codes wait at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, Json};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use maud::html;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::signin::DEV_CLIENT_ID;
use super::{layout, session, Console};

/// Codes issued and not yet redeemed, at most.
const MAX_CODES: usize = 64;
const CODE_TTL: Duration = Duration::from_secs(60);
const ID_TOKEN_TTL: Duration = Duration::from_secs(3600);

struct Code {
    subject: String,
    group: String,
    nonce: String,
    challenge: String,
    issued: Instant,
}

pub struct DevIdp {
    codes: Mutex<HashMap<String, Code>>,
    /// What a browser elsewhere than this machine must type (random per process).
    remote_code: String,
}

impl DevIdp {
    pub fn new() -> DevIdp {
        let mut b = [0u8; 12];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
        DevIdp {
            codes: Mutex::default(),
            remote_code: hex::encode(b),
        }
    }

    /// For the start-up log: the code browsers elsewhere need.
    pub fn remote_code(&self) -> &str {
        &self.remote_code
    }

    fn code_ok(&self, peer: std::net::SocketAddr, typed: Option<&str>) -> bool {
        use subtle::ConstantTimeEq;
        peer.ip().is_loopback()
            || typed.is_some_and(|t| {
                let t = t.trim();
                t.len() == self.remote_code.len()
                    && bool::from(t.as_bytes().ct_eq(self.remote_code.as_bytes()))
            })
    }
}

/// The authorization request, as the console sends it (and the form posts it back).
#[derive(serde::Deserialize)]
pub struct AuthRequest {
    response_type: String,
    client_id: String,
    redirect_uri: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    nonce: String,
    #[serde(default)]
    code_challenge: String,
    #[serde(default)]
    code_challenge_method: String,
    /// The identity chosen (the form only).
    subject: Option<String>,
    /// The development sign-in code (the form, from elsewhere than this machine).
    remote_code: Option<String>,
}

/// Why an authorization request is refused (shown as a page).
struct Refused(StatusCode, &'static str);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        layout::error(self.0, self.1)
    }
}

fn dev(c: &Console) -> Result<&DevIdp, Refused> {
    c.dev.as_ref().ok_or(Refused(
        StatusCode::NOT_FOUND,
        "The development issuer is off.",
    ))
}

/// Refuses anything but the console's own code + PKCE request: no other client, no other
/// redirect (no open redirect), no plain PKCE.
fn check(c: &Console, r: &AuthRequest) -> Result<(), Refused> {
    if r.client_id != DEV_CLIENT_ID || r.redirect_uri != c.redirect_uri() {
        return Err(Refused(
            StatusCode::BAD_REQUEST,
            "Unknown client or redirect URI: the development issuer serves the console only.",
        ));
    }
    if r.response_type != "code"
        || r.code_challenge_method != "S256"
        || r.code_challenge.len() < 43
        || r.state.is_empty()
        || r.nonce.is_empty()
    {
        return Err(Refused(
            StatusCode::BAD_REQUEST,
            "The request needs response_type=code, PKCE S256, a state and a nonce.",
        ));
    }
    Ok(())
}

/// `GET /dev/authorize`
pub async fn authorize_page(
    State(c): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Query(r): Query<AuthRequest>,
) -> Response {
    if let Err(e) = dev(&c).and_then(|_| check(&c, &r)) {
        return e.into_response();
    }
    let remote = !peer.ip().is_loopback();
    let body = html! {
        p { "The demo's development issuer vouches for these identities. Choose who to be:" }
        @if remote {
            p { "From another machine, the development sign-in code is needed too: the gateway \
                 writes it to its log when it starts." }
        }
        ul.signin-list {
            @for (_, subject, role, _) in crate::config::auth::DEVELOPMENT_IDENTITIES {
                li {
                    form method="post" action="/dev/authorize" {
                        input type="hidden" name="response_type" value=(r.response_type);
                        input type="hidden" name="client_id" value=(r.client_id);
                        input type="hidden" name="redirect_uri" value=(r.redirect_uri);
                        input type="hidden" name="state" value=(r.state);
                        input type="hidden" name="nonce" value=(r.nonce);
                        input type="hidden" name="code_challenge" value=(r.code_challenge);
                        input type="hidden" name="code_challenge_method" value=(r.code_challenge_method);
                        input type="hidden" name="subject" value=(subject);
                        @if remote {
                            label { "Development sign-in code "
                                input type="text" name="remote_code" autocomplete="off" required; }
                        }
                        button type="submit" { "Sign in as " (subject) }
                        " " span.muted { "(role " (role) ")" }
                    }
                }
            }
        }
    };
    layout::respond(
        StatusCode::OK,
        layout::page("Development sign-in", None, body),
    )
}

/// `POST /dev/authorize`: a code for the chosen identity, back to the console.
pub async fn authorize(
    State(c): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Form(r): Form<AuthRequest>,
) -> Response {
    let idp = match dev(&c) {
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = check(&c, &r) {
        return e.into_response();
    }
    if !idp.code_ok(peer, r.remote_code.as_deref()) {
        return layout::error(
            StatusCode::FORBIDDEN,
            "From another machine, the development sign-in code (in the gateway's log) is needed.",
        );
    }
    let chosen = r.subject.as_deref().and_then(|s| {
        crate::config::auth::DEVELOPMENT_IDENTITIES
            .iter()
            .find(|(_, subject, _, _)| *subject == s)
    });
    let Some((_, subject, _, group)) = chosen else {
        return layout::error(
            StatusCode::BAD_REQUEST,
            "Choose one of the demo identities.",
        );
    };
    let code = session::random_token();
    {
        let mut codes = idp.codes.lock().unwrap_or_else(|e| e.into_inner());
        codes.retain(|_, c| c.issued.elapsed() < CODE_TTL);
        if codes.len() >= MAX_CODES {
            return layout::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Too many sign-ins at once; try again in a minute.",
            );
        }
        codes.insert(
            code.clone(),
            Code {
                subject: (*subject).to_owned(),
                group: (*group).to_owned(),
                nonce: r.nonce.clone(),
                challenge: r.code_challenge.clone(),
                issued: Instant::now(),
            },
        );
    }
    let Ok(mut url) = reqwest::Url::parse(&r.redirect_uri) else {
        return layout::error(StatusCode::BAD_REQUEST, "Bad redirect URI.");
    };
    url.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &r.state);
    Redirect::to(url.as_str()).into_response()
}

#[derive(serde::Deserialize)]
pub struct TokenRequest {
    grant_type: String,
    code: String,
    redirect_uri: String,
    #[serde(default)]
    client_id: String,
    code_verifier: String,
}

fn token_error(what: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": "invalid_grant", "error_description": what})),
    )
        .into_response()
}

/// `POST /dev/token`: the code (once, within 60 s) and its PKCE verifier for an ID token.
pub async fn token(State(c): State<Arc<Console>>, Form(t): Form<TokenRequest>) -> Response {
    let idp = match dev(&c) {
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    let Some(code) = idp
        .codes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&t.code)
    else {
        return token_error("unknown or used code");
    };
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(t.code_verifier.as_bytes()));
    if t.grant_type != "authorization_code"
        || code.issued.elapsed() >= CODE_TTL
        || t.redirect_uri != c.redirect_uri()
        || t.client_id != DEV_CLIENT_ID
        || challenge != code.challenge
    {
        return token_error("the code does not match this request");
    }
    let Some(signer) = c.shared.auth.signer() else {
        return token_error("this gateway signs no tokens");
    };
    let groups = [code.group];
    let id_token = match signer.mint_id_token(
        &code.subject,
        &groups,
        DEV_CLIENT_ID,
        &code.nonce,
        ID_TOKEN_TTL,
    ) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot sign a development ID token");
            return token_error("cannot sign");
        }
    };
    Json(json!({
        "access_token": session::random_token(),
        "token_type": "Bearer",
        "expires_in": ID_TOKEN_TTL.as_secs(),
        "id_token": id_token,
    }))
    .into_response()
}

#[cfg(test)]
mod remote_code_tests {
    use super::*;

    #[test]
    fn a_browser_elsewhere_needs_the_development_sign_in_code() {
        let idp = DevIdp::new();
        let local: std::net::SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        let elsewhere: std::net::SocketAddr = "192.0.2.7:5000".parse().expect("addr");
        assert!(idp.code_ok(local, None));
        assert!(!idp.code_ok(elsewhere, None));
        assert!(!idp.code_ok(elsewhere, Some("")));
        assert!(!idp.code_ok(elsewhere, Some("0123456789abcdef01234567")));
        let code = idp.remote_code().to_owned();
        assert_eq!(code.len(), 24);
        assert!(idp.code_ok(elsewhere, Some(&format!(" {code} "))));
        assert_ne!(DevIdp::new().remote_code(), code, "random per process");
    }
}
