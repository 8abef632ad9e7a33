//! What the audit log says of a statement: its kinds and `relation:action` entries, the PHI
//! columns involved.

use std::collections::BTreeMap;

use phigate_policy::Decision;
use phigate_sql::{Analysis, Statement};

use super::{decide, Guard, Note, Record};
use crate::session::relay::exchange::Unit;

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

impl Guard {
    /// The statement's audit record (none while the log is off or down).
    pub(super) fn record(&mut self, a: Note<'_>) -> Option<Record> {
        let (decision, rule) = match a.decision {
            Decision::Allow => ("allow", None),
            Decision::Deny(r) => ("deny", Some(r.rule.clone())),
            Decision::RequireApproval(r) => ("require_approval", Some(r.rule.clone())),
        };
        if a.settles {
            self.p.metrics.hold_settled(decision == "allow");
        }
        if !self.p.audit_on || self.audit_down {
            if !a.settles {
                self.p.metrics.statement(decision, false);
            }
            return None;
        }
        self.statements += 1;
        if let Some(tape) = &self.p.tape {
            tape.statement(self.statements);
        }
        let durable_first =
            !(self.p.gate_reads && decide::changes_nothing(a.analysis) && a.executed.is_empty());
        let (mut kinds, mut tables) = describe(a.analysis);
        for e in a.executed {
            describe_into(&e.analysis, &mut kinds, &mut tables);
        }
        // The PHI columns of the tables it reads, which this (masked) role sees masked.
        let masked_columns = phi_columns(&tables, &self.p.phi);
        if !a.settles {
            let masked = decision == "allow" && !masked_columns.is_empty();
            self.p.metrics.statement(decision, masked);
        }
        let unmasked_columns = phi_columns(&tables, &self.p.unmasked_phi);
        let meta = phigate_audit::StatementRecord {
            session: self.p.session.to_string(),
            subject: self.p.identity.subject.0.clone(),
            role: self.p.identity.role.0.clone(),
            n: self.statements,
            protocol: if a.simple { "simple" } else { "extended" }.into(),
            kinds,
            tables,
            decision: decision.into(),
            rule,
            masked_columns,
            unmasked_columns,
            approval: a.approval,
            channel: self.p.origin.as_ref().map(|o| o.0.clone()),
            tool: self.p.origin.as_ref().map(|o| o.1.clone()),
            ..Default::default()
        };
        Some(Record {
            pending: phigate_audit::Pending::Statement {
                meta,
                sql: a.sql,
                params: a.params,
            },
            unit: Unit {
                n: self.statements,
                started: std::time::Instant::now(),
            },
            durable_first,
        })
    }
}
