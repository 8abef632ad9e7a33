//! Where reviews are kept: the [`ApprovalStore`] trait, and the embedded store (memory, with a
//! redacted history in `reviews.jsonl`).
//!
//! The trait is what a store shared by several gateways (a PostgreSQL control database) must
//! offer: reads, a compare-and-set write (`UPDATE ... WHERE id = $1 AND version = $2`), a
//! wake-up when any review changes (`NOTIFY`; only a hint: waiters re-read the review, and a
//! store that can miss one wakes them on a short poll as well), and the fingerprint grants.
//! Every method can fail (a network store is sometimes unreachable); callers fail closed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::{rfc3339, Review, Status};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// Who a `fingerprint` approval covers: the requester, in the same role, under the same rule,
/// for statements of the same shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GrantKey {
    /// The requester's issuer: a namesake at another issuer is not covered.
    pub issuer: String,
    pub subject: String,
    pub role: String,
    pub rule: String,
    pub fingerprint: String,
}

/// What a store's operations return: a network store answers later, the embedded one at once.
pub type StoreFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, StoreError>> + Send + 'a>>;

pub trait ApprovalStore: Send + Sync {
    /// Keeps a new review (its `version` 0).
    fn create<'a>(&'a self, review: &'a Review) -> StoreFuture<'a, ()>;
    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Review>>;
    /// Whether review `id` is still pending (`None`: no such review): what a held statement
    /// reads on every wake-up, without the review's text.
    fn pending<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<bool>> {
        Box::pin(async move { Ok(self.get(id).await?.map(|r| r.status == Status::Pending)) })
    }
    /// Pending reviews, or all recent ones with `all` (any order).
    fn list(&self, all: bool) -> StoreFuture<'_, Vec<Review>>;
    /// Compare-and-set: stores `next` in place of its review, with its version one more than
    /// `expected`, if the stored version is still `expected`; false (nothing stored) if another
    /// transition came first. Wakes the [`changes`](ApprovalStore::changes) watchers.
    fn swap<'a>(&'a self, expected: u64, next: &'a Review) -> StoreFuture<'a, bool>;
    /// Changes when any review changes: a wake-up hint for the sessions holding statements,
    /// which then re-read their review.
    fn changes(&self) -> watch::Receiver<u64>;
    /// How often a held statement's review is read again without a wake-up.
    fn recheck(&self) -> Duration {
        Duration::from_secs(1)
    }
    /// A `fingerprint` approval by review `review`, valid until `until`.
    fn grant<'a>(
        &'a self,
        key: &'a GrantKey,
        review: &'a str,
        until: SystemTime,
    ) -> StoreFuture<'a, ()>;
    /// The review and end of the latest grant for `key` (possibly run out).
    fn granted<'a>(&'a self, key: &'a GrantKey) -> StoreFuture<'a, Option<(String, SystemTime)>>;
    /// Pending reviews whose time has passed and that this node expires: all of them for a
    /// single node; in a cluster, access requests and this node's own held statements (by the
    /// control database's clock, so that a node whose clock runs fast cannot expire others').
    fn due(&self) -> StoreFuture<'_, Vec<Review>> {
        Box::pin(async move {
            let now = SystemTime::now();
            Ok(self
                .list(false)
                .await?
                .into_iter()
                .filter(|r| humantime::parse_rfc3339_weak(&r.expires_at).is_ok_and(|t| t < now))
                .collect())
        })
    }
    /// Reviews of statements held by nodes whose lease has lapsed, pending or approved and not
    /// run (a store shared by several nodes); none for a single node.
    fn orphaned(&self) -> StoreFuture<'_, Vec<Review>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }
    /// Shares an approved elevation with the other nodes (a single node grants it in memory
    /// only, and this does nothing).
    fn elevate<'a>(
        &'a self,
        _issuer: &'a str,
        _subject: &'a str,
        _role: &'a str,
        _review: &'a str,
        _until: SystemTime,
    ) -> StoreFuture<'a, ()> {
        Box::pin(std::future::ready(Ok(())))
    }
    /// Elevations shared by any node that have not run out: (issuer, subject, role, until).
    fn elevations(&self) -> StoreFuture<'_, Vec<(String, String, String, SystemTime)>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }
}

/// The embedded store: one gateway's reviews in memory.
pub struct MemoryStore {
    reviews: Mutex<HashMap<String, Review>>,
    grants: Mutex<HashMap<GrantKey, (String, SystemTime)>>,
    history: Option<PathBuf>,
    changes: watch::Sender<u64>,
    expired_at_start: usize,
}

impl MemoryStore {
    /// Opens the history in `data_dir` (if any); reviews left pending are recorded expired.
    pub fn open(data_dir: Option<&Path>) -> MemoryStore {
        let history = data_dir.map(|d| d.join("reviews.jsonl"));
        let expired_at_start = history.as_deref().map(expire_left_pending).unwrap_or(0);
        MemoryStore {
            reviews: Mutex::new(HashMap::new()),
            grants: Mutex::new(HashMap::new()),
            history,
            changes: watch::Sender::new(0),
            expired_at_start,
        }
    }

    /// Reviews that were pending when the gateway last stopped.
    pub fn expired_at_start(&self) -> usize {
        self.expired_at_start
    }

    fn record(&self, review: &Review) {
        if let Some(path) = &self.history {
            // Redacted: the history outlives the session; the text may carry PHI.
            let (text, _) = phigate_sql::redact_literals(&review.statement);
            append(
                path,
                &serde_json::json!({
                    "id": review.id, "status": review.status, "requester": review.requester,
                    "role": review.role, "rule": review.rule, "statement": text,
                    "decided_by": review.decided_by, "at": rfc3339(SystemTime::now()),
                }),
            );
        }
    }
}

impl MemoryStore {
    fn create_now(&self, review: &Review) -> Result<(), StoreError> {
        let mut m = self.reviews.lock().unwrap_or_else(|e| e.into_inner());
        self.record(review);
        // Decided reviews are kept for the API until the map grows large.
        if m.len() > 10_000 {
            m.retain(|_, r| r.status == Status::Pending);
        }
        let mut review = review.clone();
        review.version = 0;
        m.insert(review.id.clone(), review);
        drop(m);
        // Watchers (the console's live inbox) hear of new reviews as of transitions.
        self.changes.send_modify(|v| *v += 1);
        Ok(())
    }

    fn get_now(&self, id: &str) -> Result<Option<Review>, StoreError> {
        let m = self.reviews.lock().unwrap_or_else(|e| e.into_inner());
        Ok(m.get(id).cloned())
    }

    fn list_now(&self, all: bool) -> Result<Vec<Review>, StoreError> {
        let m = self.reviews.lock().unwrap_or_else(|e| e.into_inner());
        Ok(m.values()
            .filter(|r| all || r.status == Status::Pending)
            .cloned()
            .collect())
    }

    fn swap_now(&self, expected: u64, next: &Review) -> Result<bool, StoreError> {
        let mut m = self.reviews.lock().unwrap_or_else(|e| e.into_inner());
        let Some(current) = m.get_mut(&next.id) else {
            return Ok(false);
        };
        if current.version != expected {
            return Ok(false);
        }
        // The history has a line per status or approval, as the API shows them.
        if current.status != next.status || current.approvals.len() != next.approvals.len() {
            self.record(next);
        }
        *current = next.clone();
        current.version = expected + 1;
        drop(m);
        self.changes.send_modify(|v| *v += 1);
        Ok(true)
    }

    fn grant_now(&self, key: &GrantKey, review: &str, until: SystemTime) -> Result<(), StoreError> {
        let mut g = self.grants.lock().unwrap_or_else(|e| e.into_inner());
        let now = SystemTime::now();
        g.retain(|_, (_, t)| *t > now);
        g.insert(key.clone(), (review.to_owned(), until));
        Ok(())
    }

    fn granted_now(&self, key: &GrantKey) -> Result<Option<(String, SystemTime)>, StoreError> {
        let g = self.grants.lock().unwrap_or_else(|e| e.into_inner());
        Ok(g.get(key).cloned())
    }
}

impl ApprovalStore for MemoryStore {
    fn create<'a>(&'a self, review: &'a Review) -> StoreFuture<'a, ()> {
        Box::pin(std::future::ready(self.create_now(review)))
    }

    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Review>> {
        Box::pin(std::future::ready(self.get_now(id)))
    }

    fn list(&self, all: bool) -> StoreFuture<'_, Vec<Review>> {
        Box::pin(std::future::ready(self.list_now(all)))
    }

    fn swap<'a>(&'a self, expected: u64, next: &'a Review) -> StoreFuture<'a, bool> {
        Box::pin(std::future::ready(self.swap_now(expected, next)))
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn grant<'a>(
        &'a self,
        key: &'a GrantKey,
        review: &'a str,
        until: SystemTime,
    ) -> StoreFuture<'a, ()> {
        Box::pin(std::future::ready(self.grant_now(key, review, until)))
    }

    fn granted<'a>(&'a self, key: &'a GrantKey) -> StoreFuture<'a, Option<(String, SystemTime)>> {
        Box::pin(std::future::ready(self.granted_now(key)))
    }
}

/// Records `expired` every review the history at `path` leaves pending; returns how many.
fn expire_left_pending(path: &Path) -> usize {
    let Ok(text) = std::fs::read_to_string(path) else {
        return 0;
    };
    let mut status: HashMap<String, String> = HashMap::new();
    for line in text.lines() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
            if let (Some(id), Some(s)) = (v["id"].as_str(), v["status"].as_str()) {
                status.insert(id.to_owned(), s.to_owned());
            }
        }
    }
    let mut expired = 0;
    for (id, s) in status {
        if s == Status::Pending.as_str() {
            expired += 1;
            append(
                path,
                &serde_json::json!({"id": id, "status": Status::Expired, "reason": "the gateway stopped while it was pending", "at": rfc3339(SystemTime::now())}),
            );
        }
    }
    expired
}

fn append(path: &Path, v: &serde_json::Value) {
    use std::io::Write;
    let line = format!("{v}\n");
    let result = phigate_audit::private::options()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot record a review in the history");
    }
}
