//! The analysis cache key: the statement text with numeric literals replaced by `0`.
//!
//! `SELECT abalance FROM pgbench_accounts WHERE aid = 12345` and `... WHERE aid = 678` have the
//! same analysis, so they share one cache entry: literal-bearing statements sent with the simple
//! protocol are analysed once per shape, not once per value. Only *numeric* literals are folded:
//! they never name a relation, a function, a setting or a file, and the analysis is written not
//! to depend on their values. Strings, identifiers, comments and dollar-quoted bodies are kept
//! byte for byte (a string can name a file in `COPY ... TO 'file'`).
//!
//! The scanner follows PostgreSQL's lexical rules for what it must skip: `'...'` (with `''`),
//! `E'...'` (with backslash escapes), `"..."` identifiers, `$tag$...$tag$`, `--` and nested
//! `/* */` comments, `$1` parameters. When in doubt it leaves the text alone: an unfolded key
//! is only a cache miss.

/// The cache key for `sql`; borrows when nothing was folded.
pub fn cache_key(sql: &str) -> std::borrow::Cow<'_, str> {
    let b = sql.as_bytes();
    let mut out: Option<String> = None;
    let mut i = 0;
    let mut copied = 0; // bytes of `sql` already copied into `out`
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' => {
                let backslash =
                    i > 0 && matches!(b[i - 1], b'e' | b'E') && !ident_char_before(b, i - 1);
                i = skip_quoted(b, i, b'\'', backslash);
            }
            b'"' => i = skip_quoted(b, i, b'"', false),
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = b[i..]
                    .iter()
                    .position(|&x| x == b'\n' || x == b'\r')
                    .map_or(b.len(), |p| i + p + 1);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => i = skip_block_comment(b, i),
            b'$' => i = skip_dollar(b, i),
            b'0'..=b'9' | b'.' if !ident_char_before(b, i) => {
                let end = numeric_end(b, i);
                if end == i {
                    i += 1;
                    continue;
                }
                // Not part of an identifier that continues after the number (e.g. `1abc` is a
                // syntax error PostgreSQL reports itself; leave it).
                if end < b.len() && is_ident_char(b[end]) {
                    i = end;
                    continue;
                }
                let o = out.get_or_insert_with(|| String::with_capacity(sql.len()));
                o.push_str(&sql[copied..i]);
                o.push('0');
                copied = end;
                i = end;
            }
            _ => i += 1,
        }
    }
    match out {
        None => std::borrow::Cow::Borrowed(sql),
        Some(mut o) => {
            o.push_str(&sql[copied..]);
            std::borrow::Cow::Owned(o)
        }
    }
}

/// The statement text for the audit log: every literal (numbers, `'...'` strings with their
/// `E`/`B`/`X` prefix, `$tag$...$tag$` bodies) replaced by a placeholder `$n` numbered after the
/// statement's own parameters, and comments removed (they may carry anything). Returns the
/// redacted text and the literals in order, so the caller can store keyed hashes of them:
/// `SELECT * FROM patients WHERE ssn = '123-45-6789'` → `SELECT * FROM patients WHERE ssn = $1`.
pub fn redact_literals<'a>(sql: &'a str) -> (String, Vec<&'a str>) {
    let b = sql.as_bytes();
    let first = max_param(b) + 1;
    let mut out = String::with_capacity(sql.len());
    let mut literals = Vec::new();
    let mut copied = 0;
    let mut i = 0;
    let push = |out: &mut String,
                literals: &mut Vec<&'a str>,
                copied: &mut usize,
                from: usize,
                to: usize,
                keep: bool| {
        out.push_str(&sql[*copied..from]);
        if keep {
            literals.push(&sql[from..to]);
            out.push('$');
            out.push_str(&(first + literals.len() - 1).to_string());
        } else {
            out.push(' ');
        }
        *copied = to;
    };
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' => {
                let prefixed = i > 0
                    && matches!(b[i - 1], b'e' | b'E' | b'b' | b'B' | b'x' | b'X')
                    && !ident_char_before(b, i - 1);
                let backslash = prefixed && matches!(b[i - 1], b'e' | b'E');
                let start = if prefixed { i - 1 } else { i };
                let end = skip_quoted(b, i, b'\'', backslash);
                push(&mut out, &mut literals, &mut copied, start, end, true);
                i = end;
            }
            b'"' => i = skip_quoted(b, i, b'"', false),
            b'-' if b.get(i + 1) == Some(&b'-') => {
                let end = b[i..]
                    .iter()
                    .position(|&x| x == b'\n' || x == b'\r')
                    .map_or(b.len(), |p| i + p);
                push(&mut out, &mut literals, &mut copied, i, end, false);
                i = end;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let end = skip_block_comment(b, i);
                push(&mut out, &mut literals, &mut copied, i, end, false);
                i = end;
            }
            b'$' => {
                let end = skip_dollar(b, i);
                let is_body = end > i + 1 && !b[i + 1].is_ascii_digit();
                if is_body {
                    push(&mut out, &mut literals, &mut copied, i, end, true);
                }
                i = end;
            }
            b'0'..=b'9' | b'.' if !ident_char_before(b, i) => {
                let end = numeric_end(b, i);
                if end == i || (end < b.len() && is_ident_char(b[end])) {
                    i = end.max(i + 1);
                    continue;
                }
                push(&mut out, &mut literals, &mut copied, i, end, true);
                i = end;
            }
            _ => i += 1,
        }
    }
    out.push_str(&sql[copied..]);
    (out, literals)
}

/// The highest `$n` parameter outside strings, identifiers and comments.
fn max_param(b: &[u8]) -> usize {
    let mut max = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\'' => i = skip_quoted(b, i, b'\'', i > 0 && matches!(b[i - 1], b'e' | b'E')),
            b'"' => i = skip_quoted(b, i, b'"', false),
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = b[i..]
                    .iter()
                    .position(|&x| x == b'\n' || x == b'\r')
                    .map_or(b.len(), |p| i + p)
            }
            b'/' if b.get(i + 1) == Some(&b'*') => i = skip_block_comment(b, i),
            b'$' => {
                let end = skip_dollar(b, i);
                if end > i + 1 && b[i + 1].is_ascii_digit() {
                    if let Ok(n) = std::str::from_utf8(&b[i + 1..end])
                        .unwrap_or("0")
                        .parse::<usize>()
                    {
                        max = max.max(n.min(65535));
                    }
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    max
}

fn is_ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

fn ident_char_before(b: &[u8], i: usize) -> bool {
    i > 0 && is_ident_char(b[i - 1])
}

/// Index just past a quoted token starting at `start` (`quote` doubled inside escapes it).
fn skip_quoted(b: &[u8], start: usize, quote: u8, backslash: bool) -> usize {
    let mut i = start + 1;
    while i < b.len() {
        if backslash && b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    b.len()
}

fn skip_block_comment(b: &[u8], start: usize) -> usize {
    let mut depth = 0;
    let mut i = start;
    while i + 1 < b.len() {
        if b[i] == b'/' && b[i + 1] == b'*' {
            depth += 1;
            i += 2;
        } else if b[i] == b'*' && b[i + 1] == b'/' {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

/// `$1` (a parameter: kept), `$tag$ ... $tag$` (a body: skipped whole), or a lone `$`.
fn skip_dollar(b: &[u8], start: usize) -> usize {
    let mut j = start + 1;
    if b.get(j).is_some_and(u8::is_ascii_digit) {
        while b.get(j).is_some_and(u8::is_ascii_digit) {
            j += 1;
        }
        return j;
    }
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] >= 0x80) {
        j += 1;
    }
    if b.get(j) != Some(&b'$') || ident_char_before(b, start) {
        return start + 1;
    }
    let tag = &b[start..=j];
    let body = j + 1;
    match b[body..].windows(tag.len()).position(|w| w == tag) {
        Some(p) => body + p + tag.len(),
        None => b.len(),
    }
}

/// End of a numeric literal at `start` (digits, `.`, exponent, `_` separators, 0x/0o/0b).
fn numeric_end(b: &[u8], start: usize) -> usize {
    let mut i = start;
    if b[i] == b'0' && matches!(b.get(i + 1), Some(b'x' | b'X' | b'o' | b'O' | b'b' | b'B')) {
        i += 2;
        while i < b.len() && (b[i].is_ascii_hexdigit() || b[i] == b'_') {
            i += 1;
        }
        return i;
    }
    let mut digits = 0;
    while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'_') {
        i += 1;
        digits += 1;
    }
    if b.get(i) == Some(&b'.') && b.get(i + 1) != Some(&b'.') {
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
            digits += 1;
        }
    }
    if digits == 0 {
        return start;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        if b.get(j).is_some_and(u8::is_ascii_digit) {
            while b.get(j).is_some_and(u8::is_ascii_digit) {
                j += 1;
            }
            i = j;
        }
    }
    i
}

#[cfg(test)]
mod tests {
    #[test]
    fn literals_are_redacted_for_the_audit() {
        let (text, lits) = super::redact_literals(
            "SELECT * FROM patients WHERE ssn = '123-45-6789' AND age > 89 -- Jane Doe\n AND x = $1 /* MRN 555 */ AND n = E'O\\'Brien' AND b = $q$body$q$",
        );
        assert_eq!(
            text,
            "SELECT * FROM patients WHERE ssn = $2 AND age > $3  \n AND x = $1   AND n = $4 AND b = $5"
        );
        assert_eq!(
            lits,
            vec!["'123-45-6789'", "89", "E'O\\'Brien'", "$q$body$q$"]
        );
        // A `--` comment ends at a carriage return too, as in PostgreSQL's scanner: the literal
        // after it is redacted, not hidden in the "comment".
        let (text, lits) = super::redact_literals("SELECT 1 -- note\rAND ssn = '123-45-6789'");
        assert!(!text.contains("123-45"), "{text}");
        assert_eq!(lits, vec!["1", "'123-45-6789'"]);
        let (text, lits) = super::redact_literals("SELECT \"col1\", t1.c2 FROM t1");
        assert_eq!(text, "SELECT \"col1\", t1.c2 FROM t1");
        assert!(lits.is_empty());
    }

    use super::cache_key;

    #[test]
    fn folds_numbers_only_outside_strings_identifiers_and_comments() {
        let cases = [
            (
                "SELECT * FROM t WHERE id = 42",
                "SELECT * FROM t WHERE id = 0",
            ),
            ("SELECT 1.5e3, .5, 0x1F, 1_000", "SELECT 0, 0, 0, 0"),
            (
                "SELECT * FROM t1 WHERE c2 = $1",
                "SELECT * FROM t1 WHERE c2 = $1",
            ),
            (
                "SELECT '42', \"col 42\", E'\\'7'",
                "SELECT '42', \"col 42\", E'\\'7'",
            ),
            (
                "SELECT 1 -- 2\n, 3 /* 4 /* 5 */ 6 */",
                "SELECT 0 -- 2\n, 0 /* 4 /* 5 */ 6 */",
            ),
            ("SELECT $q$ 9 $q$, 8", "SELECT $q$ 9 $q$, 0"),
            ("COPY t TO '/tmp/9'", "COPY t TO '/tmp/9'"),
            ("SELECT a[1:2] FROM t", "SELECT a[0:0] FROM t"),
        ];
        for (input, want) in cases {
            assert_eq!(cache_key(input), want, "{input}");
        }
    }

    #[test]
    fn unterminated_tokens_do_not_panic() {
        for s in [
            "SELECT 'abc",
            "SELECT \"x",
            "SELECT $a$ 1",
            "/* 1",
            "SELECT 1e",
            "SELECT 0x",
            "$",
            "E'\\",
        ] {
            let _ = cache_key(s);
        }
    }
}
