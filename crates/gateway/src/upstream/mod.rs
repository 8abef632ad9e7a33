//! Opening the session's connection to the database with the gateway's credentials:
//! TCP, optional TLS, StartupMessage, then SCRAM-SHA-256, md5, cleartext or trust, up to the
//! first ReadyForQuery.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use phigate_wire::backend::{self, decode_auth, AuthRequest, Fields};
use phigate_wire::frontend::write;
use phigate_wire::startup::{write_ssl_request, write_startup, CancelKey};
use phigate_wire::{Frame, FrameReader, WireError};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cancel::UpstreamKey;
use crate::net::Stream;

/// Largest message accepted from the database (a DataRow may carry up to 1 GiB values).
pub const MAX_UPSTREAM_MESSAGE: usize = (1 << 30) + (1 << 20);

/// Where and how to reach the database. Built once from the config.
#[derive(Clone)]
pub struct UpstreamTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub database: Option<String>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub connect_timeout: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot reach the database at {addr}: {source}")]
    Unreachable {
        addr: String,
        source: std::io::Error,
    },
    #[error("timed out connecting to the database")]
    Timeout,
    #[error("the database does not accept TLS")]
    TlsRefused,
    #[error("TLS with the database failed: {0}")]
    Tls(std::io::Error),
    #[error("the database rejected the gateway's login: {0}")]
    AuthFailed(String),
    #[error("the database asks for an authentication method the gateway does not support ({0})")]
    UnsupportedAuth(String),
    /// An ErrorResponse during startup, kept whole so the caller can decide what the client
    /// may see of it.
    #[error("the database refused the connection: {code} {message}")]
    Refused { code: String, message: String },
    #[error("protocol error from the database: {0}")]
    Protocol(#[from] WireError),
    #[error("connection to the database lost: {0}")]
    Io(#[from] std::io::Error),
}

/// An authenticated, ready database connection.
pub struct UpstreamConn {
    pub stream: Stream,
    pub reader: FrameReader,
    pub addr: SocketAddr,
    pub key: UpstreamKey,
    /// ParameterStatus frames from startup, to replay to the client verbatim.
    pub parameter_status: Vec<Frame>,
    pub tls_version: Option<&'static str>,
}

impl UpstreamTarget {
    /// The database of the `[upstream]` section: the only place a target is built from the
    /// config (password resolved from its file or environment, TLS as configured).
    pub fn from_config(up: &crate::config::Upstream) -> anyhow::Result<UpstreamTarget> {
        Ok(UpstreamTarget {
            host: up.host.clone(),
            port: up.port,
            user: up.user.clone(),
            password: up.resolve_password()?,
            database: up.database.clone(),
            tls: crate::tls::upstream_config(up.tls, up.ca_file.as_deref())?,
            connect_timeout: up.connect_timeout(),
        })
    }

    /// The same database, reached with another login (a masked role's).
    pub fn with_login(&self, user: &str, password: &str) -> UpstreamTarget {
        UpstreamTarget {
            user: user.to_owned(),
            password: Some(password.to_owned()),
            ..self.clone()
        }
    }

    pub async fn connect(&self, params: &[(&str, &str)]) -> Result<UpstreamConn, UpstreamError> {
        match tokio::time::timeout(self.connect_timeout, self.connect_inner(params)).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout),
        }
    }

    async fn connect_inner(&self, params: &[(&str, &str)]) -> Result<UpstreamConn, UpstreamError> {
        let addr_text = format!("{}:{}", self.host, self.port);
        let tcp =
            TcpStream::connect(&addr_text)
                .await
                .map_err(|source| UpstreamError::Unreachable {
                    addr: addr_text.clone(),
                    source,
                })?;
        tcp.set_nodelay(true)?;
        let addr = tcp.peer_addr()?;
        let mut stream = match &self.tls {
            None => Stream::Plain(tcp),
            Some(config) => self.start_tls(tcp, config.clone()).await?,
        };
        let tls_version = stream.tls_version();

        let mut out = BytesMut::with_capacity(512);
        let mut startup: Vec<(&str, &str)> = vec![("user", &self.user)];
        // The configured database wins; otherwise the one the client asked for.
        let client_db = params
            .iter()
            .find(|(k, _)| *k == "database")
            .map(|(_, v)| *v);
        if let Some(db) = self.database.as_deref().or(client_db) {
            startup.push(("database", db));
        }
        startup.extend(
            params
                .iter()
                .filter(|(k, _)| *k != "user" && *k != "database"),
        );
        write_startup(&mut out, &startup);
        stream.write_all(&out).await?;

        let mut reader = FrameReader::new(MAX_UPSTREAM_MESSAGE);
        self.authenticate(&mut stream, &mut reader).await?;

        let mut parameter_status = Vec::new();
        let mut key = None;
        loop {
            let frame = next(&mut stream, &mut reader).await?;
            match frame.tag() {
                backend::tag::PARAMETER_STATUS => parameter_status.push(frame),
                backend::tag::BACKEND_KEY_DATA => key = Some(backend::decode_backend_key(&frame)?),
                backend::tag::READY_FOR_QUERY => break,
                backend::tag::ERROR_RESPONSE => return Err(refused(&frame)),
                // Startup notices (e.g. about settings) are not the client's concern.
                backend::tag::NOTICE_RESPONSE => {}
                backend::tag::NEGOTIATE_PROTOCOL_VERSION => {}
                other => return Err(WireError::UnexpectedTag(other).into()),
            }
        }
        let key = key.unwrap_or(CancelKey { pid: 0, secret: 0 });
        Ok(UpstreamConn {
            stream,
            reader,
            addr,
            key: UpstreamKey(key),
            parameter_status,
            tls_version,
        })
    }

    /// Runs one query on a fresh connection and returns its first column as text. For the
    /// gateway's own catalog lookups.
    pub async fn query_column(&self, sql: &str) -> Result<Vec<String>, UpstreamError> {
        // Bounded as a whole: a catalog read that hangs must not hold up the sessions waiting
        // for it.
        match tokio::time::timeout(self.connect_timeout * 2, self.query_column_inner(sql)).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout),
        }
    }

    async fn query_column_inner(&self, sql: &str) -> Result<Vec<String>, UpstreamError> {
        // Names resolve in pg_catalog only: a function planted in a schema on the login's
        // search_path cannot capture the gateway's catalog reads or provisioning.
        let mut conn = self
            .connect(&[
                ("application_name", "phigate catalog"),
                ("search_path", "pg_catalog, pg_temp"),
                ("standard_conforming_strings", "on"),
            ])
            .await?;
        let mut out = BytesMut::new();
        write::query(&mut out, sql);
        conn.stream.write_all(&out).await?;
        let mut values = Vec::new();
        loop {
            let frame = next(&mut conn.stream, &mut conn.reader).await?;
            match frame.tag() {
                backend::tag::DATA_ROW => {
                    if let Some(Ok(Some(v))) = backend::DataRow::decode(&frame)?.next() {
                        values.push(String::from_utf8_lossy(v).into_owned());
                    }
                }
                backend::tag::ERROR_RESPONSE => return Err(refused(&frame)),
                backend::tag::READY_FOR_QUERY => break,
                _ => {}
            }
        }
        out.clear();
        write::terminate(&mut out);
        let _ = conn.stream.write_all(&out).await;
        Ok(values)
    }

    /// Runs `steps` in order on one fresh connection (the gateway's own provisioning), each
    /// its own message; stops at the first error, and the connection ends (an open transaction
    /// is rolled back). A [`Step::CopyIn`] carries data the statement text must not: it goes
    /// in CopyData, which the server never logs (a failing statement's text is logged under
    /// the default `log_min_error_statement`, and shown in `pg_stat_activity`).
    pub async fn run_steps(&self, steps: &[Step<'_>]) -> Result<(), UpstreamError> {
        let mut conn = self
            .connect(&[
                ("application_name", "phigate provisioning"),
                ("search_path", "pg_catalog, pg_temp"),
                ("standard_conforming_strings", "on"),
            ])
            .await?;
        let mut out = BytesMut::new();
        for step in steps {
            out.clear();
            let (sql, data) = match step {
                Step::Sql(sql) => (*sql, None),
                Step::CopyIn { sql, data } => (*sql, Some(*data)),
            };
            write::query(&mut out, sql);
            conn.stream.write_all(&out).await?;
            let mut failed = None;
            loop {
                let frame = next(&mut conn.stream, &mut conn.reader).await?;
                match frame.tag() {
                    backend::tag::COPY_IN_RESPONSE => {
                        out.clear();
                        match data {
                            Some(d) => {
                                write::copy_data(&mut out, d);
                                write::copy_done(&mut out);
                            }
                            None => write::copy_fail(&mut out, "no data for this COPY"),
                        }
                        conn.stream.write_all(&out).await?;
                    }
                    backend::tag::ERROR_RESPONSE => failed = Some(refused(&frame)),
                    backend::tag::READY_FOR_QUERY => break,
                    _ => {}
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
        }
        out.clear();
        write::terminate(&mut out);
        let _ = conn.stream.write_all(&out).await;
        Ok(())
    }

    async fn start_tls(
        &self,
        mut tcp: TcpStream,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<Stream, UpstreamError> {
        let mut out = BytesMut::with_capacity(8);
        write_ssl_request(&mut out);
        tcp.write_all(&out).await?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await?;
        if answer[0] != b'S' {
            return Err(UpstreamError::TlsRefused);
        }
        let name = ServerName::try_from(self.host.clone())
            .map_err(|e| UpstreamError::Tls(std::io::Error::other(e.to_string())))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(UpstreamError::Tls)?;
        Ok(Stream::ClientTls(Box::new(tls)))
    }

    async fn authenticate(
        &self,
        stream: &mut Stream,
        reader: &mut FrameReader,
    ) -> Result<(), UpstreamError> {
        let mut out = BytesMut::with_capacity(256);
        let mut scram: Option<ScramSha256> = None;
        loop {
            let frame = next(stream, reader).await?;
            match frame.tag() {
                backend::tag::AUTHENTICATION => {}
                backend::tag::ERROR_RESPONSE => {
                    let fields = Fields::decode(&frame)?;
                    let code = fields.code().unwrap_or("");
                    // 28P01 / 28000: our credentials or pg_hba; anything else may be meant
                    // for the client (database missing, too many connections, starting up).
                    if code.starts_with("28") {
                        return Err(UpstreamError::AuthFailed(
                            fields.message().unwrap_or_default().to_owned(),
                        ));
                    }
                    return Err(refused(&frame));
                }
                other => return Err(WireError::UnexpectedTag(other).into()),
            }
            out.clear();
            match decode_auth(&frame)? {
                AuthRequest::Ok => return Ok(()),
                AuthRequest::Cleartext => write::password(&mut out, self.password()?),
                AuthRequest::Md5 { salt } => {
                    let hash = postgres_protocol::authentication::md5_hash(
                        self.user.as_bytes(),
                        self.password()?.as_bytes(),
                        salt,
                    );
                    write::password(&mut out, &hash);
                }
                AuthRequest::Sasl { mechanisms } => {
                    if !mechanisms.contains(&SCRAM_SHA_256) {
                        return Err(UpstreamError::UnsupportedAuth(mechanisms.join(", ")));
                    }
                    let s = ScramSha256::new(
                        self.password()?.as_bytes(),
                        ChannelBinding::unsupported(),
                    );
                    write::sasl_initial(&mut out, SCRAM_SHA_256, s.message());
                    scram = Some(s);
                }
                AuthRequest::SaslContinue(data) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| sasl_out_of_order("SASLContinue"))?;
                    s.update(data)
                        .map_err(|e| UpstreamError::AuthFailed(e.to_string()))?;
                    write::sasl_response(&mut out, s.message());
                }
                AuthRequest::SaslFinal(data) => {
                    let mut s = scram.take().ok_or_else(|| sasl_out_of_order("SASLFinal"))?;
                    // Verifies the server's signature: a server that does not know our
                    // password cannot pretend to be the database.
                    s.finish(data)
                        .map_err(|e| UpstreamError::AuthFailed(e.to_string()))?;
                    continue;
                }
                AuthRequest::Other(code) => {
                    return Err(UpstreamError::UnsupportedAuth(format!("method {code}")))
                }
            }
            stream.write_all(&out).await?;
        }
    }

    fn password(&self) -> Result<&str, UpstreamError> {
        self.password.as_deref().ok_or_else(|| {
            UpstreamError::AuthFailed(
                "the database asks for a password and none is configured".into(),
            )
        })
    }
}

/// One message of [`UpstreamTarget::run_steps`].
pub enum Step<'a> {
    /// Statements, as one simple query.
    Sql(&'a str),
    /// A `COPY ... FROM STDIN` and its data (text format).
    CopyIn { sql: &'a str, data: &'a [u8] },
}

fn sasl_out_of_order(what: &str) -> UpstreamError {
    UpstreamError::AuthFailed(format!("{what} out of order"))
}

fn refused(frame: &Frame) -> UpstreamError {
    match Fields::decode(frame) {
        Ok(f) => UpstreamError::Refused {
            code: f
                .code()
                .unwrap_or(phigate_wire::sqlstate::INTERNAL_ERROR)
                .to_owned(),
            message: f.message().unwrap_or_default().to_owned(),
        },
        Err(e) => e.into(),
    }
}

async fn next(stream: &mut Stream, reader: &mut FrameReader) -> Result<Frame, UpstreamError> {
    crate::net::read_frame(stream, reader).await
}
