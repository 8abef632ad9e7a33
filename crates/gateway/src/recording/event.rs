//! The lines of a recording: what `Tape` writes and `phigate replay` reads back.

use serde::{Deserialize, Serialize};

/// One line of a recording. `t` is microseconds since the session started.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Ev {
    Start {
        v: u32,
        session: String,
        subject: String,
        role: String,
        /// `shape` or `rows`.
        mode: String,
        max_rows: u64,
        at: String,
    },
    /// The client sent statement `n` (its text, decision and parameters are in the audit
    /// log's `statement` record `n` of the session).
    Statement {
        t: u64,
        n: u64,
    },
    /// The client's next statement was held for review.
    Held {
        t: u64,
        review: String,
    },
    Columns {
        t: u64,
        names: Vec<String>,
        types: Vec<u32>,
    },
    Row {
        t: u64,
        values: Vec<Option<String>>,
    },
    /// One COPY TO STDOUT data message.
    CopyData {
        t: u64,
        data: String,
    },
    Complete {
        t: u64,
        tag: String,
        /// Rows (or COPY messages) of this result kept in the recording.
        rows_kept: u64,
    },
    /// An execution stopped at its row limit (PortalSuspended).
    Suspended {
        t: u64,
        rows_kept: u64,
    },
    Empty {
        t: u64,
    },
    Error(Message),
    Notice(Message),
    Ready {
        t: u64,
        status: String,
    },
    /// Events left out: the writer fell behind.
    Gap {
        t: u64,
        events: u64,
    },
    /// The recording stops here (its size cap); the session went on.
    Truncated {
        t: u64,
        why: String,
    },
    End {
        t: u64,
        reason: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Message {
    pub t: u64,
    pub severity: String,
    pub code: String,
    /// Absent when the role's recordings keep no message text (see docs/recording.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}
