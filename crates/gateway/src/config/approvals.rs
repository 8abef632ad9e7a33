//! Just-in-time approval: who reviews, how long a statement waits, elevation and break-glass.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::default_true;

/// Just-in-time approval (docs/approvals.md).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// Hold statements that need approval until a reviewer decides. Off: they are refused.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Roles whose identities may approve or deny (never their own statements).
    #[serde(default = "default_reviewer_roles")]
    pub reviewer_roles: Vec<String>,
    /// A held statement is denied after this many seconds without a decision.
    #[serde(default = "default_review_timeout")]
    pub timeout_secs: u64,
    /// Notified (POST, retried) when a review opens and when it ends. https, or http on
    /// loopback. The statement text is sent redacted (literals replaced by `$n`).
    pub webhook_url: Option<String>,
    /// `json` (the review as JSON) or `slack` (a Slack-compatible `{"text": ...}` message).
    #[serde(default)]
    pub webhook_format: WebhookFormat,
    /// Break-glass (HIPAA emergency access): identities of these roles may approve their own
    /// held statement (`phigate review approve ID --break-glass --reason ...`, a justification
    /// of at least 20 characters). Audited and announced as break-glass.
    #[serde(default)]
    pub break_glass_roles: Vec<String>,
    /// Roles an identity may ask to act as for a while (`phigate review request --role R
    /// --minutes N --reason ...`); a reviewer approves like a held statement. Empty: no
    /// access requests.
    #[serde(default)]
    pub elevation_roles: Vec<String>,
    /// The longest elevation that may be asked for, in minutes.
    #[serde(default = "default_max_elevation")]
    pub max_elevation_minutes: u64,
}

fn default_max_elevation() -> u64 {
    240
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    #[default]
    Json,
    Slack,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        ApprovalsConfig {
            enabled: true,
            reviewer_roles: default_reviewer_roles(),
            timeout_secs: default_review_timeout(),
            webhook_url: None,
            webhook_format: WebhookFormat::default(),
            break_glass_roles: Vec::new(),
            elevation_roles: Vec::new(),
            max_elevation_minutes: default_max_elevation(),
        }
    }
}

fn default_reviewer_roles() -> Vec<String> {
    vec!["reviewer".into()]
}
fn default_review_timeout() -> u64 {
    300
}
