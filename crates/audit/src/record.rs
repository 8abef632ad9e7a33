//! The audit records: one JSON object per line, documented in docs/audit.md. Field names are a
//! public contract: add fields, never rename them.

use serde::{Deserialize, Serialize};

/// One line of the log: the chain fields, then the event's own fields (flattened), then
/// (written by [`crate::chain`]) the record's hash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// 1, 2, 3, ... without gaps across segments.
    pub seq: u64,
    /// When the writer appended it (RFC 3339, UTC, microseconds).
    pub ts: String,
    /// The previous record's hash (64 zeros for the first record).
    pub prev: String,
    #[serde(flatten)]
    pub event: Event,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    GatewayStart {
        version: String,
        pid: u32,
        /// The audit tier the run used (`strict` or `process`; absent in older records).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        durability: Option<String>,
        /// In the process tier, the bound on how long a written record may wait for the disk.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        flush_interval_ms: Option<u64>,
    },
    GatewayStop {
        reason: String,
    },
    SessionStart {
        session: String,
        subject: String,
        role: String,
        issuer: String,
        credential: String,
        client_addr: String,
        tls: Option<String>,
        application_name: Option<String>,
        database: Option<String>,
        /// The door the session came through when it is not the wire: `mcp` for the internal
        /// session of an MCP tool call. Absent for wire sessions (and older records).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
        /// The MCP tool whose call opened the session (`query`, `execute`, ...).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tool: Option<String>,
    },
    SessionEnd {
        session: String,
        subject: String,
        role: String,
        reason: String,
        duration_ms: u64,
        statements: u64,
    },
    Statement(StatementRecord),
    StatementEnd {
        session: String,
        /// The statement's number within its session (`n` of its `statement` record).
        n: u64,
        /// `00000` on success.
        sqlstate: String,
        /// Rows returned or affected, when the command tag says.
        rows: Option<u64>,
        /// The command tag's verb (`SELECT`, `UPDATE`, ...).
        command: Option<String>,
        duration_us: u64,
    },
    LoginFailed {
        client_addr: String,
        /// The startup `user` (the role asked for), at most 64 characters. A credential typed
        /// there by mistake (an API key, a JWT, a long random string) is kept as its keyed hash
        /// `hmac:<32 hex>` ([`looks_like_credential`]): repeated attempts still correlate.
        user: String,
        reason: String,
        /// Where the attempt came: `wire` (a PostgreSQL connection) or `http` (the API).
        /// Absent in records written before it existed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        via: Option<String>,
        /// The individual the credential named, when the gateway could tell: a valid
        /// credential asking for a role it may not assume, a revoked or expired API key.
        /// Absent when the credential named nobody it could trust (unknown, forged).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subject: Option<String>,
    },
    ConfigReload {
        ok: bool,
        policy_version: Option<u64>,
        error: Option<String>,
        /// Settings the reloaded file changes that take effect only after a restart
        /// (`listen.address`, `data_dir`, `upstream.host`, ...), as dotted paths; empty (and
        /// absent) when the running process is what the file says.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        needs_restart: Vec<String>,
    },
    /// A statement was held for review.
    ReviewRequested {
        review: String,
        session: String,
        subject: String,
        role: String,
        rule: String,
        justification: Option<String>,
    },
    /// A review ended: approved or denied (by whom, why), expired, or withdrawn.
    ReviewDecided {
        review: String,
        status: String,
        by: Option<String>,
        reason: Option<String>,
        /// The requester approved their own statement under break-glass.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        break_glass: bool,
    },
    /// A review's webhook notification: delivered (after `attempts`) or given up.
    ReviewNotified {
        review: String,
        /// The review's status the notification announced.
        status: String,
        delivered: bool,
        attempts: u32,
    },
    /// One approval of a review that needs several (the last one ends it: `review_decided`).
    ReviewApproval {
        review: String,
        by: String,
        reason: String,
        /// Approvals so far, and how many the rule requires.
        count: u32,
        required: u32,
    },
    /// A session's recording was sealed: its file (relative to the recordings directory) and
    /// digest, so `audit verify` proves it unaltered. Written before the session's
    /// `session_end` (or at the next start, for a session a crash cut short).
    Recording {
        session: String,
        file: String,
        /// Hex SHA-256 of the file's bytes.
        sha256: String,
        bytes: u64,
        /// Events in the recording.
        events: u64,
        /// Encrypted at rest (the role's results include unmasked values).
        encrypted: bool,
        /// Events were left out (a cap was reached, or the writer fell behind).
        truncated: bool,
        /// `false` when the session did not end cleanly (sealed at the next start).
        complete: bool,
        /// Set when the recording could not be finished (then `sha256` is empty).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Someone replayed a session's recording through the HTTP API.
    RecordingReplayed {
        session: String,
        /// Who replayed it.
        subject: String,
        role: String,
        /// The recording was encrypted and the gateway decrypted it for them.
        decrypted: bool,
    },
    /// The log could not be written for a while; statements were refused meanwhile.
    AuditRecovered {
        failed_since: String,
        lost_events: u64,
        error: String,
    },
    /// A torn last line (a crash in the middle of a write) was cut off at start. In the strict
    /// tier it was never acknowledged; in the process tier an `audit_unsynced` record says
    /// whether the previous run may have forwarded statements whose records were lost.
    AuditRepaired {
        segment: String,
        bytes_removed: u64,
    },
    /// At start: the previous run used the process tier and did not stop cleanly (`reason`
    /// `unclean_stop`: a crash or a power loss) or a background fsync failed (`fsync_failed`,
    /// with `error`), so records of statements it forwarded may be missing from the end of its
    /// log — at most those written in the last `flush_interval_ms` (plus an fsync's time)
    /// before it ended. `since` is when that run started, or when its fsync failed.
    AuditUnsynced {
        reason: String,
        since: String,
        pid: u32,
        flush_interval_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Someone signed in to the web console (after the identity provider vouched for them and
    /// a role bound to them).
    ConsoleSignin {
        subject: String,
        /// The `[[auth.oidc]]` name, or `development`.
        issuer: String,
        client_addr: String,
    },
    /// A console session ended: signed out, or its credential no longer holds (revoked, its
    /// issuer or binding removed). Idle and absolute logoffs end a session at its next request
    /// and are not recorded.
    ConsoleSignout {
        subject: String,
        issuer: String,
        client_addr: String,
        reason: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct StatementRecord {
    pub session: String,
    pub subject: String,
    pub role: String,
    /// The statement's number within its session, from 1.
    pub n: u64,
    /// `simple` (Query) or `extended` (Parse/Bind/Execute).
    pub protocol: String,
    /// The text with literals replaced by `$n` placeholders and comments removed, or the full
    /// text when the config says so.
    pub text: String,
    /// Set when `text` was cut at 64 KiB or literals were omitted: the SHA-256 of the whole
    /// text (redacted when `text` is redacted, plus the keyed hash of every literal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_sha256: Option<String>,
    /// Hex SHA-256 (first 16 bytes) of the redacted text: the statement's shape.
    pub fingerprint: String,
    /// Keyed hashes (`hmac:<hex>`) of the literals, in placeholder order (empty in full mode,
    /// where `text` holds them as sent): the first 256; the rest are counted in `literals_omitted` and
    /// covered by `text_sha256`, the hash of the whole text.
    pub literals: Vec<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub literals_omitted: u64,
    /// Keyed hashes of the bound parameters (null for SQL NULL), extended protocol only.
    pub params: Vec<Option<String>>,
    /// Statement kinds (`read`, `write`, `ddl`, ...), one per statement in the text.
    pub kinds: Vec<String>,
    /// Relations touched: `schema.table:action`.
    pub tables: Vec<String>,
    /// PHI columns masked in the result (for a masked role: the tagged columns the statement
    /// read through its masking views).
    pub masked_columns: Vec<String>,
    /// PHI columns of the tables it touches, which this (unmasked) role sees in the clear.
    /// Absent when there are none (and in records written before it existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unmasked_columns: Vec<String>,
    /// `allow`, `deny` or `require_approval`.
    pub decision: String,
    pub rule: Option<String>,
    /// The review that approved it, if one did.
    pub approval: Option<String>,
    /// `mcp` when the statement came from an MCP tool call (as in its `session_start`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// The MCP tool that sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Record {
    /// The session the record belongs to, if any.
    pub fn session(&self) -> Option<&str> {
        match &self.event {
            Event::SessionStart { session, .. }
            | Event::SessionEnd { session, .. }
            | Event::StatementEnd { session, .. } => Some(session),
            Event::Statement(s) => Some(&s.session),
            Event::ReviewRequested { session, .. } | Event::Recording { session, .. } => {
                Some(session)
            }
            _ => None,
        }
    }

    /// The individual the record is about: who ran the session or statement, asked for the
    /// review, replayed the recording, or (when known) whose credential failed.
    pub fn subject(&self) -> Option<&str> {
        match &self.event {
            Event::SessionStart { subject, .. }
            | Event::SessionEnd { subject, .. }
            | Event::ReviewRequested { subject, .. }
            | Event::RecordingReplayed { subject, .. }
            | Event::ConsoleSignin { subject, .. }
            | Event::ConsoleSignout { subject, .. } => Some(subject),
            Event::Statement(s) => Some(&s.subject),
            Event::LoginFailed { subject, .. } => subject.as_deref(),
            _ => None,
        }
    }

    /// Whether the record names `who` in any role: its subject, or a reviewer who approved or
    /// denied (`by`; a review several approved names them all, `ann, bob`).
    pub fn names(&self, who: &str) -> bool {
        if self.subject() == Some(who) {
            return true;
        }
        match &self.event {
            Event::ReviewApproval { by, .. } => by == who,
            Event::ReviewDecided { by: Some(by), .. } => reviewers(by).any(|b| b == who),
            _ => false,
        }
    }

    pub fn role(&self) -> Option<&str> {
        match &self.event {
            Event::SessionStart { role, .. }
            | Event::SessionEnd { role, .. }
            | Event::ReviewRequested { role, .. }
            | Event::RecordingReplayed { role, .. } => Some(role),
            Event::Statement(s) => Some(&s.role),
            _ => None,
        }
    }

    /// The review a record belongs to, if any.
    pub fn review(&self) -> Option<&str> {
        match &self.event {
            Event::ReviewRequested { review, .. }
            | Event::ReviewDecided { review, .. }
            | Event::ReviewApproval { review, .. }
            | Event::ReviewNotified { review, .. } => Some(review),
            Event::Statement(s) => s.approval.as_deref(),
            _ => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match &self.event {
            Event::GatewayStart { .. } => "gateway_start",
            Event::GatewayStop { .. } => "gateway_stop",
            Event::SessionStart { .. } => "session_start",
            Event::SessionEnd { .. } => "session_end",
            Event::Statement(_) => "statement",
            Event::StatementEnd { .. } => "statement_end",
            Event::LoginFailed { .. } => "login_failed",
            Event::ConfigReload { .. } => "config_reload",
            Event::AuditRecovered { .. } => "audit_recovered",
            Event::AuditRepaired { .. } => "audit_repaired",
            Event::AuditUnsynced { .. } => "audit_unsynced",
            Event::ReviewRequested { .. } => "review_requested",
            Event::ReviewDecided { .. } => "review_decided",
            Event::ReviewApproval { .. } => "review_approval",
            Event::ReviewNotified { .. } => "review_notified",
            Event::Recording { .. } => "recording",
            Event::RecordingReplayed { .. } => "recording_replayed",
            Event::ConsoleSignin { .. } => "console_signin",
            Event::ConsoleSignout { .. } => "console_signout",
        }
    }
}

/// Every record type, as `type` spells it.
pub const TYPES: &[&str] = &[
    "gateway_start",
    "gateway_stop",
    "session_start",
    "session_end",
    "statement",
    "statement_end",
    "login_failed",
    "config_reload",
    "review_requested",
    "review_notified",
    "review_approval",
    "review_decided",
    "recording",
    "recording_replayed",
    "audit_recovered",
    "audit_repaired",
    "audit_unsynced",
    "console_signin",
    "console_signout",
];

/// A statement record's `decision`s.
pub const DECISIONS: &[&str] = &["allow", "deny", "require_approval"];

/// The reviewers a `review_decided` record's `by` names (several approvers are joined by `, `).
pub fn reviewers(by: &str) -> impl Iterator<Item = &str> {
    by.split(", ").filter(|b| !b.is_empty())
}

/// Unix time as RFC 3339 with microseconds.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

/// Whether a failed login's user name looks like a credential rather than a role name: an API
/// key (`phk_...`), a JWT (three base64url parts, the first `eyJ`), or a long string with the
/// look of random bytes (letters and digits interleaved, or high entropy). Such a user name is
/// never written in clear: a key typed into the `user` field must not end up in the log.
pub fn looks_like_credential(user: &str) -> bool {
    let lower = user.to_ascii_lowercase();
    if lower.starts_with("phk_") || lower.starts_with("bearer ") {
        return true;
    }
    let parts: Vec<&str> = user.split('.').collect();
    let b64url = |p: &str| {
        p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
    };
    if user.starts_with("eyJ")
        || (parts.len() == 3 && parts.iter().all(|p| p.len() >= 4 && b64url(p)))
    {
        return true;
    }
    let n = user.chars().count();
    if n < 20 || user.chars().any(char::is_whitespace) {
        return false;
    }
    // Letter/digit alternations: role names have a digit group or two at most
    // (`analytics_2024`); hex and base64 secrets switch all the time.
    let mut switches = 0;
    let mut prev: Option<bool> = None;
    for c in user.chars().filter(|c| c.is_ascii_alphanumeric()) {
        let digit = c.is_ascii_digit();
        if prev.is_some_and(|p| p != digit) {
            switches += 1;
        }
        prev = Some(digit);
    }
    if switches >= 6 {
        return true;
    }
    // Shannon entropy per character over the string.
    let mut counts = std::collections::HashMap::new();
    for c in user.chars() {
        *counts.entry(c).or_insert(0u32) += 1;
    }
    let entropy: f64 = counts
        .values()
        .map(|&k| {
            let p = f64::from(k) / n as f64;
            -p * p.log2()
        })
        .sum();
    entropy >= 4.2
}

#[cfg(test)]
mod credential_tests {
    use super::looks_like_credential;

    #[test]
    fn credentials_are_recognised_and_role_names_are_not() {
        for c in [
            "phk_3f9a2c1b_Zx8Qk2LmN4pR7sT1vW9yB3dF6hJ0kM2n5q8r1t4w7z0c3e6g9j2",
            "PHK_abc",
            "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl",
            "abcd.efgh.ijkl",
            "tok-agent-9f86d081884c7d65",
            "Zx8Qk2LmN4pR7sT1vW9yB3dF",
            "kQ-_zXcVbNmLpOiUyTrEwAsDfGhJ",
        ] {
            assert!(looks_like_credential(c), "{c}");
        }
        for r in [
            "ai-agent",
            "clinician",
            "reviewer",
            "analytics_readonly_role_2024",
            "postgres",
            "billing-team-eu-west-1",
            "a role name with spaces in it",
            "",
        ] {
            assert!(!looks_like_credential(r), "{r}");
        }
    }
}

#[cfg(test)]
mod names_tests {
    use super::{Event, Record};

    fn rec(event: Event) -> Record {
        Record {
            seq: 1,
            ts: "t".into(),
            prev: "0".into(),
            event,
        }
    }

    #[test]
    fn a_record_names_its_subject_and_reviewers() {
        let decided = |by: &str, break_glass| {
            rec(Event::ReviewDecided {
                review: "r-1".into(),
                status: "approved".into(),
                by: Some(by.into()),
                reason: Some("ok".into()),
                break_glass,
            })
        };
        // Several approvers, each named; break-glass: the requester approved it.
        assert!(decided("ann, bob", false).names("ann"));
        assert!(decided("ann, bob", false).names("bob"));
        assert!(!decided("ann, bob", false).names("an"));
        assert!(decided("dr.who@x", true).names("dr.who@x"));
        let failed = |subject: Option<&str>| {
            rec(Event::LoginFailed {
                client_addr: "1.2.3.4:5".into(),
                user: "r".into(),
                reason: "expired".into(),
                via: None,
                subject: subject.map(str::to_owned),
            })
        };
        assert!(failed(Some("eve")).names("eve"));
        assert!(
            !failed(None).names("r"),
            "the role asked for is not a subject"
        );
        let requested = rec(Event::ReviewRequested {
            review: "r-1".into(),
            session: "s".into(),
            subject: "cy".into(),
            role: "ai-agent".into(),
            rule: "rule".into(),
            justification: None,
        });
        assert!(requested.names("cy"));
        assert_eq!(requested.role(), Some("ai-agent"));
    }
}
