//! The web console (docs/console.md): where browsers reach it and how long a sign-in lasts.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::default_true;

/// The reviewer and auditor web console, served at `/console/` on the HTTP listener.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Serve the console (needs `listen.http_address` and `data_dir`).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The console's address as browsers reach it, e.g. `https://phigate.example.org` behind
    /// a TLS-terminating proxy on this machine; `http://<listen.http_address>` if unset. The
    /// sign-in redirect is `<public_url>/console/callback` (register it at the identity
    /// provider); with `https`, the session cookie is `__Host-` prefixed and `Secure`.
    pub public_url: Option<String>,
    /// A signed-in browser idle this long is signed out (HIPAA automatic logoff).
    #[serde(default = "default_idle")]
    pub idle_timeout_secs: u64,
    /// A sign-in lasts at most this long, however active (and never beyond the gateway
    /// session token it holds, `auth.session_token_ttl_secs`).
    #[serde(default = "default_absolute")]
    pub absolute_timeout_secs: u64,
    /// Console sessions (signed in or signing in) held at once; a sign-in beyond it is
    /// refused until others end.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
}

fn default_idle() -> u64 {
    900
}

fn default_absolute() -> u64 {
    8 * 3600
}

fn default_max_sessions() -> usize {
    1000
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            enabled: true,
            public_url: None,
            idle_timeout_secs: default_idle(),
            absolute_timeout_secs: default_absolute(),
            max_sessions: default_max_sessions(),
        }
    }
}
