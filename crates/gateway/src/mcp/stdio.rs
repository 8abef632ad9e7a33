//! `phigate mcp --stdio`: for agents that start MCP servers as processes. It relays each
//! JSON-RPC line from stdin to the gateway's `/mcp` with the caller's credential
//! (`PHIGATE_URL`, `PHIGATE_TOKEN`), and writes each answer as a line on stdout. It holds no
//! database credential and decides nothing: the gateway does. Logs go to stderr.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};

/// Largest line read from stdin (a request the gateway would refuse anyway past 64 KiB); a
/// longer one is skipped up to its end, never buffered whole.
const MAX_LINE: usize = 1024 * 1024;
/// Largest answer read from the gateway (a `query` keeps at most 1 MiB of values).
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// The protocol version a message names (`_meta` of the 2026-07-28 era), or the one the
/// `initialize` answer chose.
fn meta_version(msg: &Value) -> Option<String> {
    msg["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"]
        .as_str()
        .map(str::to_owned)
}

/// Relays until stdin ends.
pub async fn run(url: &str, token: &str) -> anyhow::Result<()> {
    let endpoint = format!("{}/mcp", url.trim_end_matches('/'));
    let http = crate::login::gateway_client(Duration::from_secs(super::tools::MAX_WAIT_SECS + 60))?;
    let mut lines = FramedRead::new(
        tokio::io::stdin(),
        LinesCodec::new_with_max_length(MAX_LINE),
    );
    let mut stdout = tokio::io::stdout();
    let mut negotiated: Option<String> = None;
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
        let method = msg["method"].as_str().map(str::to_owned);
        let version = meta_version(&msg).or_else(|| negotiated.clone());
        let mut req = http
            .post(&endpoint)
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(line.clone());
        if let Some(v) = &version {
            req = req.header("mcp-protocol-version", v);
        }
        if let (Some(m), Some(_)) = (&method, meta_version(&msg)) {
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
        let answers = if answers.is_empty() {
            error_answer(&msg, "phigate: the gateway did not answer")
                .into_iter()
                .collect()
        } else {
            answers
        };
        for a in answers {
            if method.as_deref() == Some("initialize") {
                if let Some(v) = a["result"]["protocolVersion"].as_str() {
                    negotiated = Some(v.to_owned());
                }
            }
            let mut out = serde_json::to_vec(&a)?;
            out.push(b'\n');
            stdout.write_all(&out).await?;
            stdout.flush().await?;
        }
    }
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
