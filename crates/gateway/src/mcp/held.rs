//! Statements `execute` left held for review: each waits in its own internal session (which
//! runs it once, when approved), and is known here by its review id, bound to the individual
//! (issuer, subject) who sent it. `approval_wait` finds only its caller's own.
//!
//! Bounds: at most [`MAX_PER_IDENTITY`] executes per individual at once, held or still
//! running (each is also a session under the identity's and role's caps): a place is reserved
//! under the lock before the session opens and given back when the call ends without a hold;
//! at most [`MAX_ENTRIES`] entries and reservations in all; an entry is forgotten
//! [`KEEP_AFTER`] after its statement finished.

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
    book: Mutex<Book>,
}

#[derive(Default)]
struct Book {
    /// By review id.
    entries: HashMap<String, Entry>,
    /// Executes of each individual between their reservation and their answer.
    reserved: HashMap<(String, String), usize>,
    reserved_total: usize,
}

impl Book {
    fn release(&mut self, owner: &(String, String)) {
        if let Some(n) = self.reserved.get_mut(owner) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.reserved.remove(owner);
            }
            self.reserved_total = self.reserved_total.saturating_sub(1);
        }
    }
}

/// A place for one more execute of an individual, taken before its session opens; given
/// back on drop unless the execute became a held entry.
pub struct Reservation {
    held: Arc<Held>,
    owner: (String, String),
    live: bool,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.live {
            if let Ok(mut book) = self.held.book.lock() {
                book.release(&self.owner);
            }
        }
    }
}

fn owner(who: &Identity) -> (String, String) {
    (who.issuer.clone(), who.subject.0.clone())
}

impl Held {
    /// A place for `who`'s next execute, if fewer than [`MAX_PER_IDENTITY`] of its executes
    /// are held or in progress; recorded at once, under the lock, so parallel calls cannot all
    /// pass the count.
    pub fn reserve(self: &Arc<Self>, who: &Identity) -> Result<Reservation, String> {
        let owner = owner(who);
        let Ok(mut book) = self.book.lock() else {
            return Err("phigate: held statements are unavailable".into());
        };
        let held = book
            .entries
            .values()
            .filter(|e| e.owner == owner && e.done.borrow().is_none())
            .count();
        let waiting = held + book.reserved.get(&owner).copied().unwrap_or(0);
        if waiting >= MAX_PER_IDENTITY || book.entries.len() + book.reserved_total >= MAX_ENTRIES {
            return Err(format!(
                "phigate: {waiting} executes of yours are already in progress or waiting for \
                 review (at most {MAX_PER_IDENTITY}); wait for them with approval_wait"
            ));
        }
        *book.reserved.entry(owner.clone()).or_insert(0) += 1;
        book.reserved_total += 1;
        Ok(Reservation {
            held: self.clone(),
            owner,
            live: true,
        })
    }

    /// Keeps the held statement of review `id`; forgotten a while after it finished.
    pub fn insert(
        self: &Arc<Self>,
        mut r: Reservation,
        id: &str,
        done: watch::Receiver<Option<Finished>>,
    ) {
        if let Ok(mut book) = self.book.lock() {
            // The reservation becomes the entry, in one step under the lock.
            book.release(&r.owner);
            r.live = false;
            book.entries.insert(
                id.to_owned(),
                Entry {
                    owner: r.owner.clone(),
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
            if let Ok(mut book) = me.book.lock() {
                book.entries.remove(&id);
            }
        });
    }

    /// The outcome of review `id`, if `who` sent it.
    pub fn watch(&self, who: &Identity, id: &str) -> Option<watch::Receiver<Option<Finished>>> {
        let book = self.book.lock().ok()?;
        let e = book.entries.get(id)?;
        (e.owner == owner(who)).then(|| e.done.clone())
    }
}

/// Tool calls in progress, by the caller's individual and the JSON-RPC id of its request, so
/// the caller's `notifications/cancelled` can stop its own call (and so the statement in the
/// database). Two calls may share a key (two clients of one person using the same id): each
/// keeps its own entry, removed only by its own registration when it ends; a cancel of that
/// id stops every one of them (a stateless server cannot tell the clients apart). At most
/// [`MAX_ENTRIES`] entries at once; a call past that cannot be cancelled by notification
/// (closing its stream still stops it).
#[derive(Default)]
pub struct InFlight {
    calls: Mutex<Calls>,
}

type CallKey = (String, String, String);

#[derive(Default)]
struct Calls {
    by_key: HashMap<CallKey, Vec<(u64, tokio_util::sync::CancellationToken)>>,
    count: usize,
    next: u64,
}

/// A registered call: its token, and its own entry removed on drop.
pub struct Registered<'a> {
    owner: &'a InFlight,
    key: CallKey,
    serial: Option<u64>,
    pub token: tokio_util::sync::CancellationToken,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let Some(serial) = self.serial else { return };
        if let Ok(mut c) = self.owner.calls.lock() {
            let mut removed = 0;
            if let Some(v) = c.by_key.get_mut(&self.key) {
                let before = v.len();
                v.retain(|(s, _)| *s != serial);
                removed = before - v.len();
                if v.is_empty() {
                    c.by_key.remove(&self.key);
                }
            }
            c.count = c.count.saturating_sub(removed);
        }
    }
}

impl InFlight {
    /// Registers `who`'s call with request id `id` (its JSON text).
    pub fn register(&self, who: &Identity, id: String) -> Registered<'_> {
        let (issuer, subject) = owner(who);
        let key = (issuer, subject, id);
        let token = tokio_util::sync::CancellationToken::new();
        let mut serial = None;
        if let Ok(mut c) = self.calls.lock() {
            if c.count < MAX_ENTRIES {
                c.next += 1;
                let n = c.next;
                c.by_key
                    .entry(key.clone())
                    .or_default()
                    .push((n, token.clone()));
                c.count += 1;
                serial = Some(n);
            }
        }
        Registered {
            owner: self,
            key,
            serial,
            token,
        }
    }

    /// Cancels `who`'s calls with id `id`, if any is in progress.
    pub fn cancel(&self, who: &Identity, id: String) -> bool {
        let (issuer, subject) = owner(who);
        let tokens: Vec<_> = self
            .calls
            .lock()
            .ok()
            .and_then(|c| c.by_key.get(&(issuer, subject, id)).cloned())
            .unwrap_or_default();
        for (_, t) in &tokens {
            t.cancel();
        }
        !tokens.is_empty()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.calls.lock().map(|c| c.count).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(subject: &str) -> Identity {
        Identity {
            subject: crate::auth::Subject(subject.into()),
            role: crate::auth::RoleName("ai-agent".into()),
            groups: vec![],
            issuer: "development".into(),
            credential: crate::auth::Credential::ApiKey { id: "k".into() },
            expires_at: None,
        }
    }

    /// Reservations count at once: parallel executes cannot all pass the cap before any of
    /// them is held; one given back (its call ended without a hold) frees its place.
    #[test]
    fn reservations_count_before_anything_is_held() {
        let held = Arc::new(Held::default());
        let (a, b) = (who("a"), who("b"));
        let mut seats: Vec<Reservation> = (0..MAX_PER_IDENTITY)
            .map(|_| held.reserve(&a).expect("a place"))
            .collect();
        assert!(held.reserve(&a).is_err(), "a ninth place");
        assert!(held.reserve(&b).is_ok(), "another individual has its own");
        seats.pop();
        let seat = held.reserve(&a).expect("a place given back");
        drop(seats);
        drop(seat);
        let book = held.book.lock().expect("lock");
        assert_eq!((book.reserved.len(), book.reserved_total), (0, 0));
    }

    /// Two calls of one individual with the same request id: each keeps its entry, the end of
    /// one leaves the other's, and a cancel of that id reaches the call still running.
    #[test]
    fn calls_sharing_an_id_keep_their_own_entries() {
        let calls = InFlight::default();
        let a = who("a");
        let first = calls.register(&a, "7".into());
        let second = calls.register(&a, "7".into());
        assert_eq!(calls.len(), 2);
        drop(second);
        assert_eq!(calls.len(), 1);
        assert!(calls.cancel(&a, "7".into()));
        assert!(first.token.is_cancelled());
        assert!(!calls.cancel(&who("b"), "7".into()), "someone else's call");
        drop(first);
        assert_eq!(calls.len(), 0);
        assert!(!calls.cancel(&a, "7".into()));
    }
}
