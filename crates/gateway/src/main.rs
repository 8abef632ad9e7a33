//! The `phigate` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use phigate::config::{Config, LogFormat};

#[derive(Parser)]
#[command(
    name = "phigate",
    version,
    about = "A PostgreSQL gateway for patient data"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
        /// Override the configured log format.
        #[arg(long, value_parser = ["text", "json"])]
        log_format: Option<String>,
    },
    /// Print the JSON schema of the configuration file.
    Schema,
    /// Check a configuration file and exit.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// A throwaway PostgreSQL with synthetic patients, the gateway in front of it.
    Demo {
        /// Port for PostgreSQL clients (0 = any free port).
        #[arg(long, default_value_t = 6543)]
        pg_port: u16,
        /// Port for HTTP (health, API) (0 = any free port).
        #[arg(long, default_value_t = 6544)]
        http_port: u16,
        /// Keep the demo's state here instead of a temporary directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Write connection details (JSON) here once the gateway accepts connections.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// API keys for machine identities (AI agents, CI jobs).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Propose PHI tags for a database's columns from their names and sampled contents, as a
    /// `[[phi]]` config snippet for a person to review (no sampled value is printed).
    Discover {
        /// The config whose upstream database is examined.
        #[arg(long, short)]
        config: PathBuf,
        /// Values sampled per text column.
        #[arg(long, default_value_t = 200)]
        sample: usize,
    },
    /// The audit log: verify it, search it, export it, report on it (works while the gateway
    /// runs).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Recorded sessions: who, when, from where, what they touched (from the audit log).
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// Replay a recorded session: what the caller sent and what it received, step by step
    /// with the original timing. Refuses a recording whose digest differs from the audit log.
    Replay {
        /// The session's id (from `phigate sessions list`).
        session: String,
        #[command(flatten)]
        dir: AuditDir,
        /// Where the recordings are (default: the data directory's recordings/).
        #[arg(long)]
        recordings_dir: Option<PathBuf>,
        /// Playback speed: 2 is twice as fast; 0 prints everything at once.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Wait for Enter before each step.
        #[arg(long)]
        step: bool,
        /// Print the session as one JSON document (no waiting).
        #[arg(long)]
        json: bool,
        /// The recording key, for encrypted recordings (or PHIGATE_RECORDING_KEY, 64 hex
        /// digits).
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// Statements held for review: list, show, approve, deny (through the gateway's HTTP API).
    Review {
        /// The gateway's HTTP address.
        #[arg(long, env = "PHIGATE_URL", global = true)]
        url: Option<String>,
        /// Your token or API key (a reviewer role's).
        #[arg(long, env = "PHIGATE_TOKEN", global = true, hide_env_values = true)]
        token: Option<String>,
        #[command(subcommand)]
        command: ReviewCommand,
    },
    /// Development tokens (refused unless the config sets auth.development).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Sign in with your identity provider and get a short-lived gateway token and a ready
    /// psql command.
    Login {
        /// The gateway's HTTP address.
        #[arg(long, env = "PHIGATE_URL")]
        url: String,
        /// Which configured issuer to sign in with (when the gateway trusts several).
        #[arg(long)]
        issuer: Option<String>,
        /// Use the device flow (for a machine without a browser) instead of a browser redirect.
        #[arg(long)]
        device: bool,
        /// Print the sign-in address instead of opening a browser.
        #[arg(long)]
        no_browser: bool,
        /// Role to put in the printed connection string.
        #[arg(long)]
        role: Option<String>,
        /// Database for the printed connection string.
        #[arg(long)]
        database: Option<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Where the gateway keeps its state: from a config file's `data_dir`, or given directly.
#[derive(clap::Args)]
struct StateDir {
    /// The gateway's config file (its data_dir is used, and roles are checked against it).
    #[arg(long, short, env = "PHIGATE_CONFIG")]
    config: Option<PathBuf>,
    /// The gateway's data directory.
    #[arg(long, env = "PHIGATE_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key; it is printed once and only its hash is stored.
    Create {
        #[arg(long)]
        name: String,
        /// A role the key may assume (repeatable; the first is its default).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Lifetime, e.g. 30d, 12h (at most 366d).
        #[arg(long, default_value = "30d")]
        ttl: String,
        /// The individual identity the key stands for (default: the name).
        #[arg(long)]
        subject: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dir: StateDir,
    },
    /// List keys with their status and last use.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dir: StateDir,
    },
    /// Revoke a key by id or name: no new sessions; its open sessions end.
    Revoke {
        id_or_name: String,
        #[command(flatten)]
        dir: StateDir,
    },
}

/// Which audit log: the gateway's data directory (its `audit/` is used) or the log directory.
#[derive(clap::Args)]
struct AuditDir {
    #[arg(long, env = "PHIGATE_DATA_DIR")]
    data_dir: PathBuf,
}

/// Search criteria shared by search, export and report.
#[derive(clap::Args)]
struct AuditFilter {
    #[arg(long)]
    subject: Option<String>,
    #[arg(long)]
    role: Option<String>,
    /// A table, `name` or `schema.name`.
    #[arg(long)]
    table: Option<String>,
    /// A (masked) PHI column.
    #[arg(long)]
    column: Option<String>,
    /// From this time: RFC 3339, a date (2026-11-29), or an age such as 24h or 7d.
    #[arg(long)]
    since: Option<String>,
    /// Until this time (same forms).
    #[arg(long)]
    until: Option<String>,
    /// allow, deny or require_approval.
    #[arg(long)]
    decision: Option<String>,
    #[arg(long)]
    session: Option<String>,
    /// Record type: statement, statement_end, session_start, login_failed, ...
    #[arg(long = "type")]
    kind: Option<String>,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Prove the log whole: exits non-zero and names the first bad record on modification,
    /// deletion, reordering or truncation.
    Verify {
        #[command(flatten)]
        dir: AuditDir,
        /// The trusted public key (hex); default: the one beside the log.
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// A directory holding a copy of the checkpoints (repeatable).
        #[arg(long)]
        mirror: Vec<PathBuf>,
        /// Where the session recordings are (default: the data directory's recordings/, when
        /// it exists); each one the log seals is hashed again.
        #[arg(long)]
        recordings_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Records matching the criteria, one JSON object per line.
    Search {
        #[command(flatten)]
        dir: AuditDir,
        #[command(flatten)]
        filter: AuditFilter,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Every matching record as JSON lines or CSV.
    Export {
        #[command(flatten)]
        dir: AuditDir,
        #[command(flatten)]
        filter: AuditFilter,
        #[arg(long, value_parser = ["jsonl", "csv"], default_value = "jsonl")]
        format: String,
    },
    /// An access report for a compliance officer: per identity, the tables it touched, rows,
    /// masked or not, denials and approvals.
    Report {
        #[command(flatten)]
        dir: AuditDir,
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// Sessions in the audit log, oldest first, with their recordings.
    List {
        #[command(flatten)]
        dir: AuditDir,
        #[arg(long)]
        subject: Option<String>,
        #[arg(long)]
        role: Option<String>,
        /// Sessions active from this time: RFC 3339, a date, or an age such as 24h.
        #[arg(long)]
        since: Option<String>,
        /// ... until this time (same forms).
        #[arg(long)]
        until: Option<String>,
        /// Sessions with a statement that touched this table (`name` or `schema.name`).
        #[arg(long)]
        table: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ReviewCommand {
    /// Ask to act as another role for a while (an access request: roles of
    /// approvals.elevation_roles); a reviewer approves it like a held statement, then you
    /// connect with that role until it runs out. Uses your own token.
    Request {
        #[arg(long)]
        role: String,
        #[arg(long)]
        minutes: u64,
        #[arg(long)]
        reason: String,
    },
    /// Pending reviews (all recent ones with --all).
    List {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// One review: who, what exactly, why, which rule.
    Show { id: String },
    /// Let the held statement run (once).
    Approve {
        id: String,
        #[arg(long)]
        reason: String,
        /// Emergency access: approve your own statement (roles in approvals.break_glass_roles;
        /// a justification of at least 20 characters). Audited and announced as break-glass.
        #[arg(long)]
        break_glass: bool,
    },
    /// Refuse it; the requester sees the reason.
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Sign a token for any subject with the gateway's key (development configs only).
    Mint {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        subject: String,
        /// A group the token carries (repeatable); bindings map groups to roles.
        #[arg(long = "group")]
        groups: Vec<String>,
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                Ok(())
            }
            Err(e) => Err(e.into()),
        },
        Command::Schema => {
            println!("{}", Config::json_schema());
            Ok(())
        }
        Command::Serve { config, log_format } => serve(config, log_format),
        Command::Demo {
            pg_port,
            http_port,
            data_dir,
            ready_file,
        } => {
            phigate::logging::init(LogFormat::Text, None);
            runtime().and_then(|rt| {
                rt.block_on(phigate::demo::run(phigate::demo::DemoOptions {
                    pg_port,
                    http_port,
                    data_dir,
                    ready_file,
                }))
            })
        }
        Command::Keys { command } => keys(command),
        Command::Audit { command } => audit(command),
        Command::Sessions { command } => sessions(command),
        Command::Replay {
            session,
            dir,
            recordings_dir,
            speed,
            step,
            json,
            key_file,
        } => replay(ReplayArgs {
            session,
            dir,
            recordings_dir,
            speed,
            step,
            json,
            key_file,
        }),
        Command::Review {
            url,
            token,
            command,
        } => runtime().and_then(|rt| rt.block_on(review(url, token, command))),
        Command::Discover { config, sample } => runtime().and_then(|rt| {
            rt.block_on(async {
                let c = Config::load(&config)?;
                let target = phigate::upstream::UpstreamTarget::from_config(&c.upstream)?;
                print!(
                    "{}",
                    phigate::masking::discover(&target, sample.clamp(1, 10_000)).await?
                );
                Ok(())
            })
        }),
        Command::Token {
            command:
                TokenCommand::Mint {
                    config,
                    subject,
                    groups,
                    ttl,
                },
        } => mint(&config, &subject, &groups, &ttl),
        Command::Login {
            url,
            issuer,
            device,
            no_browser,
            role,
            database,
            json,
        } => runtime().and_then(|rt| {
            rt.block_on(phigate::login::run(phigate::login::LoginOptions {
                url,
                issuer,
                device,
                open_browser: !no_browser,
                role,
                database,
                json,
            }))
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("phigate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    runtime_with(None)
}

fn runtime_with(worker_threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
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

fn serve(path: PathBuf, log_format: Option<String>) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let format = match log_format.as_deref() {
        Some("json") => LogFormat::Json,
        Some(_) => LogFormat::Text,
        None => config.log.format,
    };
    phigate::logging::init(format, config.log.level.as_deref());
    runtime_with(config.runtime.worker_threads)?.block_on(async {
        let running = phigate::server::start(&config).await?;
        phigate::server::spawn_reload_on_sighup(running.shared.clone(), path.clone());
        let stop = running.stop_token();
        tokio::spawn(async move {
            phigate::server::shutdown_signal().await;
            stop.cancel();
        });
        running.wait().await;
        Ok(())
    })
}

fn parse_ttl(text: &str) -> anyhow::Result<std::time::Duration> {
    humantime::parse_duration(text).map_err(|e| anyhow::anyhow!("--ttl {text}: {e}"))
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

fn keys(command: KeysCommand) -> anyhow::Result<()> {
    use phigate::auth::keys;
    let fmt_time = |t: u64| {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t))
            .to_string()
    };
    match command {
        KeysCommand::Create {
            name,
            roles,
            ttl,
            subject,
            json,
            dir,
        } => {
            let (dir, config) = dir.resolve()?;
            if let Some(config) = &config {
                let policy = config.policy()?;
                if let Some(r) = roles.iter().find(|r| policy.role(r).is_none()) {
                    anyhow::bail!("role {r} is not defined in the config");
                }
            }
            let (key, rec) =
                keys::create(&dir, &name, subject.as_deref(), &roles, parse_ttl(&ttl)?)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "key": key, "id": rec.id, "name": rec.name, "subject": rec.subject,
                        "roles": rec.roles, "expires_at": fmt_time(rec.expires_at),
                    })
                );
            } else {
                eprintln!(
                    "Created key {} ({}) for roles {}, expires {}. It is shown once; store it now:",
                    rec.id,
                    rec.name,
                    rec.roles.join(", "),
                    fmt_time(rec.expires_at)
                );
                println!("{key}");
            }
        }
        KeysCommand::List { json, dir } => {
            let (dir, _) = dir.resolve()?;
            let now = phigate::auth::jwt::unix_now();
            let list = keys::list(&dir)?;
            if json {
                let rows: Vec<_> = list
                    .iter()
                    .map(|(k, used)| {
                        serde_json::json!({
                            "id": k.id, "name": k.name, "subject": k.subject, "roles": k.roles,
                            "status": k.status(now),
                            "created_at": fmt_time(k.created_at),
                            "expires_at": fmt_time(k.expires_at),
                            "revoked_at": k.revoked_at.map(fmt_time),
                            "last_used_at": used.map(fmt_time),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<12}  {:<20}  {:<8}  {:<20}  {:<20}  {:<20}  ROLES",
                    "ID", "NAME", "STATUS", "CREATED", "EXPIRES", "LAST USED"
                );
                for (k, used) in &list {
                    println!(
                        "{:<12}  {:<20}  {:<8}  {:<20}  {:<20}  {:<20}  {}",
                        k.id,
                        k.name,
                        k.status(now),
                        fmt_time(k.created_at),
                        fmt_time(k.expires_at),
                        used.map(fmt_time).unwrap_or_else(|| "never".into()),
                        k.roles.join(",")
                    );
                }
            }
        }
        KeysCommand::Revoke { id_or_name, dir } => {
            let (dir, _) = dir.resolve()?;
            let k = keys::revoke(&dir, &id_or_name)?;
            println!(
                "Revoked key {} ({}); its sessions end at their next statement.",
                k.id, k.name
            );
        }
    }
    Ok(())
}

fn mint(
    config: &std::path::Path,
    subject: &str,
    groups: &[String],
    ttl: &str,
) -> anyhow::Result<()> {
    let c = Config::load(config)?;
    if !c.auth.development {
        anyhow::bail!(
            "{}: not a development config (auth.development is not set); tokens for real \
             identities come from the identity provider (phigate login) or API keys",
            config.display()
        );
    }
    let dir = c
        .data_dir
        .clone()
        .ok_or_else(|| anyhow::anyhow!("{}: no data_dir set", config.display()))?;
    let issuer = phigate::auth::gateway_issuer(&c, c.listen.http_address);
    let ttl = parse_ttl(ttl)?;
    if ttl > std::time::Duration::from_secs(7 * 24 * 3600) {
        anyhow::bail!("--ttl is at most 7d for development tokens");
    }
    let signer = phigate::auth::signer::Signer::load(&dir, &issuer)?;
    let (token, expires) = signer.mint(subject, groups, phigate::auth::DEVELOPMENT_ISSUER, ttl)?;
    eprintln!(
        "Development token for {subject}, expires {}:",
        humantime::format_rfc3339_seconds(expires)
    );
    println!("{token}");
    Ok(())
}

/// The log directory: `<data dir>/audit`, or the directory itself if it holds the log.
fn audit_dir(dir: &AuditDir) -> anyhow::Result<PathBuf> {
    let nested = dir.data_dir.join("audit");
    if nested.is_dir() {
        return Ok(nested);
    }
    if dir.data_dir.join(phigate_audit::store::PUBLIC_KEY).exists() {
        return Ok(dir.data_dir.clone());
    }
    anyhow::bail!(
        "no audit log in {} (nor in its audit/)",
        dir.data_dir.display()
    )
}

fn sessions(command: SessionsCommand) -> anyhow::Result<()> {
    use std::io::Write;
    let SessionsCommand::List {
        dir,
        subject,
        role,
        since,
        until,
        table,
        json,
    } = command;
    let filter = phigate::recording::replay::ListFilter {
        subject,
        role,
        since: time_bound(&since)?,
        until: time_bound(&until)?,
        table,
    };
    let rows = phigate::recording::replay::list(&audit_dir(&dir)?, &filter)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<18} {:<27} {:<28} {:<12} {:>5} {:>6}  {:<10} TABLES",
        "SESSION", "STARTED", "SUBJECT", "ROLE", "STMTS", "DENIED", "RECORDING"
    )?;
    use phigate::recording::replay::clean;
    for r in &rows {
        let rec = match &r.recording {
            Some(x) if x.encrypted => format!("{}B enc", x.bytes),
            Some(x) => format!("{}B", x.bytes),
            None if r.ended.is_none() => "open".into(),
            None => "-".into(),
        };
        writeln!(
            out,
            "{:<18} {:<27} {:<28} {:<12} {:>5} {:>6}  {:<10} {}",
            clean(&r.session),
            clean(&r.started),
            clean(&r.subject),
            clean(&r.role),
            r.statements,
            r.denied,
            rec,
            clean(&r.tables.iter().cloned().collect::<Vec<_>>().join(","))
        )?;
    }
    Ok(())
}

struct ReplayArgs {
    session: String,
    dir: AuditDir,
    recordings_dir: Option<PathBuf>,
    speed: f64,
    step: bool,
    json: bool,
    key_file: Option<PathBuf>,
}

fn replay(a: ReplayArgs) -> anyhow::Result<()> {
    use phigate::recording::{file::Key, replay};
    use std::io::{BufRead, Write};
    let key = match (&a.key_file, std::env::var("PHIGATE_RECORDING_KEY")) {
        (Some(f), _) => Some(Key::from_file(f).map_err(anyhow::Error::msg)?),
        (None, Ok(_)) => Some(Key::from_env("PHIGATE_RECORDING_KEY").map_err(anyhow::Error::msg)?),
        (None, Err(_)) => None,
    };
    let recordings = a
        .recordings_dir
        .clone()
        .unwrap_or_else(|| a.dir.data_dir.join("recordings"));
    let r = replay::load(&audit_dir(&a.dir)?, &recordings, &a.session, key.as_ref())?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?;
        return Ok(());
    }
    if !(a.speed >= 0.0 && a.speed.is_finite()) {
        anyhow::bail!("--speed must be 0 or more");
    }
    replay::render_header(&r, &mut out)?;
    let stdin = std::io::stdin();
    let mut last = 0.0;
    for step in &r.steps {
        if a.step {
            write!(out, "-- Enter for the next step --")?;
            out.flush()?;
            let mut line = String::new();
            if stdin.lock().read_line(&mut line)? == 0 {
                break;
            }
        } else if a.speed > 0.0 {
            let wait = ((step.t_ms - last) / 1000.0 / a.speed).clamp(0.0, 3600.0);
            out.flush()?;
            std::thread::sleep(std::time::Duration::from_secs_f64(wait));
        }
        last = step.t_ms;
        replay::render_step(step, &mut out)?;
    }
    Ok(())
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

impl AuditFilter {
    fn build(&self) -> anyhow::Result<phigate_audit::query::Filter> {
        Ok(phigate_audit::query::Filter {
            subject: self.subject.clone(),
            role: self.role.clone(),
            table: self.table.clone(),
            column: self.column.clone(),
            since: time_bound(&self.since)?,
            until: time_bound(&self.until)?,
            decision: self.decision.clone(),
            session: self.session.clone(),
            kind: self.kind.clone(),
        })
    }
}

fn audit(command: AuditCommand) -> anyhow::Result<()> {
    use phigate_audit::query;
    use std::io::Write;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match command {
        AuditCommand::Verify {
            dir,
            public_key,
            mirror,
            recordings_dir,
            json,
        } => {
            let recordings = recordings_dir.or_else(|| {
                let d = dir.data_dir.join("recordings");
                d.is_dir().then_some(d)
            });
            let dir = audit_dir(&dir)?;
            let key_path = public_key.unwrap_or_else(|| dir.join(phigate_audit::store::PUBLIC_KEY));
            let key = phigate_audit::PublicKey::load(&key_path)?;
            for m in &mirror {
                let copy =
                    phigate_audit::PublicKey::load(&m.join(phigate_audit::store::PUBLIC_KEY))?;
                if copy != key {
                    anyhow::bail!("{}: the mirror names another signing key", m.display());
                }
            }
            match phigate_audit::verify::verify(&dir, &key, &mirror, recordings.as_deref()) {
                Ok(report) => {
                    if json {
                        writeln!(out, "{}", serde_json::json!({"ok": true, "report": report}))?;
                    } else {
                        writeln!(
                            out,
                            "ok: {} records (seq {}..{}) in {} segment(s); {} checkpoint(s) signed by key {}; last checkpoint at {}, {} record(s) after it",
                            report.records,
                            report.first_seq,
                            report.last_seq,
                            report.segments,
                            report.checkpoints,
                            report.key_id,
                            report.last_checkpoint_seq,
                            report.unsigned_tail
                        )?;
                        if recordings.is_some() {
                            writeln!(
                                out,
                                "ok: {} session recording(s) match their digests",
                                report.recordings
                            )?;
                        }
                        for w in &report.warnings {
                            writeln!(out, "warning: {w}")?;
                        }
                    }
                }
                Err(f) => {
                    if json {
                        writeln!(out, "{}", serde_json::json!({"ok": false, "failure": f}))?;
                        out.flush()?;
                    }
                    let place = match (&f.file, f.line) {
                        (Some(file), Some(line)) => format!(" ({file}, line {line})"),
                        (Some(file), None) => format!(" ({file})"),
                        _ => String::new(),
                    };
                    anyhow::bail!("audit log NOT intact: {}{place}", f.what);
                }
            }
        }
        AuditCommand::Search { dir, filter, limit } => {
            let dir = audit_dir(&dir)?;
            for r in query::search(&dir, &filter.build()?, limit)? {
                writeln!(out, "{}", serde_json::to_string(&r)?)?;
            }
        }
        AuditCommand::Export {
            dir,
            filter,
            format,
        } => {
            let dir = audit_dir(&dir)?;
            let filter = filter.build()?;
            if format == "csv" {
                writeln!(out, "{}", query::CSV_HEADER)?;
            }
            let mut failed = None;
            phigate_audit::verify::read_records(&dir, |r| {
                if filter.matches(&r) {
                    let line = if format == "csv" {
                        Ok(query::csv_row(&r))
                    } else {
                        serde_json::to_string(&r)
                    };
                    let written = line
                        .map_err(std::io::Error::other)
                        .and_then(|l| writeln!(out, "{l}"));
                    if let Err(e) = written {
                        failed = Some(e);
                        return false;
                    }
                }
                true
            })?;
            if let Some(e) = failed {
                return Err(e.into());
            }
        }
        AuditCommand::Report {
            dir,
            since,
            until,
            json,
        } => {
            let dir = audit_dir(&dir)?;
            let report = query::report(
                &dir,
                time_bound(&since)?.as_deref(),
                time_bound(&until)?.as_deref(),
            )?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                write_report(&mut out, &report)?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

fn write_report(
    out: &mut impl std::io::Write,
    r: &phigate_audit::query::AccessReport,
) -> std::io::Result<()> {
    writeln!(
        out,
        "Access report, {} to {}",
        r.since.as_deref().unwrap_or("the beginning"),
        r.until.as_deref().unwrap_or("now")
    )?;
    for id in &r.identities {
        writeln!(out)?;
        writeln!(
            out,
            "{}  roles: {}  sessions: {}  statements: {}  denied: {}  held for approval: {}  approved: {}  failed logins: {}",
            id.subject,
            id.roles.iter().cloned().collect::<Vec<_>>().join(","),
            id.sessions,
            id.statements,
            id.denied,
            id.approvals_required,
            id.approved,
            id.failed_logins
        )?;
        for (table, t) in &id.tables {
            let masked = if t.masked {
                format!(
                    "masked ({})",
                    t.masked_columns
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else {
                "NOT masked".to_owned()
            };
            writeln!(
                out,
                "  {table:<32} {:>6} statements {:>10} rows  {}  {}",
                t.statements,
                t.rows,
                t.actions.iter().cloned().collect::<Vec<_>>().join("/"),
                masked
            )?;
        }
        for d in &id.denials {
            writeln!(
                out,
                "  refused #{} {} by rule {}: {}",
                d.seq,
                d.ts,
                d.rule.as_deref().unwrap_or("?"),
                d.text
            )?;
        }
    }
    Ok(())
}

async fn review(
    url: Option<String>,
    token: Option<String>,
    command: ReviewCommand,
) -> anyhow::Result<()> {
    let url = url.ok_or_else(|| anyhow::anyhow!("give --url (or PHIGATE_URL)"))?;
    let token = token.ok_or_else(|| anyhow::anyhow!("give --token (or PHIGATE_TOKEN)"))?;
    let base = url.trim_end_matches('/');
    let lower = base.to_ascii_lowercase();
    if !lower.starts_with("https://") && !phigate::auth::is_loopback_url(&lower) {
        anyhow::bail!("--url must be https:// (plain http only to a gateway on this machine)");
    }
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(15))
        .build()?;
    let (method, path, body) = match &command {
        ReviewCommand::List { all, .. } => (
            reqwest::Method::GET,
            format!("/v1/reviews{}", if *all { "?all=true" } else { "" }),
            None,
        ),
        ReviewCommand::Show { id } => (reqwest::Method::GET, format!("/v1/reviews/{id}"), None),
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
    let show = |r: &serde_json::Value| {
        let s = |k: &str| r.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
        format!(
            "{}  {}  {} as {}  rule {}  {}\n  {}{}",
            s("id"),
            s("status"),
            s("requester"),
            s("role"),
            s("rule"),
            s("created_at"),
            s("statement"),
            r.get("justification")
                .and_then(|j| j.as_str())
                .map(|j| format!("\n  justification: {j}"))
                .unwrap_or_default()
        )
    };
    match command {
        ReviewCommand::List { json: true, .. } => {
            println!("{}", serde_json::to_string_pretty(&v["reviews"])?)
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
        ReviewCommand::Show { .. } => println!("{}", serde_json::to_string_pretty(&v)?),
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
                    v["id"].as_str().unwrap_or("?"),
                    v["status"].as_str().unwrap_or("?"),
                    v["decided_by"].as_str().unwrap_or("?"),
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
