//! What the relay observes on the database's answers beyond the protocol: the content
//! detectors of a masked session (the second net).

use phigate_wire::backend;

use crate::session::encoding::ClientEncoding;

/// The content detectors on a masked session's way out (`phigate_policy::detect`): text
/// values of rows, COPY text/CSV data, and error and notice fields, masked in place (lengths
/// never change, so no message is re-framed).
#[derive(Default)]
pub struct Detect {
    /// Per column of the current result: a text-like type. `None` before a RowDescription
    /// (an Execute of a statement described earlier): then values that look like text are
    /// scanned.
    text_cols: Option<Vec<bool>>,
    copy_binary: bool,
    /// The session's own subject: shown as is (an agent may see who it is).
    own: Vec<u8>,
    /// Text arrives in an encoding other than UTF-8 (ASCII-safe: the detectors' ASCII
    /// patterns read the same).
    not_utf8: bool,
}

/// Types whose values are text in both formats: text, varchar, bpchar, char, name, json,
/// jsonb (binary: a version byte, then text), xml, unknown. Arrays are not: their binary form
/// interleaves lengths with the elements, and the RowDescription of a described statement does
/// not say which format the rows will come in.
fn text_like(oid: u32) -> bool {
    matches!(oid, 25 | 1043 | 1042 | 18 | 19 | 114 | 3802 | 142 | 705)
}

impl Detect {
    /// Detectors for a masked session; `own` (the session's subject) is shown as is.
    pub fn new(own: &[u8], encoding: ClientEncoding) -> Detect {
        Detect {
            own: own.to_vec(),
            not_utf8: !encoding.is_utf8(),
            ..Detect::default()
        }
    }

    /// The session's client encoding changed.
    pub fn set_encoding(&mut self, encoding: ClientEncoding) {
        self.not_utf8 = !encoding.is_utf8();
    }

    /// Scans one whole message (header included) in place.
    pub fn scan(&mut self, msg: &mut [u8]) {
        if msg.len() < 5 {
            return;
        }
        let tag = msg[0];
        if tag == backend::tag::ROW_DESCRIPTION {
            let frame = phigate_wire::Frame::from_raw(bytes::Bytes::copy_from_slice(msg));
            self.text_cols = frame.ok().and_then(|f| {
                backend::decode_row_description(&f)
                    .ok()
                    .map(|cols| cols.iter().map(|c| text_like(c.type_oid)).collect())
            });
            return;
        }
        let body = &mut msg[5..];
        match tag {
            backend::tag::DATA_ROW => {
                if body.len() < 2 {
                    return;
                }
                let n = i16::from_be_bytes([body[0], body[1]]).max(0) as usize;
                let mut at = 2;
                for col in 0..n {
                    let Some(len) = body.get(at..at + 4) else {
                        return;
                    };
                    let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
                    at += 4;
                    if len <= 0 {
                        continue;
                    }
                    let end = at + len as usize;
                    let Some(value) = body.get_mut(at..end) else {
                        return;
                    };
                    let scan = match &self.text_cols {
                        Some(cols) => cols.get(col).copied().unwrap_or(false),
                        None => looks_like_text(value, self.not_utf8),
                    };
                    if scan {
                        phigate_policy::detect::scrub_except(value, &[&self.own]);
                    }
                    at = end;
                }
            }
            backend::tag::COPY_OUT_RESPONSE => self.copy_binary = body.first() == Some(&1),
            // CopyData out: text and CSV lines (binary COPY carries lengths: left alone).
            b'd' if !self.copy_binary => {
                phigate_policy::detect::scrub_except(body, &[&self.own]);
            }
            backend::tag::ERROR_RESPONSE | backend::tag::NOTICE_RESPONSE => {
                // Field type byte, then a NUL-terminated value: each value on its own.
                let mut at = 0;
                while at < body.len() && body[at] != 0 {
                    let start = at + 1;
                    let end = body[start..]
                        .iter()
                        .position(|b| *b == 0)
                        .map_or(body.len(), |p| start + p);
                    phigate_policy::detect::scrub_except(&mut body[start..end], &[&self.own]);
                    at = end + 1;
                }
                self.text_cols = None;
            }
            // A result ends: the next one brings its own description (or none, for an Execute
            // of a statement described earlier).
            backend::tag::READY_FOR_QUERY
            | backend::tag::COMMAND_COMPLETE
            | backend::tag::EMPTY_QUERY_RESPONSE => self.text_cols = None,
            _ => {}
        }
    }
}

/// A value of unknown type that is printable text in the client's encoding (binary
/// encodings of numbers, dates and the like carry control bytes or are too short to hold an
/// identifier).
fn looks_like_text(v: &[u8], not_utf8: bool) -> bool {
    // Eight and sixteen bytes: int8, float8, timestamps, uuids in binary.
    if v.len() == 8 || v.len() == 16 {
        return false;
    }
    v.iter()
        .all(|b| *b >= 0x20 || matches!(b, b'\t' | b'\n' | b'\r'))
        && (not_utf8 || std::str::from_utf8(v).is_ok())
}
