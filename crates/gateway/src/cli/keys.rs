//! `phigate keys`: API keys for machine identities (AI agents, CI jobs).

use clap::Subcommand;

use super::{parse_ttl, StateDir};

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a key; it is printed once and only its hash is stored.
    Create {
        /// A name for the key (unique; `keys revoke` takes it).
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
        /// Print the key and its record as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dir: StateDir,
    },
    /// List keys with their status and last use.
    List {
        /// Print the keys as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dir: StateDir,
    },
    /// Revoke a key by id or name: no new sessions; its open sessions end.
    Revoke {
        /// The key's id or name.
        id_or_name: String,
        #[command(flatten)]
        dir: StateDir,
    },
}

pub fn run(command: KeysCommand) -> anyhow::Result<()> {
    use crate::auth::keys;
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
            let ttl = parse_ttl(&ttl)?;
            let (key, rec) = match super::cluster_of(config.as_ref()) {
                Some(cluster) => {
                    let (key, rec) = keys::new_key(&name, subject.as_deref(), &roles, ttl)?;
                    super::on_control(cluster, |mut c| async move {
                        crate::auth::shared::create_key(&mut c, &rec).await?;
                        Ok((key, rec))
                    })?
                }
                None => {
                    crate::auth::shared::refuse_copy(&dir)?;
                    keys::create(&dir, &name, subject.as_deref(), &roles, ttl)?
                }
            };
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
            let (dir, config) = dir.resolve()?;
            let now = crate::auth::jwt::unix_now();
            let list = match super::cluster_of(config.as_ref()) {
                // The cluster's keys, with their last use on this node.
                Some(cluster) => {
                    let here: std::collections::HashMap<String, Option<u64>> = keys::list(&dir)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, used)| (k.id, used))
                        .collect();
                    super::on_control(cluster, |c| async move {
                        crate::auth::shared::list_keys(&c).await
                    })?
                    .into_iter()
                    .map(|k| {
                        let used = here.get(&k.id).copied().flatten();
                        (k, used)
                    })
                    .collect()
                }
                None => keys::list(&dir)?,
            };
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
            let (dir, config) = dir.resolve()?;
            let k = match super::cluster_of(config.as_ref()) {
                Some(cluster) => super::on_control(cluster, |c| async move {
                    let now = crate::auth::jwt::unix_now();
                    crate::auth::shared::revoke_key(&c, &id_or_name, now).await
                })?,
                None => {
                    crate::auth::shared::refuse_copy(&dir)?;
                    keys::revoke(&dir, &id_or_name)?
                }
            };
            println!(
                "Revoked key {} ({}); its sessions end within a second.",
                k.id, k.name
            );
        }
    }
    Ok(())
}
