//! How callers prove who they are (OIDC issuers, static identities, gateway tokens, failed-login
//! limits) and which identities may assume which roles; the checks that refuse a config letting
//! anyone in without an individual identity. The pure rules for the values written here (reserved
//! issuer names, loopback URLs, signature algorithms) live here too, so `auth` uses them from the
//! config and the config needs nothing from `auth`.

use std::net::IpAddr;
use std::path::PathBuf;

use jsonwebtoken::Algorithm;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Config, ConfigError};

/// The issuer name of development tokens minted by `phigate token mint`.
pub const DEVELOPMENT_ISSUER: &str = "development";

/// The identities of `phigate demo` (its development issuer): name in the ready file,
/// subject, role (the startup `user`), and the group their token carries.
pub const DEVELOPMENT_IDENTITIES: [(&str, &str, &str, &str); 4] = [
    ("agent", "coding-agent@demo.phigate", "ai-agent", "agents"),
    (
        "clinician",
        "dr.rivera@demo.phigate",
        "clinician",
        "clinicians",
    ),
    ("admin", "admin@demo.phigate", "admin", "admins"),
    (
        "reviewer",
        "privacy.officer@demo.phigate",
        "reviewer",
        "reviewers",
    ),
];

/// Accepted when an issuer's config does not narrow the list.
pub const DEFAULT_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Parses an algorithm name from the config; symmetric ones are refused.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    let alg: Algorithm = name
        .parse()
        .map_err(|_| format!("unknown signature algorithm {name:?}"))?;
    if !DEFAULT_ALGORITHMS.contains(&alg) {
        return Err(format!(
            "algorithm {name} is not allowed: symmetric (HS*) keys would let anyone holding the \
             verification key sign tokens"
        ));
    }
    Ok(alg)
}

/// `http://127.0.0.1...`, `http://localhost...`, `http://[::1]...`.
pub fn is_loopback_url(url: &str) -> bool {
    let Some(rest) = strip_scheme(url, "http") else {
        return false;
    };
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The rest of `url` after `scheme://`, the scheme compared without regard to case (RFC 3986
/// §3.1: `HTTP://` is `http://`, and must not slip past a rule written for `http://`).
fn strip_scheme<'a>(url: &'a str, scheme: &str) -> Option<&'a str> {
    let (s, rest) = url.split_once("://")?;
    s.eq_ignore_ascii_case(scheme).then_some(rest)
}

/// Whether keys or tokens may be fetched from `url`: https, or plain http to a loopback
/// address. Any other scheme, in any case, is refused.
pub fn is_secure_url(url: &str) -> bool {
    strip_scheme(url, "https").is_some_and(|rest| !rest.is_empty()) || is_loopback_url(url)
}

/// A caller known by the SHA-256 of its token. The token goes in the password field; the
/// startup `user` names the role to assume.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StaticIdentity {
    /// The individual: a person's e-mail or a service name.
    pub subject: String,
    /// Hex SHA-256 of the token.
    pub token_sha256: String,
    /// Roles this identity may assume; the first is its default.
    pub roles: Vec<String>,
}

/// Authentication settings.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// The `iss` of tokens the gateway signs itself (`phigate login`, the development issuer).
    /// Defaults to the HTTP address's URL, else `phigate`.
    pub issuer: Option<String>,
    /// Lifetime of the session tokens `phigate login` obtains, in seconds.
    #[serde(default = "default_session_token_ttl")]
    pub session_token_ttl_secs: u64,
    /// Development only (the demo): `phigate token mint` may sign a token for any subject and
    /// groups with the gateway's key. Never enable this in front of real patient data.
    #[serde(default)]
    pub development: bool,
    /// OpenID Connect issuers whose JWTs are accepted.
    #[serde(default)]
    pub oidc: Vec<OidcConfig>,
    /// SAML 2.0 identity providers people sign in with (the console, `phigate login`).
    #[serde(default)]
    pub saml: Vec<super::saml::SamlConfig>,
    #[serde(default)]
    pub failed_logins: FailedLogins,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            leeway_secs: default_leeway(),
            issuer: None,
            session_token_ttl_secs: default_session_token_ttl(),
            development: false,
            oidc: Vec::new(),
            saml: Vec::new(),
            failed_logins: FailedLogins::default(),
        }
    }
}

fn default_leeway() -> u64 {
    30
}
fn default_session_token_ttl() -> u64 {
    3600
}

/// One trusted OpenID Connect issuer.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// A short name, used by bindings (`issuer = "corp"`) and in logs.
    pub name: String,
    /// The issuer URL, exactly as tokens carry it in `iss`.
    pub issuer: String,
    /// Accepted `aud` values: at least one (a token minted for another application must not
    /// open a database session).
    pub audience: Vec<String>,
    /// Where the signing keys are; found through discovery
    /// (`{issuer}/.well-known/openid-configuration`) if unset.
    pub jwks_uri: Option<String>,
    /// The claim that names the individual (`sub`, `email`, `preferred_username`, ...).
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// The claim holding the caller's groups; a dotted path such as `realm_access.roles` works.
    pub groups_claim: Option<String>,
    /// Signature algorithms accepted. Default: RS256/384/512, PS256/384/512, ES256/384, EdDSA.
    /// Symmetric (HS*) and `none` are never accepted.
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// The OAuth client `phigate login` uses (a public client with PKCE / device flow).
    pub client_id: Option<String>,
    /// Extra scopes `phigate login` asks for, besides `openid` and the standard scope that
    /// releases `subject_claim` (`email`, `profile`, `phone` or `address`), which it adds.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Seconds between JWKS fetches for an unknown `kid` (a flood of made-up key ids cannot
    /// make the gateway hammer the IdP).
    #[serde(default = "default_jwks_min_refresh")]
    pub jwks_min_refresh_secs: u64,
    /// Keys are fetched again after this many seconds.
    #[serde(default = "default_jwks_max_age")]
    pub jwks_max_age_secs: u64,
    /// CA bundle for the IdP's HTTPS certificate; the Mozilla roots if unset.
    pub ca_file: Option<PathBuf>,
    /// DANGEROUS. When `subject_claim` is `email`, a token is refused unless its
    /// `email_verified` claim is JSON `true`: at an IdP that lets people type in their own
    /// address, an unverified e-mail lets anyone become anyone. Set this only for an IdP that
    /// never issues an address its owner has not proven (and says so by omitting the claim).
    #[serde(default)]
    pub allow_unverified_email: bool,
}

/// The scopes `phigate login` asks the IdP for: `openid`, the standard scope that releases the
/// `subject_claim` (OpenID Connect Core §5.4: `email` for `email`, `profile` for
/// `preferred_username`, `name` and the like, `phone` for `phone_number`), then the configured
/// ones; each once.
pub fn login_scopes(cfg: &OidcConfig) -> Vec<String> {
    let claim = cfg.subject_claim.trim().to_ascii_lowercase();
    let implied = match claim.as_str() {
        "email" | "email_verified" => Some("email"),
        "name" | "family_name" | "given_name" | "middle_name" | "nickname"
        | "preferred_username" | "profile" | "picture" | "website" | "gender" | "birthdate"
        | "zoneinfo" | "locale" | "updated_at" => Some("profile"),
        "phone_number" | "phone_number_verified" => Some("phone"),
        "address" => Some("address"),
        _ => None,
    };
    let mut scopes = vec!["openid".to_owned()];
    for s in implied
        .map(str::to_owned)
        .into_iter()
        .chain(cfg.scopes.iter().cloned())
    {
        if !scopes.contains(&s) {
            scopes.push(s);
        }
    }
    scopes
}

fn default_subject_claim() -> String {
    "sub".into()
}
fn default_jwks_min_refresh() -> u64 {
    10
}
fn default_jwks_max_age() -> u64 {
    3600
}

/// Failed logins are counted per source address (IPv6: per /64); past the limit, that address
/// is refused without a check until the window passes.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailedLogins {
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    #[serde(default = "default_failure_window")]
    pub window_secs: u64,
}

impl Default for FailedLogins {
    fn default() -> Self {
        FailedLogins {
            max_failures: default_max_failures(),
            window_secs: default_failure_window(),
        }
    }
}

fn default_max_failures() -> u32 {
    10
}
fn default_failure_window() -> u64 {
    60
}

/// Grants roles to identities. An identity may assume the roles of every binding it matches;
/// its default role is the first role of the first binding it matches.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BindingConfig {
    /// Roles granted, in order of preference.
    pub roles: Vec<String>,
    /// Matches identities in any of these groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Matches these individuals (the subject claim's value).
    #[serde(default)]
    pub subjects: Vec<String>,
    /// Only identities vouched for by this issuer: an `[[auth.oidc]]` or `[[auth.saml]]` name,
    /// or `development` for tokens from `phigate token mint`. Any issuer if unset.
    pub issuer: Option<String>,
}

impl Config {
    /// Rejects any configuration that would let a caller in without an individual identity.
    pub(super) fn validate_auth(&self, policy: &phigate_policy::Policy) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let mut names = std::collections::HashSet::new();
        let reserved = [DEVELOPMENT_ISSUER, "static", "api-key"];
        for s in &self.auth.saml {
            if !names.insert(s.name.as_str()) || reserved.contains(&s.name.as_str()) {
                return invalid(format!(
                    "auth.saml: the name {} is used twice or reserved",
                    s.name
                ));
            }
        }
        self.validate_saml()?;
        for o in &self.auth.oidc {
            if !names.insert(o.name.as_str()) || reserved.contains(&o.name.as_str()) {
                return invalid(format!(
                    "auth.oidc: the name {} is used twice (among [[auth.oidc]] and [[auth.saml]]) \
                     or reserved",
                    o.name
                ));
            }
            if self
                .auth
                .oidc
                .iter()
                .filter(|x| x.issuer == o.issuer)
                .count()
                > 1
            {
                return invalid(format!(
                    "auth.oidc {}: the issuer {} is configured twice",
                    o.name, o.issuer
                ));
            }
            if self.auth.issuer.as_deref() == Some(o.issuer.as_str()) {
                return invalid(format!(
                    "auth.issuer equals the issuer of auth.oidc {}: gateway tokens would shadow it",
                    o.name
                ));
            }
            if o.audience.is_empty() || o.audience.iter().any(|a| a.trim().is_empty()) {
                return invalid(format!(
                    "auth.oidc {}: audience must name this gateway's audience; without it any token \
                     the issuer minted for any application would open a session",
                    o.name
                ));
            }
            if o.subject_claim.trim().is_empty() {
                return invalid(format!("auth.oidc {}: subject_claim is empty", o.name));
            }
            let insecure = |url: &str| !is_secure_url(url);
            if insecure(&o.issuer) || o.jwks_uri.as_deref().is_some_and(insecure) {
                return invalid(format!(
                    "auth.oidc {}: the issuer and JWKS must be https (plain http only on loopback)",
                    o.name
                ));
            }
            for alg in &o.algorithms {
                parse_algorithm(alg)
                    .map_err(|e| ConfigError::Invalid(format!("auth.oidc {}: {e}", o.name)))?;
            }
        }
        // Bindings apply to OIDC and SAML identities and to gateway tokens (login, development).
        let issuers =
            self.auth.oidc.len() + self.auth.saml.len() + usize::from(self.auth.development);
        for (i, b) in self.bindings.iter().enumerate() {
            let n = i + 1;
            if !b.subjects.is_empty() && b.issuer.is_none() && issuers > 1 {
                return invalid(format!(
                    "binding #{n}: it names subjects but no issuer, and {issuers} issuers are \
                     configured; a subject is only an individual at its issuer (the same \
                     text at another issuer is someone else): add issuer = \"<an [[auth.oidc]] \
                     or [[auth.saml]] name, or development>\""
                ));
            }
            if b.roles.is_empty() {
                return invalid(format!("binding #{n}: roles is empty"));
            }
            if b.groups.is_empty() && b.subjects.is_empty() {
                return invalid(format!(
                    "binding #{n}: it names no groups and no subjects, so it would give roles {:?} \
                     to anyone who holds any token; name the groups or subjects it is for",
                    b.roles
                ));
            }
            for role in &b.roles {
                if policy.role(role).is_none() {
                    return invalid(format!(
                        "binding #{n}: role {role} is not defined (add a [[role]] named {role})"
                    ));
                }
            }
            if let Some(iss) = &b.issuer {
                let known = iss == DEVELOPMENT_ISSUER
                    || self.auth.oidc.iter().any(|o| &o.name == iss)
                    || self.auth.saml.iter().any(|s| &s.name == iss);
                if !known {
                    return invalid(format!(
                        "binding #{n}: issuer {iss} is not an [[auth.oidc]] or [[auth.saml]] name \
                         (nor `development`)"
                    ));
                }
            }
        }
        let mut hashes = std::collections::HashSet::new();
        for id in &self.identities {
            if !hashes.insert(id.token_sha256.to_ascii_lowercase()) {
                return invalid(format!(
                    "identity {}: its token is shared with another identity; every individual needs its own",
                    id.subject
                ));
            }
        }
        if self.auth.session_token_ttl_secs == 0 || self.auth.session_token_ttl_secs > 24 * 3600 {
            return invalid("auth.session_token_ttl_secs must be between 1 and 86400".into());
        }
        if self.auth.failed_logins.max_failures == 0 || self.auth.failed_logins.window_secs == 0 {
            return invalid(
                "auth.failed_logins: max_failures and window_secs must be at least 1".into(),
            );
        }
        if self.auth.leeway_secs > 300 {
            return invalid("auth.leeway_secs is at most 300 (a small clock skew)".into());
        }
        if let Some(o) = self.auth.oidc.iter().find(|o| o.jwks_min_refresh_secs == 0) {
            return invalid(format!(
                "auth.oidc {}: jwks_min_refresh_secs must be at least 1",
                o.name
            ));
        }
        if let Some(id) = self.identities.iter().find(|i| {
            i.subject.trim().is_empty()
                || i.subject.len() > 256
                || i.subject.chars().any(char::is_control)
        }) {
            return invalid(format!(
                "identity {:?}: a subject is 1 to 256 printable characters",
                id.subject
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_asks_for_the_scope_that_releases_the_subject_claim() {
        let cfg = |claim: &str, scopes: &[&str]| -> OidcConfig {
            let mut c: OidcConfig = serde_json::from_value(serde_json::json!({
                "name": "corp", "issuer": "https://idp", "audience": ["phigate"],
            }))
            .expect("config");
            c.subject_claim = claim.into();
            c.scopes = scopes.iter().map(|s| (*s).to_owned()).collect();
            c
        };
        assert_eq!(login_scopes(&cfg("sub", &[])), ["openid"]);
        assert_eq!(login_scopes(&cfg("email", &[])), ["openid", "email"]);
        assert_eq!(
            login_scopes(&cfg(" Email ", &["email", "groups"])),
            ["openid", "email", "groups"]
        );
        assert_eq!(
            login_scopes(&cfg("preferred_username", &["openid"])),
            ["openid", "profile"]
        );
        assert_eq!(login_scopes(&cfg("phone_number", &[])), ["openid", "phone"]);
        assert_eq!(login_scopes(&cfg("oid", &["db"])), ["openid", "db"]);
    }
}
