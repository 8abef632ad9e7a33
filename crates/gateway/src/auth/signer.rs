//! The gateway's own token-signing key (Ed25519), kept in the data directory and created on
//! first start. It signs the short-lived session tokens `phigate login` hands out and, in
//! development, the tokens of `phigate token mint`. Its public half is served as a JWKS on the
//! HTTP port, so the database or another service can check a gateway token too.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::jwt::{self, Expect};
use super::AuthError;

/// The `aud` of every token the gateway signs.
pub const AUDIENCE: &str = "phigate";
/// The claim naming who vouched for the subject (an OIDC issuer's name, or `development`).
pub const IDP_CLAIM: &str = "phigate_idp";

pub struct Signer {
    pub issuer: String,
    pub kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    public: Vec<u8>,
}

/// The key file inside a data directory.
pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("keys").join("token-signing.ed25519.pk8")
}

impl Signer {
    /// Loads the key from the data directory, creating it (owner-only) if there is none.
    pub fn load_or_create(data_dir: &Path, issuer: &str) -> anyhow::Result<Signer> {
        let path = key_path(data_dir);
        let pkcs8 = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                    .map_err(|_| anyhow::anyhow!("cannot generate a signing key"))?;
                if let Some(dir) = path.parent() {
                    crate::fsutil::private_dir_all(dir)?;
                }
                crate::fsutil::write_private_new(&path, doc.as_ref())?;
                tracing::info!(path = %path.display(), "created the token-signing key");
                doc.as_ref().to_vec()
            }
            Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
        };
        Signer::from_pkcs8(&pkcs8, issuer).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Loads an existing key only (for commands that must not create one).
    pub fn load(data_dir: &Path, issuer: &str) -> anyhow::Result<Signer> {
        let path = key_path(data_dir);
        let pkcs8 = std::fs::read(&path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        Signer::from_pkcs8(&pkcs8, issuer)
    }

    fn from_pkcs8(pkcs8: &[u8], issuer: &str) -> anyhow::Result<Signer> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
            .map_err(|_| anyhow::anyhow!("not an Ed25519 PKCS#8 key"))?;
        let public = pair.public_key().as_ref().to_vec();
        let kid = hex::encode(&Sha256::digest(&public)[..8]);
        Ok(Signer {
            issuer: issuer.to_owned(),
            kid,
            encoding: EncodingKey::from_ed_der(pkcs8),
            decoding: DecodingKey::from_ed_der(&public),
            public,
        })
    }

    /// Signs a token for `subject` with `groups`, vouched for by `idp`, valid for `ttl`.
    pub fn mint(
        &self,
        subject: &str,
        groups: &[String],
        idp: &str,
        ttl: Duration,
    ) -> anyhow::Result<(String, SystemTime)> {
        let now = jwt::unix_now();
        let exp = now + ttl.as_secs().max(1);
        let mut jti = [0u8; 16];
        ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut jti)
            .map_err(|_| anyhow::anyhow!("no randomness"))?;
        let claims = json!({
            "iss": self.issuer,
            "sub": subject,
            "aud": AUDIENCE,
            "iat": now,
            "nbf": now,
            "exp": exp,
            "jti": hex::encode(jti),
            "groups": groups,
            IDP_CLAIM: idp,
        });
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding)?;
        Ok((token, SystemTime::UNIX_EPOCH + Duration::from_secs(exp)))
    }

    /// Signs an OpenID Connect ID token for the development issuer's code flow (the web
    /// console's demo sign-in): `aud` is the client, not [`AUDIENCE`], so it never opens a
    /// session or an API call itself.
    pub fn mint_id_token(
        &self,
        subject: &str,
        groups: &[String],
        client_id: &str,
        nonce: &str,
        ttl: Duration,
    ) -> anyhow::Result<String> {
        anyhow::ensure!(client_id != AUDIENCE, "an ID token is for a client");
        let now = jwt::unix_now();
        let claims = json!({
            "iss": self.issuer,
            "sub": subject,
            "aud": client_id,
            "iat": now,
            "exp": now + ttl.as_secs().max(1),
            "nonce": nonce,
            "groups": groups,
        });
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, &claims, &self.encoding)?)
    }

    /// Checks a token this gateway signed.
    pub fn verify(
        &self,
        token: &str,
        header: &Header,
        leeway: Duration,
    ) -> Result<Value, AuthError> {
        if header.kid.as_deref().is_some_and(|k| k != self.kid) {
            return Err(AuthError::UnknownKey);
        }
        jwt::verify(
            token,
            header,
            &self.decoding,
            &Expect {
                issuer: &self.issuer,
                audience: &[AUDIENCE.to_owned()],
                algorithms: &[Algorithm::EdDSA],
                leeway,
            },
        )
    }

    /// The public key as a JWKS document.
    pub fn jwks(&self) -> Value {
        json!({"keys": [{
            "kty": "OKP",
            "crv": "Ed25519",
            "alg": "EdDSA",
            "use": "sig",
            "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(&self.public),
        }]})
    }
}
