//! SAML 2.0 identity providers (`[[auth.saml]]`) as the gateway trusts them, and the state of
//! SAML sign-ins: AuthnRequests in flight (by their opaque RelayState), the replay cache of
//! assertion IDs, and sign-ins verified but not yet collected by the browser or `phigate login`.
//!
//! The XML work is `phigate_saml`'s; this module decides which responses may be read at all (a
//! request of ours, not answered before; an assertion not seen before) and who they make
//! someone. Every store here is bounded; see the constants.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use phigate_saml::{IdentityProvider, ServiceProvider, SignatureAlgorithm};

use super::{AuthError, Authenticator, Individual};
use crate::config::SamlConfig;

/// AuthnRequests in flight, at most: each is answered or forgotten within [`FLIGHT_TTL`].
pub const MAX_FLIGHTS: usize = 4096;
/// AuthnRequests in flight per source address (IPv6: per /64), at most: one address cannot
/// fill the store and keep others from signing in.
pub const MAX_FLIGHTS_PER_SOURCE: usize = 32;
/// How long a sign-in may take at the identity provider.
pub const FLIGHT_TTL: Duration = Duration::from_secs(600);
/// Assertion IDs remembered, at most (each until its assertion expires, minutes). When full of
/// unexpired IDs, SAML sign-ins are refused rather than an ID forgotten early.
pub const MAX_SEEN: usize = 65_536;
/// Verified sign-ins waiting to be collected (by the browser, or by `phigate login` with its
/// one-time code), at most, and for how long.
pub const MAX_FINISHED: usize = 4096;
pub const FINISHED_TTL: Duration = Duration::from_secs(60);
/// How long fetched IdP metadata is used before it is fetched again; and after a failed
/// fetch, how long before the next try.
const METADATA_MAX_AGE: Duration = Duration::from_secs(3600);
const METADATA_RETRY: Duration = Duration::from_secs(10);
/// The largest metadata document fetched.
const MAX_METADATA_BYTES: usize = 1024 * 1024;

/// One `[[auth.saml]]` identity provider.
pub struct SamlIssuer {
    pub cfg: SamlConfig,
    pub sp: ServiceProvider,
    pub algorithms: Vec<SignatureAlgorithm>,
    /// From `idp_metadata_file` (read when the trust is built), or fetched from
    /// `idp_metadata_url`, with when.
    metadata: Mutex<Metadata>,
    http: Option<reqwest::Client>,
}

enum Metadata {
    Loaded(Arc<IdentityProvider>),
    Fetched(Instant, Arc<IdentityProvider>),
    Failed(Instant),
    NotYet,
}

impl SamlIssuer {
    /// Builds the issuer; a metadata file is read and checked now (a bad one is a config
    /// error: the gateway does not start, a reload is refused).
    pub fn new(cfg: &SamlConfig) -> anyhow::Result<SamlIssuer> {
        let n = &cfg.name;
        let algorithms = cfg
            .algorithms()
            .map_err(|e| anyhow::anyhow!("auth.saml {n}: {e}"))?;
        let (metadata, http) = match (&cfg.idp_metadata_file, &cfg.idp_metadata_url) {
            (Some(path), _) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("auth.saml {n}: cannot read {}: {e}", path.display())
                })?;
                let idp = IdentityProvider::from_metadata(&text)
                    .map_err(|e| anyhow::anyhow!("auth.saml {n}: {}: {e}", path.display()))?;
                (Metadata::Loaded(Arc::new(idp)), None)
            }
            (None, _) => (
                Metadata::NotYet,
                Some(
                    super::jwks::client(cfg.ca_file.as_deref())
                        .map_err(|e| anyhow::anyhow!("auth.saml {n}: {e}"))?,
                ),
            ),
        };
        Ok(SamlIssuer {
            sp: ServiceProvider {
                entity_id: cfg.sp_entity_id.clone(),
                acs_url: cfg.acs_url.clone(),
            },
            algorithms,
            metadata: Mutex::new(metadata),
            http,
            cfg: cfg.clone(),
        })
    }

    /// The identity provider: from its file, or its URL's document at most an hour old.
    pub async fn idp(&self) -> Result<Arc<IdentityProvider>, AuthError> {
        {
            let m = self.metadata.lock().unwrap_or_else(|e| e.into_inner());
            match &*m {
                Metadata::Loaded(idp) => return Ok(idp.clone()),
                Metadata::Fetched(at, idp) if at.elapsed() < METADATA_MAX_AGE => {
                    return Ok(idp.clone())
                }
                Metadata::Failed(at) if at.elapsed() < METADATA_RETRY => {
                    return Err(AuthError::IdpUnavailable)
                }
                _ => {}
            }
        }
        let fetched = self.fetch().await;
        let mut m = self.metadata.lock().unwrap_or_else(|e| e.into_inner());
        match fetched {
            Ok(idp) => {
                let idp = Arc::new(idp);
                *m = Metadata::Fetched(Instant::now(), idp.clone());
                Ok(idp)
            }
            Err(e) => {
                tracing::warn!(issuer = %self.cfg.name, error = %e, "cannot fetch SAML IdP metadata");
                // A document fetched earlier stays in use while the IdP is unreachable.
                if let Metadata::Fetched(_, idp) = &*m {
                    return Ok(idp.clone());
                }
                *m = Metadata::Failed(Instant::now());
                Err(AuthError::IdpUnavailable)
            }
        }
    }

    /// Fetches and reads the metadata at `idp_metadata_url` (`phigate check --connect` too).
    pub async fn fetch(&self) -> anyhow::Result<IdentityProvider> {
        let (Some(http), Some(url)) = (&self.http, &self.cfg.idp_metadata_url) else {
            anyhow::bail!("no metadata URL");
        };
        let mut res = http
            .get(url)
            .timeout(Duration::from_secs(10))
            .send()
            .await?
            .error_for_status()?;
        let mut body = Vec::new();
        while let Some(chunk) = res.chunk().await? {
            if body.len() + chunk.len() > MAX_METADATA_BYTES {
                anyhow::bail!("the metadata is larger than {MAX_METADATA_BYTES} bytes");
            }
            body.extend_from_slice(&chunk);
        }
        let text = String::from_utf8(body)?;
        Ok(IdentityProvider::from_metadata(&text)?)
    }
}

/// What a sign-in is for, decided when it starts.
#[derive(Debug, Clone)]
pub enum Purpose {
    /// The web console: collected by the browser that started it (its sealed sign-in cookie
    /// names the RelayState).
    Console,
    /// `phigate login`: the browser is sent to the CLI's loopback `port` with a one-time code,
    /// which only the holder of the verifier behind `challenge` (S256) can redeem.
    Cli {
        port: u16,
        state: String,
        challenge: String,
    },
}

/// A sign-in in flight.
#[derive(Debug, Clone)]
pub struct Flight {
    pub issuer: String,
    pub request_id: String,
    pub purpose: Purpose,
    source: IpAddr,
    started: Instant,
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

/// A verified sign-in waiting to be collected.
#[derive(Debug, Clone)]
pub struct Finished {
    pub person: Person,
    /// `phigate login`: the S256 challenge the redeemer's verifier must match.
    pub challenge: Option<String>,
    /// Whether the browser that collects it must hold the sign-in cookie naming it (every
    /// console sign-in the gateway started; not an IdP-initiated one).
    pub bound: bool,
    at: Instant,
}

/// A fresh RelayState: 192 random bits, URL-safe (and within SAML's 80-byte bound).
fn relay_state() -> String {
    use base64::Engine;
    let bytes: [u8; 24] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Sign-ins in flight, assertion IDs seen, sign-ins finished: each bounded.
#[derive(Default)]
pub struct Flights(Mutex<Stores>);

#[derive(Default)]
struct Stores {
    flights: HashMap<String, Flight>,
    seen: HashMap<String, SystemTime>,
    finished: HashMap<String, Finished>,
}

impl Flights {
    /// Records a sign-in starting; returns its RelayState.
    pub fn start(
        &self,
        issuer: &str,
        request_id: &str,
        purpose: Purpose,
        source: IpAddr,
    ) -> Result<String, AuthError> {
        let source = super::limiter::source(source);
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        s.flights.retain(|_, f| f.started.elapsed() < FLIGHT_TTL);
        let mine = s.flights.values().filter(|f| f.source == source).count();
        if s.flights.len() >= MAX_FLIGHTS || mine >= MAX_FLIGHTS_PER_SOURCE {
            return Err(AuthError::SignInsBusy);
        }
        let relay = relay_state();
        s.flights.insert(
            relay.clone(),
            Flight {
                issuer: issuer.to_owned(),
                request_id: request_id.to_owned(),
                purpose,
                source,
                started: Instant::now(),
            },
        );
        Ok(relay)
    }

    /// Takes the sign-in a RelayState names: each is answered once.
    pub fn take(&self, relay: &str) -> Option<Flight> {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        s.flights
            .remove(relay)
            .filter(|f| f.started.elapsed() < FLIGHT_TTL)
    }

    /// Remembers an assertion until `until`; an ID seen before is a replay.
    fn first_use(&self, issuer: &str, id: &str, until: SystemTime) -> Result<(), AuthError> {
        let key = format!("{issuer}\n{id}");
        let now = SystemTime::now();
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
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

    /// Keeps a verified sign-in under `key` until it is collected.
    pub fn finish(
        &self,
        key: &str,
        person: Person,
        challenge: Option<String>,
        bound: bool,
    ) -> Result<(), AuthError> {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        s.finished.retain(|_, f| f.at.elapsed() < FINISHED_TTL);
        if s.finished.len() >= MAX_FINISHED {
            return Err(AuthError::SignInsBusy);
        }
        s.finished.insert(
            key.to_owned(),
            Finished {
                person,
                challenge,
                bound,
                at: Instant::now(),
            },
        );
        Ok(())
    }

    /// Collects a verified sign-in: once.
    pub fn collect(&self, key: &str) -> Option<Finished> {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        s.finished
            .remove(key)
            .filter(|f| f.at.elapsed() < FINISHED_TTL)
    }
}

impl Authenticator {
    /// The `[[auth.saml]]` issuer named `name`.
    pub fn saml_issuer(&self, name: &str) -> Option<Arc<SamlIssuer>> {
        self.trust
            .get()
            .saml
            .iter()
            .find(|s| s.cfg.name == name)
            .cloned()
    }

    pub fn saml_flights(&self) -> &Flights {
        &self.saml_flights
    }

    /// Starts a sign-in at `issuer`: the RelayState and the IdP URL to send the browser to.
    pub async fn saml_start(
        &self,
        issuer: &SamlIssuer,
        purpose: Purpose,
        peer: IpAddr,
    ) -> Result<(String, String), AuthError> {
        let idp = issuer.idp().await?;
        let request_id = phigate_saml::new_id();
        let relay = self
            .saml_flights
            .start(&issuer.cfg.name, &request_id, purpose, peer)?;
        let req =
            phigate_saml::authn_request(&idp, &issuer.sp, &request_id, &relay, SystemTime::now());
        Ok((relay, req.redirect_url))
    }

    /// Verifies a `SAMLResponse` posted to `issuer`'s ACS with `relay_state`: a response to a
    /// request of ours not answered before (or, where allowed, an unsolicited one), an
    /// assertion not seen before, an individual not revoked. Counts towards the failed-login
    /// limit. Returns the person, and the sign-in the RelayState named (taken: it is answered
    /// once, whatever the outcome) so that a refusal can be told to whoever started it.
    pub async fn saml_assertion(
        &self,
        peer: IpAddr,
        issuer: &SamlIssuer,
        saml_response: &str,
        relay_state: Option<&str>,
    ) -> (Result<Person, AuthError>, Option<Flight>) {
        let flight = relay_state
            .filter(|r| !r.is_empty())
            .map(|r| self.saml_flights.take(r));
        let limited = self.failed.check(peer).err();
        let result = self
            .verify_saml(issuer, saml_response, flight.as_ref())
            .await;
        if let Err(e) = &result {
            if e.is_failed_guess() {
                let n = self.failed.failed(peer);
                tracing::warn!(%peer, failures = n, error = %e, "SAML sign-in refused");
            }
        }
        (super::limit_guesses(limited, result), flight.flatten())
    }

    /// `flight`: `None` without a RelayState; `Some(None)` for one that names no sign-in in
    /// flight.
    async fn verify_saml(
        &self,
        issuer: &SamlIssuer,
        saml_response: &str,
        flight: Option<&Option<Flight>>,
    ) -> Result<Person, AuthError> {
        let flight = match flight {
            Some(Some(f)) if f.issuer == issuer.cfg.name => Some(f),
            Some(Some(_)) => {
                return Err(AuthError::Saml(
                    "the response came back to another identity provider's endpoint".into(),
                ))
            }
            Some(None) => {
                return Err(AuthError::Saml(
                    "this sign-in was not started here, was already answered, or took too \
                     long; start again"
                        .into(),
                ))
            }
            None if issuer.cfg.allow_idp_initiated => None,
            None => {
                return Err(AuthError::Saml(
                    "unsolicited (IdP-initiated) sign-in is not allowed for this identity \
                     provider; start the sign-in at the gateway"
                        .into(),
                ))
            }
        };
        let idp = issuer.idp().await?;
        let now = SystemTime::now();
        let expect = phigate_saml::Expect {
            idp: &idp,
            sp: &issuer.sp,
            in_response_to: flight.as_ref().map(|f| f.request_id.as_str()),
            now,
            skew: self.leeway().min(Duration::from_secs(180)),
            algorithms: &issuer.algorithms,
            subject_attribute: issuer.cfg.subject_attribute.as_deref(),
            groups_attribute: issuer.cfg.groups_attribute.as_deref(),
        };
        let assertion = phigate_saml::read_response(saml_response, &expect)
            .map_err(|e| AuthError::Saml(e.to_string()))?;
        self.saml_flights
            .first_use(&issuer.cfg.name, &assertion.id, assertion.valid_until)?;
        let unix = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.check_revoked(
            &Individual::new(&issuer.cfg.name, &assertion.subject),
            Some(unix),
        )?;
        let day = now + Duration::from_secs(24 * 3600);
        Ok(Person {
            subject: assertion.subject,
            groups: assertion.groups,
            issuer: issuer.cfg.name.clone(),
            expires_at: assertion
                .session_not_on_or_after
                .map_or(day, |t| t.min(day)),
        })
    }
}
