//! What `/metrics` counts beyond the audit and recording writers' own counters: statements by
//! decision, their latency, and failed logins. A statement costs a few relaxed atomic adds, never
//! a lock; failed logins (rare, and not on the statement path) go into a small map under a mutex,
//! keyed by a bounded set of labels (the refusal's kind and where it came).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use phigate_audit::Histogram;

/// The decisions a statement can get, as the audit log spells them.
pub const DECISIONS: [&str; 3] = ["allow", "deny", "require_approval"];

#[derive(Default)]
pub struct Metrics {
    /// By [`DECISIONS`] index.
    statements: [AtomicU64; 3],
    /// Statements of a masked role that read PHI columns (served masked).
    masked: AtomicU64,
    /// Held statements a reviewer approved (they ran) / that did not run (denied, expired,
    /// withdrawn).
    holds_approved: AtomicU64,
    holds_refused: AtomicU64,
    /// From the statement's forwarding to the database's answer (audited statements).
    pub statement_latency: Histogram,
    /// Failed logins by (reason kind, `wire`/`http`).
    login_failures: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl Metrics {
    /// One statement decided: `decision` one of [`DECISIONS`]; `masked` when it reads PHI
    /// columns its masked role sees masked.
    pub fn statement(&self, decision: &str, masked: bool) {
        if let Some(i) = DECISIONS.iter().position(|d| *d == decision) {
            self.statements[i].fetch_add(1, Ordering::Relaxed);
        }
        if masked {
            self.masked.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A hold ended: approved (the statement runs now) or not.
    pub fn hold_settled(&self, approved: bool) {
        let c = if approved {
            &self.holds_approved
        } else {
            &self.holds_refused
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// A refused credential: `reason` a bounded kind ([`crate::auth::AuthError::kind`]), `via`
    /// `wire` or `http`.
    pub fn login_failed(&self, reason: &'static str, via: &'static str) {
        let mut m = self
            .login_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *m.entry((reason, via)).or_default() += 1;
    }

    /// Appends the counters in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP phigate_statements_total Statements decided, by decision (allow, deny, require_approval = held).\n\
             # TYPE phigate_statements_total counter"
        );
        for (i, d) in DECISIONS.iter().enumerate() {
            let n = self.statements[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "phigate_statements_total{{decision=\"{d}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP phigate_statements_masked_total Statements of masked roles that read PHI columns (served masked).\n\
             # TYPE phigate_statements_masked_total counter\nphigate_statements_masked_total {}",
            self.masked.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP phigate_holds_total Held statements whose hold ended, by outcome (approved: it ran; refused: denied, expired or withdrawn).\n\
             # TYPE phigate_holds_total counter\n\
             phigate_holds_total{{outcome=\"approved\"}} {}\n\
             phigate_holds_total{{outcome=\"refused\"}} {}",
            self.holds_approved.load(Ordering::Relaxed),
            self.holds_refused.load(Ordering::Relaxed)
        );
        self.statement_latency.render(
            out,
            "phigate_statement_duration_seconds",
            "From forwarding a statement to the database's answer (audited statements).",
        );
        let _ = writeln!(
            out,
            "# HELP phigate_login_failures_total Refused credentials, by reason and where (wire, http).\n\
             # TYPE phigate_login_failures_total counter"
        );
        let m = self
            .login_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for ((reason, via), n) in m.iter() {
            let _ = writeln!(
                out,
                "phigate_login_failures_total{{reason=\"{reason}\",via=\"{via}\"}} {n}"
            );
        }
    }
}
