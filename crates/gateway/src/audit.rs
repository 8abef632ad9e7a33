//! The gateway's side of the audit log: opening it from the config (keys from files, the
//! environment, or created in the data directory), and the events sessions write.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use phigate_audit::{Auditor, Event, SigningKey};

use crate::config::{Config, StatementText};

/// Where the checkpoint key lives when the config names no other place.
pub fn default_signing_key(data_dir: &Path) -> PathBuf {
    data_dir.join("keys").join("audit-signing.ed25519.pk8")
}

fn signing_key(config: &Config) -> anyhow::Result<Vec<u8>> {
    let a = &config.audit;
    if let Some(var) = &a.signing_key_env {
        let v = std::env::var(var)
            .map_err(|_| anyhow::anyhow!("audit.signing_key_env: variable {var} is not set"))?;
        return base64::engine::general_purpose::STANDARD
            .decode(v.trim())
            .map_err(|_| anyhow::anyhow!("audit.signing_key_env: {var} is not base64"));
    }
    let path = match (&a.signing_key_file, &config.data_dir) {
        (Some(p), _) => p.clone(),
        (None, Some(d)) => default_signing_key(d),
        (None, None) => {
            anyhow::bail!("audit: no signing key (set data_dir or audit.signing_key_file)")
        }
    };
    phigate_audit::load_or_create_key(&path, SigningKey::generate_pkcs8)
        .map_err(|e| anyhow::anyhow!("audit signing key {}: {e}", path.display()))
}

fn hmac_key(config: &Config) -> anyhow::Result<Vec<u8>> {
    let path = match (&config.audit.hmac_key_file, &config.data_dir) {
        (Some(p), _) => p.clone(),
        (None, Some(d)) => d.join("keys").join("audit-hmac.key"),
        (None, None) => anyhow::bail!("audit: no HMAC key (set data_dir or audit.hmac_key_file)"),
    };
    phigate_audit::load_or_create_key(&path, phigate_audit::random_key)
        .map_err(|e| anyhow::anyhow!("audit HMAC key {}: {e}", path.display()))
}

/// Opens the log and writes `gateway_start`; `None` when the audit is off.
pub fn open(config: &Config) -> anyhow::Result<Option<Auditor>> {
    let Some(dir) = config.audit.resolved_dir(config.data_dir.as_deref()) else {
        tracing::warn!(
            "the audit log is DISABLED (audit.enabled = false): statements leave no record"
        );
        return Ok(None);
    };
    let a = &config.audit;
    let auditor = phigate_audit::open(
        phigate_audit::Setup {
            dir: dir.clone(),
            mirror_dir: a.mirror_dir.clone(),
            segment_max_bytes: a.segment_max_mb.max(1) * 1024 * 1024,
            retention: Duration::from_secs(a.retention_days.max(1) * 86_400),
            checkpoint_every: a.checkpoint_every_records,
            checkpoint_interval: Duration::from_secs(a.checkpoint_every_secs),
            full_text: a.statement_text == StatementText::Full,
            signing_pkcs8: signing_key(config)?,
            hmac_key: hmac_key(config)?,
            durability: a.tier(),
        },
        vec![Event::GatewayStart {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            durability: Some(
                match a.tier() {
                    phigate_audit::DurabilityTier::Strict => "strict",
                    phigate_audit::DurabilityTier::Process { .. } => "process",
                }
                .to_owned(),
            ),
            flush_interval_ms: match a.tier() {
                phigate_audit::DurabilityTier::Strict => None,
                phigate_audit::DurabilityTier::Process { flush_interval } => {
                    u64::try_from(flush_interval.as_millis()).ok()
                }
            },
        }],
    )
    .map_err(|e| anyhow::anyhow!("cannot open the audit log in {}: {e}", dir.display()))?;
    tracing::info!(dir = %dir.display(), "audit log open");
    Ok(Some(auditor))
}

/// A random session id (16 hex digits), in logs and audit records.
pub fn session_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}
