//! One stream type for every connection the gateway holds: plain TCP or TLS, towards a client
//! or towards the database. Keeps the session code free of generics.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use phigate_wire::{Frame, FrameReader, WireError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub enum Stream {
    /// Left behind when a phase hands the real stream on; every IO on it fails.
    Detached,
    Plain(TcpStream),
    ServerTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    ClientTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// An in-process stream: a session run inside the gateway (tests, internal sessions).
    Memory(tokio::io::DuplexStream),
}

impl Stream {
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::ServerTls(_) | Stream::ClientTls(_))
    }

    /// An in-memory stream inside the gateway (an internal session): nothing it carries
    /// crosses a network.
    pub fn is_in_process(&self) -> bool {
        matches!(self, Stream::Memory(_))
    }

    /// TLS protocol version in use, for the session log.
    pub fn tls_version(&self) -> Option<&'static str> {
        let v = match self {
            Stream::Plain(_) | Stream::Detached | Stream::Memory(_) => return None,
            Stream::ServerTls(s) => s.get_ref().1.protocol_version(),
            Stream::ClientTls(s) => s.get_ref().1.protocol_version(),
        };
        v.and_then(|v| v.as_str())
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Detached => Poll::Ready(Err(detached())),
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::ServerTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::ClientTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Memory(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Detached => Poll::Ready(Err(detached())),
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::ServerTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::ClientTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Memory(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Detached => Poll::Ready(Err(detached())),
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::ServerTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::ClientTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Memory(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Detached => Poll::Ready(Err(detached())),
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::ServerTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::ClientTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Memory(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

fn detached() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "stream was handed to another phase",
    )
}

/// The read side of a [`Stream`] split for the relay. Plain TCP splits without a lock; TLS
/// shares one session state between the halves and needs tokio's locked split.
pub enum StreamRead {
    Tcp(tokio::net::tcp::OwnedReadHalf),
    Shared(tokio::io::ReadHalf<Stream>),
}

/// The write side of a [`Stream`] split for the relay.
pub enum StreamWrite {
    Tcp(tokio::net::tcp::OwnedWriteHalf),
    Shared(tokio::io::WriteHalf<Stream>),
}

impl Stream {
    pub fn split(self) -> (StreamRead, StreamWrite) {
        match self {
            Stream::Plain(tcp) => {
                let (r, w) = tcp.into_split();
                (StreamRead::Tcp(r), StreamWrite::Tcp(w))
            }
            other => {
                let (r, w) = tokio::io::split(other);
                (StreamRead::Shared(r), StreamWrite::Shared(w))
            }
        }
    }
}

impl AsyncRead for StreamRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            StreamRead::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            StreamRead::Shared(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for StreamWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            StreamWrite::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            StreamWrite::Shared(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            StreamWrite::Tcp(s) => Pin::new(s).poll_flush(cx),
            StreamWrite::Shared(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            StreamWrite::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            StreamWrite::Shared(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Reads from `stream` until `reader` holds one whole frame, and takes it. For the exchanges
/// before the relay (authentication, upstream startup, catalog reads), which go one message at
/// a time.
pub async fn read_frame<E>(stream: &mut Stream, reader: &mut FrameReader) -> Result<Frame, E>
where
    E: From<WireError> + From<io::Error>,
{
    loop {
        if let Some(f) = reader.next_frame()? {
            return Ok(f);
        }
        if stream.read_buf(reader.buf_mut()).await? == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
    }
}
