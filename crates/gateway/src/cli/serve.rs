//! `phigate serve`, `phigate check` and `phigate schema`: run the gateway from a config file, or
//! only load and validate it.

use std::path::PathBuf;

use crate::config::{Config, LogFormat};

#[derive(clap::Args)]
pub struct ServeArgs {
    /// The config file.
    #[arg(long, short, env = "PHIGATE_CONFIG")]
    config: PathBuf,
    /// Override the configured log format.
    #[arg(long, value_parser = ["text", "json"])]
    log_format: Option<String>,
}

pub use super::check::{check, CheckArgs};

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let ServeArgs {
        config: path,
        log_format,
    } = args;
    crate::demo::nodes::exit_with_demo()?;
    let (config, warnings) = Config::load_with_warnings(&path)?;
    let format = match log_format.as_deref() {
        Some("json") => LogFormat::Json,
        Some(_) => LogFormat::Text,
        None => config.log.format,
    };
    crate::logging::init(format, config.log.level.as_deref());
    for w in &warnings {
        tracing::warn!("{w}");
    }
    super::runtime_with(config.runtime.worker_threads)?.block_on(async {
        let mut signals = crate::server::Signals::install();
        let running = crate::server::start(&config).await?;
        crate::server::spawn_reload_on_sighup(running.shared.clone(), path.clone(), &mut signals);
        let stop = running.stop_token();
        tokio::spawn(async move {
            signals.shutdown().await;
            stop.cancel();
        });
        running.wait().await;
        Ok(())
    })
}

pub fn schema() -> anyhow::Result<()> {
    println!("{}", Config::json_schema());
    Ok(())
}
