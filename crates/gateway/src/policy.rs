//! The live policy: compiled from the config, swapped atomically on SIGHUP, plus the names of
//! the database's built-in functions (read once from its catalog).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use phigate_policy::Policy;
use tokio::sync::OnceCell;

use crate::session::upstream::UpstreamTarget;

pub struct PolicyStore {
    current: RwLock<Arc<Policy>>,
    version: AtomicU64,
    builtins: OnceCell<Arc<HashSet<String>>>,
}

impl PolicyStore {
    pub fn new(policy: Policy) -> Self {
        PolicyStore {
            current: RwLock::new(Arc::new(policy)),
            version: AtomicU64::new(1),
            builtins: OnceCell::new(),
        }
    }

    /// The current policy and its version.
    pub fn snapshot(&self) -> (Arc<Policy>, u64) {
        let policy = self
            .current
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|e| e.into_inner().clone());
        (policy, self.version.load(Ordering::Acquire))
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Installs a new policy (SIGHUP). Sessions pick it up when their transaction ends.
    pub fn replace(&self, policy: Policy) {
        let policy = match self.builtins.get() {
            Some(b) => policy.with_builtins(b.clone()),
            None => policy,
        };
        match self.current.write() {
            Ok(mut p) => *p = Arc::new(policy),
            Err(e) => *e.into_inner() = Arc::new(policy),
        }
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// Makes sure the built-in function names are known, reading them from the database on
    /// first use. Until that succeeds, restricted roles may call no function at all (fail
    /// closed); the next session tries again.
    pub async fn ensure_builtins(&self, upstream: &UpstreamTarget) {
        if self.builtins.initialized() {
            return;
        }
        let loaded = self
            .builtins
            .get_or_try_init(|| async {
                let names = upstream
                    .query_column(
                        "SELECT DISTINCT proname::text FROM pg_catalog.pg_proc \
                         WHERE pronamespace = 'pg_catalog'::regnamespace",
                    )
                    .await?;
                Ok::<_, crate::session::upstream::UpstreamError>(Arc::new(
                    names.into_iter().collect::<HashSet<_>>(),
                ))
            })
            .await;
        match loaded {
            Ok(builtins) => {
                tracing::info!(
                    functions = builtins.len(),
                    "loaded the database's built-in function names"
                );
                let policy = self
                    .snapshot()
                    .0
                    .as_ref()
                    .clone()
                    .with_builtins(builtins.clone());
                match self.current.write() {
                    Ok(mut p) => *p = Arc::new(policy),
                    Err(e) => *e.into_inner() = Arc::new(policy),
                }
                self.version.fetch_add(1, Ordering::AcqRel);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read built-in function names; restricted roles may call no functions")
            }
        }
    }
}
