//! Signing in to the console with an `[[auth.saml]]` identity provider.
//!
//! `begin` starts the AuthnRequest and gives this browser the sign-in's ticket cookie
//! ([`crate::auth::saml_state`]). The IdP posts its response to `/saml/{name}/acs` (cross-site:
//! no cookie comes along), which verifies it and sends the browser here, to `finish`, with a
//! one-time key; the ticket must name the same RelayState, so a response obtained by someone
//! else cannot sign this browser in, nor can whoever started a sign-in collect someone else's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

use super::super::saml::{collect, page, ticket_cookie, Finish};
use super::signin::{signed_in, Verified};
use super::{layout, Console};
use crate::auth::saml_state::{Kind, Purpose};

/// Starts a SAML sign-in for this browser.
pub async fn begin(c: &Console, name: &str) -> Response {
    let Some(issuer) = c.shared.auth.saml_issuer(name) else {
        return layout::error(StatusCode::NOT_FOUND, "No such sign-in method.");
    };
    match c.shared.auth.saml_start(&issuer, Purpose::Console).await {
        Ok((started, url)) => {
            let mut res = Redirect::to(&url).into_response();
            res.headers_mut()
                .insert(header::SET_COOKIE, ticket_cookie(&issuer, &started.ticket));
            res
        }
        Err(e) => layout::error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// `GET /console/saml/finish?key=...`: collects the verified sign-in.
pub async fn finish(
    State(c): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<Finish>,
) -> Response {
    // The key names the outcome; the outcome names its issuer, whose cookie is checked.
    let issuers = c.shared.auth.saml_issuers();
    let Some(issuer) = issuers
        .iter()
        .find(|i| super::super::saml::ticket(&c.shared, i, &headers).is_some())
        .or(issuers.first())
    else {
        return layout::error(StatusCode::NOT_FOUND, "No SAML sign-in is configured.");
    };
    let (ticket, result) = match collect(&c.shared, issuer, &headers, peer, &q.key, Kind::Console) {
        Ok(v) => v,
        Err(res) => return *res,
    };
    let person = match result {
        Ok(p) if p.issuer == ticket.issuer => p,
        Ok(_) => {
            return page(
                StatusCode::BAD_REQUEST,
                "This sign-in does not match its start.",
            )
        }
        Err(reason) => return layout::error(StatusCode::UNAUTHORIZED, &reason),
    };
    let verified = Verified {
        subject: person.subject,
        groups: person.groups,
        issuer: person.issuer,
        expires_at: person.expires_at.max(SystemTime::now()),
    };
    let mut res = signed_in(&c, verified, peer);
    res.headers_mut()
        .append(header::SET_COOKIE, ticket_cookie(issuer, ""));
    res
}
