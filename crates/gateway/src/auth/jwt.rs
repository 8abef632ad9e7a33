//! JWT checks shared by every issuer: the header and the unverified `iss` are read first (to
//! pick the issuer and its key), then the signature and the time and audience claims.
//!
//! Only asymmetric algorithms are ever accepted. `none` is refused by name before anything
//! else, and so is every HS* algorithm: with HS256 the verification key is also the signing key,
//! and an attacker who signs with an issuer's *public* RSA key as an HMAC secret would otherwise
//! forge any token (the classic algorithm-confusion attack).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde_json::Value;

use super::AuthError;

/// Largest token accepted (a JWT with a generous set of groups is a few KiB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The accepted algorithms and the parsing of their names belong to the config file's rules.
pub use crate::config::auth::{parse_algorithm, DEFAULT_ALGORITHMS};

/// What the token says about itself before any check: enough to choose the key.
#[derive(Debug)]
pub struct Unverified {
    pub header: Header,
    pub issuer: String,
}

/// Reads the header and the `iss` claim. Refuses `none` and HS* at once.
pub fn peek(token: &str) -> Result<Unverified, AuthError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::TooLarge(MAX_TOKEN_BYTES));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let header_json = decode_json(h)?;
    let alg = header_json
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(AuthError::Malformed)?;
    match alg.parse::<Algorithm>() {
        Ok(a) if DEFAULT_ALGORITHMS.contains(&a) => {}
        _ => return Err(AuthError::AlgorithmNotAllowed),
    }
    check_header_extensions(&header_json)?;
    let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
    let issuer = decode_json(p)?
        .get("iss")
        .and_then(Value::as_str)
        .ok_or(AuthError::MissingClaim("iss"))?
        .to_owned();
    Ok(Unverified { header, issuer })
}

/// RFC 7515 §4.1.11: a recipient that does not understand an extension listed in `crit` must
/// reject the token. This gateway understands none, so any `crit` is refused. RFC 7797's
/// `b64: false` (an unencoded payload) changes what the signature covers: refused too, with
/// or without `crit`.
fn check_header_extensions(header: &Value) -> Result<(), AuthError> {
    if header.get("crit").is_some() {
        return Err(AuthError::Malformed);
    }
    match header.get("b64") {
        None | Some(Value::Bool(true)) => Ok(()),
        Some(_) => Err(AuthError::Malformed),
    }
}

/// RFC 7519 §2: `exp`, `nbf` and `iat` are NumericDates, JSON numbers. A string (`"exp":
/// "9999999999"`) or anything else is malformed, not a date to be guessed at.
fn check_numeric_dates(claims: &Value) -> Result<(), AuthError> {
    for name in ["exp", "nbf", "iat"] {
        match claims.get(name) {
            None => {}
            Some(v) if v.as_f64().is_some_and(f64::is_finite) => {}
            Some(_) => return Err(AuthError::Malformed),
        }
    }
    Ok(())
}

fn decode_json(part: &str) -> Result<Value, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::Malformed)?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)?;
    if !value.is_object() {
        return Err(AuthError::Malformed);
    }
    Ok(value)
}

/// What a token must satisfy besides its signature.
pub struct Expect<'a> {
    pub issuer: &'a str,
    pub audience: &'a [String],
    pub algorithms: &'a [Algorithm],
    pub leeway: Duration,
}

/// Checks signature, algorithm, `iss`, `aud`, `exp`, `nbf` and `iat`; returns the claims.
pub fn verify(
    token: &str,
    header: &Header,
    key: &DecodingKey,
    expect: &Expect<'_>,
) -> Result<Value, AuthError> {
    if !expect.algorithms.contains(&header.alg) {
        return Err(AuthError::AlgorithmNotAllowed);
    }
    let mut v = Validation::new(header.alg);
    v.set_issuer(&[expect.issuer]);
    v.set_audience(expect.audience);
    v.leeway = expect.leeway.as_secs();
    v.validate_exp = true;
    v.validate_nbf = true;
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    let data = jsonwebtoken::decode::<Value>(token, key, &v).map_err(|e| match e.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::UntrustedIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::InvalidAlgorithm => AuthError::AlgorithmNotAllowed,
        ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(match c.as_str() {
            "exp" => "exp",
            "aud" => "aud",
            _ => "iss",
        }),
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        // A key the library cannot use for this algorithm is a signature that cannot verify.
        ErrorKind::InvalidKeyFormat | ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidEcdsaKey => {
            AuthError::BadSignature
        }
        _ => AuthError::Malformed,
    })?;
    let claims = data.claims;
    check_numeric_dates(&claims)?;
    // A token issued in the future is as suspect as one not yet valid.
    if let Some(iat) = claims.get("iat") {
        let iat = iat.as_f64().ok_or(AuthError::Malformed)?;
        if iat > unix_now() as f64 + expect.leeway.as_secs_f64() {
            return Err(AuthError::NotYetValid);
        }
    }
    Ok(claims)
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The `exp` claim as a time ([`verify`] requires it; an absurd value is malformed).
pub fn expiry(claims: &Value) -> Result<SystemTime, AuthError> {
    let exp = claims
        .get("exp")
        .and_then(Value::as_f64)
        .ok_or(AuthError::MissingClaim("exp"))?;
    if !(0.0..4.0e9).contains(&exp) {
        return Err(AuthError::Malformed);
    }
    UNIX_EPOCH
        .checked_add(Duration::from_secs_f64(exp))
        .ok_or(AuthError::Malformed)
}

/// A claim by a dotted path into nested objects (`realm_access.roles`), or else by a name that
/// itself contains dots (`https://example.org/groups`). When both exist with different values
/// the token is ambiguous and the claim counts as absent (fail closed): a top-level claim
/// literally named `realm_access.roles` (which a user may be able to set at some IdPs) must not
/// shadow the roles the IdP put in `realm_access`, nor a nested `https://example` object the
/// claim named by a URL.
pub fn claim<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    let literal = claims.get(path);
    if !path.contains('.') {
        return literal;
    }
    let nested = path.split('.').try_fold(claims, |v, key| v.get(key));
    match (nested, literal) {
        (Some(n), Some(l)) if n != l => {
            tracing::warn!(
                claim = path,
                "token refused: a nested claim and a claim named with dots differ"
            );
            None
        }
        (Some(n), _) => Some(n),
        (None, l) => l,
    }
}

/// The individual: a non-empty string of printable characters.
pub fn subject(claims: &Value, path: &str) -> Result<String, AuthError> {
    let s = claim(claims, path)
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty() && s.len() <= 256 && !s.chars().any(char::is_control))
        .ok_or(AuthError::MissingSubject)?;
    Ok(s.to_owned())
}

/// Groups: an array of strings (others ignored), or one string. At most 1,000 kept.
pub fn groups(claims: &Value, path: Option<&str>) -> Vec<String> {
    let Some(v) = path.and_then(|p| claim(claims, p)) else {
        return Vec::new();
    };
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .take(1000)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn symmetric_and_unknown_algorithms_are_refused_in_config() {
        assert!(parse_algorithm("RS256").is_ok());
        assert!(parse_algorithm("EdDSA").is_ok());
        assert!(parse_algorithm("HS256").is_err());
        assert!(parse_algorithm("none").is_err());
    }

    #[test]
    fn none_and_hs_tokens_are_refused_before_any_key_lookup() {
        let enc = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let body = enc(json!({"iss": "https://idp", "sub": "x"}));
        for alg in ["none", "HS256", "None", "hs512"] {
            let token = format!("{}.{body}.", enc(json!({"alg": alg, "typ": "JWT"})));
            assert!(
                matches!(peek(&token), Err(AuthError::AlgorithmNotAllowed)),
                "{alg}"
            );
        }
        assert!(matches!(peek("a.b"), Err(AuthError::Malformed)));
        assert!(matches!(peek("a.b.c.d"), Err(AuthError::Malformed)));
        let big = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert!(matches!(peek(&big), Err(AuthError::TooLarge(_))));
    }

    #[test]
    fn claim_paths() {
        let c = json!({"realm_access": {"roles": ["a", "b", 3]}, "https://x.org/g": "solo", "email": "e@x"});
        assert_eq!(groups(&c, Some("realm_access.roles")), vec!["a", "b"]);
        assert_eq!(groups(&c, Some("https://x.org/g")), vec!["solo"]);
        assert!(groups(&c, Some("missing")).is_empty());
        assert_eq!(subject(&c, "email").ok().as_deref(), Some("e@x"));
        assert!(subject(&json!({"sub": ""}), "sub").is_err());
        assert!(subject(&json!({"sub": "a\nb"}), "sub").is_err());
    }

    #[test]
    fn item7_a_dotted_name_and_a_nested_path_that_differ_are_neither_believed() {
        let c = json!({
            "realm_access.roles": ["admin"],
            "realm_access": {"roles": ["agents"]},
        });
        assert!(groups(&c, Some("realm_access.roles")).is_empty());
        // A nested object cannot shadow a claim named by a URL either.
        let c = json!({"https://example.org/groups": ["g"], "https://example": {"org/groups": ["admin"]}});
        assert!(groups(&c, Some("https://example.org/groups")).is_empty());
        // The same value both ways is no ambiguity.
        let c = json!({"a.b": ["x"], "a": {"b": ["x"]}});
        assert_eq!(groups(&c, Some("a.b")), vec!["x"]);
        let c = json!({"realm_access": {"roles": ["agents"]}});
        assert_eq!(groups(&c, Some("realm_access.roles")), vec!["agents"]);
        // Without the nested object, the dotted name is still found (URL-named claims).
        let c = json!({"realm_access.roles": ["admin"], "https://x.org/g": ["g"]});
        assert_eq!(groups(&c, Some("realm_access.roles")), vec!["admin"]);
        assert_eq!(groups(&c, Some("https://x.org/g")), vec!["g"]);
        let c = json!({"a.b": "top", "a": {"b": "nested"}});
        assert!(subject(&c, "a.b").is_err());
    }

    fn token_with(header: Value, body: Value) -> String {
        let enc = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.c2ln", enc(header), enc(body))
    }

    #[test]
    fn item10_crit_and_unencoded_payload_headers_are_refused() {
        let body = json!({"iss": "https://idp", "sub": "x"});
        let ok = token_with(json!({"alg": "ES256", "typ": "JWT"}), body.clone());
        assert!(peek(&ok).is_ok());
        let b64_true = token_with(json!({"alg": "ES256", "b64": true}), body.clone());
        assert!(peek(&b64_true).is_ok());
        for header in [
            json!({"alg": "ES256", "crit": ["exp"]}),
            json!({"alg": "ES256", "crit": ["x-unknown"], "x-unknown": 1}),
            json!({"alg": "ES256", "crit": []}),
            json!({"alg": "ES256", "b64": false}),
            json!({"alg": "ES256", "b64": false, "crit": ["b64"]}),
            json!({"alg": "ES256", "b64": "false"}),
        ] {
            let t = token_with(header.clone(), body.clone());
            assert_eq!(peek(&t).err(), Some(AuthError::Malformed), "{header}");
        }
    }

    #[test]
    fn item10_dates_must_be_numeric() {
        assert!(check_numeric_dates(&json!({"exp": 1, "nbf": 2.5, "iat": 3})).is_ok());
        assert!(check_numeric_dates(&json!({"sub": "x"})).is_ok());
        for claims in [
            json!({"exp": "9999999999"}),
            json!({"nbf": "0"}),
            json!({"iat": "now"}),
            json!({"exp": null}),
            json!({"exp": true}),
            json!({"iat": [1]}),
            json!({"nbf": {"t": 1}}),
        ] {
            assert_eq!(
                check_numeric_dates(&claims).err(),
                Some(AuthError::Malformed),
                "{claims}"
            );
        }
    }

    #[test]
    fn item10_verify_refuses_a_string_exp_end_to_end() {
        // A real ES256 signature over a token whose exp is a string.
        let pair = rcgen::KeyPair::generate().expect("key");
        let enc = jsonwebtoken::EncodingKey::from_ec_der(&pair.serialize_der());
        let raw = pair.public_key_raw();
        let dec = DecodingKey::from_ec_components(
            &URL_SAFE_NO_PAD.encode(&raw[1..33]),
            &URL_SAFE_NO_PAD.encode(&raw[33..65]),
        )
        .expect("decoding key");
        let now = unix_now();
        let expect = Expect {
            issuer: "https://idp",
            audience: &["phigate".to_owned()],
            algorithms: &[Algorithm::ES256],
            leeway: Duration::from_secs(1),
        };
        let sign = |claims: Value| {
            jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &enc).expect("sign")
        };
        let good = sign(
            json!({"iss": "https://idp", "aud": "phigate", "sub": "a", "exp": now + 60, "iat": now}),
        );
        let h = peek(&good).expect("peek").header;
        assert!(verify(&good, &h, &dec, &expect).is_ok());
        for bad in [
            json!({"iss": "https://idp", "aud": "phigate", "sub": "a", "exp": (now + 60).to_string()}),
            json!({"iss": "https://idp", "aud": "phigate", "sub": "a", "exp": now + 60, "nbf": "0"}),
            json!({"iss": "https://idp", "aud": "phigate", "sub": "a", "exp": now + 60, "iat": now.to_string()}),
        ] {
            let t = sign(bad.clone());
            assert!(verify(&t, &h, &dec, &expect).is_err(), "{bad}");
        }
    }
}
