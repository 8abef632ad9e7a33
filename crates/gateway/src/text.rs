//! Client data shown to people: every control character (C0, DEL, C1), bidirectional override
//! and invisible format character in it is made visible, so a reviewer or auditor reads exactly
//! what is there — an agent cannot rewrite a terminal line with `\r` or escape sequences, or
//! reorder text with U+202E. Used by every human-readable output (CLI tables and reports,
//! review lists, replay), and for JSON written to a terminal.

use std::borrow::Cow;

/// Whether `c` would change or hide what a terminal shows.
pub fn invisible(c: char) -> bool {
    c.is_control()
        || matches!(c as u32,
            0xAD | 0x061C | 0x180E | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x206F
            | 0xFEFF | 0xFFF9..=0xFFFB)
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
/// and zero-width characters) escaped as `\uXXXX`: still the same JSON value, now safe to
/// print. (Every such character is in the Basic Multilingual Plane.)
pub fn json(doc: String) -> String {
    if !doc.chars().any(|c| c != '\n' && invisible(c)) {
        return doc;
    }
    let mut out = String::with_capacity(doc.len() + 16);
    for c in doc.chars() {
        if c != '\n' && invisible(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
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
    }
}
