//! The policy as written in the config file (`[[role]]`, `[[rule]]`). Every field is documented:
//! these doc comments become the published JSON schema.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::masking::{PhiType, Strategy};

/// A gateway role: what a session that assumes it may do. Identities are mapped to roles in the
/// `[[identity]]` tables; the startup `user` picks one.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    /// The role's name, used as the startup `user`.
    pub name: String,
    /// Restricted roles (the default) get the fail-closed guards: no `DO` blocks, no functions
    /// outside PostgreSQL's built-ins unless listed in `allow_functions`, no `SET ROLE` or
    /// settings outside a safe list, a pinned `search_path`, no statistics or activity views
    /// that leak data. Set `false` only for trusted human administrators.
    #[serde(default = "yes")]
    pub restricted: bool,
    /// Refuse every write, DDL, lock and privilege change.
    #[serde(default)]
    pub read_only: bool,
    /// The search_path the session runs with (pinned for restricted roles).
    #[serde(default = "default_search_path")]
    pub search_path: Vec<String>,
    /// Statement timeout applied in the database, e.g. `"30s"`, `"500ms"`, `"5min"`.
    pub statement_timeout: Option<String>,
    /// Idle sessions are closed after this long (HIPAA automatic logoff), e.g. `"15min"`;
    /// also a session idle inside an open transaction.
    pub idle_timeout: Option<String>,
    /// A transaction may last at most this long, e.g. `"10min"`: past it the session ends
    /// (FATAL 25P04) and the database rolls the transaction back.
    #[serde(default)]
    pub transaction_timeout: Option<String>,
    /// Sessions this role may hold at once, all identities together (default:
    /// `limits.sessions_per_role`). A masked role's database login gets it as its
    /// `CONNECTION LIMIT`. Further logins are refused with SQLSTATE 53300.
    #[serde(default)]
    pub max_sessions: Option<usize>,
    /// Functions this role may call although they are not built-ins or are on the deny list,
    /// e.g. `["public.refresh_report", "pg_cancel_backend"]`.
    #[serde(default)]
    pub allow_functions: Vec<String>,
    /// What the role may do to which relations.
    #[serde(default, rename = "grant")]
    pub grants: Vec<GrantConfig>,
    /// Sees PHI masked: every column tagged in `[[phi]]` reaches this role through a masking
    /// view in the database (docs/masking.md), with the default strategy of its type unless
    /// `masking` says otherwise. Masked roles must be restricted.
    #[serde(default)]
    pub masked: bool,
    /// Strategy per PHI type for this role, e.g. `{ ssn = "partial", date_of_birth = "null" }`.
    #[serde(default)]
    pub masking: BTreeMap<PhiType, Strategy>,
    /// For a masked role: statements that filter, join, sort or group on a PHI column that is
    /// not tokenized (`WHERE ssn LIKE '1%'`, `ORDER BY date_of_birth`) are refused (`deny`, the
    /// default), held (`require_approval`) or let through (`allow`: they then only compare
    /// masked values). Tokenized columns may always be joined and grouped on.
    #[serde(default = "deny_action")]
    pub phi_predicates: RuleAction,
    /// What a session recording keeps of this role's results (docs/recording.md): `none`,
    /// `shape` (columns, row counts, error codes) or `rows` (values as the client received
    /// them, up to a cap per result). Unset: `rows` for a masked role, `shape` otherwise. A
    /// role that sees unmasked PHI gets `rows` only with a recording key: then its recordings
    /// are encrypted.
    #[serde(default)]
    pub record: Option<RecordMode>,
}

/// How much of a session's results its recording keeps.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RecordMode {
    /// No recording for this role.
    None,
    /// Statements, timings, decisions, columns, row counts and error codes: no values.
    Shape,
    /// Also the rows and messages as the client received them, up to the per-result cap.
    Rows,
}

fn deny_action() -> RuleAction {
    RuleAction::Deny
}

fn yes() -> bool {
    true
}

fn default_search_path() -> Vec<String> {
    vec!["public".to_owned()]
}

/// Actions on relations of a schema.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantConfig {
    /// Schema name, or `"*"` for every schema.
    pub schema: String,
    /// Relation names in that schema, or `["*"]` (the default) for all of them.
    #[serde(default = "all")]
    pub tables: Vec<String>,
    /// `select`, `insert`, `update`, `delete`, `truncate`, `lock`, `ddl`, `privilege`,
    /// `maintenance`; `write` means insert + update + delete; `*` means everything.
    pub actions: Vec<String>,
}

fn all() -> Vec<String> {
    vec!["*".to_owned()]
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    /// Let the statement through without the grant checks (built-in guards still apply).
    Allow,
    /// Refuse it.
    Deny,
    /// Hold it for a reviewer (`[approvals]`); refused at once when approvals are off.
    RequireApproval,
}

/// A rule: matches statements by role, kind, relation and function. Rules are tried in order;
/// the first that matches decides. Every non-empty matcher must match.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Named in denials: `phigate: ... denied by rule NAME`.
    pub name: String,
    /// Roles it applies to; empty means every role.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Statement kinds: `select`, `insert`, `update`, `delete`, `merge`, `write` (any of those
    /// four), `truncate`, `destructive` (truncate, drop), `ddl`, `create`, `alter`, `drop`,
    /// `copy`, `explain`, `prepare`, `execute`, `cursor`, `do`, `call`, `set`, `show`,
    /// `transaction`, `listen`, `notify`, `privilege`, `lock`, `maintenance`, `session`, `other`.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Relations, `schema.name` or `name` (any schema), `*` wildcards allowed: `public.*`.
    #[serde(default)]
    pub relations: Vec<String>,
    /// Functions called, `name` or `schema.name`.
    #[serde(default)]
    pub functions: Vec<String>,
    pub action: RuleAction,
    /// Hint shown to the caller with the refusal: what to do instead.
    pub hint: Option<String>,
    /// For `require_approval`: who must approve, how many, how long the statement waits, and
    /// what an approval covers, e.g. `approval = { approvals = 2, reviewer_roles = ["dba"] }`.
    #[serde(default)]
    pub approval: ApprovalSettings,
}

/// How a `require_approval` rule's reviews are decided (docs/approvals.md).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApprovalSettings {
    /// Distinct reviewers who must approve (default 1). One denial ends the review.
    pub approvals: Option<u32>,
    /// Roles whose identities may decide these reviews; `approvals.reviewer_roles` if empty.
    #[serde(default)]
    pub reviewer_roles: Vec<String>,
    /// How long the statement waits; `approvals.timeout_secs` if unset.
    pub timeout_secs: Option<u64>,
    /// What an approval covers: this statement once (default), or its fingerprint (the same
    /// statement with any literals) for `scope_minutes`, for the same individual.
    #[serde(default)]
    pub scope: ApprovalScope,
    /// How long a `fingerprint` approval lasts (default 30, at most 1440).
    pub scope_minutes: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalScope {
    /// The held statement runs once.
    #[default]
    Once,
    /// The requester may run statements with the same fingerprint without another review
    /// for `scope_minutes`.
    Fingerprint,
}
