//! The session's credential while the session lasts: its expiry, and revocation (API keys,
//! and tokens of an individual revoked by `phigate token revoke`).

use crate::pgerror::{ClientError, ToClient};

use crate::state::Shared;

/// Why a session's credential stopped being valid.
#[derive(Debug, Clone, Copy)]
pub enum Ended {
    Expired,
    Revoked,
}

impl ToClient for Ended {
    fn to_client(&self) -> Option<ClientError> {
        let message = match self {
            Ended::Expired => "phigate: authentication expired",
            Ended::Revoked => "phigate: the credential of this session was revoked",
        };
        Some(
            ClientError::fatal(
                phigate_wire::sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                message,
            )
            .with_hint("Get a fresh token (phigate login) or API key and reconnect."),
        )
    }
}

/// Whether the session may go on: its credential is still valid (not revoked, still admitted
/// by the trust a reload put in force) and its role is still defined (a reload that removes a
/// role ends its sessions, API keys' included).
pub fn admitted(shared: &Shared, identity: &crate::auth::Identity) -> bool {
    shared.auth.still_valid(identity)
        && shared
            .policy
            .store
            .snapshot()
            .0
            .role(&identity.role.0)
            .is_some()
}

/// Watches the session's credential: its expiry, and (API keys) revocation.
#[derive(Clone)]
pub struct CredentialWatch {
    pub identity: crate::auth::Identity,
    expires_at: Option<std::time::SystemTime>,
    revocations: Option<tokio::sync::watch::Receiver<u64>>,
}

impl CredentialWatch {
    pub fn new(identity: &crate::auth::Identity, shared: &Shared) -> Self {
        let revocations = if identity.credential.revocable() {
            shared.auth.revocations().map(|mut rx| {
                // A revocation between the login check and now must not be missed: check
                // once at the start, whatever the channel says.
                rx.mark_changed();
                rx
            })
        } else {
            None
        };
        CredentialWatch {
            identity: identity.clone(),
            expires_at: identity.expires_at,
            revocations,
        }
    }

    /// Checked before each batch of client messages: cheap (a clock read; the key store only
    /// when it changed).
    pub fn check(&mut self, shared: &Shared) -> Option<Ended> {
        if self
            .expires_at
            .is_some_and(|t| std::time::SystemTime::now() >= t)
        {
            return Some(Ended::Expired);
        }
        if let Some(rx) = &mut self.revocations {
            if rx.has_changed().unwrap_or(false) {
                rx.borrow_and_update();
                if !admitted(shared, &self.identity) {
                    return Some(Ended::Revoked);
                }
            }
        }
        None
    }

    /// When the credential expires, as a timer deadline.
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        let left = self
            .expires_at?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        Some(tokio::time::Instant::now() + left)
    }

    /// Resolves when the credential has ended: expired, or revoked. Cancel-safe. A revocation
    /// seen here is left for [`CredentialWatch::check`] to see again.
    pub async fn ended(&mut self, shared: &Shared) -> Ended {
        let deadline = self.deadline();
        loop {
            let expiry = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = expiry => return Ended::Expired,
                _ = self.changed() => {
                    if !admitted(shared, &self.identity) {
                        if let Some(rx) = &mut self.revocations {
                            rx.mark_changed();
                        }
                        return Ended::Revoked;
                    }
                }
            }
        }
    }

    /// Resolves when the credential may have been revoked (never, for credentials that
    /// cannot be).
    pub async fn changed(&mut self) {
        match &mut self.revocations {
            Some(rx) => {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await
                }
            }
            None => std::future::pending().await,
        }
    }
}
