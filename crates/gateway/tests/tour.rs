//! The README's tour, as written: every `phigate …` command it suggests runs against
//! `phigate demo` (placeholders such as `<data_dir>` filled in), and the messages it quotes are
//! the ones a reader sees.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use phigate_testkit::{http_get, run};

/// The tour: from its heading to the next section.
fn tour() -> String {
    let readme = include_str!("../../../README.md");
    let start = readme.find("## A short tour").expect("README has a tour");
    let end = readme[start..]
        .find("\n## ")
        .map_or(readme.len(), |n| start + n);
    readme[start..end].to_owned()
}

/// Every inline code span of the tour that runs `phigate` (leading `VAR=value` assignments
/// allowed), its line breaks joined.
fn tour_commands(tour: &str) -> Vec<String> {
    let mut spans = Vec::new();
    let mut rest = tour;
    while let Some(open) = rest.find('`') {
        if rest[open..].starts_with("```") {
            let after = &rest[open + 3..];
            rest = after.find("```").map_or("", |close| &after[close + 3..]);
            continue;
        }
        let after = &rest[open + 1..];
        let Some(close) = after.find('`') else { break };
        let span = after[..close]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let command = span
            .split(' ')
            .skip_while(|w| w.contains('=') && !w.starts_with('-'))
            .collect::<Vec<_>>();
        // `phigate demo` is what runs; `phigate serve` would start a second gateway;
        // `phigate login` and `phigate keys create` are named in prose as where credentials
        // come from (the demo has no OIDC issuer to sign in with; `keys create` runs in full
        // further on).
        let mention = matches!(span.as_str(), "phigate login" | "phigate keys create");
        let runs_here = !mention && !matches!(command.get(1), Some(&"demo") | Some(&"serve"));
        if command.first() == Some(&"phigate") && command.len() > 1 && runs_here {
            spans.push(span);
        }
        rest = &after[close + 1..];
    }
    spans
}

/// Splits a command line as a shell would for these simple cases: words, and double quotes.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut started = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                started = true;
            }
            ' ' if !quoted => {
                if started {
                    out.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            c => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        out.push(word);
    }
    out
}

struct Demo {
    child: Child,
    ready: serde_json::Value,
    data_dir: String,
    _dir: tempfile::TempDir,
}

impl Demo {
    fn start() -> Demo {
        let dir = tempfile::tempdir().expect("tempdir");
        let ready_file = dir.path().join("ready.json");
        let log = std::fs::File::create(dir.path().join("demo.log")).expect("log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_phigate"))
            .args(["demo", "--pg-port", "0", "--http-port", "0", "--ready-file"])
            .arg(&ready_file)
            .arg("--data-dir")
            .arg(dir.path().join("state"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("phigate demo starts");
        let started = Instant::now();
        while !ready_file.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("demo exited early ({status})");
            }
            assert!(started.elapsed() < Duration::from_secs(60), "not ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        let ready: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&ready_file).expect("ready")).expect("JSON");
        let data_dir = dir.path().join("state").display().to_string();
        Demo {
            child,
            ready,
            data_dir,
            _dir: dir,
        }
    }

    fn token(&self, who: &str) -> String {
        self.ready["identities"][who]["password"]
            .as_str()
            .expect("password")
            .to_owned()
    }

    fn psql(&self, who: &str, sql: &str) -> (bool, String, String) {
        let id = &self.ready["identities"][who];
        run(Command::new("psql")
            .args(["-X", "-A", "-t", "-c", sql])
            .arg(format!(
                "host={} port={} dbname=clinic user={} sslmode=disable",
                self.ready["postgres"]["host"].as_str().expect("host"),
                self.ready["postgres"]["port"],
                id["user"].as_str().expect("user")
            ))
            .env("PGPASSWORD", id["password"].as_str().expect("password")))
        .expect("psql")
    }

    /// Runs a tour command as written, its placeholders filled in, in the demo's data directory
    /// (where its `phigate.toml` is); `PHIGATE_URL` and `PHIGATE_TOKEN` (as `as_who`) are set
    /// as the tour says to.
    fn phigate(&self, line: &str, fill: &[(&str, &str)], as_who: &str) -> (bool, String, String) {
        let mut line = line.to_owned();
        for (from, to) in fill {
            line = line.replace(from, to);
        }
        let words = words(&line);
        let at = words.iter().position(|w| w == "phigate").expect("phigate");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_phigate"));
        cmd.args(&words[at + 1..])
            .current_dir(&self.data_dir)
            .env("PHIGATE_URL", self.ready["http"].as_str().expect("http"))
            .env("PHIGATE_TOKEN", self.token(as_who));
        for assignment in &words[..at] {
            let (name, value) = assignment.split_once('=').expect("VAR=value");
            cmd.env(name, value);
        }
        run(&mut cmd).expect("phigate")
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

#[test]
fn the_readme_tour_works_as_written() {
    let tour = tour();
    let commands = tour_commands(&tour);
    assert!(commands.len() >= 10, "the tour's commands: {commands:?}");
    let demo = Demo::start();
    let http = demo.ready["http"].as_str().expect("http").to_owned();

    // The statements the tour quotes, with the answers it quotes.
    let (ok, _, err) = demo.psql("agent", "SELECT pg_read_file('/etc/passwd');");
    assert!(!ok);
    let quoted = "ERROR:  phigate: function pg_read_file denied by rule dangerous-function";
    assert!(tour.contains(quoted) && err.contains(quoted), "{err}");

    let held = "UPDATE encounters SET diagnosis_code = 'I10' WHERE id = 1;";
    assert!(tour.contains(held));
    let run_all = |held_id: &str, reviewer_token: &str, session: &str| {
        let fill = [
            ("<data_dir>", demo.data_dir.as_str()),
            ("<session>", session),
            ("<reviewer-token>", reviewer_token),
            ("http://127.0.0.1:6544", http.as_str()),
            ("r-34266c2dfccc", held_id),
        ];
        let mut ran = Vec::new();
        for line in &commands {
            let who = if line.contains("review request") {
                "agent"
            } else {
                "reviewer"
            };
            let (ok, out, err) = demo.phigate(line, &fill, who);
            ran.push((line.clone(), ok, out, err));
        }
        // Whatever happened, the held statement is decided, so the agent's psql returns.
        demo.phigate(
            &format!("phigate review deny {held_id} --reason done"),
            &[],
            "reviewer",
        );
        ran
    };

    let outcome =
        std::thread::scope(|scope| {
            let update = scope.spawn(|| demo.psql("agent", held));
            let started = Instant::now();
            let id = loop {
                let (ok, out, err) = demo.phigate("phigate review list --json", &[], "reviewer");
                assert!(ok, "{err}");
                let list: Vec<serde_json::Value> = serde_json::from_str(&out).expect("JSON");
                if let Some(id) = list.first().and_then(|r| r["id"].as_str()) {
                    break id.to_owned();
                }
                assert!(started.elapsed() < Duration::from_secs(20), "nothing held");
                std::thread::sleep(Duration::from_millis(100));
            };
            // The commands before `review approve` run while the statement waits; approve lets
            // it run; the rest read what happened.
            let (sessions_ok, sessions, _) = run(Command::new(env!("CARGO_BIN_EXE_phigate"))
                .args(["sessions", "list", "--data-dir", &demo.data_dir, "--json"]))
            .expect("sessions");
            assert!(sessions_ok);
            let session = serde_json::from_str::<Vec<serde_json::Value>>(&sessions)
                .ok()
                .and_then(|list| {
                    list.iter()
                        .find(|s| !s["recording"].is_null())
                        .and_then(|s| s["session"].as_str().map(str::to_owned))
                })
                .unwrap_or_else(|| panic!("a recorded session: {sessions}"));
            let ran = run_all(&id, &demo.token("reviewer"), &session);
            (update.join().expect("psql"), ran)
        });
    let ((ok, out, err), ran) = outcome;
    for (line, ok, out, err) in &ran {
        assert!(ok, "`{line}` failed:\n{out}\n{err}");
    }
    assert!(ok, "the approved UPDATE: {err}");
    assert_eq!(out.trim(), "UPDATE 1");
    assert!(err.contains("held for review"), "{err}");
    let said = |prefix: &str| {
        ran.iter()
            .find(|(line, ..)| line.contains(prefix))
            .map(|(_, _, out, _)| out.clone())
            .unwrap_or_else(|| panic!("the tour runs `{prefix}`"))
    };
    assert!(said("phigate review approve").contains("approved"));
    assert!(said("phigate audit verify").to_lowercase().contains("ok"));
    let (code, body) = http_get(
        demo.ready["http"]
            .as_str()
            .and_then(|u| u.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .expect("http port"),
        "/readyz",
    )
    .expect("readyz");
    assert_eq!(code, 200, "{body}");
    assert!(Path::new(&demo.data_dir).join("phigate.toml").exists());
}
