//! The listener: accepts clients, runs one task per session, serves health endpoints, and shuts
//! down gracefully (stop accepting, let sessions reach a resting point, close the rest at the
//! deadline).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::state::Shared;

/// A running gateway: where it listens, and how to stop it.
pub struct Running {
    pub pg_addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Begins a graceful shutdown and waits for it to finish.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.done.await;
    }

    /// A token that, once cancelled, starts the graceful shutdown.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Waits until the gateway has stopped (after a signal or [`Running::shutdown`]).
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// Binds the listeners and starts serving. Returns once clients can connect.
/// Before anything is opened: what the data directory, the audit log and the recordings hold
/// (identities, statements, PHI, keys) is owner-only, whatever an earlier version, a copy or an
/// operator left. Each loosened path is fixed and named in a warning.
fn tighten_data_modes(config: &Config) {
    let data = config.data_dir.as_deref();
    let roots = [
        config.data_dir.clone(),
        config.audit.resolved_dir(data),
        config.audit.mirror_dir.clone(),
        config.recording.resolved_dir(data),
    ];
    for root in roots.into_iter().flatten() {
        match crate::fsutil::tighten_tree(&root) {
            Ok(changed) => {
                for c in changed {
                    tracing::warn!(
                        path = %c.path.display(),
                        was = %format!("{:04o}", c.was),
                        now = %format!("{:04o}", c.now),
                        "a file or directory in the data directory was readable by others; made owner-only"
                    );
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %root.display(), error = %e, "cannot check the modes of the data directory")
            }
        }
    }
}

pub async fn start(config: &Config) -> anyhow::Result<Running> {
    let listener = TcpListener::bind(config.listen.address)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen.address))?;
    let pg_addr = listener.local_addr()?;
    let http_listener = match config.listen.http_address {
        Some(addr) => Some(crate::http::bind(addr).await?),
        None => None,
    };
    let http_addr = http_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    tighten_data_modes(config);
    let cluster_stop = CancellationToken::new();
    let control = match &config.cluster {
        Some(cluster) => {
            let address = crate::control::NodeAddress {
                pg: pg_addr.to_string(),
                http: http_addr.map(|a| a.to_string()),
            };
            let c = crate::control::Control::start(
                cluster,
                config.data_dir.as_deref(),
                address,
                cluster_stop.clone(),
            )
            .await?;
            // The node's own keys and revocations join the cluster's, and it takes a copy of
            // them all (one two-way copy) before it authenticates anyone.
            if let Some(dir) = &config.data_dir {
                let client = c.client()?;
                crate::auth::shared::join(&client, dir).await?;
            }
            Some(c)
        }
        None => None,
    };
    let shared = Arc::new(Shared::from_config(config, pg_addr, http_addr, control)?);
    // Masked roles cannot work without their views: provisioning failure stops the start.
    let logins =
        crate::masking::provision(config, &shared.upstream, &shared.policy.masked_plan).await?;
    if let Ok(mut m) = shared.policy.masked.write() {
        *m = logins;
    }
    crate::masking::retire_earlier_keys(config, &shared.upstream).await;
    let http = http_listener.map(|l| crate::http::HttpServer::new(l, shared.clone()));
    spawn_key_watch(&shared);
    spawn_credential_copy(&shared, config.data_dir.as_deref());
    spawn_review_expiry(&shared);
    let stop = CancellationToken::new();
    let grace = Duration::from_secs(config.listen.shutdown_grace_secs);
    shared.lifecycle.accepting.store(true, Ordering::Release);
    let done = tokio::spawn(run(listener, http, shared.clone(), stop.clone(), grace));
    let done = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = done.await;
            // Stopped cleanly: this node's lease ends now, not after it would lapse.
            if let Some(c) = &shared.control {
                c.leave().await;
            }
            cluster_stop.cancel();
        })
    };
    tracing::info!(%pg_addr, http = ?http_addr, "phigate is accepting connections");
    Ok(Running {
        pg_addr,
        http_addr,
        shared,
        stop,
        done,
    })
}

async fn run(
    listener: TcpListener,
    http: Option<crate::http::HttpServer>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    grace: Duration,
) {
    let sessions = TaskTracker::new();
    let http_task = http.map(|h| tokio::spawn(h.serve(shared.lifecycle.force_close.clone())));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => match shared
                    .admission
                    .connection()
                    .and_then(|c| Ok((c, shared.admission.startups.acquire(peer.ip())?)))
                {
                    Ok((connection, startup)) => {
                        let shared = shared.clone();
                        let places = crate::session::Places { connection, startup };
                        sessions.spawn(crate::session::handle(tcp, peer, shared, places));
                    }
                    // Full: told at once, without reading or waiting (the socket closes here).
                    Err(refused) => {
                        tracing::warn!(%peer, error = %refused, "connection refused");
                        let fatal = crate::pgerror::ClientError::fatal(
                            phigate_wire::sqlstate::TOO_MANY_CONNECTIONS,
                            format!("phigate: {refused}"),
                        )
                        .with_hint("Try again shortly.");
                        let _ = tcp.try_write(&fatal.to_bytes());
                    }
                },
                // Out of file descriptors and the like: back off instead of spinning.
                Err(e) => {
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = stop.cancelled() => break,
        }
    }
    drop(listener);
    shared.lifecycle.accepting.store(false, Ordering::Release);
    sessions.close();
    shared.lifecycle.internal.close();
    tracing::info!(
        sessions = sessions.len(),
        grace_secs = grace.as_secs(),
        "draining"
    );
    shared.lifecycle.draining.cancel();
    let all = async {
        sessions.wait().await;
        shared.lifecycle.internal.wait().await;
    };
    if tokio::time::timeout(grace, all).await.is_err() {
        tracing::warn!(
            sessions = sessions.len(),
            "shutdown deadline reached; closing remaining sessions"
        );
        shared.lifecycle.force_close.cancel();
        let all = async {
            sessions.wait().await;
            shared.lifecycle.internal.wait().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), all).await;
    }
    shared.lifecycle.force_close.cancel();
    if let Some(t) = http_task {
        let _ = t.await;
    }
    if let Some(audit) = &shared.audit.log {
        // Every session has ended: the last records, then the final signed checkpoint.
        let _ = audit
            .write(phigate_audit::Pending::Event(
                phigate_audit::Event::GatewayStop {
                    reason: "shutdown".into(),
                },
            ))
            .await;
        let s = shared.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(a) = &s.audit.log {
                a.shutdown()
            }
        })
        .await;
    }
    tracing::info!("stopped");
}

/// Expires reviews and access requests nobody decided in time, every few seconds; settles
/// holds that ended without settling. In a cluster also: abandons the reviews of nodes that
/// are gone, and grants here the elevations approved on other nodes (every second).
fn spawn_review_expiry(shared: &Arc<Shared>) {
    let shared = shared.clone();
    let stop = shared.lifecycle.force_close.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        for n in 0u64.. {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => break,
            }
            let reviews = &shared.approvals.reviews;
            if shared.control.is_some() {
                reviews.sync_elevations().await;
            }
            if !n.is_multiple_of(5) {
                continue;
            }
            let expired = reviews.expire_due().await;
            if expired > 0 {
                tracing::info!(expired, "reviews nobody decided in time expired");
            }
            reviews.settle_left().await;
            if shared.control.is_some() {
                let abandoned = reviews.abandon_orphans().await;
                if abandoned > 0 {
                    tracing::warn!(
                        abandoned,
                        "reviews held by nodes that are gone were abandoned"
                    );
                }
            }
        }
    });
}

/// A cluster node: copies the control database's API keys and token revocations into the data
/// directory on every notification and every second, reloading them at once when that changed
/// something (sessions opened with a revoked credential end); and shares its failed-login
/// counts ([`spawn_failure_sharing`]).
fn spawn_credential_copy(shared: &Arc<Shared>, data_dir: Option<&std::path::Path>) {
    let Some(control) = shared.control.clone() else {
        return;
    };
    let dir = data_dir.map(std::path::Path::to_owned);
    let stop = shared.lifecycle.force_close.clone();
    let shared = shared.clone();
    spawn_failure_sharing(&shared, &control);
    tokio::spawn(async move {
        let mut changes = control.credential_changes();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                c = changes.changed() => if c.is_err() { break },
                _ = stop.cancelled() => break,
            }
            // At most ten copies a second, however many notifications arrive.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (Ok(client), Some(dir)) = (control.client(), &dir) else {
                continue;
            };
            let copied = tokio::time::timeout(
                crate::control::OPERATION_TIMEOUT,
                crate::auth::shared::copy(&client, dir),
            )
            .await;
            match copied {
                Ok(Ok(true)) => {
                    if let Some(keys) = shared.auth.keys() {
                        if let Err(e) = keys.reload_if_changed() {
                            tracing::error!(error = %e, "cannot read the API key file");
                        }
                    }
                    shared.auth.reload_token_revocations();
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot copy the cluster's API keys and revocations")
                }
                Err(_) => {
                    tracing::warn!("copying the cluster's API keys and revocations timed out")
                }
            }
        }
    });
}

/// A cluster node: adds its failed logins to the cluster's counts and reads them back every
/// second, in a task of its own (a flood of failures never holds up the copy of revocations).
fn spawn_failure_sharing(shared: &Arc<Shared>, control: &Arc<crate::control::Control>) {
    let (shared, control) = (shared.clone(), control.clone());
    let stop = shared.lifecycle.force_close.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => break,
            }
            let Ok(client) = control.client() else {
                continue;
            };
            let limiter = shared.auth.failed_logins();
            if let Err(e) = crate::auth::shared::share_failures(&client, limiter).await {
                tracing::warn!(error = %e, "cannot share failed-login counts with the cluster");
            }
        }
    });
}

/// Notices API keys created or revoked, and tokens revoked (`phigate token revoke`), by the CLI
/// within a second (sessions opened with a revoked credential end), and records key use.
fn spawn_key_watch(shared: &Arc<Shared>) {
    let Some(store) = shared.auth.keys().cloned() else {
        return;
    };
    let stop = shared.lifecycle.force_close.clone();
    let shared = shared.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut n: u64 = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => break,
            }
            if let Err(e) = store.reload_if_changed() {
                tracing::error!(error = %e, "cannot read the API key file");
            }
            shared.auth.reload_token_revocations();
            n += 1;
            if n.is_multiple_of(5) {
                store.flush_last_used();
            }
        }
        store.flush_last_used();
    });
}

/// Reloads the configuration from `path` on every SIGHUP ([`crate::reload`]). A file that
/// does not load leaves the running configuration in place (and says why in the log and the
/// audit log): a typo never opens or closes the gates.
pub fn spawn_reload_on_sighup(
    shared: Arc<Shared>,
    path: std::path::PathBuf,
    signals: &mut Signals,
) {
    let Some(mut hup) = signals.hup.take() else {
        tracing::warn!("cannot listen for SIGHUP; configuration reload disabled");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let event = crate::reload::reload(&shared, &path).await;
            if let Some(a) = &shared.audit.log {
                a.submit(phigate_audit::Pending::Event(event));
            }
        }
    });
}

/// Resolves on SIGTERM or SIGINT.
/// The signals the gateway handles, registered before it accepts anyone: a SIGTERM that
/// arrives the moment the port opens must start a graceful shutdown, not kill the process.
pub struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Registers SIGTERM, SIGINT and SIGHUP (inside a runtime).
    pub fn install() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        Signals {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
            hup: signal(SignalKind::hangup()).ok(),
        }
    }

    /// Resolves at SIGTERM or SIGINT.
    pub async fn shutdown(mut self) {
        let term = async {
            match &mut self.term {
                Some(t) => t.recv().await,
                None => std::future::pending().await,
            }
        };
        let int = async {
            match &mut self.int {
                Some(i) => i.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term => tracing::info!("SIGTERM received"),
            _ = int => tracing::info!("SIGINT received"),
        }
    }
}
