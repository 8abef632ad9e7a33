//! Console sessions, kept on the server: the browser holds only a random 256-bit id in a
//! cookie; the store keys sessions by the id's SHA-256, so a copy of the store's memory gives
//! no usable cookie. A session exists only once signed in, under a fresh id (a sign-in in
//! flight lives in the browser, sealed: [`super::pending`]).
//!
//! Bounds: at most `console.max_sessions` sessions, at most [`MAX_PER_IDENTITY`] per
//! individual; a session ends after `console.idle_timeout_secs` without a request (HIPAA
//! automatic logoff) and after `console.absolute_timeout_secs` (or its gateway token's expiry)
//! in any case. Expired sessions are swept whenever a new one is made.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// A session id or CSRF token: 32 random bytes, base64url.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// Signed-in sessions one individual may hold at once (browsers, tabs signed in anew): the
/// next sign-in ends its oldest, so no identity can fill the store and lock reviewers out.
pub const MAX_PER_IDENTITY: usize = 8;

/// Who signed in, and the gateway session token minted for them: every page authorizes with
/// that token exactly as the HTTP API does.
#[derive(Clone)]
pub struct SignedIn {
    pub subject: String,
    /// The `[[auth.oidc]]` name, or `development`.
    pub issuer: String,
    pub groups: Vec<String>,
    pub token: String,
}

#[derive(Clone)]
pub enum State {
    SignedIn(SignedIn),
}

#[derive(Clone)]
pub struct Session {
    pub csrf: String,
    pub state: State,
    last_seen: Instant,
    /// The hard end: the absolute limit, or the token's expiry if sooner.
    ends: Instant,
}

#[derive(Debug, thiserror::Error)]
#[error("too many console sessions at once (console.max_sessions); try again later")]
pub struct Full;

pub struct Store {
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    max: usize,
    idle: Duration,
    absolute: Duration,
}

impl Store {
    pub fn new(max: usize, idle: Duration, absolute: Duration) -> Store {
        Store {
            sessions: Mutex::new(HashMap::new()),
            max: max.max(1),
            idle,
            absolute,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn alive(&self, s: &Session, now: Instant) -> bool {
        now < s.ends && now.duration_since(s.last_seen) < self.idle
    }

    /// Stores `state` under a new id and returns the id. `until` caps the session's life
    /// (the gateway token's expiry).
    pub fn create(&self, state: State, until: Option<SystemTime>) -> Result<String, Full> {
        let now = Instant::now();
        let mut ends = now + self.absolute;
        if let Some(left) = until.and_then(|u| u.duration_since(SystemTime::now()).ok()) {
            ends = ends.min(now + left);
        } else if until.is_some() {
            ends = now;
        }
        let mut map = self.lock();
        if map.len() >= self.max {
            map.retain(|_, s| self.alive(s, now));
        }
        let State::SignedIn(who) = &state;
        make_room(&mut map, MAX_PER_IDENTITY, |s| {
            let State::SignedIn(o) = &s.state;
            o.issuer == who.issuer && o.subject == who.subject
        });
        if map.len() >= self.max {
            return Err(Full);
        }
        let id = random_token();
        map.insert(
            key(&id),
            Session {
                csrf: random_token(),
                state,
                last_seen: now,
                ends,
            },
        );
        Ok(id)
    }

    /// The session of cookie `id`, if it is alive (its idle clock restarts); an expired one
    /// is removed.
    pub fn touch(&self, id: &str) -> Option<Session> {
        let now = Instant::now();
        let k = key(id);
        let mut map = self.lock();
        let alive = map.get(&k).map(|s| self.alive(s, now))?;
        if !alive {
            map.remove(&k);
            return None;
        }
        let s = map.get_mut(&k)?;
        s.last_seen = now;
        Some(s.clone())
    }

    /// Like [`Store::touch`], but the idle clock goes on: for requests the browser makes on
    /// its own (the live inbox), which are no sign of a person at the keyboard.
    pub fn peek(&self, id: &str) -> Option<Session> {
        let now = Instant::now();
        let k = key(id);
        let mut map = self.lock();
        let alive = map.get(&k).map(|s| self.alive(s, now))?;
        if !alive {
            map.remove(&k);
            return None;
        }
        map.get(&k).cloned()
    }

    /// Removes the session of cookie `id` (logout, or sign-in done: the caller stores the
    /// signed-in state under a new id).
    pub fn remove(&self, id: &str) -> Option<Session> {
        self.lock().remove(&key(id))
    }

    pub fn idle(&self) -> Duration {
        self.idle
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Removes the least recently seen of the sessions `of` picks until fewer than `cap` remain.
fn make_room(map: &mut HashMap<[u8; 32], Session>, cap: usize, of: impl Fn(&Session) -> bool) {
    let mut mine: Vec<([u8; 32], Instant)> = map
        .iter()
        .filter(|(_, s)| of(s))
        .map(|(k, s)| (*k, s.last_seen))
        .collect();
    if mine.len() < cap {
        return;
    }
    mine.sort_by_key(|(_, seen)| *seen);
    for (k, _) in mine.iter().take(mine.len() + 1 - cap) {
        map.remove(k);
    }
}

/// Constant-time comparison of a submitted CSRF token with the session's.
pub fn csrf_ok(session: &Session, submitted: &str) -> bool {
    use subtle::ConstantTimeEq;
    session.csrf.len() == submitted.len()
        && bool::from(session.csrf.as_bytes().ct_eq(submitted.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed_in() -> State {
        State::SignedIn(SignedIn {
            subject: "a".into(),
            issuer: "development".into(),
            groups: vec![],
            token: "t".into(),
        })
    }

    fn signed_in_as(subject: &str) -> State {
        State::SignedIn(SignedIn {
            subject: subject.into(),
            issuer: "development".into(),
            groups: vec![],
            token: "t".into(),
        })
    }

    #[test]
    fn one_identity_cannot_fill_the_store() {
        let store = Store::new(100, Duration::from_secs(60), Duration::from_secs(600));
        let reviewer = store.create(signed_in_as("reviewer"), None).expect("room");
        let mut mine = Vec::new();
        for _ in 0..1000 {
            mine.push(store.create(signed_in_as("agent"), None).expect("room"));
        }
        assert!(store.len() <= 1 + MAX_PER_IDENTITY);
        // The agent's newest sessions live, its oldest were ended; nobody else's were.
        assert!(store.touch(&mine[0]).is_none());
        assert!(store.touch(mine.last().expect("one")).is_some());
        assert!(store.touch(&reviewer).is_some());
    }

    #[test]
    fn ids_are_random_and_stored_hashed() {
        let store = Store::new(10, Duration::from_secs(60), Duration::from_secs(600));
        let a = store.create(signed_in(), None).expect("room");
        let b = store.create(signed_in(), None).expect("room");
        assert_ne!(a, b);
        assert_eq!(URL_SAFE_NO_PAD.decode(&a).expect("b64").len(), 32);
        assert!(store.lock().keys().all(|k| k != a.as_bytes()));
        assert!(store.touch(&a).is_some());
        assert!(store.touch("forged").is_none());
        store.remove(&a);
        assert!(store.touch(&a).is_none());
    }

    #[test]
    fn the_store_is_bounded_and_idle_sessions_end() {
        let store = Store::new(2, Duration::ZERO, Duration::from_secs(600));
        let a = store.create(signed_in(), None).expect("room");
        // Idle limit zero: already expired, swept to make room.
        assert!(store.touch(&a).is_none());
        store.create(signed_in(), None).expect("room");
        store.create(signed_in(), None).expect("room");
        assert_eq!(store.len(), 2);
        let full = Store::new(1, Duration::from_secs(60), Duration::from_secs(600));
        full.create(signed_in(), None).expect("room");
        assert!(full.create(signed_in(), None).is_err());
    }

    #[test]
    fn a_session_never_outlives_its_token() {
        let store = Store::new(2, Duration::from_secs(60), Duration::from_secs(600));
        let past = SystemTime::now() - Duration::from_secs(1);
        let a = store.create(signed_in(), Some(past)).expect("room");
        assert!(store.touch(&a).is_none());
    }

    #[test]
    fn csrf_tokens_compare_exactly() {
        let store = Store::new(2, Duration::from_secs(60), Duration::from_secs(600));
        let a = store.create(signed_in(), None).expect("room");
        let s = store.touch(&a).expect("alive");
        let good = s.csrf.clone();
        assert!(csrf_ok(&s, &good));
        assert!(!csrf_ok(&s, ""));
        assert!(!csrf_ok(&s, &good[1..]));
    }
}
