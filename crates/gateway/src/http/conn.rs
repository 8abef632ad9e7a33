//! The HTTP listener's own accept loop: a cap on connections, deadlines on every phase a client
//! controls, and nothing a slow or silent client can hold forever.
//!
//! - At most `listen.http_max_connections` at once (after the descriptor budget,
//!   [`crate::admission`]); one more gets `503` at once and is closed.
//! - A request's headers must arrive within `listen.http_header_timeout_secs`, counted from the
//!   connection (or the previous response): a half-sent request or an idle keep-alive
//!   connection is closed then.
//! - Its body must arrive within `listen.http_body_timeout_secs` ([`body_deadline`]), and a
//!   write the client does not take within that long ends the connection ([`WriteDeadline`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ApiError;

/// What a connection over the cap is told before it is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
connection: close\r\ncontent-length: 64\r\nretry-after: 1\r\n\r\n\
{\"error\":\"too many HTTP connections to the gateway; retry soon\"}";

/// Largest request body the API reads (JSON of a decision or an access request).
pub const MAX_BODY: usize = 64 * 1024;
/// The body limit of a SAML assertion consumer service (`POST /saml/{name}/acs`): a base64,
/// form-encoded response of up to `phigate_saml::MAX_RESPONSE_BYTES` (a response with many
/// groups exceeds [`MAX_BODY`]).
pub const MAX_SAML_BODY: usize = phigate_saml::MAX_RESPONSE_BYTES * 3 / 2 + 8192;

/// Where the HTTP listener's TLS comes from (`listen.http_tls`): the acceptor of the moment,
/// so a reload's new certificate serves the next handshake.
pub type TlsSource = Box<dyn Fn() -> Option<tokio_rustls::TlsAcceptor> + Send + Sync>;

/// A connection's byte stream, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Serves `app` on `listener` until `stop`; then lets requests in progress finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<TlsSource>,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let sources = crate::admission::PerSource::new(limits.per_source);
    let connections = TaskTracker::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(64 * 1024)
        .keep_alive(true);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let (Ok(slot), Ok(source)) = (
            slots.clone().try_acquire_owned(),
            sources.acquire(peer.ip()),
        ) else {
            let _ = tcp.try_write(BUSY);
            continue;
        };
        // TLS only, when configured: no certificate at hand means no connection, never
        // plain HTTP in its place.
        let acceptor = match &tls {
            None => None,
            Some(current) => match current() {
                Some(a) => Some(a),
                None => continue,
            },
        };
        let _ = tcp.set_nodelay(true);
        let tcp = WriteDeadline::new(tcp, limits.body_timeout);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let mut app = app.clone();
            async move {
                let req = req.map(axum::body::Body::new);
                tower_service::Service::call(&mut app, req).await
            }
        });
        let builder = builder.clone();
        let stop = stop.clone();
        let handshake = limits.header_timeout;
        connections.spawn(async move {
            let _slot = (slot, source);
            let io: Box<dyn Io> = match acceptor {
                None => Box::new(tcp),
                Some(a) => match tokio::time::timeout(handshake, a.accept(tcp)).await {
                    Ok(Ok(tls)) => Box::new(tls),
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "HTTP TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "HTTP TLS handshake timed out");
                        return;
                    }
                },
            };
            let conn = builder.serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => log_end(peer, r),
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
    connections.close();
    let _ = tokio::time::timeout(Duration::from_secs(6), connections.wait()).await;
}

fn log_end(peer: SocketAddr, r: Result<(), hyper::Error>) {
    if let Err(e) = r {
        tracing::debug!(%peer, error = %e, "HTTP connection ended");
    }
}

/// The HTTP listener's caps.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub per_source: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
}

/// Reads the whole request body before the handler runs, within `timeout` and [`MAX_BODY`]: a
/// client that trickles its body, or sends too much, gets a clear error.
pub async fn body_deadline(
    axum::extract::State(timeout): axum::extract::State<Duration>,
    req: Request,
    next: Next,
) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let limit = if path.starts_with("/saml/") && path.ends_with("/acs") {
        MAX_SAML_BODY
    } else {
        MAX_BODY
    };
    let bytes = match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            return ApiError::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                format!("a request body is at most {limit} bytes"),
            )
            .into_response()
        }
        Err(_) => {
            return ApiError::new(
                axum::http::StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} s",
                    timeout.as_secs()
                ),
            )
            .into_response()
        }
    };
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

/// A socket whose writes must make progress: a write that stays blocked (the client does not
/// read) for `limit` fails, and the connection ends.
pub struct WriteDeadline {
    inner: TcpStream,
    limit: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl WriteDeadline {
    pub fn new(inner: TcpStream, limit: Duration) -> WriteDeadline {
        WriteDeadline {
            inner,
            limit,
            stalled: None,
        }
    }

    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let limit = self.limit;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not read the response in time",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<T>(&mut self, r: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => self.pending(cx),
            done => {
                self.stalled = None;
                done
            }
        }
    }
}

impl AsyncRead for WriteDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress(r, cx)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.progress(r, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.progress(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progress(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
