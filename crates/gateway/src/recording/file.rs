//! The recording file (docs/recording.md): JSON lines in gzip members, one member per chunk
//! the writer received, so a file cut short by a crash still reads up to its last whole chunk.
//!
//! Recordings of roles that see unmasked PHI are encrypted: the gzip bytes go in frames sealed
//! with AES-256-GCM under a key derived (HKDF-SHA256) from the recording key and a random
//! per-file salt, so nonces (the frame number) never repeat under one key. Each frame's
//! additional data binds the file header, the frame number and whether it is the last, so
//! frames cannot be dropped, reordered, moved between files, or the tail cut off unnoticed.
//!
//! ```text
//! header  "PHIGATE-REC1\n" | salt (32) | key id (8: SHA-256 of the key, first bytes)
//! frame   length (u32 BE, of the sealed bytes) | last (u8: 0 or 1) | sealed bytes (+16 tag)
//! ```

use std::io::{Read, Write};
use std::path::Path;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::hkdf;
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 13] = b"PHIGATE-REC1\n";
const SALT_LEN: usize = 32;
const KEY_ID_LEN: usize = 8;
pub const HEADER_LEN: usize = MAGIC.len() + SALT_LEN + KEY_ID_LEN;
/// A frame larger than this is not one the writer made.
const MAX_FRAME: usize = 64 << 20;

/// The recording key (32 bytes).
pub struct Key {
    bytes: [u8; 32],
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({})", hex::encode(self.id()))
    }
}

impl Key {
    /// 32 raw bytes, or 64 hex digits (surrounding whitespace ignored).
    pub fn parse(raw: &[u8]) -> Result<Key, String> {
        let text = std::str::from_utf8(raw).map(str::trim).ok();
        let bytes = match text {
            Some(t) if t.len() == 64 => hex::decode(t).map_err(|_| "not 64 hex digits")?,
            _ if raw.len() == 32 => raw.to_vec(),
            _ => return Err("a recording key is 32 random bytes, or 64 hex digits".into()),
        };
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes);
        Ok(Key { bytes: key })
    }

    pub fn from_file(path: &Path) -> Result<Key, String> {
        let raw = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Key::parse(&raw).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn from_env(var: &str) -> Result<Key, String> {
        let v = std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?;
        Key::parse(v.as_bytes()).map_err(|e| format!("{var}: {e}"))
    }

    pub fn id(&self) -> [u8; KEY_ID_LEN] {
        let d = Sha256::digest(self.bytes);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&d[..KEY_ID_LEN]);
        id
    }

    fn file_key(&self, salt: &[u8]) -> Result<LessSafeKey, String> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(&self.bytes);
        let okm = prk
            .expand(&[b"phigate recording v1"], &AES_256_GCM)
            .map_err(|_| "cannot derive the recording's file key".to_owned())?;
        Ok(LessSafeKey::new(UnboundKey::from(okm)))
    }
}

fn aad(header: &[u8], index: u64, last: bool) -> Vec<u8> {
    let mut a = Vec::with_capacity(header.len() + 9);
    a.extend_from_slice(header);
    a.extend_from_slice(&index.to_be_bytes());
    a.push(u8::from(last));
    a
}

fn nonce(index: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&index.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Compresses one chunk of JSON lines into a gzip member.
pub fn compress(lines: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(lines.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    gz.write_all(lines)?;
    gz.finish()
}

/// Seals the chunks of one encrypted file, in order.
pub struct Sealer {
    key: LessSafeKey,
    header: Vec<u8>,
    next: u64,
}

impl Sealer {
    /// A new file: its header (to write first) and the sealer for its frames.
    pub fn new(master: &Key) -> Result<(Sealer, Vec<u8>), String> {
        let mut salt = [0u8; SALT_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
            .map_err(|_| "no randomness for the recording salt".to_owned())?;
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&salt);
        header.extend_from_slice(&master.id());
        let sealer = Sealer {
            key: master.file_key(&salt)?,
            header: header.clone(),
            next: 0,
        };
        Ok((sealer, header))
    }

    /// One frame: `plain` sealed, with its length and last flag in front.
    pub fn frame(&mut self, plain: &[u8], last: bool) -> Result<Vec<u8>, String> {
        let index = self.next;
        self.next += 1;
        let mut sealed = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                nonce(index),
                Aad::from(aad(&self.header, index, last)),
                &mut sealed,
            )
            .map_err(|_| "cannot encrypt a recording chunk".to_owned())?;
        let mut out = Vec::with_capacity(sealed.len() + 5);
        out.extend_from_slice(&(sealed.len() as u32).to_be_bytes());
        out.push(u8::from(last));
        out.extend_from_slice(&sealed);
        Ok(out)
    }
}

/// What reading a recording found besides its events.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ReadNotes {
    pub encrypted: bool,
    /// The file ends without its last frame or mid-chunk (a crash, or still being written).
    pub incomplete: bool,
}

/// Reads a recording whole: the JSON lines of its chunks, decrypted with `key` if it is
/// encrypted. Fails on any frame that does not authenticate.
pub fn read(path: &Path, key: Option<&Key>) -> Result<(Vec<u8>, ReadNotes), String> {
    let raw = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(raw, key).map_err(|e| format!("{}: {e}", path.display()))
}

/// [`read`] over a file's bytes already in memory (the bytes whose digest was checked).
pub fn parse(raw: Vec<u8>, key: Option<&Key>) -> Result<(Vec<u8>, ReadNotes), String> {
    let mut notes = ReadNotes::default();
    let gz = if raw.starts_with(MAGIC) {
        notes.encrypted = true;
        let key = key.ok_or(
            "the recording is encrypted: give the recording key (--key-file, or PHIGATE_RECORDING_KEY)",
        )?;
        let (plain, complete) = open_frames(&raw, key)?;
        notes.incomplete = !complete;
        plain
    } else {
        raw
    };
    let mut lines = Vec::new();
    let mut dec = flate2::read::MultiGzDecoder::new(&gz[..]);
    if let Err(e) = dec.read_to_end(&mut lines) {
        // A chunk cut short by a crash: keep the whole lines before it.
        if e.kind() != std::io::ErrorKind::UnexpectedEof {
            return Err(format!("not a recording: {e}"));
        }
        notes.incomplete = true;
        let keep = lines.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        lines.truncate(keep);
    }
    Ok((lines, notes))
}

fn open_frames(raw: &[u8], master: &Key) -> Result<(Vec<u8>, bool), String> {
    if raw.len() < HEADER_LEN {
        return Err("the recording's header is cut short".into());
    }
    let header = &raw[..HEADER_LEN];
    let salt = &header[MAGIC.len()..MAGIC.len() + SALT_LEN];
    if header[MAGIC.len() + SALT_LEN..] != master.id() {
        return Err("the recording was encrypted with another key".into());
    }
    let key = master.file_key(salt)?;
    let mut at = HEADER_LEN;
    let mut index = 0u64;
    let mut plain = Vec::new();
    while at < raw.len() {
        if raw.len() - at < 5 {
            return Ok((plain, false));
        }
        let len = u32::from_be_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]) as usize;
        let last = raw[at + 4];
        if len > MAX_FRAME || last > 1 {
            return Err(format!("recording frame {index} is malformed"));
        }
        at += 5;
        if raw.len() - at < len {
            return Ok((plain, false));
        }
        let mut sealed = raw[at..at + len].to_vec();
        let opened = key
            .open_in_place(
                nonce(index),
                Aad::from(aad(header, index, last == 1)),
                &mut sealed,
            )
            .map_err(|_| format!("recording frame {index} does not authenticate (altered)"))?;
        plain.extend_from_slice(opened);
        at += len;
        index += 1;
        if last == 1 {
            if at != raw.len() {
                return Err("bytes after the recording's last frame".into());
            }
            return Ok((plain, true));
        }
    }
    Ok((plain, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key::parse(&[7u8; 32]).expect("key")
    }

    fn encrypted(chunks: &[&[u8]], finish: bool) -> Vec<u8> {
        let (mut s, mut file) = Sealer::new(&key()).expect("sealer");
        for c in chunks {
            file.extend(s.frame(&compress(c).expect("gz"), false).expect("frame"));
        }
        if finish {
            file.extend(s.frame(&[], true).expect("frame"));
        }
        file
    }

    fn read_bytes(bytes: &[u8], key: Option<&Key>) -> Result<(Vec<u8>, ReadNotes), String> {
        let dir = tempfile::tempdir().expect("dir");
        let p = dir.path().join("r");
        std::fs::write(&p, bytes).expect("write");
        read(&p, key)
    }

    #[test]
    fn encrypted_chunks_read_back_and_hide_their_text() {
        let file = encrypted(&[b"{\"a\":1}\n", b"{\"b\":\"123-45-6789\"}\n"], true);
        assert!(!file.windows(11).any(|w| w == b"123-45-6789"));
        let (lines, notes) = read_bytes(&file, Some(&key())).expect("read");
        assert_eq!(lines, b"{\"a\":1}\n{\"b\":\"123-45-6789\"}\n");
        assert!(notes.encrypted && !notes.incomplete);
        let other = Key::parse(&[8u8; 32]).expect("key");
        assert!(read_bytes(&file, Some(&other)).is_err());
        assert!(read_bytes(&file, None).is_err());
    }

    #[test]
    fn altered_dropped_or_cut_frames_are_caught() {
        let file = encrypted(&[b"one\n", b"two\n"], true);
        let mut flipped = file.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 1;
        assert!(read_bytes(&flipped, Some(&key())).is_err());
        // Without its last frame: readable, flagged incomplete.
        let cut = encrypted(&[b"one\n", b"two\n"], false);
        let (lines, notes) = read_bytes(&cut, Some(&key())).expect("read");
        assert_eq!(lines, b"one\ntwo\n");
        assert!(notes.incomplete);
        // A middle frame removed: the next one no longer authenticates.
        let (mut s, mut f) = Sealer::new(&key()).expect("sealer");
        let a = s.frame(b"x", false).expect("frame");
        let _skipped = s.frame(b"y", false).expect("frame");
        let c = s.frame(b"z", true).expect("frame");
        f.extend(a);
        f.extend(c);
        assert!(read_bytes(&f, Some(&key())).is_err());
    }

    #[test]
    fn a_plain_file_cut_mid_chunk_keeps_its_whole_lines() {
        let mut file = compress(b"{\"a\":1}\n").expect("gz");
        let second = compress(b"{\"b\":2}\n{\"c\":3}\n").expect("gz");
        file.extend_from_slice(&second[..second.len() - 6]);
        let (lines, notes) = read_bytes(&file, None).expect("read");
        assert!(lines.starts_with(b"{\"a\":1}\n"));
        assert!(notes.incomplete);
    }

    #[test]
    fn keys_are_32_bytes_or_64_hex_digits() {
        assert!(Key::parse(&[1u8; 32]).is_ok());
        assert!(Key::parse(format!("{}\n", "ab".repeat(32)).as_bytes()).is_ok());
        assert!(Key::parse(b"short").is_err());
        assert!(Key::parse("zz".repeat(32).as_bytes()).is_err());
    }
}
