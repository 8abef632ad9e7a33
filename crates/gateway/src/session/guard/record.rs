//! What the audit log says of a statement: its kinds and `relation:action` entries, the PHI
//! columns involved.

use std::collections::BTreeMap;

use phigate_sql::{Analysis, Statement};

/// Statement kinds and `relation:action` entries for the audit record.
pub fn describe(analysis: &Analysis) -> (Vec<String>, Vec<String>) {
    let mut kinds = Vec::new();
    let mut tables = Vec::new();
    describe_into(analysis, &mut kinds, &mut tables);
    (kinds, tables)
}

/// [`describe`], appending to what is there (a SQL-level EXECUTE adds what it executes).
pub fn describe_into(analysis: &Analysis, kinds: &mut Vec<String>, tables: &mut Vec<String>) {
    match analysis {
        Analysis::Parsed(stmts) => {
            let add = |st: &Statement, tables: &mut Vec<String>| {
                for a in &st.accesses {
                    let entry = format!("{}:{}", a.relation, a.action.as_str());
                    if !tables.contains(&entry) {
                        tables.push(entry);
                    }
                }
            };
            for st in stmts {
                kinds.push(st.kind.label().to_owned());
                add(st, tables);
                if let Some(inner) = &st.inner {
                    add(inner, tables);
                }
            }
        }
        Analysis::Invalid { .. } => kinds.push("invalid".into()),
    }
}

/// The columns of `phi` (by `schema.table`) in the tables a statement touches (`describe`'s
/// `relation:action` entries; an unqualified relation is in `public`), as `schema.table.column`.
pub fn phi_columns(tables: &[String], phi: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    let mut out = Vec::new();
    for entry in tables {
        let rel = entry.split(':').next().unwrap_or(entry);
        let key = if rel.contains('.') {
            rel.to_owned()
        } else {
            format!("public.{rel}")
        };
        for c in phi.get(&key).into_iter().flatten() {
            let name = format!("{key}.{c}");
            if !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}
