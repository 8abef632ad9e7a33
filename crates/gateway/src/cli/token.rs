//! `phigate token mint`: development tokens (refused unless the config sets auth.development).

use std::path::PathBuf;

use clap::Subcommand;

use super::parse_ttl;
use crate::config::Config;

#[derive(Subcommand)]
pub enum TokenCommand {
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

pub fn run(command: TokenCommand) -> anyhow::Result<()> {
    let TokenCommand::Mint {
        config,
        subject,
        groups,
        ttl,
    } = command;
    mint(&config, &subject, &groups, &ttl)
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
    let issuer = crate::auth::gateway_issuer(&c, c.listen.http_address);
    let ttl = parse_ttl(ttl)?;
    if ttl > std::time::Duration::from_secs(7 * 24 * 3600) {
        anyhow::bail!("--ttl is at most 7d for development tokens");
    }
    let signer = crate::auth::signer::Signer::load(&dir, &issuer)?;
    let (token, expires) = signer.mint(subject, groups, crate::auth::DEVELOPMENT_ISSUER, ttl)?;
    eprintln!(
        "Development token for {subject}, expires {}:",
        humantime::format_rfc3339_seconds(expires)
    );
    println!("{token}");
    Ok(())
}
