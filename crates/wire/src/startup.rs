//! The untagged packets a client sends before the regular message stream: StartupMessage,
//! SSLRequest, GSSENCRequest and CancelRequest. Each is an `Int32` length, an `Int32` code, then
//! the body.

use bytes::{BufMut, BytesMut};

use crate::cursor::Cursor;
use crate::WireError;

/// PostgreSQL refuses startup packets above this size (`MAX_STARTUP_PACKET_LENGTH`); so do we.
pub const MAX_STARTUP_PACKET: usize = 10_000;

const CODE_SSL: u32 = 80_877_103;
const CODE_GSSENC: u32 = 80_877_104;
const CODE_CANCEL: u32 = 80_877_102;

/// Key a server hands out in BackendKeyData; a CancelRequest must quote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CancelKey {
    pub pid: i32,
    pub secret: i32,
}

#[derive(Debug, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel(CancelKey),
    Startup(StartupMessage),
}

#[derive(Debug, PartialEq, Eq, Clone)]
pub struct StartupMessage {
    /// Minor protocol version the client asked for (major is always 3).
    pub minor: u16,
    /// Parameters in the order sent (`user`, `database`, `application_name`, ...).
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Takes one startup packet out of `buf` when it is complete.
pub fn parse_startup(buf: &mut BytesMut) -> Result<Option<StartupPacket>, WireError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 8 {
        return Err(WireError::InvalidLength { len: len.into() });
    }
    let len = len as usize;
    if len > MAX_STARTUP_PACKET {
        return Err(WireError::TooLarge {
            len,
            max: MAX_STARTUP_PACKET,
        });
    }
    if buf.len() < len {
        return Ok(None);
    }
    let packet = buf.split_to(len);
    let mut c = Cursor::new(&packet[4..], "startup");
    let code = c.u32()?;
    let parsed = match code {
        CODE_SSL => StartupPacket::SslRequest,
        CODE_GSSENC => StartupPacket::GssEncRequest,
        CODE_CANCEL => StartupPacket::Cancel(CancelKey {
            pid: c.i32()?,
            secret: c.i32()?,
        }),
        _ => {
            let (major, minor) = ((code >> 16) as u16, (code & 0xffff) as u16);
            if major != 3 {
                return Err(WireError::UnsupportedProtocol { major, minor });
            }
            let mut params = Vec::new();
            loop {
                let key = c.cstr()?;
                if key.is_empty() {
                    break;
                }
                let value = c.cstr()?;
                params.push((key.to_owned(), value.to_owned()));
            }
            StartupPacket::Startup(StartupMessage { minor, params })
        }
    };
    c.finish()?;
    Ok(Some(parsed))
}

/// A StartupMessage for protocol 3.0 with these parameters.
pub fn write_startup(out: &mut BytesMut, params: &[(&str, &str)]) {
    let start = out.len();
    out.put_i32(0);
    out.put_u32(3 << 16);
    for (k, v) in params {
        crate::frame::put_cstr(out, k);
        crate::frame::put_cstr(out, v);
    }
    out.put_u8(0);
    let len = (out.len() - start) as i32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

pub fn write_ssl_request(out: &mut BytesMut) {
    out.put_i32(8);
    out.put_u32(CODE_SSL);
}

pub fn write_cancel(out: &mut BytesMut, key: CancelKey) {
    out.put_i32(16);
    out.put_u32(CODE_CANCEL);
    out.put_i32(key.pid);
    out.put_i32(key.secret);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_round_trip() {
        let mut buf = BytesMut::new();
        write_startup(&mut buf, &[("user", "alice"), ("database", "clinic")]);
        let total = buf.len();
        buf.extend_from_slice(b"extra");
        let p = parse_startup(&mut buf).expect("ok").expect("packet");
        let StartupPacket::Startup(m) = p else {
            panic!("not a startup message: {p:?}")
        };
        assert_eq!(m.param("user"), Some("alice"));
        assert_eq!(m.param("database"), Some("clinic"));
        assert_eq!(&buf[..], b"extra", "only {total} bytes consumed");
    }

    #[test]
    fn ssl_and_cancel() {
        let mut buf = BytesMut::new();
        write_ssl_request(&mut buf);
        write_cancel(&mut buf, CancelKey { pid: 7, secret: -3 });
        assert_eq!(parse_startup(&mut buf), Ok(Some(StartupPacket::SslRequest)));
        assert_eq!(
            parse_startup(&mut buf),
            Ok(Some(StartupPacket::Cancel(CancelKey {
                pid: 7,
                secret: -3
            })))
        );
    }

    #[test]
    fn rejects_bad_packets() {
        let mut buf = BytesMut::from(&b"\0\0\0\x04"[..]);
        assert!(matches!(
            parse_startup(&mut buf),
            Err(WireError::InvalidLength { .. })
        ));
        let mut buf = BytesMut::from(&b"\x7f\0\0\0"[..]);
        assert!(matches!(
            parse_startup(&mut buf),
            Err(WireError::TooLarge { .. })
        ));
        let mut buf = BytesMut::from(&b"\0\0\0\x08\0\x02\0\0"[..]);
        assert_eq!(
            parse_startup(&mut buf),
            Err(WireError::UnsupportedProtocol { major: 2, minor: 0 })
        );
        // A parameter name without its terminating NUL.
        let mut buf = BytesMut::from(&b"\0\0\0\x0c\0\x03\0\0user"[..]);
        assert!(matches!(
            parse_startup(&mut buf),
            Err(WireError::Malformed { .. })
        ));
    }
}
