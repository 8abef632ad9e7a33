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
