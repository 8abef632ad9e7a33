//! Structured logs with `tracing`: human-readable text by default, JSON lines for collectors.
//!
//! Logged values come from clients too (a startup parameter's name before anyone is
//! authenticated, a break-glass reason): in text format every field and the message have their
//! control characters escaped, so a value with a newline cannot forge a log line of its own.
//! JSON escapes them already.

use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::format::FormatFields;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::text::invisible;

/// Installs the global subscriber. `RUST_LOG` wins over the configured level.
pub fn init(format: LogFormat, level: Option<&str>) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(level.unwrap_or("info")));
    use std::io::IsTerminal;
    // Colour only for a person at a terminal; files and collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.fmt_fields(text_fields()).try_init(),
    };
}

/// The text format's fields: `name=value` separated by spaces, the message bare. A value with
/// a space, `=`, a quote or a backslash in it is quoted (`name="a b"`), so one value cannot
/// pose as several fields; every invisible character (controls, line separators,
/// bidirectional and zero-width characters) is escaped (`\n`, `\u{202e}`), and a backslash is
/// doubled, so an escape in the log always means the gateway wrote it.
pub fn text_fields() -> impl for<'w> FormatFields<'w> + Send + Sync + 'static {
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        let raw = format!("{value:?}");
        if field.name() == "message" {
            return w.write_str(&escape_controls(&raw));
        }
        // `?value` of a string is already quoted and escaped by Debug.
        let debug_quoted = raw.len() >= 2 && raw.starts_with('"') && raw.ends_with('"');
        let plain = !raw.is_empty()
            && !raw
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, '"' | '=' | '\\') || invisible(c));
        if debug_quoted {
            write!(w, "{}={}", field.name(), escape_invisible(&raw))
        } else if plain {
            write!(w, "{}={raw}", field.name())
        } else {
            let quoted = escape_controls(&raw).replace('"', "\\\"");
            write!(w, "{}=\"{quoted}\"", field.name())
        }
    })
    .delimited(" ")
}

/// `s` with each backslash doubled and each invisible character escaped.
pub fn escape_controls(s: &str) -> String {
    escape_invisible(&s.replace('\\', "\\\\"))
}

/// `s` with each invisible character (controls, line and paragraph separators, bidirectional
/// and zero-width characters) written as an escape.
fn escape_invisible(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if invisible(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn no_value_can_start_a_log_line_of_its_own() {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .fmt_fields(text_fields())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let forged = "x\n2026-01-01T00:00:00Z  INFO phigate: forged\r\u{1b}[2K";
            tracing::info!(name = %forged, debug = ?forged, plain = forged, "message {forged}");
        });
        let text = String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf8");
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("name=\"x\\n2026"), "{text}");
        assert!(text.contains("message x\\n2026"), "{text}");
        assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text}");
    }

    #[test]
    fn no_value_can_pose_as_another_field_or_hide_what_it_says() {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .fmt_fields(text_fields())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let spoof = "x role=admin subject=root";
            let hidden = "evil\u{202e}txt.exe\u{200b}";
            let slash = "a\\nb";
            tracing::info!(user = %spoof, name = %hidden, path = %slash, plain = "ok", "m");
        });
        let text = String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf8");
        assert!(
            text.contains("user=\"x role=admin subject=root\""),
            "{text}"
        );
        assert!(
            text.contains("name=\"evil\\u{202e}txt.exe\\u{200b}\""),
            "{text}"
        );
        // A literal backslash-n is not a newline the gateway escaped.
        assert!(text.contains("path=\"a\\\\nb\""), "{text}");
        assert!(text.contains("plain=\"ok\""), "{text}");
    }
}
