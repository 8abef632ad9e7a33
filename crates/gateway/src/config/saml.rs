//! `[[auth.saml]]`: SAML 2.0 identity providers for people signing in (the web console and
//! `phigate login`). The gateway is the service provider; see docs/identity.md.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::auth::is_secure_url;
use super::{Config, ConfigError};

/// One trusted SAML identity provider.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SamlConfig {
    /// A short name: in the gateway's URLs (`/saml/{name}/...`), in bindings
    /// (`issuer = "{name}"`), for `phigate login --issuer {name}` and in logs. Letters, digits,
    /// `-` and `_`.
    pub name: String,
    /// The IdP's SAML metadata (its entity id, signing certificates, single sign-on URL), as a
    /// file; read at start and at every reload. Either this or `idp_metadata_url`.
    pub idp_metadata_file: Option<PathBuf>,
    /// The IdP's metadata URL (https; plain http only on loopback), fetched when first needed
    /// and again after an hour.
    pub idp_metadata_url: Option<String>,
    /// CA bundle for `idp_metadata_url`'s certificate; the Mozilla roots if unset.
    pub ca_file: Option<PathBuf>,
    /// This gateway's entity id at the IdP: the audience every assertion must name.
    pub sp_entity_id: String,
    /// This gateway's assertion consumer service as the IdP reaches it:
    /// `https://<gateway>/saml/{name}/acs` (plain http only on loopback).
    pub acs_url: String,
    /// The attribute naming the individual (`mail`, `uid`, ...). Unset: the NameID.
    pub subject_attribute: Option<String>,
    /// The attribute holding the person's groups (for bindings' `groups`).
    pub groups_attribute: Option<String>,
    /// Signature algorithms accepted: `rsa-sha256`, `rsa-sha384`, `rsa-sha512` (default: all
    /// three). SHA-1 is never accepted.
    #[serde(default)]
    pub allowed_signature_algorithms: Vec<String>,
    /// Accept responses that answer no request of ours (IdP-initiated sign-in, from the IdP's
    /// portal). Such a response signs no one in by itself (anyone could have posted it: login
    /// CSRF): once verified and spent, it starts a sign-in at the gateway, bound to the browser,
    /// which the IdP completes at once. Off by default.
    #[serde(default)]
    pub allow_idp_initiated: bool,
}

impl SamlConfig {
    /// The configured algorithms, or all supported ones.
    pub fn algorithms(&self) -> Result<Vec<phigate_saml::SignatureAlgorithm>, String> {
        if self.allowed_signature_algorithms.is_empty() {
            return Ok(phigate_saml::SignatureAlgorithm::ALL.to_vec());
        }
        self.allowed_signature_algorithms
            .iter()
            .map(|a| phigate_saml::SignatureAlgorithm::from_name(a))
            .collect()
    }
}

/// Whether `name` may be used in a URL path segment and a binding.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Config {
    /// Checks `[[auth.saml]]` (names unique among all issuers are checked with the OIDC ones).
    pub(super) fn validate_saml(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        for s in &self.auth.saml {
            let n = &s.name;
            if !valid_name(n) {
                return invalid(format!(
                    "auth.saml {n:?}: a name is 1 to 64 letters, digits, '-' or '_'"
                ));
            }
            match (&s.idp_metadata_file, &s.idp_metadata_url) {
                (Some(_), None) => {}
                (None, Some(url)) if is_secure_url(url) => {}
                (None, Some(_)) => {
                    return invalid(format!(
                    "auth.saml {n}: idp_metadata_url must be https (plain http only on loopback)"
                ))
                }
                _ => {
                    return invalid(format!(
                        "auth.saml {n}: set exactly one of idp_metadata_file and idp_metadata_url"
                    ))
                }
            }
            if s.sp_entity_id.trim().is_empty() {
                return invalid(format!(
                    "auth.saml {n}: sp_entity_id must name this gateway at the IdP"
                ));
            }
            let path = format!("/saml/{n}/acs");
            let acs_ok = is_secure_url(&s.acs_url)
                && s.acs_url.ends_with(&path)
                && !s.acs_url.contains(['?', '#']);
            if !acs_ok {
                return invalid(format!(
                    "auth.saml {n}: acs_url must be https://<this gateway>{path} (plain http only \
                     on loopback): responses are checked against it"
                ));
            }
            if let Err(e) = s.algorithms() {
                return invalid(format!("auth.saml {n}: {e}"));
            }
            let empty = |a: &Option<String>| a.as_deref().is_some_and(|v| v.trim().is_empty());
            if empty(&s.subject_attribute) || empty(&s.groups_attribute) {
                return invalid(format!(
                    "auth.saml {n}: subject_attribute and groups_attribute, when set, name an \
                     attribute"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saml(extra: &str) -> String {
        format!(
            r#"
data_dir = "/var/lib/phigate"

[listen]
address = "127.0.0.1:6432"

[upstream]
host = "127.0.0.1"
database = "clinic"
user = "phigate"
password = "x"

[[auth.saml]]
name = "hospital"
sp_entity_id = "https://gw.example/saml/hospital/metadata"
acs_url = "https://gw.example/saml/hospital/acs"
{extra}

[[binding]]
issuer = "hospital"
groups = ["clinicians"]
roles = ["clinician"]

[[role]]
name = "clinician"
"#
        )
    }

    fn refused(toml: &str) -> String {
        match Config::parse(toml, std::path::Path::new("t.toml")) {
            Ok(_) => panic!("accepted:\n{toml}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_saml_issuer_is_accepted_and_bindings_may_name_it() {
        let c = Config::parse(
            &saml("idp_metadata_file = \"/etc/phigate/idp.xml\""),
            std::path::Path::new("t.toml"),
        )
        .expect("valid");
        assert_eq!(c.auth.saml[0].algorithms().expect("algs").len(), 3);
        assert!(!c.auth.saml[0].allow_idp_initiated);
    }

    #[test]
    fn unsafe_saml_settings_are_refused() {
        let e = refused(&saml(""));
        assert!(e.contains("exactly one of idp_metadata_file"), "{e}");
        let e = refused(&saml("idp_metadata_url = \"http://idp.example/md\""));
        assert!(e.contains("must be https"), "{e}");
        let e = refused(&saml(
            "idp_metadata_file = \"/x\"\nallowed_signature_algorithms = [\"rsa-sha1\"]",
        ));
        assert!(e.contains("SHA-1"), "{e}");
        let e = refused(&saml("idp_metadata_file = \"/x\"").replace(
            "https://gw.example/saml/hospital/acs",
            "http://gw.example/saml/hospital/acs",
        ));
        assert!(e.contains("acs_url must be https"), "{e}");
        let e = refused(&saml("idp_metadata_file = \"/x\"").replace("hospital/acs", "other/acs"));
        assert!(e.contains("acs_url"), "{e}");
        let e = refused(&saml("idp_metadata_file = \"/x\"").replace("hospital", "development"));
        assert!(e.contains("reserved"), "{e}");
    }
}
