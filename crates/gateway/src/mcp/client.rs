//! The client end of an MCP call's internal session: a minimal PostgreSQL frontend (on
//! `phigate_wire`) over an in-memory stream to the gateway's own session handler
//! ([`crate::session::handle_internal`]). The credential goes as the password and the role as
//! the user, so authentication, policy, the masked login, audit and recording are the wire's;
//! nothing here decides what may run.
//!
//! Results are asked for in text format and read with the portal's row limit (`Execute` with
//! `max_rows`), so the database stops at the cap; values past the byte cap are not kept.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use phigate_wire::backend::{self, AuthRequest, DataRow, Fields};
use phigate_wire::frame::{put_cstr, write_message};
use phigate_wire::frontend::write;
use phigate_wire::startup::CancelKey;
use phigate_wire::{Frame, FrameReader};
use tokio::io::AsyncWriteExt;

use crate::net::Stream;
use crate::session::Origin;
use crate::state::Shared;

/// Buffer of the in-memory stream each way.
const PIPE_BYTES: usize = 64 * 1024;
/// Largest message read from the session (a DataRow of a wide row).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// Notices kept per statement, and the characters kept of each.
const MAX_NOTICES: usize = 16;
const MAX_NOTICE_CHARS: usize = 2000;
/// What the session answers a statement that waits for COPY data from the client: an MCP
/// call has none to give, and a backend waiting for it ignores `statement_timeout`.
pub const COPY_REFUSED: &str = "COPY from the client is not supported over MCP";

/// Who calls, as the internal session's startup presents it.
#[derive(Clone)]
pub struct Caller {
    /// The bearer credential, sent as the password (never logged).
    pub token: Arc<str>,
    /// The role asked for (`""`: the identity's default role).
    pub role: String,
    /// Where the HTTP call came from.
    pub peer: SocketAddr,
}

/// Why a call's statement did not give a result.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The gateway or the database refused it: the message the wire would show (already
    /// scrubbed by the session), with its SQLSTATE and hint.
    #[error("{message}")]
    Refused {
        code: String,
        message: String,
        hint: Option<String>,
    },
    /// The session could not start or ended (its FATAL, as the wire would show it).
    #[error("{0}")]
    Session(String),
    #[error("the internal session ended unexpectedly")]
    Lost,
}

impl From<std::io::Error> for CallError {
    fn from(_: std::io::Error) -> Self {
        CallError::Lost
    }
}

impl From<phigate_wire::WireError> for CallError {
    fn from(_: phigate_wire::WireError) -> Self {
        CallError::Lost
    }
}

/// One column of a result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: String,
}

/// What one statement gave back.
#[derive(Debug, Default, Clone)]
pub struct Output {
    pub columns: Vec<Column>,
    /// Values as text (NULL as `None`), at most the row cap.
    pub rows: Vec<Vec<Option<String>>>,
    /// More rows existed, or the byte cap cut them.
    pub truncated: bool,
    /// The command tag (`SELECT 3`, `UPDATE 1`).
    pub command: String,
    pub notices: Vec<String>,
}

impl Output {
    /// Rows the command reports (`UPDATE 2` → 2).
    pub fn rows_affected(&self) -> Option<u64> {
        self.command.rsplit(' ').next()?.parse().ok()
    }
}

/// Limits of one statement's result: rows kept (and asked of the portal; 0 keeps none and lets
/// the statement run to completion), and bytes of values kept (0: no limit besides the rows).
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub rows: u32,
    pub bytes: usize,
}

/// An open internal session.
pub struct Internal {
    stream: Stream,
    reader: FrameReader,
    key: Option<CancelKey>,
    pub session: Arc<str>,
}

impl Internal {
    /// Starts an internal session for `caller`, marked with `tool`, and logs in.
    pub async fn open(
        shared: &Arc<Shared>,
        caller: &Caller,
        tool: &str,
    ) -> Result<Internal, CallError> {
        let Some(db) = shared.upstream.database.clone() else {
            return Err(CallError::Session(
                "phigate: MCP needs upstream.database in the configuration".into(),
            ));
        };
        let session: Arc<str> = Arc::from(crate::audit::session_id().as_str());
        let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
        let origin = Origin {
            channel: "mcp",
            tool: tool.to_owned(),
            session: session.clone(),
        };
        shared
            .lifecycle
            .internal
            .spawn(crate::session::handle_internal(
                theirs,
                caller.peer,
                shared.clone(),
                origin,
            ));
        let mut me = Internal {
            stream: Stream::Memory(ours),
            reader: FrameReader::new(MAX_MESSAGE),
            key: None,
            session,
        };
        me.login(caller, &db).await?;
        Ok(me)
    }

    async fn login(&mut self, caller: &Caller, db: &str) -> Result<(), CallError> {
        let mut out = BytesMut::new();
        phigate_wire::startup::write_startup(
            &mut out,
            &[
                ("user", caller.role.as_str()),
                ("database", db),
                ("application_name", "phigate-mcp"),
                ("client_encoding", "UTF8"),
            ],
        );
        self.stream.write_all(&out).await?;
        loop {
            let f = self.next().await?;
            match f.tag() {
                b'R' => match backend::decode_auth(&f)? {
                    AuthRequest::Cleartext => {
                        out.clear();
                        write::password(&mut out, &caller.token);
                        self.stream.write_all(&out).await?;
                    }
                    AuthRequest::Ok => {}
                    _ => return Err(CallError::Lost),
                },
                b'K' => self.key = Some(backend::decode_backend_key(&f)?),
                b'E' => return Err(CallError::Session(fields(&f).1)),
                b'Z' => return Ok(()),
                _ => {}
            }
        }
    }

    async fn next(&mut self) -> Result<Frame, CallError> {
        crate::net::read_frame::<CallError>(&mut self.stream, &mut self.reader).await
    }

    /// The session's cancel key (a CancelRequest stops its running statement).
    pub fn cancel_key(&self) -> Option<CancelKey> {
        self.key
    }

    /// Sends a simple Query (the session's own statements: `BEGIN READ ONLY`, `ROLLBACK`) and
    /// reads its answer.
    pub async fn simple(&mut self, sql: &str) -> Result<Output, CallError> {
        let mut out = BytesMut::new();
        write::query(&mut out, sql);
        self.stream.write_all(&out).await?;
        self.read_result(Caps { rows: 0, bytes: 0 }, false).await
    }

    /// Runs one statement with the extended protocol (text parameters, text results), at
    /// most `caps.rows` rows read (the portal stops there).
    pub async fn run(
        &mut self,
        sql: &str,
        params: &[Option<String>],
        caps: Caps,
    ) -> Result<Output, CallError> {
        let mut out = BytesMut::new();
        write::parse(&mut out, "", sql);
        let mut rest = BytesMut::new();
        rest.put_i16(0); // every parameter in text format
        rest.put_i16(params.len().min(i16::MAX as usize) as i16);
        for p in params.iter().take(i16::MAX as usize) {
            match p {
                None => rest.put_i32(-1),
                Some(v) => {
                    rest.put_i32(v.len().min(i32::MAX as usize) as i32);
                    rest.extend_from_slice(v.as_bytes());
                }
            }
        }
        rest.put_i16(0); // every result column in text format
        write::bind(&mut out, "", "", &rest);
        write_message(&mut out, b'D', |b| {
            b.put_u8(b'P');
            put_cstr(b, "");
        });
        write::execute(&mut out, "", caps.rows.min(i32::MAX as u32) as i32);
        write_message(&mut out, b'S', |_| {});
        self.stream.write_all(&out).await?;
        self.read_result(caps, true).await
    }

    /// Ends a COPY from the client at once: CopyFail, and for the extended protocol a Sync
    /// (the one sent with the statement was ignored in copy-in mode, and after the error the
    /// backend skips to the next Sync); the ErrorResponse and ReadyForQuery follow.
    async fn refuse_copy_in(&mut self, extended: bool) -> Result<(), CallError> {
        let mut out = BytesMut::new();
        write_message(&mut out, b'f', |b| put_cstr(b, COPY_REFUSED));
        if extended {
            write_message(&mut out, b'S', |_| {});
        }
        self.stream.write_all(&out).await?;
        Ok(())
    }

    /// Reads until ReadyForQuery; the first ErrorResponse is the result. `extended`: the
    /// statement went as Parse/Bind/Execute/Sync.
    async fn read_result(&mut self, caps: Caps, extended: bool) -> Result<Output, CallError> {
        let mut o = Output::default();
        let mut error = None;
        let mut bytes = 0usize;
        loop {
            let f = self.next().await?;
            match f.tag() {
                b'T' => {
                    o.columns = backend::decode_row_description(&f)?
                        .iter()
                        .map(|d| Column {
                            name: d.name.to_owned(),
                            type_name: type_name(d.type_oid),
                        })
                        .collect();
                }
                b'D' => {
                    if o.truncated || o.rows.len() >= caps.rows as usize {
                        o.truncated = true;
                        continue;
                    }
                    let mut row = Vec::new();
                    for v in DataRow::decode(&f)? {
                        let v = v?.map(|b| String::from_utf8_lossy(b).into_owned());
                        bytes += v.as_ref().map_or(4, |s| s.len() + 4);
                        row.push(v);
                    }
                    if caps.bytes > 0 && bytes > caps.bytes {
                        o.truncated = true;
                    } else {
                        o.rows.push(row);
                    }
                }
                b's' => o.truncated = true,
                // CopyInResponse, CopyBothResponse: refused, never left waiting.
                b'G' | b'W' => self.refuse_copy_in(extended).await?,
                // CopyOutResponse, CopyData, CopyDone: the data is not a result of these tools
                // (each message is bounded by the reader); read on to CommandComplete.
                b'H' | b'd' | b'c' => {}
                b'C' => o.command = command_tag(&f),
                b'N' if o.notices.len() < MAX_NOTICES => {
                    let (_, msg) = fields(&f);
                    o.notices.push(msg.chars().take(MAX_NOTICE_CHARS).collect());
                }
                b'E' if error.is_none() => {
                    let fl = Fields::decode(&f)?;
                    error = Some(CallError::Refused {
                        code: fl.code().unwrap_or_default().to_owned(),
                        message: fl.message().unwrap_or_default().to_owned(),
                        hint: fl.get(b'H').map(str::to_owned),
                    });
                }
                b'Z' => {
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(o),
                    }
                }
                _ => {}
            }
        }
    }

    /// Ends the session politely.
    pub async fn close(mut self) {
        let mut out = BytesMut::new();
        write::terminate(&mut out);
        let _ = self.stream.write_all(&out).await;
        let _ = self.stream.shutdown().await;
    }
}

fn fields(f: &Frame) -> (String, String) {
    match Fields::decode(f) {
        Ok(fl) => (
            fl.code().unwrap_or_default().to_owned(),
            fl.message().unwrap_or_default().to_owned(),
        ),
        Err(_) => (String::new(), "malformed message".into()),
    }
}

fn command_tag(f: &Frame) -> String {
    let body = f.body();
    let end = body.iter().position(|b| *b == 0).unwrap_or(body.len());
    String::from_utf8_lossy(&body[..end]).into_owned()
}

/// The type's name for the common built-in types (`oid:N` for others).
pub fn type_name(oid: u32) -> String {
    let name = match oid {
        16 => "bool",
        17 => "bytea",
        18 => "char",
        19 => "name",
        20 => "int8",
        21 => "int2",
        23 => "int4",
        25 => "text",
        26 => "oid",
        114 => "json",
        700 => "float4",
        701 => "float8",
        869 => "inet",
        1042 => "bpchar",
        1043 => "varchar",
        1082 => "date",
        1083 => "time",
        1114 => "timestamp",
        1184 => "timestamptz",
        1186 => "interval",
        1700 => "numeric",
        2950 => "uuid",
        3802 => "jsonb",
        _ => return format!("oid:{oid}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use phigate_wire::sqlstate;

    /// A client over `stream`, past its login (the other end plays the session).
    fn over(stream: tokio::io::DuplexStream) -> Internal {
        Internal {
            stream: Stream::Memory(stream),
            reader: FrameReader::new(MAX_MESSAGE),
            key: None,
            session: Arc::from("test"),
        }
    }

    fn error(out: &mut BytesMut, message: &str) {
        write_message(out, b'E', |b| {
            for (f, v) in [
                (b'S', "ERROR"),
                (b'C', sqlstate::QUERY_CANCELED),
                (b'M', message),
            ] {
                b.put_u8(f);
                put_cstr(b, v);
            }
            b.put_u8(0);
        });
    }

    /// Reads frontend messages until `until`, returning their tags.
    async fn tags_until(s: &mut Stream, r: &mut FrameReader, until: u8) -> Vec<u8> {
        let mut tags = Vec::new();
        loop {
            let f = crate::net::read_frame::<CallError>(s, r)
                .await
                .expect("frame");
            tags.push(f.tag());
            if f.tag() == until {
                return tags;
            }
        }
    }

    /// A statement that asks for COPY data (CopyInResponse, CopyBothResponse) is failed at
    /// once with CopyFail and a Sync, and the call ends with the error: never left waiting.
    #[tokio::test]
    async fn copy_in_is_failed_not_waited_for() {
        for tag in [b'G', b'W'] {
            let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
            let session = tokio::spawn(async move {
                let mut s = Stream::Memory(theirs);
                let mut r = FrameReader::new(MAX_MESSAGE);
                let sent = tags_until(&mut s, &mut r, b'S').await;
                let mut out = BytesMut::new();
                write_message(&mut out, tag, |b| {
                    b.put_i8(0);
                    b.put_i16(0);
                });
                s.write_all(&out).await.expect("write");
                let failed = tags_until(&mut s, &mut r, b'S').await;
                out.clear();
                error(&mut out, COPY_REFUSED);
                write_message(&mut out, b'Z', |b| b.put_u8(b'I'));
                s.write_all(&out).await.expect("write");
                (sent, failed)
            });
            let mut c = over(ours);
            let caps = Caps { rows: 0, bytes: 0 };
            let r = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                c.run("COPY t FROM STDIN", &[], caps),
            )
            .await
            .expect("the call waited for COPY data");
            match r {
                Err(CallError::Refused { message, .. }) => assert_eq!(message, COPY_REFUSED),
                other => panic!("{other:?}"),
            }
            let (sent, failed) = session.await.expect("session");
            assert_eq!(sent, b"PBDES");
            assert_eq!(failed, b"fS");
        }
    }

    /// COPY to the client: its data is read past, not kept, and the call ends.
    #[tokio::test]
    async fn copy_out_is_read_to_its_end() {
        let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
        tokio::spawn(async move {
            let mut s = Stream::Memory(theirs);
            let mut r = FrameReader::new(MAX_MESSAGE);
            tags_until(&mut s, &mut r, b'S').await;
            let mut out = BytesMut::new();
            write_message(&mut out, b'H', |b| {
                b.put_i8(0);
                b.put_i16(0);
            });
            for _ in 0..2 {
                write_message(&mut out, b'd', |b| b.extend_from_slice(b"1\tx\n"));
            }
            write_message(&mut out, b'c', |_| {});
            write_message(&mut out, b'C', |b| put_cstr(b, "COPY 2"));
            write_message(&mut out, b'Z', |b| b.put_u8(b'I'));
            s.write_all(&out).await.expect("write");
        });
        let mut c = over(ours);
        let caps = Caps { rows: 10, bytes: 0 };
        let o = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            c.run("COPY t TO STDOUT", &[], caps),
        )
        .await
        .expect("the call hung")
        .expect("result");
        assert_eq!(o.command, "COPY 2");
        assert!(o.rows.is_empty());
    }
}
