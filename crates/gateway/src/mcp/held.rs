//! Statements `execute` left held for review: each waits in its own internal session (which
//! runs it once, when approved), and is known here by its review id, bound to the individual
//! (issuer, subject) who sent it. `approval_wait` finds only its caller's own.
//!
//! Bounds: at most [`MAX_PER_IDENTITY`] held executes per individual at once (each is also a
//! session under the identity's and role's caps), at most [`MAX_ENTRIES`] entries in all; an
//! entry is forgotten [`KEEP_AFTER`] after its statement finished.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::client::{CallError, Output};
use crate::auth::Identity;

pub const MAX_PER_IDENTITY: usize = 8;
pub const MAX_ENTRIES: usize = 10_000;
pub const KEEP_AFTER: Duration = Duration::from_secs(600);

/// How a held (or not held) statement ended.
#[derive(Debug, Clone)]
pub enum Finished {
    Completed { rows_affected: Option<u64> },
    Failed { message: String },
}

impl Finished {
    pub fn from_result(r: Result<Output, CallError>) -> Finished {
        match r {
            Ok(o) => Finished::Completed {
                rows_affected: o.rows_affected(),
            },
            Err(e) => Finished::Failed {
                message: e.to_string(),
            },
        }
    }
}

struct Entry {
    owner: (String, String),
    done: watch::Receiver<Option<Finished>>,
}

/// The held executes of this gateway.
#[derive(Default)]
pub struct Held {
    entries: Mutex<HashMap<String, Entry>>,
}

/// A place for one more held execute of an individual, taken before its session opens.
pub struct Reservation {
    owner: (String, String),
}

fn owner(who: &Identity) -> (String, String) {
    (who.issuer.clone(), who.subject.0.clone())
}

impl Held {
    /// A place for `who`'s next execute, if it has fewer than [`MAX_PER_IDENTITY`] waiting.
    pub fn reserve(&self, who: &Identity) -> Result<Reservation, String> {
        let owner = owner(who);
        let Ok(map) = self.entries.lock() else {
            return Err("phigate: held statements are unavailable".into());
        };
        let waiting = map
            .values()
            .filter(|e| e.owner == owner && e.done.borrow().is_none())
            .count();
        if waiting >= MAX_PER_IDENTITY || map.len() >= MAX_ENTRIES {
            return Err(format!(
                "phigate: {waiting} statements of yours are already waiting for review (at most \
                 {MAX_PER_IDENTITY}); wait for them with approval_wait"
            ));
        }
        Ok(Reservation { owner })
    }

    /// Keeps the held statement of review `id`; forgotten a while after it finished.
    pub fn insert(
        self: &Arc<Self>,
        r: Reservation,
        id: &str,
        done: watch::Receiver<Option<Finished>>,
    ) {
        if let Ok(mut map) = self.entries.lock() {
            map.insert(
                id.to_owned(),
                Entry {
                    owner: r.owner,
                    done: done.clone(),
                },
            );
        }
        let me = self.clone();
        let id = id.to_owned();
        let mut done = done;
        tokio::spawn(async move {
            while done.borrow().is_none() {
                if done.changed().await.is_err() {
                    break;
                }
            }
            tokio::time::sleep(KEEP_AFTER).await;
            if let Ok(mut map) = me.entries.lock() {
                map.remove(&id);
            }
        });
    }

    /// The outcome of review `id`, if `who` sent it.
    pub fn watch(&self, who: &Identity, id: &str) -> Option<watch::Receiver<Option<Finished>>> {
        let map = self.entries.lock().ok()?;
        let e = map.get(id)?;
        (e.owner == owner(who)).then(|| e.done.clone())
    }
}

/// Tool calls in progress, by the caller's individual and the JSON-RPC id of its request, so
/// the caller's `notifications/cancelled` can stop its own call (and so the statement in the
/// database). A call removes its entry when it ends; at most [`MAX_ENTRIES`] at once.
#[derive(Default)]
pub struct InFlight {
    calls: Mutex<HashMap<(String, String, String), tokio_util::sync::CancellationToken>>,
}

/// A registered call: its token, and its entry removed on drop.
pub struct Registered<'a> {
    owner: &'a InFlight,
    key: (String, String, String),
    pub token: tokio_util::sync::CancellationToken,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.owner.calls.lock() {
            m.remove(&self.key);
        }
    }
}

impl InFlight {
    /// Registers `who`'s call with request id `id` (its JSON text).
    pub fn register(&self, who: &Identity, id: String) -> Registered<'_> {
        let (issuer, subject) = owner(who);
        let key = (issuer, subject, id);
        let token = tokio_util::sync::CancellationToken::new();
        if let Ok(mut m) = self.calls.lock() {
            if m.len() < MAX_ENTRIES {
                m.insert(key.clone(), token.clone());
            }
        }
        Registered {
            owner: self,
            key,
            token,
        }
    }

    /// Cancels `who`'s call `id`, if it is in progress.
    pub fn cancel(&self, who: &Identity, id: String) -> bool {
        let (issuer, subject) = owner(who);
        let token = self
            .calls
            .lock()
            .ok()
            .and_then(|m| m.get(&(issuer, subject, id)).cloned());
        token.map(|t| t.cancel()).is_some()
    }
}
