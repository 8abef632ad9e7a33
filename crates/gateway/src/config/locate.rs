//! Where in the file a semantic error (or warning) is: line and column of the value it is
//! about. `toml`'s deserializer reports spans only for its own errors; checks made after it
//! (an unknown role named in a rule, a rule no statement can reach) find their place again in
//! the text with `toml_edit`, which keeps every span.

use toml_edit::{ImDocument, Item, Table, Value};

/// What a message is about, as a path into the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Place {
    /// The section: a table (`approvals`, `audit`) or an array of tables (`role`, `rule`,
    /// `identity`, `phi`, `auth.oidc`); dotted for nested ones.
    pub section: &'static str,
    /// In an array of tables: the entry whose `name` (or `subject`, or `table`) is this.
    pub entry: Option<String>,
    /// In an array of tables: the entry at this position (from 0).
    pub index: Option<usize>,
    /// A key within it (at any depth).
    pub key: Option<String>,
    /// A string value within it (under `key` when given).
    pub value: Option<String>,
}

impl Place {
    pub fn section(section: &'static str) -> Place {
        Place {
            section,
            ..Place::default()
        }
    }

    pub fn entry(section: &'static str, entry: &str) -> Place {
        Place {
            section,
            entry: Some(entry.to_owned()),
            ..Place::default()
        }
    }

    pub fn key(mut self, key: &str) -> Place {
        self.key = Some(key.to_owned());
        self
    }

    pub fn value(mut self, value: &str) -> Place {
        self.value = Some(value.to_owned());
        self
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut at = offset.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// The line and column of `place` in `text`, if it can be found (the most precise part found:
/// the value, else the key, else the entry or section).
pub fn locate(text: &str, place: &Place) -> Option<(usize, usize)> {
    let doc = ImDocument::parse(text).ok()?;
    let mut item: &Item = doc.as_item();
    for part in place.section.split('.') {
        item = item.as_table_like()?.get(part)?;
    }
    let scope: Vec<&Table> = match item {
        Item::Table(t) => vec![t],
        Item::ArrayOfTables(a) => a
            .iter()
            .enumerate()
            .filter(|(i, _)| place.index.is_none_or(|want| want == *i))
            .map(|(_, t)| t)
            .filter(|t| {
                place.entry.as_deref().is_none_or(|want| {
                    ["name", "subject", "table"]
                        .iter()
                        .any(|k| t.get(k).and_then(Item::as_str) == Some(want))
                })
            })
            .collect(),
        _ => return item.span().map(|s| line_col(text, s.start)),
    };
    // Without an entry, the first table of the array that holds the value.
    let table: &Table = scope
        .iter()
        .find(|t| find_in_table(**t, place.key.as_deref(), place.value.as_deref()).is_some())
        .or(scope.first())?;
    let key = place.key.as_deref();
    let span = find_in_table(table, key, place.value.as_deref())
        .or_else(|| find_in_table(table, key, None))
        .or_else(|| table.span())
        .or_else(|| {
            // An array-of-tables entry has no span of its own: its first key's.
            table.iter().next().and_then(|(k, _)| table.key(k)?.span())
        })?;
    Some(line_col(text, span.start))
}

/// Where a message of the config's own checks is about, read from how it begins (`role NAME
/// ...`, `auth.oidc NAME: ...`, `binding #N: ...`, `upstream.ca_file ...`): every check
/// names its place first, so every error can carry a line and column.
pub fn place_of(message: &str) -> Option<Place> {
    let word = |rest: &str| -> String {
        rest.split([' ', ':', ','])
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    // `... role R is not defined` names a value to point at inside the place.
    let role_value = |p: Place| match message.split_once(": role ") {
        Some((_, rest)) => p.value(&word(rest)),
        None => p,
    };
    if let Some(rest) = message.strip_prefix("binding #") {
        let n: usize = word(rest).parse().ok()?;
        let mut p = role_value(Place::section("binding"));
        p.index = Some(n.checked_sub(1)?);
        return Some(p);
    }
    for (prefix, section) in [
        ("auth.oidc ", "auth.oidc"),
        ("identity ", "identity"),
        ("role ", "role"),
        ("rule ", "rule"),
    ] {
        if let Some(rest) = message.strip_prefix(prefix) {
            return Some(Place::entry(section, word(rest).trim_matches('"')));
        }
    }
    for section in [
        "auth",
        "approvals",
        "audit",
        "recording",
        "upstream",
        "listen",
        "limits",
        "runtime",
    ] {
        let Some(rest) = message.strip_prefix(section) else {
            continue;
        };
        return match rest.strip_prefix('.') {
            Some(key) => Some(role_value(Place::section(section).key(&word(key)))),
            None if rest.starts_with([':', ' ']) => Some(role_value(Place::section(section))),
            None => None,
        };
    }
    None
}

fn find_in_table(
    t: &dyn toml_edit::TableLike,
    key: Option<&str>,
    value: Option<&str>,
) -> Option<std::ops::Range<usize>> {
    for (k, item) in t.iter() {
        if key.is_none_or(|want| want == k) {
            let found = match value {
                None => t.key(k).and_then(toml_edit::Key::span),
                Some(v) => find_value(item, v),
            };
            if found.is_some() {
                return found;
            }
        }
        let nested = match item {
            Item::Table(inner) => find_in_table(inner, key, value),
            Item::Value(Value::InlineTable(inner)) => find_in_table(inner, key, value),
            Item::ArrayOfTables(a) => a.iter().find_map(|inner| find_in_table(inner, key, value)),
            _ => None,
        };
        if nested.is_some() {
            return nested;
        }
    }
    None
}

fn find_value(item: &Item, want: &str) -> Option<std::ops::Range<usize>> {
    match item {
        Item::Value(v) => find_in_value(v, want),
        Item::Table(t) => find_in_table(t, None, Some(want)),
        Item::ArrayOfTables(a) => a.iter().find_map(|t| find_in_table(t, None, Some(want))),
        Item::None => None,
    }
}

fn find_in_value(v: &Value, want: &str) -> Option<std::ops::Range<usize>> {
    match v {
        Value::String(s) if s.value() == want => v.span(),
        Value::Array(a) => a.iter().find_map(|x| find_in_value(x, want)),
        Value::InlineTable(t) => find_in_table(t, None, Some(want)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[listen]\naddress = \"x\"\n\n[[role]]\nname = \"a\"\n\n[[role]]\nname = \"b\"\n[[role.grant]]\nschema = \"public\"\nactions = [\"select\", \"wrte\"]\n\n[[rule]]\nname = \"r\"\nroles = [\"a\", \"ghost\"]\naction = \"deny\"\n\n[audit]\nreader_roles = [\"nobody\"]\n";

    #[test]
    fn values_keys_and_entries_are_found() {
        let at = |p: Place| locate(TEXT, &p);
        assert_eq!(
            at(Place::entry("role", "b").key("actions").value("wrte")),
            Some((11, 22))
        );
        assert_eq!(at(Place::entry("rule", "r").value("ghost")), Some((15, 15)));
        assert_eq!(
            at(Place::section("audit").key("reader_roles").value("nobody")),
            Some((19, 17))
        );
        // A value not there: its key; no key: the entry.
        assert_eq!(
            at(Place::entry("rule", "r").key("roles").value("zzz")),
            Some((15, 1))
        );
        assert_eq!(at(Place::entry("role", "b")), Some((8, 1)));
        assert_eq!(at(Place::entry("rule", "missing")), None);
        // No entry named: the first entry holding the value.
        assert_eq!(at(Place::section("role").value("wrte")), Some((11, 22)));
    }

    #[test]
    fn messages_name_their_place() {
        let cases = [
            (
                "binding #2: roles is empty",
                Some(("binding", None, Some(1), None, None)),
            ),
            (
                "binding #1: role x is not defined (add a [[role]] named x)",
                Some(("binding", None, Some(0), None, Some("x"))),
            ),
            (
                "auth.oidc corp: subject_claim is empty",
                Some(("auth.oidc", Some("corp"), None, None, None)),
            ),
            (
                "identity a@b: needs at least one role",
                Some(("identity", Some("a@b"), None, None, None)),
            ),
            (
                "role ai-agent is masked but",
                Some(("role", Some("ai-agent"), None, None, None)),
            ),
            (
                "upstream.ca_file is only used with",
                Some(("upstream", None, None, Some("ca_file"), None)),
            ),
            (
                "recording.decrypt_roles: role ghost is not defined",
                Some((
                    "recording",
                    None,
                    None,
                    Some("decrypt_roles"),
                    Some("ghost"),
                )),
            ),
            (
                "audit: set signing_key_file",
                Some(("audit", None, None, None, None)),
            ),
            ("the audit log needs a place", None),
            ("auditor", None),
        ];
        for (msg, want) in cases {
            let got = place_of(msg).map(|p| (p.section, p.entry, p.index, p.key, p.value));
            let want = want.map(
                |(s, e, i, k, v): (
                    &str,
                    Option<&str>,
                    Option<usize>,
                    Option<&str>,
                    Option<&str>,
                )| {
                    (
                        s,
                        e.map(str::to_owned),
                        i,
                        k.map(str::to_owned),
                        v.map(str::to_owned),
                    )
                },
            );
            assert_eq!(got, want, "{msg}");
        }
        let text = "[[binding]]\ngroups = [\"a\"]\nroles = [\"r\"]\n\n[[binding]]\ngroups = [\"b\"]\nroles = [\"x\"]\n";
        let p = place_of("binding #2: role x is not defined").expect("place");
        assert_eq!(locate(text, &p), Some((7, 10)));
    }
}
