//! Who is calling. The client puts a token in the password field; the startup `user` names the
//! role it wants to assume.
//!
//! This is the seam where OIDC tokens, API keys and gateway session tokens plug in: everything
//! after it sees only an [`Identity`]. Today it knows static identities from the config, each
//! by the SHA-256 of its token (the token itself is never stored).

use std::collections::HashMap;
use std::fmt;

use sha2::{Digest, Sha256};

use crate::config::StaticIdentity;

/// The individual behind a session: a person or a machine identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subject(pub String);

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub subject: Subject,
    pub role: RoleName,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// Deliberately says nothing about which part was wrong.
    #[error("authentication failed")]
    InvalidCredentials,
    #[error("identity {subject} may not assume role \"{role}\"")]
    RoleNotAllowed { subject: String, role: String },
}

#[derive(Debug, Default)]
pub struct Authenticator {
    by_token_hash: HashMap<[u8; 32], StaticIdentity>,
}

pub fn token_sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Authenticator {
    pub fn new(identities: &[StaticIdentity]) -> Self {
        let by_token_hash = identities
            .iter()
            .filter_map(|id| {
                let mut hash = [0u8; 32];
                hex::decode_to_slice(&id.token_sha256, &mut hash).ok()?;
                Some((hash, id.clone()))
            })
            .collect();
        Authenticator { by_token_hash }
    }

    /// Checks the token and the requested role. An empty `requested_role` picks the default.
    pub fn authenticate(&self, requested_role: &str, token: &str) -> Result<Identity, AuthError> {
        // Looking up by the token's hash compares hashes, not the token: the time it takes tells
        // an attacker nothing about how close a guess was.
        let id = self
            .by_token_hash
            .get(&token_sha256(token))
            .ok_or(AuthError::InvalidCredentials)?;
        let role = if requested_role.is_empty() {
            id.roles
                .first()
                .cloned()
                .ok_or(AuthError::InvalidCredentials)?
        } else if id.roles.iter().any(|r| r == requested_role) {
            requested_role.to_owned()
        } else {
            return Err(AuthError::RoleNotAllowed {
                subject: id.subject.clone(),
                role: requested_role.to_owned(),
            });
        };
        Ok(Identity {
            subject: Subject(id.subject.clone()),
            role: RoleName(role),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        Authenticator::new(&[StaticIdentity {
            subject: "agent@example.org".into(),
            token_sha256: hex::encode(token_sha256("tok-1")),
            roles: vec!["ai-agent".into(), "readonly".into()],
        }])
    }

    #[test]
    fn token_and_role_checks() {
        let a = auth();
        assert_eq!(
            a.authenticate("readonly", "tok-1").map(|i| i.role.0),
            Ok("readonly".to_owned())
        );
        assert_eq!(
            a.authenticate("", "tok-1").map(|i| i.role.0),
            Ok("ai-agent".to_owned())
        );
        assert_eq!(
            a.authenticate("ai-agent", "tok-2"),
            Err(AuthError::InvalidCredentials)
        );
        assert!(matches!(
            a.authenticate("admin", "tok-1"),
            Err(AuthError::RoleNotAllowed { .. })
        ));
    }
}
