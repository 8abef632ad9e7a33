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
    /// The guarantee of every statement's record. `strict` (default): on disk (`fdatasync`)
    /// before the statement is forwarded (or, for reads with `read_durability = "results"`,
    /// before its results are released): a power loss loses no record of a statement that
    /// ran. `process`: *written* to the operating system before the statement is forwarded
    /// (a crash of the gateway, `kill -9`, loses none) and flushed to disk in the background
    /// within `flush_interval_ms`: a power loss or an OS crash can lose the records of the
    /// statements of the last `flush_interval_ms`, as with pgaudit or PostgreSQL's own
    /// statement log. `read_durability` applies to `strict` only.
    #[serde(default)]
    pub durability: Durability,
    /// With `durability = "process"`: the longest a record stays written but not yet on disk
    /// (1–60000 ms). The background flush starts at most half of it after the first record
    /// not yet on disk; when the disk falls further behind, statements wait for it, as in
    /// `strict`, until it catches up.
    #[serde(default = "default_flush_interval_ms")]
    pub flush_interval_ms: u64,
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
            durability: Durability::default(),
            flush_interval_ms: default_flush_interval_ms(),
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

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    #[default]
    Strict,
    Process,
}

fn default_flush_interval_ms() -> u64 {
    100
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
    /// The tier the writer runs with.
    pub fn tier(&self) -> phigate_audit::DurabilityTier {
        match self.durability {
            Durability::Strict => phigate_audit::DurabilityTier::Strict,
            Durability::Process => phigate_audit::DurabilityTier::Process {
                flush_interval: std::time::Duration::from_millis(self.flush_interval_ms),
            },
        }
    }

    /// Reads go to the database once their record is written, their results held until it is
    /// durable (`read_durability = "results"`, strict tier).
    pub fn gate_reads(&self) -> bool {
        self.durability == Durability::Strict && self.read_durability == ReadDurability::Results
    }

    /// What a crash can cost, in one sentence (`phigate check`).
    pub fn guarantee(&self) -> String {
        if !self.enabled {
            return "audit: OFF: statements leave no record".into();
        }
        match (self.durability, self.read_durability) {
            (Durability::Strict, ReadDurability::Forward) => {
                "audit: strict: every statement's record is on disk before the statement runs; \
                 neither a power loss nor a gateway crash loses a record of a statement that ran"
                    .into()
            }
            (Durability::Strict, ReadDurability::Results) => {
                "audit: strict, read_durability = \"results\": a power loss can lose the records \
                 of reads that ran whose results were never released (writes are on disk before \
                 they run); a gateway crash loses none"
                    .into()
            }
            (Durability::Process, _) => format!(
                "audit: process: a power loss can lose up to {} ms of records of statements that \
                 ran; a gateway crash loses none",
                self.flush_interval_ms
            ),
        }
    }

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
