//! The control database that many gateway nodes share (docs/cluster.md): a PostgreSQL
//! database of its own, never the protected one.
//!
//! One connection per node, kept by a supervisor task: it listens for `phigate_reviews`
//! notifications (a wake-up hint: every change to a review notifies at commit), renews the
//! node's lease, and reconnects when the connection is lost. After every (re)connect the
//! [`changes`](Control::changes) watch ticks, so whoever waits on shared state reads it again:
//! nothing relies on a notification arriving. While the database is unreachable, every
//! operation on shared state fails at once ([`Unreachable`]); its callers fail closed.
//!
//! Nothing here is on the path of an ordinary statement: only holds, decisions, the lease and
//! the sweeps touch the control database.

pub mod schema;
mod tls;

use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_postgres::{AsyncMessage, Client};
use tokio_util::sync::CancellationToken;

use crate::config::ClusterConfig;

/// The control database cannot be reached now.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the control database is unreachable")]
pub struct Unreachable;

/// How long one operation on the control database may take before it counts as unreachable.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

/// Where this node serves, as the cluster lists it.
pub struct NodeAddress {
    pub pg: String,
    pub http: Option<String>,
}

pub struct Control {
    node_id: String,
    /// This process: a node restarted under the same id is another instance, and the reviews
    /// its previous instance held are abandoned.
    instance: String,
    pg: tokio_postgres::Config,
    tls: tls::MakeRustls,
    lease: Duration,
    poll: Duration,
    client: Mutex<Option<Arc<Client>>>,
    changes: watch::Sender<u64>,
    /// Ticks on every notification of changed keys or revocations and after every reconnect.
    credentials: watch::Sender<u64>,
}

/// The two watches a connection's notifications tick, by channel.
#[derive(Clone)]
struct Ticks {
    reviews: watch::Sender<u64>,
    credentials: watch::Sender<u64>,
}

impl Ticks {
    fn all(&self) {
        self.reviews.send_modify(|v| *v += 1);
        self.credentials.send_modify(|v| *v += 1);
    }
}

impl Control {
    /// Connects, migrates the schema and registers this node (waiting out the lease of an
    /// earlier instance under the same id, killed without leaving), then keeps the connection
    /// until `stop`.
    pub async fn start(
        config: &ClusterConfig,
        data_dir: Option<&Path>,
        address: NodeAddress,
        stop: CancellationToken,
    ) -> anyhow::Result<Arc<Control>> {
        let node_id = node_id(config, data_dir)?;
        let (pg, tls) = pg_config(config, &format!("phigate node {node_id}"))?;
        let control = Arc::new(Control {
            node_id,
            instance: format!("{:016x}", rand::random::<u64>()),
            pg,
            tls,
            lease: Duration::from_secs(config.lease_secs),
            poll: Duration::from_millis(config.poll_interval_ms),
            client: Mutex::new(None),
            changes: watch::Sender::new(0),
            credentials: watch::Sender::new(0),
        });
        let (mut client, connection) = control.connect().await?;
        let driver = tokio::spawn(drive(connection, control.ticks()));
        let before = schema::migrate(&mut client).await?;
        if before < schema::VERSION {
            tracing::info!(
                from = before,
                to = schema::VERSION,
                "migrated the control database's schema"
            );
        }
        control.register(&client, &address).await?;
        listen(&client).await?;
        // Reachable from here on: the supervisor publishes the connection before it returns.
        *control.client.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(client));
        let joined = control.client()?;
        tracing::info!(node = %control.node_id, "joined the cluster");
        tokio::spawn(control.clone().supervise(joined, driver, address, stop));
        Ok(control)
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Ticks on every notification of a changed review and after every reconnect.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Ticks on every notification of changed API keys or token revocations, and after every
    /// reconnect.
    pub fn credential_changes(&self) -> watch::Receiver<u64> {
        self.credentials.subscribe()
    }

    fn ticks(&self) -> Ticks {
        Ticks {
            reviews: self.changes.clone(),
            credentials: self.credentials.clone(),
        }
    }

    /// How often waiters read shared state again without a wake-up.
    pub fn poll_interval(&self) -> Duration {
        self.poll
    }

    /// The connection, if the database is reachable now.
    pub fn client(&self) -> Result<Arc<Client>, Unreachable> {
        self.client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(Unreachable)
    }

    async fn connect(&self) -> anyhow::Result<(Client, Connection)> {
        self.pg.connect(self.tls.clone()).await.map_err(|e| {
            anyhow::anyhow!("cannot connect to the control database: {}", describe(&e))
        })
    }

    /// Takes this node's row: free, lapsed, or ours. A live lease of another instance under
    /// this id (a node killed a moment ago, or a second process given the same id) is waited
    /// out, up to one lease; after that the id is in use and the start fails.
    async fn register(&self, client: &Client, address: &NodeAddress) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + self.lease + Duration::from_secs(1);
        while !self.take(client, address).await? {
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "node id {} is in use by a running node (its lease keeps being renewed): give this node another cluster.node_id",
                    self.node_id
                );
            }
            tracing::info!(node = %self.node_id, "an earlier instance of this node still holds its lease; waiting for it to lapse");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(())
    }

    /// One try at this node's row; false while another instance's lease on it runs.
    async fn take(
        &self,
        client: &Client,
        address: &NodeAddress,
    ) -> Result<bool, tokio_postgres::Error> {
        let taken = client
            .execute(
                "INSERT INTO phigate.nodes AS n (node_id, instance, started_at, renewed_at,
                     lease_until, pg_address, http_address, pid, version)
                 VALUES ($1, $2, now(), now(), now() + $3::bigint * interval '1 millisecond',
                     $4, $5, $6, $7)
                 ON CONFLICT (node_id) DO UPDATE SET instance = EXCLUDED.instance,
                     started_at = now(), renewed_at = now(), lease_until = EXCLUDED.lease_until,
                     pg_address = EXCLUDED.pg_address, http_address = EXCLUDED.http_address,
                     pid = EXCLUDED.pid, version = EXCLUDED.version
                 WHERE n.lease_until < now() OR n.instance = EXCLUDED.instance",
                &[
                    &self.node_id,
                    &self.instance,
                    &(self.lease.as_millis() as i64),
                    &address.pg,
                    &address.http,
                    &(std::process::id() as i32),
                    &env!("CARGO_PKG_VERSION"),
                ],
            )
            .await?;
        Ok(taken == 1)
    }

    /// Renews the lease; false if another instance took this node's id meanwhile.
    async fn renew(&self, client: &Client) -> Result<bool, tokio_postgres::Error> {
        let n = client
            .execute(
                "UPDATE phigate.nodes SET renewed_at = now(),
                     lease_until = now() + $3::bigint * interval '1 millisecond'
                 WHERE node_id = $1 AND instance = $2",
                &[
                    &self.node_id,
                    &self.instance,
                    &(self.lease.as_millis() as i64),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    /// Ends this node's lease at a clean stop: what it still held is abandoned at once rather
    /// than after the lease.
    pub async fn leave(&self) {
        let Ok(client) = self.client() else {
            return;
        };
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
            [&self.node_id, &self.instance];
        let left = client.execute(
            "UPDATE phigate.nodes SET lease_until = now() WHERE node_id = $1 AND instance = $2",
            &params,
        );
        match tokio::time::timeout(OPERATION_TIMEOUT, left).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %describe(&e), "could not end this node's lease"),
            Err(_) => tracing::warn!("ending this node's lease timed out"),
        }
    }

    /// Keeps the connection: renews the lease a few times per lease, sweeps settled state now
    /// and then, and reconnects (the schema, LISTEN and the lease again, then a tick for the
    /// catch-up re-read).
    async fn supervise(
        self: Arc<Self>,
        joined: Arc<Client>,
        driver: tokio::task::JoinHandle<String>,
        address: NodeAddress,
        stop: CancellationToken,
    ) {
        let mut current = Some((joined, driver));
        loop {
            let (client, driver) = match current.take() {
                Some(c) => c,
                None => match self.reconnect(&address, &stop).await {
                    Some(c) => c,
                    None => return,
                },
            };
            *self.client.lock().unwrap_or_else(|e| e.into_inner()) = Some(client.clone());
            self.ticks().all();
            let ended = self.keep(&client, driver, &address, &stop).await;
            *self.client.lock().unwrap_or_else(|e| e.into_inner()) = None;
            self.ticks().all();
            match ended {
                Some(why) => tracing::warn!(error = %why, "lost the control database connection"),
                None => return,
            }
        }
    }

    /// Connects and rejoins, every second until it works (`None`: stopped meanwhile).
    async fn reconnect(
        &self,
        address: &NodeAddress,
        stop: &CancellationToken,
    ) -> Option<(Arc<Client>, tokio::task::JoinHandle<String>)> {
        let mut failures = 0u32;
        loop {
            let attempt = async {
                let (mut client, connection) = self.connect().await?;
                let driver = tokio::spawn(drive(connection, self.ticks()));
                let rejoined =
                    tokio::time::timeout(OPERATION_TIMEOUT * 2, self.rejoin(&mut client, address))
                        .await;
                match rejoined {
                    Ok(Ok(())) => Ok((Arc::new(client), driver)),
                    Ok(Err(e)) => {
                        driver.abort();
                        Err(e)
                    }
                    Err(_) => {
                        driver.abort();
                        Err(anyhow::anyhow!("rejoining the cluster timed out"))
                    }
                }
            };
            match attempt.await {
                Ok(c) => {
                    tracing::info!("the control database is reachable again");
                    return Some(c);
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(30) {
                        tracing::warn!(error = %e, "the control database is unreachable; shared reviews fail closed until it is back");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.cancelled() => return None,
            }
        }
    }

    /// After a reconnect: the schema again (the database may be a restored or promoted copy
    /// that lost recent commits), LISTEN, and the lease (taken back if it lapsed meanwhile and
    /// nobody else took the id; the reviews held under it were abandoned).
    async fn rejoin(&self, client: &mut Client, address: &NodeAddress) -> anyhow::Result<()> {
        schema::migrate(client).await?;
        listen(client).await?;
        let kept = self
            .renew(client)
            .await
            .map_err(|e| anyhow::anyhow!("{}", describe(&e)))?;
        if !kept
            && !self
                .take(client, address)
                .await
                .map_err(|e| anyhow::anyhow!("{}", describe(&e)))?
        {
            tracing::error!(node = %self.node_id, "another instance holds this node's id");
        }
        Ok(())
    }

    /// Renews the lease and sweeps until the connection ends (its reason) or `stop` (`None`).
    async fn keep(
        &self,
        client: &Client,
        mut driver: tokio::task::JoinHandle<String>,
        address: &NodeAddress,
        stop: &CancellationToken,
    ) -> Option<String> {
        let mut renewals = tokio::time::interval(self.lease / 4);
        let mut sweeps = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                end = &mut driver => return Some(end.unwrap_or_else(|e| e.to_string())),
                _ = stop.cancelled() => {
                    driver.abort();
                    return None;
                }
                _ = renewals.tick() => {
                    match tokio::time::timeout(OPERATION_TIMEOUT, self.renew(client)).await {
                        Ok(Ok(true)) => {}
                        // Lost the id (the lease lapsed and another instance took it): take it
                        // back as soon as that instance's lease lapses in turn.
                        Ok(Ok(false)) => match self.take(client, address).await {
                            Ok(true) => tracing::warn!(node = %self.node_id, "took this node's lease back; the reviews held meanwhile were abandoned"),
                            _ => tracing::error!(node = %self.node_id, "another instance holds this node's id: held statements here are refused"),
                        },
                        Ok(Err(e)) => tracing::warn!(error = %describe(&e), "cannot renew this node's lease"),
                        Err(_) => {
                            driver.abort();
                            return Some("renewing the lease timed out".into());
                        }
                    }
                }
                _ = sweeps.tick() => sweep(client).await,
            }
        }
    }
}

/// A connection of the CLI's own (`phigate keys --config`, `phigate token revoke --config`):
/// the schema brought up to date first, so the CLI works before any node has started.
pub async fn connect_once(config: &ClusterConfig) -> anyhow::Result<Client> {
    let (pg, tls) = pg_config(config, "phigate cli")?;
    let (mut client, connection) = pg
        .connect(tls)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to the control database: {}", describe(&e)))?;
    tokio::spawn(connection);
    schema::migrate(&mut client).await?;
    Ok(client)
}

/// Asks for the notifications of changed reviews and credentials on this connection.
async fn listen(client: &Client) -> anyhow::Result<()> {
    client
        .batch_execute("LISTEN phigate_reviews; LISTEN phigate_credentials")
        .await
        .map_err(|e| anyhow::anyhow!("LISTEN: {}", describe(&e)))
}

/// `phigate check --connect`: reaches the control database (as a node would, without changing
/// it) and returns the version of its schema (0: none yet; the first node creates it).
pub async fn probe(config: &ClusterConfig) -> anyhow::Result<i32> {
    let (pg, tls) = pg_config(config, "phigate check")?;
    let (client, connection) = tokio::time::timeout(OPERATION_TIMEOUT * 2, pg.connect(tls))
        .await
        .map_err(|_| anyhow::anyhow!("cannot connect to the control database: timed out"))?
        .map_err(|e| anyhow::anyhow!("cannot connect to the control database: {}", describe(&e)))?;
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT CASE WHEN to_regclass('phigate.schema_version') IS NULL THEN 0
                    ELSE (SELECT coalesce(max(version), 0) FROM phigate.schema_version) END",
            &[],
        )
        .await
        .map_err(|e| anyhow::anyhow!("the control database: {}", describe(&e)))?;
    let version: i32 = row.get(0);
    if version > schema::VERSION {
        anyhow::bail!(
            "the control database's schema is version {version}, newer than this gateway knows ({})",
            schema::VERSION
        );
    }
    Ok(version)
}

/// A connection to the control database (TLS or not, as `cluster.tls` says).
type Connection =
    tokio_postgres::Connection<tokio_postgres::Socket, tls::Stream<tokio_postgres::Socket>>;

/// How to reach the control database: the URL's settings with the password from where the
/// config says, `sslmode` from `cluster.tls`, and the TLS configuration.
fn pg_config(
    config: &ClusterConfig,
    application: &str,
) -> anyhow::Result<(tokio_postgres::Config, tls::MakeRustls)> {
    use crate::config::UpstreamTlsMode;
    let mut pg = tokio_postgres::Config::from_str(&config.control_database)
        .map_err(|_| anyhow::anyhow!("cluster.control_database is not a connection URL"))?;
    if let Some(pw) = config.resolve_password()? {
        pg.password(pw);
    }
    pg.connect_timeout(Duration::from_secs(10));
    pg.application_name(application);
    pg.ssl_mode(match config.tls {
        UpstreamTlsMode::Disable => tokio_postgres::config::SslMode::Disable,
        _ => tokio_postgres::config::SslMode::Require,
    });
    // With `disable` the configuration is never used; verify-full is the safe one to hold.
    let mode = match config.tls {
        UpstreamTlsMode::Disable => UpstreamTlsMode::VerifyFull,
        m => m,
    };
    let tls = crate::tls::upstream_config(mode, config.ca_file.as_deref())
        .map_err(|e| anyhow::anyhow!("cluster TLS: {e}"))?
        .ok_or_else(|| anyhow::anyhow!("cluster TLS: no configuration"))?;
    Ok((pg, tls::MakeRustls(tls)))
}

/// An error of the control database as a log line: its SQLSTATE and message when the server
/// sent one (tokio-postgres's own text says only "db error").
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}", db.code().code(), db.message()),
        // With its cause (a TLS handshake's says which certificate check failed).
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// Drives a connection, turning its notifications into ticks; returns why it ended.
async fn drive(mut connection: Connection, ticks: Ticks) -> String {
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    while let Some(m) = messages.next().await {
        match m {
            // Anyone who can connect can NOTIFY: a notification only says "read again", and
            // each watch coalesces a burst into one wake-up.
            Ok(AsyncMessage::Notification(n)) => match n.channel() {
                "phigate_reviews" => ticks.reviews.send_modify(|v| *v += 1),
                "phigate_credentials" => ticks.credentials.send_modify(|v| *v += 1),
                _ => {}
            },
            Ok(_) => {}
            Err(e) => return describe(&e),
        }
    }
    "the connection closed".into()
}

/// Settled reviews older than a week, and grants that ran out, leave the control database
/// (the audit log keeps every step).
async fn sweep(client: &Client) {
    let swept = client.batch_execute(
        "DELETE FROM phigate.reviews WHERE status <> 'pending' AND updated_at < now() - interval '7 days';
         DELETE FROM phigate.fingerprint_grants WHERE until < now();
         DELETE FROM phigate.elevations WHERE until < now();
         DELETE FROM phigate.failed_logins WHERE window_start < now() - interval '1 day';",
    );
    match tokio::time::timeout(OPERATION_TIMEOUT, swept).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %describe(&e), "cannot sweep the control database"),
        Err(_) => tracing::warn!("sweeping the control database timed out"),
    }
}

/// `cluster.node_id`, else the id kept in `<data_dir>/node_id` (generated on first start).
fn node_id(config: &ClusterConfig, data_dir: Option<&Path>) -> anyhow::Result<String> {
    if let Some(id) = &config.node_id {
        return Ok(id.clone());
    }
    let Some(dir) = data_dir else {
        anyhow::bail!("a cluster node needs cluster.node_id or a data_dir to keep one in");
    };
    let path = dir.join("node_id");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim().to_owned();
            if !crate::config::valid_node_id(&id) {
                anyhow::bail!("{} does not hold a valid node id", path.display());
            }
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = format!("node-{:08x}", rand::random::<u32>());
            crate::fsutil::private_dir_all(dir)?;
            crate::fsutil::write_private_new(&path, format!("{id}\n").as_bytes())?;
            Ok(id)
        }
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}
