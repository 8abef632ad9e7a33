//! `phigate demo --nodes N`: a cluster of N gateway nodes on the demo's PostgreSQL, which
//! holds the clinic database and the control database both (docs/cluster.md).
//!
//! Node 0 runs in the demo's own process; nodes 1.. are `phigate serve` processes with
//! configurations of their own under `<data_dir>/nodes/<node_id>/`. What a cluster's nodes
//! must share they share here by pointing at node 0's files: the masking key (so every node
//! provisions the same masked logins), the recording key, the upstream password, and the
//! token-signing key with the token issuer (copied, so a token any node signs works on all).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use phigate_cluster::Cluster;

use crate::config::{ClusterConfig, Config};

/// The demo's control database and its login.
const CONTROL_DATABASE: &str = "phigate_control";

/// At most this many nodes.
pub const MAX_NODES: usize = 9;

/// A node started as a process of its own.
pub struct Node {
    pub node_id: String,
    pub pg: std::net::SocketAddr,
    pub http: std::net::SocketAddr,
    child: Child,
}

impl Node {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Stops the nodes (SIGTERM, then SIGKILL after the grace) when dropped.
pub struct Nodes(pub Vec<Node>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(n.child.id() as i32)
                    .unwrap_or(rustix::process::Pid::INIT),
                rustix::process::Signal::TERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        for n in &mut self.0 {
            while matches!(n.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = n.child.kill();
            let _ = n.child.wait();
        }
    }
}

/// Creates the control database in the demo's PostgreSQL; returns the `[cluster]` of node 0.
pub fn control_database(cluster: &Cluster, data_dir: &Path) -> anyhow::Result<ClusterConfig> {
    let password = super::token();
    cluster.psql(
        "postgres",
        &format!(
            "CREATE ROLE {CONTROL_DATABASE} LOGIN PASSWORD '{password}';\n\
             CREATE DATABASE {CONTROL_DATABASE} OWNER {CONTROL_DATABASE};\n\
             REVOKE CONNECT, TEMPORARY ON DATABASE {CONTROL_DATABASE} FROM PUBLIC;"
        ),
    )?;
    let password_file = data_dir.join("control.password");
    super::write_private(&password_file, &password)?;
    Ok(ClusterConfig {
        control_database: format!(
            "postgres://{CONTROL_DATABASE}@{}:{}/{CONTROL_DATABASE}",
            cluster.host(),
            cluster.port()
        ),
        password_env: None,
        password_file: Some(password_file),
        node_id: Some("node-0".into()),
        lease_secs: 10,
        poll_interval_ms: 500,
        tls: Default::default(),
        ca_file: None,
    })
}

/// Starts nodes 1..`count` from node 0's running configuration `first` (its issuer pinned).
/// Call it on a thread that lives as long as the demo (the main thread): the kernel's signal
/// to a node when the demo ends follows the thread that started it.
pub fn start(
    first: &Config,
    data_dir: &Path,
    count: usize,
    ports: (u16, u16),
) -> anyhow::Result<Nodes> {
    let mut nodes = Nodes(Vec::new());
    let signing_key = crate::auth::signer::key_path(data_dir);
    for i in 1..count {
        let node_id = format!("node-{i}");
        let dir = data_dir.join("nodes").join(&node_id);
        crate::fsutil::private_dir_all(&dir.join("data").join("keys"))?;
        std::fs::copy(
            &signing_key,
            crate::auth::signer::key_path(&dir.join("data")),
        )?;
        let port = |base: u16| -> anyhow::Result<u16> {
            match base {
                0 => Ok(phigate_cluster::free_port()?),
                b => b
                    .checked_add(2 * i as u16)
                    .ok_or_else(|| anyhow::anyhow!("no port left for {node_id}")),
            }
        };
        let (pg, http) = (
            std::net::SocketAddr::from(([127, 0, 0, 1], port(ports.0)?)),
            std::net::SocketAddr::from(([127, 0, 0, 1], port(ports.1)?)),
        );
        let mut config = first.clone();
        config.listen.address = pg;
        config.listen.http_address = Some(http);
        config.data_dir = Some(dir.join("data"));
        config.masking_key_file = Some(
            first
                .masking_key_file
                .clone()
                .unwrap_or_else(|| data_dir.join("keys").join("masking-token.key")),
        );
        if let Some(c) = config.cluster.as_mut() {
            c.node_id = Some(node_id.clone());
        }
        let path = dir.join("phigate.toml");
        super::write_private(&path, &toml::to_string_pretty(&config)?)?;
        let child = spawn(&path, &dir.join("gateway.log"))?;
        nodes.0.push(Node {
            node_id,
            pg,
            http,
            child,
        });
    }
    Ok(nodes)
}

/// Waits until each node accepts connections (blocking; a node that exits or stays silent
/// for a minute fails the demo, and dropping `nodes` stops the others).
pub fn wait_ready_all(mut nodes: Nodes, data_dir: &Path) -> anyhow::Result<Nodes> {
    for n in &mut nodes.0 {
        wait_ready(n, data_dir)?;
    }
    Ok(nodes)
}

fn spawn(config: &Path, log: &Path) -> anyhow::Result<Child> {
    let log = std::fs::File::create(log)?;
    Ok(Command::new(std::env::current_exe()?)
        .arg("serve")
        .arg("--config")
        .arg(config)
        // The node stops with the demo, even when the demo is killed without a goodbye.
        .env(PARENT_ENV, std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?)
}

/// Set by the demo for the nodes it starts: the demo's pid.
pub const PARENT_ENV: &str = "PHIGATE_DEMO_PARENT";

/// A node started by `phigate demo --nodes`: asks the kernel for SIGTERM when the demo's
/// process ends, and stops at once if it already has.
pub fn exit_with_demo() -> anyhow::Result<()> {
    let Some(parent) = std::env::var(PARENT_ENV)
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    else {
        return Ok(());
    };
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))?;
    let now = rustix::process::getppid().map(|p| p.as_raw_nonzero().get());
    if now != Some(parent) {
        anyhow::bail!("the demo that started this node has ended");
    }
    Ok(())
}

fn wait_ready(n: &mut Node, data_dir: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let log = || -> PathBuf { data_dir.join("nodes").join(&n.node_id).join("gateway.log") };
    while Instant::now() < deadline {
        if let Some(status) = n.child.try_wait()? {
            anyhow::bail!(
                "{} exited ({status}) before it accepted connections: see {}",
                n.node_id,
                log().display()
            );
        }
        if std::net::TcpStream::connect(n.pg).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!(
        "{} did not accept connections within 60 s: see {}",
        n.node_id,
        log().display()
    )
}
