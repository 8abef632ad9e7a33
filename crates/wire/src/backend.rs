//! Backend (server → client) messages: decoding of the ones the gateway inspects, encoding of the
//! ones it originates (authentication requests, its own BackendKeyData, errors, notices).

use bytes::{BufMut, BytesMut};

use crate::cursor::Cursor;
use crate::frame::{put_cstr, write_message};
use crate::startup::CancelKey;
use crate::{Frame, WireError};

pub mod tag {
    pub const AUTHENTICATION: u8 = b'R';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const ROW_DESCRIPTION: u8 = b'T';
    pub const DATA_ROW: u8 = b'D';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
    pub const PORTAL_SUSPENDED: u8 = b's';
    pub const COPY_IN_RESPONSE: u8 = b'G';
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const BIND_COMPLETE: u8 = b'2';
    pub const CLOSE_COMPLETE: u8 = b'3';
    pub const NO_DATA: u8 = b'n';
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
}

/// Transaction status reported by ReadyForQuery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransactionStatus {
    Idle,
    InBlock,
    Failed,
}

impl TransactionStatus {
    pub fn byte(self) -> u8 {
        match self {
            TransactionStatus::Idle => b'I',
            TransactionStatus::InBlock => b'T',
            TransactionStatus::Failed => b'E',
        }
    }
}

pub fn decode_ready_for_query(frame: &Frame) -> Result<TransactionStatus, WireError> {
    match frame.body() {
        b"I" => Ok(TransactionStatus::Idle),
        b"T" => Ok(TransactionStatus::InBlock),
        b"E" => Ok(TransactionStatus::Failed),
        _ => Err(WireError::malformed(
            "ReadyForQuery",
            "unknown transaction status",
        )),
    }
}

/// An authentication request from the server (tag `R`).
#[derive(Debug, PartialEq, Eq)]
pub enum AuthRequest<'a> {
    Ok,
    Cleartext,
    Md5 {
        salt: [u8; 4],
    },
    Sasl {
        mechanisms: Vec<&'a str>,
    },
    SaslContinue(&'a [u8]),
    SaslFinal(&'a [u8]),
    /// Kerberos, SSPI, GSS, ...: methods the gateway does not speak upstream.
    Other(i32),
}

pub fn decode_auth(frame: &Frame) -> Result<AuthRequest<'_>, WireError> {
    let mut c = Cursor::new(frame.body(), "Authentication");
    Ok(match c.i32()? {
        0 => AuthRequest::Ok,
        3 => AuthRequest::Cleartext,
        5 => {
            let s = c.bytes(4)?;
            AuthRequest::Md5 {
                salt: [s[0], s[1], s[2], s[3]],
            }
        }
        10 => {
            let mut mechanisms = Vec::new();
            loop {
                let m = c.cstr()?;
                if m.is_empty() {
                    break;
                }
                mechanisms.push(m);
            }
            AuthRequest::Sasl { mechanisms }
        }
        11 => AuthRequest::SaslContinue(c.remaining()),
        12 => AuthRequest::SaslFinal(c.remaining()),
        other => AuthRequest::Other(other),
    })
}

pub fn decode_backend_key(frame: &Frame) -> Result<CancelKey, WireError> {
    let mut c = Cursor::new(frame.body(), "BackendKeyData");
    let key = CancelKey {
        pid: c.i32()?,
        secret: c.i32()?,
    };
    c.finish()?;
    Ok(key)
}

pub fn decode_parameter_status(frame: &Frame) -> Result<(&str, &str), WireError> {
    let mut c = Cursor::new(frame.body(), "ParameterStatus");
    let k = c.cstr()?;
    let v = c.cstr()?;
    c.finish()?;
    Ok((k, v))
}

/// The fields of an ErrorResponse or NoticeResponse, in order, as (field type, value).
/// Field types: <https://www.postgresql.org/docs/current/protocol-error-fields.html>.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Fields<'a>(pub Vec<(u8, &'a str)>);

impl<'a> Fields<'a> {
    pub fn decode(frame: &'a Frame) -> Result<Self, WireError> {
        let mut c = Cursor::new(frame.body(), "ErrorResponse");
        let mut fields = Vec::new();
        loop {
            let t = c.u8()?;
            if t == 0 {
                break;
            }
            fields.push((t, c.cstr()?));
        }
        c.finish()?;
        Ok(Fields(fields))
    }

    pub fn get(&self, field: u8) -> Option<&'a str> {
        self.0.iter().find(|(t, _)| *t == field).map(|(_, v)| *v)
    }

    pub fn code(&self) -> Option<&'a str> {
        self.get(b'C')
    }

    pub fn message(&self) -> Option<&'a str> {
        self.get(b'M')
    }

    pub fn severity(&self) -> Option<&'a str> {
        self.get(b'V').or_else(|| self.get(b'S'))
    }
}

/// An error or notice the gateway itself raises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice<'a> {
    pub severity: Severity,
    pub code: &'a str,
    pub message: &'a str,
    pub detail: Option<&'a str>,
    pub hint: Option<&'a str>,
    /// Cursor position in the statement text (1-based, characters).
    pub position: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
    Notice,
    Warning,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Notice => "NOTICE",
            Severity::Warning => "WARNING",
        }
    }
}

impl<'a> Notice<'a> {
    pub fn error(code: &'a str, message: &'a str) -> Self {
        Notice {
            severity: Severity::Error,
            code,
            message,
            detail: None,
            hint: None,
            position: None,
        }
    }

    pub fn note(code: &'a str, message: &'a str) -> Self {
        Notice {
            severity: Severity::Notice,
            ..Notice::error(code, message)
        }
    }

    pub fn fatal(code: &'a str, message: &'a str) -> Self {
        Notice {
            severity: Severity::Fatal,
            ..Notice::error(code, message)
        }
    }

    pub fn with_hint(self, hint: &'a str) -> Self {
        Notice {
            hint: Some(hint),
            ..self
        }
    }

    pub fn with_detail(self, detail: &'a str) -> Self {
        Notice {
            detail: Some(detail),
            ..self
        }
    }

    pub fn with_position(self, position: Option<usize>) -> Self {
        Notice { position, ..self }
    }

    /// Appends it as ErrorResponse (errors, fatals) or NoticeResponse (notices, warnings).
    pub fn write(&self, out: &mut BytesMut) {
        let tag = match self.severity {
            Severity::Error | Severity::Fatal => tag::ERROR_RESPONSE,
            Severity::Notice | Severity::Warning => tag::NOTICE_RESPONSE,
        };
        write_message(out, tag, |b| {
            let position = self.position.map(|p| p.to_string());
            for (t, v) in [
                (b'S', Some(self.severity.as_str())),
                (b'V', Some(self.severity.as_str())),
                (b'C', Some(self.code)),
                (b'M', Some(self.message)),
                (b'D', self.detail),
                (b'H', self.hint),
                (b'P', position.as_deref()),
            ] {
                if let Some(v) = v {
                    b.put_u8(t);
                    put_cstr(b, v);
                }
            }
            b.put_u8(0);
        });
    }
}

/// Re-encodes error or notice fields, e.g. after scrubbing some of them.
pub fn write_fields(out: &mut BytesMut, tag: u8, fields: &[(u8, &str)]) {
    write_message(out, tag, |b| {
        for (t, v) in fields {
            b.put_u8(*t);
            put_cstr(b, v);
        }
        b.put_u8(0);
    });
}

pub fn write_auth_ok(out: &mut BytesMut) {
    write_message(out, tag::AUTHENTICATION, |b| b.put_i32(0));
}

pub fn write_auth_cleartext(out: &mut BytesMut) {
    write_message(out, tag::AUTHENTICATION, |b| b.put_i32(3));
}

pub fn write_backend_key(out: &mut BytesMut, key: CancelKey) {
    write_message(out, tag::BACKEND_KEY_DATA, |b| {
        b.put_i32(key.pid);
        b.put_i32(key.secret);
    });
}

pub fn write_parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    write_message(out, tag::PARAMETER_STATUS, |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    });
}

pub fn write_ready_for_query(out: &mut BytesMut, status: TransactionStatus) {
    write_message(out, tag::READY_FOR_QUERY, |b| b.put_u8(status.byte()));
}

/// NegotiateProtocolVersion: the newest minor version we support and the `_pq_.` options we do
/// not recognise.
pub fn write_negotiate_protocol(out: &mut BytesMut, minor: u16, unrecognized: &[&str]) {
    write_message(out, tag::NEGOTIATE_PROTOCOL_VERSION, |b| {
        b.put_i32(i32::from(minor));
        b.put_i32(unrecognized.len() as i32);
        for o in unrecognized {
            put_cstr(b, o);
        }
    });
}

/// One column of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDescription<'a> {
    pub name: &'a str,
    pub table_oid: u32,
    pub column: i16,
    pub type_oid: u32,
    pub type_len: i16,
    pub type_mod: i32,
    pub format: i16,
}

pub fn decode_row_description(frame: &Frame) -> Result<Vec<FieldDescription<'_>>, WireError> {
    let mut c = Cursor::new(frame.body(), "RowDescription");
    let n = c.count()?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(FieldDescription {
            name: c.cstr()?,
            table_oid: c.u32()?,
            column: c.i16()?,
            type_oid: c.u32()?,
            type_len: c.i16()?,
            type_mod: c.i32()?,
            format: c.i16()?,
        });
    }
    c.finish()?;
    Ok(out)
}

/// Iterates the column values of a DataRow without copying them.
pub struct DataRow<'a> {
    cursor: Cursor<'a>,
    remaining: usize,
}

impl<'a> DataRow<'a> {
    pub fn decode(frame: &'a Frame) -> Result<Self, WireError> {
        let mut cursor = Cursor::new(frame.body(), "DataRow");
        let remaining = cursor.count()?;
        Ok(DataRow { cursor, remaining })
    }

    pub fn len(&self) -> usize {
        self.remaining
    }

    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }
}

impl<'a> Iterator for DataRow<'a> {
    type Item = Result<Option<&'a [u8]>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return if self.cursor.is_empty() {
                None
            } else {
                Some(Err(WireError::malformed("DataRow", "trailing bytes")))
            };
        }
        self.remaining -= 1;
        Some(self.cursor.value())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(out: BytesMut) -> Frame {
        Frame::from_raw(out.freeze()).expect("valid frame")
    }

    #[test]
    fn a_nul_in_a_message_cannot_forge_fields() {
        let mut out = BytesMut::new();
        Notice::error("42501", "denied: no\0C00000\0Mforged").write(&mut out);
        let f = frame(out);
        let fields = Fields::decode(&f).expect("fields");
        assert_eq!(fields.code(), Some("42501"));
        assert_eq!(
            fields.message(),
            Some("denied: no\u{FFFD}C00000\u{FFFD}Mforged")
        );
    }

    #[test]
    fn notice_round_trips_through_fields() {
        let mut out = BytesMut::new();
        Notice::error("42501", "denied")
            .with_hint("ask")
            .write(&mut out);
        let f = frame(out);
        assert_eq!(f.tag(), b'E');
        let fields = Fields::decode(&f).expect("fields");
        assert_eq!(fields.code(), Some("42501"));
        assert_eq!(fields.message(), Some("denied"));
        assert_eq!(fields.get(b'H'), Some("ask"));
        assert_eq!(fields.severity(), Some("ERROR"));
    }

    #[test]
    fn data_row_iterates_values_and_nulls() {
        let mut out = BytesMut::new();
        write_message(&mut out, b'D', |b| {
            b.put_i16(2);
            b.put_i32(3);
            b.extend_from_slice(b"abc");
            b.put_i32(-1);
        });
        let f = frame(out);
        let row: Vec<_> = DataRow::decode(&f)
            .expect("row")
            .collect::<Result<_, _>>()
            .expect("ok");
        assert_eq!(row, vec![Some(&b"abc"[..]), None]);
    }

    #[test]
    fn auth_requests_decode() {
        let mut out = BytesMut::new();
        write_message(&mut out, b'R', |b| {
            b.put_i32(10);
            put_cstr(b, "SCRAM-SHA-256-PLUS");
            put_cstr(b, "SCRAM-SHA-256");
            b.put_u8(0);
        });
        let f = frame(out);
        assert_eq!(
            decode_auth(&f),
            Ok(AuthRequest::Sasl {
                mechanisms: vec!["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
            })
        );
    }
}
