//! Redaction of statement text and parameters before anything reaches the disk (off the
//! session's path: the writer does it), unless the config keeps them in full.

use ring::hmac;
use sha2::{Digest, Sha256};

use super::{Param, Writer, MAX_TEXT};
use crate::record::StatementRecord;

impl Writer {
    fn keyed(&self, bytes: &[u8]) -> String {
        let tag = hmac::sign(&self.hmac, bytes);
        format!("hmac:{}", hex::encode(&tag.as_ref()[..16]))
    }

    pub(super) fn redact(
        &self,
        mut meta: StatementRecord,
        sql: &str,
        params: Vec<Option<Param>>,
    ) -> StatementRecord {
        let (text, literals) = if self.opts.full_text {
            (sql.to_owned(), Vec::new())
        } else {
            let (text, lits) = phigate_sql::redact_literals(sql);
            (
                text,
                lits.iter().map(|l| self.keyed(l.as_bytes())).collect(),
            )
        };
        meta.fingerprint = hex::encode(&Sha256::digest(text.as_bytes())[..16]);
        if text.len() > MAX_TEXT {
            let mut cut = MAX_TEXT;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            meta.text_sha256 = Some(hex::encode(Sha256::digest(text.as_bytes())));
            meta.text = text[..cut].to_owned();
        } else {
            meta.text = text;
        }
        meta.literals = literals;
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
