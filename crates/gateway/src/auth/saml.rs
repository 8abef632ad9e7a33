//! SAML 2.0 identity providers (`[[auth.saml]]`) as the gateway trusts them, and the checks
//! around a response's verification: which responses may be read at all (an answer to a request
//! of ours, not answered before, or an unsolicited one where allowed; an assertion not seen
//! before) and who they make someone. The XML work is `phigate_saml`'s; the state of sign-ins
//! is [`super::saml_state`]'s.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use phigate_saml::{IdentityProvider, ServiceProvider, SignatureAlgorithm};

use super::saml_state::{Flight, Flights, Person, Purpose, Started};
use super::{AuthError, Authenticator, Individual};
use crate::config::SamlConfig;

/// How long fetched IdP metadata is used before it is fetched again; and after a failed
/// fetch, how long before the next try.
const METADATA_MAX_AGE: Duration = Duration::from_secs(3600);
const METADATA_RETRY: Duration = Duration::from_secs(10);
/// While the metadata URL cannot be fetched, the last document is used at most this long after
/// it was fetched (an IdP may have withdrawn a compromised key since).
const METADATA_MAX_STALE: Duration = Duration::from_secs(24 * 3600);
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
    /// From `idp_metadata_file`.
    Loaded(Arc<IdentityProvider>),
    /// Fetched at `fetched`; the next fetch is due at `due`.
    Fetched {
        fetched: Instant,
        due: Instant,
        idp: Arc<IdentityProvider>,
    },
    /// Nothing fetched (yet, or any more); the next try is due at `due`.
    Missing { due: Instant },
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
                Metadata::Missing {
                    due: Instant::now(),
                },
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

    /// The identity provider: from its file, or its URL's document, fetched again after an
    /// hour. One caller fetches at a time (the others use the document there is, or are told
    /// the IdP is unavailable, until the next try 10 s later); while fetches fail, the last
    /// document stays in use for at most [`METADATA_MAX_STALE`].
    pub async fn idp(&self) -> Result<Arc<IdentityProvider>, AuthError> {
        let now = Instant::now();
        {
            let mut m = self.metadata.lock().unwrap_or_else(|e| e.into_inner());
            match &mut *m {
                Metadata::Loaded(idp) => return Ok(idp.clone()),
                Metadata::Fetched { due, idp, .. } if now < *due => return Ok(idp.clone()),
                Metadata::Missing { due } if now < *due => return Err(AuthError::IdpUnavailable),
                Metadata::Fetched { due, .. } | Metadata::Missing { due } => {
                    *due = now + METADATA_RETRY;
                }
            }
        }
        let fetched = self.fetch().await;
        let mut m = self.metadata.lock().unwrap_or_else(|e| e.into_inner());
        match fetched {
            Ok(idp) => {
                let idp = Arc::new(idp);
                *m = Metadata::Fetched {
                    fetched: Instant::now(),
                    due: Instant::now() + METADATA_MAX_AGE,
                    idp: idp.clone(),
                };
                Ok(idp)
            }
            Err(e) => {
                tracing::warn!(issuer = %self.cfg.name, error = %e, "cannot fetch SAML IdP metadata");
                match &*m {
                    Metadata::Fetched { fetched, idp, .. }
                        if fetched.elapsed() < METADATA_MAX_STALE =>
                    {
                        Ok(idp.clone())
                    }
                    Metadata::Loaded(idp) => Ok(idp.clone()),
                    _ => {
                        *m = Metadata::Missing {
                            due: Instant::now() + METADATA_RETRY,
                        };
                        Err(AuthError::IdpUnavailable)
                    }
                }
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

    /// Every `[[auth.saml]]` issuer in force.
    pub fn saml_issuers(&self) -> Vec<Arc<SamlIssuer>> {
        self.trust.get().saml.clone()
    }

    pub fn saml_flights(&self) -> &Flights {
        &self.saml_flights
    }

    /// Starts a sign-in at `issuer`: what was started, and the IdP URL to send the browser to.
    pub async fn saml_start(
        &self,
        issuer: &SamlIssuer,
        purpose: Purpose,
    ) -> Result<(Started, String), AuthError> {
        let idp = issuer.idp().await?;
        let started = self.saml_flights.start(&issuer.cfg.name, purpose);
        let req = phigate_saml::authn_request(
            &idp,
            &issuer.sp,
            &started.request_id,
            &started.relay,
            SystemTime::now(),
        );
        Ok((started, req.redirect_url))
    }

    /// Verifies a `SAMLResponse` posted to `issuer`'s ACS with `relay_state`: an answer to a
    /// request of ours not answered before (or, where allowed, an unsolicited one), an
    /// assertion not seen before, an individual not revoked. Returns the person, and the sign-in the RelayState named (so that a refusal can
    /// be told to whoever started it).
    pub async fn saml_assertion(
        &self,
        issuer: &SamlIssuer,
        saml_response: &str,
        relay_state: Option<&str>,
    ) -> (Result<Person, AuthError>, Option<Flight>) {
        let flight = relay_state
            .filter(|r| !r.is_empty())
            .map(|r| self.saml_flights.flight(&issuer.cfg.name, r));
        // Not counted towards the failed-login limit: a response cannot be guessed (it is
        // signed), and any web page can make a browser post one, so counting would let a
        // page lock its visitors out.
        let result = self
            .verify_saml(issuer, saml_response, flight.as_ref())
            .await;
        (result, flight.flatten())
    }

    /// A refused SAML step from `peer`: one more failure, if it was a guess.
    pub fn count_failure(&self, peer: IpAddr, e: &AuthError) {
        if e.is_failed_guess() {
            let n = self.failed.failed(peer);
            tracing::warn!(%peer, failures = n, error = %e, "SAML sign-in refused");
        }
    }

    /// `phigate login` redeems its one-time code with its PKCE verifier. Counts towards the
    /// failed-login limit.
    pub fn saml_redeem(
        &self,
        peer: IpAddr,
        code: &str,
        verifier: &str,
    ) -> Result<Person, AuthError> {
        use base64::Engine;
        use sha2::Digest;
        self.failed.check(peer).map_err(AuthError::RateLimited)?;
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(verifier.as_bytes()));
        let redeemed = (code.len() <= 128 && verifier.len() <= 128)
            .then(|| self.saml_flights.redeem(code))
            .flatten()
            .filter(|c| super::saml_state::same(&c.challenge, &challenge));
        match redeemed {
            Some(c) => Ok(c.person),
            None => {
                let e =
                    AuthError::Saml("unknown, used or expired code, or the wrong verifier".into());
                self.count_failure(peer, &e);
                Err(e)
            }
        }
    }

    /// `flight`: `None` without a RelayState; `Some(None)` for one this gateway did not make
    /// (for this issuer), or that expired.
    async fn verify_saml(
        &self,
        issuer: &SamlIssuer,
        saml_response: &str,
        flight: Option<&Option<Flight>>,
    ) -> Result<Person, AuthError> {
        let flight = match flight {
            Some(Some(f)) if self.saml_flights.answered(&f.request_id) => {
                return Err(super::saml_state::already_answered())
            }
            Some(Some(f)) => Some(f),
            Some(None) => {
                return Err(AuthError::Saml(
                    "this sign-in was not started here or took too long; start again".into(),
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
        if let Some(f) = flight {
            self.saml_flights.answer(&f.request_id)?;
        }
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
