//! Provisioning against the database: read the catalog, run the plan in one transaction, and
//! prove afterwards that no masked login can read a relation that shows PHI rows.

use std::collections::{HashMap, HashSet};

use phigate_policy::masking::PhiTableConfig;
use sha2::Digest;

use super::plan::{self, Catalog, Columns};
use super::verify;
use super::{
    add_mark, earlier_marks, existing_token_key, key_copy_data, login_name, login_password,
    owner_mark, remember_mark, token_key, MaskedLogin,
};
use crate::config::Config;
use crate::upstream::{Step, UpstreamTarget};

/// Reads the columns of the PHI tables: `schema.table` → columns in order.
async fn columns(target: &UpstreamTarget, tables: &[(String, String)]) -> anyhow::Result<Columns> {
    let mut out: Columns = HashMap::new();
    for row in target.query_column(&plan::columns_query(tables)).await? {
        let Some((table, column)) = plan::parse_column(&row) else {
            continue;
        };
        out.entry(table).or_default().push(column);
    }
    Ok(out)
}

/// Provisions the masking views and logins of every masked role. Returns role → login.
///
/// `applied` holds the digest of the last plan this process put in force: a plan that has not
/// changed (same roles, tags, catalog and key) is not run again — re-creating the views would
/// wait for every session that holds a lock on them (an agent idle in a transaction), and a
/// reload that only removes an identity must not wait for that. The leak proof runs every time.
pub async fn provision(
    config: &Config,
    target: &UpstreamTarget,
    applied: &std::sync::Mutex<Option<[u8; 32]>>,
) -> anyhow::Result<HashMap<String, MaskedLogin>> {
    let masked: Vec<&phigate_policy::RoleConfig> =
        config.roles.iter().filter(|r| r.masked).collect();
    if masked.is_empty() {
        // No masked role left: the logins provisioned earlier under this key go. Nothing
        // depends on it, so a database that cannot be reached now does not stop the start.
        if let Some(key) = existing_token_key(config) {
            let mark = owner_mark(&key);
            let sql = format!("{}{}", plan::LOCK, verify::prune_sql(&mark, &[]));
            if let Err(e) = run_pruning(target, &mark, &[], &sql, &[]).await {
                tracing::warn!(error = %e, "masking: cannot remove the logins of roles no longer masked");
            }
        }
        return Ok(HashMap::new());
    }
    let key = token_key(config)?;
    let mark = owner_mark(&key);
    let tables: Vec<(String, String)> = config.phi.iter().map(PhiTableConfig::qualified).collect();
    let cols = columns(target, &tables).await?;
    plan::check_tags(&tables, &config.phi, &cols)?;
    // Every non-PHI table of the schemas the roles may read: granted directly.
    let all_tables = target.query_column(plan::ALL_TABLES).await?;
    let exposing: HashSet<String> = target
        .query_column(&plan::exposing_query(&tables))
        .await?
        .into_iter()
        .collect();
    let sequences = verify::sequences(&target.query_column(verify::SEQUENCES).await?);
    let catalog = Catalog {
        tables: &tables,
        phi: &config.phi,
        columns: &cols,
        all_tables: &all_tables,
        exposing: &exposing,
        sequences: &sequences,
    };
    let mut sql = String::from(plan::LOCK);
    let mut logins = HashMap::new();
    // What the plan does, without the verifiers (their salts are random every time).
    let mut digest = sha2::Sha256::new();
    for role in masked {
        let user = login_name(&role.name, &key);
        let password = login_password(&role.name, &key);
        // A SCRAM verifier, never the password: the statement may land in the server log.
        let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
        let p = plan::role_plan(role, &user, &verifier, &catalog, config.approvals.enabled);
        sql.push_str(&p.sql);
        let stable = plan::role_plan(role, &user, "", &catalog, config.approvals.enabled);
        digest.update(stable.sql.as_bytes());
        // The database refuses this login's sessions beyond the role's cap too: a second line
        // behind the gateway's own count (and the only one against anyone else using it).
        let cap = role.max_sessions.unwrap_or(config.limits.sessions_per_role);
        sql.push_str(&plan::connection_limit_sql(&user, cap));
        sql.push_str(&verify::mark_sql(&user, &mark));
        logins.insert(
            role.name.clone(),
            MaskedLogin {
                schema: user.clone(),
                user,
                password,
                phi_columns: p.phi_columns,
                predicate_guarded: p.predicate_guarded,
                unwritable: p.unwritable,
            },
        );
    }
    // Roles no longer configured lose their logins and schemas (only those this key made).
    let mut keep: Vec<String> = logins.values().map(|l| l.user.clone()).collect();
    keep.sort();
    sql.push_str(&verify::prune_sql(&mark, &keep));
    digest.update(verify::prune_sql(&mark, &keep).as_bytes());
    digest.update(sha2::Sha256::digest(key_copy_data(&key)));
    let digest: [u8; 32] = digest.finalize().into();
    let unchanged = *applied.lock().unwrap_or_else(|p| p.into_inner()) == Some(digest)
        && in_place(target, &keep).await?;
    if unchanged {
        tracing::info!("masking views unchanged; not re-provisioned");
    } else {
        run_pruning(target, &mark, &keep, &sql, &key_copy_data(&key)).await?;
        *applied.lock().unwrap_or_else(|p| p.into_inner()) = Some(digest);
        if let Err(e) = add_mark(config, &mark) {
            tracing::warn!(error = %e, "masking: cannot remember the token key's mark (a later key rotation will not remove this key's logins)");
        }
    }
    prove_no_leaks(target, &logins, &exposing).await?;
    tracing::info!(roles = logins.len(), "masking views provisioned");
    Ok(logins)
}

/// After a key rotation, once the new logins are in force: the logins made under the data
/// directory's earlier keys (they hold an old key in the database, and the grants of an old
/// policy) log in no more and are removed. Their sessions still open end with their clients.
pub async fn retire_earlier_keys(config: &Config, target: &UpstreamTarget) {
    let Some(key) = existing_token_key(config) else {
        return;
    };
    let mark = owner_mark(&key);
    let earlier = earlier_marks(config, &mark);
    if earlier.is_empty() {
        return;
    }
    let mut gone = true;
    for m in &earlier {
        let sql = format!("{}{}", plan::LOCK, verify::prune_sql(m, &[]));
        if let Err(e) = run_pruning(target, m, &[], &sql, &[]).await {
            tracing::warn!(error = %e, "masking: cannot remove the logins of an earlier token key; trying again at the next reload");
            return;
        }
        match target.query_column(&verify::marked_query(m)).await {
            Ok(left) => gone &= left.is_empty(),
            Err(_) => gone = false,
        }
    }
    if gone {
        if let Err(e) = remember_mark(config, &mark) {
            tracing::warn!(error = %e, "masking: cannot rewrite the list of token key marks");
        }
    }
}

/// The logins and their schemas still exist (someone or another gateway may have dropped them
/// since this process provisioned them): if not, an unchanged plan runs again.
async fn in_place(target: &UpstreamTarget, logins: &[String]) -> anyhow::Result<bool> {
    if logins.is_empty() {
        return Ok(true);
    }
    let names = logins
        .iter()
        .map(|l| plan::literal(l))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT (SELECT count(*) FROM pg_roles WHERE rolname IN ({names})) \
         + (SELECT count(*) FROM pg_namespace WHERE nspname IN ({names}))"
    );
    let found = target.query_column(&sql).await?;
    Ok(found.first().map(String::as_str) == Some(&(2 * logins.len()).to_string()))
}

/// Runs the provisioning `sql` (which ends by pruning the logins under `mark` not in `keep`)
/// and logs which logins it removed and which it could not.
async fn run_pruning(
    target: &UpstreamTarget,
    mark: &str,
    keep: &[String],
    sql: &str,
    key_data: &[u8],
) -> anyhow::Result<()> {
    let before = target.query_column(&verify::marked_query(mark)).await?;
    run(target, sql, key_data, keep).await?;
    let after = target.query_column(&verify::marked_query(mark)).await?;
    for login in before.iter().filter(|l| !keep.contains(l)) {
        if after.contains(login) {
            tracing::warn!(%login, "masking: cannot remove the login of a role no longer configured; remove it by hand");
        } else {
            tracing::info!(%login, "masking: removed the login and schema of a role no longer configured");
        }
    }
    Ok(())
}

/// The plan as messages of one transaction: its statements, and at each key line a COPY whose
/// data is the token key (never in a statement's text).
fn steps<'a>(sql: &'a str, key_data: &'a [u8]) -> Vec<Step<'a>> {
    let mut out = vec![Step::Sql("BEGIN")];
    let mut start = 0;
    let mut at = 0;
    for line in sql.split_inclusive('\n') {
        if plan::is_key_copy(line.trim_end()) {
            if start < at {
                out.push(Step::Sql(&sql[start..at]));
            }
            out.push(Step::CopyIn {
                sql: line.trim_end(),
                data: key_data,
            });
            start = at + line.len();
        }
        at += line.len();
    }
    if start < sql.len() {
        out.push(Step::Sql(&sql[start..]));
    }
    out.push(Step::Sql("COMMIT"));
    out
}

/// One transaction: all of it or none; tried again while a lock is not available. After the
/// first wait, the masked logins' own open transactions are ended (an agent idle in a
/// transaction on a view must not hold a policy change up; its session ends, and the next one
/// sees the new views).
async fn run(
    target: &UpstreamTarget,
    sql: &str,
    key_data: &[u8],
    logins: &[String],
) -> anyhow::Result<()> {
    let mut attempt = 0;
    loop {
        match target.run_steps(&steps(sql, key_data)).await {
            Ok(()) => return Ok(()),
            Err(crate::upstream::UpstreamError::Refused { code, .. })
                if code == phigate_wire::sqlstate::LOCK_NOT_AVAILABLE && attempt < 10 =>
            {
                attempt += 1;
                tracing::warn!(
                    attempt,
                    "masking views: a lock is held elsewhere; trying again"
                );
                make_way(target, logins).await;
                tokio::time::sleep(std::time::Duration::from_millis(500 * attempt)).await;
            }
            Err(crate::upstream::UpstreamError::Refused { message, .. }) => {
                anyhow::bail!("cannot provision the masking views: {message}")
            }
            Err(e) => anyhow::bail!("cannot provision the masking views: {e}"),
        }
    }
}

/// Ends the idle open transactions of the masked logins (a statement still running ends by
/// itself, within the role's statement_timeout) (their sessions end; the gateway's clients
/// reconnect to the new views). The gateway login becomes a member of each masked login first
/// (it created them, CREATEROLE), which is what lets it signal their backends.
async fn make_way(target: &UpstreamTarget, logins: &[String]) {
    if logins.is_empty() {
        return;
    }
    let names = logins
        .iter()
        .map(|l| plan::literal(l))
        .collect::<Vec<_>>()
        .join(", ");
    let grant = format!(
        "DO $$ DECLARE r record; BEGIN\n\
           FOR r IN SELECT rolname FROM pg_roles WHERE rolname IN ({names})\n\
                    AND NOT pg_has_role(current_user, oid, 'USAGE') LOOP\n\
             EXECUTE format('GRANT %I TO %I', r.rolname, current_user);\n\
           END LOOP;\n\
         END $$"
    );
    let end = format!(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE usename IN ({names}) AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()"
    );
    let result = match target.query_column(&grant).await {
        Ok(_) => target.query_column(&end).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(n) => tracing::warn!(
            ended = n.first().map(String::as_str).unwrap_or("0"),
            "masking views: ended the open transactions of masked sessions holding the views"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "masking views: cannot end the masked sessions holding the views")
        }
    }
}

/// Prove it: no masked login may read any relation that holds or shows PHI rows, whatever else
/// the database grants (PUBLIC, memberships, default privileges).
async fn prove_no_leaks(
    target: &UpstreamTarget,
    logins: &HashMap<String, MaskedLogin>,
    exposing: &HashSet<String>,
) -> anyhow::Result<()> {
    for login in logins.values() {
        let Some(query) = plan::leak_query(&login.user, exposing) else {
            continue;
        };
        let leaks = target.query_column(&query).await?;
        if !leaks.is_empty() {
            anyhow::bail!(
                "masking: the database lets {} read {} directly (a PUBLIC grant or a role membership?); revoke it",
                login.user,
                leaks.join(", ")
            );
        }
    }
    // Functions that run with their owner's rights can read PHI tables for anyone who may
    // execute them. The gateway refuses them by name and through operators (rule
    // unknown-function); the database does not: say so.
    if let Some(login) = logins.values().next() {
        let definer = format!(
            "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE p.prosecdef AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             AND n.nspname NOT LIKE 'phigate\\_m%' AND has_function_privilege({}, p.oid, 'EXECUTE') \
             ORDER BY 1 LIMIT 20",
            plan::literal(&login.user)
        );
        if let Ok(found) = target.query_column(&definer).await {
            if !found.is_empty() {
                tracing::warn!(
                    functions = %found.join(", "),
                    "masking: the masked logins may execute SECURITY DEFINER functions, which run with their owners' rights and may read PHI; the gateway refuses them (rule unknown-function), the database does not: REVOKE EXECUTE ON FUNCTION ... FROM PUBLIC"
                );
            }
        }
    }
    Ok(())
}
