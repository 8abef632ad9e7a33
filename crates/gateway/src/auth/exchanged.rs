//! ID tokens already exchanged for a gateway session token: each is exchanged once.
//!
//! A stolen ID token replayed to `POST /v1/auth/token` would otherwise mint session tokens
//! again and again. The SHA-256 of every exchanged token is kept until the token's own `exp`
//! (after that the token is refused anyway). The set is bounded; when it is full of unexpired
//! entries the exchange is refused ("busy", HTTP 503) rather than forgetting one, which would
//! make that token exchangeable again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use super::AuthError;

/// At most this many unexpired exchanged tokens are remembered.
pub const CAPACITY: usize = 100_000;

pub struct Exchanged {
    capacity: usize,
    seen: Mutex<HashMap<[u8; 32], SystemTime>>,
}

impl Default for Exchanged {
    fn default() -> Self {
        Exchanged::with_capacity(CAPACITY)
    }
}

impl Exchanged {
    pub fn with_capacity(capacity: usize) -> Exchanged {
        Exchanged {
            capacity,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Records the token (by its hash) as exchanged, valid until `expires`; refuses a token
    /// seen before, and any token while the set is full of unexpired entries.
    pub fn claim(&self, hash: [u8; 32], expires: SystemTime) -> Result<(), AuthError> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let now = SystemTime::now();
        if seen.get(&hash).is_some_and(|t| *t > now) {
            return Err(AuthError::AlreadyExchanged);
        }
        if seen.len() >= self.capacity {
            seen.retain(|_, t| *t > now);
            if seen.len() >= self.capacity {
                return Err(AuthError::ExchangeBusy);
            }
        }
        seen.insert(hash, expires);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn item8_each_token_is_exchanged_once_and_a_full_set_refuses() {
        let x = Exchanged::with_capacity(2);
        let later = SystemTime::now() + Duration::from_secs(60);
        let past = SystemTime::now() - Duration::from_secs(1);
        assert_eq!(x.claim([1; 32], later), Ok(()));
        assert_eq!(x.claim([1; 32], later), Err(AuthError::AlreadyExchanged));
        assert_eq!(x.claim([2; 32], later), Ok(()));
        // Full of unexpired entries: refused, nothing forgotten.
        assert_eq!(x.claim([3; 32], later), Err(AuthError::ExchangeBusy));
        assert_eq!(x.claim([1; 32], later), Err(AuthError::AlreadyExchanged));
        // Expired entries make room.
        let y = Exchanged::with_capacity(1);
        assert_eq!(y.claim([4; 32], past), Ok(()));
        assert_eq!(y.claim([5; 32], later), Ok(()));
    }
}
