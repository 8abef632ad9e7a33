//! The gateway's configuration file (TOML).
//!
//! Every struct denies unknown fields, so a typo is an error at load, not a silently ignored
//! setting. Errors carry the line and column (the `toml` parser reports spans).

use std::path::{Path, PathBuf};

use locate::Place;
use phigate_policy::{RoleConfig, RuleConfig};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod approvals;
mod audit;
pub mod auth;
mod cluster;
mod console;
mod limits;
mod listen;
pub mod locate;
mod recording;
pub mod saml;
mod semantic;
mod upstream;

pub use approvals::{ApprovalsConfig, WebhookFormat};
pub use audit::{AuditConfig, Durability, ReadDurability, StatementText};
pub use auth::{AuthConfig, BindingConfig, FailedLogins, OidcConfig, StaticIdentity};
pub use cluster::{valid_node_id, ClusterConfig};
pub use console::ConsoleConfig;
pub use limits::Limits;
pub use listen::{Listen, Log, LogFormat, MetricsAccess, Runtime, ServerTls};
pub use recording::RecordingConfig;
pub use saml::SamlConfig;
pub use semantic::Warning;
pub use upstream::{Upstream, UpstreamTlsMode, DEFAULT_STATEMENT_CACHE};

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
    /// A semantic error about one place in the file (turned into `Parse`, with its line and
    /// column, when the file's text is at hand).
    #[error("{message}")]
    At {
        place: Box<locate::Place>,
        message: String,
    },
}

impl ConfigError {
    /// The error with its line and column in `text` when it is about a place in it.
    fn located(self, text: &str, path: &Path) -> ConfigError {
        match self {
            ConfigError::At { place, message } => ConfigError::Parse {
                path: path.to_owned(),
                message: match locate::locate(text, &place) {
                    Some((line, col)) => format!("line {line}, column {col}: {message}"),
                    None => message,
                },
            },
            ConfigError::Invalid(message) => {
                match locate::place_of(&message).and_then(|p| locate::locate(text, &p)) {
                    Some((line, col)) => ConfigError::Parse {
                        path: path.to_owned(),
                        message: format!("line {line}, column {col}: {message}"),
                    },
                    None => ConfigError::Invalid(message),
                }
            }
            other => other,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: Listen,
    #[serde(default)]
    pub tls: Option<ServerTls>,
    pub upstream: Upstream,
    /// Where the gateway keeps its own state: API keys, its token-signing key, token
    /// revocations, the audit log, recordings and reviews (0700, files 0600). Without it, API
    /// keys and gateway session tokens are unavailable.
    pub data_dir: Option<PathBuf>,
    /// How callers prove who they are: OIDC issuers, gateway session tokens, failed-login limits.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Which identities (by group or subject, per issuer) may assume which roles.
    #[serde(default, rename = "binding")]
    pub bindings: Vec<BindingConfig>,
    /// The audit log (on by default; needs `data_dir` or `audit.dir`).
    #[serde(default)]
    pub audit: AuditConfig,
    /// Holding statements for a reviewer (rules with `action = "require_approval"`).
    #[serde(default)]
    pub approvals: ApprovalsConfig,
    /// Session recordings: what each session sent and received, for replay (docs/recording.md).
    #[serde(default)]
    pub recording: RecordingConfig,
    /// The reviewer and auditor web console (docs/console.md).
    #[serde(default)]
    pub console: ConsoleConfig,
    /// PHI tags: which columns of which tables hold which kind of identifier. Masked roles see
    /// these columns through masking views (docs/masking.md).
    #[serde(default)]
    pub phi: Vec<phigate_policy::masking::PhiTableConfig>,
    /// Key of the deterministic masking tokens; `<data_dir>/keys/masking-token.key` (created)
    /// if unset. Replacing it (and reloading) changes every token.
    pub masking_key_file: Option<PathBuf>,
    /// Individuals known by the SHA-256 of a static token (service accounts, tests). Prefer
    /// OIDC or API keys: they expire and can be revoked without editing the config.
    #[serde(default, rename = "identity")]
    pub identities: Vec<StaticIdentity>,
    /// Caps on connections and sessions, per individual and per role (docs/configuration.md).
    #[serde(default)]
    pub limits: Limits,
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
    /// Many nodes on one PostgreSQL control database (docs/cluster.md); a single node without.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
}

/// A secret from an environment variable or a file (the file's trailing newline dropped):
/// how `upstream` and `cluster` read their passwords. `section` names the setting in errors.
fn secret_from(
    section: &str,
    env: Option<&String>,
    file: Option<&PathBuf>,
) -> Result<Option<String>, ConfigError> {
    if let Some(var) = env {
        return std::env::var(var).map(Some).map_err(|_| {
            ConfigError::Invalid(format!("{section}.password_env: variable {var} is not set"))
        });
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        return Ok(Some(text.trim_end_matches(['\n', '\r']).to_owned()));
    }
    Ok(None)
}

fn default_true() -> bool {
    true
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
        config.validate().map_err(|e| e.located(text, path))?;
        Ok(config)
    }

    /// Loads a file, and also returns its warnings, each with its line and column.
    pub fn load_with_warnings(path: &Path) -> Result<(Config, Vec<String>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Config::parse(&text, path)?;
        let warnings = config
            .warnings()
            .into_iter()
            .map(|w| match locate::locate(&text, &w.place) {
                Some((line, col)) => format!(
                    "{}: line {line}, column {col}: {}",
                    path.display(),
                    w.message
                ),
                None => format!("{}: {}", path.display(), w.message),
            })
            .collect();
        Ok((config, warnings))
    }

    /// Compiles the policy (roles and rules).
    pub fn policy(&self) -> Result<phigate_policy::Policy, ConfigError> {
        phigate_policy::Policy::new(&self.roles, &self.rules).map_err(|e| self.policy_error(e))
    }

    /// The JSON schema of this file, published as docs/config.schema.json.
    pub fn json_schema() -> String {
        serde_json::to_string_pretty(&schemars::schema_for!(Config)).unwrap_or_default()
    }

    /// `listen.http_tls` needs a certificate, and makes the console's address https.
    fn validate_http_tls(&self) -> Result<(), ConfigError> {
        if self.listen.http_tls && (self.tls.is_none() || self.listen.http_address.is_none()) {
            return Err(ConfigError::Invalid(
                "listen.http_tls needs listen.http_address and a [tls] table (its certificate \
                 serves both listeners)"
                    .into(),
            ));
        }
        let plain_console = self
            .console
            .public_url
            .as_deref()
            .is_some_and(|u| u.to_ascii_lowercase().starts_with("http://"));
        if self.listen.http_tls && plain_console {
            return Err(ConfigError::Invalid(
                "console.public_url is http:// but listen.http_tls serves TLS only: give its \
                 https:// address"
                    .into(),
            ));
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.upstream.check_password_source()?;
        if let Some(c) = &self.cluster {
            c.validate()?;
        }
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
        self.validate_auth(&policy)?;
        for id in &self.identities {
            for role in &id.roles {
                if policy.role(role).is_none() {
                    return Err(self.unknown_role(
                        Place::entry("identity", &id.subject)
                            .key("roles")
                            .value(role),
                        format!(
                            "identity {}: role {role} is not defined (add a [[role]] named {role})",
                            id.subject
                        ),
                    ));
                }
            }
        }
        let l = &self.limits;
        if l.max_connections == 0
            || l.sessions_per_identity == 0
            || l.sessions_per_role == 0
            || l.startups_per_source == 0
            || self.listen.http_max_connections == 0
            || self.listen.http_connections_per_source == 0
        {
            return Err(ConfigError::Invalid(
                "limits.max_connections, limits.startups_per_source, \
                 limits.sessions_per_identity, limits.sessions_per_role, \
                 listen.http_max_connections and listen.http_connections_per_source must be \
                 at least 1"
                    .into(),
            ));
        }
        self.validate_http_tls()?;
        if let Some(r) = self.roles.iter().find(|r| r.max_sessions == Some(0)) {
            return Err(ConfigError::Invalid(format!(
                "role {}: max_sessions must be at least 1",
                r.name
            )));
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
        if self.audit.enabled && self.audit.resolved_dir(self.data_dir.as_deref()).is_none() {
            return Err(ConfigError::Invalid(
                "the audit log needs a place: set data_dir (or audit.dir); audit.enabled = false \
                 runs statements with no audit record and is for development only"
                    .into(),
            ));
        }
        if let Some(r) = self.roles.iter().find(|r| r.masked) {
            if self.phi.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "role {} is masked but no [[phi]] table is tagged",
                    r.name
                )));
            }
            if self.upstream.database.is_none() {
                return Err(ConfigError::Invalid(
                    "masked roles need upstream.database (the masking views live there)".into(),
                ));
            }
        }
        if let Some(url) = &self.approvals.webhook_url {
            let lower = url.to_ascii_lowercase();
            if !lower.starts_with("https://") && !auth::is_loopback_url(&lower) {
                return Err(ConfigError::Invalid(
                    "approvals.webhook_url must be https (plain http only on loopback)".into(),
                ));
            }
        }
        if self.audit.checkpoint_every_records == 0 || self.audit.checkpoint_every_secs == 0 {
            return Err(ConfigError::Invalid(
                "audit: checkpoint_every_records and checkpoint_every_secs must be at least 1"
                    .into(),
            ));
        }
        if !(1..=60_000).contains(&self.audit.flush_interval_ms) {
            return Err(ConfigError::Invalid(
                "audit.flush_interval_ms must be between 1 and 60000".into(),
            ));
        }
        if self.audit.signing_key_file.is_some() && self.audit.signing_key_env.is_some() {
            return Err(ConfigError::Invalid(
                "audit: set signing_key_file or signing_key_env, not both".into(),
            ));
        }
        if !(1..=1440).contains(&self.approvals.max_elevation_minutes) {
            return Err(ConfigError::Invalid(
                "approvals.max_elevation_minutes is 1 to 1440".into(),
            ));
        }
        for r in self
            .approvals
            .break_glass_roles
            .iter()
            .chain(&self.approvals.elevation_roles)
        {
            if policy.role(r).is_none() {
                return Err(self.unknown_role(
                    Place::section("approvals").value(r),
                    format!(
                        "approvals: role {r} (break_glass_roles, elevation_roles) is not defined"
                    ),
                ));
            }
        }
        for r in &self.audit.reader_roles {
            if policy.role(r).is_none() {
                return Err(self.unknown_role(
                    Place::section("audit").key("reader_roles").value(r),
                    format!("audit.reader_roles: role {r} is not defined"),
                ));
            }
        }
        self.check_approvals_reachable()?;
        self.recording.validate(self, &policy)?;
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
            let (line, col) = locate::line_col(text, span.start);
            format!("line {line}, column {col}: {}", e.message())
        }
        None => e.message().to_owned(),
    }
}

#[cfg(test)]
mod tests;
