//! The audit log: where it lives, checkpoints, segments, retention, durability of reads.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::default_true;

/// The tamper-evident, write-ahead audit log (docs/audit.md).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Off only for development: then statements run with no audit record.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Where the log lives; `<data_dir>/audit` if unset.
    pub dir: Option<PathBuf>,
    /// A second directory (another disk or mount) that receives a copy of every checkpoint,
    /// so deleting the log's tail together with its checkpoints is still detected.
    pub mirror_dir: Option<PathBuf>,
    /// A signed checkpoint every this many records ...
    #[serde(default = "default_checkpoint_records")]
    pub checkpoint_every_records: u64,
    /// ... or this many seconds (when records were written), and at shutdown.
    #[serde(default = "default_checkpoint_secs")]
    pub checkpoint_every_secs: u64,
    /// A new segment file starts past this size.
    #[serde(default = "default_segment_mb")]
    pub segment_max_mb: u64,
    /// Segments older than this are removed (HIPAA keeps documentation six years).
    #[serde(default = "default_retention_days")]
    pub retention_days: u64,
    /// `redacted` (default): literals and parameters stored as keyed hashes (equal values hash
    /// equally, so an investigator can still match them); `full`: stored as sent.
    #[serde(default)]
    pub statement_text: StatementText,
    /// When a read's record must be on disk. `forward` (default): durable before the read is
    /// forwarded, as writes and DDL always are. `results`: a read that changes nothing phigate
    /// can see (SELECT with no function call, field notation, lock or data-modifying CTE;
    /// SHOW) is forwarded once its record is written (it survives the gateway's process, e.g.
    /// `kill -9`), and no byte of its results reaches the client before the record is durable,
    /// so the fsync runs while the database works. Choose it when the role cannot reach a
    /// function that writes through a view, an RLS policy or a user-defined operator: such a
    /// write could lose its record to a power loss (never to a process crash).
    #[serde(default)]
    pub read_durability: ReadDurability,
    /// The checkpoint signing key (Ed25519, PKCS#8 DER); created in
    /// `<data_dir>/keys/audit-signing.ed25519.pk8` if unset.
    pub signing_key_file: Option<PathBuf>,
    /// Or: an environment variable holding the key, base64 PKCS#8.
    pub signing_key_env: Option<String>,
    /// The key of the keyed hashes; created in `<data_dir>/keys/audit-hmac.key` if unset.
    pub hmac_key_file: Option<PathBuf>,
    /// Roles whose identities may read the audit log over the HTTP API (bearer token).
    #[serde(default)]
    pub reader_roles: Vec<String>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            enabled: true,
            dir: None,
            mirror_dir: None,
            checkpoint_every_records: default_checkpoint_records(),
            checkpoint_every_secs: default_checkpoint_secs(),
            segment_max_mb: default_segment_mb(),
            retention_days: default_retention_days(),
            statement_text: StatementText::default(),
            read_durability: ReadDurability::default(),
            signing_key_file: None,
            signing_key_env: None,
            hmac_key_file: None,
            reader_roles: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StatementText {
    #[default]
    Redacted,
    Full,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReadDurability {
    #[default]
    Forward,
    Results,
}

fn default_checkpoint_records() -> u64 {
    1000
}
fn default_checkpoint_secs() -> u64 {
    10
}
fn default_segment_mb() -> u64 {
    256
}
fn default_retention_days() -> u64 {
    2192
}

impl AuditConfig {
    /// The log's directory, if the audit is on.
    pub fn resolved_dir(&self, data_dir: Option<&Path>) -> Option<PathBuf> {
        if !self.enabled {
            return None;
        }
        self.dir
            .clone()
            .or_else(|| data_dir.map(|d| d.join("audit")))
    }
}
