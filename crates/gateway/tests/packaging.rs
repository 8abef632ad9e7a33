//! What operators install and follow, kept from rotting: the Docker Compose quick-start run
//! natively (its init script on a throwaway PostgreSQL, its phigate config with the compose
//! host names mapped to loopback, its README's commands), every config file in the repository
//! through `phigate check`, the systemd unit through `systemd-analyze verify`, the binary's
//! run-time libraries against what the image has, and the generated completions and man pages.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use phigate_testkit::{free_port, run, Cluster, ClusterOptions};

const BIN: &str = env!("CARGO_BIN_EXE_phigate");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Replaces `from` (which must occur) with `to` everywhere.
fn must_replace(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "expected {from:?} in:\n{text}");
    text.replace(from, to)
}

/// The commands between the README's quick-start markers (the fenced block's body).
fn quickstart_block(readme: &str) -> String {
    let start = readme
        .find("<!-- quickstart:begin")
        .expect("quickstart:begin marker");
    let end = readme
        .find("<!-- quickstart:end")
        .expect("quickstart:end marker");
    let block = &readme[start..end];
    let body = block.split("```sh\n").nth(1).expect("a ```sh block");
    body.split("```").next().expect("block end").to_owned()
}

/// A running `phigate serve`, killed on drop.
struct Serve(Child, PathBuf);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Serve {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }
}

fn wait_listening(serve: &mut Serve, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = serve.0.try_wait() {
            panic!("phigate exited with {status}:\n{}", serve.log());
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("phigate did not listen:\n{}", serve.log());
}

#[test]
fn the_compose_quick_start_works_as_its_readme_says() {
    let compose = repo().join("deploy/compose");
    let cluster = Cluster::start(ClusterOptions::default()).expect("cluster");
    let work = tempfile::tempdir().expect("tempdir");
    let password = format!("pw-{}", free_port().expect("port"));

    // The postgres image's init script, as the image's entrypoint runs it.
    let (ok, out, err) = run(Command::new("bash")
        .arg(compose.join("initdb/10-clinic.sh"))
        .env("PGHOST", cluster.socket_dir())
        .env("PGPORT", cluster.port().to_string())
        .env("POSTGRES_USER", phigate_testkit::SUPERUSER)
        .env("PHIGATE_UPSTREAM_PASSWORD", &password)
        .env(
            "PHIGATE_SEED_SQL",
            repo().join("crates/gateway/src/demo/seed.sql"),
        ))
    .expect("init script");
    assert!(ok, "initdb script failed:\n{out}\n{err}");

    // The compose config with its host names and paths mapped onto this machine.
    let data = work.path().join("var-lib-phigate");
    let pg_port = free_port().expect("port");
    let http_port = free_port().expect("port");
    let compose_yaml = read(&compose.join("compose.yaml"));
    let mut config = read(&compose.join("phigate.toml"));
    for (from, to) in [
        ("0.0.0.0:6432", format!("127.0.0.1:{pg_port}")),
        ("0.0.0.0:6544", format!("127.0.0.1:{http_port}")),
        (
            "host = \"postgres\"",
            format!("host = \"{}\"", cluster.host()),
        ),
        ("port = 5432", format!("port = {}", cluster.port())),
        (
            "https://localhost:6544",
            format!("https://127.0.0.1:{http_port}"),
        ),
        ("/var/lib/phigate", data.display().to_string()),
    ] {
        config = must_replace(&config, from, &to);
    }
    let config_path = work.path().join("phigate.toml");
    std::fs::write(&config_path, &config).expect("config");

    // The compose file's one-shot `tls` service, then `phigate serve` as the image runs it.
    for needle in [
        "\"tls\", \"self-signed\"",
        "\"--cert\", \"/var/lib/phigate/tls/server.crt\"",
        "\"--key\", \"/var/lib/phigate/tls/server.key\"",
        "./phigate.toml:/etc/phigate/phigate.toml:ro",
        "\"127.0.0.1:6432:6432\"",
    ] {
        assert!(compose_yaml.contains(needle), "compose.yaml lacks {needle}");
    }
    let (ok, out, err) = run(Command::new(BIN).args([
        "tls",
        "self-signed",
        "--cert",
        &data.join("tls/server.crt").display().to_string(),
        "--key",
        &data.join("tls/server.key").display().to_string(),
        "--name",
        "localhost",
        "--name",
        "127.0.0.1",
    ]))
    .expect("tls");
    assert!(ok, "{out}{err}");
    let log = work.path().join("phigate.log");
    let file = std::fs::File::create(&log).expect("log");
    let child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config_path)
        .env("PHIGATE_UPSTREAM_PASSWORD", &password)
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log"))
        .stderr(file)
        .spawn()
        .expect("serve");
    let mut serve = Serve(child, log);
    wait_listening(&mut serve, pg_port);

    // The image has a HEALTHCHECK; the compose file's own answers over TLS, trusting the
    // served certificate.
    assert!(read(&repo().join("Dockerfile")).contains("HEALTHCHECK"));
    assert!(compose_yaml.contains(
        "test: [\"CMD\", \"/usr/local/bin/phigate\", \"healthcheck\", \"--url\", \"https://127.0.0.1:6544/healthz\"]"
    ));
    assert!(compose_yaml.contains("PHIGATE_CA_FILE: /var/lib/phigate/tls/server.crt"));
    let (ok, out, err) = run(Command::new(BIN)
        .args([
            "healthcheck",
            "--url",
            &format!("https://127.0.0.1:{http_port}/healthz"),
        ])
        .env("PHIGATE_CA_FILE", data.join("tls/server.crt")))
    .expect("healthcheck");
    assert!(ok, "{out}{err}\n{}", serve.log());

    // The README's commands, with `docker compose` mapped onto this machine.
    let mut script = quickstart_block(&read(&compose.join("README.md")));
    for (from, to) in [
        (
            "docker compose cp phigate:/var/lib/phigate/",
            format!("cp {}/", data.display()),
        ),
        ("docker compose exec -T phigate phigate", BIN.to_owned()),
        (
            "/etc/phigate/phigate.toml",
            config_path.display().to_string(),
        ),
        ("port=6432", format!("port={pg_port}")),
    ] {
        script = must_replace(&script, from, &to);
    }
    let (ok, out, err) = run(Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(work.path())
        .env_remove("PGPASSWORD"))
    .expect("quick-start");
    assert!(ok, "the quick-start failed:\n{out}\n{err}\n{}", serve.log());

    // Two result tables: the agent's (masked) and the clinician's (in the clear), same rows.
    let tables: Vec<&str> = out.split("(3 rows)").collect();
    assert_eq!(tables.len(), 3, "{out}");
    let (agent, clinician) = (tables[0], tables[1]);
    let clear: Vec<String> = ssns(clinician);
    assert_eq!(clear.len(), 3, "the clinician sees SSNs:\n{clinician}");
    assert!(
        clear.iter().all(|s| !agent.contains(s.as_str())),
        "the agent saw an SSN in the clear:\n{agent}"
    );
    // The rows' first names: the lines whose first cell is an id.
    let first_names: Vec<&str> = clinician
        .lines()
        .map(|l| l.split('|').map(str::trim).collect::<Vec<_>>())
        .filter(|cells| cells.len() == 5 && cells[0].parse::<u32>().is_ok())
        .map(|cells| cells[1])
        .collect();
    assert_eq!(first_names.len(), 3, "{clinician}");
    assert!(
        first_names.iter().all(|n| !agent.contains(n)),
        "the agent saw a name in the clear:\n{agent}\n{clinician}"
    );
    // Through the gateway, over verified TLS: the audit log has both identities.
    let (ok, out, err) = run(Command::new(BIN)
        .args(["audit", "search", "--data-dir"])
        .arg(&data)
        .args(["--type", "session_start"]))
    .expect("audit search");
    assert!(ok, "{err}");
    assert!(out.contains("agent@example.org"), "{out}");
    assert!(out.contains("dr.lee@example.org"), "{out}");
}

/// `NNN-NN-NNNN` runs in `text` (SSNs as the seed writes them).
fn ssns(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let shape = b"ddd-dd-dddd";
    (0..b.len().saturating_sub(shape.len() - 1))
        .filter(|&i| {
            shape.iter().enumerate().all(|(k, s)| match s {
                b'd' => b[i + k].is_ascii_digit(),
                c => b[i + k] == *c,
            }) && (i == 0 || !b[i - 1].is_ascii_digit())
        })
        .map(|i| text[i..i + shape.len()].to_owned())
        .collect()
}

/// Every TOML config shipped in the repository loads and validates.
#[test]
fn every_config_file_in_the_repository_passes_check() {
    let mut files = Vec::new();
    let mut dirs = vec![repo().join("deploy"), repo().join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "toml")
                && path.file_name().is_some_and(|n| n != "book.toml")
            {
                files.push(path);
            }
        }
    }
    assert!(
        files
            .iter()
            .any(|f| f.ends_with("deploy/compose/phigate.toml")),
        "{files:?}"
    );
    for file in files {
        let (ok, out, err) = run(Command::new(BIN)
            .args(["check", "--config"])
            .arg(&file)
            .env("PHIGATE_UPSTREAM_PASSWORD", "set-by-the-environment"))
        .expect("check");
        assert!(ok, "{}: {out}{err}", file.display());
        assert!(!out.contains("warning"), "{}: {out}", file.display());
    }
}

/// The unit file parses without a warning (every directive known, every value valid), and the
/// man page it names exists.
#[test]
fn the_systemd_unit_verifies() {
    let work = tempfile::tempdir().expect("tempdir");
    let man1 = work.path().join("man/man1");
    let (ok, out, err) = run(Command::new(BIN).arg("man").arg("--dir").arg(&man1)).expect("man");
    assert!(ok, "{out}{err}");
    let unit = must_replace(
        &read(&repo().join("deploy/systemd/phigate.service")),
        "/usr/bin/phigate",
        BIN,
    );
    for needle in [
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "ReadWritePaths=/var/lib/phigate",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.contains(needle), "the unit lacks {needle}");
    }
    let path = work.path().join("phigate.service");
    std::fs::write(&path, unit).expect("unit");
    let (ok, out, err) = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .env("MANPATH", work.path().join("man"))
        .current_dir(work.path()))
    .expect("systemd-analyze (install-deps installs systemd)");
    assert!(ok && err.trim().is_empty(), "{out}{err}");
}

/// The image is distroless/cc: glibc, libm and libgcc only.
#[test]
fn the_binary_needs_only_what_the_image_has() {
    let (ok, out, err) = run(Command::new("ldd").arg(BIN)).expect("ldd");
    assert!(ok, "{err}");
    let extra: Vec<&str> = out
        .lines()
        .filter(|l| {
            ![
                "linux-vdso",
                "ld-linux",
                "libc.so",
                "libm.so",
                "libgcc_s.so",
            ]
            .iter()
            .any(|k| l.contains(k))
        })
        .collect();
    assert!(extra.is_empty(), "libraries the image lacks: {extra:?}");
}

/// Completions and man pages come from the CLI definition: every command is in them.
#[test]
fn completions_and_man_pages_cover_every_command() {
    let work = tempfile::tempdir().expect("tempdir");
    let (ok, out, err) =
        run(Command::new(BIN).args(["man", "--dir"]).arg(work.path())).expect("man");
    assert!(ok, "{out}{err}");
    for page in [
        "phigate.1",
        "phigate-serve.1",
        "phigate-audit-verify.1",
        "phigate-review.1",
        "phigate-tls-self-signed.1",
    ] {
        let text = read(&work.path().join(page));
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}");
    }
    let (ok, script, err) = run(Command::new(BIN).args(["completions", "bash"])).expect("bash");
    assert!(ok, "{err}");
    for command in ["serve", "audit", "review", "demo", "completions"] {
        assert!(script.contains(command), "bash completion lacks {command}");
    }
    let file = work.path().join("phigate.bash");
    std::fs::write(&file, &script).expect("write");
    let (ok, _, err) = run(Command::new("bash").arg("-n").arg(&file)).expect("bash -n");
    assert!(ok, "the bash completion does not parse: {err}");
}
