//! Session recordings: where they live, how much of each result they keep, their limits.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{default_true, Config, ConfigError};

/// Session recordings (docs/recording.md). Each role's `record` setting says how much of its
/// results a recording keeps.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordingConfig {
    /// Record sessions (needs the audit log: each recording's digest goes into it).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Where recordings live; `<data_dir>/recordings` if unset.
    pub dir: Option<PathBuf>,
    /// Rows kept per result (the rest are counted, not kept).
    #[serde(default = "default_recording_rows")]
    pub max_rows_per_result: u64,
    /// Bytes kept per value (longer values are cut, their length noted).
    #[serde(default = "default_recording_value_bytes")]
    pub max_value_bytes: usize,
    /// A session's recording stops growing past this (uncompressed); the statements go on,
    /// and the audit log still has every one.
    #[serde(default = "default_recording_session_mb")]
    pub max_session_mb: u64,
    /// No new recordings once the directory holds this much (they resume when space is
    /// freed); the audit log is unaffected.
    #[serde(default = "default_recording_total_mb")]
    pub max_total_mb: u64,
    /// The key that encrypts recordings of roles that see unmasked PHI (AES-256-GCM): a file
    /// of 32 random bytes, or 64 hex digits. Keep it off the gateway's data disk.
    pub key_file: Option<PathBuf>,
    /// Or: an environment variable holding the key as 64 hex digits.
    pub key_env: Option<String>,
    /// Roles whose identities may have encrypted recordings decrypted by
    /// `GET /v1/sessions/{id}` (they must also be audit readers). Every replay over HTTP is
    /// audited (`recording_replayed`).
    #[serde(default)]
    pub decrypt_roles: Vec<String>,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        RecordingConfig {
            enabled: true,
            dir: None,
            max_rows_per_result: default_recording_rows(),
            max_value_bytes: default_recording_value_bytes(),
            max_session_mb: default_recording_session_mb(),
            max_total_mb: default_recording_total_mb(),
            key_file: None,
            key_env: None,
            decrypt_roles: Vec::new(),
        }
    }
}

fn default_recording_rows() -> u64 {
    100
}
fn default_recording_value_bytes() -> usize {
    1024
}
fn default_recording_session_mb() -> u64 {
    64
}
fn default_recording_total_mb() -> u64 {
    10 * 1024
}

impl RecordingConfig {
    /// The recordings' directory, if sessions are recorded.
    pub fn resolved_dir(&self, data_dir: Option<&Path>) -> Option<PathBuf> {
        if !self.enabled {
            return None;
        }
        self.dir
            .clone()
            .or_else(|| data_dir.map(|d| d.join("recordings")))
    }

    pub(super) fn validate(
        &self,
        config: &Config,
        policy: &phigate_policy::Policy,
    ) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(format!("recording: {m}")));
        if !self.enabled {
            return Ok(());
        }
        if !config.audit.enabled {
            return invalid(
                "recordings need the audit log (their digests go into it):                  set recording.enabled = false with audit.enabled = false",
            );
        }
        if self.resolved_dir(config.data_dir.as_deref()).is_none() {
            return invalid("set data_dir (or recording.dir)");
        }
        if self.key_file.is_some() && self.key_env.is_some() {
            return invalid("set key_file or key_env, not both");
        }
        if self.max_session_mb == 0 || self.max_value_bytes == 0 {
            return invalid("max_session_mb and max_value_bytes must be at least 1");
        }
        if self.max_value_bytes > 64 * 1024 {
            return invalid("max_value_bytes is at most 65536");
        }
        for r in &self.decrypt_roles {
            if policy.role(r).is_none() {
                return Err(ConfigError::Invalid(format!(
                    "recording.decrypt_roles: role {r} is not defined"
                )));
            }
        }
        let keyed = self.key_file.is_some() || self.key_env.is_some();
        for r in &config.roles {
            let Some(role) = policy.role(&r.name) else {
                continue;
            };
            if !role.masked && role.record == phigate_policy::RecordMode::Rows && !keyed {
                return Err(ConfigError::Invalid(format!(
                    "role {} sees unmasked PHI and records rows: recordings of it must be \
                     encrypted, so set recording.key_file (or key_env), or record = \"shape\"",
                    r.name
                )));
            }
        }
        Ok(())
    }
}
