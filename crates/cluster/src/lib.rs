//! Throwaway PostgreSQL clusters built from the machine's own server binaries.
//!
//! `phigate demo` and the test suites both need a real PostgreSQL that nobody has to install or
//! configure by hand: `initdb` into a fresh directory, a free TCP port on loopback, the unix socket
//! inside that directory, password (SCRAM) authentication over TCP and `trust` over the socket.
//! PostgreSQL refuses to run as root, so when we are root every server command runs as the
//! `postgres` OS user (`runuser`), which owns the directory.
//!
//! Dropping a [`Cluster`] stops the server and deletes its directory.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// What can go wrong starting or driving a cluster. Messages tell a person what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) were not found. Install them \
         (Debian/Ubuntu: `apt-get install postgresql`) or point PHIGATE_PG_BIN at their directory"
    )]
    BinariesMissing,
    #[error("{step} failed: {detail}")]
    Command { step: String, detail: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// How to build a cluster. Defaults: a temporary directory, a free port, superuser `postgres`
/// with a random password.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Directory to create the cluster in (must not exist or be empty). Temporary if `None`.
    pub dir: Option<PathBuf>,
    /// TCP port on 127.0.0.1. A free one if `None`.
    pub port: Option<u16>,
    /// Extra `postgresql.conf` settings, e.g. `("max_connections", "300")`.
    pub settings: Vec<(String, String)>,
    /// Extra `pg_hba.conf` lines, placed before the default rules.
    pub hba: Vec<String>,
    /// PEM certificate and key: the server then accepts TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug)]
pub struct Cluster {
    bin: PathBuf,
    root: PathBuf,
    _temp: Option<tempfile::TempDir>,
    port: u16,
    password: String,
    as_postgres: bool,
    running: bool,
}

pub const SUPERUSER: &str = "postgres";

/// Finds the directory with `initdb` and `pg_ctl`: `$PHIGATE_PG_BIN`, the newest
/// `/usr/lib/postgresql/*/bin`, or `PATH`.
pub fn find_binaries() -> Result<PathBuf, ClusterError> {
    if let Some(dir) = std::env::var_os("PHIGATE_PG_BIN") {
        let dir = PathBuf::from(dir);
        return if dir.join("initdb").exists() {
            Ok(dir)
        } else {
            Err(ClusterError::BinariesMissing)
        };
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .find(|d| d.join("initdb").exists() && d.join("pg_ctl").exists())
        .ok_or(ClusterError::BinariesMissing)
}

/// A TCP port on loopback that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn random_password() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn check(step: &str, out: Output) -> Result<Output, ClusterError> {
    if out.status.success() {
        Ok(out)
    } else {
        Err(ClusterError::Command {
            step: step.to_owned(),
            detail: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            ),
        })
    }
}

impl Cluster {
    /// initdb, configure and start a cluster; returns once it accepts connections.
    pub fn start(opts: ClusterOptions) -> Result<Cluster, ClusterError> {
        let bin = find_binaries()?;
        let (root, temp) = match &opts.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                (dir.clone(), None)
            }
            None => {
                let t = tempfile::Builder::new().prefix("phigate-pg-").tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let as_postgres = running_as_root();
        let port = match opts.port {
            Some(p) => p,
            None => free_port()?,
        };
        let mut cluster = Cluster {
            bin,
            root,
            _temp: temp,
            port,
            password: random_password()?,
            as_postgres,
            running: false,
        };
        cluster.init(&opts)?;
        cluster.start_server()?;
        Ok(cluster)
    }

    fn init(&self, opts: &ClusterOptions) -> Result<(), ClusterError> {
        let pwfile = self.root.join("pwfile");
        // The superuser's password, for initdb only: owner-only while it exists.
        {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&pwfile)?
                .write_all(format!("{}\n", self.password).as_bytes())?;
        }
        if self.as_postgres {
            check(
                "chown",
                Command::new("chown")
                    .arg("-R")
                    .arg("postgres:")
                    .arg(&self.root)
                    .output()?,
            )?;
        }
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(self.data_dir())
            .args([
                "-U",
                SUPERUSER,
                "-E",
                "UTF8",
                "--locale=C",
                "-A",
                "scram-sha-256",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .arg("--no-sync")
            .output()?;
        check("initdb", out)?;
        std::fs::remove_file(&pwfile)?;

        let mut conf = format!(
            "\n# written by phigate-cluster\nport = {}\nlisten_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\nfsync = off\nsynchronous_commit = off\n\
             full_page_writes = off\nmax_connections = 200\npassword_encryption = 'scram-sha-256'\n",
            self.port,
            self.root.display()
        );
        if let Some((cert, key)) = &opts.tls {
            let dst_cert = self.root.join("server.crt");
            let dst_key = self.root.join("server.key");
            std::fs::copy(cert, &dst_cert)?;
            std::fs::copy(key, &dst_key)?;
            std::fs::set_permissions(
                &dst_key,
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )?;
            if self.as_postgres {
                check(
                    "chown",
                    Command::new("chown")
                        .arg("postgres:")
                        .arg(&dst_cert)
                        .arg(&dst_key)
                        .output()?,
                )?;
            }
            let _ = write!(
                conf,
                "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
                dst_cert.display(),
                dst_key.display()
            );
        }
        for (k, v) in &opts.settings {
            let _ = writeln!(conf, "{k} = '{}'", v.replace('\'', "''"));
        }
        append(&self.data_dir().join("postgresql.conf"), &conf)?;

        let mut hba = String::from("# written by phigate-cluster\nlocal all all trust\n");
        for line in &opts.hba {
            hba.push_str(line);
            hba.push('\n');
        }
        hba.push_str("host all all 127.0.0.1/32 scram-sha-256\n");
        std::fs::write(self.data_dir().join("pg_hba.conf"), hba)?;
        Ok(())
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// Starts the server (again, after [`Cluster::stop`]).
    pub fn start_server(&mut self) -> Result<(), ClusterError> {
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.root.join("server.log"))
            .args(["-w", "-t", "60", "start"])
            .stdin(Stdio::null())
            .output()?;
        check("pg_ctl start", out).map_err(|e| self.with_log(e))?;
        self.running = true;
        Ok(())
    }

    /// Stops the server (fast mode: sessions are terminated).
    pub fn stop(&mut self) -> Result<(), ClusterError> {
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-w", "-m", "fast", "stop"])
            .output()?;
        self.running = false;
        check("pg_ctl stop", out).map(|_| ())
    }

    /// Stops the server at once, as a crash would (`pg_ctl -m immediate`): clients' connections
    /// drop without a goodbye, and the next start recovers from the WAL.
    pub fn stop_immediate(&mut self) -> Result<(), ClusterError> {
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-w", "-m", "immediate", "stop"])
            .output()?;
        self.running = false;
        check("pg_ctl stop -m immediate", out).map(|_| ())
    }

    fn with_log(&self, e: ClusterError) -> ClusterError {
        match e {
            ClusterError::Command { step, detail } => {
                let log = std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default();
                ClusterError::Command {
                    step,
                    detail: format!("{detail}\nserver log:\n{log}"),
                }
            }
            other => other,
        }
    }

    /// Runs SQL through the machine's `psql` as the superuser over the unix socket, stopping at
    /// the first error. Returns what psql printed (unaligned, tuples only).
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, ClusterError> {
        use std::io::Write;
        let mut child = self
            .command("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.root)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", SUPERUSER, "-d", database])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(sql.as_bytes())?;
        }
        let out = check("psql", child.wait_with_output()?)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The directory holding the unix socket (and the cluster).
    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn superuser_password(&self) -> &str {
        &self.password
    }

    /// A `postgresql://` URL for the superuser over TCP.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgresql://{SUPERUSER}:{}@127.0.0.1:{}/{database}",
            self.password, self.port
        )
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default()
    }
}

fn append(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)?
        .write_all(text.as_bytes())
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            let _ = self
                .command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-w", "-m", "immediate", "stop"])
                .output();
        }
        if self._temp.is_none() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

impl Cluster {
    /// Keeps the cluster for the life of this process (e.g. one per test binary) and makes sure
    /// it is stopped and deleted when the process exits, however it exits: a small watchdog
    /// process waits for our pid to disappear, then stops the server and removes the directory.
    pub fn leak_for_process(self) -> Result<&'static Cluster, ClusterError> {
        let pg_ctl = self.bin.join("pg_ctl");
        let runas = if self.as_postgres {
            "runuser -u postgres --"
        } else {
            ""
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
             {runas} '{pg_ctl}' -D '{data}' -m immediate -w stop >/dev/null 2>&1; rm -rf '{root}'",
            pid = std::process::id(),
            pg_ctl = pg_ctl.display(),
            data = self.data_dir().display(),
            root = self.root.display(),
        );
        Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Box::leak(Box::new(self)))
    }
}
