//! PostgreSQL frontend/backend protocol, version 3.0, as phigate needs it.
//!
//! Spec: <https://www.postgresql.org/docs/current/protocol-message-formats.html>
//!
//! This crate does no IO and makes no policy decisions. Frames travel through the gateway as raw
//! bytes ([`Frame`]); they are decoded into typed messages only when something needs to look
//! inside (a `Query` to analyse, an `ErrorResponse` to scrub). Decoding borrows from the frame, so
//! looking at a message allocates nothing.

pub mod backend;
pub mod frame;
pub mod frontend;
pub mod sqlstate;
pub mod startup;

mod cursor;

pub use frame::{Frame, FrameReader};

/// Errors in the bytes a peer sent. Every variant is safe to show to that peer: it names the
/// problem, never the content.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("message length {len} is invalid")]
    InvalidLength { len: i64 },
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("malformed {what} message: {why}")]
    Malformed {
        what: &'static str,
        why: &'static str,
    },
    #[error("unsupported protocol version {major}.{minor}")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("unexpected message type '{}'", char::from(*.0))]
    UnexpectedTag(u8),
}

impl WireError {
    pub(crate) fn malformed(what: &'static str, why: &'static str) -> Self {
        WireError::Malformed { what, why }
    }
}
