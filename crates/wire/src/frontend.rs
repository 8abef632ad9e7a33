//! Typed messages a client sends after startup. [`FrontendMessage::decode`] borrows from the
//! frame; nothing is copied.

use crate::cursor::Cursor;
use crate::{Frame, WireError};

/// Which kind of object a Describe or Close names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Statement,
    Portal,
}

#[derive(Debug, PartialEq, Eq)]
pub enum FrontendMessage<'a> {
    Query {
        sql: &'a str,
    },
    Parse(Parse<'a>),
    Bind(Bind<'a>),
    Execute {
        portal: &'a str,
        max_rows: i32,
    },
    Describe {
        target: Target,
        name: &'a str,
    },
    Close {
        target: Target,
        name: &'a str,
    },
    Sync,
    Flush,
    Terminate,
    CopyData(&'a [u8]),
    CopyDone,
    CopyFail {
        message: &'a str,
    },
    /// The legacy fast-path function call. Only the function OID is decoded.
    FunctionCall {
        function: u32,
    },
    /// PasswordMessage, SASLInitialResponse and SASLResponse share the tag `p`; which one it is
    /// depends on the authentication exchange in progress.
    Password(&'a [u8]),
}

#[derive(Debug, PartialEq, Eq)]
pub struct Parse<'a> {
    pub name: &'a str,
    pub sql: &'a str,
    /// Parameter type OIDs, still encoded (4 bytes each); see [`Parse::param_types`].
    param_types: &'a [u8],
}

impl Parse<'_> {
    pub fn param_types(&self) -> impl Iterator<Item = u32> + '_ {
        self.param_types
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }
}

/// Bind as it travels: the names are decoded eagerly (the relay routes by them); parameters are
/// decoded on demand with [`Bind::details`], because most binds are forwarded without a look.
#[derive(Debug, PartialEq, Eq)]
pub struct Bind<'a> {
    pub portal: &'a str,
    pub statement: &'a str,
    rest: &'a [u8],
}

impl<'a> Bind<'a> {
    /// Everything after the two names (formats, values, result formats), still encoded.
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }

    /// Decodes formats and parameter values, checking the whole message structure.
    pub fn details(&self) -> Result<BindDetails<'a>, WireError> {
        let mut c = Cursor::new(self.rest, "Bind");
        let n = c.count()?;
        let param_formats = (0..n).map(|_| c.i16()).collect::<Result<_, _>>()?;
        let n = c.count()?;
        let params = (0..n).map(|_| c.value()).collect::<Result<_, _>>()?;
        let n = c.count()?;
        let result_formats = (0..n).map(|_| c.i16()).collect::<Result<_, _>>()?;
        c.finish()?;
        Ok(BindDetails {
            param_formats,
            params,
            result_formats,
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct BindDetails<'a> {
    /// Format codes for the parameters: empty (all text), one (applies to all), or one each.
    pub param_formats: Vec<i16>,
    pub params: Vec<Option<&'a [u8]>>,
    pub result_formats: Vec<i16>,
}

impl BindDetails<'_> {
    /// Whether parameter `i` is sent in binary.
    pub fn param_is_binary(&self, i: usize) -> bool {
        match self.param_formats.as_slice() {
            [] => false,
            [one] => *one == 1,
            many => many.get(i).copied() == Some(1),
        }
    }
}

fn target(b: u8, what: &'static str) -> Result<Target, WireError> {
    match b {
        b'S' => Ok(Target::Statement),
        b'P' => Ok(Target::Portal),
        _ => Err(WireError::malformed(what, "target must be 'S' or 'P'")),
    }
}

impl<'a> FrontendMessage<'a> {
    pub fn decode(frame: &'a Frame) -> Result<Self, WireError> {
        let body = frame.body();
        let msg = match frame.tag() {
            b'Q' => {
                let mut c = Cursor::new(body, "Query");
                let sql = c.cstr()?;
                c.finish()?;
                FrontendMessage::Query { sql }
            }
            b'P' => {
                let mut c = Cursor::new(body, "Parse");
                let name = c.cstr()?;
                let sql = c.cstr()?;
                let n = c.count()?;
                let param_types = c.bytes(n * 4)?;
                c.finish()?;
                FrontendMessage::Parse(Parse {
                    name,
                    sql,
                    param_types,
                })
            }
            b'B' => {
                let mut c = Cursor::new(body, "Bind");
                let portal = c.cstr()?;
                let statement = c.cstr()?;
                FrontendMessage::Bind(Bind {
                    portal,
                    statement,
                    rest: c.remaining(),
                })
            }
            b'E' => {
                let mut c = Cursor::new(body, "Execute");
                let portal = c.cstr()?;
                let max_rows = c.i32()?;
                c.finish()?;
                FrontendMessage::Execute { portal, max_rows }
            }
            b'D' | b'C' => {
                let what = if frame.tag() == b'D' {
                    "Describe"
                } else {
                    "Close"
                };
                let mut c = Cursor::new(body, what);
                let t = target(c.u8()?, what)?;
                let name = c.cstr()?;
                c.finish()?;
                if frame.tag() == b'D' {
                    FrontendMessage::Describe { target: t, name }
                } else {
                    FrontendMessage::Close { target: t, name }
                }
            }
            b'S' => empty(body, "Sync", FrontendMessage::Sync)?,
            b'H' => empty(body, "Flush", FrontendMessage::Flush)?,
            b'X' => empty(body, "Terminate", FrontendMessage::Terminate)?,
            b'c' => empty(body, "CopyDone", FrontendMessage::CopyDone)?,
            b'd' => FrontendMessage::CopyData(body),
            b'f' => {
                let mut c = Cursor::new(body, "CopyFail");
                let message = c.cstr()?;
                c.finish()?;
                FrontendMessage::CopyFail { message }
            }
            b'F' => {
                let mut c = Cursor::new(body, "FunctionCall");
                FrontendMessage::FunctionCall { function: c.u32()? }
            }
            b'p' => FrontendMessage::Password(body),
            other => return Err(WireError::UnexpectedTag(other)),
        };
        Ok(msg)
    }
}

fn empty<'a>(
    body: &[u8],
    what: &'static str,
    msg: FrontendMessage<'a>,
) -> Result<FrontendMessage<'a>, WireError> {
    if body.is_empty() {
        Ok(msg)
    } else {
        Err(WireError::malformed(what, "body must be empty"))
    }
}

/// Encoders for the frontend messages the gateway itself originates towards the server.
pub mod write {
    use bytes::{BufMut, BytesMut};

    use crate::frame::{put_cstr, write_message};

    pub fn query(out: &mut BytesMut, sql: &str) {
        write_message(out, b'Q', |b| put_cstr(b, sql));
    }

    /// CopyData: `data` for a `COPY ... FROM STDIN` the gateway itself runs.
    pub fn copy_data(out: &mut BytesMut, data: &[u8]) {
        write_message(out, b'd', |b| b.extend_from_slice(data));
    }

    pub fn copy_done(out: &mut BytesMut) {
        write_message(out, b'c', |_| {});
    }

    /// CopyFail: the COPY ends with this message as its error.
    pub fn copy_fail(out: &mut BytesMut, message: &str) {
        write_message(out, b'f', |b| put_cstr(b, message));
    }

    pub fn password(out: &mut BytesMut, password: &str) {
        write_message(out, b'p', |b| put_cstr(b, password));
    }

    pub fn sasl_initial(out: &mut BytesMut, mechanism: &str, data: &[u8]) {
        write_message(out, b'p', |b| {
            put_cstr(b, mechanism);
            b.put_i32(data.len() as i32);
            b.extend_from_slice(data);
        });
    }

    pub fn sasl_response(out: &mut BytesMut, data: &[u8]) {
        write_message(out, b'p', |b| b.extend_from_slice(data));
    }

    pub fn parse(out: &mut BytesMut, name: &str, sql: &str) {
        write_message(out, b'P', |b| {
            put_cstr(b, name);
            put_cstr(b, sql);
            b.put_i16(0);
        });
    }

    /// A Bind naming `statement`, with the rest of an original Bind copied unchanged.
    pub fn bind(out: &mut BytesMut, portal: &str, statement: &str, rest: &[u8]) {
        write_message(out, b'B', |b| {
            put_cstr(b, portal);
            put_cstr(b, statement);
            b.extend_from_slice(rest);
        });
    }

    pub fn describe_statement(out: &mut BytesMut, name: &str) {
        write_message(out, b'D', |b| {
            b.put_u8(b'S');
            put_cstr(b, name);
        });
    }

    pub fn close_statement(out: &mut BytesMut, name: &str) {
        write_message(out, b'C', |b| {
            b.put_u8(b'S');
            put_cstr(b, name);
        });
    }

    pub fn execute(out: &mut BytesMut, portal: &str, max_rows: i32) {
        write_message(out, b'E', |b| {
            put_cstr(b, portal);
            b.put_i32(max_rows);
        });
    }

    pub fn terminate(out: &mut BytesMut) {
        write_message(out, b'X', |_| {});
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{put_cstr, write_message};
    use bytes::{BufMut, BytesMut};

    fn frame(tag: u8, body: impl FnOnce(&mut BytesMut)) -> Frame {
        let mut out = BytesMut::new();
        write_message(&mut out, tag, body);
        Frame::from_raw(out.freeze()).expect("valid frame")
    }

    #[test]
    fn decodes_extended_protocol_messages() {
        let f = frame(b'P', |b| {
            put_cstr(b, "s1");
            put_cstr(b, "select $1");
            b.put_i16(1);
            b.put_u32(23);
        });
        let FrontendMessage::Parse(parse) = FrontendMessage::decode(&f).expect("parse") else {
            panic!("not a parse")
        };
        assert_eq!((parse.name, parse.sql), ("s1", "select $1"));
        assert_eq!(parse.param_types().collect::<Vec<_>>(), vec![23]);
        let f = frame(b'B', |b| {
            put_cstr(b, "");
            put_cstr(b, "s1");
            b.put_i16(1);
            b.put_i16(1);
            b.put_i16(2);
            b.put_i32(4);
            b.put_i32(42);
            b.put_i32(-1);
            b.put_i16(0);
        });
        let FrontendMessage::Bind(bind) = FrontendMessage::decode(&f).expect("bind") else {
            panic!("not a bind")
        };
        assert_eq!(bind.statement, "s1");
        let bind = bind.details().expect("details");
        assert_eq!(bind.params, vec![Some(&42i32.to_be_bytes()[..]), None]);
        assert!(bind.param_is_binary(0) && bind.param_is_binary(1));
    }

    #[test]
    fn rejects_truncated_and_unknown_messages() {
        let f = frame(b'B', |b| {
            put_cstr(b, "");
            put_cstr(b, "s1");
            b.put_i16(0);
            b.put_i16(1);
            b.put_i32(400); // claims 400 bytes, has none
        });
        let FrontendMessage::Bind(bind) = FrontendMessage::decode(&f).expect("names decode") else {
            panic!("not a bind")
        };
        assert!(matches!(bind.details(), Err(WireError::Malformed { .. })));
        let f = frame(b'Q', |b| b.extend_from_slice(b"select 1")); // no NUL
        assert!(matches!(
            FrontendMessage::decode(&f),
            Err(WireError::Malformed { .. })
        ));
        let f = frame(b'Z', |_| {});
        assert_eq!(
            FrontendMessage::decode(&f),
            Err(WireError::UnexpectedTag(b'Z'))
        );
        let f = frame(b'S', |b| b.put_u8(1));
        assert!(matches!(
            FrontendMessage::decode(&f),
            Err(WireError::Malformed { .. })
        ));
    }
}
