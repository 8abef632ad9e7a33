//! Who the gateway trusts and which roles they get: static identities, OIDC issuers, bindings
//! and the clock-skew leeway. Built from the config at start and again on every reload
//! (SIGHUP), then swapped whole ([`super::Authenticator::replace_trust`]); sessions whose
//! credential the new trust no longer admits end (the same channel as key revocation).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Algorithm;

use super::{jwks, jwt};
use crate::config::{BindingConfig, Config, OidcConfig, StaticIdentity};

pub(super) struct OidcIssuer {
    pub cfg: OidcConfig,
    pub algorithms: Vec<Algorithm>,
    pub jwks: jwks::Jwks,
}

impl OidcIssuer {
    fn new(o: &OidcConfig) -> anyhow::Result<OidcIssuer> {
        let algorithms = if o.algorithms.is_empty() {
            jwt::DEFAULT_ALGORITHMS.to_vec()
        } else {
            o.algorithms
                .iter()
                .map(|a| jwt::parse_algorithm(a).map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<_>>()?
        };
        Ok(OidcIssuer {
            algorithms,
            jwks: jwks::Jwks::new(
                &o.issuer,
                o.jwks_uri.clone(),
                jwks::client(o.ca_file.as_deref())
                    .map_err(|e| anyhow::anyhow!("auth.oidc {}: {e}", o.name))?,
                Duration::from_secs(o.jwks_min_refresh_secs),
                Duration::from_secs(o.jwks_max_age_secs),
            ),
            cfg: o.clone(),
        })
    }
}

/// What a reload may change about who gets in.
pub struct Trust {
    pub(super) statics: HashMap<[u8; 32], StaticIdentity>,
    pub(super) oidc: Vec<Arc<OidcIssuer>>,
    pub(super) saml: Vec<Arc<super::saml::SamlIssuer>>,
    pub(super) bindings: Vec<BindingConfig>,
    pub(super) leeway: Duration,
}

impl Trust {
    /// From the config. An issuer whose settings did not change keeps its key cache (`current`
    /// is the trust in force): a reload does not send every login to the IdP again.
    pub(super) fn build(config: &Config, current: Option<&Trust>) -> anyhow::Result<Trust> {
        let same = |a: &OidcConfig, b: &OidcConfig| {
            serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
        };
        let mut oidc = Vec::new();
        for o in &config.auth.oidc {
            let kept = current.and_then(|t| t.oidc.iter().find(|i| same(&i.cfg, o)).cloned());
            oidc.push(match kept {
                Some(i) => i,
                None => Arc::new(OidcIssuer::new(o)?),
            });
        }
        // A metadata file is read again (its certificates may have rotated); fetched metadata
        // is kept while the settings stay the same.
        let mut saml = Vec::new();
        for s in &config.auth.saml {
            let kept = current
                .filter(|_| s.idp_metadata_file.is_none())
                .and_then(|t| t.saml.iter().find(|i| &i.cfg == s).cloned());
            saml.push(match kept {
                Some(i) => i,
                None => Arc::new(super::saml::SamlIssuer::new(s)?),
            });
        }
        Ok(Trust {
            statics: statics(&config.identities),
            oidc,
            saml,
            bindings: config.bindings.clone(),
            leeway: Duration::from_secs(config.auth.leeway_secs),
        })
    }

    #[cfg(test)]
    pub(super) fn with_statics(identities: &[StaticIdentity]) -> Trust {
        Trust {
            statics: statics(identities),
            oidc: Vec::new(),
            saml: Vec::new(),
            bindings: Vec::new(),
            leeway: Duration::from_secs(30),
        }
    }

    /// The roles an identity may assume, in order of preference (the first is its default).
    pub fn roles_for(&self, subject: &str, groups: &[String], issuer: &str) -> Vec<String> {
        let mut roles: Vec<String> = Vec::new();
        for b in &self.bindings {
            if b.issuer.as_deref().is_some_and(|i| i != issuer) {
                continue;
            }
            let matches = b.subjects.iter().any(|s| s == subject)
                || b.groups.iter().any(|g| groups.contains(g));
            if matches {
                for r in &b.roles {
                    if !roles.contains(r) {
                        roles.push(r.clone());
                    }
                }
            }
        }
        roles
    }

    /// Whether the static identity behind `token_sha256` is still configured, as `subject`,
    /// with `role`.
    pub(super) fn static_admits(&self, token_sha256: &[u8; 32], subject: &str, role: &str) -> bool {
        self.statics
            .get(token_sha256)
            .is_some_and(|s| s.subject == subject && s.roles.iter().any(|r| r == role))
    }

    /// What `phigate login` needs to know of each issuer: every one is listed, with its login
    /// client (`client_id`, `null` when the issuer has none: its tokens are accepted but
    /// `phigate login` cannot sign in with it), the claim that names the individual and the
    /// scopes to ask for (those that release that claim included).
    /// SAML issuers are listed with `"kind": "saml"` and their sign-in path at the gateway.
    pub fn login_issuers(&self) -> Vec<serde_json::Value> {
        let oidc = self.oidc.iter().map(|o| {
            serde_json::json!({
                "name": o.cfg.name,
                "kind": "oidc",
                "issuer": o.cfg.issuer,
                "client_id": o.cfg.client_id,
                "subject_claim": o.cfg.subject_claim,
                "scopes": crate::config::auth::login_scopes(&o.cfg),
            })
        });
        let saml = self.saml.iter().map(|s| {
            serde_json::json!({
                "name": s.cfg.name,
                "kind": "saml",
                "login_path": format!("/saml/{}/login", s.cfg.name),
                "subject_attribute": s.cfg.subject_attribute,
            })
        });
        oidc.chain(saml).collect()
    }

    /// Whether each issuer's keys can be fetched now (`/readyz`), by name. Issuers are asked at
    /// once; one that has not answered within 3 s counts as unreachable.
    pub async fn probe_issuers(&self) -> Vec<(String, bool)> {
        let probes: Vec<_> = self
            .oidc
            .iter()
            .map(|o| {
                let o = o.clone();
                (
                    o.cfg.name.clone(),
                    tokio::spawn(async move { o.jwks.probe().await }),
                )
            })
            .collect();
        let mut out = Vec::with_capacity(probes.len());
        for (name, probe) in probes {
            let answered = tokio::time::timeout(Duration::from_secs(3), probe).await;
            out.push((name, matches!(answered, Ok(Ok(true)))));
        }
        out
    }

    pub(super) fn has_issuer(&self, name: &str) -> bool {
        self.oidc.iter().any(|o| o.cfg.name == name) || self.saml.iter().any(|s| s.cfg.name == name)
    }
}

fn statics(identities: &[StaticIdentity]) -> HashMap<[u8; 32], StaticIdentity> {
    identities
        .iter()
        .filter_map(|id| {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(&id.token_sha256, &mut hash).ok()?;
            Some((hash, id.clone()))
        })
        .collect()
}
