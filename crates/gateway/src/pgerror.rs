//! What a PostgreSQL client may see of the gateway's own errors.
//!
//! Every error the gateway itself reports to a client is a [`ClientError`]: a SQLSTATE (a
//! named constant of [`phigate_wire::sqlstate`]), a message that starts with `phigate:`, and a
//! hint. The error types of the session say what of themselves a client may see through
//! [`ToClient`] — never upstream internals, a secret or client data — and [`ClientError::encode`]
//! is the one place their wire bytes are made.

use std::borrow::Cow;

use bytes::BytesMut;
use phigate_wire::backend::Notice;

/// How bad it is: an ERROR leaves the session usable, a FATAL ends it, a NOTICE informs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
    Notice,
}

/// An error (or notice) of the gateway's own, as the client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    pub severity: Severity,
    pub code: Cow<'static, str>,
    pub message: String,
    pub hint: Option<String>,
}

impl ClientError {
    pub fn fatal(code: &'static str, message: impl Into<String>) -> ClientError {
        ClientError {
            severity: Severity::Fatal,
            code: Cow::Borrowed(code),
            message: message.into(),
            hint: None,
        }
    }

    pub fn notice(code: &'static str, message: impl Into<String>) -> ClientError {
        ClientError {
            severity: Severity::Notice,
            code: Cow::Borrowed(code),
            message: message.into(),
            hint: None,
        }
    }

    /// A FATAL whose SQLSTATE the database chose (a startup refusal the client can act on).
    pub fn fatal_as(code: String, message: impl Into<String>) -> ClientError {
        ClientError {
            severity: Severity::Fatal,
            code: Cow::Owned(code),
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> ClientError {
        self.hint = Some(hint.into());
        self
    }

    /// The ErrorResponse (or NoticeResponse) the client receives.
    pub fn encode(&self, out: &mut BytesMut) {
        let n = match self.severity {
            Severity::Error => Notice::error(&self.code, &self.message),
            Severity::Fatal => Notice::fatal(&self.code, &self.message),
            Severity::Notice => Notice::note(&self.code, &self.message),
        };
        match &self.hint {
            Some(h) => n.with_hint(h).write(out),
            None => n.write(out),
        }
    }

    pub fn to_bytes(&self) -> BytesMut {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out
    }
}

/// What of an error a client may see: `None` when the connection can no longer carry anything
/// (it is gone) or the client must learn nothing.
pub trait ToClient {
    fn to_client(&self) -> Option<ClientError>;
}
