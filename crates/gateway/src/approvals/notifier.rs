//! Where reviews are announced: a webhook (JSON, or a Slack-compatible message), delivered in
//! the background and retried with backoff; deliveries and give-ups are audited. The statement
//! text leaves redacted (literals replaced by `$n`).

use std::time::Duration;

use super::{Review, Status};

/// Where reviews are announced: a webhook, retried with backoff.
pub struct Notifier {
    url: String,
    slack: bool,
    client: reqwest::Client,
    /// Where deliveries (and give-ups) are recorded.
    pub audit: Option<phigate_audit::AuditHandle>,
}

impl Notifier {
    pub fn new(url: &str, slack: bool) -> Option<Notifier> {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .ok()?;
        Some(Notifier {
            url: url.to_owned(),
            slack,
            client,
            audit: None,
        })
    }

    /// The webhook `[approvals]` names, if any; deliveries are audited to `audit`.
    pub fn from_config(
        config: &crate::config::ApprovalsConfig,
        audit: Option<phigate_audit::AuditHandle>,
    ) -> anyhow::Result<Option<Notifier>> {
        let Some(url) = config.webhook_url.as_deref() else {
            return Ok(None);
        };
        let slack = config.webhook_format == crate::config::WebhookFormat::Slack;
        let mut n = Notifier::new(url, slack)
            .ok_or_else(|| anyhow::anyhow!("approvals.webhook_url: cannot build an HTTP client"))?;
        n.audit = audit;
        Ok(Some(n))
    }

    /// Announces a review's state (in the background: nothing waits for the webhook).
    pub(super) fn send(&self, review: &Review) {
        let (statement, _) = phigate_sql::redact_literals(&review.statement);
        let body = if self.slack {
            let text = if review.status == Status::Pending {
                format!(
                    ":hourglass: phigate review *{}*: {} (role {}) wants to run `{}` (rule {}){}. Approve: `phigate review approve {} --reason \"...\"`",
                    review.id,
                    review.requester,
                    review.role,
                    statement,
                    review.rule,
                    review
                        .justification
                        .as_deref()
                        .map(|j| format!(", because: {j}"))
                        .unwrap_or_default(),
                    review.id
                )
            } else if review.break_glass {
                format!(
                    ":rotating_light: BREAK-GLASS: {} (role {}) approved their own statement `{}` (rule {}), review *{}*: {}",
                    review.requester,
                    review.role,
                    statement,
                    review.rule,
                    review.id,
                    review.decision_reason.as_deref().unwrap_or("")
                )
            } else {
                format!(
                    "phigate review *{}* {}{}{}",
                    review.id,
                    review.status,
                    review
                        .decided_by
                        .as_deref()
                        .map(|b| format!(" by {b}"))
                        .unwrap_or_default(),
                    review
                        .decision_reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                )
            };
            serde_json::json!({ "text": text })
        } else {
            let mut r = serde_json::json!(review);
            r["statement"] = serde_json::Value::String(statement);
            let event = match (review.status, review.break_glass) {
                (Status::Pending, _) => "review.requested",
                (_, true) => "review.break_glass",
                _ => "review.decided",
            };
            serde_json::json!({ "event": event, "review": r })
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (url, client, id) = (self.url.clone(), self.client.clone(), review.id.clone());
        let (audit, status) = (self.audit.clone(), review.status.as_str().to_owned());
        let record = move |delivered: bool, attempts: u32| {
            if let Some(a) = &audit {
                a.submit(phigate_audit::Pending::Event(
                    phigate_audit::Event::ReviewNotified {
                        review: id.clone(),
                        status: status.clone(),
                        delivered,
                        attempts,
                    },
                ));
            }
        };
        let id = review.id.clone();
        handle.spawn(async move {
            let mut wait = Duration::from_millis(500);
            for attempt in 1..=5 {
                match client.post(&url).json(&body).send().await {
                    Ok(r) if r.status().is_success() => {
                        tracing::info!(review = %id, attempt, "review webhook delivered");
                        record(true, attempt);
                        return;
                    }
                    Ok(r) => tracing::warn!(review = %id, attempt, status = %r.status(), "review webhook refused"),
                    Err(e) => tracing::warn!(review = %id, attempt, error = %e, "review webhook failed"),
                }
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            tracing::error!(review = %id, "review webhook not delivered after 5 attempts");
            record(false, 5);
        });
    }
}
