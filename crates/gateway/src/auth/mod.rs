//! Who is calling. The client puts a credential in the password field; the startup `user`
//! names the role it wants to assume.
//!
//! Credentials, tried in this order:
//! 1. a static token from the config (by its SHA-256);
//! 2. an API key (`phk_...`, [`keys`]);
//! 3. a JWT: signed by this gateway ([`signer`]: `phigate login` session tokens, development
//!    tokens) or by a configured OIDC issuer ([`jwt`], [`jwks`]).
//!
//! Everything after this module sees only an [`Identity`]: an individual subject, the role it
//! assumed, and when its credential stops being valid.

mod error;
pub mod exchanged;
pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod limiter;
pub mod revocations;
pub mod saml;
pub mod saml_state;
pub mod shared;
pub mod signer;
pub mod trust;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

#[cfg(test)]
use crate::config::{BindingConfig, StaticIdentity};
use crate::config::{Config, OidcConfig};
use crate::live::Live;
use trust::{OidcIssuer, Trust};

/// The issuer name of tokens minted by `phigate token mint` (development only).
pub use crate::config::auth::DEVELOPMENT_ISSUER;
pub use error::AuthError;

/// The individual behind a session: a person or a machine identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subject(pub String);

/// One individual: a subject *as vouched for by* an issuer. The same subject text at two
/// issuers is two individuals (`alice` at `corp` is not `alice` at `partner`), so every
/// comparison of "is this the same person" that grants something compares both.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Individual {
    pub issuer: String,
    pub subject: String,
}

impl Individual {
    pub fn new(issuer: &str, subject: &str) -> Individual {
        Individual {
            issuer: issuer.to_owned(),
            subject: subject.to_owned(),
        }
    }
}

impl fmt::Display for Individual {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (issuer {})", self.subject, self.issuer)
    }
}

/// A gateway role, chosen by the startup `user` among those the identity may assume.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoleName(pub String);

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for RoleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the caller presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A static `[[identity]]` token, by its SHA-256 (a reload that removes or changes the
    /// identity ends the sessions it opened).
    StaticToken {
        sha256: [u8; 32],
    },
    ApiKey {
        id: String,
    },
    /// A JWT from a configured OIDC issuer (`iat`, unix seconds, if it has one).
    Oidc {
        issued_at: Option<u64>,
    },
    /// A JWT this gateway signed (`phigate login`, development tokens).
    GatewayToken {
        issued_at: u64,
    },
}

impl Credential {
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::StaticToken { .. } => "static-token",
            Credential::ApiKey { .. } => "api-key",
            Credential::Oidc { .. } => "oidc",
            Credential::GatewayToken { .. } => "gateway-token",
        }
    }

    /// Whether the credential can be revoked while a session it opened runs: every kind can
    /// (a static identity by a reload that removes it).
    pub fn revocable(&self) -> bool {
        true
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub subject: Subject,
    pub role: RoleName,
    pub groups: Vec<String>,
    /// Who vouched for the subject: an `[[auth.oidc]]` name, `development`, `api-key`, `static`.
    pub issuer: String,
    pub credential: Credential,
    /// When the credential stops being valid; the session ends then.
    pub expires_at: Option<SystemTime>,
}

impl Identity {
    /// Who this is: subject and issuer together.
    pub fn individual(&self) -> Individual {
        Individual::new(&self.issuer, &self.subject.0)
    }
}

pub fn token_sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

pub use crate::config::auth::is_loopback_url;

/// Who the credential names, before a role is chosen.
struct Principal {
    subject: String,
    groups: Vec<String>,
    issuer: String,
    credential: Credential,
    expires_at: Option<SystemTime>,
    /// Roles the credential itself carries (API keys, static tokens); else the bindings decide.
    roles: Option<Vec<String>>,
}

/// Time-boxed role elevations a reviewer approved (an access request: "alice may act as
/// clinician for 30 minutes"), by issuer, subject and role: a namesake at another issuer gets
/// nothing. In memory: a restart ends them.
#[derive(Default)]
pub struct Elevations {
    granted: std::sync::Mutex<HashMap<(String, String, String), SystemTime>>,
}

impl Elevations {
    pub fn grant(&self, issuer: &str, subject: &str, role: &str, until: SystemTime) {
        let mut g = self.granted.lock().unwrap_or_else(|e| e.into_inner());
        g.retain(|_, t| *t > SystemTime::now());
        g.insert(
            (issuer.to_owned(), subject.to_owned(), role.to_owned()),
            until,
        );
    }

    /// Until when `subject` (vouched for by `issuer`) may assume `role` by an approved
    /// elevation.
    pub fn until(&self, issuer: &str, subject: &str, role: &str) -> Option<SystemTime> {
        let g = self.granted.lock().unwrap_or_else(|e| e.into_inner());
        g.get(&(issuer.to_owned(), subject.to_owned(), role.to_owned()))
            .copied()
            .filter(|t| *t > SystemTime::now())
    }
}

/// What a token exchange vouches for: the individual, their groups, and when the IdP token
/// expires (the gateway token must not outlive it).
#[derive(Debug, Clone)]
pub struct Exchange {
    pub subject: String,
    pub groups: Vec<String>,
    /// The `[[auth.oidc]]` name.
    pub issuer: String,
    pub expires_at: SystemTime,
}

pub struct Authenticator {
    /// Approved elevations: a role an identity may assume for a while beyond its bindings.
    pub elevations: Arc<Elevations>,
    /// Static identities, OIDC issuers, bindings, leeway: replaced whole by a reload.
    trust: Live<Trust>,
    signer: Option<Arc<signer::Signer>>,
    keys: Option<Arc<keys::KeyStore>>,
    /// Ticks when credentials may have stopped being valid, for a gateway without an API key
    /// store (with one, the store's channel is used).
    changed: tokio::sync::watch::Sender<u64>,
    failed: limiter::FailedLogins,
    development: bool,
    /// IdP tokens already exchanged (each is exchanged once).
    exchanged: exchanged::Exchanged,
    /// Individuals whose tokens were revoked (with a data directory).
    token_revocations: Option<Arc<revocations::Revocations>>,
    /// SAML sign-ins in flight, assertion IDs seen, sign-ins to collect.
    saml_flights: saml_state::Flights,
}

impl Authenticator {
    /// Builds the authenticator; with a data directory, opens the API keys and the gateway's
    /// signing key (created on first start).
    pub fn from_config(config: &Config, issuer: &str) -> anyhow::Result<Authenticator> {
        let trust = Trust::build(config, None)?;
        let (signer, keys) = match &config.data_dir {
            Some(dir) => (
                Some(Arc::new(signer::Signer::load_or_create(dir, issuer)?)),
                Some(Arc::new(keys::KeyStore::open(dir)?)),
            ),
            None => (None, None),
        };
        let mut a = Authenticator::with_trust(trust);
        a.signer = signer;
        a.token_revocations = config.data_dir.as_deref().map(|d| {
            Arc::new(revocations::Revocations::open(
                d,
                Duration::from_secs(config.auth.leeway_secs),
            ))
        });
        a.keys = keys;
        a.development = config.auth.development;
        a.failed = limiter::FailedLogins::new(
            config.auth.failed_logins.max_failures,
            Duration::from_secs(config.auth.failed_logins.window_secs),
        );
        Ok(a)
    }

    #[cfg(test)]
    fn with_statics(identities: &[StaticIdentity]) -> Authenticator {
        Authenticator::with_trust(Trust::with_statics(identities))
    }

    fn with_trust(trust: Trust) -> Authenticator {
        Authenticator {
            elevations: Arc::default(),
            trust: Live::new(trust),
            signer: None,
            keys: None,
            changed: tokio::sync::watch::channel(0).0,
            failed: limiter::FailedLogins::new(10, Duration::from_secs(60)),
            development: false,
            exchanged: exchanged::Exchanged::default(),
            token_revocations: None,
            saml_flights: saml_state::Flights::default(),
        }
    }

    pub fn signer(&self) -> Option<&Arc<signer::Signer>> {
        self.signer.as_ref()
    }

    /// The failed-login limiter (a cluster shares its counts).
    pub fn failed_logins(&self) -> &limiter::FailedLogins {
        &self.failed
    }

    pub fn keys(&self) -> Option<&Arc<keys::KeyStore>> {
        self.keys.as_ref()
    }

    /// Builds the trust `config` describes (a reload, before anything changes): an error
    /// leaves the running trust alone.
    pub fn stage(&self, config: &Config) -> anyhow::Result<Trust> {
        Trust::build(config, Some(&self.trust.get()))
    }

    /// Puts `trust` in force; live sessions check their credentials against it (those of a
    /// removed identity, issuer or binding end).
    pub fn replace_trust(&self, trust: Trust) {
        self.trust.set(trust);
        self.credentials_changed();
    }

    /// Tells live sessions to check their credentials again.
    fn credentials_changed(&self) {
        match &self.keys {
            Some(keys) => keys.notify(),
            None => self.changed.send_modify(|g| *g += 1),
        }
    }

    /// Checks the credential and resolves the role. `requested_role` is the startup `user`:
    /// a defined role (per `is_role`) must be one the identity may assume; anything else (an
    /// OS user name a client filled in) picks the identity's default role.
    pub async fn authenticate(
        &self,
        peer: IpAddr,
        requested_role: &str,
        token: &str,
        is_role: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Identity, AuthError> {
        self.authenticate_as(peer, requested_role, token, is_role, true)
            .await
    }

    /// For the HTTP API: like [`Authenticator::authenticate`], but an approved elevation does
    /// not count (it opens database sessions, not reviewer or auditor powers).
    pub async fn authenticate_api(
        &self,
        peer: IpAddr,
        requested_role: &str,
        token: &str,
        is_role: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Identity, AuthError> {
        self.authenticate_as(peer, requested_role, token, is_role, false)
            .await
    }

    async fn authenticate_as(
        &self,
        peer: IpAddr,
        requested_role: &str,
        token: &str,
        is_role: &(dyn Fn(&str) -> bool + Sync),
        elevations: bool,
    ) -> Result<Identity, AuthError> {
        let limited = self.failed.check(peer).err();
        let result = match self.principal(token).await {
            Ok(p) => self.assume(p, requested_role, is_role, elevations),
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            if e.is_failed_guess() {
                let n = self.failed.failed(peer);
                tracing::warn!(%peer, failures = n, error = %e, "failed login");
            }
        }
        limit_guesses(limited, result)
    }

    async fn principal(&self, token: &str) -> Result<Principal, AuthError> {
        if token.len() > jwt::MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge(jwt::MAX_TOKEN_BYTES));
        }
        // A hash lookup: the time it takes says nothing about how close a guess was.
        let trust = self.trust.get();
        let sha256 = token_sha256(token);
        if let Some(id) = trust.statics.get(&sha256) {
            return Ok(Principal {
                subject: id.subject.clone(),
                groups: Vec::new(),
                issuer: "static".into(),
                credential: Credential::StaticToken { sha256 },
                expires_at: None,
                roles: Some(id.roles.clone()),
            });
        }
        if token.starts_with(keys::PREFIX) {
            let store = self.keys.as_ref().ok_or(AuthError::InvalidCredentials)?;
            let key = store.authenticate(token)?;
            return Ok(Principal {
                subject: key.subject,
                groups: Vec::new(),
                issuer: "api-key".into(),
                credential: Credential::ApiKey { id: key.id },
                expires_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(key.expires_at)),
                roles: Some(key.roles),
            });
        }
        if token.bytes().filter(|b| *b == b'.').count() != 2 {
            return Err(AuthError::InvalidCredentials);
        }
        let unverified = jwt::peek(token)?;
        if let Some(s) = self
            .signer
            .as_ref()
            .filter(|s| s.issuer == unverified.issuer)
        {
            let claims = s.verify(token, &unverified.header, trust.leeway)?;
            let idp = claims
                .get(signer::IDP_CLAIM)
                .and_then(|v| v.as_str())
                .ok_or(AuthError::MissingClaim(signer::IDP_CLAIM))?
                .to_owned();
            // A gateway token vouches only as far as its issuer is still trusted: development
            // tokens die with `auth.development`, login tokens with their OIDC issuer.
            let trusted = if idp == DEVELOPMENT_ISSUER {
                self.development
            } else {
                trust.has_issuer(&idp)
            };
            if !trusted {
                return Err(AuthError::UntrustedIssuer);
            }
            let subject = jwt::subject(&claims, "sub")?;
            // The signer always sets `iat`; a token without one is not ours to trust.
            let issued_at = issued_at(&claims).ok_or(AuthError::MissingClaim("iat"))?;
            self.check_revoked(&Individual::new(&idp, &subject), Some(issued_at))?;
            return Ok(Principal {
                subject,
                groups: jwt::groups(&claims, Some("groups")),
                issuer: idp,
                credential: Credential::GatewayToken { issued_at },
                expires_at: Some(jwt::expiry(&claims)?),
                roles: None,
            });
        }
        let (issuer, claims) = self.verify_oidc(token, &unverified).await?;
        let subject = oidc_subject(&issuer.cfg, &claims)?;
        let issued_at = issued_at(&claims);
        self.check_revoked(&Individual::new(&issuer.cfg.name, &subject), issued_at)?;
        Ok(Principal {
            subject,
            groups: jwt::groups(&claims, issuer.cfg.groups_claim.as_deref()),
            issuer: issuer.cfg.name.clone(),
            credential: Credential::Oidc { issued_at },
            expires_at: Some(jwt::expiry(&claims)?),
            roles: None,
        })
    }

    /// Checks a JWT of a configured OIDC issuer (chosen by its unverified `iss`); returns the
    /// issuer and the verified claims.
    async fn verify_oidc(
        &self,
        token: &str,
        unverified: &jwt::Unverified,
    ) -> Result<(Arc<OidcIssuer>, serde_json::Value), AuthError> {
        let trust = self.trust.get();
        let issuer = trust
            .oidc
            .iter()
            .find(|o| o.cfg.issuer == unverified.issuer)
            .cloned()
            .ok_or(AuthError::UntrustedIssuer)?;
        let header = &unverified.header;
        if !issuer.algorithms.contains(&header.alg) {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        let key = issuer.jwks.key(header.kid.as_deref(), header.alg).await?;
        let claims = jwt::verify(
            token,
            header,
            &key,
            &jwt::Expect {
                issuer: &issuer.cfg.issuer,
                audience: &issuer.cfg.audience,
                algorithms: &issuer.algorithms,
                leeway: trust.leeway,
            },
        )?;
        Ok((issuer, claims))
    }

    /// Refuses a token of `who` issued (`iat`) before their last `phigate token revoke`.
    fn check_revoked(&self, who: &Individual, issued_at: Option<u64>) -> Result<(), AuthError> {
        let Some(list) = &self.token_revocations else {
            return Ok(());
        };
        if let Err(e) = list.reload_if_changed() {
            tracing::error!(error = %e, "cannot read the token revocation file");
        }
        if list.is_revoked(who, issued_at) {
            return Err(AuthError::TokenRevoked {
                subject: who.subject.clone(),
            });
        }
        Ok(())
    }

    /// Reads the token revocation file again if it changed; when it did, live sessions check
    /// their credentials again (the same channel as API key revocation).
    pub fn reload_token_revocations(&self) {
        let Some(list) = &self.token_revocations else {
            return;
        };
        let changed = list.reload_if_changed().unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read the token revocation file");
            true
        });
        if changed {
            if let Some(keys) = &self.keys {
                keys.notify();
            }
        }
    }

    /// Checks an OIDC token (an ID token or access token from `phigate login`) and returns
    /// the individual and groups it vouches for, and its expiry. Each token is exchanged
    /// once. Counts towards the failed-login limit.
    pub async fn exchange(&self, peer: IpAddr, token: &str) -> Result<Exchange, AuthError> {
        let limited = self.failed.check(peer).err();
        let result = self.verify_for_exchange(token).await;
        if let Err(e) = &result {
            if e.is_failed_guess() {
                let n = self.failed.failed(peer);
                tracing::warn!(%peer, failures = n, error = %e, "failed token exchange");
            }
        }
        limit_guesses(limited, result)
    }

    /// A cancel request from `peer` may be tried: not while that address is over the
    /// failed-login limit. Cancel keys are guessed like credentials (a database pid is easy to
    /// learn, leaving the 32-bit secret), so unknown keys count as failures.
    pub fn may_cancel(&self, peer: IpAddr) -> bool {
        self.failed.check(peer).is_ok()
    }

    /// A cancel request with a key no session has: one more failure for `peer`.
    pub fn unknown_cancel_key(&self, peer: IpAddr) {
        self.failed.failed(peer);
    }

    /// The clock skew tolerated on `exp` / `nbf` / `iat` (`auth.leeway_secs`).
    pub fn leeway(&self) -> Duration {
        self.trust.get().leeway
    }

    /// Every issuer for `phigate login` ([`Trust::login_issuers`]).
    pub fn login_issuers(&self) -> Vec<serde_json::Value> {
        self.trust.get().login_issuers()
    }

    /// Whether each OIDC issuer's keys can be fetched now ([`Trust::probe_issuers`]).
    pub async fn probe_issuers(&self) -> Vec<(String, bool)> {
        self.trust.get().probe_issuers().await
    }

    async fn verify_for_exchange(&self, token: &str) -> Result<Exchange, AuthError> {
        // peek refuses oversized tokens and `none` / HS* before anything else.
        let unverified = jwt::peek(token)?;
        let (issuer, claims) = self.verify_oidc(token, &unverified).await?;
        let subject = oidc_subject(&issuer.cfg, &claims)?;
        self.check_revoked(
            &Individual::new(&issuer.cfg.name, &subject),
            issued_at(&claims),
        )?;
        let expires_at = jwt::expiry(&claims)?;
        // Last: only a token that would otherwise be exchanged is remembered.
        let signed = token.rsplit_once('.').map_or(token, |(signed, _)| signed);
        let individual = token_sha256(&format!("{}\n{subject}", issuer.cfg.name));
        self.exchanged
            .claim(token_sha256(signed), individual, expires_at)?;
        Ok(Exchange {
            subject,
            groups: jwt::groups(&claims, issuer.cfg.groups_claim.as_deref()),
            issuer: issuer.cfg.name.clone(),
            expires_at,
        })
    }

    /// The roles an identity may assume, in order of preference (the first is its default).
    pub fn roles_for(&self, subject: &str, groups: &[String], issuer: &str) -> Vec<String> {
        self.trust.get().roles_for(subject, groups, issuer)
    }

    fn assume(
        &self,
        p: Principal,
        requested: &str,
        is_role: &(dyn Fn(&str) -> bool + Sync),
        elevations: bool,
    ) -> Result<Identity, AuthError> {
        // Credentials with their own role list (API keys, static tokens) are deliberately
        // narrow: an elevation never widens them.
        let elevations = elevations && p.roles.is_none();
        let allowed = match p.roles {
            Some(r) => r,
            None => self.roles_for(&p.subject, &p.groups, &p.issuer),
        };
        if !allowed.iter().any(|r| is_role(r)) {
            return Err(AuthError::NoRole { subject: p.subject });
        }
        let mut expires_at = p.expires_at;
        let role = if is_role(requested) {
            if !allowed.iter().any(|r| r == requested) {
                // An approved elevation: the role until it ends (the session ends then too).
                let until = elevations
                    .then(|| self.elevations.until(&p.issuer, &p.subject, requested))
                    .flatten();
                let Some(until) = until else {
                    return Err(AuthError::RoleNotAllowed {
                        subject: p.subject,
                        role: requested.to_owned(),
                    });
                };
                expires_at = Some(expires_at.map_or(until, |e| e.min(until)));
            }
            requested.to_owned()
        } else {
            allowed
                .iter()
                .find(|r| is_role(r))
                .cloned()
                .ok_or_else(|| AuthError::NoRole {
                    subject: p.subject.clone(),
                })?
        };
        Ok(Identity {
            subject: Subject(p.subject),
            role: RoleName(role),
            groups: p.groups,
            issuer: p.issuer,
            credential: p.credential,
            expires_at,
        })
    }

    /// Whether the credential behind a running session is still good: not revoked, and still
    /// admitted by the trust in force (its static identity, issuer and role binding still
    /// configured, or an approved elevation still running).
    pub fn still_valid(&self, identity: &Identity) -> bool {
        let revoked = |issued_at| {
            self.token_revocations
                .as_ref()
                .is_some_and(|l| l.is_revoked(&identity.individual(), issued_at))
        };
        let trust = self.trust.get();
        let (subject, role) = (identity.subject.0.as_str(), identity.role.0.as_str());
        let bound = || {
            trust
                .roles_for(subject, &identity.groups, &identity.issuer)
                .iter()
                .any(|r| r == role)
                || self
                    .elevations
                    .until(&identity.issuer, subject, role)
                    .is_some()
        };
        match (&identity.credential, &self.keys) {
            (Credential::ApiKey { id }, Some(store)) => store.still_valid(id),
            (Credential::ApiKey { .. }, None) => false,
            (Credential::GatewayToken { issued_at }, _) => {
                let trusted = if identity.issuer == DEVELOPMENT_ISSUER {
                    self.development
                } else {
                    trust.has_issuer(&identity.issuer)
                };
                trusted && !revoked(Some(*issued_at)) && bound()
            }
            (Credential::Oidc { issued_at }, _) => {
                trust.has_issuer(&identity.issuer) && !revoked(*issued_at) && bound()
            }
            (Credential::StaticToken { sha256 }, _) => trust.static_admits(sha256, subject, role),
        }
    }

    /// Ticks whenever credentials may have been revoked (or the trust replaced).
    pub fn revocations(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(match &self.keys {
            Some(k) => k.subscribe(),
            None => self.changed.subscribe(),
        })
    }
}

/// A token's `iat` in whole unix seconds, if it has a sensible one.
fn issued_at(claims: &serde_json::Value) -> Option<u64> {
    claims
        .get("iat")
        .and_then(serde_json::Value::as_f64)
        .filter(|t| (0.0..4.0e9).contains(t))
        .map(|t| t as u64)
}

/// The individual an OIDC token names. An e-mail address names someone only if the IdP
/// verified it: `email_verified` must be JSON `true` (not `"true"`, not absent), unless the
/// issuer is configured with `allow_unverified_email`.
fn oidc_subject(cfg: &OidcConfig, claims: &serde_json::Value) -> Result<String, AuthError> {
    let subject = jwt::subject(claims, &cfg.subject_claim)?;
    let is_email = cfg.subject_claim.trim().eq_ignore_ascii_case("email");
    if is_email
        && !cfg.allow_unverified_email
        && claims.get("email_verified") != Some(&serde_json::Value::Bool(true))
    {
        return Err(AuthError::UnverifiedEmail);
    }
    Ok(subject)
}

/// The issuer name the gateway signs with.
pub fn gateway_issuer(config: &Config, http: Option<std::net::SocketAddr>) -> String {
    if let Some(i) = &config.auth.issuer {
        return i.clone();
    }
    match http {
        Some(a) if config.listen.http_tls => format!("https://{a}"),
        Some(a) => format!("http://{a}"),
        None => "phigate".into(),
    }
}

/// Whether a data directory holds a signing key (for CLI commands that must not create one).
pub fn has_signing_key(dir: &Path) -> bool {
    signer::key_path(dir).exists()
}

/// An address over its failed-login limit learns nothing from its guesses (every failure is
/// "rate limited", whatever was wrong), but a valid credential still gets in: agents often
/// share an address (a CI runner, a sidecar), and one of them guessing must not lock out the
/// others, or the reviewers on the same host.
fn limit_guesses<T>(limited: Option<u64>, result: Result<T, AuthError>) -> Result<T, AuthError> {
    match (limited, result) {
        (Some(wait), Err(_)) => Err(AuthError::RateLimited(wait)),
        (_, r) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        Authenticator::with_statics(&[StaticIdentity {
            subject: "agent@example.org".into(),
            token_sha256: hex::encode(token_sha256("tok-1")),
            roles: vec!["ai-agent".into(), "readonly".into()],
        }])
    }

    fn is_role(r: &str) -> bool {
        ["ai-agent", "readonly", "admin"].contains(&r)
    }

    #[tokio::test]
    async fn token_and_role_checks() {
        let a = auth();
        let ip: IpAddr = [127, 0, 0, 1].into();
        let role = |r: &'static str, t: &'static str| {
            let a = &a;
            async move { a.authenticate(ip, r, t, &is_role).await.map(|i| i.role.0) }
        };
        assert_eq!(role("readonly", "tok-1").await, Ok("readonly".to_owned()));
        assert_eq!(role("", "tok-1").await, Ok("ai-agent".to_owned()));
        assert_eq!(role("postgres", "tok-1").await, Ok("ai-agent".to_owned()));
        assert_eq!(
            role("ai-agent", "tok-2").await,
            Err(AuthError::InvalidCredentials)
        );
        assert!(matches!(
            role("admin", "tok-1").await,
            Err(AuthError::RoleNotAllowed { .. })
        ));
    }

    #[test]
    fn bindings_match_groups_subjects_and_issuer() {
        let a = auth();
        let mut trust = Trust::with_statics(&[]);
        trust.bindings = vec![
            BindingConfig {
                roles: vec!["clinician".into()],
                groups: vec!["clinicians".into()],
                subjects: vec![],
                issuer: Some("corp".into()),
            },
            BindingConfig {
                roles: vec!["readonly".into(), "clinician".into()],
                groups: vec![],
                subjects: vec!["bob".into()],
                issuer: None,
            },
        ];
        a.trust.set(trust);
        assert_eq!(
            a.roles_for("alice", &["clinicians".into()], "corp"),
            vec!["clinician"]
        );
        assert!(a
            .roles_for("alice", &["clinicians".into()], "other")
            .is_empty());
        assert_eq!(
            a.roles_for("bob", &["clinicians".into()], "corp"),
            vec!["clinician", "readonly"]
        );
    }

    #[test]
    fn loopback_urls() {
        assert!(is_loopback_url("http://127.0.0.1:8080/x"));
        assert!(is_loopback_url("http://localhost"));
        assert!(is_loopback_url("http://[::1]:9/"));
        assert!(!is_loopback_url("http://idp.example.org"));
        assert!(!is_loopback_url("https://127.0.0.1"));
        assert!(!is_loopback_url("http://127.0.0.1.evil.org/"));
    }

    #[test]
    fn item5_email_subjects_need_email_verified_true() {
        let cfg = |allow: bool| -> OidcConfig {
            let mut c: OidcConfig = serde_json::from_value(serde_json::json!({
                "name": "corp", "issuer": "https://idp", "audience": ["phigate"],
                "subject_claim": "email",
            }))
            .expect("config");
            c.allow_unverified_email = allow;
            c
        };
        let claims =
            |v: serde_json::Value| serde_json::json!({"email": "a@x", "email_verified": v});
        assert_eq!(
            oidc_subject(&cfg(false), &claims(true.into())),
            Ok("a@x".into())
        );
        for v in [
            serde_json::json!(false),
            serde_json::json!("true"),
            serde_json::json!(1),
            serde_json::Value::Null,
        ] {
            assert_eq!(
                oidc_subject(&cfg(false), &claims(v.clone())),
                Err(AuthError::UnverifiedEmail),
                "{v}"
            );
            assert_eq!(oidc_subject(&cfg(true), &claims(v)), Ok("a@x".into()));
        }
        let absent = serde_json::json!({"email": "a@x"});
        assert_eq!(
            oidc_subject(&cfg(false), &absent),
            Err(AuthError::UnverifiedEmail)
        );
        // `sub` is the IdP's own identifier: no e-mail rule.
        let mut sub = cfg(false);
        sub.subject_claim = "sub".into();
        assert_eq!(
            oidc_subject(&sub, &serde_json::json!({"sub": "s1"})),
            Ok("s1".into())
        );
    }

    #[test]
    fn item11_schemes_compare_case_insensitively() {
        use crate::config::auth::is_secure_url;
        assert!(is_loopback_url("HTTP://LOCALHOST:9/"));
        assert!(is_secure_url("HTTPS://idp.example.org"));
        assert!(is_secure_url("https://idp.example.org/jwks"));
        assert!(is_secure_url("http://127.0.0.1:8080/jwks"));
        for bad in [
            "HTTP://idp.example.org",
            "Http://idp.example.org/jwks",
            "http://idp.example.org",
            "ftp://idp.example.org",
            "idp.example.org",
            "https://",
        ] {
            assert!(!is_secure_url(bad), "{bad}");
        }
    }
}
