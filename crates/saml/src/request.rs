//! AuthnRequests, sent with the HTTP-Redirect binding (SAML bindings §3.4): the XML is raw
//! DEFLATE-compressed, base64-encoded and put in the `SAMLRequest` query parameter, beside an
//! opaque `RelayState`. Requests are not signed; the response is checked against the request's
//! ID, which the caller keeps.

use std::io::Write;
use std::time::SystemTime;

use base64::Engine;

use crate::metadata::{escape, IdentityProvider, ServiceProvider, POST_BINDING};
use crate::xml::{ASSERTION, PROTOCOL};

/// An AuthnRequest ready to send.
#[derive(Debug, Clone)]
pub struct AuthnRequest {
    /// Its `ID`: the `InResponseTo` the response must carry.
    pub id: String,
    /// The IdP's SSO URL with `SAMLRequest` and `RelayState`.
    pub redirect_url: String,
}

/// Builds AuthnRequest `id` (an xs:ID: it must not start with a digit) from `sp` to `idp`, to
/// come back with `relay_state`.
pub fn authn_request(
    idp: &IdentityProvider,
    sp: &ServiceProvider,
    id: &str,
    relay_state: &str,
    now: SystemTime,
) -> AuthnRequest {
    let xml = format!(
        "<samlp:AuthnRequest xmlns:samlp=\"{PROTOCOL}\" xmlns:saml=\"{ASSERTION}\" ID=\"{id}\" \
         Version=\"2.0\" IssueInstant=\"{}\" Destination=\"{}\" \
         AssertionConsumerServiceURL=\"{}\" ProtocolBinding=\"{POST_BINDING}\">\
         <saml:Issuer>{}</saml:Issuer>\
         <samlp:NameIDPolicy AllowCreate=\"true\"/>\
         </samlp:AuthnRequest>",
        humantime::format_rfc3339_seconds(now),
        escape(&idp.sso_url),
        escape(&sp.acs_url),
        escape(&sp.entity_id),
        id = escape(id),
    );
    let mut deflate = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing to a Vec cannot fail.
    let compressed = deflate
        .write_all(xml.as_bytes())
        .and_then(|()| deflate.finish())
        .unwrap_or_default();
    let encoded = base64::engine::general_purpose::STANDARD.encode(compressed);
    let sep = if idp.sso_url.contains('?') { '&' } else { '?' };
    let redirect_url = format!(
        "{}{sep}SAMLRequest={}&RelayState={}",
        idp.sso_url,
        percent(&encoded),
        percent(relay_state)
    );
    AuthnRequest {
        id: id.to_owned(),
        redirect_url,
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
