//! What the session holds by name: prepared statements, portals, and the effects of messages
//! on them.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use phigate_sql::Analysis;

/// A prepared statement as the session holds it: what it runs and under which policy it was
/// decided.
#[derive(Debug)]
pub struct Prepared {
    pub sql: Arc<str>,
    pub analysis: Arc<Analysis>,
    /// The policy version it was last decided under.
    version: AtomicU64,
    /// Executions an approval still covers (`u32::MAX`: not limited by an approval).
    uses: AtomicU32,
    /// The review that approved it, if it was held.
    pub review: Option<String>,
    /// What running it does to the session's names: a `PREPARE`, `DEALLOCATE` or
    /// `DISCARD ALL` sent with Parse takes effect when a portal of it is executed.
    pub effect: Option<Effect>,
    /// The name the database holds it by, when the statement cache prepared it under a name of
    /// its own (see [`super::cache`]); otherwise it is held as the client named it.
    upstream: OnceLock<Arc<str>>,
}

impl Prepared {
    pub fn new(sql: Arc<str>, analysis: Arc<Analysis>, version: u64) -> Arc<Prepared> {
        Prepared::with_effect(sql, analysis, version, None)
    }

    /// A statement whose execution changes the session's names (`effect`).
    pub fn with_effect(
        sql: Arc<str>,
        analysis: Arc<Analysis>,
        version: u64,
        effect: Option<Effect>,
    ) -> Arc<Prepared> {
        Prepared::make(sql, analysis, version, None, effect)
    }

    /// A statement a reviewer approved: it runs once.
    pub fn approved(
        sql: Arc<str>,
        analysis: Arc<Analysis>,
        version: u64,
        review: &str,
        effect: Option<Effect>,
    ) -> Arc<Prepared> {
        Prepared::make(sql, analysis, version, Some(review.to_owned()), effect)
    }

    fn make(
        sql: Arc<str>,
        analysis: Arc<Analysis>,
        version: u64,
        review: Option<String>,
        effect: Option<Effect>,
    ) -> Arc<Prepared> {
        Arc::new(Prepared {
            sql,
            analysis,
            version: AtomicU64::new(version),
            uses: AtomicU32::new(if review.is_some() { 1 } else { u32::MAX }),
            review,
            effect,
            upstream: OnceLock::new(),
        })
    }

    /// The name the statement cache prepared it under in the database, if it did.
    pub fn upstream(&self) -> Option<&Arc<str>> {
        self.upstream.get()
    }

    pub(super) fn set_upstream(&self, name: Arc<str>) {
        let _ = self.upstream.set(name);
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub fn set_version(&self, v: u64) {
        self.version.store(v, Ordering::Release);
    }

    /// Whether an approval limits its executions.
    pub fn one_shot(&self) -> bool {
        self.review.is_some()
    }

    /// Whether an approved statement has its execution left (unlimited ones always do).
    pub fn has_use(&self) -> bool {
        self.uses.load(Ordering::Acquire) > 0
    }

    /// Takes one execution of an approved statement; false when its approval is used up.
    /// Unlimited statements always succeed.
    pub fn take_use(&self) -> bool {
        self.uses
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| match n {
                u32::MAX => Some(u32::MAX),
                0 => None,
                n => Some(n - 1),
            })
            .is_ok()
    }
}

/// What a bound portal will run, for its Execute's audit record.
#[derive(Debug)]
pub struct Portal {
    pub statement: Arc<Prepared>,
    pub params: Vec<Option<phigate_audit::Param>>,
}

/// A change to the names the session holds, made by a message once the database confirms it.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Parse or SQL `PREPARE`: creates a named statement (refused by the database if the name
    /// exists) or replaces the unnamed one.
    Prepare {
        name: String,
        statement: Arc<Prepared>,
    },
    /// Close of a statement, or SQL `DEALLOCATE name`.
    Deallocate { name: String },
    /// SQL `DEALLOCATE ALL`.
    DeallocateAll,
    /// SQL `DISCARD ALL`: every prepared statement and portal.
    DiscardAll,
    /// Bind: creates a portal.
    Bind { portal: String, bound: Arc<Portal> },
    /// Close of a portal, or SQL `CLOSE name`.
    ClosePortal { name: String },
    /// SQL `CLOSE ALL`.
    CloseAllPortals,
}

impl Effect {
    /// The command tag by which the database confirms a SQL-level effect.
    pub(super) fn confirmed_by(&self, command: &str) -> bool {
        match self {
            Effect::Prepare { .. } => command == "PREPARE",
            Effect::Deallocate { .. } | Effect::DeallocateAll => command.starts_with("DEALLOCATE"),
            Effect::DiscardAll => command == "DISCARD ALL",
            // SQL cursors are portals too.
            Effect::Bind { .. } => command == "DECLARE CURSOR",
            Effect::ClosePortal { .. } => command == "CLOSE CURSOR",
            Effect::CloseAllPortals => command == "CLOSE CURSOR ALL",
        }
    }

    pub(super) fn names_statement(&self, name: &str) -> bool {
        match self {
            Effect::Prepare { name: n, .. } | Effect::Deallocate { name: n } => n == name,
            Effect::DeallocateAll | Effect::DiscardAll => true,
            Effect::Bind { .. } | Effect::ClosePortal { .. } | Effect::CloseAllPortals => false,
        }
    }
}

/// Prepared statements or portals, by name.
pub(super) struct Names<T> {
    pub(super) confirmed: HashMap<String, Arc<T>>,
    pub(super) projected: HashMap<String, Arc<T>>,
}

impl<T> Default for Names<T> {
    fn default() -> Self {
        Names {
            confirmed: HashMap::new(),
            projected: HashMap::new(),
        }
    }
}

/// Applies `ef`. `confirmed`: the database said it happened, which proves a name it created
/// was free (a statement or portal the gateway still knew by that name is gone); otherwise,
/// the projection of what a message will do: a Parse of a name that exists fails in the
/// database, so the existing statement stays; a Bind replaces whatever portal had the name
/// (if it fails, what follows it is skipped).
pub(super) fn apply(
    statements: &mut HashMap<String, Arc<Prepared>>,
    portals: &mut HashMap<String, Arc<Portal>>,
    ef: &Effect,
    confirmed: bool,
) {
    match ef {
        Effect::Prepare { name, statement } => {
            if confirmed || name.is_empty() || !statements.contains_key(name) {
                statements.insert(name.clone(), statement.clone());
            }
        }
        Effect::Deallocate { name } => {
            statements.remove(name);
        }
        // PostgreSQL drops the named statements; the unnamed one is not among them, unless the
        // statement cache holds it under a name of its own (then it went with the names).
        Effect::DeallocateAll => statements.retain(|n, p| unnamed_in_place(n, p)),
        Effect::DiscardAll => {
            statements.retain(|n, p| unnamed_in_place(n, p));
            portals.clear();
        }
        Effect::Bind { portal, bound } => {
            portals.insert(portal.clone(), bound.clone());
        }
        Effect::ClosePortal { name } => {
            portals.remove(name);
        }
        Effect::CloseAllPortals => portals.clear(),
    }
}

/// The unnamed statement as the database holds it (not under a cached name).
fn unnamed_in_place(name: &str, p: &Prepared) -> bool {
    name.is_empty() && p.upstream().is_none()
}

/// What a simple Query leaves behind: no unnamed statement, no unnamed portal.
pub(super) fn drop_unnamed(
    statements: &mut HashMap<String, Arc<Prepared>>,
    portals: &mut HashMap<String, Arc<Portal>>,
) {
    statements.remove("");
    portals.remove("");
}

/// A name as the refused-names set keeps it.
pub(super) fn name_hash(name: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    h.finish()
}
