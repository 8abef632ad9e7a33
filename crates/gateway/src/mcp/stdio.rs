//! `phigate mcp --stdio`: for agents that start MCP servers as processes. It relays each
//! JSON-RPC line from stdin to the gateway's `/mcp` with the caller's credential
//! (`PHIGATE_URL`, `PHIGATE_TOKEN`), and writes each answer as a line on stdout. It holds no
//! database credential and decides nothing: the gateway does. Logs go to stderr.
//!
//! Each request is relayed in its own task, at most [`MAX_IN_FLIGHT`] at once (one more is
//! answered at once with an error), so a long call (an `approval_wait` of 300 s) delays no
//! other, and a `notifications/cancelled` reaches the gateway while the call it names runs.
//! Notifications and `initialize` are relayed in turn, before the next line is read. Answers
//! go to stdout through one writer, a line each. The token crosses the network only inside
//! TLS: `PHIGATE_URL` is `https://`, or `http://` to this machine.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};

/// Largest line read from stdin (a request the gateway would refuse anyway past 64 KiB); a
/// longer one is skipped up to its end, never buffered whole.
const MAX_LINE: usize = 1024 * 1024;
/// Largest answer read from the gateway (a `query` keeps at most 1 MiB of values).
const MAX_ANSWER: usize = 16 * 1024 * 1024;
/// Requests relayed at once.
pub const MAX_IN_FLIGHT: usize = 16;
/// Answers waiting for the writer.
const ANSWER_QUEUE: usize = 64;

/// The protocol version a message names (`_meta` of the 2026-07-28 era), or the one the
/// `initialize` answer chose.
fn meta_version(msg: &Value) -> Option<String> {
    msg["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"]
        .as_str()
        .map(str::to_owned)
}

/// What every relayed message needs.
struct Relay {
    http: reqwest::Client,
    endpoint: String,
    token: String,
    negotiated: Mutex<Option<String>>,
}

impl Relay {
    /// Posts one message and returns its answers (a JSON-RPC error when a request got none).
    async fn forward(&self, msg: &Value, line: String) -> Vec<Value> {
        let method = msg["method"].as_str().map(str::to_owned);
        let negotiated = self.negotiated.lock().ok().and_then(|n| n.clone());
        let version = meta_version(msg).or(negotiated);
        let mut req = self
            .http
            .post(&self.endpoint)
            .bearer_auth(&self.token)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(line);
        if let Some(v) = &version {
            req = req.header("mcp-protocol-version", v);
        }
        if let (Some(m), Some(_)) = (&method, meta_version(msg)) {
            req = req.header("mcp-method", m);
            if let Some(name) = msg["params"]["name"].as_str() {
                req = req.header("mcp-name", name);
            }
        }
        let answers = match req.send().await {
            Ok(resp) => read_answers(resp).await,
            Err(e) => {
                tracing::error!(error = %e, "cannot reach the gateway");
                Vec::new()
            }
        };
        if answers.is_empty() {
            return error_answer(msg, "phigate: the gateway did not answer")
                .into_iter()
                .collect();
        }
        if method.as_deref() == Some("initialize") {
            let chosen = answers
                .iter()
                .find_map(|a| a["result"]["protocolVersion"].as_str());
            if let (Some(v), Ok(mut n)) = (chosen, self.negotiated.lock()) {
                *n = Some(v.to_owned());
            }
        }
        answers
    }
}

/// Refuses a URL that would carry the token in the clear over a network.
fn check_url(url: &str) -> anyhow::Result<()> {
    if crate::config::auth::is_secure_url(url) {
        return Ok(());
    }
    anyhow::bail!(
        "PHIGATE_URL must be https://, or http:// to this machine (localhost, 127.0.0.1, ::1): \
         the token must not cross a network in the clear (PHIGATE_CA_FILE trusts a private CA)"
    )
}

/// Writes each answer as a line on stdout, until every sender is gone.
async fn write_answers(mut answers: mpsc::Receiver<Value>) -> std::io::Result<()> {
    let mut stdout = tokio::io::stdout();
    while let Some(a) = answers.recv().await {
        let mut out = serde_json::to_vec(&a).map_err(std::io::Error::other)?;
        out.push(b'\n');
        stdout.write_all(&out).await?;
        stdout.flush().await?;
    }
    Ok(())
}

/// Relays until stdin ends, then until the calls in flight have answered.
pub async fn run(url: &str, token: &str) -> anyhow::Result<()> {
    check_url(url)?;
    let relay = Arc::new(Relay {
        http: crate::login::gateway_client(Duration::from_secs(super::tools::MAX_WAIT_SECS + 60))?,
        endpoint: format!("{}/mcp", url.trim_end_matches('/')),
        token: token.to_owned(),
        negotiated: Mutex::new(None),
    });
    let (tx, rx) = mpsc::channel::<Value>(ANSWER_QUEUE);
    let writer = tokio::spawn(write_answers(rx));
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut lines = FramedRead::new(
        tokio::io::stdin(),
        LinesCodec::new_with_max_length(MAX_LINE),
    );
    while let Some(line) = lines.next().await {
        let line = match line {
            Ok(l) => l,
            Err(LinesCodecError::MaxLineLengthExceeded) => {
                tracing::warn!(max = MAX_LINE, "message too large; dropped");
                continue;
            }
            Err(LinesCodecError::Io(e)) => return Err(e.into()),
        };
        if line.trim().is_empty() {
            continue;
        }
        let msg: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "not JSON; dropped");
                continue;
            }
        };
        let request = msg.get("id").is_some() && msg["method"] != "initialize";
        if !request {
            // Notifications (a cancellation above all) and initialize: at once, in turn.
            for a in relay.forward(&msg, line).await {
                let _ = tx.send(a).await;
            }
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            let busy = format!("phigate: {MAX_IN_FLIGHT} calls are already in flight; retry");
            if let Some(a) = error_answer(&msg, &busy) {
                let _ = tx.send(a).await;
            }
            continue;
        };
        let (relay, tx) = (relay.clone(), tx.clone());
        tokio::spawn(async move {
            for a in relay.forward(&msg, line).await {
                let _ = tx.send(a).await;
            }
            drop(slot);
        });
    }
    // Every call in flight answers before the relay ends.
    let _all = slots.acquire_many(MAX_IN_FLIGHT as u32).await;
    drop(tx);
    writer.await??;
    Ok(())
}

/// A JSON-RPC error for a request nobody answered (notifications get none).
fn error_answer(msg: &Value, message: &str) -> Option<Value> {
    let id = msg.get("id")?;
    Some(serde_json::json!({"jsonrpc": "2.0", "id": id,
        "error": {"code": -32603, "message": message}}))
}

/// The JSON-RPC messages of an answer: a JSON body, or the `data:` events of a stream; an
/// HTTP error (401, 403) as a JSON-RPC error.
async fn read_answers(resp: reqwest::Response) -> Vec<Value> {
    let status = resp.status();
    let is_sse = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut resp = resp;
    let mut bytes = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        if bytes.len() + chunk.len() > MAX_ANSWER {
            tracing::error!(max = MAX_ANSWER, "answer too large; dropped");
            return Vec::new();
        }
        bytes.extend_from_slice(&chunk);
    }
    let body = String::from_utf8_lossy(&bytes);
    if is_sse {
        let mut out = Vec::new();
        for event in body.split("\n\n") {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            if let Ok(v) = serde_json::from_str::<Value>(&data.join("\n")) {
                out.push(v);
            }
        }
        return out;
    }
    match serde_json::from_str::<Value>(&body) {
        Ok(v) if v.get("jsonrpc").is_some() => vec![v],
        Ok(Value::Array(items)) => items,
        _ if status.is_success() => Vec::new(),
        other => {
            let why = other
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| status.to_string());
            tracing::error!(%status, error = %why, "the gateway refused the call");
            vec![serde_json::json!({"jsonrpc": "2.0", "id": null,
                "error": {"code": -32001, "message": format!("phigate: {why}")}})]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_crosses_a_network_only_inside_tls() {
        for ok in [
            "https://phigate.example",
            "https://10.0.0.5:6544/",
            "http://127.0.0.1:6544",
            "http://localhost:6544",
            "http://[::1]:6544",
        ] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.5:6544",
            "http://phigate.example",
            "HTTP://phigate.example",
            "http://127.0.0.1@evil.example",
            "ftp://127.0.0.1",
            "127.0.0.1:6544",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}
