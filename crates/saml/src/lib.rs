//! SAML 2.0 Web Browser SSO for a service provider: the identity provider's metadata, the
//! service provider's own metadata, AuthnRequests over HTTP-Redirect, and responses over
//! HTTP-POST verified and read.
//!
//! Written for one job, conservatively, because SAML libraries fail where what is verified
//! and what is consumed come apart (XML signature wrapping, comment truncation of NameID,
//! signatures over a different element than the one read):
//!
//! - the XML is parsed once, by `roxmltree` (no DTD, no entities, no comments, no processing
//!   instructions, bounded size, depth and namespaces) — no C XML library;
//! - the response's shape is fixed before any signature is looked at (one assertion, as the
//!   response's direct child; signatures only directly on the response or that assertion);
//! - each signature is verified over the element that holds it, by exclusive C14N implemented
//!   here over the same tree, with only the IdP's metadata certificates (RSA, SHA-2);
//! - identity is read from that same node.
//!
//! Replay (an assertion ID seen before) and request bookkeeping (which AuthnRequest IDs are
//! outstanding) are the caller's: it holds the state.

mod c14n;
mod dsig;
mod metadata;
mod request;
mod response;
mod xml;

pub use dsig::SignatureAlgorithm;
pub use metadata::{IdentityProvider, ServiceProvider};
pub use request::{authn_request, AuthnRequest};
pub use response::{read_response, Assertion, Expect, MAX_RESPONSE_BYTES};

/// Why a message or metadata was refused. Messages name the rule broken, never content from
/// the message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("malformed SAML message: {0}")]
    Malformed(String),
    #[error("signature refused: {0}")]
    Signature(String),
    #[error("{0}")]
    Refused(String),
    #[error("not supported: {0}")]
    Unsupported(String),
    #[error("identity provider metadata refused: {0}")]
    Metadata(String),
}
