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
                    .position(|&x| x == b'\n')
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
