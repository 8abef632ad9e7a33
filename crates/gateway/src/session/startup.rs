//! Startup: SSLRequest / GSSENCRequest / CancelRequest / StartupMessage, the token, the
//! role, the database session, and the first ReadyForQuery.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use phigate_wire::backend;
use phigate_wire::frontend::FrontendMessage;
use phigate_wire::startup::{parse_startup, StartupMessage, StartupPacket, MAX_STARTUP_PACKET};
use phigate_wire::{FrameReader, WireError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{guard, Ready, SessionError, MAX_AUTH_MESSAGE};
use crate::auth::Identity;
use crate::cancel::FrontendKey;
use crate::net::Stream;
use crate::state::Shared;

pub(super) async fn start(
    stream: &mut Stream,
    peer: SocketAddr,
    shared: &Shared,
    origin: Option<&super::Origin>,
) -> Result<Option<Ready>, SessionError> {
    let Some((startup, leftover)) = negotiate(stream, peer, shared).await? else {
        return Ok(None);
    };
    // An in-memory stream never leaves the process: its token crossed no network here.
    let plaintext_ok = stream.is_in_process()
        || (shared.listen.allow_plaintext_loopback && peer.ip().is_loopback());
    if !stream.is_tls() && !plaintext_ok {
        return Err(SessionError::Startup(
            "TLS is required (tokens must not travel in plaintext); connect with sslmode=require",
        ));
    }
    let mut out = BytesMut::with_capacity(1024);
    if startup.minor > 0 {
        // We speak 3.0; tell a newer client so, as PostgreSQL does.
        let unknown: Vec<&str> = startup
            .params
            .iter()
            .filter(|(k, _)| k.starts_with("_pq_."))
            .map(|(k, _)| k.as_str())
            .collect();
        backend::write_negotiate_protocol(&mut out, 0, &unknown);
    }
    let params = forwarded_params(&startup)?;
    let mut reader = FrameReader::with_buffer(leftover, MAX_AUTH_MESSAGE);
    let identity = authenticate(stream, &mut reader, &mut out, &startup, peer, shared).await?;

    shared.policy.store.ensure_catalog(&shared.upstream).await;
    let (policy, version) = shared.policy.store.snapshot();
    let role = policy.role(&identity.role.0).ok_or(SessionError::Startup(
        "the role has no policy; ask an administrator",
    ))?;
    let mut params = params;
    role_settings(&role, &mut params);
    identity_settings(&identity, &mut params);
    let session: Arc<str> = match origin {
        Some(o) => o.session.clone(),
        None => Arc::from(crate::audit::session_id().as_str()),
    };
    let db = startup
        .param("database")
        .or(startup.param("user"))
        .unwrap_or_default();
    // A masked role logs in as its own database login, whose search_path finds the masking
    // views first: raw PHI never reaches the session.
    let masked_login = if role.masked {
        let login = shared
            .policy
            .masked
            .read()
            .ok()
            .and_then(|m| m.get(&role.name).cloned())
            .ok_or(SessionError::Startup(
                "the masking views of this role are not provisioned; ask an administrator",
            ))?;
        Some(login)
    } else {
        None
    };
    // Before any database connection: one individual or role cannot take them all.
    let seat = shared
        .admission
        .seat(&identity.issuer, &identity.subject.0, &role)?;
    let upstream = connect_upstream(shared, &params, db, &role, masked_login.as_ref()).await?;
    // The session's encoding as the database reports it (the client's, or the database's or
    // role's default when the client named none).
    let encoding = session_encoding(&upstream.parameter_status)?;
    audit_session_start(
        shared, &session, &identity, peer, stream, &startup, db, origin,
    )
    .await?;
    let masked = masked_login.is_some();
    let (phi, predicate_guarded, unwritable) = masked_login
        .map(|l| (l.phi_columns, l.predicate_guarded, l.unwritable))
        .unwrap_or_default();
    let unmasked_phi = if masked {
        Default::default()
    } else {
        shared.policy.phi_tags.get()
    };
    let guard = guard::Guard::new(guard::GuardParams {
        tape: shared
            .recorder
            .as_ref()
            .and_then(|r| r.tape(&session, &identity, &role)),
        role,
        policy,
        policy_version: version,
        identity: identity.clone(),
        session: session.clone(),
        audit_on: shared.audit.log.is_some(),
        gate_reads: shared.audit.gate_reads,
        approvals_on: shared.approvals.config.get().enabled,
        phi,
        unmasked_phi,
        predicate_guarded,
        unwritable,
        metrics: shared.metrics.clone(),
        origin: origin.map(|o| (o.channel.to_owned(), o.tool.clone())),
    });
    let (key, registration) = shared.cancels.register(upstream.addr, upstream.key);
    let client_view = super::ClientView {
        encoding,
        application_name: (
            startup
                .param("application_name")
                .unwrap_or_default()
                .to_owned(),
            param(&params, "application_name"),
        ),
    };
    out.clear();
    backend::write_auth_ok(&mut out);
    for ps in &upstream.parameter_status {
        out.extend_from_slice(&client_view.parameter_status(ps));
    }
    backend::write_backend_key(&mut out, key.0);
    backend::write_ready_for_query(&mut out, backend::TransactionStatus::Idle);
    stream.write_all(&out).await?;

    let client_reader = FrameReader::with_buffer(reader.into_buffer(), shared.listen.max_message);
    tracing::info!(
        %peer,
        session = %session,
        subject = %identity.subject,
        role = %identity.role,
        tls = stream.tls_version().unwrap_or("off"),
        upstream_tls = upstream.tls_version.unwrap_or("off"),
        "session started"
    );
    let client = std::mem::replace(stream, Stream::Detached);
    Ok(Some(Ready {
        client,
        client_reader,
        upstream,
        identity,
        peer,
        registration,
        guard,
        seat,
        client_view,
    }))
}

fn param(params: &[(String, String)], name: &str) -> String {
    params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// The client encoding the database session started with; a session in an encoding the
/// gateway cannot analyse does not start (a role's or database's default may name one).
fn session_encoding(
    status: &[phigate_wire::Frame],
) -> Result<super::encoding::ClientEncoding, SessionError> {
    let reported = status
        .iter()
        .filter_map(super::encoding::parameter_status)
        .find(|(k, _)| *k == b"client_encoding")
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
    match reported {
        None => Ok(super::encoding::ClientEncoding::UTF8),
        Some(name) => super::encoding::ClientEncoding::lookup(&name)
            .map_err(|e| SessionError::StartupParam(format!("phigate: {e}"))),
    }
}

/// The database session: as the role's masked login (its views first on the search_path) or
/// as the gateway's login.
async fn connect_upstream(
    shared: &Shared,
    params: &[(String, String)],
    db: &str,
    role: &phigate_policy::Role,
    masked_login: Option<&crate::masking::MaskedLogin>,
) -> Result<crate::upstream::UpstreamConn, SessionError> {
    let mut with_db: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    with_db.push(("database", db));
    let conn = match masked_login {
        Some(login) => {
            let path = format!("{}, {}", login.schema, role.search_path.join(", "));
            with_db.retain(|(k, _)| !k.eq_ignore_ascii_case("search_path"));
            with_db.push(("search_path", path.as_str()));
            shared
                .upstream
                .with_login(&login.user, &login.password)
                .connect(&with_db)
                .await?
        }
        None => shared.upstream.connect(&with_db).await?,
    };
    Ok(conn)
}

/// Write-ahead: the session's start is on disk before the client may send a statement.
#[allow(clippy::too_many_arguments)]
async fn audit_session_start(
    shared: &Shared,
    session: &str,
    identity: &Identity,
    peer: SocketAddr,
    stream: &Stream,
    startup: &StartupMessage,
    db: &str,
    origin: Option<&super::Origin>,
) -> Result<(), SessionError> {
    let Some(audit) = &shared.audit.log else {
        return Ok(());
    };
    let event = phigate_audit::Event::SessionStart {
        session: session.to_owned(),
        subject: identity.subject.0.clone(),
        role: identity.role.0.clone(),
        issuer: identity.issuer.clone(),
        credential: identity.credential.kind().to_owned(),
        client_addr: peer.to_string(),
        tls: stream.tls_version().map(str::to_owned),
        application_name: startup.param("application_name").map(str::to_owned),
        database: Some(
            shared
                .upstream
                .database
                .clone()
                .unwrap_or_else(|| db.to_owned()),
        ),
        channel: origin.map(|o| o.channel.to_owned()),
        tool: origin.map(|o| o.tool.clone()),
    };
    audit
        .write(phigate_audit::Pending::Event(event))
        .await
        .map_err(|_| SessionError::Audit)
}

/// Reads startup packets until a StartupMessage; handles SSL/GSSENC negotiation and cancels.
/// Returns the StartupMessage and any bytes the client already sent after it.
async fn negotiate(
    stream: &mut Stream,
    peer: SocketAddr,
    shared: &Shared,
) -> Result<Option<(StartupMessage, BytesMut)>, SessionError> {
    let mut buf = BytesMut::with_capacity(1024);
    let mut tried_tls = false;
    let mut tried_gss = false;
    loop {
        let packet = loop {
            if let Some(p) = parse_startup(&mut buf)? {
                break p;
            }
            if buf.len() >= MAX_STARTUP_PACKET {
                return Err(WireError::TooLarge {
                    len: buf.len(),
                    max: MAX_STARTUP_PACKET,
                }
                .into());
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(SessionError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        };
        match packet {
            StartupPacket::SslRequest => {
                if tried_tls || stream.is_tls() {
                    return Err(SessionError::Startup("duplicate SSLRequest"));
                }
                tried_tls = true;
                // Bytes after the SSLRequest would be read as if they came over TLS: refuse
                // them (the "buffer stuffing" attack, CVE-2021-23214).
                if !buf.is_empty() {
                    return Err(SessionError::Startup("unexpected data after SSLRequest"));
                }
                let tls = shared.listen.tls.get();
                match &tls.acceptor {
                    Some(acceptor) => {
                        stream.write_all(b"S").await?;
                        let Stream::Plain(tcp) = std::mem::replace(stream, Stream::Detached) else {
                            return Err(SessionError::Startup("duplicate SSLRequest"));
                        };
                        let tls = acceptor.accept(tcp).await.map_err(SessionError::Tls)?;
                        *stream = Stream::ServerTls(Box::new(tls));
                    }
                    None => stream.write_all(b"N").await?,
                }
            }
            // Once, as PostgreSQL allows: a client repeating it would have the gateway answer
            // for as long as it keeps asking.
            StartupPacket::GssEncRequest => {
                if tried_gss || tried_tls || stream.is_tls() {
                    return Err(SessionError::Startup("duplicate GSSENCRequest"));
                }
                tried_gss = true;
                stream.write_all(b"N").await?
            }
            StartupPacket::Cancel(key) => {
                if !shared.auth.may_cancel(peer.ip()) {
                    tracing::warn!(%peer, "cancel request ignored: too many failures from this address");
                    return Ok(None);
                }
                let found = shared.cancels.cancel(FrontendKey(key)).await;
                if !found {
                    shared.auth.unknown_cancel_key(peer.ip());
                }
                tracing::info!(%peer, relayed = found, "cancel request");
                return Ok(None);
            }
            StartupPacket::Startup(m) => {
                if shared.listen.tls.get().required && !stream.is_tls() && !stream.is_in_process() {
                    return Err(SessionError::Startup(
                        "TLS is required; connect with sslmode=require",
                    ));
                }
                return Ok(Some((m, buf)));
            }
        }
    }
}

/// Startup parameters the database gets from the client: presentation settings only. PostgreSQL
/// applies any other startup parameter as a setting before the first statement (`role`,
/// `search_path`, `standard_conforming_strings`, ...), where no policy would see it.
const CLIENT_STARTUP_PARAMS: &[&str] = &[
    "application_name",
    "datestyle",
    "timezone",
    "intervalstyle",
    "extra_float_digits",
];

/// Startup parameters passed on to the database. `user` and `database` are the gateway's to
/// choose; `client_encoding` is pinned to UTF8; presentation settings pass; anything else
/// (`replication`, `options`, any setting) is refused.
fn forwarded_params(m: &StartupMessage) -> Result<Vec<(String, String)>, SessionError> {
    if m.param("user").is_none() {
        return Err(SessionError::Startup("no user name in the startup message"));
    }
    let mut out = Vec::with_capacity(m.params.len());
    for (k, v) in &m.params {
        match k.as_str() {
            "user" | "database" => {}
            "replication" => {
                return Err(SessionError::Startup(
                    "replication connections are not allowed",
                ))
            }
            "options" if v.trim().is_empty() => {}
            "options" => {
                return Err(SessionError::Startup(
                    "the startup parameter \"options\" is not allowed; use SET after connecting",
                ))
            }
            // The database converts from it, and the gateway decodes statement text with it
            // for analysis; encodings it cannot analyse safely are refused (`encoding`).
            "client_encoding" => {
                super::encoding::ClientEncoding::lookup(v)
                    .map_err(|e| SessionError::StartupParam(format!("phigate: {e}")))?;
                out.push((k.clone(), v.clone()))
            }
            k if k.starts_with("_pq_.") => {}
            k if CLIENT_STARTUP_PARAMS.contains(&k.to_ascii_lowercase().as_str()) => {
                out.push((k.to_owned(), v.clone()))
            }
            k => {
                return Err(SessionError::StartupParam(format!(
                    "the startup parameter \"{k}\" is not allowed through phigate; \
                     allowed: application_name, DateStyle, TimeZone, IntervalStyle, extra_float_digits"
                )))
            }
        }
    }
    Ok(out)
}

/// Settings the role imposes on its database session, as startup parameters (which PostgreSQL
/// applies like `SET` before the first statement): the pinned search_path of restricted roles,
/// the statement timeout, and the idle timeout (HIPAA automatic logoff, enforced by the database
/// itself with `idle_session_timeout`, reported to the client as FATAL 57P05).
fn role_settings(role: &phigate_policy::Role, params: &mut Vec<(String, String)>) {
    let mut set = |k: &str, v: String| {
        params.retain(|(name, _)| !name.eq_ignore_ascii_case(k));
        params.push((k.to_owned(), v));
    };
    // With standard_conforming_strings off, backslashes in '...' escape quotes: the database
    // would split a statement differently from the way the gateway parsed it. Pinned for every
    // role (it also overrides an ALTER ROLE / DATABASE default).
    set("standard_conforming_strings", "on".to_owned());
    // The search_path names are resolved with: pinned for restricted roles (SET search_path is
    // refused), the starting point for the others.
    set("search_path", role.search_path.join(", "));
    if let Some(ms) = role.statement_timeout_ms {
        set("statement_timeout", ms.to_string());
    }
    if let Some(ms) = role.idle_timeout_ms {
        set("idle_session_timeout", ms.to_string());
        // Automatic logoff holds inside a transaction too.
        set("idle_in_transaction_session_timeout", ms.to_string());
    }
}

/// The identity, for the database's own logs and row-level security: `application_name`
/// carries the subject, and the settings `phigate.subject`, `phigate.role` and `phigate.issuer`
/// can be read with `current_setting('phigate.subject', true)`. No role may change them
/// (policy rule pinned-setting).
fn identity_settings(identity: &Identity, params: &mut Vec<(String, String)>) {
    let client_app = params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("application_name"))
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let tag = format!("phigate:{}", identity.subject);
    let app = if client_app.is_empty() {
        tag
    } else {
        format!("{client_app} ({tag})")
    };
    params
        .retain(|(k, _)| !k.eq_ignore_ascii_case("application_name") && !k.starts_with("phigate."));
    // PostgreSQL truncates application_name to 63 bytes; keep the subject rather than the app.
    params.push(("application_name".into(), truncate_utf8(&app, 63)));
    params.push(("phigate.subject".into(), identity.subject.0.clone()));
    params.push(("phigate.role".into(), identity.role.0.clone()));
    params.push(("phigate.issuer".into(), identity.issuer.clone()));
}

fn truncate_utf8(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    // Prefer the tail: "(phigate:<subject>)" is what matters.
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_owned()
}

/// Asks for the password (the token), checks it, and resolves the role.
async fn authenticate(
    stream: &mut Stream,
    reader: &mut FrameReader,
    out: &mut BytesMut,
    startup: &StartupMessage,
    peer: SocketAddr,
    shared: &Shared,
) -> Result<Identity, SessionError> {
    backend::write_auth_cleartext(out);
    stream.write_all(out).await?;
    let frame = crate::net::read_frame::<SessionError>(stream, reader).await?;
    let FrontendMessage::Password(body) = FrontendMessage::decode(&frame)? else {
        return Err(WireError::UnexpectedTag(frame.tag()).into());
    };
    let token = body
        .strip_suffix(&[0])
        .and_then(|t| std::str::from_utf8(t).ok())
        .ok_or(WireError::Malformed {
            what: "PasswordMessage",
            why: "not a NUL-terminated string",
        })?;
    let role = startup.param("user").unwrap_or_default();
    let (policy, _) = shared.policy.store.snapshot();
    let is_role = |r: &str| policy.role(r).is_some();
    let result = shared
        .auth
        .authenticate(peer.ip(), role, token, &is_role)
        .await;
    if let Err(e) = &result {
        shared.metrics.login_failed(e.kind(), "wire");
    }
    if let (Err(e), Some(audit)) = (&result, &shared.audit.log) {
        audit.submit(phigate_audit::Pending::Event(
            phigate_audit::Event::LoginFailed {
                client_addr: peer.to_string(),
                user: role.chars().take(64).collect(),
                reason: e.to_string(),
                via: Some("wire".into()),
                subject: e.subject().map(str::to_owned),
            },
        ));
    }
    Ok(result?)
}
