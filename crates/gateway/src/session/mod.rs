//! One client connection, from the first byte to the last.
//!
//! The phases, in order (each a function below, so the state a phase may touch is exactly its
//! arguments): [`negotiate`] (SSLRequest / GSSENCRequest / CancelRequest / StartupMessage),
//! [`authenticate`] (token → identity → role), connect upstream ([`upstream`]), then
//! [`proxy::relay`] until either side ends.

pub mod guard;
pub mod relay;
mod startup;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use phigate_wire::backend::Notice;
use phigate_wire::{FrameReader, WireError};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::auth::{AuthError, Identity};
use crate::net::Stream;
use crate::server::Shared;
use crate::upstream::{self, UpstreamError};

/// Largest PasswordMessage (a token) accepted during authentication.
const MAX_AUTH_MESSAGE: usize = 64 * 1024;

/// Why a session ended before or outside the relay. `client_notice` alone decides what the
/// client is told: never upstream internals, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client protocol error: {0}")]
    Protocol(#[from] WireError),
    #[error("client connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("startup timed out")]
    StartupTimeout,
    #[error("the gateway is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Startup(&'static str),
    #[error("{0}")]
    StartupParam(String),
    #[error("authentication: {0}")]
    Auth(#[from] AuthError),
    #[error("upstream: {0}")]
    Upstream(#[from] UpstreamError),
    #[error("TLS handshake with client failed: {0}")]
    Tls(std::io::Error),
    #[error("the audit log cannot be written")]
    Audit,
}

impl SessionError {
    /// The FATAL the client receives, if the connection can still carry one.
    fn client_notice(&self) -> Option<(String, String, Option<&'static str>)> {
        let (code, message, hint) = match self {
            SessionError::Io(_) | SessionError::Tls(_) => return None,
            SessionError::Protocol(e) => ("08P01", format!("phigate: invalid message: {e}"), None),
            SessionError::StartupTimeout => ("08006", "phigate: startup timed out".into(), None),
            SessionError::ShuttingDown => (
                "57P03",
                "phigate: the gateway is shutting down".into(),
                Some(
                    "Reconnect; another gateway instance or this one after restart will serve you.",
                ),
            ),
            SessionError::Startup(msg) => ("28000", format!("phigate: {msg}"), None),
            SessionError::Audit => (
                "57P03",
                "phigate: no session can start: the audit log cannot be written".into(),
                Some("Nothing runs unaudited. Try again shortly."),
            ),
            SessionError::StartupParam(msg) => ("42501", format!("phigate: {msg}"), None),
            SessionError::Auth(e @ AuthError::RoleNotAllowed { .. }) => (
                "28000",
                format!("phigate: {e}"),
                Some("Connect with user set to one of your roles, or leave it to get your default role."),
            ),
            SessionError::Auth(e @ AuthError::NoRole { .. }) => (
                "28000",
                format!("phigate: {e}"),
                Some("Ask an administrator to bind your identity or groups to a role."),
            ),
            SessionError::Auth(e @ AuthError::RateLimited(_)) => ("28000", format!("phigate: {e}"), None),
            SessionError::Auth(e @ AuthError::IdpUnavailable) => (
                "08006",
                format!("phigate: {e}"),
                Some("Try again shortly."),
            ),
            SessionError::Auth(AuthError::InvalidCredentials) => (
                "28P01",
                "phigate: authentication failed".into(),
                Some("Put a valid phigate token or API key in the password field."),
            ),
            // Each says what was wrong with the credential, never what it contained.
            SessionError::Auth(e) => (
                "28P01",
                format!("phigate: authentication failed: {e}"),
                Some("Get a fresh token (phigate login) or API key and reconnect."),
            ),
            // Missing database, too many connections, database starting up: the client can act
            // on these. The wording is ours: the database's own text names the gateway's login.
            SessionError::Upstream(UpstreamError::Refused { code, .. })
                if code.starts_with("3D") =>
            {
                return Some((
                    code.clone(),
                    "phigate: the requested database does not exist".into(),
                    None,
                ));
            }
            SessionError::Upstream(UpstreamError::Refused { code, .. })
                if code.starts_with("53") =>
            {
                return Some((
                    code.clone(),
                    "phigate: the database is at its connection limit".into(),
                    Some("Try again shortly."),
                ));
            }
            SessionError::Upstream(UpstreamError::Refused { code, .. }) if code == "57P03" => {
                return Some((
                    code.clone(),
                    "phigate: the database is starting up or shutting down".into(),
                    Some("Try again shortly."),
                ));
            }
            SessionError::Upstream(_) => (
                "08006",
                "phigate: the database is not available right now".into(),
                Some("Try again shortly; the gateway operator can see the cause in its log."),
            ),
        };
        Some((code.to_owned(), message, hint))
    }
}

/// Drives one client connection to its end. Errors are logged here; nothing propagates.
pub async fn handle(tcp: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _ = tcp.set_nodelay(true);
    let timeout = shared.startup_timeout;
    let mut stream = Stream::Plain(tcp);
    // A connection still in startup has nothing to lose: on shutdown it is refused at once
    // rather than holding the drain up until its startup timeout.
    let started = tokio::select! {
        r = tokio::time::timeout(timeout, startup::start(&mut stream, peer, &shared)) => match r {
            Ok(r) => r,
            Err(_) => Err(SessionError::StartupTimeout),
        },
        _ = shared.draining.cancelled() => Err(SessionError::ShuttingDown),
    };
    match started {
        Ok(None) => {}
        Ok(Some(ready)) => relay::relay(ready, &shared).await,
        Err(e) => {
            match &e {
                SessionError::Auth(_) => tracing::warn!(%peer, error = %e, "login refused"),
                SessionError::Upstream(_) => {
                    tracing::error!(%peer, error = %e, "cannot open database session")
                }
                _ => tracing::info!(%peer, error = %e, "connection ended during startup"),
            }
            if let Some((code, message, hint)) = e.client_notice() {
                let mut out = BytesMut::new();
                let mut n = Notice::fatal(&code, &message);
                if let Some(h) = hint {
                    n = n.with_hint(h);
                }
                n.write(&mut out);
                let _ = stream.write_all(&out).await;
            }
            let _ = stream.shutdown().await;
        }
    }
}

/// A session that passed startup, ready for the relay.
pub struct Ready {
    pub client: Stream,
    pub client_reader: FrameReader,
    pub upstream: upstream::UpstreamConn,
    pub identity: Identity,
    pub peer: SocketAddr,
    pub registration: crate::cancel::Registration,
    pub guard: guard::Guard,
}

/// Whether an encoding name means UTF-8 (PostgreSQL ignores case and punctuation in these).
pub(crate) fn is_utf8(name: &str) -> bool {
    let norm: String = name.chars().filter(char::is_ascii_alphanumeric).collect();
    norm.eq_ignore_ascii_case("utf8") || norm.eq_ignore_ascii_case("unicode")
}
