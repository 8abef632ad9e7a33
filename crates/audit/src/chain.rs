//! The hash chain's line format.
//!
//! A record is serialized to compact JSON `B` (`{"seq":..,"ts":..,"prev":..,"type":..,...}`);
//! its hash is `SHA-256(B)`, and the line written is `B` with `,"hash":"<hex>"` inserted before
//! the closing brace. `prev` inside `B` links each record to the one before, so changing,
//! removing or reordering any record breaks the chain at that point; signed checkpoints
//! ([`crate::checkpoint`]) pin the chain's head so the tail cannot be cut off unnoticed.

use sha2::{Digest, Sha256};

use crate::record::Record;

/// `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const HASH_SUFFIX_LEN: usize = r#","hash":""}"#.len() + 64;

/// Lower-case hex of `bytes` (what `hex::encode` gives, without building it a character at a
/// time: this runs for every record).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0xf)]);
    }
    // Only ASCII digits were pushed.
    String::from_utf8(out).unwrap_or_default()
}

/// Serializes `record` into a line (with its trailing newline); returns the record's hash.
pub fn encode(record: &Record, out: &mut Vec<u8>) -> Result<String, serde_json::Error> {
    let start = out.len();
    serde_json::to_writer(&mut *out, record)?;
    let hash = hex(&Sha256::digest(&out[start..]));
    out.pop(); // the closing brace
    out.extend_from_slice(br#","hash":""#);
    out.extend_from_slice(hash.as_bytes());
    out.extend_from_slice(b"\"}\n");
    Ok(hash)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LineError {
    #[error("not a complete record (no hash at the end)")]
    NoHash,
    #[error("the record does not match its hash (altered)")]
    HashMismatch,
    #[error("not a valid record: {0}")]
    Invalid(String),
}

/// Parses a line (without its newline), checking that it matches its own hash.
pub fn decode(line: &[u8]) -> Result<(Record, String), LineError> {
    if line.len() < HASH_SUFFIX_LEN + 2 || !line.ends_with(b"\"}") {
        return Err(LineError::NoHash);
    }
    let split = line.len() - HASH_SUFFIX_LEN;
    let (body, suffix) = line.split_at(split);
    let Some(hash) = suffix
        .strip_prefix(br#","hash":""#)
        .and_then(|h| h.strip_suffix(b"\"}"))
    else {
        return Err(LineError::NoHash);
    };
    let hash = std::str::from_utf8(hash).map_err(|_| LineError::NoHash)?;
    let mut canonical = Vec::with_capacity(body.len() + 1);
    canonical.extend_from_slice(body);
    canonical.push(b'}');
    if hex::encode(Sha256::digest(&canonical)) != hash {
        return Err(LineError::HashMismatch);
    }
    let record: Record =
        serde_json::from_slice(&canonical).map_err(|e| LineError::Invalid(e.to_string()))?;
    Ok((record, hash.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Event;

    #[test]
    fn hex_is_hex_encode() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(hex(&bytes), hex::encode(&bytes));
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn round_trip_and_tamper() {
        let r = Record {
            seq: 1,
            ts: "2026-01-01T00:00:00.000000Z".into(),
            prev: GENESIS.into(),
            event: Event::GatewayStop {
                reason: "test".into(),
            },
        };
        let mut out = Vec::new();
        let hash = encode(&r, &mut out).expect("encode");
        let line = &out[..out.len() - 1];
        assert_eq!(decode(line), Ok((r, hash)));
        let mut bad = line.to_vec();
        let pos = bad.iter().position(|b| *b == b't').expect("a t");
        bad[pos] = b'T';
        assert_eq!(decode(&bad).map(|_| ()), Err(LineError::HashMismatch));
        assert_eq!(decode(&line[..20]).map(|_| ()), Err(LineError::NoHash));
    }
}
