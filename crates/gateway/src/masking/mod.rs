//! PHI masking, enforced by the database itself (docs/masking.md).
//!
//! For each masked role the gateway provisions, from its policy:
//! - a database login `phigate_m_<role>_<tag>` with a password only the gateway can derive (from
//!   the token key; the database receives a SCRAM verifier), no privilege on any table that holds
//!   PHI, and SELECT on the non-PHI tables its grants name;
//! - a schema `phigate_m_<role>` with one security-barrier view per PHI table, under the table's
//!   own name, whose PHI columns are computed by the role's strategies (same column types, so
//!   every driver decodes them, text and binary);
//! - sessions of the role log in as that login with `search_path = phigate_m_<role>, public`,
//!   so `patients` is the masking view.
//!
//! Raw values never reach a masked session, so every path — expressions, whole-row references,
//! aggregates, functions, CTEs, cursors, COPY, error messages that quote a value, `LIKE`
//! probes — can only ever see masked values: the wire-level policy is the layer users see; this
//! is the floor under it. Deterministic tokens are an HMAC-SHA-256 computed in the masking view
//! itself, under a key kept in a table in a schema no masked login can use (the view reads it
//! with its owner's rights): there is no function a session could call to token a guessed value,
//! so the views are no dictionary oracle.
//!
//! The parts: `plan` writes the SQL (pure, unit-tested), `verify` the checks of every privilege
//! the policy implies and the removal of logins no longer configured (pure), `apply` reads the
//! catalog, runs all of it in one transaction and proves no masked login can read a PHI
//! relation, `discover` proposes `[[phi]]` tags for a person to review.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::config::Config;

mod apply;
mod discover;
mod plan;
mod verify;

pub use apply::{provision, retire_earlier_keys};
pub use discover::{discover, guess_type};

/// The database login and schema of a masked role.
#[derive(Debug, Clone)]
pub struct MaskedLogin {
    pub user: String,
    pub password: String,
    pub schema: String,
    /// `schema.table` → its PHI columns (for audit records).
    pub phi_columns: BTreeMap<String, Vec<String>>,
    /// `schema.table` → its PHI columns that are not tokenized (predicates on them follow the
    /// role's `phi_predicates`).
    pub predicate_guarded: BTreeMap<String, Vec<String>>,
    /// `schema.table` → its PHI columns the view computes: no write can assign them.
    pub unwritable: BTreeMap<String, Vec<String>>,
}

/// `phigate_m_<role>_<tag>`, lower case, `[a-z0-9_]` only. The tag depends on the role and the
/// token key: gateways sharing a key (a fleet) share the login and views; gateways with their
/// own keys (or after a key rotation) never step on each other's.
pub fn login_name(role: &str, key: &[u8]) -> String {
    let clean: String = role
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(32)
        .collect();
    let tag = &token_hex(key, &format!("phigate-login-name:{role}"))[..10];
    format!("phigate_m_{clean}_{tag}")
}

/// The login's password: derived from the token key, so every gateway with the key (and every
/// restart) agrees on it; nobody without the key can compute it.
fn login_password(role: &str, key: &[u8]) -> String {
    token_hex(key, &format!("phigate-login-password:{role}"))
}

/// The key the database computes column tokens with: derived from the token key, so the key
/// that also derives the masked logins' passwords never reaches the database (whoever reads
/// the database's copy can compute tokens, never log in as a masked login).
fn column_token_key(key: &[u8]) -> Vec<u8> {
    hex::decode(token_hex(key, "phigate-column-tokens-v1")).unwrap_or_default()
}

/// A value's token, as the masking views compute it (hex; views keep a prefix).
pub fn column_token(key: &[u8], value: &str) -> String {
    token_hex(&column_token_key(key), value)
}

/// The COPY data (text format) of the token key table: the column-token key's pads.
fn key_copy_data(key: &[u8]) -> Vec<u8> {
    let (ipad, opad) = pads(&column_token_key(key));
    format!("\\\\x{}\t\\\\x{}\n", hex::encode(ipad), hex::encode(opad)).into_bytes()
}

/// HMAC-SHA-256 key material as stored for SQL: the key padded to the block size, XORed with
/// the inner and outer pads.
fn pads(key: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut k = if key.len() > 64 {
        Sha256::digest(key).to_vec()
    } else {
        key.to_vec()
    };
    k.resize(64, 0);
    (
        k.iter().map(|b| b ^ 0x36).collect(),
        k.iter().map(|b| b ^ 0x5c).collect(),
    )
}

/// HMAC-SHA-256 as the database computes it (for tests and `phigate` tooling).
pub fn token_hex(key: &[u8], value: &str) -> String {
    let (ipad, opad) = pads(key);
    let inner = Sha256::digest([ipad.as_slice(), value.as_bytes()].concat());
    hex::encode(Sha256::digest([opad.as_slice(), inner.as_slice()].concat()))
}

/// Where the token key lives: `masking_key_file`, else `<data_dir>/keys/masking-token.key`.
fn token_key_path(config: &Config) -> Option<std::path::PathBuf> {
    match (&config.masking_key_file, &config.data_dir) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(d)) => Some(d.join("keys").join("masking-token.key")),
        (None, None) => None,
    }
}

/// The token key: `<data_dir>/keys/masking-token.key` (created on first start).
pub fn token_key(config: &Config) -> anyhow::Result<Vec<u8>> {
    let Some(path) = token_key_path(config) else {
        anyhow::bail!("masking needs a token key: set data_dir or masking_key_file")
    };
    phigate_audit::load_or_create_key(&path, phigate_audit::random_key)
        .map_err(|e| anyhow::anyhow!("masking token key {}: {e}", path.display()))
}

/// The token key if it exists already (never created): a gateway with no masked role left
/// still removes the logins it provisioned earlier.
fn existing_token_key(config: &Config) -> Option<Vec<u8>> {
    token_key_path(config)
        .filter(|p| p.exists())
        .and_then(|_| token_key(config).ok())
}

/// The mark on the logins provisioned under this token key (a fleet sharing the key shares it).
fn owner_mark(key: &[u8]) -> String {
    token_hex(key, "phigate-masked-logins")[..16].to_owned()
}

/// Where a data directory remembers the marks of the token keys it provisioned under: after a
/// key rotation, the logins of the earlier keys are removed (they hold the old key in the
/// database, and grants of the old policy), never left able to log in.
fn marks_path(config: &Config) -> Option<std::path::PathBuf> {
    config
        .data_dir
        .as_ref()
        .map(|d| d.join("keys").join("masking-marks"))
}

/// The marks of earlier token keys of this data directory (not `current`).
fn earlier_marks(config: &Config, current: &str) -> Vec<String> {
    marks_path(config)
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|m| m.len() == 16 && m.bytes().all(|b| b.is_ascii_hexdigit()) && *m != current)
        .map(str::to_owned)
        .collect()
}

/// Adds `mark` (the current key's, once its provisioning committed) to the earlier ones.
fn add_mark(config: &Config, mark: &str) -> std::io::Result<()> {
    let mut marks = earlier_marks(config, mark);
    marks.push(mark.to_owned());
    write_marks(config, &marks)
}

/// Keeps only `mark` (the earlier keys' logins are gone).
fn remember_mark(config: &Config, mark: &str) -> std::io::Result<()> {
    write_marks(config, &[mark.to_owned()])
}

fn write_marks(config: &Config, marks: &[String]) -> std::io::Result<()> {
    let Some(path) = marks_path(config) else {
        return Ok(());
    };
    crate::fsutil::write_private_atomic(&path, format!("{}\n", marks.join("\n")).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_names_are_distinct_and_safe() {
        assert!(login_name("ai-agent", b"k").starts_with("phigate_m_ai_agent_"));
        assert_ne!(login_name("ai-agent", b"k"), login_name("ai_agent", b"k"));
        assert_ne!(
            login_name("ai-agent", b"k"),
            login_name("ai-agent", b"other key")
        );
    }

    #[test]
    fn hmac_matches_the_reference() {
        // RFC 4231 test case 2.
        let key = b"Jefe";
        assert_eq!(
            token_hex(key, "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
