//! Signing in to the console with an `[[auth.saml]]` identity provider.
//!
//! `begin` starts the AuthnRequest (its RelayState kept server-side,
//! [`crate::auth::saml::Flights`]) and seals the RelayState into this browser's sign-in cookie.
//! The IdP posts its response to `/saml/{name}/acs` (cross-site: the cookie does not come
//! along), which verifies it and sends the browser here, to `finish`, where the cookie must
//! name the same RelayState: a response obtained by someone else cannot sign this browser in.
//! An IdP-initiated sign-in (only where `allow_idp_initiated`) has no cookie to match and is
//! collected by its one-time key alone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

use super::pending::Pending;
use super::signin::{signed_in, Verified};
use super::{layout, Console};
use crate::auth::saml::Purpose;

/// Starts a SAML sign-in for this browser.
pub async fn begin(c: &Console, name: &str, peer: SocketAddr) -> Response {
    let Some(issuer) = c.shared.auth.saml_issuer(name) else {
        return layout::error(StatusCode::NOT_FOUND, "No such sign-in method.");
    };
    let (relay, url) = match c
        .shared
        .auth
        .saml_start(&issuer, Purpose::Console, peer.ip())
        .await
    {
        Ok(started) => started,
        Err(e) => return layout::error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let pending = Pending::new(name.to_owned(), relay, String::new(), String::new());
    let Some(sealed) = c.sealer.seal(&pending) else {
        return layout::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Cannot start a sign-in now.",
        );
    };
    let mut res = Redirect::to(&url).into_response();
    res.headers_mut()
        .insert(header::SET_COOKIE, c.signin_cookie(&sealed));
    res
}

#[derive(serde::Deserialize)]
pub struct Finish {
    key: String,
}

/// `GET /console/saml/finish?key=...`: collects the verified sign-in.
pub async fn finish(
    State(c): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    parts: axum::http::request::Parts,
    Query(q): Query<Finish>,
) -> Response {
    let cookie = c.signin_cookie_value(&parts).and_then(|v| c.sealer.open(v));
    let this_browser = cookie.as_ref().is_some_and(|p| {
        use subtle::ConstantTimeEq;
        p.state.len() == q.key.len() && bool::from(p.state.as_bytes().ct_eq(q.key.as_bytes()))
    });
    let Some(done) = c.shared.auth.saml_flights().collect(&q.key) else {
        return layout::error(
            StatusCode::BAD_REQUEST,
            "This sign-in is unknown, already used, or took too long. Start again.",
        );
    };
    if done.bound && !this_browser {
        c.audit_refused(
            peer,
            "a SAML sign-in was collected by a browser that did not start it",
            None,
        );
        return layout::error(
            StatusCode::BAD_REQUEST,
            "This sign-in was not started in this browser. Start again.",
        );
    }
    let p = done.person;
    let verified = Verified {
        subject: p.subject,
        groups: p.groups,
        issuer: p.issuer,
        expires_at: p.expires_at.max(SystemTime::now()),
    };
    signed_in(&c, verified, peer)
}
