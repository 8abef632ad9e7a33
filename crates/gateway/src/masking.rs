//! PHI masking, enforced by the database itself (docs/masking.md).
//!
//! For each masked role the gateway provisions, from its policy:
//! - a database login `phigate_m_<role>_<tag>` with a password only the gateway can derive (from
//!   the token key; the database receives a SCRAM verifier), no privilege on any table that holds
//!   PHI, and SELECT on the non-PHI tables its grants name;
//! - a schema `phigate_m_<role>` with one security-barrier view per PHI table, under the table's
//!   own name, whose PHI columns are computed by the role's strategies (same column types, so
//!   every driver decodes them, text and binary);
//! - sessions of the role log in as that login with `search_path = phigate_m_<role>, public`,
//!   so `patients` is the masking view.
//!
//! Raw values never reach a masked session, so every path — expressions, whole-row references,
//! aggregates, functions, CTEs, cursors, COPY, error messages that quote a value, `LIKE`
//! probes — can only ever see masked values: the wire-level policy is the layer users see; this
//! is the floor under it. Deterministic tokens come from `<schema>.phigate_token(text)`, an HMAC-SHA-256
//! under a key kept in a table no masked login can read; no role may call it directly, by name
//! or by field notation (policy rule gateway-internal), so it is no dictionary oracle.

use std::collections::{BTreeMap, HashMap};

use phigate_policy::masking::{strategy_for, PhiTableConfig, PhiType, Strategy};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::upstream::UpstreamTarget;

/// ZIP3 areas with 20,000 people or fewer: Safe Harbor replaces them with `000`.
const SPARSE_ZIP3: &[&str] = &[
    "036", "059", "063", "102", "203", "556", "692", "790", "821", "823", "830", "831", "878",
    "879", "884", "890", "893",
];

/// The database login and schema of a masked role.
#[derive(Debug, Clone)]
pub struct MaskedLogin {
    pub user: String,
    pub password: String,
    pub schema: String,
    /// `schema.table` → its PHI columns (for audit records).
    pub phi_columns: BTreeMap<String, Vec<String>>,
    /// `schema.table` → its PHI columns that are not tokenized (predicates on them follow the
    /// role's `phi_predicates`).
    pub predicate_guarded: BTreeMap<String, Vec<String>>,
}

/// `phigate_m_<role>_<tag>`, lower case, `[a-z0-9_]` only. The tag depends on the role and the
/// token key: gateways sharing a key (a fleet) share the login and views; gateways with their
/// own keys (or after a key rotation) never step on each other's.
pub fn login_name(role: &str, key: &[u8]) -> String {
    let clean: String = role
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(32)
        .collect();
    let tag = &token_hex(key, &format!("phigate-login-name:{role}"))[..10];
    format!("phigate_m_{clean}_{tag}")
}

/// The login's password: derived from the token key, so every gateway with the key (and every
/// restart) agrees on it; nobody without the key can compute it.
fn login_password(role: &str, key: &[u8]) -> String {
    token_hex(key, &format!("phigate-login-password:{role}"))
}

fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A column as the catalog describes it.
#[derive(Debug, Clone)]
struct Column {
    name: String,
    /// `format_type(atttypid, atttypmod)`, e.g. `character varying(20)`.
    ty: String,
    /// `pg_type.typcategory`: S string, N numeric, D date/time, U user (uuid is U), ...
    category: char,
    /// `pg_type.typname`: int4, date, timestamptz, uuid, ...
    base: String,
}

/// The SQL expression a masked role sees for column `c` of PHI type `t` under strategy `s`.
fn mask_expr(c: &Column, t: PhiType, s: Strategy, schema: &str) -> String {
    let col = ident(&c.name);
    let ty = &c.ty;
    let null = format!("NULL::{ty}");
    let string = c.category == 'S';
    match s {
        Strategy::Clear => col,
        Strategy::Null => null,
        Strategy::Redact if string => format!("CAST('[redacted]' AS {ty})"),
        Strategy::Redact => null,
        Strategy::Partial if string => {
            let digits = format!("right(regexp_replace({col}, '\\D', '', 'g'), 4)");
            let e = match t {
                PhiType::Ssn => format!("'***-**-' || {digits}"),
                PhiType::Phone => format!("'***-***-' || {digits}"),
                PhiType::Email => format!("'***@' || split_part({col}, '@', 2)"),
                _ => format!("left({col}, 1) || '***'"),
            };
            format!("CAST(CASE WHEN {col} IS NULL THEN NULL ELSE {e} END AS {ty})")
        }
        Strategy::Partial => null,
        Strategy::Generalize => match (c.base.as_str(), t) {
            ("date", _) => format!("make_date(extract(year FROM {col})::int, 1, 1)"),
            ("timestamp" | "timestamptz", _) => format!("date_trunc('year', {col})"),
            (_, PhiType::Zip) if string => {
                let sparse = SPARSE_ZIP3
                    .iter()
                    .map(|z| literal(z))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!(
                    "CAST(CASE WHEN {col} IS NULL THEN NULL WHEN left({col}, 3) IN ({sparse}) THEN '000**' ELSE left({col}, 3) || '**' END AS {ty})"
                )
            }
            ("int2" | "int4" | "int8" | "numeric" | "float4" | "float8", PhiType::Age) => {
                format!("LEAST({col}, 90::{ty})")
            }
            _ => null,
        },
        Strategy::Token => {
            let tok = format!("{}.phigate_token({col}::text)", ident(schema));
            match c.base.as_str() {
                _ if string => format!("CAST('tok_' || left({tok}, 16) AS {ty})"),
                "int4" => format!("('x' || left({tok}, 8))::bit(32)::int4"),
                "int8" => format!("('x' || left({tok}, 16))::bit(64)::int8"),
                "uuid" => format!("left({tok}, 32)::uuid"),
                _ => null,
            }
        }
    }
}

/// HMAC-SHA-256 key material as stored for SQL: the key padded to the block size, XORed with
/// the inner and outer pads.
fn pads(key: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut k = if key.len() > 64 {
        Sha256::digest(key).to_vec()
    } else {
        key.to_vec()
    };
    k.resize(64, 0);
    (
        k.iter().map(|b| b ^ 0x36).collect(),
        k.iter().map(|b| b ^ 0x5c).collect(),
    )
}

/// HMAC-SHA-256 as the database computes it (for tests and `phigate` tooling).
pub fn token_hex(key: &[u8], value: &str) -> String {
    let (ipad, opad) = pads(key);
    let inner = Sha256::digest([ipad.as_slice(), value.as_bytes()].concat());
    hex::encode(Sha256::digest([opad.as_slice(), inner.as_slice()].concat()))
}

/// The token key: `<data_dir>/keys/masking-token.key` (created on first start).
pub fn token_key(config: &Config) -> anyhow::Result<Vec<u8>> {
    let path = match (&config.masking_key_file, &config.data_dir) {
        (Some(p), _) => p.clone(),
        (None, Some(d)) => d.join("keys").join("masking-token.key"),
        (None, None) => {
            anyhow::bail!("masking needs a token key: set data_dir or masking_key_file")
        }
    };
    phigate_audit::load_or_create_key(&path, phigate_audit::random_key)
        .map_err(|e| anyhow::anyhow!("masking token key {}: {e}", path.display()))
}

/// Reads the columns of the PHI tables: `schema.table` → columns in order.
async fn columns(
    target: &UpstreamTarget,
    tables: &[(String, String)],
) -> anyhow::Result<HashMap<(String, String), Vec<Column>>> {
    let list = tables
        .iter()
        .map(|(s, t)| format!("({}, {})", literal(s), literal(t)))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT concat_ws(E'\\x1f', n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod), ty.typcategory, ty.typname) \
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_type ty ON ty.oid = a.atttypid \
         WHERE (n.nspname, c.relname) IN ({list}) AND a.attnum > 0 AND NOT a.attisdropped \
         ORDER BY n.nspname, c.relname, a.attnum"
    );
    let mut out: HashMap<(String, String), Vec<Column>> = HashMap::new();
    for row in target.query_column(&sql).await? {
        let f: Vec<&str> = row.split('\u{1f}').collect();
        let [schema, table, name, ty, category, base] = f.as_slice() else {
            continue;
        };
        out.entry(((*schema).to_owned(), (*table).to_owned()))
            .or_default()
            .push(Column {
                name: (*name).to_owned(),
                ty: (*ty).to_owned(),
                category: category.chars().next().unwrap_or('X'),
                base: (*base).to_owned(),
            });
    }
    Ok(out)
}

/// Tables the role's grants let it read, as `(schema, table)` patterns (`*` = any).
fn readable(role: &phigate_policy::RoleConfig) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for g in &role.grants {
        let reads = g.actions.iter().any(|a| a == "select" || a == "*");
        if reads {
            for t in &g.tables {
                out.push((g.schema.clone(), t.clone()));
            }
        }
    }
    out
}

/// Provisions the masking views and logins of every masked role. Returns role → login.
pub async fn provision(
    config: &Config,
    target: &UpstreamTarget,
) -> anyhow::Result<HashMap<String, MaskedLogin>> {
    let masked: Vec<&phigate_policy::RoleConfig> =
        config.roles.iter().filter(|r| r.masked).collect();
    if masked.is_empty() {
        return Ok(HashMap::new());
    }
    let key = token_key(config)?;
    let tables: Vec<(String, String)> = config.phi.iter().map(PhiTableConfig::qualified).collect();
    let cols = columns(target, &tables).await?;
    for (t, phi) in tables.iter().zip(&config.phi) {
        let Some(have) = cols.get(t) else {
            anyhow::bail!("[[phi]] {}.{}: no such table in the database", t.0, t.1);
        };
        if let Some(missing) = phi
            .columns
            .keys()
            .find(|c| !have.iter().any(|h| &h.name == *c))
        {
            anyhow::bail!("[[phi]] {}.{}: no column {missing}", t.0, t.1);
        }
    }
    // Every non-PHI table of the schemas the roles may read: granted directly.
    let all_tables = target
        .query_column(
            "SELECT n.nspname || E'\\x1f' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f') AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') \
             AND n.nspname NOT LIKE 'phigate\\_m%'",
        )
        .await?;
    // Everything that holds or shows a tagged table's rows: its partitions and inheritance
    // children, and the views and materialized views over any of those (recursively). A masked
    // login gets no privilege on any of them: only the masking views show their rows.
    let tagged = tables
        .iter()
        .map(|(s, t)| format!("({}, {})", literal(s), literal(t)))
        .collect::<Vec<_>>()
        .join(", ");
    let exposing = format!(
        "WITH RECURSIVE x(oid) AS ( \
           SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE (n.nspname, c.relname) IN ({tagged}) \
           UNION SELECT c.child FROM x, LATERAL ( \
                 SELECT i.inhrelid AS child FROM pg_inherits i WHERE i.inhparent = x.oid \
                 UNION SELECT r.ev_class FROM pg_rewrite r JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid \
                 WHERE d.refobjid = x.oid AND r.ev_class <> x.oid) c) \
         SELECT n.nspname || E'\\x1f' || c.relname FROM x JOIN pg_class c ON c.oid = x.oid JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname NOT LIKE 'phigate\\_m%'"
    );
    let exposing: std::collections::HashSet<String> =
        target.query_column(&exposing).await?.into_iter().collect();
    let (ipad, opad) = pads(&key);
    // Gateways provisioning at once take turns (one transaction each).
    let mut sql = String::from("SELECT pg_advisory_xact_lock(hashtext('phigate-masking'));\n");
    let mut logins = HashMap::new();
    for role in masked {
        let user = login_name(&role.name, &key);
        let schema = user.clone();
        let password = login_password(&role.name, &key);
        let u = ident(&user);
        let s = ident(&schema);
        sql.push_str(&format!(
            "DO $$ BEGIN\n\
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {lit}) THEN CREATE ROLE {u} LOGIN; END IF;\n\
               IF EXISTS (SELECT FROM pg_roles WHERE rolname = {lit} AND (rolsuper OR rolbypassrls OR rolreplication)) THEN\n\
                 RAISE EXCEPTION 'role % has superuser, bypassrls or replication: refusing to use it for a masked role', {lit};\n\
               END IF;\n\
             END $$;\n\
             ALTER ROLE {u} LOGIN NOCREATEDB NOCREATEROLE NOINHERIT PASSWORD {pw};\n\
             DO $$ DECLARE r record; BEGIN\n\
               FOR r IN SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid\n\
                        JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = {lit} LOOP\n\
                 EXECUTE format('REVOKE %I FROM %I', r.rolname, {lit});\n\
               END LOOP;\n\
               FOR r IN SELECT c.oid::regclass AS rel FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace\n\
                        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND n.nspname NOT LIKE 'phigate\\_m%'\n\
                        AND has_table_privilege({lit}, c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER') LOOP\n\
                 BEGIN EXECUTE format('REVOKE ALL ON %s FROM %I', r.rel, {lit});\n\
                 EXCEPTION WHEN insufficient_privilege THEN NULL; END;\n\
               END LOOP;\n\
             END $$;\n\
             DROP SCHEMA IF EXISTS {s} CASCADE;\n\
             CREATE SCHEMA {s};\n\
             REVOKE ALL ON SCHEMA {s} FROM PUBLIC;\n\
             CREATE TABLE {s}.token_key (ipad bytea NOT NULL, opad bytea NOT NULL);\n\
             REVOKE ALL ON {s}.token_key FROM PUBLIC;\n\
             INSERT INTO {s}.token_key VALUES ('\\x{ipad}', '\\x{opad}');\n\
             CREATE FUNCTION {s}.phigate_token(v text) RETURNS text\n\
               LANGUAGE sql STABLE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp\n\
               AS $$ SELECT encode(sha256(k.opad || sha256(k.ipad || convert_to(v, 'UTF8'))), 'hex') FROM {s}.token_key k $$;\n\
             REVOKE ALL ON FUNCTION {s}.phigate_token(text) FROM PUBLIC;\n\
             GRANT USAGE ON SCHEMA {s} TO {u};\n\
             GRANT EXECUTE ON FUNCTION {s}.phigate_token(text) TO {u};\n",
            lit = literal(&user),
            // A SCRAM verifier, never the password: the statement may land in the server log.
            pw = literal(&postgres_protocol::password::scram_sha_256(password.as_bytes())),
            ipad = hex::encode(&ipad),
            opad = hex::encode(&opad),
        ));
        let mut phi_columns = BTreeMap::new();
        let mut predicate_guarded = BTreeMap::new();
        // With approvals on, a write a reviewer approved must be able to run: the login may
        // write the tables its grants name (through the views), and the gateway's policy and
        // rules decide which writes reach it. Without approvals the login cannot write at all.
        let write_through = config.approvals.enabled;
        for (t, phi) in tables.iter().zip(&config.phi) {
            let Some(have) = cols.get(t) else { continue };
            let select = have
                .iter()
                .map(|c| match phi.columns.get(&c.name) {
                    Some(kind) => format!(
                        "{} AS {}",
                        mask_expr(c, *kind, strategy_for(&role.masking, *kind), &schema),
                        ident(&c.name)
                    ),
                    None => ident(&c.name),
                })
                .collect::<Vec<_>>()
                .join(", ");
            sql.push_str(&format!(
                "CREATE VIEW {s}.{view} WITH (security_barrier) AS SELECT {select} FROM {src}.{view};\n\
                 GRANT SELECT ON {s}.{view} TO {u};\n\
                 {writes}",
                writes = if write_through {
                    // Approved writes go through the view (masked columns cannot be written).
                    format!("GRANT INSERT, UPDATE, DELETE ON {s}.{} TO {u};\n", ident(&t.1))
                } else {
                    String::new()
                },
                view = ident(&t.1),
                src = ident(&t.0),
            ));
            phi_columns.insert(
                format!("{}.{}", t.0, t.1),
                phi.columns.keys().cloned().collect(),
            );
            predicate_guarded.insert(
                format!("{}.{}", t.0, t.1),
                phi.columns
                    .iter()
                    .filter(|(_, kind)| {
                        !matches!(
                            strategy_for(&role.masking, **kind),
                            Strategy::Token | Strategy::Clear
                        )
                    })
                    .map(|(c, _)| c.to_lowercase())
                    .collect(),
            );
        }
        // Base tables: SELECT on what the grants name, never on a table holding PHI.
        let patterns = readable(role);
        let mut schemas = std::collections::BTreeSet::new();
        for row in &all_tables {
            let Some((schema_name, table)) = row.split_once('\u{1f}') else {
                continue;
            };
            let is_phi = exposing.contains(row.as_str());
            let granted = patterns
                .iter()
                .any(|(ps, pt)| (ps == "*" || ps == schema_name) && (pt == "*" || pt == table));
            let obj = format!("{}.{}", ident(schema_name), ident(table));
            if granted && !is_phi {
                schemas.insert(schema_name.to_owned());
                let privileges = if write_through {
                    "SELECT, INSERT, UPDATE, DELETE"
                } else {
                    "SELECT"
                };
                // A table the gateway's login may not grant on stays unreadable (fail closed).
                sql.push_str(&format!(
                    "DO $$ BEGIN GRANT {privileges} ON {obj} TO {u}; \
                     EXCEPTION WHEN insufficient_privilege THEN RAISE NOTICE 'phigate: cannot grant on %', {}; END $$;\n",
                    literal(&obj)
                ));
            }
        }
        for sc in schemas {
            sql.push_str(&format!("GRANT USAGE ON SCHEMA {} TO {u};\n", ident(&sc)));
        }
        logins.insert(
            role.name.clone(),
            MaskedLogin {
                user,
                password,
                schema,
                phi_columns,
                predicate_guarded,
            },
        );
    }
    // One implicit transaction: all of it or none.
    target
        .query_column(&sql)
        .await
        .map_err(|e| anyhow::anyhow!("cannot provision the masking views: {e}"))?;
    // Prove it: no masked login may read any relation that holds or shows PHI rows, whatever
    // else the database grants (PUBLIC, memberships, default privileges).
    for login in logins.values() {
        let names = exposing
            .iter()
            .filter_map(|r| r.split_once('\u{1f}'))
            .map(|(s, t)| literal(&format!("{}.{}", ident(s), ident(t))))
            .collect::<Vec<_>>()
            .join(", ");
        if names.is_empty() {
            continue;
        }
        let leaks = target
            .query_column(&format!(
                "SELECT r FROM unnest(ARRAY[{names}]) r \
                 WHERE has_table_privilege({u}, r, 'SELECT') OR has_any_column_privilege({u}, r, 'SELECT')",
                u = literal(&login.user)
            ))
            .await?;
        if !leaks.is_empty() {
            anyhow::bail!(
                "masking: the database lets {} read {} directly (a PUBLIC grant or a role membership?); revoke it",
                login.user,
                leaks.join(", ")
            );
        }
    }
    tracing::info!(roles = logins.len(), "masking views provisioned");
    Ok(logins)
}

/// (schema, table) → (column, type, why).
type Proposals = BTreeMap<(String, String), Vec<(String, PhiType, String)>>;

/// `phigate discover`: proposes `[[phi]]` tags from column names and sampled contents, as a
/// config snippet for a person to review. Prints no sampled value.
pub async fn discover(target: &UpstreamTarget, sample: usize) -> anyhow::Result<String> {
    let detectors: Vec<(PhiType, regex::Regex, &str)> = vec![
        (
            PhiType::Ssn,
            regex::Regex::new(r"^\d{3}-\d{2}-\d{4}$")?,
            "SSNs",
        ),
        (
            PhiType::Email,
            regex::Regex::new(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")?,
            "e-mail addresses",
        ),
        (
            PhiType::Phone,
            regex::Regex::new(r"^(\+1[ .-]?)?\(?\d{3}\)?[ .-]?\d{3}[ .-]?\d{4}$")?,
            "phone numbers",
        ),
        (
            PhiType::Zip,
            regex::Regex::new(r"^\d{5}(-\d{4})?$")?,
            "ZIP codes",
        ),
        (
            PhiType::Address,
            regex::Regex::new(
                r"^\d+ [A-Za-z0-9 .]+ (St|Ave|Rd|Blvd|Dr|Ln|Way|Ct|Street|Avenue|Road)\.?$",
            )?,
            "street addresses",
        ),
    ];
    let rows = target
        .query_column(
            "SELECT concat_ws(E'\\x1f', n.nspname, c.relname, a.attname, ty.typcategory, ty.typname) \
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_type ty ON ty.oid = a.atttypid \
             WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped \
             AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND n.nspname NOT LIKE 'phigate\\_m%' \
             ORDER BY n.nspname, c.relname, a.attnum",
        )
        .await?;
    let mut tables: Proposals = BTreeMap::new();
    for row in rows {
        let f: Vec<&str> = row.split('\u{1f}').collect();
        let [schema, table, column, category, base] = f.as_slice() else {
            continue;
        };
        let by_name = guess_type(column);
        let mut found = by_name.map(|t| (t, "its name".to_owned()));
        if *category == "S" {
            let sql = format!(
                "SELECT left({c}::text, 200) FROM {s}.{t} WHERE {c} IS NOT NULL LIMIT {sample}",
                c = ident(column),
                s = ident(schema),
                t = ident(table),
            );
            let values = target.query_column(&sql).await.unwrap_or_default();
            if !values.is_empty() {
                for (t, re, what) in &detectors {
                    let hits = values.iter().filter(|v| re.is_match(v.trim())).count();
                    if hits * 10 >= values.len() * 8 {
                        found = Some((
                            *t,
                            format!("{hits} of {} sampled values look like {what}", values.len()),
                        ));
                        break;
                    }
                }
                let long = values
                    .iter()
                    .filter(|v| v.len() > 60 && v.contains(' '))
                    .count();
                if found.is_none() && long * 2 >= values.len() {
                    found = Some((PhiType::FreeText, "long free text (may name anyone)".into()));
                }
            }
        } else if matches!(*base, "date" | "timestamp" | "timestamptz") && found.is_none() {
            found = Some((
                PhiType::Date,
                "a date (Safe Harbor: dates tied to a person)".into(),
            ));
        }
        if let Some((t, why)) = found {
            tables
                .entry(((*schema).to_owned(), (*table).to_owned()))
                .or_default()
                .push(((*column).to_owned(), t, why));
        }
    }
    let mut out = String::from(
        "# Proposed by `phigate discover`: review every line before use. Dates tagged `date` may\n\
         # not relate to a person; columns not listed were not recognised (check them too).\n",
    );
    for ((schema, table), cols) in tables {
        out.push_str(&format!(
            "\n[[phi]]\ntable = \"{schema}.{table}\"\n[phi.columns]\n"
        ));
        for (c, t, why) in cols {
            out.push_str(&format!(
                "{} = \"{}\"   # {why}\n",
                toml_key(&c),
                t.as_str()
            ));
        }
    }
    Ok(out)
}

fn toml_key(k: &str) -> String {
    if k.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        k.to_owned()
    } else {
        format!("\"{}\"", k.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// A PHI type guessed from a column's name.
pub fn guess_type(column: &str) -> Option<PhiType> {
    let c = column.to_ascii_lowercase();
    let has = |w: &str| c.contains(w);
    Some(if has("ssn") || has("social_security") {
        PhiType::Ssn
    } else if has("birth") || c == "dob" {
        PhiType::DateOfBirth
    } else if has("first_name")
        || has("last_name")
        || c == "name"
        || has("full_name")
        || has("surname")
    {
        PhiType::Name
    } else if has("email") {
        PhiType::Email
    } else if has("phone") || has("mobile") || has("fax") {
        PhiType::Phone
    } else if has("address") || has("street") {
        PhiType::Address
    } else if has("zip") || has("postal") {
        PhiType::Zip
    } else if c == "mrn" || has("medical_record") {
        PhiType::Mrn
    } else if has("member_id") || has("insurance") || has("policy_number") {
        PhiType::MemberId
    } else if has("note") || has("comment") || has("narrative") {
        PhiType::FreeText
    } else {
        return None;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_names_are_distinct_and_safe() {
        assert!(login_name("ai-agent", b"k").starts_with("phigate_m_ai_agent_"));
        assert_ne!(login_name("ai-agent", b"k"), login_name("ai_agent", b"k"));
        assert_ne!(
            login_name("ai-agent", b"k"),
            login_name("ai-agent", b"other key")
        );
    }

    #[test]
    fn hmac_matches_the_reference() {
        // RFC 4231 test case 2.
        let key = b"Jefe";
        assert_eq!(
            token_hex(key, "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
