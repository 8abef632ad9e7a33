//! `phigate demo`: the whole product on an embedded default.
//!
//! Starts a throwaway PostgreSQL from the machine's binaries, seeds the synthetic clinic
//! dataset, puts the gateway in front of it on loopback, prints ready-to-paste `psql` commands
//! for each demo identity, and cleans everything up on Ctrl-C.

pub mod nodes;

use std::path::{Path, PathBuf};

use phigate_cluster::{Cluster, ClusterOptions};
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde_json::json;

use crate::auth::DEVELOPMENT_ISSUER;
use crate::config::{
    AuditConfig, AuthConfig, BindingConfig, Config, Listen, Log, ServerTls, Upstream,
    UpstreamTlsMode,
};
use phigate_policy::{GrantConfig, RoleConfig, RuleAction, RuleConfig};

/// The synthetic, deterministic clinic dataset (no real person in it).
pub const SEED_SQL: &str = include_str!("seed.sql");

/// Database the demo creates and serves.
pub const DATABASE: &str = "clinic";

/// The database login the gateway uses; clients never learn its password.
pub const UPSTREAM_USER: &str = "phigate_app";

/// The demo identities: name in the ready file, subject, role (the startup `user`), and the
/// group their token carries (bound to that role). The development issuer's sign-in page (the
/// web console) lists them too.
pub const IDENTITIES: [(&str, &str, &str, &str); 4] = crate::config::auth::DEVELOPMENT_IDENTITIES;

/// How long the demo's tokens live.
pub const TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Port for PostgreSQL clients (0 = any free port).
    pub pg_port: u16,
    /// Port for the HTTP endpoints (0 = any free port).
    pub http_port: u16,
    /// Where the demo keeps its state; a temporary directory if unset.
    pub data_dir: Option<PathBuf>,
    /// Written (JSON) once the gateway accepts connections.
    pub ready_file: Option<PathBuf>,
    /// Gateway nodes (1: a single node; more: a cluster on a control database).
    pub nodes: usize,
}

fn token() -> String {
    let body: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(40)
        .map(char::from)
        .collect();
    format!("phg_dev_{body}")
}

/// Runs the demo until SIGINT / SIGTERM.
pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let (data_dir, _temp) = match &opts.data_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            (std::fs::canonicalize(d)?, None)
        }
        None => {
            let t = tempfile::Builder::new().prefix("phigate-demo-").tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    if !(1..=nodes::MAX_NODES).contains(&opts.nodes) {
        anyhow::bail!("--nodes: 1 to {}", nodes::MAX_NODES);
    }
    let (cluster, app_password) = start_database(&data_dir).await?;
    let tls = self_signed(&data_dir.join("tls"))?;
    let mut config = demo_config(&opts, &data_dir, &cluster, &tls, &app_password)?;
    if opts.nodes > 1 {
        config.cluster = Some(nodes::control_database(&cluster, &data_dir)?);
    }
    let mut signals = crate::server::Signals::install();
    let running = crate::server::start(&config).await?;
    let signer = running
        .shared
        .auth
        .signer()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("the demo gateway has no signing key"))?;
    let mut tokens = Vec::new();
    for (_, subject, _, group) in IDENTITIES {
        let (tok, _) = signer.mint(subject, &[group.to_owned()], DEVELOPMENT_ISSUER, TOKEN_TTL)?;
        tokens.push(tok);
    }
    // The config as it runs (issuer pinned to the bound HTTP address), for `phigate token mint
    // --config` and `phigate keys ... --config`.
    let mut written = config.clone();
    written.auth.issuer = Some(signer.issuer.clone());
    write_private(
        &data_dir.join("phigate.toml"),
        &toml::to_string_pretty(&written)?,
    )?;
    // SIGHUP reloads that file, as `phigate serve` reloads its config.
    crate::server::spawn_reload_on_sighup(
        running.shared.clone(),
        data_dir.join("phigate.toml"),
        &mut signals,
    );
    let pg = running.pg_addr;
    let http = running
        .http_addr
        .map(|a| format!("http://{a}"))
        .unwrap_or_default();
    let others = if opts.nodes > 1 {
        // Started here, on the demo's main thread (see nodes::start), waited for elsewhere.
        let started = nodes::start(
            &written,
            &data_dir,
            opts.nodes,
            (opts.pg_port, opts.http_port),
        )?;
        let dir = data_dir.clone();
        tokio::task::spawn_blocking(move || nodes::wait_ready_all(started, &dir)).await??
    } else {
        nodes::Nodes(Vec::new())
    };
    if let Some(path) = &opts.ready_file {
        let mut ready = ready_json(pg, &http, &tokens, &cluster, &data_dir, &tls);
        if opts.nodes > 1 {
            let mut list = vec![serde_json::json!({
                "node_id": "node-0",
                "postgres": {"host": pg.ip().to_string(), "port": pg.port(), "database": DATABASE},
                "http": http,
                "pid": std::process::id(),
            })];
            list.extend(others.0.iter().map(|n| {
                serde_json::json!({
                    "node_id": n.node_id,
                    "postgres": {"host": n.pg.ip().to_string(), "port": n.pg.port(), "database": DATABASE},
                    "http": format!("http://{}", n.http),
                    "pid": n.pid(),
                })
            }));
            ready["nodes"] = serde_json::Value::Array(list);
        }
        let tmp = path.with_extension("tmp");
        // It holds every token and the superuser password: owner-only.
        write_private(&tmp, &serde_json::to_string_pretty(&ready)?)?;
        std::fs::rename(&tmp, path)?;
    }
    print_ready(started, pg, &http, &tokens, &tls, &data_dir);
    for n in &others.0 {
        println!(
            "Cluster node {}: postgresql://{}/{DATABASE}   HTTP: http://{} (pid {})",
            n.node_id,
            n.pg,
            n.http,
            n.pid()
        );
    }

    let stop = running.stop_token();
    tokio::spawn(async move {
        signals.shutdown().await;
        stop.cancel();
    });
    running.wait().await;
    tokio::task::spawn_blocking(move || drop(others)).await?;
    if let Some(path) = &opts.ready_file {
        let _ = std::fs::remove_file(path);
    }
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    eprintln!("phigate demo: stopped and cleaned up.");
    Ok(())
}

/// A throwaway PostgreSQL in `<data_dir>/postgres` with the gateway's login and the seeded
/// clinic database; returns it and the login's password.
async fn start_database(data_dir: &Path) -> anyhow::Result<(Cluster, String)> {
    let pg_dir = data_dir.join("postgres");
    if pg_dir.exists() {
        // A previous demo that did not clean up (killed hard): start over.
        std::fs::remove_dir_all(&pg_dir)?;
    }
    eprintln!(
        "phigate demo: starting a throwaway PostgreSQL in {} ...",
        pg_dir.display()
    );
    let cluster = tokio::task::spawn_blocking(move || {
        Cluster::start(ClusterOptions {
            dir: Some(pg_dir),
            ..Default::default()
        })
    })
    .await??;

    let app_password = token();
    eprintln!("phigate demo: seeding the synthetic clinic dataset ...");
    let setup = format!(
        "CREATE ROLE {UPSTREAM_USER} LOGIN CREATEROLE PASSWORD '{app_password}';\n\
         CREATE DATABASE {DATABASE} OWNER {UPSTREAM_USER};\n"
    );
    let cluster = tokio::task::spawn_blocking(move || -> anyhow::Result<Cluster> {
        cluster.psql("postgres", &setup)?;
        cluster.psql(DATABASE, &format!("SET ROLE {UPSTREAM_USER};\n{SEED_SQL}"))?;
        Ok(cluster)
    })
    .await??;
    Ok((cluster, app_password))
}

/// The demo's config (and the key and password files it names, written beside it).
fn demo_config(
    opts: &DemoOptions,
    data_dir: &Path,
    cluster: &Cluster,
    tls: &ServerTls,
    app_password: &str,
) -> anyhow::Result<Config> {
    // The key of the clinician's encrypted recordings. In production it lives off the data
    // disk (recording.key_env from a secret store); the demo keeps everything in one place.
    let recording_key = data_dir.join("keys").join("recording.key");
    crate::fsutil::private_dir_all(&data_dir.join("keys"))?;
    if !recording_key.exists() {
        let mut key = [0u8; 32];
        rand::thread_rng().fill(&mut key[..]);
        write_private(&recording_key, &hex::encode(key))?;
    }
    let password_file = data_dir.join("upstream.password");
    write_private(&password_file, app_password)?;
    Ok(Config {
        cluster: None,
        listen: Listen {
            address: ([127, 0, 0, 1], opts.pg_port).into(),
            http_address: Some(([127, 0, 0, 1], opts.http_port).into()),
            max_message_bytes: 64 * 1024 * 1024,
            startup_timeout_secs: 15,
            shutdown_grace_secs: 10,
            allow_plaintext_loopback: true,
            metrics: crate::config::MetricsAccess::Loopback,
            http_header_timeout_secs: 10,
            http_body_timeout_secs: 30,
            http_max_connections: 256,
            http_connections_per_source: 64,
            // Plain HTTP on loopback: the browser needs no certificate exception for the demo.
            http_tls: false,
        },
        tls: Some(tls.clone()),
        upstream: Upstream {
            host: cluster.host().to_owned(),
            port: cluster.port(),
            database: Some(DATABASE.to_owned()),
            user: UPSTREAM_USER.to_owned(),
            password: None,
            password_env: None,
            password_file: Some(password_file),
            tls: UpstreamTlsMode::Disable,
            ca_file: None,
            connect_timeout_secs: 10,
            statement_cache: crate::config::DEFAULT_STATEMENT_CACHE,
        },
        data_dir: Some(data_dir.to_path_buf()),
        // The development issuer: the gateway signs each demo identity's token itself.
        auth: AuthConfig {
            development: true,
            ..AuthConfig::default()
        },
        bindings: demo_bindings(),
        // The audit log in <data-dir>/audit; the reviewer reads it over the HTTP API.
        audit: AuditConfig {
            reader_roles: vec!["reviewer".into()],
            ..AuditConfig::default()
        },
        identities: Vec::new(),
        limits: Default::default(),
        phi: demo_phi(),
        // The agent may ask to act as a clinician for a while (`phigate review request`); a
        // reviewer decides.
        approvals: crate::config::ApprovalsConfig {
            elevation_roles: vec!["clinician".into()],
            ..Default::default()
        },
        recording: crate::config::RecordingConfig {
            key_file: Some(recording_key),
            ..Default::default()
        },
        masking_key_file: None,
        console: Default::default(),
        log: Log::default(),
        runtime: Default::default(),
        // The clinician's recordings keep the rows it saw, encrypted with the demo's recording
        // key (the agent's keep masked rows, as it received them).
        roles: demo_roles()
            .into_iter()
            .map(|mut r| {
                if r.name == "clinician" {
                    r.record = Some(phigate_policy::RecordMode::Rows);
                }
                r
            })
            .collect(),
        rules: demo_rules(),
    })
}

/// The ready file: where to connect, as whom, and the database underneath (for tests).
fn ready_json(
    pg: std::net::SocketAddr,
    http: &str,
    tokens: &[String],
    cluster: &Cluster,
    data_dir: &Path,
    tls: &ServerTls,
) -> serde_json::Value {
    let identities: serde_json::Map<String, serde_json::Value> = IDENTITIES
        .iter()
        .zip(tokens)
        .map(|((name, subject, role, group), tok)| {
            (
                (*name).to_owned(),
                json!({"user": role, "password": tok, "subject": subject, "groups": [group]}),
            )
        })
        .collect();
    json!({
        "postgres": {"host": pg.ip().to_string(), "port": pg.port(), "database": DATABASE},
        "http": http,
        "mcp": format!("{http}/mcp"),
        "console": format!("{http}/console/"),
        "identities": identities,
        "upstream": {
            "host": cluster.host(),
            "port": cluster.port(),
            "user": phigate_cluster::SUPERUSER,
            "password": cluster.superuser_password(),
            "database": DATABASE,
            "data_dir": cluster.data_dir(),
        },
        "data_dir": data_dir,
        "tls": {"ca_file": tls.cert_file},
    })
}

/// Ready-to-paste commands for each identity, the reviewer's and the auditor's.
fn print_ready(
    started: std::time::Instant,
    pg: std::net::SocketAddr,
    http: &str,
    tokens: &[String],
    tls: &ServerTls,
    data_dir: &Path,
) {
    println!(
        "\nphigate demo is ready in {:.1}s.",
        started.elapsed().as_secs_f64()
    );
    println!("Gateway: postgresql://{pg}/{DATABASE}   HTTP: {http}\n");
    for ((name, subject, role, _), tok) in IDENTITIES.iter().zip(tokens) {
        println!("# {name} ({subject}, role {role})");
        println!(
            "PGPASSWORD={tok} psql \"host={} port={} dbname={DATABASE} user={role} sslmode=disable\"\n",
            pg.ip(),
            pg.port()
        );
    }
    println!(
        "TLS works too: add sslmode=verify-full sslrootcert={} (host=localhost or 127.0.0.1).",
        tls.cert_file.display()
    );
    if let Some(reviewer) = IDENTITIES
        .iter()
        .zip(tokens)
        .find(|((name, ..), _)| *name == "reviewer")
        .map(|(_, tok)| tok)
    {
        println!(
            "\nThe agent sees PHI masked; its changes wait for a reviewer. As the reviewer:\n\
             export PHIGATE_URL={http} PHIGATE_TOKEN={reviewer}\n\
             phigate review list        # then: phigate review approve ID --reason \"...\"\n\
             Audit: phigate audit verify --data-dir {dir}; phigate audit report --data-dir {dir}\n",
            dir = data_dir.display()
        );
    }
    println!(
        "Web console: {http}/console/ (sign in as any demo identity on the development issuer's page)."
    );
    println!("Press Ctrl-C to stop; the throwaway database is deleted on exit.");
}

/// The clinical tables of the demo dataset.
const CLINICAL: [&str; 5] = [
    "patients",
    "encounters",
    "prescriptions",
    "lab_results",
    "departments",
];

/// The demo policy: the agent reads the clinical tables and needs approval for anything else;
/// the clinician reads and writes them; the admin runs DDL, destructive DDL needs approval; the
/// reviewer has no data access.
pub fn demo_roles() -> Vec<RoleConfig> {
    let clinical = || CLINICAL.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>();
    let grant = |actions: &[&str], tables: Vec<String>| GrantConfig {
        schema: "public".into(),
        tables,
        actions: actions.iter().map(|a| (*a).to_owned()).collect(),
    };
    let role = |name: &str, restricted: bool, grants: Vec<GrantConfig>| RoleConfig {
        name: name.into(),
        restricted,
        read_only: false,
        search_path: vec!["public".into()],
        statement_timeout: Some("60s".into()),
        idle_timeout: Some("30min".into()),
        transaction_timeout: None,
        max_sessions: None,
        allow_functions: vec![],
        grants,
        // The agent sees PHI masked; the others see it as stored.
        masked: name == "ai-agent",
        masking: Default::default(),
        // The agent may join and group on tokens, never filter or sort on other PHI.
        phi_predicates: RuleAction::Deny,
        record: None,
    };
    vec![
        role("ai-agent", true, vec![grant(&["select"], clinical())]),
        role(
            "clinician",
            true,
            vec![grant(&["select", "write"], clinical())],
        ),
        role(
            "admin",
            false,
            vec![GrantConfig {
                schema: "*".into(),
                tables: vec!["*".into()],
                actions: vec!["*".into()],
            }],
        ),
        role("reviewer", true, vec![]),
    ]
}

/// The demo's roles, rules and PHI tags as TOML tables (`[[role]]`, `[[rule]]`, `[[phi]]`), for a
/// config that puts the demo policy in front of the demo data elsewhere (tests, experiments).
pub fn policy_toml() -> Result<String, toml::ser::Error> {
    policy_toml_with(demo_roles())
}

/// [`policy_toml`] with other roles in front of the demo's rules and PHI tags.
pub fn policy_toml_with(roles: Vec<RoleConfig>) -> Result<String, toml::ser::Error> {
    #[derive(serde::Serialize)]
    struct Policy {
        role: Vec<RoleConfig>,
        rule: Vec<RuleConfig>,
        phi: Vec<phigate_policy::masking::PhiTableConfig>,
    }
    toml::to_string(&Policy {
        role: roles,
        rule: demo_rules(),
        phi: demo_phi(),
    })
}

/// The PHI of the demo dataset (the HIPAA Safe Harbor identifiers among its columns).
pub fn demo_phi() -> Vec<phigate_policy::masking::PhiTableConfig> {
    use phigate_policy::masking::{PhiTableConfig, PhiType};
    let table = |name: &str, cols: &[(&str, PhiType)]| PhiTableConfig {
        table: format!("public.{name}"),
        columns: cols.iter().map(|(c, t)| ((*c).to_owned(), *t)).collect(),
    };
    vec![
        table(
            "patients",
            &[
                ("mrn", PhiType::Mrn),
                ("first_name", PhiType::Name),
                ("last_name", PhiType::Name),
                ("ssn", PhiType::Ssn),
                ("date_of_birth", PhiType::DateOfBirth),
                ("email", PhiType::Email),
                ("phone", PhiType::Phone),
                ("address", PhiType::Address),
                ("city", PhiType::Address),
                ("zip", PhiType::Zip),
                ("insurance_member_id", PhiType::MemberId),
                // Safe Harbor: every date tied to an individual, except the year.
                ("created_at", PhiType::Date),
            ],
        ),
        table(
            "encounters",
            &[
                ("admitted_at", PhiType::Date),
                ("discharged_at", PhiType::Date),
                ("notes", PhiType::FreeText),
            ],
        ),
        table("prescriptions", &[("prescribed_at", PhiType::Date)]),
        table("lab_results", &[("taken_at", PhiType::Date)]),
    ]
}

/// Each demo group may assume its role, on the development issuer's word only.
pub fn demo_bindings() -> Vec<BindingConfig> {
    IDENTITIES
        .iter()
        .map(|(_, _, role, group)| BindingConfig {
            roles: vec![(*role).to_owned()],
            groups: vec![(*group).to_owned()],
            subjects: vec![],
            issuer: Some(DEVELOPMENT_ISSUER.to_owned()),
        })
        .collect()
}

pub fn demo_rules() -> Vec<RuleConfig> {
    let rule = |name: &str, roles: &[&str], kinds: &[&str], hint: &str| RuleConfig {
        name: name.into(),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        kinds: kinds.iter().map(|k| (*k).to_owned()).collect(),
        relations: vec![],
        functions: vec![],
        action: RuleAction::RequireApproval,
        hint: Some(hint.into()),
        approval: Default::default(),
    };
    vec![
        rule(
            "agent-changes-need-approval",
            &["ai-agent"],
            &["write", "ddl", "privilege", "maintenance", "lock"],
            "The agent may read the clinical tables; a reviewer must approve any change.",
        ),
        rule(
            "destructive-ddl-needs-approval",
            &["admin"],
            &["destructive"],
            "DROP and TRUNCATE need a reviewer's approval.",
        ),
    ]
}

/// A self-signed certificate for localhost, so the demo shows TLS without any setup. The
/// certificate is its own trust anchor: clients verify it with `sslrootcert=<cert>`.
fn self_signed(dir: &Path) -> anyhow::Result<ServerTls> {
    crate::fsutil::private_dir_all(dir)?;
    let (cert, key) = crate::tls::self_signed(&["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    let cert_file = dir.join("server.crt");
    let key_file = dir.join("server.key");
    write_private(&cert_file, &cert)?;
    write_private(&key_file, &key)?;
    Ok(ServerTls {
        cert_file,
        key_file,
        require: false,
    })
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its mode on open: owner-only whatever it was.
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    f.write_all(text.as_bytes())
}
