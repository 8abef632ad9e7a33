//! Redaction of statement text and parameters before anything reaches the disk (off the
//! session's path: the writer does it), unless the config keeps them in full.

use ring::hmac;
use sha2::{Digest, Sha256};

use super::{Param, Writer, MAX_TEXT};

/// Literals of one statement kept (hashed) in its record: a statement of a million literals
/// must not grow the log by a keyed hash each.
pub const MAX_LITERALS: usize = 256;
use crate::record::{Event, StatementRecord};

impl Writer {
    fn keyed(&self, bytes: &[u8]) -> String {
        let tag = hmac::sign(&self.hmac, bytes);
        let mut out = String::with_capacity(5 + 32);
        out.push_str("hmac:");
        out.push_str(&crate::chain::hex(&tag.as_ref()[..16]));
        out
    }

    /// An event as it may reach the disk: a failed login's credential-shaped user name becomes
    /// its keyed hash.
    pub(super) fn redact_event(&self, event: Event) -> Event {
        match event {
            Event::LoginFailed {
                client_addr,
                user,
                reason,
                via,
                subject,
            } if crate::record::looks_like_credential(&user) => Event::LoginFailed {
                client_addr,
                user: self.keyed(user.as_bytes()),
                reason,
                via,
                subject,
            },
            e => e,
        }
    }

    pub(super) fn redact(
        &self,
        mut meta: StatementRecord,
        sql: &str,
        params: Vec<Option<Param>>,
    ) -> StatementRecord {
        let (text, lits) = if self.opts.full_text {
            (sql.to_owned(), Vec::new())
        } else {
            phigate_sql::redact_literals(sql)
        };
        meta.fingerprint = crate::chain::hex(&Sha256::digest(text.as_bytes())[..16]);
        let omitted = lits.len().saturating_sub(MAX_LITERALS);
        if text.len() > MAX_TEXT || omitted > 0 {
            // The whole: the text, and (keyed, so no literal can be guessed from it) every
            // literal, in one hash.
            let mut whole = Sha256::new();
            whole.update(text.as_bytes());
            if omitted > 0 {
                let tag = hmac::sign(&self.hmac, sql.as_bytes());
                whole.update(tag.as_ref());
            }
            meta.text_sha256 = Some(hex::encode(whole.finalize()));
        }
        if text.len() > MAX_TEXT {
            let mut cut = MAX_TEXT;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            meta.text = text[..cut].to_owned();
        } else {
            meta.text = text;
        }
        meta.literals = lits
            .iter()
            .take(MAX_LITERALS)
            .map(|l| self.keyed(l.as_bytes()))
            .collect();
        meta.literals_omitted = omitted as u64;
        meta.params = params
            .into_iter()
            .map(|p| {
                p.map(|p| {
                    let v = &p.value;
                    if !self.opts.full_text {
                        return self.keyed(v);
                    }
                    match std::str::from_utf8(v) {
                        Ok(s) if !p.binary && s.len() <= 4096 => s.to_owned(),
                        _ => format!("\\x{}", hex::encode(&v[..v.len().min(2048)])),
                    }
                })
            })
            .collect();
        meta
    }
}
