//! The state of SAML sign-ins, built so that no flood of unauthenticated requests can keep
//! anyone else from signing in.
//!
//! Starting a sign-in stores nothing: the RelayState is self-certifying (its kind, 128 random
//! bits and its expiry, MACed under a key of this process) and the AuthnRequest's ID is derived
//! from it by the same key, so the gateway can tell an answer to a request of its own without
//! remembering the request. What the sign-in is for (the console, or `phigate login` with its
//! loopback port, state and S256 challenge) travels in a MACed *ticket* cookie in the browser
//! that started it. The IdP's answer arrives by a cross-site POST, which brings no cookie; after
//! verification the browser is sent, with a fresh one-time key, to a finish URL (a top-level
//! GET, which does bring the cookie), where the ticket must name the same RelayState: neither
//! whoever started a sign-in nor whoever finished it at the IdP can collect it alone.
//!
//! What is stored is what verification produced, each map bounded: request IDs answered (until
//! their RelayState expires), assertion IDs seen (until the assertion expires), verified
//! sign-ins awaiting their browser, refusals awaiting `phigate login`, one-time codes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
use serde::{Deserialize, Serialize};

use super::AuthError;

/// How long a sign-in may take at the identity provider.
pub const FLIGHT_TTL: Duration = Duration::from_secs(600);
/// Request IDs answered and assertion IDs seen, at most each (only verified responses add to
/// them). When full of unexpired IDs, SAML sign-ins are refused rather than one forgotten early.
pub const MAX_ANSWERED: usize = 65_536;
pub const MAX_SEEN: usize = 65_536;
/// Verified sign-ins waiting for their browser, and one-time codes waiting for
/// `phigate login`: at most this many each, for [`COLLECT_TTL`].
pub const MAX_WAITING: usize = 4096;
pub const COLLECT_TTL: Duration = Duration::from_secs(60);
/// Refusals kept for `phigate login` to read (past this many, the browser alone is told).
pub const MAX_REFUSALS: usize = 1024;
/// The largest ticket cookie accepted.
const MAX_TICKET: usize = 2048;

/// What a sign-in is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Console,
    Cli,
}

/// What a sign-in is for, with what finishing it needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Purpose {
    /// The web console.
    Console,
    /// `phigate login`: the browser goes to the CLI's loopback `port` with a one-time code
    /// that only the holder of the verifier behind `challenge` (S256) can redeem.
    Cli {
        port: u16,
        state: String,
        challenge: String,
    },
}

impl Purpose {
    pub fn kind(&self) -> Kind {
        match self {
            Purpose::Console => Kind::Console,
            Purpose::Cli { .. } => Kind::Cli,
        }
    }
}

/// The ticket cookie: which sign-in this browser started, and what for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ticket {
    pub issuer: String,
    pub relay: String,
    pub purpose: Purpose,
    expires: u64,
}

/// A sign-in started: the RelayState, the AuthnRequest ID, the ticket cookie's value.
pub struct Started {
    pub relay: String,
    pub request_id: String,
    pub ticket: String,
}

/// What a genuine RelayState says.
#[derive(Debug, Clone)]
pub struct Flight {
    pub request_id: String,
    pub kind: Kind,
}

/// A person the identity provider vouched for.
#[derive(Debug, Clone)]
pub struct Person {
    pub subject: String,
    pub groups: Vec<String>,
    /// The `[[auth.saml]]` name.
    pub issuer: String,
    /// The IdP's bound on the session, or a day (the gateway's own limits are shorter).
    pub expires_at: SystemTime,
}

/// How a sign-in ended, waiting for the browser that started it.
pub struct Outcome {
    pub result: Result<Person, String>,
    pub relay: String,
    at: Instant,
}

/// A one-time code waiting for `phigate login`.
pub struct Code {
    pub person: Person,
    pub challenge: String,
    at: Instant,
}

pub struct Flights {
    key: hmac::Key,
    stores: Mutex<Stores>,
}

#[derive(Default)]
struct Stores {
    answered: HashMap<String, Instant>,
    seen: HashMap<String, SystemTime>,
    outcomes: HashMap<String, Outcome>,
    refusals: usize,
    codes: HashMap<String, Code>,
}

impl Default for Flights {
    fn default() -> Flights {
        let secret: [u8; 32] = rand::random();
        Flights {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            stores: Mutex::default(),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// 256 random bits, URL-safe.
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Codes and keys are kept by their SHA-256.
fn hashed(token: &str) -> String {
    hex::encode(super::token_sha256(token))
}

/// Compares secrets in constant time.
pub fn same(a: &str, b: &str) -> bool {
    same_bytes(a.as_bytes(), b.as_bytes())
}

impl Flights {
    fn mac(&self, label: &[u8], parts: &[&[u8]]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(label);
        for p in parts {
            ctx.update(&(p.len() as u64).to_be_bytes());
            ctx.update(p);
        }
        ctx.sign()
    }

    fn request_id(&self, relay: &str) -> String {
        let tag = self.mac(b"saml-request", &[relay.as_bytes()]);
        format!("_{}", hex::encode(&tag.as_ref()[..16]))
    }

    /// Starts a sign-in at `issuer` for `purpose`. Stores nothing.
    pub fn start(&self, issuer: &str, purpose: Purpose) -> Started {
        let mut body = Vec::with_capacity(37);
        body.push(match purpose.kind() {
            Kind::Console => 0u8,
            Kind::Cli => 1u8,
        });
        body.extend_from_slice(&rand::random::<[u8; 16]>());
        let expires = unix_now() + FLIGHT_TTL.as_secs();
        body.extend_from_slice(&expires.to_be_bytes());
        let tag = self.mac(b"saml-relay", &[issuer.as_bytes(), &body]);
        body.extend_from_slice(&tag.as_ref()[..12]);
        // 37 bytes: 50 characters, within the binding's 80-byte bound on RelayState.
        let relay = URL_SAFE_NO_PAD.encode(&body);
        let ticket = Ticket {
            issuer: issuer.to_owned(),
            relay: relay.clone(),
            purpose,
            expires,
        };
        let json = serde_json::to_vec(&ticket).unwrap_or_default();
        let tag = self.mac(b"saml-ticket", &[&json]);
        Started {
            request_id: self.request_id(&relay),
            ticket: format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(&json),
                URL_SAFE_NO_PAD.encode(tag.as_ref())
            ),
            relay,
        }
    }

    /// The sign-in a RelayState names, if this process made it for `issuer` and it has not
    /// expired.
    pub fn flight(&self, issuer: &str, relay: &str) -> Option<Flight> {
        let body = URL_SAFE_NO_PAD.decode(relay).ok()?;
        if body.len() != 37 {
            return None;
        }
        let (signed, tag) = body.split_at(25);
        let want = self.mac(b"saml-relay", &[issuer.as_bytes(), signed]);
        if !same_bytes(&want.as_ref()[..12], tag) {
            return None;
        }
        let expires = u64::from_be_bytes(signed[17..25].try_into().ok()?);
        if expires <= unix_now() {
            return None;
        }
        let kind = match signed[0] {
            0 => Kind::Console,
            1 => Kind::Cli,
            _ => return None,
        };
        Some(Flight {
            request_id: self.request_id(relay),
            kind,
        })
    }

    /// The ticket a cookie carries, if this process made it and it has not expired.
    pub fn ticket(&self, cookie: &str) -> Option<Ticket> {
        if cookie.len() > MAX_TICKET {
            return None;
        }
        let (json, tag) = cookie.split_once('.')?;
        let json = URL_SAFE_NO_PAD.decode(json).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        let want = self.mac(b"saml-ticket", &[&json]);
        if !same_bytes(want.as_ref(), &tag) {
            return None;
        }
        let t: Ticket = serde_json::from_slice(&json).ok()?;
        (t.expires > unix_now()).then_some(t)
    }

    /// Whether the request was answered already.
    pub fn answered(&self, request_id: &str) -> bool {
        let s = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        s.answered
            .get(request_id)
            .is_some_and(|t| t.elapsed() < FLIGHT_TTL)
    }

    /// Records the request as answered (a verified response to it); the second time is
    /// refused.
    pub fn answer(&self, request_id: &str) -> Result<(), AuthError> {
        let mut s = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        if s.answered
            .get(request_id)
            .is_some_and(|t| t.elapsed() < FLIGHT_TTL)
        {
            return Err(already_answered());
        }
        if s.answered.len() >= MAX_ANSWERED {
            s.answered.retain(|_, t| t.elapsed() < FLIGHT_TTL);
            if s.answered.len() >= MAX_ANSWERED {
                return Err(AuthError::SignInsBusy);
            }
        }
        s.answered.insert(request_id.to_owned(), Instant::now());
        Ok(())
    }

    /// Remembers an assertion until `until`; an ID seen before is a replay.
    pub fn first_use(&self, issuer: &str, id: &str, until: SystemTime) -> Result<(), AuthError> {
        let key = format!("{issuer}\n{id}");
        let now = SystemTime::now();
        let mut s = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        if s.seen.get(&key).is_some_and(|t| *t > now) {
            return Err(AuthError::SamlReplayed);
        }
        if s.seen.len() >= MAX_SEEN {
            s.seen.retain(|_, t| *t > now);
            if s.seen.len() >= MAX_SEEN {
                return Err(AuthError::SignInsBusy);
            }
        }
        s.seen.insert(key, until);
        Ok(())
    }

    fn prune(s: &mut Stores) {
        s.outcomes.retain(|_, o| o.at.elapsed() < COLLECT_TTL);
        s.refusals = s.outcomes.values().filter(|o| o.result.is_err()).count();
        s.codes.retain(|_, c| c.at.elapsed() < COLLECT_TTL);
    }

    /// Keeps a verified sign-in for the browser that started `relay`; returns its one-time key.
    pub fn verified(&self, person: Person, relay: &str) -> Result<String, AuthError> {
        let mut s = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        Self::prune(&mut s);
        if s.outcomes.len() - s.refusals >= MAX_WAITING {
            return Err(AuthError::SignInsBusy);
        }
        let key = random_token();
        s.outcomes.insert(
            hashed(&key),
            Outcome {
                result: Ok(person),
                relay: relay.to_owned(),
                at: Instant::now(),
            },
        );
        Ok(key)
    }

    /// Keeps a refusal for the `phigate login` that started `relay`, if there is room.
    pub fn refused(&self, reason: String, relay: &str) -> Option<String> {
        let mut s = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        Self::prune(&mut s);
        if s.refusals >= MAX_REFUSALS {
            return None;
        }
        let key = random_token();
        s.outcomes.insert(
            hashed(&key),
            Outcome {
                result: Err(reason),
                relay: relay.to_owned(),
                at: Instant::now(),
            },
        );
        s.refusals += 1;
        Some(key)
    }

    /// How a sign-in ended, without collecting it: its RelayState and subject (`None`: refused).
    pub fn peek(&self, key: &str) -> Option<(String, Option<String>)> {
        let s = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        let o = s
            .outcomes
            .get(&hashed(key))
            .filter(|o| o.at.elapsed() < COLLECT_TTL)?;
        Some((
            o.relay.clone(),
            o.result.as_ref().ok().map(|p| p.subject.clone()),
        ))
    }

    /// Collects how a sign-in ended: once.
    pub fn collect(&self, key: &str) -> Option<Outcome> {
        let mut s = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        let o = s.outcomes.remove(&hashed(key))?;
        if o.result.is_err() {
            s.refusals = s.refusals.saturating_sub(1);
        }
        (o.at.elapsed() < COLLECT_TTL).then_some(o)
    }

    /// A one-time code for `phigate login`, redeemable with the verifier of `challenge`.
    pub fn code(&self, person: Person, challenge: &str) -> Result<String, AuthError> {
        let mut s = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        Self::prune(&mut s);
        if s.codes.len() >= MAX_WAITING {
            return Err(AuthError::SignInsBusy);
        }
        let code = random_token();
        s.codes.insert(
            hashed(&code),
            Code {
                person,
                challenge: challenge.to_owned(),
                at: Instant::now(),
            },
        );
        Ok(code)
    }

    /// Takes a one-time code: once, whatever the verifier turns out to be.
    pub fn redeem(&self, code: &str) -> Option<Code> {
        let mut s = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        s.codes
            .remove(&hashed(code))
            .filter(|c| c.at.elapsed() < COLLECT_TTL)
    }
}

fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

pub fn already_answered() -> AuthError {
    AuthError::Saml("this sign-in was already answered; start again".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_states_and_tickets_verify_only_as_made() {
        let f = Flights::default();
        let cli = Purpose::Cli {
            port: 4000,
            state: "s".repeat(20),
            challenge: "c".repeat(43),
        };
        let s = f.start("hospital", cli.clone());
        assert!(s.relay.len() <= 80);
        let flight = f.flight("hospital", &s.relay).expect("ours");
        assert_eq!(flight.request_id, s.request_id);
        assert_eq!(flight.kind, Kind::Cli);
        assert!(
            f.flight("portal", &s.relay).is_none(),
            "bound to its issuer"
        );
        let mut forged = URL_SAFE_NO_PAD.decode(&s.relay).expect("b64");
        forged[0] = 0;
        assert!(f
            .flight("hospital", &URL_SAFE_NO_PAD.encode(&forged))
            .is_none());
        assert!(Flights::default().flight("hospital", &s.relay).is_none());
        let t = f.ticket(&s.ticket).expect("ticket");
        assert_eq!((t.relay.as_str(), &t.purpose), (s.relay.as_str(), &cli));
        let tampered = s.ticket.replacen('e', "f", 1);
        assert!(tampered == s.ticket || f.ticket(&tampered).is_none());
    }

    #[test]
    fn a_request_is_answered_once_and_outcomes_are_collected_once() {
        let f = Flights::default();
        let s = f.start("hospital", Purpose::Console);
        assert!(!f.answered(&s.request_id));
        f.answer(&s.request_id).expect("first");
        assert!(f.answered(&s.request_id));
        assert!(f.answer(&s.request_id).is_err());
        let person = Person {
            subject: "a@b".into(),
            groups: vec![],
            issuer: "hospital".into(),
            expires_at: SystemTime::now(),
        };
        let key = f.verified(person.clone(), &s.relay).expect("kept");
        assert!(f.collect(&key).is_some());
        assert!(f.collect(&key).is_none());
        let code = f.code(person, "ch").expect("code");
        assert_eq!(f.redeem(&code).expect("redeem").challenge, "ch");
        assert!(f.redeem(&code).is_none());
    }
}
