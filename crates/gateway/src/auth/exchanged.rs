//! ID tokens already exchanged for a gateway session token: each is exchanged once.
//!
//! A stolen ID token replayed to `POST /v1/auth/token` would otherwise mint session tokens
//! again and again. The SHA-256 of every exchanged token is kept until the token's own `exp`
//! (after that the token is refused anyway). The set is bounded; when it is full of unexpired
//! entries the exchange is refused ("busy", HTTP 503) rather than forgetting one, which would
//! make that token exchangeable again. One individual may have at most [`PER_INDIVIDUAL`]
//! unexpired exchanges remembered: past that only they are refused (HTTP 429), so one person
//! minting ID tokens in a loop cannot fill the set for everyone.
//!
//! A token is known by its signed part (`header.payload`), not its whole text: an ECDSA
//! signature has two valid forms (`s` and `n − s`), so the same token could otherwise be
//! presented twice under different hashes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use super::AuthError;

/// At most this many unexpired exchanged tokens are remembered.
pub const CAPACITY: usize = 100_000;
/// Unexpired exchanges one individual may have remembered.
pub const PER_INDIVIDUAL: usize = 100;

pub struct Exchanged {
    capacity: usize,
    per_individual: usize,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// Token → (its expiry, whose it is).
    tokens: HashMap<[u8; 32], (SystemTime, [u8; 32])>,
    /// Individual → how many of `tokens` are theirs.
    by_individual: HashMap<[u8; 32], usize>,
}

impl Seen {
    fn forget_expired(&mut self, now: SystemTime) {
        let by_individual = &mut self.by_individual;
        self.tokens.retain(|_, (expires, who)| {
            let keep = *expires > now;
            if !keep {
                crate::counts::release(by_individual, who);
            }
            keep
        });
    }
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
            per_individual: PER_INDIVIDUAL.min(capacity),
            seen: Mutex::default(),
        }
    }

    /// Records the token (by the hash of its signed part) as exchanged by `individual` (a hash
    /// of issuer and subject), valid until `expires`; refuses a token seen before, an
    /// individual with [`PER_INDIVIDUAL`] unexpired exchanges, and any token while the set is
    /// full of unexpired entries.
    pub fn claim(
        &self,
        hash: [u8; 32],
        individual: [u8; 32],
        expires: SystemTime,
    ) -> Result<(), AuthError> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let now = SystemTime::now();
        if seen.tokens.get(&hash).is_some_and(|(t, _)| *t > now) {
            return Err(AuthError::AlreadyExchanged);
        }
        let theirs = |s: &Seen| s.by_individual.get(&individual).copied().unwrap_or(0);
        if seen.tokens.len() >= self.capacity || theirs(&seen) >= self.per_individual {
            seen.forget_expired(now);
            if theirs(&seen) >= self.per_individual {
                return Err(AuthError::ExchangeTooOften);
            }
            if seen.tokens.len() >= self.capacity {
                return Err(AuthError::ExchangeBusy);
            }
        }
        if let Some((_, who)) = seen.tokens.insert(hash, (expires, individual)) {
            // An expired entry for the same token, replaced: it no longer counts.
            crate::counts::release(&mut seen.by_individual, &who);
        }
        *seen.by_individual.entry(individual).or_default() += 1;
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
        let (a, b) = ([10; 32], [11; 32]);
        assert_eq!(x.claim([1; 32], a, later), Ok(()));
        assert_eq!(x.claim([1; 32], a, later), Err(AuthError::AlreadyExchanged));
        assert_eq!(x.claim([2; 32], b, later), Ok(()));
        // Full of unexpired entries: refused, nothing forgotten.
        assert_eq!(x.claim([3; 32], b, later), Err(AuthError::ExchangeBusy));
        assert_eq!(x.claim([1; 32], b, later), Err(AuthError::AlreadyExchanged));
        // Expired entries make room.
        let y = Exchanged::with_capacity(1);
        assert_eq!(y.claim([4; 32], a, past), Ok(()));
        assert_eq!(y.claim([5; 32], a, later), Ok(()));
    }

    #[test]
    fn one_individual_cannot_fill_the_set_for_everyone() {
        let x = Exchanged::with_capacity(1000);
        let later = SystemTime::now() + Duration::from_secs(60);
        let (greedy, other) = ([20; 32], [21; 32]);
        for n in 0..PER_INDIVIDUAL {
            let token = [[n as u8; 16], [1; 16]].concat();
            let token: [u8; 32] = token.try_into().expect("32 bytes");
            assert_eq!(x.claim(token, greedy, later), Ok(()), "exchange {n}");
        }
        assert_eq!(
            x.claim([99; 32], greedy, later),
            Err(AuthError::ExchangeTooOften)
        );
        assert_eq!(x.claim([98; 32], other, later), Ok(()));
    }
}
