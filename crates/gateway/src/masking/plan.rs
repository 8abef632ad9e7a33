//! The SQL of the masking floor, written from the policy and what the catalog says: pure (no IO),
//! so what is provisioned can be read and tested without a database.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use phigate_policy::masking::{strategy_for, PhiTableConfig, PhiType, Strategy};
use phigate_policy::RoleConfig;

use super::verify::{Check, Need};

/// ZIP3 areas with 20,000 people or fewer: Safe Harbor replaces them with `000`.
const SPARSE_ZIP3: &[&str] = &[
    "036", "059", "063", "102", "203", "556", "692", "790", "821", "823", "830", "831", "878",
    "879", "884", "890", "893",
];

/// Gateways provisioning at once take turns (one transaction each). Never a long wait in the
/// database: a lock held by someone else (another gateway, a client's open transaction on a
/// view) makes the transaction give up after 2 s, so no waiting backend is left queued in
/// front of the masked sessions' reads; the provisioning is tried again.
pub(super) const LOCK: &str = "SET LOCAL lock_timeout = '2s';\nSET LOCAL statement_timeout = '60s';\nSELECT pg_advisory_xact_lock(hashtext('phigate-masking'));\n";

/// Every relation outside the system and masking schemas, as `schema<US>name`.
pub(super) const ALL_TABLES: &str = "SELECT n.nspname || E'\\x1f' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f') AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') \
     AND n.nspname NOT LIKE 'phigate\\_m%'";

pub(super) fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub(super) fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A column as the catalog describes it.
#[derive(Debug, Clone)]
pub(super) struct Column {
    pub name: String,
    /// `format_type(atttypid, atttypmod)`, e.g. `character varying(20)`.
    pub ty: String,
    /// `pg_type.typcategory`: S string, N numeric, D date/time, U user (uuid is U), ...
    pub category: char,
    /// `pg_type.typname`: int4, date, timestamptz, uuid, ...
    pub base: String,
}

/// `schema.table` → its columns in order.
pub(super) type Columns = HashMap<(String, String), Vec<Column>>;

/// What the catalog says about the tagged tables and everything beside them.
pub(super) struct Catalog<'a> {
    /// The tagged tables, `(schema, table)`, in the order of `phi`.
    pub tables: &'a [(String, String)],
    pub phi: &'a [PhiTableConfig],
    pub columns: &'a Columns,
    /// Every relation, `schema<US>name` ([`ALL_TABLES`]).
    pub all_tables: &'a [String],
    /// The relations that hold or show a tagged table's rows ([`exposing_query`]).
    pub exposing: &'a HashSet<String>,
    /// `schema<US>table` → the sequences its inserts draw from (serial, identity, defaults
    /// calling `nextval`), as `schema<US>sequence` ([`super::verify::SEQUENCES`]).
    pub sequences: &'a HashMap<String, Vec<String>>,
}

/// One masked role's SQL and what its sessions need to know of it.
pub(super) struct RolePlan {
    pub sql: String,
    /// `schema.table` → its PHI columns (for audit records).
    pub phi_columns: BTreeMap<String, Vec<String>>,
    /// `schema.table` → its PHI columns that are not tokenized.
    pub predicate_guarded: BTreeMap<String, Vec<String>>,
    /// `schema.table` → its PHI columns the view computes (every strategy but `clear`): no
    /// write can assign them.
    pub unwritable: BTreeMap<String, Vec<String>>,
}

/// The schema of a login's internals (the token key): the login has no USAGE on
/// it and it is on nobody's search_path, so the masked session's catalog shows only its views.
pub(super) fn internal_schema(user: &str) -> String {
    format!("{user}_k")
}

fn tagged_list(tables: &[(String, String)]) -> String {
    tables
        .iter()
        .map(|(s, t)| format!("({}, {})", literal(s), literal(t)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The columns of the tagged tables, one row per column ([`parse_column`] reads it).
pub(super) fn columns_query(tables: &[(String, String)]) -> String {
    let list = tagged_list(tables);
    format!(
        "SELECT concat_ws(E'\\x1f', n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod), ty.typcategory, ty.typname) \
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_type ty ON ty.oid = a.atttypid \
         WHERE (n.nspname, c.relname) IN ({list}) AND a.attnum > 0 AND NOT a.attisdropped \
         ORDER BY n.nspname, c.relname, a.attnum"
    )
}

/// One row of [`columns_query`]: `(schema, table)` and the column.
pub(super) fn parse_column(row: &str) -> Option<((String, String), Column)> {
    let f: Vec<&str> = row.split('\u{1f}').collect();
    let [schema, table, name, ty, category, base] = f.as_slice() else {
        return None;
    };
    Some((
        ((*schema).to_owned(), (*table).to_owned()),
        Column {
            name: (*name).to_owned(),
            ty: (*ty).to_owned(),
            category: category.chars().next().unwrap_or('X'),
            base: (*base).to_owned(),
        },
    ))
}

/// Every tag names a table and columns the database has.
pub(super) fn check_tags(
    tables: &[(String, String)],
    phi: &[PhiTableConfig],
    columns: &Columns,
) -> anyhow::Result<()> {
    for (t, phi) in tables.iter().zip(phi) {
        let Some(have) = columns.get(t) else {
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
    Ok(())
}

/// Everything that holds or shows a tagged table's rows: its partitions and inheritance
/// children, and the views and materialized views over any of those (recursively). A masked
/// login gets no privilege on any of them: only the masking views show their rows.
pub(super) fn exposing_query(tables: &[(String, String)]) -> String {
    let tagged = tagged_list(tables);
    format!(
        "WITH RECURSIVE x(oid) AS ( \
           SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE (n.nspname, c.relname) IN ({tagged}) \
           UNION SELECT c.child FROM x, LATERAL ( \
                 SELECT i.inhrelid AS child FROM pg_inherits i WHERE i.inhparent = x.oid \
                 UNION SELECT r.ev_class FROM pg_rewrite r JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid \
                 WHERE d.refobjid = x.oid AND r.ev_class <> x.oid) c) \
         SELECT n.nspname || E'\\x1f' || c.relname FROM x JOIN pg_class c ON c.oid = x.oid JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname NOT LIKE 'phigate\\_m%'"
    )
}

/// The SQL expression a masked role sees for column `c` of PHI type `t` under strategy `s`.
pub(super) fn mask_expr(c: &Column, t: PhiType, s: Strategy, schema: &str) -> String {
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
            // HMAC-SHA-256 under the key (its pads) in the login's internal schema, computed in
            // the view itself: the view reads the key with its owner's rights (the login has
            // none on it), each pad once per query (an uncorrelated subquery is an InitPlan),
            // and the planner sees builtins only — no function call per row, and nothing the
            // login could call to token a guessed value. NULL stays NULL. `textsend` gives the
            // text's bytes as stored (UTF-8 in a UTF-8 database) and never fails on an
            // encoding, so no error message can quote a raw value.
            let k = ident(schema);
            let tok = format!(
                "encode(sha256((SELECT opad FROM {k}.token_key) || \
                 sha256((SELECT ipad FROM {k}.token_key) || textsend({col}::text))), 'hex')"
            );
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

/// Tables the role's grants let it read, as `(schema, table)` patterns (`*` = any).
fn readable(role: &RoleConfig) -> Vec<(String, String)> {
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

/// The SQL of one masked role: its login (no membership, no privilege on anything outside its
/// schema), its internal schema with the token key, one masking view per tagged table,
/// and SELECT (or, with `write_through`, writes too) on the granted tables that show no PHI.
/// `verifier` is the login's SCRAM verifier, never its password: the statement may land in the
/// server log. The token key itself is never in the SQL: a `COPY ... FROM STDIN` line
/// ([`is_key_copy`]) marks where it is sent as data.
pub(super) fn role_plan(
    role: &RoleConfig,
    user: &str,
    verifier: &str,
    catalog: &Catalog<'_>,
    write_through: bool,
) -> RolePlan {
    let mut sql = login_sql(user, verifier);
    let mut checks = vec![Check::connect()];
    let mut phi_columns = BTreeMap::new();
    let mut predicate_guarded = BTreeMap::new();
    let mut unwritable = BTreeMap::new();
    for (t, phi) in catalog.tables.iter().zip(catalog.phi) {
        let Some(have) = catalog.columns.get(t) else {
            continue;
        };
        sql.push_str(&view_sql(role, user, t, phi, have, write_through));
        // The views are the gateway login's: it reads the tables under them with its own
        // privileges (and writes them, for approved writes, where it may write them itself).
        checks.push(Check::new(Need::Source, &t.0, &t.1, "SELECT"));
        if write_through {
            sql.push_str(&sequence_grants(user, catalog, t, &mut checks));
        }
        phi_columns.insert(
            format!("{}.{}", t.0, t.1),
            phi.columns.keys().cloned().collect(),
        );
        unwritable.insert(
            format!("{}.{}", t.0, t.1),
            phi.columns
                .iter()
                .filter(|(_, kind)| strategy_for(&role.masking, **kind) != Strategy::Clear)
                .map(|(c, _)| c.clone())
                .collect(),
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
    sql.push_str(&base_grants_sql(
        role,
        user,
        catalog,
        write_through,
        &mut checks,
    ));
    sql.push_str(&super::verify::verify_sql(user, &checks));
    RolePlan {
        sql,
        phi_columns,
        predicate_guarded,
        unwritable,
    }
}

/// The login's `CONNECTION LIMIT`: the role's session cap.
pub(super) fn connection_limit_sql(user: &str, cap: usize) -> String {
    let cap = i32::try_from(cap).unwrap_or(i32::MAX);
    format!("ALTER ROLE {} CONNECTION LIMIT {cap};\n", ident(user))
}

/// The login (created if missing, stripped of memberships and table privileges), its schema
/// afresh, and its internal schema with the token key table (read by the views only).
fn login_sql(user: &str, verifier: &str) -> String {
    let u = ident(user);
    let s = ident(user);
    let k = ident(&internal_schema(user));
    format!(
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
         DROP SCHEMA IF EXISTS {k} CASCADE;\n\
         CREATE SCHEMA {s};\n\
         REVOKE ALL ON SCHEMA {s} FROM PUBLIC;\n\
         CREATE SCHEMA {k};\n\
         REVOKE ALL ON SCHEMA {k} FROM PUBLIC;\n\
         CREATE TABLE {k}.token_key (ipad bytea NOT NULL, opad bytea NOT NULL);\n\
         REVOKE ALL ON {k}.token_key FROM PUBLIC;\n\
         COPY {k}.token_key (ipad, opad) FROM STDIN;\n\
         GRANT USAGE ON SCHEMA {s} TO {u};\n",
        lit = literal(user),
        pw = literal(verifier),
    )
}

/// A line of the plan where the token key goes in as COPY data (never in the statement text,
/// which the server logs when a statement fails and shows in `pg_stat_activity`).
pub(super) fn is_key_copy(line: &str) -> bool {
    line.starts_with("COPY ") && line.ends_with(".token_key (ipad, opad) FROM STDIN;")
}

/// The masking view of one tagged table. With approvals on, a write a reviewer approved must be
/// able to run: the login may write the tables its grants name (through the views), and the
/// gateway's policy and rules decide which writes reach it. Without approvals the login cannot
/// write at all.
fn view_sql(
    role: &RoleConfig,
    user: &str,
    t: &(String, String),
    phi: &PhiTableConfig,
    have: &[Column],
    write_through: bool,
) -> String {
    let u = ident(user);
    let s = ident(user);
    let select = have
        .iter()
        .map(|c| match phi.columns.get(&c.name) {
            Some(kind) => format!(
                "{} AS {}",
                mask_expr(
                    c,
                    *kind,
                    strategy_for(&role.masking, *kind),
                    &internal_schema(user)
                ),
                ident(&c.name)
            ),
            None => ident(&c.name),
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "CREATE VIEW {s}.{view} WITH (security_barrier) AS SELECT {select} FROM {src}.{view};\n\
         GRANT SELECT ON {s}.{view} TO {u};\n\
         {writes}",
        writes = if write_through {
            // Approved writes go through the view (masked columns cannot be written).
            format!(
                "GRANT INSERT, UPDATE, DELETE ON {s}.{} TO {u};\n",
                ident(&t.1)
            )
        } else {
            String::new()
        },
        view = ident(&t.1),
        src = ident(&t.0),
    )
}

/// Base tables: SELECT on what the grants name, never on a table holding PHI; USAGE on their
/// schemas.
fn base_grants_sql(
    role: &RoleConfig,
    user: &str,
    catalog: &Catalog<'_>,
    write_through: bool,
    checks: &mut Vec<Check>,
) -> String {
    let u = ident(user);
    let mut sql = String::new();
    let patterns = readable(role);
    let mut schemas = BTreeSet::new();
    for row in catalog.all_tables {
        let Some((schema_name, table)) = row.split_once('\u{1f}') else {
            continue;
        };
        let is_phi = catalog.exposing.contains(row.as_str());
        let granted = patterns
            .iter()
            .any(|(ps, pt)| (ps == "*" || ps == schema_name) && (pt == "*" || pt == table));
        let obj = format!("{}.{}", ident(schema_name), ident(table));
        if granted && !is_phi {
            schemas.insert(schema_name.to_owned());
            let privileges = privileges(write_through);
            // What the gateway's login cannot grant is caught by the checks at the end, which
            // name it (a GRANT without the grant option only warns).
            sql.push_str(&guarded_grant(&privileges.join(", "), &obj, &u));
            for p in privileges {
                checks.push(Check::new(Need::Table, schema_name, table, p));
            }
            if write_through {
                let t = (schema_name.to_owned(), table.to_owned());
                sql.push_str(&sequence_grants(user, catalog, &t, checks));
            }
        }
    }
    for sc in schemas {
        sql.push_str(&guarded_grant(
            "USAGE",
            &format!("SCHEMA {}", ident(&sc)),
            &u,
        ));
        checks.push(Check::new(Need::Schema, &sc, "", "USAGE"));
    }
    sql
}

/// The privileges a masked login gets on what its grants name: SELECT, and with approvals on
/// the writes a reviewer may approve.
fn privileges(write_through: bool) -> &'static [&'static str] {
    if write_through {
        &["SELECT", "INSERT", "UPDATE", "DELETE"]
    } else {
        &["SELECT"]
    }
}

/// `GRANT privileges ON obj TO u`, where a refusal leaves it to the checks to report.
fn guarded_grant(privileges: &str, obj: &str, u: &str) -> String {
    format!(
        "DO $$ BEGIN GRANT {privileges} ON {obj} TO {u}; \
         EXCEPTION WHEN insufficient_privilege THEN NULL; END $$;\n"
    )
}

/// USAGE on the sequences an insert into `t` draws from (`nextval` needs it; an identity
/// column's own sequence does not, but gets it too, so a column's default can change to it).
fn sequence_grants(
    user: &str,
    catalog: &Catalog<'_>,
    t: &(String, String),
    checks: &mut Vec<Check>,
) -> String {
    let mut sql = String::new();
    let key = format!("{}\u{1f}{}", t.0, t.1);
    for seq in catalog.sequences.get(&key).into_iter().flatten() {
        let Some((s, name)) = seq.split_once('\u{1f}') else {
            continue;
        };
        let obj = format!("SEQUENCE {}.{}", ident(s), ident(name));
        sql.push_str(&guarded_grant("USAGE", &obj, &ident(user)));
        checks.push(Check::new(Need::Sequence, s, name, "USAGE"));
    }
    sql
}

/// The relations of `exposing` that `user` can read after all (a PUBLIC grant, a membership,
/// default privileges); `None` when nothing exposes PHI.
pub(super) fn leak_query(user: &str, exposing: &HashSet<String>) -> Option<String> {
    let names = exposing
        .iter()
        .filter_map(|r| r.split_once('\u{1f}'))
        .map(|(s, t)| literal(&format!("{}.{}", ident(s), ident(t))))
        .collect::<Vec<_>>()
        .join(", ");
    if names.is_empty() {
        return None;
    }
    Some(format!(
        "SELECT r FROM unnest(ARRAY[{names}]) r \
         WHERE has_table_privilege({u}, r, 'SELECT') OR has_any_column_privilege({u}, r, 'SELECT')",
        u = literal(user)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, ty: &str, category: char, base: &str) -> Column {
        Column {
            name: name.into(),
            ty: ty.into(),
            category,
            base: base.into(),
        }
    }

    #[derive(serde::Deserialize)]
    struct Fixture {
        role: RoleConfig,
        phi: PhiTableConfig,
    }

    fn fixture() -> Fixture {
        toml::from_str(
            r#"
[role]
name = "analyst"
masked = true
masking = { ssn = "partial", name = "token" }
[[role.grant]]
schema = "public"
actions = ["select"]

[phi]
table = "public.patients"
columns = { ssn = "ssn", first_name = "name" }
"#,
        )
        .expect("fixture")
    }

    #[test]
    fn a_masked_role_reads_views_and_never_the_phi_tables() {
        let f = fixture();
        let tables = vec![("public".to_owned(), "patients".to_owned())];
        let mut columns = Columns::new();
        columns.insert(
            tables[0].clone(),
            vec![
                column("id", "integer", 'N', "int4"),
                column("first_name", "text", 'S', "text"),
                column("ssn", "character varying(11)", 'S', "varchar"),
            ],
        );
        let all = vec![
            "public\u{1f}patients".to_owned(),
            "public\u{1f}patients_view".to_owned(),
            "public\u{1f}wards".to_owned(),
        ];
        let exposing: HashSet<String> = all[..2].iter().cloned().collect();
        let phi = [f.phi];
        let mut sequences = HashMap::new();
        sequences.insert(
            "public\u{1f}wards".to_owned(),
            vec!["public\u{1f}wards_id_seq".to_owned()],
        );
        let catalog = Catalog {
            tables: &tables,
            phi: &phi,
            columns: &columns,
            all_tables: &all,
            exposing: &exposing,
            sequences: &sequences,
        };
        check_tags(&tables, &phi, &columns).expect("tags match the catalog");
        let p = role_plan(&f.role, "m_login", "SCRAM-x", &catalog, false);
        assert!(p.sql.contains(
            "CREATE VIEW \"m_login\".\"patients\" WITH (security_barrier) AS SELECT \"id\", \
             CAST('tok_' || left(encode(sha256((SELECT opad FROM \"m_login_k\".token_key) || \
             sha256((SELECT ipad FROM \"m_login_k\".token_key) || textsend(\"first_name\"::text))), 'hex'), 16) AS text) AS \"first_name\", \
             CAST(CASE WHEN \"ssn\" IS NULL THEN NULL ELSE '***-**-' || right(regexp_replace(\"ssn\", '\\D', '', 'g'), 4) END AS character varying(11)) AS \"ssn\" \
             FROM \"public\".\"patients\";\n"
        ));
        assert!(p.sql.contains("PASSWORD 'SCRAM-x';"));
        assert!(p
            .sql
            .contains("GRANT SELECT ON \"public\".\"wards\" TO \"m_login\""));
        assert!(!p.sql.contains("ON \"public\".\"patients\" TO"));
        assert!(!p.sql.contains("ON \"public\".\"patients_view\" TO"));
        assert!(!p.sql.contains("GRANT INSERT"));
        assert!(!p.sql.contains("SEQUENCE"), "no writes, no sequences");
        // The internals live apart from the views, and the login cannot reach them.
        assert!(p.sql.contains("CREATE TABLE \"m_login_k\".token_key"));
        assert!(!p.sql.contains("GRANT USAGE ON SCHEMA \"m_login_k\""));
        assert!(p
            .sql
            .contains("has_table_privilege('m_login', '\"public\".\"wards\"', 'SELECT')"));
        assert!(p.unwritable["public.patients"].contains(&"ssn".to_owned()));
        // With approvals on, inserts may draw from the table's sequence.
        let w = role_plan(&f.role, "m_login", "SCRAM-x", &catalog, true);
        assert!(w
            .sql
            .contains("GRANT USAGE ON SEQUENCE \"public\".\"wards_id_seq\" TO \"m_login\""));
        assert!(w
            .sql
            .contains("has_sequence_privilege('m_login', '\"public\".\"wards_id_seq\"', 'USAGE')"));
        assert_eq!(p.predicate_guarded["public.patients"], vec!["ssn"]);
        assert_eq!(
            p.phi_columns["public.patients"],
            vec!["first_name".to_owned(), "ssn".to_owned()]
        );
        let leak = leak_query("m_login", &exposing).expect("something exposes PHI");
        assert!(leak.contains("'\"public\".\"patients_view\"'"));
        assert!(leak_query("m_login", &HashSet::new()).is_none());
    }

    #[test]
    fn a_tag_without_its_table_or_column_is_refused() {
        let f = fixture();
        let tables = vec![("public".to_owned(), "patients".to_owned())];
        let phi = [f.phi];
        let mut columns = Columns::new();
        let e = check_tags(&tables, &phi, &columns).expect_err("no table");
        assert_eq!(
            e.to_string(),
            "[[phi]] public.patients: no such table in the database"
        );
        columns.insert(tables[0].clone(), vec![column("ssn", "text", 'S', "text")]);
        let e = check_tags(&tables, &phi, &columns).expect_err("no column");
        assert_eq!(
            e.to_string(),
            "[[phi]] public.patients: no column first_name"
        );
    }

    #[test]
    fn catalog_rows_parse_into_columns() {
        let (table, c) = parse_column("public\u{1f}patients\u{1f}dob\u{1f}date\u{1f}D\u{1f}date")
            .expect("six fields");
        assert_eq!(table, ("public".to_owned(), "patients".to_owned()));
        assert_eq!(
            (c.name.as_str(), c.category, c.base.as_str()),
            ("dob", 'D', "date")
        );
        assert!(parse_column("public\u{1f}patients").is_none());
    }
}
