//! What the whole process shares, grouped by concern: the lifecycle (shutdown tokens), the
//! listener's settings, identity, the audit log, approvals, policy (with the catalog and the
//! masked logins), the database, recordings and cancel keys. Built once from the config
//! ([`Shared::from_config`]); sessions, the HTTP API and the listener all read it, and none of
//! them imports another to get at it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::cancel::CancelRegistry;
use crate::config::Config;
use crate::live::Live;
use crate::upstream::UpstreamTarget;

/// Starting and stopping.
pub struct Lifecycle {
    /// Set on SIGTERM: sessions close at their next resting point.
    pub draining: CancellationToken,
    /// Set at the shutdown deadline: sessions close now.
    pub force_close: CancellationToken,
    pub accepting: AtomicBool,
    /// The last probe of the database for `/readyz` (when, and whether it answered): one probe
    /// at a time, a success reused for [`READY_PROBE_TTL`], however often `/readyz` is called.
    /// A session that cannot reach the database forgets it.
    pub upstream_probe: tokio::sync::Mutex<Option<(std::time::Instant, bool)>>,
    /// Sessions the gateway runs inside itself (MCP tool calls): shutdown waits for them as
    /// for the listener's, so their last records come before the final checkpoint.
    pub internal: tokio_util::task::TaskTracker,
}

impl Lifecycle {
    /// A session could not reach the database: `/readyz` probes afresh.
    pub fn upstream_failed(&self) {
        if let Ok(mut probe) = self.upstream_probe.try_lock() {
            *probe = None;
        }
    }
}

/// How long a successful `/readyz` probe of the database is reused.
pub const READY_PROBE_TTL: Duration = Duration::from_secs(2);

/// How clients reach the gateway.
pub struct Listen {
    /// Where PostgreSQL clients connect.
    pub pg_addr: SocketAddr,
    /// Where the HTTP side listens, if it does.
    pub http_addr: Option<SocketAddr>,
    /// `[tls]`: replaced by a reload (new handshakes use the new certificate).
    pub tls: Live<ClientTls>,
    pub allow_plaintext_loopback: bool,
    pub max_message: usize,
    pub startup_timeout: Duration,
    /// Who may read `/metrics`.
    pub metrics: crate::config::MetricsAccess,
    /// HTTP: a request's headers must arrive within `http_header_timeout` (an idle keep-alive
    /// connection closes then too), its body and the response's delivery within
    /// `http_body_timeout`; at most `http_max_connections` at once.
    pub http_header_timeout: Duration,
    pub http_body_timeout: Duration,
    pub http_max_connections: usize,
    pub http_connections_per_source: usize,
    /// The HTTP listener speaks TLS only (`listen.http_tls`), with `tls`'s certificate.
    pub http_tls: bool,
}

impl Listen {
    /// Whether the HTTP listener takes credentials from `peer`: over TLS (`listen.http_tls`)
    /// from anywhere; over plain HTTP only from this machine (a TLS-terminating proxy here, or
    /// a local tool), never in the clear across a network.
    pub fn credentials_from(&self, peer: std::net::IpAddr) -> bool {
        self.http_tls || peer.is_loopback()
    }
}

/// TLS towards clients (`[tls]`).
#[derive(Default)]
pub struct ClientTls {
    pub acceptor: Option<tokio_rustls::TlsAcceptor>,
    pub required: bool,
}

impl ClientTls {
    /// Reads the certificate and key the config names.
    pub fn from_config(config: &Config) -> anyhow::Result<ClientTls> {
        let Some(t) = &config.tls else {
            return Ok(ClientTls::default());
        };
        let server = crate::tls::server_config(&t.cert_file, &t.key_file)?;
        Ok(ClientTls {
            acceptor: Some(tokio_rustls::TlsAcceptor::from(server)),
            required: t.require,
        })
    }
}

/// The gateway's own tokens.
pub struct Tokens {
    /// Lifetime of the session tokens handed out by `POST /v1/auth/token`.
    pub session_ttl: Duration,
    /// The development issuer is on (the demo).
    pub development: bool,
}

/// The audit log and who may read it.
pub struct Audit {
    /// The log (`None` only when the config turns it off).
    pub log: Option<phigate_audit::Auditor>,
    /// Where it lives, for the HTTP API.
    pub dir: Option<PathBuf>,
    /// `audit.reader_roles` (reloaded).
    pub reader_roles: Live<Vec<String>>,
    /// Reads that change nothing go to the database once their record is written, and their
    /// results wait for its fsync (`audit.read_durability = "results"`, strict tier).
    pub gate_reads: bool,
    pub mirror: Option<PathBuf>,
}

/// Statements held for review and access requests.
pub struct Approvals {
    pub reviews: crate::approvals::Approvals,
    /// `[approvals]` (reloaded; the webhook with it, in `reviews`).
    pub config: Live<crate::config::ApprovalsConfig>,
}

/// What statements are decided with.
pub struct Policy {
    pub store: crate::policy::PolicyStore,
    pub analyzer: phigate_sql::Analyzer,
    /// PHI columns by `schema.table` (the `[[phi]]` tags), for review summaries (reloaded).
    pub phi_tags: Live<BTreeMap<String, Vec<String>>>,
    /// The database logins of masked roles (provisioned at start and on reload).
    pub masked: RwLock<HashMap<String, crate::masking::MaskedLogin>>,
    /// The digest of the masking plan last put in force ([`crate::masking::provision`]).
    pub masked_plan: std::sync::Mutex<Option<[u8; 32]>>,
}

/// What every session shares. Immutable after start, except the shutdown tokens and what a
/// reload replaces (the policy, masked logins, trust, TLS, approvals, audit readers: each a
/// [`Live`] or a store with its own swap).
pub struct Shared {
    pub lifecycle: Lifecycle,
    pub listen: Listen,
    pub auth: Authenticator,
    pub tokens: Tokens,
    pub audit: Audit,
    pub approvals: Approvals,
    pub policy: Policy,
    pub upstream: UpstreamTarget,
    /// Session recordings (`None` when off).
    pub recorder: Option<Arc<crate::recording::Recorder>>,
    pub cancels: CancelRegistry,
    /// Connection and session caps.
    pub admission: Arc<crate::admission::Admission>,
    /// Statements by decision, their latency, failed logins (`/metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The control database this node shares with the others of its cluster (`None`: a
    /// single node).
    pub control: Option<Arc<crate::control::Control>>,
    /// The config the process started with: what a reload cannot change is compared with it
    /// (`needs_restart`).
    pub started: Config,
}

impl Shared {
    /// `http` is where the HTTP side listens, if it does (the default issuer of gateway tokens).
    pub fn from_config(
        config: &Config,
        pg_addr: SocketAddr,
        http: Option<SocketAddr>,
        control: Option<Arc<crate::control::Control>>,
    ) -> anyhow::Result<Shared> {
        let tls = ClientTls::from_config(config)?;
        let budget = crate::admission::budget(
            config.limits.max_connections,
            config.listen.http_max_connections,
        );
        let log = crate::audit::open(config)?;
        let auth = Authenticator::from_config(config, &crate::auth::gateway_issuer(config, http))?;
        let recorder = match &log {
            Some(a) => crate::recording::Recorder::start(config, a)?,
            None => None,
        };
        let reviews = match &control {
            Some(c) => crate::approvals::Approvals::with_store(Box::new(
                crate::approvals::SharedStore::new(c.clone()),
            )),
            None => crate::approvals::Approvals::open(config.data_dir.as_deref()),
        };
        let reviews = reviews
            .notify(crate::approvals::Notifier::from_config(
                &config.approvals,
                log.as_ref().map(|a| a.handle()),
            )?)
            .grant_elevations_in(auth.elevations.clone())
            .limit_requests(
                config.limits.access_requests_per_hour,
                config.limits.pending_access_requests,
            )
            .audit_to(log.as_ref().map(|a| a.handle()));
        Ok(Shared {
            lifecycle: Lifecycle {
                draining: CancellationToken::new(),
                force_close: CancellationToken::new(),
                accepting: AtomicBool::new(false),
                upstream_probe: tokio::sync::Mutex::new(None),
                internal: tokio_util::task::TaskTracker::new(),
            },
            listen: Listen {
                pg_addr,
                http_addr: http,
                tls: Live::new(tls),
                allow_plaintext_loopback: config.listen.allow_plaintext_loopback,
                max_message: config.listen.max_message_bytes,
                startup_timeout: Duration::from_secs(config.listen.startup_timeout_secs),
                metrics: config.listen.metrics,
                http_header_timeout: Duration::from_secs(config.listen.http_header_timeout_secs),
                http_body_timeout: Duration::from_secs(config.listen.http_body_timeout_secs),
                http_max_connections: budget.http_connections,
                http_connections_per_source: config.listen.http_connections_per_source,
                http_tls: config.listen.http_tls,
            },
            auth,
            tokens: Tokens {
                session_ttl: Duration::from_secs(config.auth.session_token_ttl_secs),
                development: config.auth.development,
            },
            audit: Audit {
                log,
                dir: config.audit.resolved_dir(config.data_dir.as_deref()),
                reader_roles: Live::new(config.audit.reader_roles.clone()),
                gate_reads: config.audit.gate_reads(),
                mirror: config.audit.mirror_dir.clone(),
            },
            approvals: Approvals {
                reviews,
                config: Live::new(config.approvals.clone()),
            },
            policy: Policy {
                store: crate::policy::PolicyStore::new(config.policy()?),
                analyzer: phigate_sql::Analyzer::default(),
                phi_tags: Live::new(phi_tags(config)),
                masked: Default::default(),
                masked_plan: Default::default(),
            },
            upstream: UpstreamTarget::from_config(&config.upstream)?,
            recorder,
            cancels: CancelRegistry::default(),
            admission: crate::admission::Admission::new(&config.limits, budget.pg_connections),
            metrics: Arc::default(),
            control,
            started: effective(config.clone(), http),
        })
    }
}

/// `config` as the process runs it: the issuer of gateway tokens filled in (by default, the
/// HTTP address), so a file that pins it to the same value changes nothing.
pub fn effective(mut config: Config, http: Option<SocketAddr>) -> Config {
    config.auth.issuer = Some(crate::auth::gateway_issuer(&config, http));
    config
}

/// PHI columns by `schema.table`.
pub fn phi_tags(config: &Config) -> BTreeMap<String, Vec<String>> {
    config
        .phi
        .iter()
        .map(|t| {
            let (schema, table) = t.qualified();
            (
                format!("{schema}.{table}"),
                t.columns.keys().cloned().collect(),
            )
        })
        .collect()
}
