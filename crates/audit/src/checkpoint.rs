//! Signed checkpoints: `(seq, hash)` of the chain's head at a moment, signed with Ed25519.
//!
//! Written every N records or T seconds and at shutdown, to `checkpoints.jsonl` beside the
//! log and, if configured, to a second place. Cutting records off the end of the log leaves a
//! checkpoint pointing past its end; replacing a checkpoint needs the signing key.

use std::path::Path;

use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Checkpoint {
    /// The last record covered.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
    pub ts: String,
    /// First 16 hex digits of SHA-256 of the public key.
    pub key_id: String,
    /// Hex Ed25519 signature over [`Checkpoint::message`].
    pub sig: String,
}

impl Checkpoint {
    pub fn message(seq: u64, hash: &str, ts: &str) -> String {
        format!("phigate-audit-checkpoint:v1:{seq}:{hash}:{ts}")
    }

    pub fn verify(&self, key: &PublicKey) -> bool {
        let Ok(sig) = hex::decode(&self.sig) else {
            return false;
        };
        self.key_id == key.id()
            && UnparsedPublicKey::new(&ED25519, &key.0)
                .verify(
                    Checkpoint::message(self.seq, &self.hash, &self.ts).as_bytes(),
                    &sig,
                )
                .is_ok()
    }
}

/// The public half, for `phigate audit verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey(pub Vec<u8>);

impl PublicKey {
    pub fn id(&self) -> String {
        hex::encode(&Sha256::digest(&self.0)[..8])
    }

    /// Reads a key file: 64 hex digits (optionally followed by a newline).
    pub fn load(path: &Path) -> std::io::Result<PublicKey> {
        let text = std::fs::read_to_string(path)?;
        let bytes = hex::decode(text.trim()).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: not a hex Ed25519 public key", path.display()),
            )
        })?;
        if bytes.len() != 32 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: an Ed25519 public key has 32 bytes", path.display()),
            ));
        }
        Ok(PublicKey(bytes))
    }
}

pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl SigningKey {
    pub fn generate_pkcs8() -> Result<Vec<u8>, String> {
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map(|d| d.as_ref().to_vec())
            .map_err(|_| "cannot generate an Ed25519 key".to_owned())
    }

    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<SigningKey, String> {
        Ed25519KeyPair::from_pkcs8(pkcs8)
            .map(|pair| SigningKey { pair })
            .map_err(|_| "not an Ed25519 PKCS#8 key".to_owned())
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.pair.public_key().as_ref().to_vec())
    }

    pub fn sign(&self, seq: u64, hash: &str, ts: &str) -> Checkpoint {
        let sig = self
            .pair
            .sign(Checkpoint::message(seq, hash, ts).as_bytes());
        Checkpoint {
            seq,
            hash: hash.to_owned(),
            ts: ts.to_owned(),
            key_id: self.public().id(),
            sig: hex::encode(sig.as_ref()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let key = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().expect("gen")).expect("key");
        let cp = key.sign(10, "ab", "t");
        assert!(cp.verify(&key.public()));
        let mut forged = cp.clone();
        forged.seq = 9;
        assert!(!forged.verify(&key.public()));
        let other =
            SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().expect("gen")).expect("key");
        assert!(!cp.verify(&other.public()));
    }
}
