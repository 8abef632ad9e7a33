//! An OIDC issuer's signing keys, fetched from its JWKS and cached.
//!
//! A token with a `kid` the cache does not know triggers one refresh (key rotation), shared by
//! every login waiting on it (single flight), and at most one per `min_refresh`: a flood of
//! tokens with made-up key ids costs the IdP one request per interval. Keys older than
//! `max_age` are fetched again; if that fails the old keys stay in use and the failure is logged.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use super::AuthError;

/// Largest discovery document or JWKS read.
const MAX_DOCUMENT: usize = 1024 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

struct Key {
    kid: Option<String>,
    alg: Option<Algorithm>,
    key: DecodingKey,
}

#[derive(Default)]
struct KeySet {
    keys: Vec<Key>,
    fetched: Option<Instant>,
}

impl KeySet {
    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
        let usable = |k: &&Key| k.alg.is_none_or(|a| a == alg);
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .filter(usable)
                .find(|k| k.kid.as_deref() == Some(kid))
                .map(|k| k.key.clone()),
            // No `kid`: only unambiguous if exactly one key could have signed it.
            None => {
                let mut candidates = self.keys.iter().filter(usable);
                match (candidates.next(), candidates.next()) {
                    (Some(k), None) => Some(k.key.clone()),
                    _ => None,
                }
            }
        }
    }
}

pub struct Jwks {
    issuer: String,
    jwks_uri: RwLock<Option<String>>,
    client: reqwest::Client,
    min_refresh: Duration,
    max_age: Duration,
    set: RwLock<Arc<KeySet>>,
    generation: AtomicU64,
    /// Held while fetching; holds the time of the last attempt.
    refresh: tokio::sync::Mutex<Option<Instant>>,
    /// How the last fetch went: [`UNKNOWN`], [`REACHABLE`], [`UNREACHABLE`] (`/readyz`).
    health: AtomicU8,
}

const UNKNOWN: u8 = 0;
const REACHABLE: u8 = 1;
const UNREACHABLE: u8 = 2;

impl Jwks {
    pub fn new(
        issuer: &str,
        jwks_uri: Option<String>,
        client: reqwest::Client,
        min_refresh: Duration,
        max_age: Duration,
    ) -> Jwks {
        Jwks {
            issuer: issuer.to_owned(),
            jwks_uri: RwLock::new(jwks_uri),
            client,
            min_refresh,
            max_age,
            set: RwLock::new(Arc::new(KeySet::default())),
            generation: AtomicU64::new(0),
            refresh: tokio::sync::Mutex::new(None),
            health: AtomicU8::new(UNKNOWN),
        }
    }

    /// Whether the issuer's keys can be fetched now (`/readyz`). Fetches at most once per
    /// `min_refresh` (the rate a login with an unknown key id may already cause), sharing the
    /// fetch with logins; in between, answers from the last attempt. A successful fetch also
    /// refreshes the cached keys.
    pub async fn probe(&self) -> bool {
        let due = self
            .refresh
            .lock()
            .await
            .is_none_or(|t| t.elapsed() >= self.min_refresh);
        if due {
            self.refresh(self.generation.load(Ordering::Acquire)).await;
        }
        self.health.load(Ordering::Acquire) == REACHABLE
    }

    fn current(&self) -> Arc<KeySet> {
        match self.set.read() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The key for a token's `kid` and `alg`, refreshing the set once if it is unknown.
    pub async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, AuthError> {
        let set = self.current();
        let stale = set.fetched.is_none_or(|t| t.elapsed() > self.max_age);
        if !stale {
            if let Some(k) = set.find(kid, alg) {
                return Ok(k);
            }
        }
        let seen = self.generation.load(Ordering::Acquire);
        self.refresh(seen).await;
        let set = self.current();
        match set.find(kid, alg) {
            Some(k) => Ok(k),
            None if set.fetched.is_none() => Err(AuthError::IdpUnavailable),
            None => Err(AuthError::UnknownKey),
        }
    }

    async fn refresh(&self, seen: u64) {
        let mut last = self.refresh.lock().await;
        if self.generation.load(Ordering::Acquire) != seen {
            return; // another login refreshed while this one waited
        }
        if last.is_some_and(|t| t.elapsed() < self.min_refresh) {
            return;
        }
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok(set) => {
                self.health.store(REACHABLE, Ordering::Release);
                tracing::info!(issuer = %self.issuer, keys = set.keys.len(), "signing keys fetched");
                match self.set.write() {
                    Ok(mut s) => *s = Arc::new(set),
                    Err(p) => *p.into_inner() = Arc::new(set),
                }
                self.generation.fetch_add(1, Ordering::AcqRel);
            }
            Err(e) => {
                self.health.store(UNREACHABLE, Ordering::Release);
                tracing::warn!(issuer = %self.issuer, error = %e, "cannot fetch signing keys")
            }
        }
    }

    async fn fetch(&self) -> anyhow::Result<KeySet> {
        let known = self.jwks_uri.read().ok().and_then(|u| u.clone());
        let uri = match known {
            Some(u) => u,
            None => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.issuer.trim_end_matches('/')
                );
                let doc = get_json(&self.client, &url).await?;
                // OpenID Connect Discovery §4.3: the document must name the issuer it was
                // fetched for, or an attacker-controlled document could substitute keys.
                if doc.get("issuer").and_then(Value::as_str) != Some(self.issuer.as_str()) {
                    anyhow::bail!("discovery document names another issuer");
                }
                let u = doc
                    .get("jwks_uri")
                    .and_then(Value::as_str)
                    .ok_or_else(|| anyhow::anyhow!("discovery document has no jwks_uri"))?
                    .to_owned();
                // The configured URIs are checked when the config is read; a discovered one
                // here, by the same rule (the scheme in any case).
                if !crate::config::auth::is_secure_url(&u) {
                    anyhow::bail!("discovery document names a jwks_uri that is not https");
                }
                if let Ok(mut w) = self.jwks_uri.write() {
                    *w = Some(u.clone());
                }
                u
            }
        };
        if !crate::config::auth::is_secure_url(&uri) {
            anyhow::bail!("the jwks_uri is not https");
        }
        let doc = get_json(&self.client, &uri).await?;
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow::anyhow!("JWKS has no keys array"))?;
        Ok(KeySet {
            keys: keys.iter().filter_map(parse_key).collect(),
            fetched: Some(Instant::now()),
        })
    }
}

/// One JWK, or nothing if it is not a signature key this gateway can use (an IdP may publish
/// encryption keys or key types beside the ones that matter).
fn parse_key(v: &Value) -> Option<Key> {
    if v.get("use")
        .and_then(Value::as_str)
        .is_some_and(|u| u != "sig")
    {
        return None;
    }
    let jwk: Jwk = serde_json::from_value(v.clone()).ok()?;
    let alg = match v.get("alg").and_then(Value::as_str) {
        Some(a) => Some(super::jwt::parse_algorithm(a).ok()?),
        None => None,
    };
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    Some(Key {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    })
}

/// GET a JSON document, at most [`MAX_DOCUMENT`] bytes.
pub async fn get_json(client: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    let mut resp = client
        .get(url)
        .timeout(FETCH_TIMEOUT)
        .send()
        .await?
        .error_for_status()?;
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > MAX_DOCUMENT {
            anyhow::bail!("{url}: document larger than {MAX_DOCUMENT} bytes");
        }
        body.extend_from_slice(&chunk);
    }
    Ok(serde_json::from_slice(&body)?)
}

/// An HTTP client for one IdP: its own CA if configured, no redirects to elsewhere.
pub fn client(ca_file: Option<&std::path::Path>) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(FETCH_TIMEOUT);
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)? {
            b = b.add_root_certificate(cert);
        }
    }
    Ok(b.build()?)
}
