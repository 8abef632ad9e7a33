//! `phigate discover`: proposes `[[phi]]` tags from column names and sampled contents.

use std::collections::BTreeMap;

use phigate_policy::masking::PhiType;

use super::plan::ident;
use crate::upstream::UpstreamTarget;

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
