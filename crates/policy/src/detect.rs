//! Content detectors: a second net for text a masked role receives.
//!
//! Masking by tags is the first net (docs/masking.md): tagged columns reach a masked role only
//! through views. But a column nobody tagged may still hold an identifier — a free-text comment,
//! a JSON document, an error quoting a value. [`scrub`] masks, in place, the identifiers it
//! recognises in such text: US Social Security numbers, North-American phone numbers, e-mail
//! addresses and IPv4 addresses (HIPAA Safe Harbor identifiers that have a shape). Names,
//! addresses and dates have no reliable shape, which is why tags stay the first net and free
//! text tagged as such is redacted whole.
//!
//! Every match is overwritten with `*` byte for byte: lengths never change, so a value can be
//! scrubbed inside a protocol message without re-framing it, and the text stays valid UTF-8
//! (only ASCII bytes are replaced). One pass; a value with none of `-`, `.`, `@` is skipped
//! after one `memchr3`.

/// Masks the identifiers found in `text`; returns how many.
pub fn scrub(text: &mut [u8]) -> usize {
    scrub_except(text, &[])
}

/// Like [`scrub`], leaving alone a match equal to one of `keep` (the caller's own identity:
/// an agent may see its own e-mail-shaped subject).
pub fn scrub_except(text: &mut [u8], keep: &[&[u8]]) -> usize {
    if memchr::memchr3(b'-', b'.', b'@', text).is_none() {
        return 0;
    }
    let mut found = 0;
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        let starts_word = i == 0 || !is_word(text[i - 1]);
        let len = if b == b'@' {
            email(text, i)
        } else if starts_word && (b.is_ascii_digit() || b == b'(') {
            ssn(text, i)
                .or_else(|| phone(text, i))
                .or_else(|| ipv4(text, i))
                .map(|end| (i, end))
        } else {
            None
        };
        match len {
            Some((start, end)) if keep.contains(&&text[start..end]) => i = end,
            Some((start, end)) => {
                for c in &mut text[start..end] {
                    if c.is_ascii_alphanumeric() {
                        *c = b'*';
                    }
                }
                found += 1;
                i = end;
            }
            None => i += 1,
        }
    }
    found
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn digits(text: &[u8], at: usize, n: usize) -> bool {
    text.len() >= at + n && text[at..at + n].iter().all(u8::is_ascii_digit)
}

/// Ends a match: the next byte may not continue a number or word.
fn ends(text: &[u8], at: usize) -> bool {
    text.get(at).is_none_or(|b| !is_word(*b))
}

/// `123-45-6789`.
fn ssn(t: &[u8], i: usize) -> Option<usize> {
    let ok = digits(t, i, 3)
        && t.get(i + 3) == Some(&b'-')
        && digits(t, i + 4, 2)
        && t.get(i + 6) == Some(&b'-')
        && digits(t, i + 7, 4)
        && ends(t, i + 11);
    ok.then_some(i + 11)
}

/// `555-123-4567`, `555.123.4567`, `(555) 123-4567`, `(555)123-4567`.
fn phone(t: &[u8], i: usize) -> Option<usize> {
    let mut at = i;
    if t[at] == b'(' {
        if !(digits(t, at + 1, 3) && t.get(at + 4) == Some(&b')')) {
            return None;
        }
        at += 5;
        if t.get(at) == Some(&b' ') {
            at += 1;
        }
    } else {
        if !digits(t, at, 3) {
            return None;
        }
        let sep = *t.get(at + 3)?;
        if sep != b'-' && sep != b'.' {
            return None;
        }
        at += 4;
    }
    let sep = *t.get(at + 3)?;
    let ok = digits(t, at, 3) && (sep == b'-' || sep == b'.') && digits(t, at + 4, 4);
    (ok && ends(t, at + 8)).then_some(at + 8)
}

/// `10.0.12.7` (each part 0–255, no more dotted parts around it).
fn ipv4(t: &[u8], i: usize) -> Option<usize> {
    // Not the tail of a longer dotted run either.
    if i > 0 && t[i - 1] == b'.' {
        return None;
    }
    let mut at = i;
    for part in 0..4 {
        let start = at;
        while at < t.len() && at - start < 3 && t[at].is_ascii_digit() {
            at += 1;
        }
        if at == start {
            return None;
        }
        let value: u32 = std::str::from_utf8(&t[start..at]).ok()?.parse().ok()?;
        if value > 255 || (at < t.len() && t[at].is_ascii_digit()) {
            return None;
        }
        if part < 3 {
            if t.get(at) != Some(&b'.') {
                return None;
            }
            at += 1;
        }
    }
    // Not part of a longer dotted run (a version string such as 1.2.3.4.5).
    let dotted_on = t.get(at) == Some(&b'.') && t.get(at + 1).is_some_and(u8::is_ascii_digit);
    (ends(t, at) && !dotted_on).then_some(at)
}

/// `jane.doe+x@example.org`: the local part and the domain (which needs a dot and a top-level
/// part of two or more letters). Returns the match's start and end.
fn email(t: &[u8], at: usize) -> Option<(usize, usize)> {
    let local = |b: u8| b.is_ascii_alphanumeric() || b"._%+-".contains(&b);
    let mut start = at;
    while start > 0 && local(t[start - 1]) {
        start -= 1;
    }
    if start == at {
        return None;
    }
    let domain = |b: u8| b.is_ascii_alphanumeric() || b == b'.' || b == b'-';
    let mut end = at + 1;
    while end < t.len() && domain(t[end]) {
        end += 1;
    }
    // A sentence's full stop is not part of the domain.
    while end > at + 1 && t[end - 1] == b'.' {
        end -= 1;
    }
    let host = &t[at + 1..end];
    let dot = host.iter().rposition(|b| *b == b'.')?;
    let tld = &host[dot + 1..];
    (dot > 0 && tld.len() >= 2 && tld.iter().all(u8::is_ascii_alphabetic)).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> String {
        let mut b = text.as_bytes().to_vec();
        scrub(&mut b);
        String::from_utf8(b).expect("utf-8")
    }

    #[test]
    fn shaped_identifiers_are_masked_in_place() {
        assert_eq!(
            s("SSN 123-45-6789, call (555) 123-4567 or 555.987.6543."),
            "SSN ***-**-****, call (***) ***-**** or ***.***.****."
        );
        assert_eq!(
            s("mail jane.doe+x@mail.example.org. ok"),
            "mail ****.***+*@****.*******.***. ok"
        );
        assert_eq!(s("from 10.0.12.7 at noon"), "from **.*.**.* at noon");
        assert_eq!(s("«Zoë» 123-45-6789 ✓"), "«Zoë» ***-**-**** ✓");
    }

    #[test]
    fn look_alikes_stay() {
        for text in [
            "tok_de0f94a1e0d967c9",
            "***-**-4789",
            "2024-03-05",
            "version 1.2.3.4.5",
            "999.1.1.1",
            "order 1234-56-7890",
            "a1123-45-6789",
            "123-45-67890",
            "x@y",
            "user@localhost",
            "ratio 3.14",
            "ICD I10 - hypertension",
        ] {
            assert_eq!(s(text), text);
        }
    }

    #[test]
    fn the_callers_own_identity_stays() {
        let mut b = b"me@demo.example, you@demo.example".to_vec();
        assert_eq!(scrub_except(&mut b, &[b"me@demo.example"]), 1);
        assert_eq!(b, b"me@demo.example, ***@****.*******".to_vec());
    }

    #[test]
    fn lengths_never_change() {
        let text = "Pt. reachable at 555-123-4567 / jo@ex.com; SSN 078-05-1120; IP 192.168.0.1";
        let mut b = text.as_bytes().to_vec();
        assert_eq!(scrub(&mut b), 4);
        assert_eq!(b.len(), text.len());
        assert!(!String::from_utf8(b).expect("utf-8").contains("1120"));
    }
}
