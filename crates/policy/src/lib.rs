//! Policy: who may do what, decided from a statement's analysis. Pure: no IO, no clock, so it
//! is tested with tables of cases.
//!
//! [`Policy::decide`] looks at every statement of a message (one refusal refuses the whole
//! message) in this order: the config's rules (first match wins), the built-in guards (dangerous
//! functions, server-side COPY, and for restricted roles opaque code, role switching, unsafe
//! settings, unknown functions and catalog views that leak data), read-only, then the grants.

mod builtin;
/// Statement kinds a rule may name.
pub use builtin::KIND_NAMES;
pub mod detect;
pub use builtin::REASON_SETTING;
pub mod masking;
mod model;
pub mod shadow;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use phigate_sql::{Action, Analysis, FuncName, Kind, RelName, Statement};

pub use model::{
    ApprovalScope, ApprovalSettings, GrantConfig, RecordMode, RoleConfig, RuleAction, RuleConfig,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("role {0} is defined twice")]
    DuplicateRole(String),
    #[error("role {0} is masked, so it must be restricted (an unrestricted role could switch roles or run code the masking cannot see)")]
    MaskedUnrestricted(String),
    #[error("rule {rule}: unknown role {role}")]
    UnknownRole { rule: String, role: String },
    #[error("rule {rule}: unknown statement kind {kind}")]
    UnknownKind { rule: String, kind: String },
    #[error("role {role}: unknown action {action}")]
    UnknownAction { role: String, action: String },
    #[error("rule {rule}: approval: {why}")]
    BadApproval { rule: String, why: String },
    #[error(
        "role {role}: {field}: {value} is not a duration (use e.g. \"30s\", \"500ms\", \"15min\")"
    )]
    BadDuration {
        role: String,
        field: &'static str,
        value: String,
    },
}

/// What happens to a statement (or a whole message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(Refusal),
    RequireApproval(Refusal),
}

/// Why a statement is refused, in words for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub rule: String,
    /// `phigate: DELETE on public.patients denied by rule read-only`
    pub message: String,
    pub hint: String,
    /// For statements that do not parse: 42601 rather than 42501.
    pub sqlstate: &'static str,
    /// Byte position for syntax errors (1-based, characters).
    pub position: Option<usize>,
}

/// A role, compiled.
#[derive(Debug, Clone)]
pub struct Role {
    pub name: String,
    pub restricted: bool,
    pub read_only: bool,
    pub search_path: Vec<String>,
    pub statement_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub transaction_timeout_ms: Option<u64>,
    /// Sessions it may hold at once (`None`: the gateway's default).
    pub max_sessions: Option<usize>,
    allow_functions: HashSet<String>,
    grants: Vec<Grant>,
    /// Sees PHI through masking views.
    pub masked: bool,
    /// Strategy overrides per PHI type.
    pub masking: std::collections::BTreeMap<masking::PhiType, masking::Strategy>,
    /// What happens to predicates on non-tokenized PHI columns (masked roles).
    pub phi_predicates: RuleAction,
    /// What its session recordings keep.
    pub record: RecordMode,
}

#[derive(Debug, Clone)]
struct Grant {
    schema: String,
    tables: Vec<String>,
    actions: HashSet<&'static str>,
}

/// The policy, compiled from the config. Immutable; a reload builds a new one.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    roles: HashMap<String, Arc<Role>>,
    rules: Vec<RuleConfig>,
    /// Names of PostgreSQL's built-in functions (`pg_catalog`), from the database's catalog. A
    /// restricted role may call only these (and its `allow_functions`).
    builtins: Arc<HashSet<String>>,
    /// Views (and materialized views) and the relations their definitions read, from the
    /// database's catalog: reading a view counts as reading what is under it.
    views: Arc<HashMap<RelName, Vec<RelName>>>,
}

/// The actions a grant may name (besides `write` = insert, update, delete, and `*`/`all`).
pub const ACTIONS: [&str; 9] = [
    "select",
    "insert",
    "update",
    "delete",
    "truncate",
    "lock",
    "ddl",
    "privilege",
    "maintenance",
];

fn parse_duration(
    role: &str,
    field: &'static str,
    v: &Option<String>,
) -> Result<Option<u64>, PolicyError> {
    let Some(v) = v else { return Ok(None) };
    let bad = || PolicyError::BadDuration {
        role: role.to_owned(),
        field,
        value: v.clone(),
    };
    let t = v.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let ms = match unit.trim() {
        "ms" => n,
        "s" | "" => n * 1000,
        "min" | "m" => n * 60_000,
        "h" => n * 3_600_000,
        _ => return Err(bad()),
    };
    Ok(Some(ms))
}

impl Policy {
    pub fn new(roles: &[RoleConfig], rules: &[RuleConfig]) -> Result<Policy, PolicyError> {
        let mut map = HashMap::new();
        for r in roles {
            let mut grants = Vec::new();
            for g in &r.grants {
                let mut actions = HashSet::new();
                for a in &g.actions {
                    match a.as_str() {
                        "*" | "all" => actions.extend(ACTIONS),
                        "write" => actions.extend(["insert", "update", "delete"]),
                        other => match ACTIONS.iter().find(|x| **x == other) {
                            Some(x) => {
                                actions.insert(*x);
                            }
                            None => {
                                return Err(PolicyError::UnknownAction {
                                    role: r.name.clone(),
                                    action: other.to_owned(),
                                })
                            }
                        },
                    }
                }
                grants.push(Grant {
                    schema: g.schema.clone(),
                    tables: g.tables.clone(),
                    actions,
                });
            }
            let role = Role {
                name: r.name.clone(),
                restricted: r.restricted,
                read_only: r.read_only,
                search_path: r.search_path.clone(),
                statement_timeout_ms: parse_duration(
                    &r.name,
                    "statement_timeout",
                    &r.statement_timeout,
                )?,
                idle_timeout_ms: parse_duration(&r.name, "idle_timeout", &r.idle_timeout)?,
                transaction_timeout_ms: parse_duration(
                    &r.name,
                    "transaction_timeout",
                    &r.transaction_timeout,
                )?,
                max_sessions: r.max_sessions,
                allow_functions: r.allow_functions.iter().cloned().collect(),
                grants,
                masked: r.masked,
                masking: r.masking.clone(),
                phi_predicates: r.phi_predicates,
                record: r.record.unwrap_or(if r.masked {
                    RecordMode::Rows
                } else {
                    RecordMode::Shape
                }),
            };
            if r.masked && !r.restricted {
                return Err(PolicyError::MaskedUnrestricted(r.name.clone()));
            }
            if map.insert(r.name.clone(), Arc::new(role)).is_some() {
                return Err(PolicyError::DuplicateRole(r.name.clone()));
            }
        }
        for rule in rules {
            for role in &rule.roles {
                if !map.contains_key(role) {
                    return Err(PolicyError::UnknownRole {
                        rule: rule.name.clone(),
                        role: role.clone(),
                    });
                }
            }
            for kind in &rule.kinds {
                if !builtin::KIND_NAMES.contains(&kind.as_str()) {
                    return Err(PolicyError::UnknownKind {
                        rule: rule.name.clone(),
                        kind: kind.clone(),
                    });
                }
            }
            let bad = |why: &str| {
                Err(PolicyError::BadApproval {
                    rule: rule.name.clone(),
                    why: why.to_owned(),
                })
            };
            let a = &rule.approval;
            if rule.action != RuleAction::RequireApproval && *a != ApprovalSettings::default() {
                return bad("only rules with action = \"require_approval\" take approval settings");
            }
            if a.approvals.is_some_and(|n| !(1..=10).contains(&n)) {
                return bad("approvals is 1 to 10");
            }
            if a.scope_minutes.is_some_and(|m| !(1..=1440).contains(&m)) {
                return bad("scope_minutes is 1 to 1440");
            }
            if a.scope_minutes.is_some() && a.scope != ApprovalScope::Fingerprint {
                return bad("scope_minutes goes with scope = \"fingerprint\"");
            }
            if a.timeout_secs.is_some_and(|t| !(1..=86_400).contains(&t)) {
                return bad("timeout_secs is 1 to 86400");
            }
            for role in &a.reviewer_roles {
                if !map.contains_key(role) {
                    return Err(PolicyError::UnknownRole {
                        rule: rule.name.clone(),
                        role: role.clone(),
                    });
                }
            }
        }
        Ok(Policy {
            roles: map,
            rules: rules.to_vec(),
            builtins: Arc::default(),
            views: Arc::default(),
        })
    }

    /// Supplies the names of the database's built-in functions.
    pub fn with_builtins(mut self, builtins: Arc<HashSet<String>>) -> Policy {
        self.builtins = builtins;
        self
    }

    /// Whether `f` is one of the database's built-in functions (`name` or `pg_catalog.name`).
    pub fn is_builtin(&self, f: &phigate_sql::FuncName) -> bool {
        match f.schema.as_deref() {
            None | Some("pg_catalog") => self.builtins.contains(&f.name),
            Some(_) => false,
        }
    }

    /// Supplies the views of the database and the relations under each.
    pub fn with_views(mut self, views: Arc<HashMap<RelName, Vec<RelName>>>) -> Policy {
        self.views = views;
        self
    }

    /// The rule named `name` (a refusal names its rule).
    pub fn rule(&self, name: &str) -> Option<&RuleConfig> {
        self.rules.iter().find(|r| r.name == name)
    }

    /// Every role that may decide some review: the rules' own reviewer roles.
    pub fn rule_reviewer_roles(&self) -> impl Iterator<Item = &str> {
        self.rules
            .iter()
            .flat_map(|r| r.approval.reviewer_roles.iter().map(String::as_str))
    }

    /// Every role's name.
    pub fn role_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.roles.keys().cloned().collect();
        names.sort();
        names
    }

    pub fn role(&self, name: &str) -> Option<Arc<Role>> {
        self.roles.get(name).cloned()
    }

    /// Decides a whole message: the first refusal (deny before approval) wins.
    pub fn decide(&self, role: &Role, analysis: &Analysis, search_path: &[String]) -> Decision {
        let stmts =
            match analysis {
                Analysis::Invalid { message, position } => return Decision::Deny(Refusal {
                    rule: "syntax".into(),
                    message: format!("phigate: {message}"),
                    hint:
                        "The statement does not parse; phigate only forwards what it can analyse."
                            .into(),
                    sqlstate: phigate_wire::sqlstate::SYNTAX_ERROR,
                    position: *position,
                }),
                Analysis::Parsed(stmts) => stmts,
            };
        let mut approval = None;
        for st in stmts {
            match self.decide_statement(role, st, search_path) {
                Decision::Allow => {}
                d @ Decision::Deny(_) => return d,
                d @ Decision::RequireApproval(_) => {
                    approval.get_or_insert(d);
                }
            }
        }
        approval.unwrap_or(Decision::Allow)
    }

    /// Decides one statement.
    pub fn decide_statement(
        &self,
        role: &Role,
        st: &Statement,
        search_path: &[String],
    ) -> Decision {
        let mut resolved: Vec<(RelName, Action)> = st
            .accesses
            .iter()
            .map(|a| (resolve(&a.relation, role, search_path), a.action))
            .collect();
        self.expand_views(&mut resolved);
        for rule in &self.rules {
            if self.rule_matches(rule, role, st, &resolved) {
                let what = describe(st, &resolved);
                let hint = rule.hint.clone().unwrap_or_default();
                return match rule.action {
                    RuleAction::Allow => self.guards(role, st, &resolved).unwrap_or(Decision::Allow),
                    RuleAction::Deny => deny(&rule.name, format!("phigate: {what} denied by rule {}", rule.name), or(hint, "Ask an administrator if you need this.")),
                    // What the built-in guards refuse, no reviewer can approve: deny it now.
                    RuleAction::RequireApproval => self.guards(role, st, &resolved).unwrap_or_else(|| Decision::RequireApproval(Refusal {
                        rule: rule.name.clone(),
                        message: format!("phigate: {what} requires approval by rule {}", rule.name),
                        hint: or(hint, "A reviewer must approve this statement (it is refused at once where approvals are off)."),
                        sqlstate: phigate_wire::sqlstate::INSUFFICIENT_PRIVILEGE,
                        position: None,
                    })),
                };
            }
        }
        if let Some(d) = self.guards(role, st, &resolved) {
            return d;
        }
        if role.read_only {
            if let Some((rel, action)) = resolved.iter().find(|(_, a)| a.is_write()) {
                return deny(
                    "read-only",
                    format!(
                        "phigate: {} on {rel} denied by rule read-only",
                        action.as_str().to_uppercase()
                    ),
                    format!("Role {} is read-only.", role.name),
                );
            }
            if is_write_kind(&st.kind) {
                return deny(
                    "read-only",
                    format!(
                        "phigate: {} denied by rule read-only",
                        st.kind.label().to_uppercase()
                    ),
                    format!("Role {} is read-only.", role.name),
                );
            }
        }
        self.grants_check(role, st, &resolved)
    }

    /// Adds, for every view the statement reads or writes through, the relations under it
    /// (transitively), with the same action: a view is a window, and what is behind it must be
    /// granted too. DDL on a view concerns the view alone.
    fn expand_views(&self, resolved: &mut Vec<(RelName, Action)>) {
        if self.views.is_empty() {
            return;
        }
        let mut i = 0;
        let mut seen: HashSet<(RelName, Action)> = resolved.iter().cloned().collect();
        while i < resolved.len() {
            let (rel, action) = resolved[i].clone();
            i += 1;
            if action == Action::Ddl {
                continue;
            }
            if let Some(bases) = self.views.get(&rel) {
                for base in bases {
                    if seen.insert((base.clone(), action)) {
                        resolved.push((base.clone(), action));
                    }
                }
            }
        }
    }

    fn rule_matches(
        &self,
        rule: &RuleConfig,
        role: &Role,
        st: &Statement,
        resolved: &[(RelName, Action)],
    ) -> bool {
        if !rule.roles.is_empty() && !rule.roles.contains(&role.name) {
            return false;
        }
        if !rule.kinds.is_empty() {
            let mut names: Vec<&str> = st.kind.names().to_vec();
            if let Some(inner) = &st.inner {
                names.extend(inner.kind.names());
            }
            // A write hidden in a CTE makes the statement a write too.
            for (_, a) in resolved {
                match a {
                    Action::Insert => names.extend(["insert", "write"]),
                    Action::Update => names.extend(["update", "write"]),
                    Action::Delete => names.extend(["delete", "write"]),
                    Action::Truncate => names.extend(["truncate", "write", "destructive"]),
                    Action::Ddl => names.push("ddl"),
                    Action::Lock => names.push("lock"),
                    Action::Select => {}
                }
            }
            if !rule.kinds.iter().any(|k| names.contains(&k.as_str())) {
                return false;
            }
        }
        if !rule.relations.is_empty()
            && !resolved
                .iter()
                .any(|(rel, _)| rule.relations.iter().any(|p| relation_matches(p, rel)))
        {
            return false;
        }
        if !rule.functions.is_empty()
            && !st
                .functions
                .iter()
                .any(|f| rule.functions.iter().any(|p| function_matches(p, f)))
        {
            return false;
        }
        true
    }

    fn grants_check(
        &self,
        role: &Role,
        st: &Statement,
        resolved: &[(RelName, Action)],
    ) -> Decision {
        for (rel, action) in resolved {
            if *action == Action::Select && builtin::is_catalog(rel) {
                continue; // catalog reads (psql \d, drivers' metadata); leaks handled above
            }
            if !role.grants.iter().any(|g| g.covers(rel, action.as_str())) {
                return deny(
                    "grants",
                    format!(
                        "phigate: {} on {rel} denied by rule grants",
                        action.as_str().to_uppercase()
                    ),
                    format!(
                        "Role {} has no {} grant on {rel}.",
                        role.name,
                        action.as_str()
                    ),
                );
            }
        }
        // Statements whose targets are not relations: they need the action itself.
        let needed = match &st.kind {
            Kind::Ddl(_) if !resolved.iter().any(|(_, a)| *a == Action::Ddl) => Some("ddl"),
            Kind::Privilege => Some("privilege"),
            Kind::Maintenance if resolved.is_empty() => Some("maintenance"),
            Kind::Other(_) => Some("ddl"),
            Kind::Call | Kind::Do => Some("ddl"),
            _ => None,
        };
        if let Some(action) = needed {
            if !role.grants.iter().any(|g| g.actions.contains(action)) {
                return deny(
                    "grants",
                    format!(
                        "phigate: {} denied by rule grants",
                        st.kind.label().to_uppercase()
                    ),
                    format!("Role {} has no {action} grant.", role.name),
                );
            }
        }
        Decision::Allow
    }
}

impl Role {
    /// Whether a grant of this role covers `action` (`select`, `insert`, ...) on
    /// `schema.table` (the grant check alone: rules and guards still decide each statement).
    pub fn grants(&self, schema: &str, table: &str, action: &str) -> bool {
        let rel = RelName {
            schema: Some(schema.to_owned()),
            name: table.to_owned(),
        };
        self.grants.iter().any(|g| g.covers(&rel, action))
    }

    /// Whether any grant lets the role change something (any action but `select`).
    pub fn may_change(&self) -> bool {
        !self.read_only
            && self
                .grants
                .iter()
                .any(|g| g.actions.iter().any(|a| *a != "select"))
    }
}

impl Policy {
    /// Whether a `require_approval` rule applies to `role` (something it sends may be held).
    pub fn holds_for(&self, role: &str) -> bool {
        self.rules.iter().any(|r| {
            r.action == RuleAction::RequireApproval
                && (r.roles.is_empty() || r.roles.iter().any(|n| n == role))
        })
    }
}

impl Grant {
    fn covers(&self, rel: &RelName, action: &str) -> bool {
        let schema_ok = self.schema == "*" || Some(&self.schema) == rel.schema.as_ref();
        schema_ok
            && self.actions.contains(action)
            && self.tables.iter().any(|t| t == "*" || *t == rel.name)
    }
}

fn or(s: String, default: &str) -> String {
    if s.is_empty() {
        default.to_owned()
    } else {
        s
    }
}

fn deny(rule: &str, message: String, hint: String) -> Decision {
    Decision::Deny(Refusal {
        rule: rule.to_owned(),
        message,
        hint,
        sqlstate: phigate_wire::sqlstate::INSUFFICIENT_PRIVILEGE,
        position: None,
    })
}

fn is_write_kind(kind: &Kind) -> bool {
    matches!(
        kind,
        Kind::Insert
            | Kind::Update
            | Kind::Delete
            | Kind::Merge
            | Kind::Truncate
            | Kind::Ddl(_)
            | Kind::Privilege
            | Kind::Lock
            | Kind::Maintenance
            | Kind::Call
            | Kind::Do
            | Kind::Other(_)
    )
}

/// "SELECT on public.patients" / "DELETE" — how a refusal names the statement.
fn describe(st: &Statement, resolved: &[(RelName, Action)]) -> String {
    let kind = st
        .inner
        .as_ref()
        .map(|i| &i.kind)
        .unwrap_or(&st.kind)
        .label()
        .to_uppercase();
    match resolved
        .iter()
        .find(|(_, a)| a.is_write())
        .or(resolved.first())
    {
        Some((rel, _)) => format!("{kind} on {rel}"),
        None => kind,
    }
}

/// Resolves an unqualified relation name. Restricted roles run with a pinned search_path; for
/// others the session's tracked one applies. PostgreSQL searches `pg_catalog` first, so the
/// names of catalog relations resolve there; any other name, `pg_`-prefixed or not, is looked
/// up in the search_path (`public.pg_notes` is a user table).
pub fn resolve(rel: &RelName, role: &Role, search_path: &[String]) -> RelName {
    if rel.schema.is_some() {
        return rel.clone();
    }
    if builtin::is_catalog_name(&rel.name) {
        return RelName {
            schema: Some("pg_catalog".into()),
            name: rel.name.clone(),
        };
    }
    let path = if role.restricted || search_path.is_empty() {
        &role.search_path
    } else {
        search_path
    };
    let schema = path
        .iter()
        .find(|s| s.as_str() != "$user" && s.as_str() != "pg_catalog")
        .cloned()
        .unwrap_or_else(|| "public".into());
    RelName {
        schema: Some(schema),
        name: rel.name.clone(),
    }
}

fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((pre, post)) => {
            text.len() >= pre.len() + post.len() && text.starts_with(pre) && text.ends_with(post)
        }
    }
}

fn relation_matches(pattern: &str, rel: &RelName) -> bool {
    match pattern.split_once('.') {
        Some((schema, name)) => {
            rel.schema.as_deref().is_some_and(|s| glob(schema, s)) && glob(name, &rel.name)
        }
        None => glob(pattern, &rel.name),
    }
}

fn function_matches(pattern: &str, f: &FuncName) -> bool {
    match pattern.split_once('.') {
        Some((schema, name)) => {
            f.schema.as_deref().unwrap_or("pg_catalog") == schema && glob(name, &f.name)
        }
        None => glob(pattern, &f.name),
    }
}

mod guards;

#[cfg(test)]
mod tests;
