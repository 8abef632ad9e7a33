//! The gateway's configuration file (TOML).
//!
//! Every struct denies unknown fields, so a typo is an error at load, not a silently ignored
//! setting. Errors carry the line and column (the `toml` parser reports spans).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use phigate_policy::{RoleConfig, RuleConfig};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: Listen,
    #[serde(default)]
    pub tls: Option<ServerTls>,
    pub upstream: Upstream,
    /// Who may connect (placeholder authentication until OIDC and API keys land).
    #[serde(default, rename = "identity")]
    pub identities: Vec<StaticIdentity>,
    #[serde(default)]
    pub log: Log,
    #[serde(default)]
    pub runtime: Runtime,
    /// Gateway roles: what each may do.
    #[serde(default, rename = "role")]
    pub roles: Vec<RoleConfig>,
    /// Rules tried in order before the grants: deny, hold for approval, or allow.
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleConfig>,
}

/// How the gateway uses the machine's cores.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    /// Threads that run sessions. Unset: one per core. `1` runs everything on one thread (like
    /// pgbouncer), the cheapest choice when the gateway shares a small machine with the
    /// database or the clients: no cross-thread wake-ups.
    pub worker_threads: Option<usize>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// Address for PostgreSQL clients, e.g. `0.0.0.0:6432`.
    pub address: SocketAddr,
    /// Address for `/healthz`, `/readyz` and (later) the API. Port 0 picks a free port.
    pub http_address: Option<SocketAddr>,
    /// Largest single protocol message a client may send, in bytes.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    /// A client must finish TLS, startup and authentication within this many seconds.
    #[serde(default = "default_startup_timeout")]
    pub startup_timeout_secs: u64,
    /// On SIGTERM, sessions get this long to finish before they are closed.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_secs: u64,
    /// Allow clients without TLS when they connect from a loopback address. Tokens travel in the
    /// password field, so plaintext is refused from anywhere else.
    #[serde(default = "default_true")]
    pub allow_plaintext_loopback: bool,
}

fn default_max_message() -> usize {
    64 * 1024 * 1024
}
fn default_startup_timeout() -> u64 {
    15
}
fn default_shutdown_grace() -> u64 {
    30
}
fn default_true() -> bool {
    true
}

/// TLS towards clients.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Refuse clients that do not negotiate TLS, loopback included.
    #[serde(default)]
    pub require: bool,
}

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
}

fn default_pg_port() -> u16 {
    5432
}
fn default_connect_timeout() -> u64 {
    10
}

impl Upstream {
    /// Resolves the password from wherever the config says it lives.
    pub fn resolve_password(&self) -> Result<Option<String>, ConfigError> {
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
        if let Some(p) = &self.password {
            return Ok(Some(p.clone()));
        }
        if let Some(var) = &self.password_env {
            return std::env::var(var).map(Some).map_err(|_| {
                ConfigError::Invalid(format!("upstream.password_env: variable {var} is not set"))
            });
        }
        if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            return Ok(Some(text.trim_end_matches(['\n', '\r']).to_owned()));
        }
        Ok(None)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }
}

/// A caller known by the SHA-256 of its token (placeholder until the identity providers land).
/// The token goes in the password field; the startup `user` names the role to assume.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StaticIdentity {
    /// The individual: a person's e-mail or a service name.
    pub subject: String,
    /// Hex SHA-256 of the token.
    pub token_sha256: String,
    /// Roles this identity may assume; the first is its default.
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Log {
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter such as `info` or `phigate=debug`.
    pub level: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: describe_toml_error(text, &e),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Compiles the policy (roles and rules).
    pub fn policy(&self) -> Result<phigate_policy::Policy, ConfigError> {
        phigate_policy::Policy::new(&self.roles, &self.rules)
            .map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    /// The JSON schema of this file, published as docs/config.schema.json.
    pub fn json_schema() -> String {
        serde_json::to_string_pretty(&schemars::schema_for!(Config)).unwrap_or_default()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.upstream.resolve_password()?;
        let policy = self.policy()?;
        // Views and built-in functions are read from the configured database; with the client
        // choosing, a restricted role's checks would be made against another database's catalog.
        if self.upstream.database.is_none() {
            if let Some(r) = self.roles.iter().find(|r| r.restricted) {
                return Err(ConfigError::Invalid(format!(
                    "role {} is restricted, so upstream.database must name the protected database",
                    r.name
                )));
            }
        }
        for id in &self.identities {
            for role in &id.roles {
                if policy.role(role).is_none() {
                    return Err(ConfigError::Invalid(format!(
                        "identity {}: role {role} is not defined (add a [[role]] named {role})",
                        id.subject
                    )));
                }
            }
        }
        if self.listen.max_message_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "listen.max_message_bytes must be at least 1024".into(),
            ));
        }
        for id in &self.identities {
            if id.roles.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "identity {}: needs at least one role",
                    id.subject
                )));
            }
            let ok = id.token_sha256.len() == 64
                && id.token_sha256.bytes().all(|b| b.is_ascii_hexdigit());
            if !ok {
                return Err(ConfigError::Invalid(format!(
                    "identity {}: token_sha256 must be 64 hex digits",
                    id.subject
                )));
            }
        }
        if self.upstream.tls != UpstreamTlsMode::VerifyFull && self.upstream.ca_file.is_some() {
            return Err(ConfigError::Invalid(
                "upstream.ca_file is only used with tls = \"verify-full\"".into(),
            ));
        }
        Ok(())
    }
}

/// `toml` reports a byte span; turn it into `line L, column C: message`.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before
                .rsplit('\n')
                .next()
                .map(|l| l.chars().count())
                .unwrap_or(0)
                + 1;
            format!("line {line}, column {col}: {}", e.message())
        }
        None => e.message().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[listen]
address = "127.0.0.1:6432"

[upstream]
host = "127.0.0.1"
user = "phigate"
password = "x"
"#;

    #[test]
    fn minimal_config_loads_with_defaults() {
        let c = Config::parse(MINIMAL, Path::new("t.toml")).expect("valid");
        assert_eq!(c.upstream.port, 5432);
        assert_eq!(c.listen.max_message_bytes, 64 * 1024 * 1024);
        assert_eq!(c.upstream.tls, UpstreamTlsMode::Disable);
    }

    #[test]
    fn unknown_field_is_reported_with_its_line() {
        let text = MINIMAL.replace(
            "user = \"phigate\"",
            "user = \"phigate\"\npasword = \"typo\"",
        );
        let err = Config::parse(&text, Path::new("t.toml"))
            .expect_err("must fail")
            .to_string();
        assert!(err.contains("line 8"), "{err}");
        assert!(err.contains("pasword"), "{err}");
    }

    #[test]
    fn published_schema_is_current() {
        let published = include_str!("../../../docs/config.schema.json");
        assert_eq!(
            published.trim(),
            Config::json_schema().trim(),
            "docs/config.schema.json is stale: run `phigate schema > docs/config.schema.json`"
        );
    }

    #[test]
    fn identity_with_an_undefined_role_is_rejected() {
        let text = format!(
            "{MINIMAL}\n[[identity]]\nsubject = \"a@b\"\ntoken_sha256 = \"{}\"\nroles = [\"ghost\"]\n",
            "0".repeat(64)
        );
        let err = Config::parse(&text, Path::new("t.toml"))
            .expect_err("must fail")
            .to_string();
        assert!(err.contains("role ghost is not defined"), "{err}");
    }

    #[test]
    fn restricted_roles_need_a_fixed_database() {
        let text = format!("{MINIMAL}\n[[role]]\nname = \"agent\"\n");
        let err = Config::parse(&text, Path::new("t.toml"))
            .expect_err("must fail")
            .to_string();
        assert!(err.contains("upstream.database"), "{err}");
        let text = text.replace(
            "password = \"x\"",
            "password = \"x\"\ndatabase = \"clinic\"",
        );
        Config::parse(&text, Path::new("t.toml")).expect("valid with a database");
    }

    #[test]
    fn two_password_sources_are_rejected() {
        let text = MINIMAL.replace(
            "password = \"x\"",
            "password = \"x\"\npassword_env = \"PW\"",
        );
        assert!(Config::parse(&text, Path::new("t.toml")).is_err());
    }
}
