//! Framing of the regular (post-startup) message stream: a one-byte type tag, an `Int32` length
//! that counts itself, then the body.
//!
//! [`FrameReader`] owns the one read buffer of a connection direction. The caller reads from the
//! socket straight into [`FrameReader::buf_mut`] (`read_buf` is cancel-safe), then takes whole
//! frames out with [`FrameReader::next_frame`]. A frame is a cheap reference-counted slice of the
//! buffer: splitting one off copies nothing.

use bytes::{Bytes, BytesMut};

use crate::WireError;

/// Header size: tag byte plus length word.
pub const HEADER_LEN: usize = 5;

/// One complete protocol message, header included, exactly as it arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    raw: Bytes,
}

impl Frame {
    /// Wraps bytes already known to hold one whole message (header included).
    pub fn from_raw(raw: Bytes) -> Result<Self, WireError> {
        if raw.len() < HEADER_LEN {
            return Err(WireError::InvalidLength {
                len: raw.len() as i64,
            });
        }
        let declared = i32::from_be_bytes([raw[1], raw[2], raw[3], raw[4]]) as i64;
        if declared + 1 != raw.len() as i64 {
            return Err(WireError::InvalidLength { len: declared });
        }
        Ok(Frame { raw })
    }

    /// The message type byte, e.g. `b'Q'`.
    pub fn tag(&self) -> u8 {
        self.raw[0]
    }

    /// The message body, after the length word.
    pub fn body(&self) -> &[u8] {
        &self.raw[HEADER_LEN..]
    }

    /// The whole message as it goes on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    pub fn into_bytes(self) -> Bytes {
        self.raw
    }

    pub fn len(&self) -> usize {
        self.raw.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// The read side of one direction of a connection.
#[derive(Debug)]
pub struct FrameReader {
    buf: BytesMut,
    max_message: usize,
}

impl FrameReader {
    /// `max_message` caps the size of one message (header included). A peer that announces a
    /// bigger message gets [`WireError::TooLarge`] before the gateway buffers any of it.
    pub fn new(max_message: usize) -> Self {
        FrameReader {
            buf: BytesMut::with_capacity(16 * 1024),
            max_message,
        }
    }

    /// Starts from bytes already read (e.g. left over after the startup packet).
    pub fn with_buffer(buf: BytesMut, max_message: usize) -> Self {
        FrameReader { buf, max_message }
    }

    /// The buffer to read into. Keeps at least 8 KiB of spare room so a read is never tiny.
    pub fn buf_mut(&mut self) -> &mut BytesMut {
        if self.buf.capacity() - self.buf.len() < 8 * 1024 {
            self.buf.reserve(16 * 1024);
        }
        &mut self.buf
    }

    /// Bytes received but not yet taken as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub fn max_message(&self) -> usize {
        self.max_message
    }

    /// Takes the next complete frame out of the buffer, if one is there.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let declared = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        if declared < 4 {
            return Err(WireError::InvalidLength {
                len: declared.into(),
            });
        }
        // `declared` counts itself but not the tag.
        let total = declared as usize + 1;
        if total > self.max_message {
            return Err(WireError::TooLarge {
                len: total,
                max: self.max_message,
            });
        }
        if self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        Ok(Some(Frame {
            raw: self.buf.split_to(total).freeze(),
        }))
    }

    /// Hands back what is buffered, e.g. to switch a connection to TLS (which must not have any).
    pub fn into_buffer(self) -> BytesMut {
        self.buf
    }
}

/// Appends a message with `tag` whose body `write_body` produces, filling in the length word.
pub fn write_message(out: &mut BytesMut, tag: u8, write_body: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.extend_from_slice(&[tag, 0, 0, 0, 0]);
    write_body(out);
    let len = (out.len() - start - 1) as i32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

/// Appends a NUL-terminated string. A NUL inside `s` would end the string early and let the
/// rest be read as further fields (a reviewer's reason forging an ErrorResponse's fields), so
/// each one is written as U+FFFD instead: the encoder never writes a NUL inside a C string.
pub fn put_cstr(out: &mut BytesMut, s: &str) {
    let mut rest = s.as_bytes();
    while let Some(at) = rest.iter().position(|&b| b == 0) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice("\u{FFFD}".as_bytes());
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
    out.extend_from_slice(&[0]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_cstr_never_writes_a_nul_inside_the_string() {
        let mut out = BytesMut::new();
        put_cstr(&mut out, "denied\0Cforged\0\0");
        assert_eq!(
            &out[..],
            "denied\u{FFFD}Cforged\u{FFFD}\u{FFFD}\0".as_bytes()
        );
        let mut out = BytesMut::new();
        put_cstr(&mut out, "plain");
        assert_eq!(&out[..], b"plain\0");
    }

    fn reader(bytes: &[u8], max: usize) -> FrameReader {
        let mut r = FrameReader::new(max);
        r.buf_mut().extend_from_slice(bytes);
        r
    }

    #[test]
    fn splits_frames_and_waits_for_partial_ones() {
        let mut r = reader(b"Q\0\0\0\x0dselect 1\0S\0\0\0\x04Z\0\0", 1024);
        let q = r.next_frame().expect("ok").expect("frame");
        assert_eq!(q.tag(), b'Q');
        assert_eq!(q.body(), b"select 1\0");
        let s = r.next_frame().expect("ok").expect("frame");
        assert_eq!((s.tag(), s.body()), (b'S', &b""[..]));
        assert_eq!(r.next_frame(), Ok(None), "partial header must wait");
        r.buf_mut().extend_from_slice(b"\0\x05I");
        assert_eq!(r.next_frame().expect("ok").expect("frame").body(), b"I");
    }

    #[test]
    fn rejects_lengths_below_four_and_above_the_cap() {
        let mut r = reader(b"Q\0\0\0\x03", 1024);
        assert_eq!(r.next_frame(), Err(WireError::InvalidLength { len: 3 }));
        let mut r = reader(b"Q\xff\xff\xff\xff", 1024);
        assert_eq!(r.next_frame(), Err(WireError::InvalidLength { len: -1 }));
        let mut r = reader(b"Q\0\x10\0\0", 1024);
        assert_eq!(
            r.next_frame(),
            Err(WireError::TooLarge {
                len: 0x100001,
                max: 1024
            })
        );
    }

    #[test]
    fn write_message_fills_length() {
        let mut out = BytesMut::new();
        write_message(&mut out, b'Z', |b| b.extend_from_slice(b"I"));
        assert_eq!(&out[..], b"Z\0\0\0\x05I");
    }
}
