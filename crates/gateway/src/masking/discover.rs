//! `phigate discover`: proposes `[[phi]]` tags from column names and sampled contents.
//!
//! A tag that is wrong is not harmless: a tagged key or foreign key turns into tokens that
//! join nothing, and a code tagged as a ZIP loses its meaning. So a proposal says how sure it
//! is (`confidence: high | medium | low`), a key or foreign key column is never tagged by its
//! name alone, and values made of digits only (which look like many things: ZIP codes,
//! procedure codes, phone numbers, ids) count as evidence only when the column's name agrees.
//! Rejected proposals are printed commented out, with the reason, for the person reviewing.

use std::collections::BTreeMap;

use phigate_policy::masking::PhiType;

use super::plan::ident;
use crate::upstream::UpstreamTarget;

/// What the catalog says of one column.
#[derive(Debug, Clone, Copy)]
pub struct ColumnFacts<'a> {
    pub name: &'a str,
    /// `pg_type.typcategory`: S string, N numeric, D date/time ...
    pub category: &'a str,
    /// `pg_type.typname`.
    pub base: &'a str,
    /// Part of a primary key or a foreign key.
    pub key: bool,
}

/// How sure a proposal is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confidence {
    High,
    Medium,
    Low,
}

impl Confidence {
    fn as_str(self) -> &'static str {
        match self {
            Confidence::High => "high",
            Confidence::Medium => "medium",
            Confidence::Low => "low",
        }
    }
}

/// One line of the proposal: a tag, or (`tagged: false`) a tag considered and not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    pub phi: PhiType,
    pub tagged: bool,
    pub confidence: Confidence,
    pub why: String,
}

struct Detector {
    phi: PhiType,
    re: regex::Regex,
    what: &'static str,
}

fn detectors() -> anyhow::Result<Vec<Detector>> {
    let d = |phi, re: &str, what| -> anyhow::Result<Detector> {
        Ok(Detector {
            phi,
            re: regex::Regex::new(re)?,
            what,
        })
    };
    Ok(vec![
        d(PhiType::Ssn, r"^\d{3}-?\d{2}-?\d{4}$", "SSNs")?,
        d(
            PhiType::Email,
            r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$",
            "e-mail addresses",
        )?,
        d(
            PhiType::Phone,
            r"^(\+1[ .-]?)?\(?\d{3}\)?[ .-]?\d{3}[ .-]?\d{4}$",
            "phone numbers",
        )?,
        d(PhiType::Zip, r"^\d{5}(-\d{4})?$", "ZIP codes")?,
        d(
            PhiType::Address,
            r"^\d+ [A-Za-z0-9 .]+ (St|Ave|Rd|Blvd|Dr|Ln|Way|Ct|Street|Avenue|Road)\.?$",
            "street addresses",
        )?,
    ])
}

/// Decides one column from its facts, its name's guess and its sampled values (text columns;
/// empty otherwise). Pure: the rules in one place, tested without a database.
fn propose(c: ColumnFacts<'_>, values: &[String], detectors: &[Detector]) -> Option<Proposal> {
    let by_name = guess_type(c.name);
    // The first detector most sampled values agree with.
    let by_content = (!values.is_empty())
        .then(|| {
            detectors.iter().find_map(|d| {
                let hits: Vec<&String> =
                    values.iter().filter(|v| d.re.is_match(v.trim())).collect();
                (hits.len() * 10 >= values.len() * 8).then(|| {
                    let digits = hits
                        .iter()
                        .all(|v| v.trim().bytes().all(|b| b.is_ascii_digit()));
                    (d, hits.len(), digits)
                })
            })
        })
        .flatten();
    let sampled = values.len();
    if let Some((d, hits, digits_only)) = by_content {
        let seen = format!("{hits} of {sampled} sampled values look like {}", d.what);
        return Some(if by_name == Some(d.phi) {
            tag(d.phi, Confidence::High, format!("{seen}; its name agrees"))
        } else if digits_only {
            // Digits alone are ids, codes, amounts as often as ZIP codes or phone numbers.
            not_tagged(
                d.phi,
                format!(
                    "{seen}, but they are digits only and the name does not say so: not tagged"
                ),
            )
        } else if c.key {
            tag(d.phi, Confidence::Medium, format!("{seen}; a key column: tokens still join on it only if every column it joins is tagged alike"))
        } else {
            tag(d.phi, Confidence::Medium, seen)
        });
    }
    let long = values
        .iter()
        .filter(|v| v.len() > 60 && v.contains(' '))
        .count();
    if let Some(phi) = by_name {
        let id_like = c.category == "N"
            && (c.name.eq_ignore_ascii_case("id") || c.name.to_ascii_lowercase().ends_with("_id"));
        if c.key || id_like {
            return Some(not_tagged(
                phi,
                "its name only, and it is a key or foreign key column (a tagged key joins nothing): not tagged; tag it by hand if it holds the identifier itself".into(),
            ));
        }
        // The name expects a shape the values do not have.
        if let Some(d) = detectors
            .iter()
            .find(|d| d.phi == phi)
            .filter(|_| sampled > 0)
        {
            return Some(tag(
                phi,
                Confidence::Low,
                format!(
                    "its name only; the sampled values do not look like {}",
                    d.what
                ),
            ));
        }
        let dated = matches!(c.base, "date" | "timestamp" | "timestamptz");
        return Some(match phi {
            PhiType::DateOfBirth | PhiType::Date if dated => {
                tag(phi, Confidence::High, "its name and its date type".into())
            }
            PhiType::FreeText if long * 2 >= sampled && sampled > 0 => {
                tag(phi, Confidence::High, "its name and long free text".into())
            }
            _ => tag(phi, Confidence::Medium, "its name".into()),
        });
    }
    if sampled > 0 && long * 2 >= sampled {
        return Some(tag(
            PhiType::FreeText,
            Confidence::Medium,
            "long free text (may name anyone)".into(),
        ));
    }
    matches!(c.base, "date" | "timestamp" | "timestamptz").then(|| {
        tag(
            PhiType::Date,
            Confidence::Low,
            "a date (Safe Harbor: dates tied to a person; this one may not be)".into(),
        )
    })
}

fn tag(phi: PhiType, confidence: Confidence, why: String) -> Proposal {
    Proposal {
        phi,
        tagged: true,
        confidence,
        why,
    }
}

fn not_tagged(phi: PhiType, why: String) -> Proposal {
    Proposal {
        phi,
        tagged: false,
        confidence: Confidence::Low,
        why,
    }
}

/// (schema, table) → (column, proposal).
type Proposals = BTreeMap<(String, String), Vec<(String, Proposal)>>;

/// `phigate discover`: proposes `[[phi]]` tags from column names and sampled contents, as a
/// config snippet for a person to review. Prints no sampled value.
pub async fn discover(target: &UpstreamTarget, sample: usize) -> anyhow::Result<String> {
    let detectors = detectors()?;
    let rows = target
        .query_column(
            "SELECT concat_ws(E'\\x1f', n.nspname, c.relname, a.attname, ty.typcategory, ty.typname, \
               EXISTS (SELECT FROM pg_constraint k WHERE k.conrelid = c.oid AND k.contype IN ('p', 'f') AND a.attnum = ANY (k.conkey))) \
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
        let [schema, table, column, category, base, key] = f.as_slice() else {
            continue;
        };
        let facts = ColumnFacts {
            name: column,
            category,
            base,
            key: *key == "true",
        };
        let values = if *category == "S" {
            let sql = format!(
                "SELECT left({c}::text, 200) FROM {s}.{t} WHERE {c} IS NOT NULL LIMIT {sample}",
                c = ident(column),
                s = ident(schema),
                t = ident(table),
            );
            target.query_column(&sql).await.unwrap_or_default()
        } else {
            Vec::new()
        };
        if let Some(p) = propose(facts, &values, &detectors) {
            tables
                .entry(((*schema).to_owned(), (*table).to_owned()))
                .or_default()
                .push(((*column).to_owned(), p));
        }
    }
    Ok(render(&tables))
}

fn render(tables: &Proposals) -> String {
    let mut out = String::from(
        "# Proposed by `phigate discover`: review every line before use. Each says how sure it is\n\
         # (high: name and contents agree; medium: one of them; low: weak evidence). Lines\n\
         # commented out were considered and not tagged, with the reason. Columns not listed\n\
         # were not recognised (check them too).\n",
    );
    for ((schema, table), cols) in tables {
        out.push_str(&format!(
            "\n[[phi]]\ntable = \"{}.{}\"\n[phi.columns]\n",
            toml_escape(schema),
            toml_escape(table)
        ));
        for (c, p) in cols {
            out.push_str(&format!(
                "{}{} = \"{}\"   # confidence: {}; {}\n",
                if p.tagged { "" } else { "# " },
                toml_key(c),
                p.phi.as_str(),
                p.confidence.as_str(),
                p.why
            ));
        }
    }
    out
}

/// The inside of a TOML basic string: quotes and backslashes escaped, and every character that
/// would change what a terminal shows written as a TOML `\\u` escape (a name in the catalog is
/// anyone's text).
fn toml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c if crate::text::invisible(c) => out.push_str(&format!("\\U{:08X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn toml_key(k: &str) -> String {
    if k.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        k.to_owned()
    } else {
        format!("\"{}\"", toml_escape(k))
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

    fn facts<'a>(name: &'a str, category: &'a str, base: &'a str, key: bool) -> ColumnFacts<'a> {
        ColumnFacts {
            name,
            category,
            base,
            key,
        }
    }

    fn values(vs: &[&str]) -> Vec<String> {
        vs.iter().map(|v| (*v).to_owned()).collect()
    }

    #[test]
    fn keys_and_digit_codes_are_not_tagged_by_one_weak_signal() {
        let d = detectors().expect("detectors");
        // An integer foreign key named like a member id: a token would join nothing.
        let fk = propose(facts("member_id", "N", "int4", true), &[], &d).expect("considered");
        assert!(!fk.tagged, "{fk:?}");
        let id_like =
            propose(facts("insurance_id", "N", "int4", false), &[], &d).expect("considered");
        assert!(!id_like.tagged, "{id_like:?}");
        // CPT codes are five digits, like ZIP codes; the name does not say ZIP.
        let cpt = values(&["99213", "99214", "80053", "93000", "99395"]);
        let p = propose(facts("cpt_code", "S", "text", false), &cpt, &d).expect("considered");
        assert!(!p.tagged && p.phi == PhiType::Zip, "{p:?}");
        // The same values under a ZIP name: tagged, sure.
        let z = propose(facts("zip", "S", "text", false), &cpt, &d).expect("tagged");
        assert_eq!((z.tagged, z.confidence), (true, Confidence::High), "{z:?}");
        // A ZIP name over values that are not ZIP codes: tagged (fail safe), but low.
        let odd = values(&["SW1A 1AA", "EC1A 1BB", "W1A 0AX", "M1 1AE", "B33 8TH"]);
        let z = propose(facts("postal_code", "S", "text", false), &odd, &d).expect("tagged");
        assert_eq!((z.tagged, z.confidence), (true, Confidence::Low), "{z:?}");
        // Punctuated shapes are evidence on their own.
        let ssn = values(&[
            "123-45-6789",
            "987-65-4321",
            "111-22-3333",
            "222-33-4444",
            "555-12-3456",
        ]);
        let s = propose(facts("tax_ref", "S", "text", false), &ssn, &d).expect("tagged");
        assert_eq!(
            (s.tagged, s.phi, s.confidence),
            (true, PhiType::Ssn, Confidence::Medium)
        );
        // A text primary key named mrn: not by name alone.
        let mrn = propose(facts("mrn", "S", "text", true), &values(&["A1", "B2"]), &d)
            .expect("considered");
        assert!(!mrn.tagged);
        // Nothing to say about an unremarkable column.
        assert!(propose(facts("amount", "N", "numeric", false), &[], &d).is_none());
    }

    #[test]
    fn rendered_lines_carry_their_confidence_and_parse() {
        let d = detectors().expect("detectors");
        let mut t: Proposals = BTreeMap::new();
        for (c, p) in [
            (
                "zip",
                propose(facts("zip", "S", "text", false), &values(&["02139"]), &d),
            ),
            (
                "member_id",
                propose(facts("member_id", "N", "int4", true), &[], &d),
            ),
        ] {
            t.entry(("public".into(), "claims".into()))
                .or_default()
                .push((c.into(), p.expect("proposal")));
        }
        let out = render(&t);
        assert!(out.contains("\nzip = \"zip\"   # confidence: high; 1 of 1 sampled values look like ZIP codes; its name agrees\n"), "{out}");
        assert!(
            out.contains(
                "\n# member_id = \"member_id\"   # confidence: low; its name only, and it is a key"
            ),
            "{out}"
        );
        let parsed: toml::Value = toml::from_str(&out).expect("TOML");
        assert!(parsed["phi"][0]["columns"].get("member_id").is_none());
    }
}
