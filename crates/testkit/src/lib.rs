//! Test helpers shared by phigate's integration tests.
//!
//! - [`clinic`]: one throwaway PostgreSQL per test binary, seeded with the demo dataset, with a
//!   least-privilege login for the gateway (`phigate_app`).
//! - [`Gateway`]: the real `phigate` binary started as a process with a generated config, one
//!   token per test identity, stopped on drop.
//! - [`Certs`]: a CA and a server certificate generated at test time (no keys in the repo).
//! - [`raw`]: a client speaking the protocol by hand, on `phigate-wire`.

pub mod raw;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use phigate_cluster::{free_port, Cluster, ClusterOptions, SUPERUSER};
use sha2::{Digest, Sha256};

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The gateway's database login in test clusters.
pub const APP_USER: &str = "phigate_app";
pub const APP_PASSWORD: &str = "app-password-for-tests";
pub const DATABASE: &str = "clinic";

/// Identities every test gateway knows: (name, subject, role). The startup `user` is the role.
pub const IDENTITIES: [(&str, &str, &str); 4] = [
    ("agent", "agent@test.phigate", "ai-agent"),
    ("clinician", "clinician@test.phigate", "clinician"),
    ("admin", "admin@test.phigate", "admin"),
    ("reviewer", "reviewer@test.phigate", "reviewer"),
];

/// Creates the gateway's login and the `clinic` database, seeded with `seed_sql`.
pub fn prepare_clinic(cluster: &Cluster, seed_sql: &str) -> Result<(), Error> {
    cluster.psql(
        "postgres",
        &format!(
            "CREATE ROLE {APP_USER} LOGIN CREATEROLE PASSWORD '{APP_PASSWORD}';\n\
             CREATE DATABASE {DATABASE} OWNER {APP_USER};"
        ),
    )?;
    cluster.psql(DATABASE, &format!("SET ROLE {APP_USER};\n{seed_sql}"))?;
    Ok(())
}

/// The shared, seeded cluster of this test binary. Started on first use, deleted when the
/// process exits.
pub fn clinic(seed_sql: &str) -> &'static Cluster {
    static CLUSTER: OnceLock<&'static Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let cluster = Cluster::start(ClusterOptions {
            settings: vec![("max_connections".into(), "300".into())],
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("cannot start the test PostgreSQL: {e}"));
        prepare_clinic(&cluster, seed_sql).unwrap_or_else(|e| panic!("cannot seed: {e}"));
        cluster
            .leak_for_process()
            .unwrap_or_else(|e| panic!("cannot keep the cluster: {e}"))
    })
}

pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// A `phigate serve` process.
pub struct Gateway {
    child: Child,
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub pg_port: u16,
    pub http_port: u16,
    tokens: HashMap<&'static str, String>,
}

/// What a test may change in the generated config.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    pub upstream_host: String,
    pub upstream_port: u16,
    pub upstream_user: String,
    pub upstream_password: Option<String>,
    /// Extra lines for the `[upstream]` table, e.g. `tls = "verify-full"`.
    pub upstream_extra: String,
    /// Extra lines for the `[listen]` table.
    pub listen_extra: String,
    /// Extra top-level TOML (e.g. a `[tls]` table), appended at the end; `{http_port}` in it
    /// becomes the HTTP port chosen (for URLs that name the gateway, such as a SAML ACS).
    pub extra: String,
    /// The `[[role]]` / `[[rule]]` tables. Default: [`PASS_THROUGH_POLICY`].
    pub policy: String,
    /// Top-level keys, placed before every table (e.g. `auth.leeway_secs = 1`).
    pub top: String,
    /// Give the gateway a data directory (API keys, its signing key): [`Gateway::data_dir`].
    pub data_dir: bool,
    /// Run the gateway with this file descriptor limit (soft and hard), via `prlimit`.
    pub nofile: Option<u64>,
}

/// Every test role unrestricted with every grant: the gateway relays like a plain proxy (the
/// built-in guards against server files and dangerous functions still apply).
pub const PASS_THROUGH_POLICY: &str = r#"
[[role]]
name = "ai-agent"
restricted = false
[[role.grant]]
schema = "*"
actions = ["*"]

[[role]]
name = "clinician"
restricted = false
[[role.grant]]
schema = "*"
actions = ["*"]

[[role]]
name = "admin"
restricted = false
[[role.grant]]
schema = "*"
actions = ["*"]

[[role]]
name = "reviewer"
restricted = false
[[role.grant]]
schema = "*"
actions = ["*"]
"#;

impl GatewayOptions {
    /// Defaults that front `cluster` with the gateway's least-privilege login.
    pub fn for_cluster(cluster: &Cluster) -> Self {
        GatewayOptions {
            upstream_host: cluster.host().to_owned(),
            upstream_port: cluster.port(),
            upstream_user: APP_USER.into(),
            upstream_password: Some(APP_PASSWORD.into()),
            upstream_extra: String::new(),
            listen_extra: String::new(),
            extra: String::new(),
            policy: PASS_THROUGH_POLICY.to_owned(),
            top: String::new(),
            // The audit log (on by default) lives in the data directory.
            data_dir: true,
            nofile: None,
        }
    }
}

impl Gateway {
    /// Starts the binary at `bin` (use `env!("CARGO_BIN_EXE_phigate")`) and waits until it
    /// accepts connections.
    pub fn start(bin: &Path, opts: GatewayOptions) -> Result<Gateway, Error> {
        let all: Vec<&str> = IDENTITIES.iter().map(|(n, _, _)| *n).collect();
        Gateway::start_with_identities(bin, opts, &all)
    }

    /// Like [`Gateway::start`], with only the named test identities (for policies that define
    /// only some of the roles).
    pub fn start_with_identities(
        bin: &Path,
        opts: GatewayOptions,
        names: &[&str],
    ) -> Result<Gateway, Error> {
        // A free port can be taken by another test's process between choosing it and the
        // gateway's bind: then start again on other ports.
        let mut attempt = 0;
        loop {
            match Gateway::start_once(bin, opts.clone(), names) {
                Err(e) if attempt < 3 && e.to_string().contains("Address already in use") => {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn start_once(bin: &Path, opts: GatewayOptions, names: &[&str]) -> Result<Gateway, Error> {
        let dir = tempfile::Builder::new().prefix("phigate-gw-").tempdir()?;
        let pg_port = free_port()?;
        let http_port = free_port()?;
        let mut tokens = HashMap::new();
        let mut identities = String::new();
        for (name, subject, role) in IDENTITIES.into_iter().filter(|(n, _, _)| names.contains(n)) {
            let token = format!(
                "tok-{name}-{}",
                sha256_hex(&format!("{name}{pg_port}"))[..16].to_owned()
            );
            identities.push_str(&format!(
                "\n[[identity]]\nsubject = \"{subject}\"\ntoken_sha256 = \"{}\"\nroles = [\"{role}\"]\n",
                sha256_hex(&token)
            ));
            tokens.insert(name, token);
        }
        let password = opts
            .upstream_password
            .as_ref()
            .map(|p| format!("password = \"{p}\"\n"))
            .unwrap_or_default();
        let mut top = opts.top.clone();
        if opts.data_dir {
            top = format!(
                "data_dir = \"{}\"\n{top}",
                dir.path().join("data").display()
            );
        }
        let config = format!(
            "{top}\n[listen]\naddress = \"127.0.0.1:{pg_port}\"\nhttp_address = \"127.0.0.1:{http_port}\"\n\
             shutdown_grace_secs = 5\n{listen_extra}\n\n\
             [upstream]\nhost = \"{host}\"\nport = {port}\ndatabase = \"{DATABASE}\"\nuser = \"{user}\"\n\
             {password}{upstream_extra}\n{identities}\n{extra}\n{policy}\n",
            listen_extra = opts.listen_extra,
            host = opts.upstream_host,
            port = opts.upstream_port,
            user = opts.upstream_user,
            upstream_extra = opts.upstream_extra,
            extra = opts.extra.replace("{http_port}", &http_port.to_string()),
            policy = opts.policy,
        );
        let config_path = dir.path().join("phigate.toml");
        std::fs::write(&config_path, config)?;
        let child = spawn_serve(bin, dir.path(), opts.nofile)?;
        let mut gw = Gateway {
            child,
            bin: bin.to_owned(),
            dir,
            pg_port,
            http_port,
            tokens,
        };
        gw.wait_ready()?;
        Ok(gw)
    }

    /// Kills the process with SIGKILL (no clean stop) and reaps it.
    pub fn kill9(&mut self) -> Result<(), Error> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Starts the gateway again on the same config, data directory and ports (after
    /// [`kill9`](Gateway::kill9) or an exit), and waits until it accepts connections.
    pub fn restart(&mut self) -> Result<(), Error> {
        if self.child.try_wait()?.is_none() {
            return Err("the gateway is still running".into());
        }
        self.child = spawn_serve(&self.bin, self.dir.path(), None)?;
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), Error> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Err(format!("gateway exited with {status}:\n{}", self.log()).into());
            }
            if TcpStream::connect(("127.0.0.1", self.pg_port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("gateway did not start listening:\n{}", self.log()).into())
    }

    pub fn token(&self, identity: &str) -> &str {
        self.tokens
            .get(identity)
            .map(String::as_str)
            .unwrap_or("no-such-identity")
    }

    /// The role an identity connects as (the startup `user`).
    pub fn role(identity: &str) -> &'static str {
        IDENTITIES
            .iter()
            .find(|(n, _, _)| *n == identity)
            .map(|(_, _, r)| *r)
            .unwrap_or("nobody")
    }

    /// A libpq keyword/value connection string for `identity`.
    pub fn conninfo(&self, identity: &str) -> String {
        format!(
            "host=127.0.0.1 port={} dbname={DATABASE} user={} password={} sslmode=disable",
            self.pg_port,
            Gateway::role(identity),
            self.token(identity)
        )
    }

    /// A `postgresql://` URL for `identity`.
    pub fn url(&self, identity: &str) -> String {
        format!(
            "postgresql://{}:{}@127.0.0.1:{}/{DATABASE}?sslmode=disable",
            Gateway::role(identity),
            self.token(identity),
            self.pg_port
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    /// Waits up to ten seconds until the log holds `needle` at least `n` times. The gateway
    /// writes its log after it answers the client, so a test that just saw an answer must
    /// wait for the line rather than read the log once.
    pub fn wait_log(&self, needle: &str, n: usize) -> Result<(), Error> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.matches(needle).count() >= n {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("no {n}× '{needle}' in the gateway log:\n{log}").into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The data directory (when started with `data_dir: true`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The audit records of type `kind`, as `phigate audit search` gives them.
    pub fn audit_records(&self, kind: &str) -> Vec<serde_json::Value> {
        let out = Command::new(&self.bin)
            .args(["audit", "search", "--data-dir"])
            .arg(self.data_dir())
            .args(["--type", kind])
            .output()
            .expect("phigate audit search");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("an audit record"))
            .collect()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("phigate.toml")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGHUP: the gateway reloads its config file.
    pub fn reload(&self) -> Result<(), Error> {
        let status = Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status()?;
        if !status.success() {
            return Err(format!("kill -HUP {} failed: {status}", self.pid()).into());
        }
        Ok(())
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) -> Result<(), Error> {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err("kill -TERM failed".into())
        }
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                return Err("gateway did not exit in time".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A plain HTTP/1.0 GET against the gateway's HTTP port: (status code, body).
    pub fn http_get(&self, path: &str) -> Result<(u16, String), Error> {
        http_get(self.http_port, path)
    }

    /// An HTTP request to the gateway's API with a bearer token and a JSON body.
    pub fn http_as(
        &self,
        method: &str,
        path: &str,
        token: &str,
        json: Option<&str>,
    ) -> Result<(u16, String), Error> {
        http_request(self.http_port, method, path, Some(token), json)
    }

    /// Waits (up to 10 s) for a pending review the reviewer `token` may see, and approves it.
    /// Returns its id.
    pub fn approve_next(&self, token: &str, reason: &str) -> Result<String, Error> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let (_, body) = self.http_as("GET", "/v1/reviews", token, None)?;
            let v: serde_json::Value = serde_json::from_str(&body)?;
            if let Some(id) = v["reviews"][0]["id"].as_str() {
                let json = serde_json::json!({ "reason": reason }).to_string();
                let path = format!("/v1/reviews/{id}/approve");
                let (code, body) = self.http_as("POST", &path, token, Some(&json))?;
                if code != 200 {
                    return Err(format!("approve {id}: {code} {body}").into());
                }
                return Ok(id.to_owned());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("no pending review appeared".into())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `phigate serve` on `<dir>/phigate.toml`, its output appended to `<dir>/gateway.log`.
fn spawn_serve(bin: &Path, dir: &Path, nofile: Option<u64>) -> Result<Child, Error> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("gateway.log"))?;
    let mut command = match nofile {
        Some(n) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={n}:{n}")).arg("--").arg(bin);
            c
        }
        None => Command::new(bin),
    };
    Ok(command
        .arg("serve")
        .arg("--config")
        .arg(dir.join("phigate.toml"))
        .env("RUST_LOG", "phigate=debug,info")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?)
}

/// A plain HTTP/1.0 GET on loopback: (status code, body).
pub fn http_get(port: u16, path: &str) -> Result<(u16, String), Error> {
    http_request(port, "GET", path, None, None)
}

/// A plain HTTP/1.0 request on loopback: (status code, body).
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    json: Option<&str>,
) -> Result<(u16, String), Error> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: localhost\r\n");
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = json.unwrap_or_default();
    if json.is_some() {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    write!(s, "{head}\r\n{body}")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("bad HTTP response")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

/// A throwaway CA and a server certificate for `localhost` / 127.0.0.1, as PEM files.
pub struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    pub fn generate() -> Result<Certs, Error> {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let dir = tempfile::Builder::new()
            .prefix("phigate-certs-")
            .tempdir()?;
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "phigate test CA");
        let ca = ca_params.self_signed(&ca_key)?;
        let key = KeyPair::generate()?;
        let params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        std::fs::write(dir.path().join("ca.crt"), ca.pem())?;
        std::fs::write(dir.path().join("server.crt"), cert.pem())?;
        std::fs::write(dir.path().join("server.key"), key.serialize_pem())?;
        // An unrelated CA, for "wrong CA" tests.
        let other_key = KeyPair::generate()?;
        let mut other = CertificateParams::new(Vec::<String>::new())?;
        other.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        std::fs::write(
            dir.path().join("other-ca.crt"),
            other.self_signed(&other_key)?.pem(),
        )?;
        // PostgreSQL reads these as the postgres user.
        for f in ["ca.crt", "server.crt", "server.key", "other-ca.crt"] {
            let _ = Command::new("chmod")
                .arg("0644")
                .arg(dir.path().join(f))
                .status();
        }
        let _ = Command::new("chmod").arg("0755").arg(dir.path()).status();
        Ok(Certs { dir })
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }
    pub fn other_ca(&self) -> PathBuf {
        self.dir.path().join("other-ca.crt")
    }
    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("server.crt")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
}

/// Starts a helper process (a test identity provider, ...) that prints one JSON line to stdout
/// once it is ready: the process, and that line. Its stderr is discarded.
pub fn spawn_ready(cmd: &mut Command) -> Result<(Child, serde_json::Value), Error> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)?;
    }
    match serde_json::from_str(&line) {
        Ok(ready) => Ok((child, ready)),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!("{cmd:?} printed {line:?}, not a JSON ready line: {e}").into())
        }
    }
}

/// Runs a command, returning (exit success, stdout, stderr).
pub fn run(cmd: &mut Command) -> Result<(bool, String, String), Error> {
    let out = cmd.stdin(Stdio::null()).output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}
