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
    "failed_since",
    "lost_events",
    "segment",
    "bytes_removed",
];

/// The header line: [`CSV_COLUMNS`] joined by commas.
pub const CSV_HEADER: &str = "seq,ts,type,session,subject,role,decision,rule,tables,text,sqlstate,rows,hash_prev,\
version,pid,reason,issuer,credential,client_addr,tls,application_name,database,duration_ms,statements,\
n,protocol,fingerprint,text_sha256,literals,literals_omitted,params,kinds,masked_columns,unmasked_columns,approval,command,duration_us,\
review,justification,status,by,break_glass,count,required,delivered,attempts,\
file,sha256,bytes,events,encrypted,truncated,complete,error,decrypted,\
user,via,\
ok,policy_version,failed_since,lost_events,segment,bytes_removed";

/// Lists of names, joined by a space (names hold none); other lists (literals, parameters)
/// are written as their JSON array, which keeps values with spaces and NULLs apart.
const SPACE_JOINED: &[&str] = &["tables", "kinds", "masked_columns", "unmasked_columns"];

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
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) if SPACE_JOINED.contains(&column) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(" "),
        Some(other) => other.to_string(),
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
