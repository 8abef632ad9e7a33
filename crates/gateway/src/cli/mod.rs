//! The `phigate` command line: the clap definitions of the top level, and one module per command
//! family. `src/main.rs` parses and dispatches; each module does its command's work and printing.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Config;

pub mod audit;
mod audit_report;
mod check;
pub mod demo;
pub mod discover;
pub mod keys;
pub mod login;
pub mod mcp;
pub mod ops;
pub mod replay;
pub mod review;
pub mod serve;
pub mod sessions;
pub mod token;

#[derive(Parser)]
#[command(
    name = "phigate",
    version,
    about = "A PostgreSQL gateway for patient data"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve(serve::ServeArgs),
    /// Print the JSON schema of the configuration file.
    Schema,
    /// Check a configuration file and exit.
    Check(serve::CheckArgs),
    /// A throwaway PostgreSQL with synthetic patients, the gateway in front of it.
    Demo(demo::DemoArgs),
    /// API keys for machine identities (AI agents, CI jobs).
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Propose PHI tags for a database's columns from their names and sampled contents, as a
    /// `[[phi]]` config snippet for a person to review (no sampled value is printed).
    Discover(discover::DiscoverArgs),
    /// The audit log: verify it, search it, export it, report on it (works while the gateway
    /// runs).
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Recorded sessions: who, when, from where, what they touched (from the audit log).
    Sessions {
        #[command(subcommand)]
        command: sessions::SessionsCommand,
    },
    /// Replay a recorded session: what the caller sent and what it received, step by step
    /// with the original timing. Refuses a recording whose digest differs from the audit log.
    Replay(replay::ReplayArgs),
    /// Statements held for review: list, show, approve, deny (through the gateway's HTTP API).
    Review(review::ReviewArgs),
    /// Development tokens (refused unless the config sets auth.development), and revoking
    /// an individual's tokens.
    Token {
        #[command(subcommand)]
        command: token::TokenCommand,
    },
    /// Sign in with your identity provider and get a short-lived gateway token and a ready
    /// psql command.
    Login(login::LoginArgs),
    /// The MCP server over stdio, for agents that start servers as processes: relays to the
    /// gateway's /mcp with your credential (PHIGATE_URL, PHIGATE_TOKEN).
    Mcp(mcp::McpArgs),
    /// Shell completions generated from this CLI (bash, zsh, fish, elvish, powershell).
    Completions(ops::CompletionsArgs),
    /// Man pages generated from this CLI: phigate.1 and one page per command.
    Man(ops::ManArgs),
    /// Certificates for the client listener: a self-signed pair for a first run.
    Tls {
        #[command(subcommand)]
        command: ops::TlsCommand,
    },
    /// Ask the gateway's health probe; exit 0 if it answers 2xx (for container HEALTHCHECK).
    Healthcheck(ops::HealthcheckArgs),
}

/// A multi-threaded runtime with every driver enabled.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    runtime_with(None)
}

/// A runtime with the configured number of workers (1: a current-thread runtime).
pub fn runtime_with(worker_threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = match worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.max(1));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    Ok(builder.enable_all().build()?)
}

/// Where the gateway keeps its state: from a config file's `data_dir`, or given directly.
#[derive(clap::Args)]
pub struct StateDir {
    /// The gateway's config file (its data_dir is used, and roles are checked against it).
    #[arg(long, short, env = "PHIGATE_CONFIG")]
    config: Option<PathBuf>,
    /// The gateway's data directory.
    #[arg(long, env = "PHIGATE_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

impl StateDir {
    /// The data directory, and the config if one was given.
    fn resolve(&self) -> anyhow::Result<(PathBuf, Option<Config>)> {
        match (&self.config, &self.data_dir) {
            (Some(_), Some(_)) => anyhow::bail!("give --config or --data-dir, not both"),
            (Some(path), None) => {
                let config = Config::load(path)?;
                let dir = config
                    .data_dir
                    .clone()
                    .ok_or_else(|| anyhow::anyhow!("{}: no data_dir set", path.display()))?;
                Ok((dir, Some(config)))
            }
            (None, Some(dir)) => Ok((dir.clone(), None)),
            (None, None) => anyhow::bail!("give --config FILE or --data-dir DIR"),
        }
    }
}

/// Which audit log (and recordings): from a config file (its `audit.dir` and `recording.dir`,
/// else under its `data_dir`), or the gateway's data directory (its `audit/` is used) or the
/// log directory itself.
#[derive(clap::Args)]
pub struct AuditDir {
    // Not read from PHIGATE_CONFIG: with PHIGATE_DATA_DIR (which these commands always read)
    // also set, every audit command would refuse the pair.
    /// The gateway's config file (its audit and recordings directories are used).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The gateway's data directory, or the audit log's directory.
    #[arg(long, env = "PHIGATE_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

/// The places an audit command reads.
struct AuditPlaces {
    /// The log's directory.
    log: PathBuf,
    /// The recordings' directory (it may not exist).
    recordings: Option<PathBuf>,
}

impl AuditDir {
    fn places(&self) -> anyhow::Result<AuditPlaces> {
        match (&self.config, &self.data_dir) {
            (Some(_), Some(_)) => anyhow::bail!("give --config or --data-dir, not both"),
            (Some(path), None) => {
                let config = Config::load(path)?;
                let log = config
                    .audit
                    .resolved_dir(config.data_dir.as_deref())
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "{}: no audit log (audit.enabled is false, or no data_dir)",
                            path.display()
                        )
                    })?;
                let recordings = config.recording.resolved_dir(config.data_dir.as_deref());
                Ok(AuditPlaces { log, recordings })
            }
            (None, Some(dir)) => Ok(AuditPlaces {
                log: log_in(dir)?,
                recordings: Some(dir.join("recordings")),
            }),
            (None, None) => anyhow::bail!("give --config FILE or --data-dir DIR"),
        }
    }
}

/// The log directory: `<data dir>/audit`, or the directory itself if it holds the log.
fn log_in(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let nested = dir.join("audit");
    if nested.is_dir() {
        return Ok(nested);
    }
    if dir.join(phigate_audit::store::PUBLIC_KEY).exists() {
        return Ok(dir.to_owned());
    }
    anyhow::bail!("no audit log in {} (nor in its audit/)", dir.display())
}

/// `1 thing`, `2 things`.
pub(crate) fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// An error and its causes, as `{:#}` prints them, without a cause whose text the message
/// before it already holds (`cannot read x: No such file or directory (os error 2)` once, not
/// twice).
pub fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.is_empty() {
            out = text;
        } else if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

fn parse_ttl(text: &str) -> anyhow::Result<std::time::Duration> {
    humantime::parse_duration(text).map_err(|e| anyhow::anyhow!("--ttl {text}: {e}"))
}

/// RFC 3339, a date, or an age (`24h`: that long ago).
fn time_bound(text: &Option<String>) -> anyhow::Result<Option<String>> {
    let Some(t) = text else { return Ok(None) };
    if let Ok(age) = humantime::parse_duration(t) {
        let at = std::time::SystemTime::now()
            .checked_sub(age)
            .unwrap_or(std::time::UNIX_EPOCH);
        return Ok(Some(phigate_audit::record::rfc3339(at)));
    }
    if humantime::parse_rfc3339_weak(t).is_ok() || t.len() == 10 {
        return Ok(Some(t.clone()));
    }
    anyhow::bail!("{t}: not a time (RFC 3339, YYYY-MM-DD, or an age such as 24h)")
}

/// The config's cluster, if it has one: keys and revocations then live in its control
/// database.
pub(crate) fn cluster_of(
    config: Option<&crate::config::Config>,
) -> Option<&crate::config::ClusterConfig> {
    config.and_then(|c| c.cluster.as_ref())
}

/// Runs `f` on a connection of the CLI's own to the control database.
pub(crate) fn on_control<T, F, Fut>(
    cluster: &crate::config::ClusterConfig,
    f: F,
) -> anyhow::Result<T>
where
    F: FnOnce(tokio_postgres::Client) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    runtime_with(Some(1))?.block_on(async move {
        let client = crate::control::connect_once(cluster).await?;
        f(client).await
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every flag and argument of every command says what it is for in `--help`.
    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() && sub.get_long_about().is_none() {
                    missing.push(format!("{path} {} (the command)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "phigate", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }

    #[test]
    fn an_os_error_is_said_once() {
        let e = crate::config::Config::load(std::path::Path::new("/nonexistent/phigate.toml"))
            .map_err(anyhow::Error::from)
            .expect_err("no such file");
        let text = super::describe(&e);
        assert_eq!(
            text.matches("No such file or directory").count(),
            1,
            "{text}"
        );
        assert!(text.contains("/nonexistent/phigate.toml"), "{text}");
    }

    #[test]
    fn counts_are_pluralised() {
        assert_eq!(super::plural(1, "statement", "statements"), "1 statement");
        assert_eq!(super::plural(0, "statement", "statements"), "0 statements");
    }
}
