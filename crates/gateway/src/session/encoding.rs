//! The client's encoding. PostgreSQL converts what a client sends from `client_encoding` to
//! the server's encoding before it parses anything, and converts what it sends back; the
//! gateway does the same for what it reads and writes itself: statement text (and the names a
//! message carries) is decoded to UTF-8 for analysis while the original bytes go to the
//! database, which runs with the client's encoding; the gateway's own messages are encoded
//! into the client's encoding.
//!
//! Only *ASCII-safe* encodings are accepted: those in which every byte below 0x80 is that
//! ASCII character and never part of a multibyte character (PostgreSQL's own test for a
//! server encoding). In them, quotes, backslashes, semicolons and every ASCII name mean the
//! same whatever the exact mapping of the other bytes, so the statement the gateway analyses
//! has exactly the structure of the one the database parses. The client-only encodings (SJIS,
//! SHIFT_JIS_2004, BIG5, GBK, UHC, JOHAB, GB18030) put bytes such as `\` (0x5c) and `'`
//! inside multibyte characters: refused, as are the encodings no decoder here implements
//! (EUC_TW, EUC_JIS_2004, MULE_INTERNAL). Fail closed: a decoded text whose ASCII characters
//! are not exactly the ASCII bytes of the original is refused too.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use encoding_rs::Encoding;
use phigate_wire::frame::{put_cstr, write_message};
use phigate_wire::Frame;

/// How one client encoding is read and written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Codec {
    /// UTF8, and SQL_ASCII (no conversion: the server checks the bytes as its own, UTF-8).
    Utf8,
    /// ISO 8859-1: every byte is the code point of the same value.
    Latin1,
    /// ISO 8859-9: Latin-1 but six letters; WHATWG's label maps it to windows-1254, which
    /// differs in 0x80..0x9f (C1 controls here).
    Latin5,
    /// A WHATWG encoding whose mapping PostgreSQL shares for every character it converts.
    Whatwg(&'static Encoding),
}

/// A client encoding the gateway can read and write, named as PostgreSQL reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientEncoding {
    name: &'static str,
    codec: Codec,
}

/// Why a client encoding is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsupported {
    #[error("client_encoding {0} puts ASCII bytes inside multibyte characters; phigate cannot analyse statements in it safely (use UTF8 or an encoding PostgreSQL allows as a server encoding)")]
    NotAsciiSafe(&'static str),
    #[error("client_encoding {0} is not supported by phigate (use UTF8)")]
    NoDecoder(&'static str),
    #[error("unknown client_encoding")]
    Unknown,
}

impl ClientEncoding {
    pub const UTF8: ClientEncoding = ClientEncoding {
        name: "UTF8",
        codec: Codec::Utf8,
    };

    /// PostgreSQL's canonical name (`LATIN1`, `WIN1252`, `EUC_JP`, ...).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Text arrives and leaves as UTF-8: nothing to convert.
    pub fn is_utf8(&self) -> bool {
        self.codec == Codec::Utf8
    }

    /// The encoding a name means, spelled any way PostgreSQL accepts (case and punctuation
    /// ignored, aliases such as `latin1`, `iso-8859-1`, `win1252`, `unicode`).
    pub fn lookup(name: &str) -> Result<ClientEncoding, Unsupported> {
        let clean: String = name
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let canonical = canonical(&clean).ok_or(Unsupported::Unknown)?;
        codec(canonical).map(|codec| ClientEncoding {
            name: canonical,
            codec,
        })
    }

    /// `bytes` (in this encoding) as UTF-8; `None` when they are not valid in it, or would not
    /// keep their ASCII structure.
    pub fn decode<'a>(&self, bytes: &'a [u8]) -> Option<Cow<'a, str>> {
        if bytes.is_ascii() {
            return std::str::from_utf8(bytes).ok().map(Cow::Borrowed);
        }
        let text: Cow<'a, str> = match self.codec {
            Codec::Utf8 => Cow::Borrowed(std::str::from_utf8(bytes).ok()?),
            Codec::Latin1 => Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect()),
            Codec::Latin5 => Cow::Owned(bytes.iter().map(|&b| latin5(b)).collect()),
            Codec::Whatwg(enc) => enc.decode_without_bom_handling_and_without_replacement(bytes)?,
        };
        same_ascii(bytes, &text).then_some(text)
    }

    /// `text` in this encoding; a character the encoding cannot represent becomes `?` (this
    /// is for the gateway's own messages, never for data).
    pub fn encode<'a>(&self, text: &'a str) -> Cow<'a, [u8]> {
        if text.is_ascii() || self.codec == Codec::Utf8 {
            return Cow::Borrowed(text.as_bytes());
        }
        let mut out = Vec::with_capacity(text.len());
        match self.codec {
            Codec::Utf8 => out.extend_from_slice(text.as_bytes()),
            Codec::Latin1 => out.extend(text.chars().map(|c| u8::try_from(c).unwrap_or(b'?'))),
            Codec::Latin5 => out.extend(text.chars().map(unlatin5)),
            Codec::Whatwg(enc) => encode_whatwg(enc, text, &mut out),
        }
        Cow::Owned(out)
    }

    /// A client message with every string field (statement text, statement and portal names,
    /// a CopyFail message) converted to UTF-8, for the decoder and the analyser; `Ok(None)`
    /// when the message is already UTF-8 (ASCII strings, or this is UTF8). Binary fields
    /// (parameter values, type OIDs) are copied as they are. `Err` when a string is not valid
    /// in the encoding: the message cannot be analysed.
    pub fn frame_to_utf8(&self, frame: &Frame) -> Result<Option<Frame>, Unreadable> {
        if self.is_utf8() || frame.body().is_ascii() {
            return Ok(None);
        }
        let Some(fields) = StringFields::of(frame) else {
            return Ok(None);
        };
        let texts = fields
            .strings
            .iter()
            .map(|s| self.decode(s).ok_or(Unreadable))
            .collect::<Result<Vec<_>, _>>()?;
        if texts.iter().all(|t| matches!(t, Cow::Borrowed(_))) {
            return Ok(None);
        }
        fields.rebuild(frame, &texts).map(Some)
    }

    /// The gateway's own messages (UTF-8) as the client must read them: the fields of every
    /// ErrorResponse and NoticeResponse converted; anything else copied.
    pub fn recode_own<'a>(&self, bytes: &'a [u8]) -> Cow<'a, [u8]> {
        if self.is_utf8() || bytes.is_ascii() {
            return Cow::Borrowed(bytes);
        }
        let mut out = BytesMut::with_capacity(bytes.len());
        let mut rest = bytes;
        while rest.len() >= 5 {
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            let Some(msg) = rest.get(..1 + len) else {
                break;
            };
            let tag = msg[0];
            if matches!(tag, b'E' | b'N') {
                write_message(&mut out, tag, |b| self.recode_fields(&msg[5..], b));
            } else {
                out.extend_from_slice(msg);
            }
            rest = &rest[1 + len..];
        }
        out.extend_from_slice(rest);
        Cow::Owned(out.to_vec())
    }

    fn recode_fields(&self, mut body: &[u8], out: &mut BytesMut) {
        while let Some((&field, rest)) = body.split_first() {
            out.extend_from_slice(&[field]);
            if field == 0 {
                return;
            }
            let len = memchr_nul(rest).unwrap_or(rest.len());
            let value = String::from_utf8_lossy(&rest[..len]);
            out.extend_from_slice(&self.encode(&value));
            out.extend_from_slice(&[0]);
            body = rest.get(len + 1..).unwrap_or_default();
        }
    }
}

/// Where the strings of a client message are: `skip` bytes, then `strings`, then `rest_at`.
struct StringFields<'a> {
    skip: usize,
    strings: Vec<&'a [u8]>,
    rest_at: usize,
}

impl<'a> StringFields<'a> {
    /// `None` for a message without strings, or one too short to hold them (the decoder
    /// reports that).
    fn of(frame: &'a Frame) -> Option<StringFields<'a>> {
        let (skip, n) = match frame.tag() {
            b'Q' | b'f' | b'E' => (0, 1),
            b'P' | b'B' => (0, 2),
            b'D' | b'C' => (1, 1),
            _ => return None,
        };
        let body = frame.body();
        let mut at = skip;
        let mut strings = Vec::with_capacity(n);
        for _ in 0..n {
            let rest = body.get(at..)?;
            let len = memchr_nul(rest)?;
            strings.push(&rest[..len]);
            at += len + 1;
        }
        Some(StringFields {
            skip,
            strings,
            rest_at: at,
        })
    }

    fn rebuild(&self, frame: &Frame, texts: &[Cow<'_, str>]) -> Result<Frame, Unreadable> {
        let body = frame.body();
        let mut out = BytesMut::with_capacity(frame.len() + frame.len() / 2);
        write_message(&mut out, frame.tag(), |b| {
            b.extend_from_slice(&body[..self.skip]);
            for t in texts {
                put_cstr(b, t);
            }
            b.extend_from_slice(&body[self.rest_at..]);
        });
        Frame::from_raw(out.freeze()).map_err(|_| Unreadable)
    }
}

/// Whether every string field of a client message is ASCII (then every ASCII-safe encoding
/// reads it alike).
pub fn strings_are_ascii(frame: &Frame) -> bool {
    frame.body().is_ascii()
        || StringFields::of(frame).is_none_or(|f| f.strings.iter().all(|s| s.is_ascii()))
}

/// The message with its strings made UTF-8 by replacing what is not: only to decode and
/// record a message that is then refused.
pub fn lossy_frame(frame: &Frame) -> Option<Frame> {
    let fields = StringFields::of(frame)?;
    let texts: Vec<Cow<'_, str>> = fields
        .strings
        .iter()
        .map(|s| String::from_utf8_lossy(s))
        .collect();
    fields.rebuild(frame, &texts).ok()
}

/// A string in a client message that is not valid in the session's encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreadable;

fn memchr_nul(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == 0)
}

/// Whether the ASCII characters of `text` are exactly the ASCII bytes of `bytes`, in order:
/// no ASCII byte was taken into a multibyte character and none was made up.
fn same_ascii(bytes: &[u8], text: &str) -> bool {
    bytes
        .iter()
        .filter(|b| b.is_ascii())
        .copied()
        .eq(text.bytes().filter(u8::is_ascii))
}

/// ISO 8859-9 from windows-1254, which agrees on 0xa0..0xff.
fn latin5(b: u8) -> char {
    if b < 0xa0 {
        return char::from(b);
    }
    let one = [b];
    let (text, _) = encoding_rs::WINDOWS_1254.decode_without_bom_handling(&one);
    text.chars().next().unwrap_or('\u{fffd}')
}

fn unlatin5(c: char) -> u8 {
    if (c as u32) < 0xa0 {
        return c as u8;
    }
    let mut buf = [0u8; 4];
    let (bytes, _, unmappable) = encoding_rs::WINDOWS_1254.encode(c.encode_utf8(&mut buf));
    match (&bytes[..], unmappable) {
        ([b], false) if *b >= 0xa0 => *b,
        _ => b'?',
    }
}

fn encode_whatwg(enc: &'static Encoding, text: &str, out: &mut Vec<u8>) {
    let mut encoder = enc.new_encoder();
    let mut rest = text;
    let mut buf = vec![0u8; text.len() * 4 + 16];
    loop {
        let (result, read, written) =
            encoder.encode_from_utf8_without_replacement(rest, &mut buf, true);
        out.extend_from_slice(&buf[..written]);
        rest = &rest[read..];
        match result {
            encoding_rs::EncoderResult::Unmappable(_) => out.push(b'?'),
            encoding_rs::EncoderResult::InputEmpty | encoding_rs::EncoderResult::OutputFull => {
                if rest.is_empty() {
                    return;
                }
            }
        }
    }
}

/// PostgreSQL's canonical name of an encoding name with case and punctuation removed (its
/// `pg_encname_tbl`).
fn canonical(clean: &str) -> Option<&'static str> {
    Some(match clean {
        "utf8" | "unicode" => "UTF8",
        "sqlascii" => "SQL_ASCII",
        "latin1" | "iso88591" => "LATIN1",
        "latin2" | "iso88592" => "LATIN2",
        "latin3" | "iso88593" => "LATIN3",
        "latin4" | "iso88594" => "LATIN4",
        "latin5" | "iso88599" => "LATIN5",
        "latin6" | "iso885910" => "LATIN6",
        "latin7" | "iso885913" => "LATIN7",
        "latin8" | "iso885914" => "LATIN8",
        "latin9" | "iso885915" => "LATIN9",
        "latin10" | "iso885916" => "LATIN10",
        "iso88595" => "ISO_8859_5",
        "iso88596" => "ISO_8859_6",
        "iso88597" => "ISO_8859_7",
        "iso88598" => "ISO_8859_8",
        "win1250" | "windows1250" => "WIN1250",
        "win1251" | "windows1251" | "win" => "WIN1251",
        "win1252" | "windows1252" => "WIN1252",
        "win1253" | "windows1253" => "WIN1253",
        "win1254" | "windows1254" => "WIN1254",
        "win1255" | "windows1255" => "WIN1255",
        "win1256" | "windows1256" => "WIN1256",
        "win1257" | "windows1257" => "WIN1257",
        "win1258" | "windows1258" | "abc" | "tcvn" | "tcvn5712" | "vscii" => "WIN1258",
        "win866" | "windows866" | "alt" => "WIN866",
        "win874" | "windows874" => "WIN874",
        "koi8" | "koi8r" => "KOI8R",
        "koi8u" => "KOI8U",
        "eucjp" => "EUC_JP",
        "euckr" => "EUC_KR",
        "euccn" => "EUC_CN",
        "euctw" => "EUC_TW",
        "eucjis2004" => "EUC_JIS_2004",
        "muleinternal" => "MULE_INTERNAL",
        "sjis" | "shiftjis" | "mskanji" | "win932" | "windows932" => "SJIS",
        "shiftjis2004" => "SHIFT_JIS_2004",
        "big5" | "win950" | "windows950" => "BIG5",
        "gbk" | "win936" | "windows936" => "GBK",
        "uhc" | "win949" | "windows949" => "UHC",
        "johab" => "JOHAB",
        "gb18030" => "GB18030",
        _ => return None,
    })
}

fn codec(name: &'static str) -> Result<Codec, Unsupported> {
    use encoding_rs as e;
    let enc = match name {
        "UTF8" | "SQL_ASCII" => return Ok(Codec::Utf8),
        "LATIN1" => return Ok(Codec::Latin1),
        "LATIN5" => return Ok(Codec::Latin5),
        "LATIN2" => e::ISO_8859_2,
        "LATIN3" => e::ISO_8859_3,
        "LATIN4" => e::ISO_8859_4,
        "LATIN6" => e::ISO_8859_10,
        "LATIN7" => e::ISO_8859_13,
        "LATIN8" => e::ISO_8859_14,
        "LATIN9" => e::ISO_8859_15,
        "LATIN10" => e::ISO_8859_16,
        "ISO_8859_5" => e::ISO_8859_5,
        "ISO_8859_6" => e::ISO_8859_6,
        "ISO_8859_7" => e::ISO_8859_7,
        "ISO_8859_8" => e::ISO_8859_8,
        "WIN1250" => e::WINDOWS_1250,
        "WIN1251" => e::WINDOWS_1251,
        "WIN1252" => e::WINDOWS_1252,
        "WIN1253" => e::WINDOWS_1253,
        "WIN1254" => e::WINDOWS_1254,
        "WIN1255" => e::WINDOWS_1255,
        "WIN1256" => e::WINDOWS_1256,
        "WIN1257" => e::WINDOWS_1257,
        "WIN1258" => e::WINDOWS_1258,
        "WIN866" => e::IBM866,
        "WIN874" => e::WINDOWS_874,
        "KOI8R" => e::KOI8_R,
        "EUC_JP" => e::EUC_JP,
        "EUC_KR" => e::EUC_KR,
        "SJIS" | "SHIFT_JIS_2004" | "BIG5" | "GBK" | "UHC" | "JOHAB" | "GB18030" => {
            return Err(Unsupported::NotAsciiSafe(name))
        }
        // KOI8U (0xAE, 0xBE: the WHATWG table has the KOI8-RU letters, PostgreSQL the box
        // drawing characters) and EUC_CN (GBK maps A1A4, A1AA to other characters than
        // PostgreSQL) would be read differently from the database: refused like any encoding
        // without a decoder that agrees with PostgreSQL character for character.
        _ => return Err(Unsupported::NoDecoder(name)),
    };
    Ok(Codec::Whatwg(enc))
}

/// A ParameterStatus as bytes (its value in the client's encoding): `(name, value)`.
pub fn parameter_status(frame: &Frame) -> Option<(&[u8], &[u8])> {
    let body = frame.body();
    let n = memchr_nul(body)?;
    let rest = &body[n + 1..];
    let v = memchr_nul(rest)?;
    Some((&body[..n], &rest[..v]))
}

/// A ParameterStatus frame.
pub fn write_parameter_status(name: &[u8], value: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    write_message(&mut out, b'S', |b| {
        b.extend_from_slice(name);
        b.extend_from_slice(&[0]);
        b.extend_from_slice(value);
        b.extend_from_slice(&[0]);
    });
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_postgresql_spells_them() {
        for (name, canon) in [
            ("UTF8", "UTF8"),
            ("unicode", "UTF8"),
            ("latin1", "LATIN1"),
            ("ISO-8859-1", "LATIN1"),
            ("win1252", "WIN1252"),
            ("Windows-1252", "WIN1252"),
            ("EUC_JP", "EUC_JP"),
            ("eucjp", "EUC_JP"),
            ("koi8", "KOI8R"),
            ("SQL_ASCII", "SQL_ASCII"),
        ] {
            assert_eq!(ClientEncoding::lookup(name).map(|e| e.name()), Ok(canon));
        }
        for refused in [
            "SJIS",
            "shift_jis",
            "BIG5",
            "GBK",
            "UHC",
            "GB18030",
            "JOHAB",
        ] {
            assert!(matches!(
                ClientEncoding::lookup(refused),
                Err(Unsupported::NotAsciiSafe(_))
            ));
        }
        assert!(matches!(
            ClientEncoding::lookup("EUC_TW"),
            Err(Unsupported::NoDecoder(_))
        ));
        assert_eq!(ClientEncoding::lookup("klingon"), Err(Unsupported::Unknown));
    }

    #[test]
    fn decodes_as_postgresql_converts() {
        let latin1 = ClientEncoding::lookup("LATIN1").expect("latin1");
        assert_eq!(latin1.decode(b"caf\xe9").as_deref(), Some("café"));
        // LATIN1 is ISO 8859-1, not windows-1252: 0x80 is a C1 control, not the euro sign.
        assert_eq!(latin1.decode(b"\x80").as_deref(), Some("\u{80}"));
        let win = ClientEncoding::lookup("WIN1252").expect("win1252");
        assert_eq!(win.decode(b"\x80").as_deref(), Some("€"));
        let latin5 = ClientEncoding::lookup("LATIN5").expect("latin5");
        assert_eq!(latin5.decode(b"\xdd\xfd\x80").as_deref(), Some("İı\u{80}"));
        let eucjp = ClientEncoding::lookup("EUC_JP").expect("euc_jp");
        assert_eq!(eucjp.decode(b"\xc6\xfc\xcb\xdc").as_deref(), Some("日本"));
        // Not valid EUC-JP: refused, not replaced.
        assert_eq!(eucjp.decode(b"\xc6'"), None);
        // EUC-KR as WHATWG reads it takes ASCII trail bytes (UHC): PostgreSQL's EUC_KR does
        // not, so such a text is refused.
        let euckr = ClientEncoding::lookup("EUC_KR").expect("euc_kr");
        assert_eq!(euckr.decode(b"\x81A"), None);
        assert_eq!(
            ClientEncoding::UTF8.decode(b"\xff"),
            None,
            "invalid UTF-8 is refused"
        );
    }

    #[test]
    fn encodes_the_gateways_own_text() {
        let latin1 = ClientEncoding::lookup("LATIN1").expect("latin1");
        assert_eq!(&*latin1.encode("café ☃"), b"caf\xe9 ?");
        let eucjp = ClientEncoding::lookup("EUC_JP").expect("euc_jp");
        assert_eq!(&*eucjp.encode("日本 ☃"), b"\xc6\xfc\xcb\xdc ?");
        let latin5 = ClientEncoding::lookup("LATIN5").expect("latin5");
        assert_eq!(&*latin5.encode("İ€"), b"\xdd?");
    }

    #[test]
    fn converts_the_strings_of_a_message_and_nothing_else() {
        let latin1 = ClientEncoding::lookup("LATIN1").expect("latin1");
        let mut raw = BytesMut::new();
        write_message(&mut raw, b'P', |b| {
            b.extend_from_slice(b"st\xe9\0select '\xe9'\0");
            b.extend_from_slice(&[0, 1, 0, 0, 0, 25]);
        });
        let frame = Frame::from_raw(raw.freeze()).expect("frame");
        let utf8 = latin1
            .frame_to_utf8(&frame)
            .expect("readable")
            .expect("converted");
        let mut want = BytesMut::new();
        write_message(&mut want, b'P', |b| {
            b.extend_from_slice("sté\0select 'é'\0".as_bytes());
            b.extend_from_slice(&[0, 1, 0, 0, 0, 25]);
        });
        assert_eq!(utf8.as_bytes(), &want[..]);
        let eucjp = ClientEncoding::lookup("EUC_JP").expect("euc_jp");
        let mut bad = BytesMut::new();
        write_message(&mut bad, b'Q', |b| b.extend_from_slice(b"select '\xc6'\0"));
        let frame = Frame::from_raw(bad.freeze()).expect("frame");
        assert_eq!(eucjp.frame_to_utf8(&frame).err(), Some(Unreadable));
    }

    #[test]
    fn recodes_the_gateways_errors() {
        let latin1 = ClientEncoding::lookup("LATIN1").expect("latin1");
        let mut out = BytesMut::new();
        crate::pgerror::ClientError::fatal("42501", "phigate: reading café denied")
            .encode(&mut out);
        let recoded = latin1.recode_own(&out);
        let needle: &[u8] = b"reading caf\xe9 denied\0";
        assert!(recoded.windows(needle.len()).any(|w| w == needle));
        let len = u32::from_be_bytes([recoded[1], recoded[2], recoded[3], recoded[4]]) as usize;
        assert_eq!(len + 1, recoded.len(), "re-framed");
    }
}
