//! `phigate review`: statements held for review, through the gateway's HTTP API.

use crate::text::{self, display};
use clap::Subcommand;

#[derive(clap::Args)]
pub struct ReviewArgs {
    /// The gateway's HTTP address.
    #[arg(long, env = "PHIGATE_URL", global = true)]
    url: Option<String>,
    /// The gateway's config file: its listen.http_address is the address (on this machine),
    /// when --url is not given.
    #[arg(long, short, env = "PHIGATE_CONFIG", global = true)]
    config: Option<std::path::PathBuf>,
    /// Your token or API key (a reviewer role's).
    #[arg(long, env = "PHIGATE_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: ReviewCommand,
}

#[derive(Subcommand)]
pub enum ReviewCommand {
    /// Ask to act as another role for a while (an access request: roles of
    /// approvals.elevation_roles); a reviewer approves it like a held statement, then you
    /// connect with that role until it runs out. Uses your own token.
    Request {
        /// The role to act as.
        #[arg(long)]
        role: String,
        /// For how long (at most approvals.max_elevation_minutes).
        #[arg(long)]
        minutes: u64,
        /// Why: the reviewer sees it.
        #[arg(long)]
        reason: String,
    },
    /// Pending reviews (all recent ones with --all).
    List {
        /// Recent decided reviews too.
        #[arg(long)]
        all: bool,
        /// Print the reviews as JSON.
        #[arg(long)]
        json: bool,
    },
    /// One review: who, what exactly, why, which rule, and how it was decided.
    Show {
        /// The review's id (r-...).
        id: String,
        /// Print the review as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Let the held statement run (once).
    Approve {
        /// The review's id (r-...).
        id: String,
        /// Why it may run: recorded in the audit log and shown to the requester.
        #[arg(long)]
        reason: String,
        /// Emergency access: approve your own statement (roles in approvals.break_glass_roles;
        /// a justification of at least 20 characters). Audited and announced as break-glass.
        #[arg(long)]
        break_glass: bool,
    },
    /// Refuse it; the requester sees the reason.
    Deny {
        /// The review's id (r-...).
        id: String,
        /// Why not: recorded in the audit log and shown to the requester.
        #[arg(long)]
        reason: String,
    },
}

pub fn run(args: ReviewArgs) -> anyhow::Result<()> {
    let url = match (args.url, &args.config) {
        (Some(url), _) => Some(url),
        (None, Some(path)) => Some(url_of(path)?),
        (None, None) => None,
    };
    super::runtime().and_then(|rt| rt.block_on(review(url, args.token, args.command)))
}

/// The HTTP address of the gateway a config file describes, reached from this machine.
fn url_of(path: &std::path::Path) -> anyhow::Result<String> {
    let config = crate::config::Config::load(path)?;
    let mut addr = config
        .listen
        .http_address
        .ok_or_else(|| anyhow::anyhow!("{}: listen.http_address is not set", path.display()))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok(format!("http://{addr}"))
}

async fn review(
    url: Option<String>,
    token: Option<String>,
    command: ReviewCommand,
) -> anyhow::Result<()> {
    // `review show ID` reads the HTTP API: the id is a path segment.
    if let ReviewCommand::Show { id, .. }
    | ReviewCommand::Approve { id, .. }
    | ReviewCommand::Deny { id, .. } = &command
    {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            anyhow::bail!("{}: not a review id (r-...)", display(id));
        }
    }
    let url = url.ok_or_else(|| {
        anyhow::anyhow!("give --url (or PHIGATE_URL), or --config (or PHIGATE_CONFIG)")
    })?;
    let token = token.ok_or_else(|| anyhow::anyhow!("give --token (or PHIGATE_TOKEN)"))?;
    let base = url.trim_end_matches('/');
    let lower = base.to_ascii_lowercase();
    if !lower.starts_with("https://") && !crate::auth::is_loopback_url(&lower) {
        anyhow::bail!("--url must be https:// (plain http only to a gateway on this machine)");
    }
    let client = crate::login::gateway_client(std::time::Duration::from_secs(15))?;
    let (method, path, body) = match &command {
        ReviewCommand::List { all, .. } => (
            reqwest::Method::GET,
            format!("/v1/reviews{}", if *all { "?all=true" } else { "" }),
            None,
        ),
        ReviewCommand::Show { id, .. } => (reqwest::Method::GET, format!("/v1/reviews/{id}"), None),
        ReviewCommand::Request {
            role,
            minutes,
            reason,
        } => (
            reqwest::Method::POST,
            "/v1/access-requests".to_owned(),
            Some(serde_json::json!({ "role": role, "minutes": minutes, "reason": reason })),
        ),
        ReviewCommand::Approve {
            id,
            reason,
            break_glass,
        } => (
            reqwest::Method::POST,
            format!("/v1/reviews/{id}/approve"),
            Some(serde_json::json!({ "reason": reason, "break_glass": break_glass })),
        ),
        ReviewCommand::Deny { id, reason } => (
            reqwest::Method::POST,
            format!("/v1/reviews/{id}/deny"),
            Some(serde_json::json!({ "reason": reason })),
        ),
    };
    let mut req = client
        .request(method, format!("{base}{path}"))
        .bearer_auth(&token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await?;
    let status = resp.status();
    let v: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
    if !status.is_success() {
        anyhow::bail!(
            "{status}: {}",
            v.get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("request failed")
        );
    }
    // Everything of a review came from a client: shown with what could deceive a reader made
    // visible, the statement's kinds and tables beside its text (a comment cannot disguise the
    // target).
    let show = |r: &serde_json::Value| {
        let s = |k: &str| display(r.get(k).and_then(|v| v.as_str()).unwrap_or("")).into_owned();
        let list = |k: &str| {
            r.get(k)
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str())
                        .map(|x| display(x).into_owned())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default()
        };
        format!(
            "{}  {}  {} as {}  rule {}  {}\n  kinds: {}  tables: {}\n  {}{}",
            s("id"),
            s("status"),
            s("requester"),
            s("role"),
            s("rule"),
            s("created_at"),
            list("kinds"),
            list("tables"),
            s("statement"),
            r.get("justification")
                .and_then(|j| j.as_str())
                .map(|j| format!("\n  justification: {}", display(j)))
                .unwrap_or_default()
        )
    };
    match command {
        ReviewCommand::List { json: true, .. } => {
            println!("{}", text::json(serde_json::to_string_pretty(&v["reviews"])?))
        }
        ReviewCommand::List { .. } => {
            let list = v["reviews"].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no reviews pending");
            }
            for r in list {
                println!("{}", show(&r));
            }
        }
        ReviewCommand::Show { json: true, .. } => {
            println!("{}", text::json(serde_json::to_string_pretty(&v)?))
        }
        ReviewCommand::Show { .. } => println!("{}\n{}", show(&v), decided(&v)),
        ReviewCommand::Request { role, minutes, .. } => println!(
            "access request {id} is pending: once a reviewer approves it (phigate review approve {id} --reason ...), connect with user={role} for {minutes} minutes",
            id = v["id"].as_str().unwrap_or("?"),
        ),
        ReviewCommand::Approve { .. } | ReviewCommand::Deny { .. } => {
            if v["status"] == "pending" {
                println!(
                    "review {}: approval {} of {} recorded; it waits for another reviewer",
                    v["id"].as_str().unwrap_or("?"),
                    v["approvals"].as_array().map_or(0, Vec::len),
                    v["approvals_required"].as_u64().unwrap_or(1)
                )
            } else {
                println!(
                    "review {} {} by {}{}",
                    display(v["id"].as_str().unwrap_or("?")),
                    display(v["status"].as_str().unwrap_or("?")),
                    display(v["decided_by"].as_str().unwrap_or("?")),
                    if v["break_glass"] == true {
                        " (BREAK-GLASS)"
                    } else {
                        ""
                    }
                )
            }
        }
    }
    Ok(())
}

/// How a review ended (or what it waits for): approvals so far, who decided, why, when.
fn decided(r: &serde_json::Value) -> String {
    let s = |k: &str| display(r.get(k).and_then(|v| v.as_str()).unwrap_or("-")).into_owned();
    let mut out = format!(
        "  expires: {}  approvals: {} of {}",
        s("expires_at"),
        r["approvals"].as_array().map_or(0, Vec::len),
        r["approvals_required"].as_u64().unwrap_or(1)
    );
    for a in r["approvals"].as_array().into_iter().flatten() {
        let f = |k: &str| display(a.get(k).and_then(|v| v.as_str()).unwrap_or("-")).into_owned();
        out.push_str(&format!(
            "\n    approved by {} at {}: {}",
            f("by"),
            f("at"),
            f("reason")
        ));
    }
    if r["decided_by"].is_string() || r["decided_at"].is_string() {
        out.push_str(&format!(
            "\n  decided by {} at {}{}: {}",
            s("decided_by"),
            s("decided_at"),
            if r["break_glass"] == true {
                " (BREAK-GLASS)"
            } else {
                ""
            },
            s("decision_reason")
        ));
    }
    out
}
