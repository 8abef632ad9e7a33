//! The protected database: where it is and the credentials the gateway alone holds.

use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTlsMode {
    /// Plaintext (only sensible on loopback or a unix-socket-like private link).
    #[default]
    Disable,
    /// Encrypt, but do not verify the server's certificate (libpq `sslmode=require`).
    Require,
    /// Encrypt and verify the certificate chain and host name (libpq `sslmode=verify-full`).
    VerifyFull,
}

/// The protected database. The gateway alone holds these credentials.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub host: String,
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// Database to connect to. If unset, the database the client asked for.
    pub database: Option<String>,
    pub user: String,
    /// The password inline (discouraged), from an environment variable, or from a file.
    pub password: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub tls: UpstreamTlsMode,
    /// CA bundle for `verify-full`; the Mozilla roots if unset.
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Statements each session keeps prepared in the database for its repeated unnamed ones
    /// (the statement cache; 0 turns it off). At most 1024.
    #[serde(default = "default_statement_cache")]
    pub statement_cache: usize,
}

fn default_pg_port() -> u16 {
    5432
}
fn default_connect_timeout() -> u64 {
    10
}
fn default_statement_cache() -> usize {
    DEFAULT_STATEMENT_CACHE
}
/// Statements a session's cache keeps unless configured otherwise.
pub const DEFAULT_STATEMENT_CACHE: usize = 64;
/// The most statements a session's cache may keep.
pub const MAX_STATEMENT_CACHE: usize = 1024;

impl Upstream {
    /// At most one place for the password. Where it lives is read only when the gateway (or
    /// `phigate check`) connects: the commands that merely read the config (`token mint`,
    /// `keys`, `audit`) need no database secret in their environment.
    pub fn check_password_source(&self) -> Result<(), ConfigError> {
        if self.statement_cache > MAX_STATEMENT_CACHE {
            return Err(ConfigError::Invalid(format!(
                "upstream.statement_cache: at most {MAX_STATEMENT_CACHE}"
            )));
        }
        let sources = [
            self.password.is_some(),
            self.password_env.is_some(),
            self.password_file.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() > 1 {
            return Err(ConfigError::Invalid(
                "upstream: set only one of password, password_env, password_file".into(),
            ));
        }
        Ok(())
    }

    /// Resolves the password from wherever the config says it lives.
    pub fn resolve_password(&self) -> Result<Option<String>, ConfigError> {
        self.check_password_source()?;
        if let Some(p) = &self.password {
            return Ok(Some(p.clone()));
        }
        super::secret_from(
            "upstream",
            self.password_env.as_ref(),
            self.password_file.as_ref(),
        )
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }
}
