//! Client data shown to people: every control character (C0, DEL, C1), bidirectional override
//! and invisible format character in it is made visible, so a reviewer or auditor reads exactly
//! what is there — an agent cannot rewrite a terminal line with `\r` or escape sequences, or
//! reorder text with U+202E. Used by every human-readable output (CLI tables and reports,
//! review lists, replay), and for JSON written to a terminal.

use std::borrow::Cow;

/// Whether `c` would change or hide what a terminal shows: controls, line and paragraph
/// separators, bidirectional controls, and Unicode's default-ignorable code points and blank
/// look-alikes (zero-width characters, fillers, variation selectors, tag characters that
/// smuggle invisible ASCII).
pub fn invisible(c: char) -> bool {
    c.is_control()
        || matches!(c as u32,
            0xAD | 0x034F | 0x061C | 0x115F | 0x1160 | 0x17B4 | 0x17B5 | 0x180B..=0x180F
            | 0x200B..=0x200F | 0x2028..=0x202E | 0x2060..=0x206F | 0x2800 | 0x3164
            | 0xFE00..=0xFE0F | 0xFEFF | 0xFFA0 | 0xFFF0..=0xFFFB | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A | 0xE0000..=0xE0FFF)
}

/// `text` with every invisible character shown as `\u{..}` (newlines and tabs included: a
/// value is one line).
pub fn display(text: &str) -> Cow<'_, str> {
    if !text.chars().any(invisible) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if invisible(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A JSON document with the invisible characters JSON leaves raw (DEL, C1, bidirectional
/// and zero-width characters, tag characters) escaped as `\uXXXX` (a surrogate pair beyond
/// the Basic Multilingual Plane): still the same JSON value, now safe to print.
pub fn json(doc: String) -> String {
    if !doc.chars().any(|c| c != '\n' && invisible(c)) {
        return doc;
    }
    let mut out = String::with_capacity(doc.len() + 16);
    for c in doc.chars() {
        if c != '\n' && invisible(c) {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{:04x}", u));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A Prometheus label value: `\`, `"` and newlines escaped (the text format's rule).
pub fn prometheus_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_could_deceive_a_reader_is_made_visible() {
        let forged =
            "UPDATE notes SET x = 1 WHERE id = 4\r\x1b[2KUPDATE notes SET x = 1 \u{202e}--";
        let shown = display(forged);
        assert!(!shown.chars().any(invisible), "{shown}");
        assert!(
            shown.contains("\\u{d}") && shown.contains("\\u{1b}") && shown.contains("\\u{202e}")
        );
        assert_eq!(display("SELECT 1"), "SELECT 1");
        assert_eq!(display("a\u{7f}\u{85}b"), "a\\u{7f}\\u{85}b");
        let doc = serde_json::json!({ "statement": forged }).to_string();
        let safe = json(doc.clone());
        assert!(!safe.chars().any(invisible), "{safe}");
        let back: serde_json::Value = serde_json::from_str(&safe).expect("still JSON");
        assert_eq!(back["statement"], forged, "the same value");
        // Pretty JSON keeps its own line structure.
        let pretty =
            serde_json::to_string_pretty(&serde_json::json!({"a": "\u{202e}"})).expect("json");
        assert_eq!(json(pretty).lines().count(), 3);
        // Invisible look-alikes and smuggled tag characters, in both forms.
        let smuggled = "SELECT 1\u{3164}\u{2028}\u{e0041}\u{fe0f}\u{2800}";
        assert!(!display(smuggled).chars().any(invisible));
        let doc = json(serde_json::json!({ "s": smuggled }).to_string());
        assert!(!doc.chars().any(invisible), "{doc}");
        let back: serde_json::Value = serde_json::from_str(&doc).expect("still JSON");
        assert_eq!(back["s"], smuggled);
    }
}
