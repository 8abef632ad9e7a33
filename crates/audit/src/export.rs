//! The CSV export: one row per record, one column per documented field of any record type
//! (docs/audit.md), so a spreadsheet holds everything the JSON lines do.

use serde_json::Value;

use crate::record::Record;

/// The columns, in order: the first thirteen are the export's original ones (kept first and in
/// this order for the sheets built on them), then every other field of every record type.
/// `type` is the record type, `hash_prev` the `prev` field. A field a record does not have is
/// empty.
pub const CSV_COLUMNS: &[&str] = &[
    "seq",
    "ts",
    "type",
    "session",
    "subject",
    "role",
    "decision",
    "rule",
    "tables",
    "text",
    "sqlstate",
    "rows",
    "hash_prev",
    // gateway_start / gateway_stop, session_start, session_end
    "version",
    "pid",
    "reason",
    "issuer",
    "credential",
    "client_addr",
    "tls",
    "application_name",
    "database",
    "duration_ms",
    "statements",
    // statement, statement_end
    "n",
    "protocol",
    "fingerprint",
    "text_sha256",
    "literals",
    "literals_omitted",
    "params",
    "kinds",
    "masked_columns",
    "unmasked_columns",
    "approval",
    "command",
    "duration_us",
    // reviews
    "review",
    "justification",
    "status",
    "by",
    "break_glass",
    "count",
    "required",
    "delivered",
    "attempts",
    // recording, recording_replayed
    "file",
    "sha256",
    "bytes",
    "events",
    "encrypted",
    "truncated",
    "complete",
    "error",
    "decrypted",
    // login_failed
    "user",
    "via",
    // config_reload, audit_recovered, audit_repaired
    "ok",
    "policy_version",
    "needs_restart",
    "failed_since",
    "lost_events",
    "segment",
    "bytes_removed",
    // gateway_start (the audit tier), audit_unsynced
    "durability",
    "flush_interval_ms",
    "since",
    // session_start, statement of an MCP tool call
    "channel",
    "tool",
];

/// The header line: [`CSV_COLUMNS`] joined by commas.
pub const CSV_HEADER: &str = "seq,ts,type,session,subject,role,decision,rule,tables,text,sqlstate,rows,hash_prev,\
version,pid,reason,issuer,credential,client_addr,tls,application_name,database,duration_ms,statements,\
n,protocol,fingerprint,text_sha256,literals,literals_omitted,params,kinds,masked_columns,unmasked_columns,approval,command,duration_us,\
review,justification,status,by,break_glass,count,required,delivered,attempts,\
file,sha256,bytes,events,encrypted,truncated,complete,error,decrypted,\
user,via,\
ok,policy_version,needs_restart,failed_since,lost_events,segment,bytes_removed,\
durability,flush_interval_ms,since,channel,tool";

/// Lists of names, joined by a space (names hold none); other lists (literals, parameters)
/// are written as their JSON array, which keeps values with spaces and NULLs apart.
const SPACE_JOINED: &[&str] = &[
    "tables",
    "kinds",
    "masked_columns",
    "unmasked_columns",
    "needs_restart",
];

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// One field of a record as a CSV cell (before quoting).
pub fn cell(column: &str, v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => inert(s.clone()),
        Some(Value::Array(items)) if SPACE_JOINED.contains(&column) => inert(
            items
                .iter()
                .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        Some(other) => other.to_string(),
    }
}

/// Text a spreadsheet would run as a formula (it begins with `=`, `+`, `-`, `@`, a tab or a
/// carriage return: OWASP's list) gets a leading `'`, which spreadsheets show as text. A
/// client controls much of what is exported (statement text, application_name, reasons).
fn inert(s: String) -> String {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s
    }
}

pub fn csv_row(r: &Record) -> String {
    let json = serde_json::to_value(r).unwrap_or(Value::Null);
    CSV_COLUMNS
        .iter()
        .map(|&c| {
            let key = match c {
                "hash_prev" => "prev",
                other => other,
            };
            csv_field(&cell(c, json.get(key)))
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Event, StatementRecord};

    #[test]
    fn cells_a_spreadsheet_would_run_are_made_text() {
        let s = |v: &str| cell("text", Some(&Value::String(v.into())));
        assert_eq!(s("=HYPERLINK(\"http://x\")"), "'=HYPERLINK(\"http://x\")");
        assert_eq!(s("+1"), "'+1");
        assert_eq!(s("-- a comment\nSELECT 1"), "'-- a comment\nSELECT 1");
        assert_eq!(s("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(s("\tx"), "'\tx");
        assert_eq!(s("SELECT 1"), "SELECT 1");
        let tables = Value::Array(vec![Value::String("=evil".into())]);
        assert_eq!(cell("tables", Some(&tables)), "'=evil");
        // Numbers stay numbers.
        assert_eq!(cell("rows", Some(&Value::from(-1))), "-1");
    }

    /// docs/audit.md's table: type → documented fields (backquoted names outside parentheses).
    fn documented() -> Vec<(String, Vec<String>)> {
        let docs = include_str!("../../../docs/audit.md");
        let ticked = |cell: &str| {
            let mut depth = 0;
            let outside: String = cell
                .chars()
                .filter(|&c| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => return depth == 0,
                    }
                    false
                })
                .collect();
            outside
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let mut out = Vec::new();
        for line in docs.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let types = ticked(cells[1]);
            // `gateway_start` / `gateway_stop`: `version`, `pid` / `reason`
            let parts: Vec<&str> = cells[3].split(" / ").collect();
            for (i, t) in types.iter().enumerate() {
                let cell = if parts.len() == types.len() {
                    parts[i]
                } else {
                    cells[3]
                };
                out.push((t.clone(), ticked(cell)));
            }
        }
        out
    }

    /// One CSV line's fields (quotes undone).
    fn split_row(row: &str) -> Vec<String> {
        let (mut out, mut field, mut quoted) = (Vec::new(), String::new(), false);
        let mut chars = row.chars().peekable();
        while let Some(c) = chars.next() {
            match (quoted, c) {
                (true, '"') if chars.peek() == Some(&'"') => {
                    field.push('"');
                    chars.next();
                }
                (true, '"') | (false, '"') => quoted = !quoted,
                (false, ',') => out.push(std::mem::take(&mut field)),
                (_, c) => field.push(c),
            }
        }
        out.push(field);
        out
    }

    fn s(v: &str) -> String {
        v.to_owned()
    }

    /// One record of every type, every optional field set.
    fn every_event() -> Vec<Event> {
        vec![
            Event::GatewayStart {
                version: s("1"),
                pid: 7,
                durability: Some(s("process")),
                flush_interval_ms: Some(100),
            },
            Event::GatewayStop {
                reason: s("signal"),
            },
            Event::SessionStart {
                session: s("s1"),
                subject: s("ann"),
                role: s("r"),
                issuer: s("corp"),
                credential: s("oidc"),
                client_addr: s("10.0.0.1:5"),
                tls: Some(s("TLSv1.3")),
                application_name: Some(s("psql")),
                database: Some(s("clinic")),
                channel: Some(s("mcp")),
                tool: Some(s("query")),
            },
            Event::SessionEnd {
                session: s("s1"),
                subject: s("ann"),
                role: s("r"),
                reason: s("client"),
                duration_ms: 3,
                statements: 1,
            },
            Event::Statement(StatementRecord {
                session: s("s1"),
                subject: s("ann"),
                role: s("r"),
                n: 1,
                protocol: s("simple"),
                text: s("SELECT $1"),
                text_sha256: Some(s("ab")),
                fingerprint: s("cd"),
                literals: vec![s("hmac:1")],
                literals_omitted: 2,
                params: vec![Some(s("hmac:2")), None],
                kinds: vec![s("read")],
                tables: vec![s("public.t:select")],
                masked_columns: vec![s("public.t.a")],
                unmasked_columns: vec![s("public.t.b")],
                decision: s("allow"),
                rule: Some(s("rule")),
                approval: Some(s("r-1")),
                channel: Some(s("mcp")),
                tool: Some(s("query")),
            }),
            Event::StatementEnd {
                session: s("s1"),
                n: 1,
                sqlstate: s("00000"),
                rows: Some(1),
                command: Some(s("SELECT")),
                duration_us: 9,
            },
            Event::LoginFailed {
                client_addr: s("10.0.0.1:6"),
                user: s("r"),
                reason: s("expired"),
                via: Some(s("wire")),
                subject: Some(s("bob")),
            },
            Event::ConfigReload {
                ok: false,
                policy_version: Some(2),
                error: Some(s("bad")),
                needs_restart: vec![s("listen.address")],
            },
            Event::ReviewRequested {
                review: s("r-1"),
                session: s("s1"),
                subject: s("ann"),
                role: s("r"),
                rule: s("rule"),
                justification: Some(s("why")),
            },
            Event::ReviewNotified {
                review: s("r-1"),
                status: s("pending"),
                delivered: true,
                attempts: 1,
            },
            Event::ReviewApproval {
                review: s("r-1"),
                by: s("cy"),
                reason: s("ok"),
                count: 1,
                required: 2,
            },
            Event::ReviewDecided {
                review: s("r-1"),
                status: s("approved"),
                by: Some(s("cy, dee")),
                reason: Some(s("ok")),
                break_glass: true,
            },
            Event::Recording {
                session: s("s1"),
                file: s("f"),
                sha256: s("ef"),
                bytes: 1,
                events: 1,
                encrypted: true,
                truncated: false,
                complete: true,
                error: Some(s("cut")),
            },
            Event::RecordingReplayed {
                session: s("s1"),
                subject: s("eve"),
                role: s("auditor"),
                decrypted: true,
            },
            Event::AuditRecovered {
                failed_since: s("2026-01-01T00:00:00Z"),
                lost_events: 1,
                error: s("disk"),
            },
            Event::AuditRepaired {
                segment: s("audit-1.jsonl"),
                bytes_removed: 3,
            },
            Event::AuditUnsynced {
                reason: s("fsync_failed"),
                since: s("2026-12-05T00:00:00Z"),
                pid: 8,
                flush_interval_ms: 100,
                error: Some(s("EIO")),
            },
            Event::ConsoleSignin {
                subject: s("carol"),
                issuer: s("hospital"),
                client_addr: s("127.0.0.1:5"),
            },
            Event::ConsoleSignout {
                subject: s("carol"),
                issuer: s("hospital"),
                client_addr: s("127.0.0.1:5"),
                reason: s("signed out"),
            },
        ]
    }

    #[test]
    fn every_documented_field_of_every_type_fills_its_column() {
        let docs = documented();
        let events = every_event();
        let kinds: Vec<&str> = events
            .iter()
            .map(|e| {
                Record {
                    seq: 1,
                    ts: s("t"),
                    prev: s("0"),
                    event: e.clone(),
                }
                .kind()
            })
            .collect();
        assert_eq!(
            kinds,
            crate::record::TYPES,
            "record::TYPES lists every type"
        );
        assert!(docs.len() >= events.len(), "the docs' table was not found");
        for (kind, fields) in &docs {
            let event = events
                .iter()
                .find(|e| {
                    let r = Record {
                        seq: 1,
                        ts: s("t"),
                        prev: s("0"),
                        event: (*e).clone(),
                    };
                    r.kind() == kind
                })
                .unwrap_or_else(|| panic!("no {kind} in this test"))
                .clone();
            let record = Record {
                seq: 1,
                ts: s("t"),
                prev: s("0"),
                event,
            };
            let json = serde_json::to_value(&record).expect("json");
            let row = csv_row(&record);
            let cells = split_row(&row);
            assert_eq!(cells.len(), CSV_COLUMNS.len(), "{row}");
            for f in fields {
                let at = CSV_COLUMNS
                    .iter()
                    .position(|c| c == f)
                    .unwrap_or_else(|| panic!("{kind}.{f}: no CSV column"));
                assert!(
                    json.get(f).is_some(),
                    "{kind}.{f} is documented but not a field"
                );
                assert!(!cells[at].is_empty(), "{kind}.{f}: empty in {row}");
            }
        }
    }

    #[test]
    fn the_header_names_the_columns() {
        assert_eq!(CSV_HEADER, CSV_COLUMNS.join(","));
        let mut seen = std::collections::HashSet::new();
        assert!(
            CSV_COLUMNS.iter().all(|c| seen.insert(*c)),
            "a column twice"
        );
    }
}
