//! `phigate token mint`: development tokens (refused unless the config sets auth.development).
//! `phigate token revoke`: every token of one individual issued until now is refused, and the
//! sessions they opened end.

use std::path::PathBuf;

use clap::Subcommand;

use super::{parse_ttl, StateDir};
use crate::config::Config;

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Sign a token for any subject with the gateway's key (development configs only).
    Mint {
        /// The gateway's config file (auth.development must be on).
        #[arg(long, short, env = "PHIGATE_CONFIG")]
        config: PathBuf,
        /// The individual the token names.
        #[arg(long)]
        subject: String,
        /// A group the token carries (repeatable); bindings map groups to roles.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Lifetime, e.g. 1h, 30m.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Revoke every gateway session token (and IdP token) of one individual issued until now:
    /// they open no new session, and the sessions they opened end within a second. A new
    /// `phigate login` afterwards works.
    Revoke {
        /// The issuer that vouched for the subject: an [[auth.oidc]] name, or `development`.
        #[arg(long)]
        issuer: String,
        /// The individual whose tokens are revoked.
        #[arg(long)]
        subject: String,
        #[command(flatten)]
        dir: StateDir,
    },
}

pub fn run(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Mint {
            config,
            subject,
            groups,
            ttl,
        } => mint(&config, &subject, &groups, &ttl),
        TokenCommand::Revoke {
            issuer,
            subject,
            dir,
        } => revoke(&issuer, &subject, &dir),
    }
}

fn revoke(issuer: &str, subject: &str, dir: &StateDir) -> anyhow::Result<()> {
    let (dir, config) = dir.resolve()?;
    if let Some(c) = &config {
        let known = issuer == crate::auth::DEVELOPMENT_ISSUER
            || c.auth.oidc.iter().any(|o| o.name == issuer);
        if !known {
            anyhow::bail!(
                "--issuer {issuer} is not an [[auth.oidc]] name of this config (nor `development`)"
            );
        }
    }
    let r = match super::cluster_of(config.as_ref()) {
        Some(cluster) => {
            let r = crate::auth::revocations::new_revocation(issuer, subject)?;
            super::on_control(cluster, |c| async move {
                crate::auth::shared::upsert_revocation(&c, &r).await?;
                Ok(r)
            })?
        }
        None => {
            crate::auth::shared::refuse_copy(&dir)?;
            crate::auth::revocations::revoke(&dir, issuer, subject)?
        }
    };
    println!(
        "Revoked the tokens of {} at issuer {} issued before {}; their sessions end within a second.",
        r.subject,
        r.issuer,
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(r.revoked_at)
        )
    );
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
