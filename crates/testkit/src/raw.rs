//! A client speaking the PostgreSQL protocol by hand, to see what drivers hide: every message
//! and byte the gateway sends (transaction status, command tags, exactly which messages answer
//! a pipeline, what a refused login receives), and to send what no driver would.
//!
//! Built on `phigate-wire`: frames are cut by its `FrameReader` and well-formed frontend
//! messages written by its writers; [`message`] frames any bytes for tests that need a message
//! no writer would make.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::BytesMut;
use phigate_wire::frame::write_message;
use phigate_wire::frontend::write;
use phigate_wire::startup::{write_cancel, write_startup, CancelKey};
use phigate_wire::FrameReader;

use crate::{Gateway, DATABASE};

/// One backend message: its type byte and body.
#[derive(Clone)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Msg {
    /// Fields of an ErrorResponse / NoticeResponse.
    pub fn fields(&self) -> Vec<(u8, String)> {
        let mut out = Vec::new();
        let mut rest = &self.body[..];
        while let Some((&t, r)) = rest.split_first() {
            if t == 0 {
                break;
            }
            let end = r.iter().position(|&b| b == 0).unwrap_or(r.len());
            out.push((t, String::from_utf8_lossy(&r[..end]).into_owned()));
            rest = r.get(end + 1..).unwrap_or(&[]);
        }
        out
    }

    /// One field of an ErrorResponse / NoticeResponse (empty when absent).
    pub fn field(&self, t: u8) -> String {
        self.fields()
            .into_iter()
            .find(|(k, _)| *k == t)
            .map(|(_, v)| v)
            .unwrap_or_default()
    }

    pub fn severity(&self) -> String {
        self.field(b'S')
    }

    pub fn code(&self) -> String {
        self.field(b'C')
    }

    pub fn message(&self) -> String {
        self.field(b'M')
    }

    /// The code of an Authentication message (0 = ok, 3 = cleartext password, ...).
    pub fn auth_code(&self) -> Option<i32> {
        (self.tag == b'R' && self.body.len() >= 4)
            .then(|| i32::from_be_bytes([self.body[0], self.body[1], self.body[2], self.body[3]]))
    }

    /// (name, value) of a ParameterStatus.
    pub fn parameter(&self) -> Option<(String, String)> {
        if self.tag != b'S' {
            return None;
        }
        let mut parts = self.body.split(|&b| b == 0);
        let name = String::from_utf8_lossy(parts.next()?).into_owned();
        let value = String::from_utf8_lossy(parts.next()?).into_owned();
        Some((name, value))
    }

    /// The first column of a DataRow, as text.
    pub fn first_column(&self) -> Option<String> {
        if self.tag != b'D' || self.body.len() < 6 {
            return None;
        }
        let len = i32::from_be_bytes([self.body[2], self.body[3], self.body[4], self.body[5]]);
        let len = usize::try_from(len).ok()?;
        let value = self.body.get(6..6 + len)?;
        Some(String::from_utf8_lossy(value).into_owned())
    }

    /// ReadyForQuery's transaction status: `I`, `T` or `E`.
    pub fn status(&self) -> char {
        assert_eq!(self.tag, b'Z', "{self:?}");
        char::from(self.body[0])
    }

    /// CommandComplete's tag.
    pub fn command(&self) -> String {
        assert_eq!(self.tag, b'C', "{self:?}");
        String::from_utf8_lossy(self.body.strip_suffix(&[0]).unwrap_or(&self.body)).into_owned()
    }
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = String::from_utf8_lossy(&self.body).replace('\0', "|");
        write!(f, "{}:{text}", char::from(self.tag))
    }
}

impl std::fmt::Display for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.tag == b'E' || self.tag == b'N' {
            write!(f, "{}{:?}", char::from(self.tag), self.fields())
        } else {
            write!(f, "{}({} bytes)", char::from(self.tag), self.body.len())
        }
    }
}

/// Messages as `T(.. bytes), E[(83, "ERROR"), ..]` for assertion messages.
pub fn show(msgs: &[Msg]) -> String {
    msgs.iter()
        .map(Msg::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The type bytes of the messages, e.g. `1tZ`.
pub fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(|m| char::from(m.tag)).collect()
}

fn bytes_of(write: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
    let mut out = BytesMut::new();
    write(&mut out);
    out.to_vec()
}

/// Any message: `tag`, length, `body` as given (well-formed or not).
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    bytes_of(|out| write_message(out, tag, |b| b.extend_from_slice(body)))
}

/// `s` with its terminating NUL.
pub fn cstring(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// A StartupMessage (protocol 3.0) with these parameters.
pub fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    bytes_of(|out| write_startup(out, params))
}

/// A CancelRequest for this backend key.
pub fn cancel_packet(pid: i32, secret: i32) -> Vec<u8> {
    bytes_of(|out| write_cancel(out, CancelKey { pid, secret }))
}

/// A simple Query.
pub fn query(sql: &str) -> Vec<u8> {
    bytes_of(|out| write::query(out, sql))
}

/// A PasswordMessage.
pub fn password(password: &str) -> Vec<u8> {
    bytes_of(|out| write::password(out, password))
}

/// A Parse with no parameter types.
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    bytes_of(|out| write::parse(out, name, sql))
}

/// A Bind with no formats, no parameters, no result formats.
pub fn bind(portal: &str, statement: &str) -> Vec<u8> {
    bytes_of(|out| write::bind(out, portal, statement, &[0, 0, 0, 0, 0, 0]))
}

/// An Execute with no row limit.
pub fn execute(portal: &str) -> Vec<u8> {
    bytes_of(|out| write::execute(out, portal, 0))
}

/// A Describe of a prepared statement.
pub fn describe_statement(name: &str) -> Vec<u8> {
    bytes_of(|out| write::describe_statement(out, name))
}

/// A Close of a prepared statement.
pub fn close_statement(name: &str) -> Vec<u8> {
    bytes_of(|out| write::close_statement(out, name))
}

/// A Sync.
pub fn sync() -> Vec<u8> {
    bytes_of(|out| write_message(out, b'S', |_| {}))
}

/// Parse / Bind / Execute of one statement, unnamed.
pub fn pbe(sql: &str) -> Vec<u8> {
    [parse("", sql), bind("", ""), execute("")].concat()
}

/// A connection to the gateway. Every byte the gateway sends is kept, so a test can check that
/// no secret ever reached the client.
pub struct Raw {
    s: TcpStream,
    frames: FrameReader,
    received: Vec<u8>,
}

impl Raw {
    /// Connects to the gateway on `port` (nothing sent yet).
    pub fn connect(port: u16) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the gateway");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("read timeout");
        s.set_write_timeout(Some(Duration::from_secs(10)))
            .expect("write timeout");
        s.set_nodelay(true).expect("nodelay");
        Raw {
            s,
            frames: FrameReader::new(1 << 30),
            received: Vec::new(),
        }
    }

    /// Logged in as `identity` (its role as the startup user, the demo database).
    pub fn login(gw: &Gateway, identity: &str) -> Raw {
        Raw::try_login(gw, identity, &[]).unwrap_or_else(|msgs| panic!("login: {msgs:?}"))
    }

    /// Logs in with extra startup parameters; `Err` holds the error that refused the login.
    pub fn try_login(
        gw: &Gateway,
        identity: &str,
        params: &[(&str, &str)],
    ) -> Result<Raw, Vec<Msg>> {
        let mut raw = Raw::connect(gw.pg_port);
        let all: Vec<(&str, &str)> = [("user", Gateway::role(identity)), ("database", DATABASE)]
            .into_iter()
            .chain(params.iter().copied())
            .collect();
        raw.send(&startup_packet(&all));
        let auth = raw.read();
        if auth.tag == b'E' {
            return Err(vec![auth]);
        }
        assert_eq!(
            (auth.tag, &auth.body[..]),
            (b'R', &[0, 0, 0, 3][..]),
            "cleartext password asked"
        );
        raw.send(&password(gw.token(identity)));
        let mut msgs = Vec::new();
        loop {
            let m = raw.read();
            match m.tag {
                b'E' => {
                    msgs.push(m);
                    return Err(msgs);
                }
                b'Z' => return Ok(raw),
                _ => msgs.push(m),
            }
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("send to the gateway");
    }

    /// Sends what the gateway may refuse to read whole (it may close the connection first).
    pub fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.s.write_all(bytes)
    }

    /// Reads exactly `buf.len()` bytes, framed or not (the one-byte answer to an SSLRequest);
    /// false if the gateway closed the connection first.
    pub fn fill(&mut self, buf: &mut [u8]) -> bool {
        let mut got = 0;
        while got < buf.len() {
            let pending = self.frames.buf_mut();
            if !pending.is_empty() {
                let n = pending.len().min(buf.len() - got);
                buf[got..got + n].copy_from_slice(&pending.split_to(n));
                got += n;
                continue;
            }
            if !self.read_more() {
                return false;
            }
        }
        true
    }

    /// Reads what the socket has into the frame buffer; false once the gateway has closed the
    /// connection.
    fn read_more(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.s.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    self.received.extend_from_slice(&chunk[..n]);
                    self.frames.buf_mut().extend_from_slice(&chunk[..n]);
                    return true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    return false
                }
                Err(e) => panic!(
                    "the gateway neither answered nor closed the connection: {e}; \
                     received so far: {:?}",
                    self.received_text()
                ),
            }
        }
    }

    /// The next message, or `None` once the gateway has closed the connection.
    pub fn read_msg(&mut self) -> Option<Msg> {
        loop {
            match self.frames.next_frame() {
                Ok(Some(frame)) => {
                    return Some(Msg {
                        tag: frame.tag(),
                        body: frame.body().to_vec(),
                    })
                }
                Ok(None) => {}
                Err(e) => panic!(
                    "a malformed message from the gateway: {e}; received so far: {:?}",
                    self.received_text()
                ),
            }
            if !self.read_more() {
                return None;
            }
        }
    }

    /// The next message; the gateway must not have closed the connection.
    pub fn read(&mut self) -> Msg {
        self.read_msg()
            .unwrap_or_else(|| panic!("the gateway closed the connection"))
    }

    /// Messages up to and including ReadyForQuery (true), or up to the close (false).
    pub fn read_until_ready(&mut self) -> (Vec<Msg>, bool) {
        let mut msgs = Vec::new();
        while let Some(m) = self.read_msg() {
            let ready = m.tag == b'Z';
            msgs.push(m);
            if ready {
                return (msgs, true);
            }
        }
        (msgs, false)
    }

    /// Every message up to and including the next ReadyForQuery.
    pub fn until_ready(&mut self) -> Vec<Msg> {
        let (msgs, ready) = self.read_until_ready();
        assert!(
            ready,
            "the gateway closed the connection before ReadyForQuery: {}",
            show(&msgs)
        );
        msgs
    }

    /// Messages until the gateway closes the connection.
    pub fn read_until_closed(&mut self) -> Vec<Msg> {
        let mut msgs = Vec::new();
        while let Some(m) = self.read_msg() {
            msgs.push(m);
        }
        msgs
    }

    /// A simple Query (any bytes; a NUL is added) and its answer up to ReadyForQuery.
    pub fn query<S: AsRef<[u8]> + ?Sized>(&mut self, sql: &S) -> Vec<Msg> {
        let mut body = sql.as_ref().to_vec();
        body.push(0);
        self.send(&message(b'Q', &body));
        let (msgs, ready) = self.read_until_ready();
        assert!(ready, "no ReadyForQuery after a query: {}", show(&msgs));
        msgs
    }

    /// Every byte received so far.
    pub fn received(&self) -> &[u8] {
        &self.received
    }

    pub fn received_text(&self) -> String {
        String::from_utf8_lossy(&self.received).into_owned()
    }
}
