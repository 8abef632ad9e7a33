//! API keys and token revocations of a cluster (docs/cluster.md): kept in the control
//! database, which the CLI writes (`phigate keys ... --config`, `phigate token revoke
//! --config`) and every node copies into the files of its data directory.
//!
//! A node's copy is what it authenticates with, so a node works on through an outage of the
//! control database with the keys it last saw. Each node copies again on every notification
//! (`phigate_credentials`, sent at commit by any change) and every second; a copy that changed
//! a file is reloaded at once, so a revocation on any node ends the matching sessions on
//! every node within about a second (two at most, when a notification is lost).
//!
//! When a node joins, the keys and revocations already in its data directory (from its days
//! as a single node) are added to the control database first: joining loses none of them.

use std::path::Path;

use tokio_postgres::Client;

use super::keys::{self, ApiKey};
use super::revocations::{self, Revocation};
use crate::control::describe;

/// Marks a data directory whose keys and revocations are copies of a cluster's: the CLI
/// refuses to change them there (`--config` reaches the control database instead).
pub const MARKER: &str = "cluster-node";

fn db(e: tokio_postgres::Error) -> anyhow::Error {
    anyhow::anyhow!("the control database: {}", describe(&e))
}

/// Refuses a data directory that belongs to a cluster node (its files are copies).
pub fn refuse_copy(dir: &Path) -> anyhow::Result<()> {
    if dir.join(MARKER).exists() {
        anyhow::bail!(
            "{} belongs to a cluster node: its API keys and token revocations are copies of the \
             control database's; give --config with the cluster's configuration instead",
            dir.display()
        );
    }
    Ok(())
}

/// Adds the data directory's keys and revocations to the control database (none replaced;
/// a later revocation time wins), and marks the directory as a cluster node's.
pub async fn join(client: &Client, dir: &Path) -> anyhow::Result<()> {
    for k in keys::all(dir)? {
        client
            .execute(
                "INSERT INTO phigate.api_keys (id, name, subject, roles, created_at, expires_at,
                     revoked_at, secret_sha256)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (id) DO UPDATE SET revoked_at =
                     coalesce(phigate.api_keys.revoked_at, EXCLUDED.revoked_at)",
                &[
                    &k.id,
                    &k.name,
                    &k.subject,
                    &k.roles,
                    &(k.created_at as i64),
                    &(k.expires_at as i64),
                    &k.revoked_at.map(|t| t as i64),
                    &k.secret_sha256,
                ],
            )
            .await
            .map_err(db)?;
    }
    for r in revocations::all(dir)? {
        upsert_revocation(client, &r).await?;
    }
    crate::fsutil::private_dir_all(dir)?;
    crate::fsutil::write_private_atomic(
        &dir.join(MARKER),
        b"This node's API keys and token revocations are copies of its cluster's control database.\n",
    )?;
    Ok(())
}

/// Copies the control database's keys and revocations into `dir`; true if a file changed.
pub async fn copy(client: &Client, dir: &Path) -> anyhow::Result<bool> {
    let keys = list_keys(client).await?;
    let rows = client
        .query(
            "SELECT issuer, subject, revoked_at FROM phigate.token_revocations",
            &[],
        )
        .await
        .map_err(db)?;
    let revoked = rows
        .iter()
        .map(|r| Revocation {
            issuer: r.get(0),
            subject: r.get(1),
            revoked_at: r.get::<_, i64>(2) as u64,
        })
        .collect();
    let k = keys::replace_all(dir, keys)?;
    let r = revocations::replace_all(dir, revoked)?;
    Ok(k || r)
}

/// Every key of the cluster.
pub async fn list_keys(client: &Client) -> anyhow::Result<Vec<ApiKey>> {
    let rows = client
        .query(
            "SELECT id, name, subject, roles, created_at, expires_at, revoked_at, secret_sha256
             FROM phigate.api_keys ORDER BY created_at, id",
            &[],
        )
        .await
        .map_err(db)?;
    Ok(rows
        .iter()
        .map(|r| ApiKey {
            id: r.get(0),
            name: r.get(1),
            subject: r.get(2),
            roles: r.get(3),
            created_at: r.get::<_, i64>(4) as u64,
            expires_at: r.get::<_, i64>(5) as u64,
            revoked_at: r.get::<_, Option<i64>>(6).map(|t| t as u64),
            secret_sha256: r.get(7),
        })
        .collect())
}

/// Creates a key in the control database (one active key per name across the cluster).
pub async fn create_key(client: &mut Client, record: &ApiKey) -> anyhow::Result<()> {
    let tx = client.transaction().await.map_err(db)?;
    tx.batch_execute("LOCK TABLE phigate.api_keys IN SHARE ROW EXCLUSIVE MODE")
        .await
        .map_err(db)?;
    let active = tx
        .query(
            "SELECT 1 FROM phigate.api_keys
             WHERE name = $1 AND revoked_at IS NULL AND expires_at > $2",
            &[&record.name, &(record.created_at as i64)],
        )
        .await
        .map_err(db)?;
    if !active.is_empty() {
        anyhow::bail!(
            "an active key named {} exists; revoke it first or pick another name",
            record.name
        );
    }
    tx.execute(
        "INSERT INTO phigate.api_keys (id, name, subject, roles, created_at, expires_at,
             revoked_at, secret_sha256)
         VALUES ($1, $2, $3, $4, $5, $6, NULL, $7)",
        &[
            &record.id,
            &record.name,
            &record.subject,
            &record.roles,
            &(record.created_at as i64),
            &(record.expires_at as i64),
            &record.secret_sha256,
        ],
    )
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok(())
}

/// Revokes the key with this id or (unrevoked) name, on every node.
pub async fn revoke_key(client: &Client, id_or_name: &str, now: u64) -> anyhow::Result<ApiKey> {
    let matching = list_keys(client)
        .await?
        .into_iter()
        .filter(|k| k.id == id_or_name || (k.name == id_or_name && k.revoked_at.is_none()))
        .collect::<Vec<_>>();
    let mut key = match matching.as_slice() {
        [] => anyhow::bail!("no key with id or name {id_or_name} (or it is already revoked)"),
        [k] => k.clone(),
        _ => anyhow::bail!("{id_or_name} names several keys; revoke by id"),
    };
    client
        .execute(
            "UPDATE phigate.api_keys SET revoked_at = coalesce(revoked_at, $2) WHERE id = $1",
            &[&key.id, &(now as i64)],
        )
        .await
        .map_err(db)?;
    key.revoked_at.get_or_insert(now);
    Ok(key)
}

/// Stores a token revocation (the later time wins).
pub async fn upsert_revocation(client: &Client, r: &Revocation) -> anyhow::Result<()> {
    client
        .execute(
            "INSERT INTO phigate.token_revocations (issuer, subject, revoked_at)
             VALUES ($1, $2, $3)
             ON CONFLICT (issuer, subject) DO UPDATE SET revoked_at =
                 greatest(phigate.token_revocations.revoked_at, EXCLUDED.revoked_at)",
            &[&r.issuer, &r.subject, &(r.revoked_at as i64)],
        )
        .await
        .map_err(db)?;
    Ok(())
}
