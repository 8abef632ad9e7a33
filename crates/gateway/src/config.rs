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
    /// Where the gateway keeps its own state: API keys, its token-signing key (and, later, the
    /// audit log and reviews). Without it, API keys and gateway session tokens are unavailable.
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

/// A caller known by the SHA-256 of its token. The token goes in the password field; the
/// startup `user` names the role to assume.
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

/// Just-in-time approval (docs/approvals.md).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// Hold statements that need approval until a reviewer decides. Off: they are refused.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Roles whose identities may approve or deny (never their own statements).
    #[serde(default = "default_reviewer_roles")]
    pub reviewer_roles: Vec<String>,
    /// A held statement is denied after this many seconds without a decision.
    #[serde(default = "default_review_timeout")]
    pub timeout_secs: u64,
    /// Notified (POST, retried) when a review opens and when it ends. https, or http on
    /// loopback. The statement text is sent redacted (literals replaced by `$n`).
    pub webhook_url: Option<String>,
    /// `json` (the review as JSON) or `slack` (a Slack-compatible `{"text": ...}` message).
    #[serde(default)]
    pub webhook_format: WebhookFormat,
    /// Break-glass (HIPAA emergency access): identities of these roles may approve their own
    /// held statement (`phigate review approve ID --break-glass --reason ...`, a justification
    /// of at least 20 characters). Audited and announced as break-glass.
    #[serde(default)]
    pub break_glass_roles: Vec<String>,
    /// Roles an identity may ask to act as for a while (`phigate access request --role R
    /// --minutes N --reason ...`); a reviewer approves like a held statement. Empty: no
    /// access requests.
    #[serde(default)]
    pub elevation_roles: Vec<String>,
    /// The longest elevation that may be asked for, in minutes.
    #[serde(default = "default_max_elevation")]
    pub max_elevation_minutes: u64,
}

fn default_max_elevation() -> u64 {
    240
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    #[default]
    Json,
    Slack,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        ApprovalsConfig {
            enabled: true,
            reviewer_roles: default_reviewer_roles(),
            timeout_secs: default_review_timeout(),
            webhook_url: None,
            webhook_format: WebhookFormat::default(),
            break_glass_roles: Vec::new(),
            elevation_roles: Vec::new(),
            max_elevation_minutes: default_max_elevation(),
        }
    }
}

fn default_reviewer_roles() -> Vec<String> {
    vec!["reviewer".into()]
}
fn default_review_timeout() -> u64 {
    300
}

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

    fn validate(
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

/// Authentication settings.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// The `iss` of tokens the gateway signs itself (`phigate login`, the development issuer).
    /// Defaults to the HTTP address's URL, else `phigate`.
    pub issuer: Option<String>,
    /// Lifetime of the session tokens `phigate login` obtains, in seconds.
    #[serde(default = "default_session_token_ttl")]
    pub session_token_ttl_secs: u64,
    /// Development only (the demo): `phigate token mint` may sign a token for any subject and
    /// groups with the gateway's key. Never enable this in front of real patient data.
    #[serde(default)]
    pub development: bool,
    /// OpenID Connect issuers whose JWTs are accepted.
    #[serde(default)]
    pub oidc: Vec<OidcConfig>,
    #[serde(default)]
    pub failed_logins: FailedLogins,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            leeway_secs: default_leeway(),
            issuer: None,
            session_token_ttl_secs: default_session_token_ttl(),
            development: false,
            oidc: Vec::new(),
            failed_logins: FailedLogins::default(),
        }
    }
}

fn default_leeway() -> u64 {
    30
}
fn default_session_token_ttl() -> u64 {
    3600
}

/// One trusted OpenID Connect issuer.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// A short name, used by bindings (`issuer = "corp"`) and in logs.
    pub name: String,
    /// The issuer URL, exactly as tokens carry it in `iss`.
    pub issuer: String,
    /// Accepted `aud` values: at least one (a token minted for another application must not
    /// open a database session).
    pub audience: Vec<String>,
    /// Where the signing keys are; found through discovery
    /// (`{issuer}/.well-known/openid-configuration`) if unset.
    pub jwks_uri: Option<String>,
    /// The claim that names the individual (`sub`, `email`, `preferred_username`, ...).
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// The claim holding the caller's groups; a dotted path such as `realm_access.roles` works.
    pub groups_claim: Option<String>,
    /// Signature algorithms accepted. Default: RS256/384/512, PS256/384/512, ES256/384, EdDSA.
    /// Symmetric (HS*) and `none` are never accepted.
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// The OAuth client `phigate login` uses (a public client with PKCE / device flow).
    pub client_id: Option<String>,
    /// Extra scopes `phigate login` asks for, besides `openid`.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Seconds between JWKS fetches for an unknown `kid` (a flood of made-up key ids cannot
    /// make the gateway hammer the IdP).
    #[serde(default = "default_jwks_min_refresh")]
    pub jwks_min_refresh_secs: u64,
    /// Keys are fetched again after this many seconds.
    #[serde(default = "default_jwks_max_age")]
    pub jwks_max_age_secs: u64,
    /// CA bundle for the IdP's HTTPS certificate; the Mozilla roots if unset.
    pub ca_file: Option<PathBuf>,
}

fn default_subject_claim() -> String {
    "sub".into()
}
fn default_jwks_min_refresh() -> u64 {
    10
}
fn default_jwks_max_age() -> u64 {
    3600
}

/// Failed logins are counted per source address (IPv6: per /64); past the limit, that address
/// is refused without a check until the window passes.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailedLogins {
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    #[serde(default = "default_failure_window")]
    pub window_secs: u64,
}

impl Default for FailedLogins {
    fn default() -> Self {
        FailedLogins {
            max_failures: default_max_failures(),
            window_secs: default_failure_window(),
        }
    }
}

fn default_max_failures() -> u32 {
    10
}
fn default_failure_window() -> u64 {
    60
}

/// Grants roles to identities. An identity may assume the roles of every binding it matches;
/// its default role is the first role of the first binding it matches.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BindingConfig {
    /// Roles granted, in order of preference.
    pub roles: Vec<String>,
    /// Matches identities in any of these groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Matches these individuals (the subject claim's value).
    #[serde(default)]
    pub subjects: Vec<String>,
    /// Only identities vouched for by this issuer: an `[[auth.oidc]]` name, or `development`
    /// for tokens from `phigate token mint`. Any issuer if unset.
    pub issuer: Option<String>,
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
        self.validate_auth(&policy)?;
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
            if !lower.starts_with("https://") && !crate::auth::is_loopback_url(&lower) {
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
                return Err(ConfigError::Invalid(format!(
                    "approvals: role {r} (break_glass_roles, elevation_roles) is not defined"
                )));
            }
        }
        for r in &self.audit.reader_roles {
            if policy.role(r).is_none() {
                return Err(ConfigError::Invalid(format!(
                    "audit.reader_roles: role {r} is not defined"
                )));
            }
        }
        self.recording.validate(self, &policy)?;
        if self.upstream.tls != UpstreamTlsMode::VerifyFull && self.upstream.ca_file.is_some() {
            return Err(ConfigError::Invalid(
                "upstream.ca_file is only used with tls = \"verify-full\"".into(),
            ));
        }
        Ok(())
    }
}

impl Config {
    /// Rejects any configuration that would let a caller in without an individual identity.
    fn validate_auth(&self, policy: &phigate_policy::Policy) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let mut names = std::collections::HashSet::new();
        for o in &self.auth.oidc {
            let reserved = [crate::auth::DEVELOPMENT_ISSUER, "static", "api-key"];
            if !names.insert(o.name.as_str()) || reserved.contains(&o.name.as_str()) {
                return invalid(format!(
                    "auth.oidc: the name {} is used twice or reserved",
                    o.name
                ));
            }
            if self
                .auth
                .oidc
                .iter()
                .filter(|x| x.issuer == o.issuer)
                .count()
                > 1
            {
                return invalid(format!(
                    "auth.oidc {}: the issuer {} is configured twice",
                    o.name, o.issuer
                ));
            }
            if self.auth.issuer.as_deref() == Some(o.issuer.as_str()) {
                return invalid(format!(
                    "auth.issuer equals the issuer of auth.oidc {}: gateway tokens would shadow it",
                    o.name
                ));
            }
            if o.audience.is_empty() || o.audience.iter().any(|a| a.trim().is_empty()) {
                return invalid(format!(
                    "auth.oidc {}: audience must name this gateway's audience; without it any token \
                     the issuer minted for any application would open a session",
                    o.name
                ));
            }
            if o.subject_claim.trim().is_empty() {
                return invalid(format!("auth.oidc {}: subject_claim is empty", o.name));
            }
            let insecure =
                |url: &str| url.starts_with("http://") && !crate::auth::is_loopback_url(url);
            if insecure(&o.issuer) || o.jwks_uri.as_deref().is_some_and(insecure) {
                return invalid(format!(
                    "auth.oidc {}: the issuer and JWKS must be https (plain http only on loopback)",
                    o.name
                ));
            }
            for alg in &o.algorithms {
                crate::auth::jwt::parse_algorithm(alg)
                    .map_err(|e| ConfigError::Invalid(format!("auth.oidc {}: {e}", o.name)))?;
            }
        }
        for (i, b) in self.bindings.iter().enumerate() {
            let n = i + 1;
            if b.roles.is_empty() {
                return invalid(format!("binding #{n}: roles is empty"));
            }
            if b.groups.is_empty() && b.subjects.is_empty() {
                return invalid(format!(
                    "binding #{n}: it names no groups and no subjects, so it would give roles {:?} \
                     to anyone who holds any token; name the groups or subjects it is for",
                    b.roles
                ));
            }
            for role in &b.roles {
                if policy.role(role).is_none() {
                    return invalid(format!(
                        "binding #{n}: role {role} is not defined (add a [[role]] named {role})"
                    ));
                }
            }
            if let Some(iss) = &b.issuer {
                let known = iss == crate::auth::DEVELOPMENT_ISSUER
                    || self.auth.oidc.iter().any(|o| &o.name == iss);
                if !known {
                    return invalid(format!(
                        "binding #{n}: issuer {iss} is not an [[auth.oidc]] name (nor `development`)"
                    ));
                }
            }
        }
        let mut hashes = std::collections::HashSet::new();
        for id in &self.identities {
            if !hashes.insert(id.token_sha256.to_ascii_lowercase()) {
                return invalid(format!(
                    "identity {}: its token is shared with another identity; every individual needs its own",
                    id.subject
                ));
            }
        }
        if self.auth.session_token_ttl_secs == 0 || self.auth.session_token_ttl_secs > 24 * 3600 {
            return invalid("auth.session_token_ttl_secs must be between 1 and 86400".into());
        }
        if self.auth.failed_logins.max_failures == 0 || self.auth.failed_logins.window_secs == 0 {
            return invalid(
                "auth.failed_logins: max_failures and window_secs must be at least 1".into(),
            );
        }
        if self.auth.leeway_secs > 300 {
            return invalid("auth.leeway_secs is at most 300 (a small clock skew)".into());
        }
        if let Some(o) = self.auth.oidc.iter().find(|o| o.jwks_min_refresh_secs == 0) {
            return invalid(format!(
                "auth.oidc {}: jwks_min_refresh_secs must be at least 1",
                o.name
            ));
        }
        if let Some(id) = self.identities.iter().find(|i| {
            i.subject.trim().is_empty()
                || i.subject.len() > 256
                || i.subject.chars().any(char::is_control)
        }) {
            return invalid(format!(
                "identity {:?}: a subject is 1 to 256 printable characters",
                id.subject
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
data_dir = "/var/lib/phigate"

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
        assert!(err.contains("line 10"), "{err}");
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
