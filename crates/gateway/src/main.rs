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
