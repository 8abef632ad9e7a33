//! The live policy: compiled from the config, swapped atomically on SIGHUP, plus what it needs
//! from the database's catalog: the names of the built-in functions (read once) and the views
//! with the relations under each (read at the first session and again after DDL).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use phigate_policy::Policy;
use phigate_sql::RelName;
use tokio::sync::OnceCell;

use crate::upstream::{UpstreamError, UpstreamTarget};

type Views = Arc<HashMap<RelName, Vec<RelName>>>;

pub struct PolicyStore {
    /// The policy as configured, before catalog knowledge is added.
    configured: Mutex<Policy>,
    current: RwLock<Arc<Policy>>,
    version: AtomicU64,
    builtins: OnceCell<Arc<HashSet<String>>>,
    views: Mutex<Views>,
    views_stale: AtomicBool,
    /// One catalog refresh at a time.
    refreshing: tokio::sync::Mutex<()>,
}

/// The built-in functions' names, and `operator <name>` for each operator name at least one of
/// whose definitions runs a built-in function (a name only user-defined functions implement,
/// such as an extension's or a `CREATE OPERATOR` over a SECURITY DEFINER function, is unknown).
const BUILTINS_SQL: &str = "SELECT DISTINCT proname::text FROM pg_catalog.pg_proc \
                            WHERE pronamespace = 'pg_catalog'::regnamespace \
                            UNION SELECT 'operator ' || o.oprname FROM pg_catalog.pg_operator o \
                            JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode GROUP BY o.oprname \
                            HAVING bool_or(p.pronamespace = 'pg_catalog'::regnamespace)";

/// Every view and materialized view outside the system schemas, with each relation its rewrite
/// rule depends on, as `schema<US>view<US>schema<US>relation`.
const VIEWS_SQL: &str = "SELECT DISTINCT vn.nspname || chr(31) || v.relname || chr(31) || tn.nspname || chr(31) || t.relname \
     FROM pg_catalog.pg_rewrite r \
     JOIN pg_catalog.pg_class v ON v.oid = r.ev_class \
     JOIN pg_catalog.pg_namespace vn ON vn.oid = v.relnamespace \
     JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid \
          AND d.refclassid = 'pg_catalog.pg_class'::regclass \
     JOIN pg_catalog.pg_class t ON t.oid = d.refobjid \
     JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace \
     WHERE v.relkind IN ('v', 'm') AND t.oid <> v.oid \
       AND vn.nspname NOT IN ('pg_catalog', 'information_schema')";

impl PolicyStore {
    pub fn new(policy: Policy) -> Self {
        PolicyStore {
            current: RwLock::new(Arc::new(policy.clone())),
            configured: Mutex::new(policy),
            version: AtomicU64::new(1),
            builtins: OnceCell::new(),
            views: Mutex::new(Views::default()),
            views_stale: AtomicBool::new(true),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// The current policy and its version.
    pub fn snapshot(&self) -> (Arc<Policy>, u64) {
        let policy = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        (policy, self.version.load(Ordering::Acquire))
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Installs a new policy (SIGHUP). Sessions pick it up when their transaction ends. The
    /// views are read again too.
    pub fn replace(&self, policy: Policy) {
        *lock(&self.configured) = policy;
        self.views_stale.store(true, Ordering::Release);
        self.publish();
    }

    /// A statement that may have created, changed or dropped a view went through.
    pub fn mark_views_stale(&self) {
        self.views_stale.store(true, Ordering::Release);
    }

    pub fn views_stale(&self) -> bool {
        self.views_stale.load(Ordering::Acquire)
    }

    /// Builds the current policy from the configured one and the catalog knowledge.
    fn publish(&self) {
        let mut policy = lock(&self.configured).clone();
        if let Some(b) = self.builtins.get() {
            policy = policy.with_builtins(b.clone());
        }
        policy = policy.with_views(lock(&self.views).clone());
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(policy);
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// Makes sure the catalog knowledge is there and current: built-in function names (once)
    /// and the views (when stale). Until the built-ins are known, restricted roles may call no
    /// function at all (fail closed); until the views are, a view is checked as a table.
    pub async fn ensure_catalog(&self, upstream: &UpstreamTarget) {
        if self.builtins.initialized() && !self.views_stale() {
            return;
        }
        let _one = self.refreshing.lock().await;
        let mut changed = false;
        if !self.builtins.initialized() {
            let loaded = self
                .builtins
                .get_or_try_init(|| async {
                    let names = upstream.query_column(BUILTINS_SQL).await?;
                    Ok::<_, UpstreamError>(Arc::new(names.into_iter().collect::<HashSet<_>>()))
                })
                .await;
            match loaded {
                Ok(b) => {
                    tracing::info!(
                        functions = b.len(),
                        "loaded the database's built-in function names"
                    );
                    changed = true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read built-in function names; restricted roles may call no functions")
                }
            }
        }
        if self.views_stale() {
            // Cleared only after a successful read: a refresh that fails or is cancelled
            // leaves the views stale, to be read again (fail closed, not "no views").
            match upstream.query_column(VIEWS_SQL).await {
                Ok(rows) => {
                    let views = parse_views(&rows);
                    tracing::debug!(views = views.len(), "loaded view dependencies");
                    *lock(&self.views) = Arc::new(views);
                    self.views_stale.store(false, Ordering::Release);
                    changed = true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read view dependencies");
                }
            }
        }
        if changed {
            self.publish();
        }
    }
}

/// The state behind a lock stays usable even if a thread panicked while holding it: every
/// update here replaces a whole value, so there is no half-written state to fear.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn parse_views(rows: &[String]) -> HashMap<RelName, Vec<RelName>> {
    let mut views: HashMap<RelName, Vec<RelName>> = HashMap::new();
    for row in rows {
        let parts: Vec<&str> = row.split('\u{1f}').collect();
        if let [vs, vn, ts, tn] = parts.as_slice() {
            let rel = |s: &str, n: &str| RelName {
                schema: Some(s.to_owned()),
                name: n.to_owned(),
            };
            views.entry(rel(vs, vn)).or_default().push(rel(ts, tn));
        }
    }
    views
}
