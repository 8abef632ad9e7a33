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
//! Both sides only grow, and each copy goes both ways ([`copy`]): when a node joins, the keys
//! and revocations already in its data directory (from its days as a single node) are added
//! to the control database, and a control database restored from an older backup gets back
//! the revocations it lost from the nodes' copies.

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

/// Adds the data directory's keys and revocations to the control database and marks the
/// directory as a cluster node's.
pub async fn join(client: &Client, dir: &Path) -> anyhow::Result<()> {
    copy(client, dir).await?;
    crate::fsutil::private_dir_all(dir)?;
    crate::fsutil::write_private_atomic(
        &dir.join(MARKER),
        b"This node's API keys and token revocations are copies of its cluster's control database.\n",
    )?;
    Ok(())
}

/// Brings the data directory's copy and the control database to the same keys and
/// revocations; true if the copy changed.
///
/// Both only grow: a key is never removed, a revocation never undone. What one side lacks it
/// gets from the other, and of two revocation times of a key the earlier holds, of an
/// individual's tokens the later. So a control database restored from an older backup cannot
/// bring a revoked key back to life: the nodes give it their revocations again.
pub async fn copy(client: &Client, dir: &Path) -> anyhow::Result<bool> {
    let shared = list_keys(client).await?;
    let local = keys::all(dir)?;
    let (merged, push) = merge_keys(&local, &shared);
    for k in &push {
        upsert_key(client, k).await?;
    }
    let shared_revoked = list_revocations(client).await?;
    let local_revoked = revocations::all(dir)?;
    let (revoked, push) = merge_revocations(&local_revoked, &shared_revoked);
    for r in &push {
        upsert_revocation(client, r).await?;
    }
    let k = keys::replace_all(dir, merged)?;
    let r = revocations::replace_all(dir, revoked)?;
    Ok(k || r)
}

/// The union of two key lists (the earlier revocation of a key holds), and the records the
/// control database lacks or holds unrevoked.
fn merge_keys(local: &[ApiKey], shared: &[ApiKey]) -> (Vec<ApiKey>, Vec<ApiKey>) {
    let mut merged: std::collections::BTreeMap<&str, ApiKey> =
        shared.iter().map(|k| (k.id.as_str(), k.clone())).collect();
    let mut push = Vec::new();
    for k in local {
        match merged.get_mut(k.id.as_str()) {
            None => {
                merged.insert(&k.id, k.clone());
                push.push(k.clone());
            }
            Some(m) => {
                let earliest = match (m.revoked_at, k.revoked_at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                if earliest != m.revoked_at {
                    m.revoked_at = earliest;
                    push.push(m.clone());
                }
            }
        }
    }
    (merged.into_values().collect(), push)
}

/// The union of two revocation lists (the later time of an individual holds), and the
/// records the control database lacks or holds earlier.
fn merge_revocations(
    local: &[Revocation],
    shared: &[Revocation],
) -> (Vec<Revocation>, Vec<Revocation>) {
    let mut merged: std::collections::BTreeMap<(&str, &str), Revocation> = shared
        .iter()
        .map(|r| ((r.issuer.as_str(), r.subject.as_str()), r.clone()))
        .collect();
    let mut push = Vec::new();
    for r in local {
        let key = (r.issuer.as_str(), r.subject.as_str());
        match merged.get_mut(&key) {
            Some(m) if m.revoked_at >= r.revoked_at => {}
            Some(m) => {
                m.revoked_at = r.revoked_at;
                push.push(r.clone());
            }
            None => {
                merged.insert(key, r.clone());
                push.push(r.clone());
            }
        }
    }
    (merged.into_values().collect(), push)
}

async fn upsert_key(client: &Client, k: &ApiKey) -> anyhow::Result<()> {
    client
        .execute(
            "INSERT INTO phigate.api_keys (id, name, subject, roles, created_at, expires_at,
                 revoked_at, secret_sha256)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (id) DO UPDATE SET revoked_at = CASE
                 WHEN phigate.api_keys.revoked_at IS NULL THEN EXCLUDED.revoked_at
                 WHEN EXCLUDED.revoked_at IS NULL THEN phigate.api_keys.revoked_at
                 ELSE least(phigate.api_keys.revoked_at, EXCLUDED.revoked_at) END",
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
    Ok(())
}

async fn list_revocations(client: &Client) -> anyhow::Result<Vec<Revocation>> {
    let rows = client
        .query(
            "SELECT issuer, subject, revoked_at FROM phigate.token_revocations",
            &[],
        )
        .await
        .map_err(db)?;
    Ok(rows
        .iter()
        .map(|r| Revocation {
            issuer: r.get(0),
            subject: r.get(1),
            revoked_at: r.get::<_, i64>(2) as u64,
        })
        .collect())
}

/// Adds this node's new failed logins to the cluster's counts and reads every node's back.
pub async fn share_failures(
    client: &Client,
    limiter: &super::limiter::FailedLogins,
) -> anyhow::Result<()> {
    let window = limiter.window().as_secs_f64();
    // One statement for every source counted since the last time: a flood of failures from
    // many addresses costs one round trip, and counts that could not be written are put back
    // for the next time, never dropped.
    let counts = limiter.take_unpublished();
    let (sources, failures): (Vec<std::net::IpAddr>, Vec<i32>) = counts
        .iter()
        .map(|(ip, n)| (*ip, (*n).min(i32::MAX as u32) as i32))
        .unzip();
    if !sources.is_empty() {
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
            [&sources, &failures, &window];
        let insert = client.execute(
            "INSERT INTO phigate.failed_logins AS f (source, failures, window_start)
                 SELECT s, n, now() FROM unnest($1::inet[], $2::int4[]) AS u(s, n)
                 ON CONFLICT (source) DO UPDATE SET
                     failures = CASE WHEN f.window_start < now() - $3 * interval '1 second'
                         THEN EXCLUDED.failures ELSE f.failures + EXCLUDED.failures END,
                     window_start = CASE WHEN f.window_start < now() - $3 * interval '1 second'
                         THEN now() ELSE f.window_start END",
            &params,
        );
        match tokio::time::timeout(crate::control::OPERATION_TIMEOUT, insert).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                limiter.put_back(counts);
                return Err(db(e));
            }
            Err(_) => {
                limiter.put_back(counts);
                anyhow::bail!("the control database did not take the failed-login counts in time");
            }
        }
    }
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&window];
    let read = client.query(
        "SELECT source, failures, extract(epoch FROM now() - window_start)::float8
         FROM phigate.failed_logins
         WHERE window_start >= now() - $1 * interval '1 second'
         ORDER BY failures DESC LIMIT 10000",
        &params,
    );
    let rows = tokio::time::timeout(crate::control::OPERATION_TIMEOUT, read)
        .await
        .map_err(|_| anyhow::anyhow!("the control database did not answer in time"))?
        .map_err(db)?;
    limiter.set_cluster_counts(
        rows.iter()
            .map(|r| {
                let age: f64 = r.get(2);
                (
                    r.get(0),
                    r.get::<_, i32>(1).max(0) as u32,
                    std::time::Duration::from_secs_f64(age.max(0.0)),
                )
            })
            .collect(),
    );
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, revoked_at: Option<u64>) -> ApiKey {
        ApiKey {
            id: id.into(),
            name: format!("n-{id}"),
            subject: "s".into(),
            roles: vec!["r".into()],
            created_at: 1,
            expires_at: 100,
            revoked_at,
            secret_sha256: "h".into(),
        }
    }

    fn revocation(subject: &str, at: u64) -> Revocation {
        Revocation {
            issuer: "corp".into(),
            subject: subject.into(),
            revoked_at: at,
        }
    }

    #[test]
    fn copies_only_grow_and_a_revocation_is_never_undone() {
        // The control database lost a revocation (restored from a backup) and a key; it has
        // a key the node has not seen yet.
        let local = [key("a", Some(50)), key("b", None), key("c", Some(70))];
        let shared = [key("a", None), key("c", Some(60)), key("d", None)];
        let (merged, push) = merge_keys(&local, &shared);
        let by_id = |id: &str| merged.iter().find(|k| k.id == id).cloned();
        assert_eq!(by_id("a").and_then(|k| k.revoked_at), Some(50));
        assert_eq!(by_id("c").and_then(|k| k.revoked_at), Some(60));
        assert!(by_id("b").is_some() && by_id("d").is_some());
        let pushed: Vec<_> = push.iter().map(|k| (k.id.as_str(), k.revoked_at)).collect();
        assert_eq!(pushed, [("a", Some(50)), ("b", None)]);

        let (merged, push) = merge_revocations(
            &[revocation("ann", 10), revocation("bob", 30)],
            &[revocation("bob", 20), revocation("cy", 5)],
        );
        let at = |s: &str| merged.iter().find(|r| r.subject == s).map(|r| r.revoked_at);
        assert_eq!(
            (at("ann"), at("bob"), at("cy")),
            (Some(10), Some(30), Some(5))
        );
        assert_eq!(push.len(), 2);
    }
}
