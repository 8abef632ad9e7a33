//! A bounds-checked reader over a message body. Every read returns an error instead of
//! panicking, because message bodies come from the network.

use crate::WireError;

pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Cursor { buf, what }
    }

    fn short(&self) -> WireError {
        WireError::malformed(self.what, "message ends early")
    }

    pub(crate) fn remaining(&self) -> &'a [u8] {
        self.buf
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn u8(&mut self) -> Result<u8, WireError> {
        let (&b, rest) = self.buf.split_first().ok_or_else(|| self.short())?;
        self.buf = rest;
        Ok(b)
    }

    pub(crate) fn i16(&mut self) -> Result<i16, WireError> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, WireError> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(self.short());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// A NUL-terminated string, which the protocol requires to be valid in the client encoding;
    /// phigate only accepts UTF-8 (the gateway pins `client_encoding` to UTF8).
    pub(crate) fn cstr(&mut self) -> Result<&'a str, WireError> {
        let end = memchr::memchr(0, self.buf)
            .ok_or_else(|| WireError::malformed(self.what, "string is not NUL-terminated"))?;
        let s = std::str::from_utf8(&self.buf[..end])
            .map_err(|_| WireError::malformed(self.what, "string is not valid UTF-8"))?;
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    /// An `Int32` length followed by that many bytes; -1 means NULL.
    pub(crate) fn value(&mut self) -> Result<Option<&'a [u8]>, WireError> {
        let len = self.i32()?;
        if len == -1 {
            return Ok(None);
        }
        let len = usize::try_from(len)
            .map_err(|_| WireError::malformed(self.what, "negative value length"))?;
        self.bytes(len).map(Some)
    }

    pub(crate) fn count(&mut self) -> Result<usize, WireError> {
        let n = self.i16()?;
        usize::try_from(n).map_err(|_| WireError::malformed(self.what, "negative count"))
    }

    pub(crate) fn finish(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::malformed(self.what, "trailing bytes"))
        }
    }
}
