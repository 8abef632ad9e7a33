//! A sign-in in flight lives in the browser, not on the server: the PKCE verifier, nonce,
//! state and method of one authorization request, sealed (AES-256-GCM under a key of this
//! process) in a short-lived cookie. Starting sign-ins therefore holds no server memory, and
//! no flood of started sign-ins — from one address or many — can push out anyone else's.
//! A cookie expires after [`SIGN_IN_TIMEOUT`]; a restart of the gateway voids the ones in
//! flight (their key is gone).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// How long a browser has to come back from the identity provider.
pub const SIGN_IN_TIMEOUT: Duration = Duration::from_secs(600);

/// Largest sealed cookie accepted (a browser keeps about 4 KB per cookie anyway).
const MAX_SEALED: usize = 2048;

/// One authorization request in flight.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Pending {
    /// The sign-in method's name.
    pub method: String,
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
    /// Seconds since the Unix epoch after which the cookie is refused.
    pub expires: u64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Pending {
    pub fn new(method: String, state: String, nonce: String, pkce_verifier: String) -> Pending {
        Pending {
            method,
            state,
            nonce,
            pkce_verifier,
            expires: now() + SIGN_IN_TIMEOUT.as_secs(),
        }
    }
}

pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl Sealer {
    /// A sealer with a fresh random key; `None` only if the system has no randomness.
    pub fn new() -> Option<Sealer> {
        let rng = SystemRandom::new();
        let mut key = [0u8; 32];
        rng.fill(&mut key).ok()?;
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).ok()?);
        Some(Sealer { key, rng })
    }

    /// The cookie value: base64url(nonce || ciphertext || tag).
    pub fn seal(&self, p: &Pending) -> Option<String> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut data = serde_json::to_vec(p).ok()?;
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
            .ok()?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Some(URL_SAFE_NO_PAD.encode(out))
    }

    /// The sign-in a cookie carries, if this process sealed it and it has not expired.
    pub fn open(&self, sealed: &str) -> Option<Pending> {
        if sealed.len() > MAX_SEALED {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(sealed).ok()?;
        if bytes.len() <= NONCE_LEN {
            return None;
        }
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut data = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::empty(), &mut data)
            .ok()?;
        let p: Pending = serde_json::from_slice(plain).ok()?;
        (p.expires > now()).then_some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_sign_in_opens_only_here_unchanged_and_in_time() {
        let sealer = Sealer::new().expect("randomness");
        let p = Pending::new("development".into(), "st".into(), "no".into(), "pk".into());
        let sealed = sealer.seal(&p).expect("seal");
        let back = sealer.open(&sealed).expect("opens");
        assert_eq!(
            (back.method, back.state, back.nonce, back.pkce_verifier),
            ("development".into(), "st".into(), "no".into(), "pk".into())
        );
        assert!(
            !sealed.contains("pk") || sealed.len() > 40,
            "not in the clear"
        );
        // Another process's key, a flipped bit, garbage, an expired one: refused.
        assert!(Sealer::new().expect("rng").open(&sealed).is_none());
        let mut raw = URL_SAFE_NO_PAD.decode(&sealed).expect("b64");
        let last = raw.len() - 1;
        raw[last] ^= 1;
        assert!(sealer.open(&URL_SAFE_NO_PAD.encode(&raw)).is_none());
        assert!(sealer.open("").is_none());
        assert!(sealer.open(&"A".repeat(5000)).is_none());
        let old = Pending { expires: 1, ..p };
        assert!(sealer.open(&sealer.seal(&old).expect("seal")).is_none());
    }
}
