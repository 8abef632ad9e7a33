//! Many gateway nodes on one control database (docs/cluster.md).

use std::path::PathBuf;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[cluster]`: the PostgreSQL control database that several gateway nodes share (reviews,
/// fingerprint approvals, node leases). Without it a gateway keeps all of that in its own
/// memory and data directory, as a single node.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `postgres://user@host:port/database` of the control database (never the protected
    /// one). Put the password in `password_env` or `password_file`, not in the URL.
    pub control_database: String,
    /// The control database's password from an environment variable, or from a file.
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    /// This node's name in the cluster (letters, digits, `.`, `_`, `-`; at most 64). Default:
    /// generated once and kept in `<data_dir>/node_id`.
    pub node_id: Option<String>,
    /// A node that has not renewed its lease for this long is gone: its pending reviews are
    /// marked abandoned. At least 2.
    #[serde(default = "default_lease")]
    pub lease_secs: u64,
    /// Besides the database's notifications (a wake-up hint only), held reviews are read
    /// again this often. Between 50 and 10000.
    #[serde(default = "default_poll")]
    pub poll_interval_ms: u64,
    /// TLS to the control database, as `upstream.tls`: `disable`, `require` (encrypted, any
    /// certificate) or `verify-full` (the chain and the host name).
    #[serde(default)]
    pub tls: super::UpstreamTlsMode,
    /// CA bundle for `verify-full`; the Mozilla roots if unset.
    pub ca_file: Option<PathBuf>,
}

fn default_lease() -> u64 {
    10
}

fn default_poll() -> u64 {
    500
}

impl ClusterConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(format!("cluster: {m}")));
        let pg = match tokio_postgres::Config::from_str(&self.control_database) {
            Ok(c) => c,
            Err(_) => {
                return bad("control_database is not a PostgreSQL connection URL".into());
            }
        };
        if pg.get_password().is_some()
            && (self.password_env.is_some() || self.password_file.is_some())
        {
            return bad("the control database's password is in control_database and in password_env/password_file: keep one".into());
        }
        if self.password_env.is_some() && self.password_file.is_some() {
            return bad("set only one of password_env, password_file".into());
        }
        if pg.get_ssl_mode() != tokio_postgres::config::SslMode::Prefer {
            return bad("control_database: say how to reach it over TLS with cluster.tls (disable, require, verify-full), not sslmode".into());
        }
        if self.ca_file.is_some() && self.tls != super::UpstreamTlsMode::VerifyFull {
            return bad("ca_file is for tls = \"verify-full\"".into());
        }
        if let Some(id) = &self.node_id {
            if !valid_node_id(id) {
                return bad(format!(
                    "node_id {id:?}: letters, digits, '.', '_' and '-' only, 1 to 64 of them"
                ));
            }
        }
        if self.lease_secs < 2 {
            return bad("lease_secs: at least 2".into());
        }
        if !(50..=10_000).contains(&self.poll_interval_ms) {
            return bad("poll_interval_ms: between 50 and 10000".into());
        }
        Ok(())
    }

    /// The control database's password, from wherever the config says it lives (read only
    /// when the gateway connects).
    pub fn resolve_password(&self) -> Result<Option<String>, ConfigError> {
        super::secret_from(
            "cluster",
            self.password_env.as_ref(),
            self.password_file.as_ref(),
        )
    }
}

/// A node id as the cluster accepts it.
pub fn valid_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
