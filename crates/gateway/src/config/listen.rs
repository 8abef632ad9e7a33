//! Where the gateway listens, TLS towards clients, its runtime and its log.

use std::net::SocketAddr;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::default_true;

/// How the gateway uses the machine's cores.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    /// Threads that run sessions. Unset: one per core. `1` runs everything on one thread (like
    /// pgbouncer), the cheapest choice when the gateway shares a small machine with the
    /// database or the clients: no cross-thread wake-ups.
    pub worker_threads: Option<usize>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// Address for PostgreSQL clients, e.g. `0.0.0.0:6432`.
    pub address: SocketAddr,
    /// Address for `/healthz`, `/readyz`, `/metrics` and the HTTP API (reviews, tokens, audit).
    /// Port 0 picks a free port.
    pub http_address: Option<SocketAddr>,
    /// Serve the HTTP listener over TLS only, with the `[tls]` certificate (rotated by a
    /// reload as the client listener's is). The web console needs it outside development:
    /// over plain HTTP any program on the browser's machine can read the sign-in cookie.
    #[serde(default)]
    pub http_tls: bool,
    /// Largest single protocol message a client may send, in bytes.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    /// A client must finish TLS, startup and authentication within this many seconds.
    #[serde(default = "default_startup_timeout")]
    pub startup_timeout_secs: u64,
    /// On SIGTERM, sessions get this long to finish before they are closed.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_secs: u64,
    /// Allow clients without TLS when they connect from a loopback address. Tokens travel in the
    /// password field, so plaintext is refused from anywhere else.
    #[serde(default = "default_true")]
    pub allow_plaintext_loopback: bool,
    /// An HTTP client must send a request's headers within this many seconds of connecting
    /// or of its previous response (slow senders are disconnected).
    #[serde(default = "default_http_header_timeout")]
    pub http_header_timeout_secs: u64,
    /// An HTTP request's body must arrive, and a response must be taken by the client, within
    /// this many seconds (slow senders and readers are disconnected).
    #[serde(default = "default_http_body_timeout")]
    pub http_body_timeout_secs: u64,
    /// HTTP connections at once; further ones get 503 and are closed. Lowered at start if the
    /// file descriptor limit cannot carry it.
    #[serde(default = "default_http_max_connections")]
    pub http_max_connections: usize,
    /// HTTP connections one source address (IPv6: one /64) may hold at once: one host cannot
    /// take every place and shut out health probes and reviewers. Raise it when a proxy on one
    /// address carries every caller.
    #[serde(default = "default_http_connections_per_source")]
    pub http_connections_per_source: usize,
    /// Who may read `/metrics` (it shows the gateway's activity): `loopback` (the default:
    /// callers on this machine), `readers` (also requires a credential of an
    /// `audit.reader_roles` role), or `public` (anyone who reaches the HTTP port, e.g. a
    /// Prometheus on another host).
    #[serde(default)]
    pub metrics: MetricsAccess,
}

/// Who may read `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MetricsAccess {
    #[default]
    Loopback,
    Readers,
    Public,
}

fn default_http_header_timeout() -> u64 {
    10
}
fn default_http_body_timeout() -> u64 {
    30
}
fn default_http_max_connections() -> usize {
    256
}
fn default_http_connections_per_source() -> usize {
    64
}
fn default_max_message() -> usize {
    64 * 1024 * 1024
}
fn default_startup_timeout() -> u64 {
    15
}
fn default_shutdown_grace() -> u64 {
    30
}

/// TLS towards clients.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Refuse clients that do not negotiate TLS, loopback included.
    #[serde(default)]
    pub require: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Log {
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter such as `info` or `phigate=debug`.
    pub level: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}
