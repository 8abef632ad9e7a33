//! What provisioning proves and cleans up, as SQL (pure): every privilege the policy implies for
//! a masked login, checked inside the provisioning transaction so that a gateway login that
//! cannot grant it fails the start (or the reload, leaving the previous provisioning intact)
//! with a message naming what is missing; and the removal of the logins of roles no longer
//! configured.

use std::collections::HashMap;

use super::plan::{ident, literal};

/// Every sequence an insert into a table draws from: owned by one of its columns (`serial`:
/// dependency `a`; identity: `i`) or called by a column default (`nextval('s')`), as
/// `schema<US>table<US>schema<US>sequence`.
pub(super) const SEQUENCES: &str = "\
SELECT tn.nspname || E'\\x1f' || t.relname || E'\\x1f' || sn.nspname || E'\\x1f' || s.relname \
FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' JOIN pg_namespace sn ON sn.oid = s.relnamespace \
JOIN pg_class t ON t.oid = d.refobjid JOIN pg_namespace tn ON tn.oid = t.relnamespace \
WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') \
UNION \
SELECT tn.nspname || E'\\x1f' || t.relname || E'\\x1f' || sn.nspname || E'\\x1f' || s.relname \
FROM pg_attrdef ad JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid AND d.refclassid = 'pg_class'::regclass \
JOIN pg_class s ON s.oid = d.refobjid AND s.relkind = 'S' JOIN pg_namespace sn ON sn.oid = s.relnamespace \
JOIN pg_class t ON t.oid = ad.adrelid JOIN pg_namespace tn ON tn.oid = t.relnamespace";

/// [`SEQUENCES`]' rows as `schema<US>table` → `schema<US>sequence`s.
pub(super) fn sequences(rows: &[String]) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for row in rows {
        let f: Vec<&str> = row.split('\u{1f}').collect();
        if let [ts, t, ss, s] = f.as_slice() {
            out.entry(format!("{ts}\u{1f}{t}"))
                .or_default()
                .push(format!("{ss}\u{1f}{s}"));
        }
    }
    out
}

/// Whose privilege a check is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Need {
    /// The masked login's, on a table or view its grants name.
    Table,
    /// The masked login's, on a sequence its inserts draw from.
    Sequence,
    /// The masked login's USAGE on a schema.
    Schema,
    /// The gateway login's own SELECT on a tagged table its masking view reads.
    Source,
    /// The masked login's CONNECT on the database.
    Connect,
}

/// One privilege the policy implies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Check {
    need: Need,
    schema: String,
    name: String,
    privilege: &'static str,
}

impl Check {
    pub fn new(need: Need, schema: &str, name: &str, privilege: &'static str) -> Check {
        Check {
            need,
            schema: schema.to_owned(),
            name: name.to_owned(),
            privilege,
        }
    }

    pub fn connect() -> Check {
        Check::new(Need::Connect, "", "", "CONNECT")
    }

    /// A boolean SQL expression: whether the privilege is there.
    fn holds(&self, login: &str) -> String {
        let rel = literal(&format!("{}.{}", ident(&self.schema), ident(&self.name)));
        let p = literal(self.privilege);
        match self.need {
            // A write the gateway's login cannot make itself is no approved write's to make:
            // such a table is read-only through the gateway, and nothing is missing.
            Need::Table if self.privilege != "SELECT" => format!(
                "(has_table_privilege({login}, {rel}, {p}) OR NOT has_table_privilege(current_user, {rel}, {p}))"
            ),
            Need::Table => format!("has_table_privilege({login}, {rel}, {p})"),
            Need::Sequence => format!(
                "(has_sequence_privilege({login}, {rel}, {p}) OR NOT has_sequence_privilege(current_user, {rel}, {p}))"
            ),
            Need::Schema => format!(
                "has_schema_privilege({login}, {}, {p})",
                literal(&self.schema)
            ),
            Need::Connect => {
                format!("has_database_privilege({login}, current_database(), {p})")
            }
            // Column privileges on every column serve as well as the table's.
            Need::Source => format!(
                "(has_table_privilege(current_user, {rel}, {p}) OR NOT EXISTS (SELECT FROM pg_attribute a \
                 WHERE a.attrelid = {rel}::regclass AND a.attnum > 0 AND NOT a.attisdropped \
                 AND NOT has_column_privilege(current_user, a.attrelid, a.attnum, {p})))"
            ),
        }
    }

    /// What is missing, and what the gateway's login needs for it, in words.
    fn missing(&self) -> String {
        let (p, s, n) = (self.privilege, &self.schema, &self.name);
        match self.need {
            Need::Table => format!(
                "{p} on {s}.{n} (the gateway's login must own it or hold {p} WITH GRANT OPTION on it)"
            ),
            Need::Sequence => format!(
                "{p} on sequence {s}.{n} (the gateway's login must own it or hold {p} WITH GRANT OPTION on it)"
            ),
            Need::Schema => format!(
                "{p} on schema {s} (the gateway's login must own it or hold {p} WITH GRANT OPTION on it)"
            ),
            Need::Source => format!(
                "{p} on {s}.{n} for the gateway's login itself (its masking view reads the table with the privileges of the gateway's login)"
            ),
            Need::Connect => "CONNECT on this database (grant it to the masked login or to PUBLIC)".to_owned(),
        }
    }
}

/// Checks every privilege in `checks` inside the provisioning transaction; any missing one fails
/// the transaction (nothing of it is kept) with a message naming the first ten.
pub(super) fn verify_sql(user: &str, checks: &[Check]) -> String {
    let login = literal(user);
    let rows = checks
        .iter()
        .enumerate()
        .map(|(n, c)| format!("({n}, {}, {})", c.holds(&login), literal(&c.missing())))
        .collect::<Vec<_>>()
        .join(",\n  ");
    format!(
        "DO $$ DECLARE missing text[]; BEGIN\n\
         SELECT array_agg(m ORDER BY n) INTO missing FROM (VALUES\n  {rows}) c(n, ok, m) WHERE NOT ok;\n\
         IF missing IS NOT NULL THEN\n\
           RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege', MESSAGE = format(\n\
             'phigate: the gateway''s database login %s cannot give the masked login %s what the policy implies: %s%s',\n\
             current_user, {login}, array_to_string(missing[1:10], '; '),\n\
             CASE WHEN cardinality(missing) > 10 THEN format('; and %s more', cardinality(missing) - 10) ELSE '' END);\n\
         END IF;\n\
         END $$;\n"
    )
}

/// What the comment on every masked login says: which token key (so which gateway fleet)
/// provisioned it. Only logins carrying the caller's mark are ever removed.
pub(super) fn owner_comment(mark: &str) -> String {
    format!("phigate masked login {mark}")
}

/// Marks `user` as provisioned under `mark`.
pub(super) fn mark_sql(user: &str, mark: &str) -> String {
    format!(
        "COMMENT ON ROLE {} IS {};\n",
        ident(user),
        literal(&owner_comment(mark))
    )
}

/// The logins provisioned under `mark`, one name per row.
pub(super) fn marked_query(mark: &str) -> String {
    format!(
        "SELECT rolname FROM pg_roles WHERE shobj_description(oid, 'pg_authid') = {} ORDER BY rolname",
        literal(&owner_comment(mark))
    )
}

/// Removes the logins provisioned under `mark` that are not in `keep`, with their schemas and
/// every privilege granted to them. One that cannot be removed stays (a warning; the caller
/// reads [`marked_query`] again and logs it): a clean-up never fails provisioning.
pub(super) fn prune_sql(mark: &str, keep: &[String]) -> String {
    let keep = keep
        .iter()
        .map(|k| literal(k))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "DO $$ DECLARE r record; o record; BEGIN\n\
           FOR r IN SELECT a.oid, a.rolname FROM pg_roles a WHERE shobj_description(a.oid, 'pg_authid') = {comment}\n\
                    AND a.rolname <> ALL (ARRAY[{keep}]::text[]) LOOP\n\
             -- Whatever happens next, it logs in no more.\n\
             EXECUTE format('ALTER ROLE %I NOLOGIN', r.rolname);\n\
             BEGIN\n\
               EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', r.rolname);\n\
               EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', r.rolname || '_k');\n\
               FOR o IN SELECT DISTINCT c.oid::regclass AS rel FROM pg_class c, aclexplode(c.relacl) x WHERE x.grantee = r.oid LOOP\n\
                 EXECUTE format('REVOKE ALL ON %s FROM %I', o.rel, r.rolname);\n\
               END LOOP;\n\
               FOR o IN SELECT DISTINCT n.nspname FROM pg_namespace n, aclexplode(n.nspacl) x WHERE x.grantee = r.oid LOOP\n\
                 EXECUTE format('REVOKE ALL ON SCHEMA %I FROM %I', o.nspname, r.rolname);\n\
               END LOOP;\n\
               EXECUTE format('DROP ROLE %I', r.rolname);\n\
             EXCEPTION WHEN others THEN RAISE WARNING 'phigate: cannot remove the masked login %: %', r.rolname, SQLERRM;\n\
             END;\n\
           END LOOP;\n\
         END $$;\n",
        comment = literal(&owner_comment(mark)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_check_names_what_is_missing() {
        let checks = [
            Check::connect(),
            Check::new(Need::Table, "ext", "codes", "SELECT"),
            Check::new(Need::Sequence, "public", "claims_id_seq", "USAGE"),
            Check::new(Need::Source, "public", "patients", "SELECT"),
            Check::new(Need::Table, "ext", "codes", "INSERT"),
        ];
        let sql = verify_sql("m_login", &checks);
        assert!(sql.contains("has_table_privilege('m_login', '\"ext\".\"codes\"', 'SELECT')"));
        assert!(sql.contains(
            "has_sequence_privilege('m_login', '\"public\".\"claims_id_seq\"', 'USAGE')"
        ));
        assert!(sql.contains("has_column_privilege(current_user, a.attrelid, a.attnum, 'SELECT')"));
        assert!(sql.contains("(has_table_privilege('m_login', '\"ext\".\"codes\"', 'INSERT') OR NOT has_table_privilege(current_user, '\"ext\".\"codes\"', 'INSERT'))"));
        assert!(sql.contains("SELECT on ext.codes (the gateway''s login must own it or hold SELECT WITH GRANT OPTION on it)"));
        assert!(sql.contains("has_database_privilege('m_login', current_database(), 'CONNECT')"));
    }

    #[test]
    fn pruning_keeps_the_configured_logins_and_touches_only_its_own() {
        let sql = prune_sql("abc", &["a".into(), "b".into()]);
        assert!(sql.contains("= 'phigate masked login abc'"));
        assert!(sql.contains("<> ALL (ARRAY['a', 'b']::text[])"));
        assert!(prune_sql("abc", &[]).contains("ARRAY[]::text[]"));
        let seqs = sequences(&["public\u{1f}claims\u{1f}public\u{1f}claims_id_seq".to_owned()]);
        assert_eq!(
            seqs["public\u{1f}claims"],
            vec!["public\u{1f}claims_id_seq".to_owned()]
        );
    }
}
