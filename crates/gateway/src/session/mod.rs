//! One client connection, from the first byte to the last.
//!
//! The phases, in order (each a function, so the state a phase may touch is exactly its
//! arguments): in `startup`, negotiate (SSLRequest / GSSENCRequest / CancelRequest /
//! StartupMessage), authenticate (token → identity → role), connect upstream
//! ([`crate::upstream`]); then [`relay::relay`] until either side ends.

pub mod encoding;
pub mod guard;
pub mod relay;
mod startup;

use std::net::SocketAddr;
use std::sync::Arc;

use phigate_wire::{FrameReader, WireError};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::auth::{AuthError, Identity};
use crate::net::Stream;
use crate::pgerror::{ClientError, ToClient};
use crate::state::Shared;
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
    #[error("{0}")]
    Admission(#[from] crate::admission::Refused),
}

impl ToClient for SessionError {
    /// The FATAL the client receives, if the connection can still carry one.
    fn to_client(&self) -> Option<ClientError> {
        use phigate_wire::sqlstate as code;
        let again = "Try again shortly.";
        let e = match self {
            SessionError::Io(_) | SessionError::Tls(_) => return None,
            SessionError::Protocol(e) => ClientError::fatal(
                code::PROTOCOL_VIOLATION,
                format!("phigate: invalid message: {e}"),
            ),
            SessionError::StartupTimeout => {
                ClientError::fatal(code::CONNECTION_FAILURE, "phigate: startup timed out")
            }
            SessionError::ShuttingDown => ClientError::fatal(
                code::CANNOT_CONNECT_NOW,
                "phigate: the gateway is shutting down",
            )
            .with_hint(
                "Reconnect; another gateway instance or this one after restart will serve you.",
            ),
            SessionError::Startup(msg) => ClientError::fatal(
                code::INVALID_AUTHORIZATION_SPECIFICATION,
                format!("phigate: {msg}"),
            ),
            SessionError::Audit => ClientError::fatal(
                code::CANNOT_CONNECT_NOW,
                "phigate: no session can start: the audit log cannot be written",
            )
            .with_hint("Nothing runs unaudited. Try again shortly."),
            SessionError::Admission(e) => {
                ClientError::fatal(code::TOO_MANY_CONNECTIONS, format!("phigate: {e}"))
                    .with_hint("Other sessions keep working; this one may be retried later.")
            }
            SessionError::StartupParam(msg) => {
                ClientError::fatal(code::INSUFFICIENT_PRIVILEGE, format!("phigate: {msg}"))
            }
            SessionError::Auth(e) => auth_error(e),
            // Missing database, too many connections, database starting up: the client can act
            // on these. The wording is ours: the database's own text names the gateway's login.
            SessionError::Upstream(UpstreamError::Refused { code: c, .. })
                if c.starts_with(code::CLASS_INVALID_CATALOG_NAME) =>
            {
                ClientError::fatal_as(c.clone(), "phigate: the requested database does not exist")
            }
            SessionError::Upstream(UpstreamError::Refused { code: c, .. })
                if c.starts_with(code::CLASS_INSUFFICIENT_RESOURCES) =>
            {
                ClientError::fatal_as(
                    c.clone(),
                    "phigate: the database is at its connection limit",
                )
                .with_hint(again)
            }
            SessionError::Upstream(UpstreamError::Refused { code: c, .. })
                if c == code::CANNOT_CONNECT_NOW =>
            {
                ClientError::fatal_as(
                    c.clone(),
                    "phigate: the database is starting up or shutting down",
                )
                .with_hint(again)
            }
            SessionError::Upstream(_) => ClientError::fatal(
                code::CONNECTION_FAILURE,
                "phigate: the database is not available right now",
            )
            .with_hint("Try again shortly; the gateway operator can see the cause in its log."),
        };
        Some(e)
    }
}

/// A refused login: what was wrong with the credential, never what it contained.
fn auth_error(e: &AuthError) -> ClientError {
    use phigate_wire::sqlstate as code;
    match e {
        AuthError::RoleNotAllowed { .. } => ClientError::fatal(
            code::INVALID_AUTHORIZATION_SPECIFICATION,
            format!("phigate: {e}"),
        )
        .with_hint(
            "Connect with user set to one of your roles, or leave it to get your default role.",
        ),
        AuthError::NoRole { .. } => ClientError::fatal(
            code::INVALID_AUTHORIZATION_SPECIFICATION,
            format!("phigate: {e}"),
        )
        .with_hint("Ask an administrator to bind your identity or groups to a role."),
        AuthError::RateLimited(_) => ClientError::fatal(
            code::INVALID_AUTHORIZATION_SPECIFICATION,
            format!("phigate: {e}"),
        ),
        AuthError::IdpUnavailable => {
            ClientError::fatal(code::CONNECTION_FAILURE, format!("phigate: {e}"))
                .with_hint("Try again shortly.")
        }
        AuthError::InvalidCredentials => {
            ClientError::fatal(code::INVALID_PASSWORD, "phigate: authentication failed")
                .with_hint("Put a valid phigate token or API key in the password field.")
        }
        e => ClientError::fatal(
            code::INVALID_PASSWORD,
            format!("phigate: authentication failed: {e}"),
        )
        .with_hint("Get a fresh token (phigate login) or API key and reconnect."),
    }
}

/// Drives one client connection to its end. Errors are logged here; nothing propagates.
/// `_connection` is its place under `limits.max_connections`, held to the end.
pub async fn handle(tcp: TcpStream, peer: SocketAddr, shared: Arc<Shared>, places: Places) {
    let Places {
        connection: _connection,
        startup,
    } = places;
    let _ = tcp.set_nodelay(true);
    run(Stream::Plain(tcp), peer, shared, None, Some(startup)).await
}

/// Where a session comes from when it is not a client of the PostgreSQL listener: set by the
/// gateway itself, out of band (never from anything the client sends), and carried into the
/// session's audit records (`channel`, `tool`).
#[derive(Clone, Debug)]
pub struct Origin {
    /// `mcp`.
    pub channel: &'static str,
    /// The tool whose call opened the session.
    pub tool: String,
    /// The session's id, chosen by the caller so it can find what the session left (a review).
    pub session: Arc<str>,
}

/// Runs a session over an in-memory stream inside the gateway (an MCP tool call): the same
/// startup (the credential as the password, the role as the user), policy, masking login,
/// audit and recording as a client of the listener. It takes a seat under the identity's and
/// the role's caps like any session; `peer` is the caller's address.
pub async fn handle_internal(
    stream: tokio::io::DuplexStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    origin: Origin,
) {
    run(Stream::Memory(stream), peer, shared, Some(origin), None).await
}

async fn run(
    mut stream: Stream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    origin: Option<Origin>,
    startup: Option<crate::admission::SourceSlot>,
) {
    let timeout = shared.listen.startup_timeout;
    // A connection still in startup has nothing to lose: on shutdown it is refused at once
    // rather than holding the drain up until its startup timeout.
    let started = tokio::select! {
        r = tokio::time::timeout(timeout, startup::start(&mut stream, peer, &shared, origin.as_ref())) => match r {
            Ok(r) => r,
            Err(_) => Err(SessionError::StartupTimeout),
        },
        _ = shared.lifecycle.draining.cancelled() => Err(SessionError::ShuttingDown),
    };
    // Logged in (or not): the source's place among connections still logging in comes back.
    drop(startup);
    match started {
        Ok(None) => {}
        Ok(Some(ready)) => relay::relay(ready, &shared).await,
        Err(e) => {
            match &e {
                SessionError::Auth(_) => tracing::warn!(%peer, error = %e, "login refused"),
                SessionError::Admission(_) => {
                    tracing::warn!(%peer, error = %e, "session refused: over its cap")
                }
                SessionError::Upstream(_) => {
                    shared.lifecycle.upstream_failed();
                    tracing::error!(%peer, error = %e, "cannot open database session")
                }
                _ => tracing::info!(%peer, error = %e, "connection ended during startup"),
            }
            // The refusal is a courtesy with a deadline: a client that does not read cannot
            // keep its connection (and its place under the caps) past the startup timeout.
            let farewell = async {
                if let Some(notice) = e.to_client() {
                    let _ = stream.write_all(&notice.to_bytes()).await;
                }
                let _ = stream.shutdown().await;
            };
            let _ = tokio::time::timeout(FAREWELL_TIMEOUT, farewell).await;
        }
    }
}

/// A connection's places under the caps: on the listener (for its whole life) and among its
/// source address's connections still logging in (until startup ends).
pub struct Places {
    pub connection: crate::admission::Connection,
    pub startup: crate::admission::SourceSlot,
}

/// How long a refused client gets to take its error message before the connection is dropped.
const FAREWELL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A session that passed startup, ready for the relay.
pub struct Ready {
    pub client: Stream,
    pub client_reader: FrameReader,
    pub upstream: upstream::UpstreamConn,
    pub identity: Identity,
    pub peer: SocketAddr,
    pub registration: crate::cancel::Registration,
    pub guard: guard::Guard,
    /// The session's place under its individual's and its role's caps.
    pub seat: crate::admission::Seat,
    /// What the client is told of the session (its encoding, its own application_name).
    pub client_view: ClientView,
}

/// What the client is told of its session where the gateway must translate the database
/// session's own view.
#[derive(Clone, Debug)]
pub struct ClientView {
    /// The client encoding the database session runs with (`client_encoding`).
    pub encoding: encoding::ClientEncoding,
    /// `application_name` as the client set it at startup ("" when it set none) and as the
    /// gateway sent it to the database (the client's, tagged with the subject).
    pub application_name: (String, String),
}

impl ClientView {
    /// A ParameterStatus from the database as the client must see it: `application_name`
    /// as the client set it, not as the gateway tagged it for the database's logs.
    pub fn parameter_status<'a>(
        &self,
        frame: &'a phigate_wire::Frame,
    ) -> std::borrow::Cow<'a, [u8]> {
        let (client, sent) = &self.application_name;
        match encoding::parameter_status(frame) {
            Some((b"application_name", v)) if v == self.encoding.encode(sent).as_ref() => {
                let value = self.encoding.encode(client);
                std::borrow::Cow::Owned(
                    encoding::write_parameter_status(b"application_name", &value).to_vec(),
                )
            }
            _ => std::borrow::Cow::Borrowed(frame.as_bytes()),
        }
    }
}
