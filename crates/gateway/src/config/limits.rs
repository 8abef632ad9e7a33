//! How much of the gateway and of the database one caller may take (docs/configuration.md,
//! "Limits"). Every cap refuses with a clear error instead of queueing: a caller over its share
//! learns so at once, and everyone else keeps working.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// PostgreSQL-port connections at once, those still logging in included. Further clients
    /// are refused with SQLSTATE 53300. Lowered at start if the process's file descriptor limit
    /// cannot carry it (each session holds a client socket, a database socket and room for its
    /// recording), so the gateway always keeps descriptors for its own files.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// PostgreSQL-port connections one source address (IPv6: one /64) may have logging in at
    /// once (TLS, startup, authentication): a host that opens sockets and never logs in cannot
    /// fill `max_connections`. Established sessions do not count. Further connections from
    /// that address are refused with SQLSTATE 53300.
    #[serde(default = "default_startups_per_source")]
    pub startups_per_source: usize,
    /// Sessions one individual (issuer and subject) may hold at once, across all its roles.
    #[serde(default = "default_per_identity")]
    pub sessions_per_identity: usize,
    /// Sessions one role may hold at once, all identities together, unless the role sets
    /// `max_sessions`. The default leaves room for others under PostgreSQL's default
    /// `max_connections = 100`. A masked role's database login gets the same number as its
    /// `CONNECTION LIMIT`.
    #[serde(default = "default_per_role")]
    pub sessions_per_role: usize,
    /// Access requests (`POST /v1/access-requests`) one individual may make per hour.
    #[serde(default = "default_access_requests")]
    pub access_requests_per_hour: u32,
    /// Access requests waiting for a decision, all requesters together. Further requests are
    /// refused (429) until some are decided or expire.
    #[serde(default = "default_pending_requests")]
    pub pending_access_requests: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: default_max_connections(),
            startups_per_source: default_startups_per_source(),
            sessions_per_identity: default_per_identity(),
            sessions_per_role: default_per_role(),
            access_requests_per_hour: default_access_requests(),
            pending_access_requests: default_pending_requests(),
        }
    }
}

fn default_max_connections() -> usize {
    1000
}
fn default_startups_per_source() -> usize {
    32
}
fn default_per_identity() -> usize {
    20
}
fn default_per_role() -> usize {
    50
}
fn default_access_requests() -> u32 {
    10
}
fn default_pending_requests() -> usize {
    100
}
