//! Identity: every session is an individual, proven by a credential the gateway checks.
//!
//! Against a real OpenID provider (the npm package `oidc-provider`, run by `tests/idp/server.mjs`:
//! client-credentials JWT access tokens, key rotation, the code flow for `phigate login`) and an
//! in-process JWKS server for what a well-behaved IdP never sends (future `nbf`, no subject, a
//! flood of unknown key ids). Clients are tokio-postgres and psql; the gateway is the real binary.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use phigate_testkit::{Certs, Cluster, Gateway, GatewayOptions};
use serde_json::{json, Value};
use tokio_postgres::NoTls;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_phigate"))
}

fn clinic() -> &'static Cluster {
    phigate_testkit::clinic(phigate::demo::SEED_SQL)
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

// ---------------------------------------------------------------------------------------------
// The real OpenID provider
// ---------------------------------------------------------------------------------------------

/// A `tests/idp/server.mjs` process.
struct Idp {
    child: Child,
    issuer: String,
}

impl Idp {
    fn start(ttl_secs: u64) -> Idp {
        let (child, ready) = phigate_testkit::spawn_ready(
            Command::new("node")
                .arg(repo_root().join("tests/idp/server.mjs"))
                .args(["--port", "0", "--ttl", &ttl_secs.to_string()]),
        )
        .unwrap_or_else(|e| panic!("cannot start the test IdP (run scripts/client-deps): {e}"));
        Idp {
            child,
            issuer: ready["issuer"].as_str().expect("issuer").to_owned(),
        }
    }

    /// A client-credentials access token (a JWT with `aud` = `resource` minus `urn:`).
    async fn token(&self, client: &str, resource: Option<&str>) -> String {
        let mut form = vec![
            ("grant_type", "client_credentials".to_owned()),
            ("client_id", client.to_owned()),
            ("client_secret", format!("{client}-secret")),
            ("scope", "db".to_owned()),
        ];
        if let Some(r) = resource {
            form.push(("resource", r.to_owned()));
        }
        let resp: Value = reqwest::Client::new()
            .post(format!("{}/token", self.issuer))
            .form(&form)
            .send()
            .await
            .expect("token request")
            .json()
            .await
            .expect("token JSON");
        resp["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access token: {resp}"))
            .to_owned()
    }

    async fn rotate(&self, drop_old: bool) -> String {
        let q = if drop_old { "?drop_old=1" } else { "" };
        let resp: Value = reqwest::Client::new()
            .post(format!("{}/__admin/rotate{q}", self.issuer))
            .send()
            .await
            .expect("rotate")
            .json()
            .await
            .expect("rotate JSON");
        resp["kid"].as_str().expect("kid").to_owned()
    }

    async fn jwks(&self) -> Value {
        reqwest::get(format!("{}/jwks", self.issuer))
            .await
            .expect("jwks")
            .json()
            .await
            .expect("jwks JSON")
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// An in-process JWKS server for edge cases
// ---------------------------------------------------------------------------------------------

/// Serves discovery and a JWKS with one ES256 key over plain HTTP, counting JWKS fetches.
struct EdgeIssuer {
    issuer: String,
    key: jsonwebtoken::EncodingKey,
    jwks_hits: Arc<AtomicUsize>,
}

impl EdgeIssuer {
    fn start() -> EdgeIssuer {
        let pair = rcgen::KeyPair::generate().expect("P-256 key");
        let raw = pair.public_key_raw();
        let (x, y) = (&raw[1..33], &raw[33..65]);
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "edge-1",
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
        }]});
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let issuer = format!("http://{}", listener.local_addr().expect("addr"));
        let hits = Arc::new(AtomicUsize::new(0));
        let discovery = json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks")});
        let counter = hits.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut buf = [0u8; 4096];
                let n = conn.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]);
                let path = req.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let body = if path.ends_with("openid-configuration") {
                    discovery.to_string()
                } else if path == "/jwks" {
                    counter.fetch_add(1, Ordering::SeqCst);
                    jwks.to_string()
                } else {
                    "{}".into()
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        EdgeIssuer {
            issuer,
            key: jsonwebtoken::EncodingKey::from_ec_der(&pair.serialize_der()),
            jwks_hits: hits,
        }
    }

    fn sign(&self, claims: Value, kid: &str) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, &claims, &self.key).expect("sign")
    }

    fn claims(&self, extra: Value) -> Value {
        let now = phigate::auth::jwt::unix_now();
        let mut c = json!({
            "iss": self.issuer, "aud": "phigate", "sub": "edge-user",
            "groups": ["agents"], "iat": now, "exp": now + 600,
        });
        if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                if v.is_null() {
                    c.remove(k);
                } else {
                    c.insert(k.clone(), v.clone());
                }
            }
        }
        c
    }
}

// ---------------------------------------------------------------------------------------------
// Gateways
// ---------------------------------------------------------------------------------------------

/// The auth config: the main IdP (groups from `realm_access.roles`), the short-lived IdP, the
/// edge issuer; bindings from groups to the test roles.
fn auth_config(main: &Idp, short: Option<&Idp>, edge: Option<&EdgeIssuer>, extra: &str) -> String {
    let mut s = format!(
        r#"
[auth]
leeway_secs = 1
{extra}

[[auth.oidc]]
name = "corp"
issuer = "{}"
audience = ["phigate", "phigate-cli"]
groups_claim = "realm_access.roles"
client_id = "phigate-cli"
jwks_min_refresh_secs = 1
"#,
        main.issuer
    );
    if let Some(short) = short {
        s.push_str(&format!(
            "\n[[auth.oidc]]\nname = \"short\"\nissuer = \"{}\"\naudience = [\"phigate\"]\ngroups_claim = \"groups\"\n",
            short.issuer
        ));
    }
    if let Some(edge) = edge {
        s.push_str(&format!(
            "\n[[auth.oidc]]\nname = \"edge\"\nissuer = \"{}\"\naudience = [\"phigate\"]\ngroups_claim = \"groups\"\njwks_min_refresh_secs = 60\n",
            edge.issuer
        ));
    }
    s.push_str(
        r#"
[[binding]]
groups = ["agents"]
roles = ["ai-agent"]

[[binding]]
groups = ["clinicians"]
roles = ["clinician", "ai-agent"]
"#,
    );
    s
}

fn start(extra: String) -> Gateway {
    let mut opts = GatewayOptions::for_cluster(clinic());
    opts.extra = extra;
    Gateway::start_with_identities(bin(), opts, &[])
        .unwrap_or_else(|e| panic!("gateway did not start: {e}"))
}

fn conninfo(gw: &Gateway, user: &str, password: &str) -> String {
    format!(
        "host=127.0.0.1 port={} dbname=clinic user={user} password='{}' sslmode=disable connect_timeout=10",
        gw.pg_port,
        password.replace('\\', "\\\\").replace('\'', "\\'")
    )
}

type Conn = tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>;

async fn connect(
    gw: &Gateway,
    user: &str,
    token: &str,
) -> Result<(tokio_postgres::Client, Conn), tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(&conninfo(gw, user, token), NoTls).await?;
    Ok((client, tokio::spawn(conn)))
}

/// The error a refused login gets: (SQLSTATE, message).
async fn refusal(gw: &Gateway, user: &str, token: &str) -> (String, String) {
    match connect(gw, user, token).await {
        Ok(_) => panic!("login as {user} was accepted"),
        Err(e) => match e.as_db_error() {
            Some(db) => (db.code().code().to_owned(), db.message().to_owned()),
            None => panic!("login failed without a server message: {e}"),
        },
    }
}

async fn whoami(client: &tokio_postgres::Client) -> Vec<String> {
    let row = client
        .query_one(
            "SELECT current_setting('phigate.subject'), current_setting('phigate.role'), \
             current_setting('phigate.issuer'), current_setting('application_name')",
            &[],
        )
        .await
        .expect("whoami");
    (0..4).map(|i| row.get::<_, String>(i)).collect()
}

/// What the server said, or the client's own error.
fn text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => e.to_string(),
    }
}

fn tamper(token: &str, part: usize, f: impl FnOnce(&mut Value)) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut v: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[part]).expect("b64")).expect("json");
    f(&mut v);
    parts[part] = URL_SAFE_NO_PAD.encode(v.to_string());
    parts.join(".")
}

fn phigate(args: &[&str]) -> (bool, String, String) {
    phigate_testkit::run(Command::new(bin()).args(args)).expect("run phigate")
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_tokens_from_a_real_idp_open_individual_sessions() {
    let idp = Idp::start(600);
    let gw = start(auth_config(&idp, None, None, ""));

    // The agent's client-credentials token: its group (from realm_access.roles) binds ai-agent.
    let token = idp.token("agent-ci", None).await;
    let (client, _conn) = connect(&gw, "ai-agent", &token).await.expect("agent login");
    let who = whoami(&client).await;
    assert_eq!(who[0], "agent-ci");
    assert_eq!(who[1], "ai-agent");
    assert_eq!(who[2], "corp");
    assert!(who[3].contains("phigate:agent-ci"), "{who:?}");
    // The identity settings are the gateway's: no role changes them.
    let err = client
        .simple_query("SET phigate.subject = 'someone-else'")
        .await
        .expect_err("must be refused");
    assert!(text(&err).contains("pinned-setting"), "{err}");
    assert_eq!(whoami(&client).await[0], "agent-ci");

    // An OS user name in `user` gets the default role; a bound second role can be chosen.
    let clin = idp.token("clinician-svc", None).await;
    let (c2, _c2) = connect(&gw, "postgres", &clin).await.expect("default role");
    assert_eq!(whoami(&c2).await[1], "clinician");
    let (c3, _c3) = connect(&gw, "ai-agent", &clin).await.expect("second role");
    assert_eq!(whoami(&c3).await[1], "ai-agent");

    // psql with the token as the password, as a person would.
    let out = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={} dbname=clinic user=ai-agent sslmode=disable",
            gw.pg_port
        ))
        .args([
            "-XAtc",
            "SELECT current_setting('phigate.subject'), count(*) FROM patients",
        ])
        .env("PGPASSWORD", &token)
        .output()
        .expect("psql");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("agent-ci|"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_key_rotation_is_followed() {
    let idp = Idp::start(600);
    let gw = start(auth_config(&idp, None, None, ""));
    let first = idp.token("agent-ci", None).await;
    connect(&gw, "ai-agent", &first).await.expect("first key");

    // A new signing key: the gateway meets an unknown kid and fetches the JWKS again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let kid = idp.rotate(false).await;
    let second = idp.token("agent-ci", None).await;
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(second.split('.').next().expect("header"))
            .expect("b64"),
    )
    .expect("json");
    assert_eq!(header["kid"], kid.as_str());
    connect(&gw, "ai-agent", &second)
        .await
        .expect("rotated key");
    connect(&gw, "ai-agent", &first)
        .await
        .expect("old key still published");

    // The old key is withdrawn: once the gateway refreshes (for the next new kid), tokens it
    // signed are refused.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    idp.rotate(true).await;
    let third = idp.token("agent-ci", None).await;
    connect(&gw, "ai-agent", &third).await.expect("third key");
    let (code, msg) = refusal(&gw, "ai-agent", &first).await;
    assert_eq!(code, "28P01");
    assert!(msg.contains("signing key is unknown"), "{msg}");
}

/// Every bad credential is refused with a clear message that carries no part of the credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_refused_clearly() {
    let idp = Idp::start(600);
    let short = Idp::start(1);
    let stranger = Idp::start(600);
    let edge = EdgeIssuer::start();
    let gw = start(auth_config(
        &idp,
        Some(&short),
        Some(&edge),
        "failed_logins.max_failures = 1000",
    ));
    let good = idp.token("agent-ci", None).await;
    let expiring = short.token("agent-ci", None).await;
    let data_dir = gw.data_dir();
    let dd = data_dir.to_str().expect("utf-8 path");
    let (ok, revoked_key, err) = phigate(&[
        "keys",
        "create",
        "--name",
        "gone",
        "--role",
        "ai-agent",
        "--data-dir",
        dd,
    ]);
    assert!(ok, "{err}");
    let revoked_key = revoked_key.trim().to_owned();
    assert!(phigate(&["keys", "revoke", "gone", "--data-dir", dd]).0);
    let (ok, short_key, err) = phigate(&[
        "keys",
        "create",
        "--name",
        "brief",
        "--role",
        "ai-agent",
        "--ttl",
        "1s",
        "--data-dir",
        dd,
    ]);
    assert!(ok, "{err}");
    let short_key = short_key.trim().to_owned();
    let (ok, live_key, err) = phigate(&[
        "keys",
        "create",
        "--name",
        "live",
        "--role",
        "ai-agent",
        "--data-dir",
        dd,
    ]);
    assert!(ok, "{err}");
    let live_key = live_key.trim().to_owned();
    // The short-lived ones expire: `exp` is in whole seconds and the leeway is 1 s, so a token
    // issued at second t (exp t + 1) is refused from second t + 3 on.
    tokio::time::sleep(Duration::from_millis(3600)).await;

    let jwks = idp.jwks().await;
    let real_kid = jwks["keys"][0]["kid"].as_str().expect("kid").to_owned();
    // HS256 "signed" with the IdP's public RSA key as the HMAC secret (algorithm confusion).
    let hs256 = {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some(real_kid.clone());
        let claims: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(good.split('.').nth(1).expect("payload"))
                .expect("b64"),
        )
        .expect("json");
        let secret = jwks["keys"][0]["n"]
            .as_str()
            .expect("n")
            .as_bytes()
            .to_vec();
        jsonwebtoken::encode(
            &h,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&secret),
        )
        .expect("hs256")
    };
    let alg_none = {
        let t = tamper(&good, 0, |h| h["alg"] = json!("none"));
        let mut parts: Vec<&str> = t.split('.').collect();
        parts[2] = "";
        parts.join(".")
    };
    let tampered_sig = {
        let (head, sig) = good.rsplit_once('.').expect("sig");
        let mut sig = sig.to_owned();
        let flipped = if sig.starts_with('A') { "B" } else { "A" };
        sig.replace_range(0..1, flipped);
        format!("{head}.{sig}")
    };
    let now = phigate::auth::jwt::unix_now();
    let cases: Vec<(&str, String, &str, &str)> = vec![
        ("expired", expiring.clone(), "ai-agent", "token expired"),
        (
            "not yet valid (nbf)",
            edge.sign(edge.claims(json!({"nbf": now + 600})), "edge-1"),
            "ai-agent",
            "not yet valid",
        ),
        (
            "issued in the future (iat)",
            edge.sign(edge.claims(json!({"iat": now + 600})), "edge-1"),
            "ai-agent",
            "not yet valid",
        ),
        (
            "wrong issuer",
            stranger.token("agent-ci", None).await,
            "ai-agent",
            "issuer is not trusted",
        ),
        (
            "wrong audience",
            idp.token("agent-ci", Some("urn:billing")).await,
            "ai-agent",
            "audience is not this gateway",
        ),
        ("alg none", alg_none, "ai-agent", "algorithm is not allowed"),
        (
            "HS256 with the RSA public key",
            hs256,
            "ai-agent",
            "algorithm is not allowed",
        ),
        (
            "unknown kid",
            tamper(&good, 0, |h| h["kid"] = json!("no-such-key")),
            "ai-agent",
            "signing key is unknown",
        ),
        (
            "tampered payload",
            tamper(&good, 1, |c| {
                c["realm_access"]["roles"] = json!(["clinicians"])
            }),
            "clinician",
            "signature is invalid",
        ),
        (
            "tampered signature",
            tampered_sig,
            "ai-agent",
            "signature is invalid",
        ),
        (
            "truncated",
            good[..good.len() / 2].to_owned(),
            "ai-agent",
            "authentication failed",
        ),
        (
            "truncated at a dot",
            good[..good.rfind('.').expect("dot") + 1].to_owned(),
            "ai-agent",
            "signature is invalid",
        ),
        (
            "oversized",
            format!(
                "{}.{}.{}",
                "a".repeat(8000),
                "b".repeat(8000),
                "c".repeat(8000)
            ),
            "ai-agent",
            "larger than",
        ),
        (
            "no subject",
            edge.sign(edge.claims(json!({"sub": null})), "edge-1"),
            "ai-agent",
            "does not name an individual",
        ),
        (
            "revoked API key",
            revoked_key.clone(),
            "ai-agent",
            "API key revoked",
        ),
        (
            "expired API key",
            short_key.clone(),
            "ai-agent",
            "API key expired",
        ),
        (
            "API key with a wrong secret",
            format!("{}x", &live_key[..live_key.len() - 1]),
            "ai-agent",
            "authentication failed",
        ),
        (
            "a role the identity may not assume",
            good.clone(),
            "clinician",
            "may not assume role \"clinician\"",
        ),
        (
            "an identity bound to no role",
            idp.token("nobody-svc", None).await,
            "ai-agent",
            "not granted any role",
        ),
        (
            "garbage",
            "hunter2".into(),
            "ai-agent",
            "authentication failed",
        ),
    ];
    assert!(cases.len() >= 15);
    for (name, token, user, expect) in &cases {
        let (code, msg) = match connect(&gw, user, token).await {
            Ok(_) => panic!("{name}: the login was accepted"),
            Err(e) => match e.as_db_error() {
                Some(db) => (db.code().code().to_owned(), db.message().to_owned()),
                None => panic!("{name}: refused without a server message: {e}"),
            },
        };
        assert!(code.starts_with("28"), "{name}: SQLSTATE {code}");
        assert!(msg.contains(expect), "{name}: {msg}");
        // Nothing of the credential comes back (any 12 characters of it).
        let bytes = token.as_bytes();
        for w in bytes.windows(12).step_by(7) {
            let piece = String::from_utf8_lossy(w);
            assert!(
                !msg.contains(piece.as_ref()),
                "{name}: message echoes the token: {msg}"
            );
        }
        assert!(
            !msg.contains(&idp.issuer) && !msg.contains("jsonwebtoken"),
            "{name}: {msg}"
        );
    }

    // The good credentials do work: the refusals above are about the credential, not the setup.
    connect(&gw, "ai-agent", &good).await.expect("good token");
    connect(&gw, "ai-agent", &live_key).await.expect("live key");

    // A token over plaintext when TLS is required never reaches the check.
    let certs = Certs::generate().expect("certs");
    let tls_gw = start(format!(
        "{}\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nrequire = true\n",
        auth_config(&idp, None, None, ""),
        certs.cert().display(),
        certs.key().display()
    ));
    let (code, msg) = refusal(&tls_gw, "ai-agent", &good).await;
    assert_eq!(code, "28000");
    assert!(msg.contains("TLS is required"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_ids_cannot_make_the_gateway_hammer_the_idp() {
    let idp = Idp::start(600);
    let edge = EdgeIssuer::start();
    let gw = start(auth_config(
        &idp,
        None,
        Some(&edge),
        "failed_logins.max_failures = 1000",
    ));
    let good = edge.sign(edge.claims(json!({})), "edge-1");
    connect(&gw, "ai-agent", &good).await.expect("edge token");
    let before = edge.jwks_hits.load(Ordering::SeqCst);
    let mut tasks = Vec::new();
    for i in 0..30 {
        let token = edge.sign(edge.claims(json!({})), &format!("made-up-{i}"));
        let info = conninfo(&gw, "ai-agent", &token);
        tasks.push(tokio::spawn(async move {
            tokio_postgres::connect(&info, NoTls).await.is_err()
        }));
    }
    for t in tasks {
        assert!(t.await.expect("join"), "a made-up kid was accepted");
    }
    let fetches = edge.jwks_hits.load(Ordering::SeqCst) - before;
    assert!(
        fetches <= 1,
        "30 unknown kids caused {fetches} JWKS fetches"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_when_its_token_expires() {
    let idp = Idp::start(600);
    let short = Idp::start(3);
    let gw = start(auth_config(&idp, Some(&short), None, ""));

    // Idle when the token expires: ended at once.
    let token = short.token("agent-ci", None).await;
    let (idle, idle_conn) = connect(&gw, "ai-agent", &token).await.expect("login");
    idle.simple_query("SELECT 1")
        .await
        .expect("works while valid");
    // In a transaction, also idle: the open transaction dies with the session.
    let (busy, busy_conn) = connect(&gw, "ai-agent", &token).await.expect("login");
    busy.simple_query("BEGIN").await.expect("begin");
    let ended = tokio::time::timeout(Duration::from_secs(8), idle_conn)
        .await
        .expect("the idle session was not ended at expiry")
        .expect("join");
    let err = ended.expect_err("the connection must end with an error");
    assert!(text(&err).contains("authentication expired"), "{err}");
    let ended = tokio::time::timeout(Duration::from_secs(8), busy_conn)
        .await
        .expect("the session in a transaction was not ended")
        .expect("join");
    assert!(ended.is_err());
    assert!(busy.simple_query("SELECT 1").await.is_err());
    gw.wait_log("authentication expired", 1).expect("logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_create_list_revoke() {
    let idp = Idp::start(600);
    let gw = start(auth_config(&idp, None, None, ""));
    let config = gw.config_path();
    let cfg = config.to_str().expect("utf-8");
    let (ok, _, err) = phigate(&[
        "keys",
        "create",
        "--name",
        "ci",
        "--role",
        "no-such-role",
        "--config",
        cfg,
    ]);
    assert!(!ok && err.contains("not defined"), "{err}");
    let (ok, key, err) = phigate(&[
        "keys",
        "create",
        "--name",
        "nightly-etl",
        "--role",
        "ai-agent",
        "--ttl",
        "30d",
        "--config",
        cfg,
    ]);
    assert!(ok, "{err}");
    let key = key.trim().to_owned();
    assert!(key.starts_with("phk_"));
    // Only a hash is stored.
    let secret = key.rsplit('_').next().expect("secret");
    let stored = std::fs::read_to_string(gw.data_dir().join("api-keys.json")).expect("key file");
    assert!(!stored.contains(secret));

    let (client, conn) = connect(&gw, "ai-agent", &key).await.expect("key login");
    assert_eq!(whoami(&client).await[0], "nightly-etl");
    tokio::time::sleep(Duration::from_millis(5500)).await; // last use is flushed every few seconds
    let (ok, list, _) = phigate(&["keys", "list", "--json", "--config", cfg]);
    assert!(ok);
    let list: Value = serde_json::from_str(&list).expect("json");
    assert_eq!(list[0]["name"], "nightly-etl");
    assert_eq!(list[0]["status"], "active");
    assert!(list[0]["last_used_at"].is_string(), "{list}");
    assert!(!list.to_string().contains(secret));

    // Revoked: the open session ends, and no new one opens.
    assert!(phigate(&["keys", "revoke", "nightly-etl", "--config", cfg]).0);
    let ended = tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the session of a revoked key was not ended")
        .expect("join");
    assert!(text(&ended.expect_err("ended")).contains("revoked"));
    let (_, msg) = refusal(&gw, "ai-agent", &key).await;
    assert!(msg.contains("API key revoked"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class_h_failed_logins_are_limited_per_address_without_locking_out_valid_credentials() {
    let idp = Idp::start(600);
    let gw = start(auth_config(
        &idp,
        None,
        None,
        "failed_logins.max_failures = 3\nfailed_logins.window_secs = 60",
    ));
    for _ in 0..3 {
        refusal(&gw, "ai-agent", "wrong-guess").await;
    }
    // Past the limit a guess learns nothing: whatever was wrong, it is "too many failed
    // logins".
    let (code, msg) = refusal(&gw, "ai-agent", "another-wrong-guess").await;
    assert_eq!(code, "28000");
    assert!(msg.contains("too many failed logins"), "{msg}");
    // But a valid credential from the same address (another agent on the same CI runner)
    // still gets in.
    let good = idp.token("agent-ci", None).await;
    let (client, _conn) = connect(&gw, "ai-agent", &good)
        .await
        .expect("a valid credential is not locked out");
    assert_eq!(whoami(&client).await[1], "ai-agent");
    gw.wait_log("failed login", 1).expect("logged");
}

/// Runs `phigate login` (code flow, or device flow) with the scripted browser signing in as
/// `user`; returns the JSON it printed.
fn login(gw: &Gateway, device: bool, user: &str) -> Value {
    login_result(gw, device, user).unwrap_or_else(|e| panic!("login failed: {e}"))
}

/// `phigate login` through the real IdP's pages: its JSON, or what it said when it failed.
fn login_result(gw: &Gateway, device: bool, user: &str) -> Result<Value, String> {
    login_with(gw, device, user, &[])
}

/// [`login_result`] with more arguments for `phigate login` (`--issuer NAME`).
fn login_with(gw: &Gateway, device: bool, user: &str, args: &[&str]) -> Result<Value, String> {
    let mut cmd = Command::new(bin());
    cmd.args(["login", "--no-browser", "--json", "--url"])
        .arg(format!("http://127.0.0.1:{}", gw.http_port))
        .args(args);
    if device {
        cmd.arg("--device");
    }
    let mut login = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("phigate login");
    let stderr = login.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    // Code flow: the authorization URL on a line of its own; device flow: "Open <url>".
    let url = loop {
        let line = lines
            .next()
            .expect("login printed no address")
            .expect("line");
        let line = line.strip_prefix("Open ").unwrap_or(&line).to_owned();
        if line.starts_with("http://") {
            break line;
        }
    };
    let mut browser = Command::new("node");
    browser.arg(repo_root().join("tests/idp/browser.mjs"));
    if device {
        browser.arg("--device");
    }
    let browser = browser.arg(&url).arg(user).output().expect("browser");
    assert!(
        browser.status.success(),
        "{}",
        String::from_utf8_lossy(&browser.stderr)
    );
    let mut out = String::new();
    login
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    if !login.wait().expect("wait").success() {
        return Err(format!("{out} {rest:?}"));
    }
    Ok(serde_json::from_str(out.trim()).expect("login JSON"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_gives_a_gateway_session_token() {
    let idp = Idp::start(600);
    // The ID token carries the groups in `groups` (access tokens also in realm_access.roles).
    let config = auth_config(&idp, None, None, "").replace("realm_access.roles", "groups");
    let gw = start(config);
    let result = login(&gw, false, "dr.rivera@demo.phigate");
    assert_eq!(result["subject"], "dr.rivera@demo.phigate");
    assert_eq!(result["roles"][0], "clinician");
    assert!(result["connection"]
        .as_str()
        .expect("conn")
        .contains("user=clinician"));
    let token = result["token"].as_str().expect("token");

    // The gateway signed it: its JWKS verifies it, and it opens a session as the person.
    let (code, jwks) = gw.http_get("/.well-known/jwks.json").expect("jwks");
    assert_eq!(code, 200);
    let jwks: Value = serde_json::from_str(&jwks).expect("json");
    assert_eq!(jwks["keys"][0]["alg"], "EdDSA");
    let (client, _conn) = connect(&gw, "clinician", token)
        .await
        .expect("session token");
    let who = whoami(&client).await;
    assert_eq!(who[0], "dr.rivera@demo.phigate");
    assert_eq!(who[2], "corp");

    // The device flow, for a machine without a browser: the code is confirmed elsewhere.
    let result = login(&gw, true, "coding-agent@demo.phigate");
    assert_eq!(result["subject"], "coding-agent@demo.phigate");
    assert_eq!(result["roles"][0], "ai-agent");
    let token = result["token"].as_str().expect("token");
    let (client, _conn) = connect(&gw, "ai-agent", token).await.expect("device token");
    assert_eq!(whoami(&client).await[0], "coding-agent@demo.phigate");
    // A person's session token does not open a role their groups are not bound to.
    let (_, msg) = refusal(&gw, "clinician", token).await;
    assert!(msg.contains("may not assume role"), "{msg}");
}

#[test]
fn token_mint_is_for_development_configs_only() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("phigate.toml");
    let write = |development: bool| {
        std::fs::write(
            &config,
            format!(
                "data_dir = \"{}\"\n[listen]\naddress = \"127.0.0.1:6432\"\n[upstream]\nhost = \"127.0.0.1\"\nuser = \"x\"\n[auth]\ndevelopment = {development}\n",
                dir.path().join("data").display()
            ),
        )
        .expect("write");
    };
    write(false);
    let cfg = config.to_str().expect("utf-8");
    let (ok, _, err) = phigate(&["token", "mint", "--config", cfg, "--subject", "x"]);
    assert!(!ok && err.contains("not a development config"), "{err}");
    write(true);
    let (ok, _, err) = phigate(&["token", "mint", "--config", cfg, "--subject", "x"]);
    // No key yet: the gateway creates it on first start; mint never does.
    assert!(!ok && err.contains("token-signing"), "{err}");
}

#[test]
fn a_binding_that_admits_anyone_is_rejected_at_load() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("phigate.toml");
    std::fs::write(
        &config,
        "[listen]\naddress = \"127.0.0.1:6432\"\n[upstream]\nhost = \"127.0.0.1\"\nuser = \"x\"\n\
         [[role]]\nname = \"r\"\nrestricted = false\n[[binding]]\nroles = [\"r\"]\n",
    )
    .expect("write");
    let (ok, _, err) = phigate(&["check", "--config", config.to_str().expect("utf-8")]);
    assert!(
        !ok && err.contains("names no groups and no subjects"),
        "{err}"
    );
}

/// A gateway trusting only the edge issuer, with extra `[[auth.oidc]]` lines.
fn edge_gateway(edge: &EdgeIssuer, oidc_extra: &str) -> Gateway {
    start(format!(
        r#"
[auth]
leeway_secs = 1

[[auth.oidc]]
name = "edge"
issuer = "{}"
audience = ["phigate"]
jwks_min_refresh_secs = 60
{oidc_extra}

[[binding]]
groups = ["agents"]
roles = ["ai-agent"]

[[binding]]
groups = ["clinicians"]
roles = ["clinician", "ai-agent"]
"#,
        edge.issuer
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item5_unverified_email_is_refused() {
    let edge = EdgeIssuer::start();
    let token = |verified: Value| {
        edge.sign(
            edge.claims(
                json!({"sub": "idp-id-1", "email": "dr.rivera@hospital.example",
                               "email_verified": verified}),
            ),
            "edge-1",
        )
    };
    let gw = edge_gateway(
        &edge,
        "subject_claim = \"email\"\ngroups_claim = \"groups\"",
    );
    for v in [json!(false), json!("true"), Value::Null] {
        let (code, msg) = refusal(&gw, "ai-agent", &token(v.clone())).await;
        assert_eq!(code, "28P01", "{v}: {msg}");
        assert!(msg.contains("not verified"), "{v}: {msg}");
    }
    let (client, _conn) = connect(&gw, "ai-agent", &token(json!(true)))
        .await
        .expect("a verified e-mail signs in");
    assert_eq!(whoami(&client).await[0], "dr.rivera@hospital.example");
    drop(gw);

    // The documented, dangerous opt-out.
    let gw = edge_gateway(
        &edge,
        "subject_claim = \"email\"\ngroups_claim = \"groups\"\nallow_unverified_email = true",
    );
    let (client, _conn) = connect(&gw, "ai-agent", &token(json!(false)))
        .await
        .expect("allow_unverified_email admits an unverified e-mail");
    assert_eq!(whoami(&client).await[0], "dr.rivera@hospital.example");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item7_a_dotted_top_level_claim_does_not_shadow_the_nested_path() {
    let edge = EdgeIssuer::start();
    let gw = edge_gateway(&edge, "groups_claim = \"realm_access.roles\"");
    // A top-level claim named like the path, saying something else: neither is believed, so
    // the groups bind no role at all.
    let forged = edge.sign(
        edge.claims(json!({
            "groups": null,
            "realm_access": {"roles": ["agents"]},
            "realm_access.roles": ["clinicians"],
        })),
        "edge-1",
    );
    for role in ["clinician", "ai-agent"] {
        let (code, msg) = refusal(&gw, role, &forged).await;
        assert_eq!(code, "28000", "{msg}");
        assert!(msg.contains("not granted any role"), "{msg}");
    }
    // The nested path alone is read as the IdP wrote it.
    let token = edge.sign(
        edge.claims(json!({"groups": null, "realm_access": {"roles": ["agents"]}})),
        "edge-1",
    );
    let (client, _conn) = connect(&gw, "ai-agent", &token)
        .await
        .expect("the nested roles bind ai-agent");
    assert_eq!(whoami(&client).await[1], "ai-agent");
}

/// POSTs an IdP token to the exchange: (HTTP status, JSON body).
async fn exchange(gw: &Gateway, token: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/v1/auth/token", gw.http_port))
        .bearer_auth(token)
        .send()
        .await
        .expect("exchange");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn claims_of(token: &str) -> Value {
    let body = token.split('.').nth(1).expect("payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).expect("b64")).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item8_exchange_is_single_use_and_never_outlives_the_id_token() {
    let edge = EdgeIssuer::start();
    let gw = edge_gateway(&edge, "groups_claim = \"groups\"");
    let now = phigate::auth::jwt::unix_now();
    // A 40-second token, as some IdPs issue.
    let id_token = edge.sign(edge.claims(json!({"exp": now + 40})), "edge-1");
    let (status, body) = exchange(&gw, &id_token).await;
    assert_eq!(status, 200, "{body}");
    let gateway_token = body["token"].as_str().expect("token");
    let exp = claims_of(gateway_token)["exp"].as_u64().expect("exp");
    assert!(
        exp <= now + 40,
        "gateway token exp {exp} > ID token exp {}",
        now + 40
    );
    assert!(
        body["expires_in"].as_u64().expect("expires_in") <= 40,
        "{body}"
    );

    // The same ID token again: refused, whoever presents it.
    let (status, body) = exchange(&gw, &id_token).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.to_string().contains("already exchanged"), "{body}");
    // Another ID token of the same person is fine.
    let other = edge.sign(edge.claims(json!({"jti": "2"})), "edge-1");
    assert_eq!(exchange(&gw, &other).await.0, 200);
    // The same token with its ECDSA signature's other valid form (s → n − s) is the same
    // token: refused too.
    let twin = other_ecdsa_form(&other);
    assert_ne!(twin, other);
    let (status, body) = exchange(&gw, &twin).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.to_string().contains("already exchanged"), "{body}");
    // Each refused exchange is a failed login in the audit log.
    let refused: Vec<Value> = gw
        .audit_records("login_failed")
        .into_iter()
        .filter(|r| r["user"] == "token-exchange" && r["via"] == "http")
        .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(refused.iter().all(|r| r["reason"]
        .as_str()
        .unwrap_or("")
        .contains("already exchanged")));
}

/// The other valid ES256 signature of the same token: `s` replaced by `n − s` (P-256's order).
fn other_ecdsa_form(token: &str) -> String {
    const N: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63,
        0x25, 0x51,
    ];
    let (signed, sig) = token.rsplit_once('.').expect("three parts");
    let mut sig = URL_SAFE_NO_PAD.decode(sig).expect("signature");
    assert_eq!(sig.len(), 64, "r || s");
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(N[i]) - i16::from(sig[32 + i]) - borrow;
        borrow = i16::from(d < 0);
        sig[32 + i] = (d + 256 * borrow) as u8;
    }
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item8_token_revoke_refuses_earlier_tokens_and_ends_live_sessions() {
    let edge = EdgeIssuer::start();
    let gw = edge_gateway(&edge, "groups_claim = \"groups\"");
    let (status, body) = exchange(&gw, &edge.sign(edge.claims(json!({})), "edge-1")).await;
    assert_eq!(status, 200, "{body}");
    let gateway_token = body["token"].as_str().expect("token").to_owned();
    let id_token = edge.sign(edge.claims(json!({"jti": "direct"})), "edge-1");
    let (session, _c1) = connect(&gw, "ai-agent", &gateway_token)
        .await
        .expect("gateway token");
    let (direct, _c2) = connect(&gw, "ai-agent", &id_token)
        .await
        .expect("IdP token");
    session.simple_query("SELECT 1").await.expect("live");

    let dir = gw.data_dir();
    let dir_s = dir.to_str().expect("utf-8");
    let (ok, out, err) = phigate(&[
        "token",
        "revoke",
        "--data-dir",
        dir_s,
        "--issuer",
        "edge",
        "--subject",
        "edge-user",
    ]);
    assert!(ok, "{out} {err}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("token-revocations.json"))
        .expect("revocation file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Live sessions of that individual end (like a revoked API key's), within seconds.
    for client in [&session, &direct] {
        let mut ended = None;
        for _ in 0..50 {
            match client.simple_query("SELECT 1").await {
                Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => {
                    ended = Some(text(&e));
                    break;
                }
            }
        }
        let msg = ended.expect("the session outlived the revocation");
        assert!(msg.contains("revoked") || msg.contains("closed"), "{msg}");
    }
    // Tokens issued before the revocation open nothing.
    for token in [&gateway_token, &id_token] {
        let (code, msg) = refusal(&gw, "ai-agent", token).await;
        assert_eq!(code, "28P01", "{msg}");
        assert!(msg.contains("token revoked"), "{msg}");
    }
    // A token issued after it (a new sign-in) works.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let fresh = edge.sign(edge.claims(json!({"jti": "fresh"})), "edge-1");
    let (status, body) = exchange(&gw, &fresh).await;
    assert_eq!(status, 200, "{body}");
    let (client, _c3) = connect(&gw, "ai-agent", body["token"].as_str().expect("token"))
        .await
        .expect("a token issued after the revocation");
    client.simple_query("SELECT 1").await.expect("works");
}

/// The real IdP: with `subject_claim = "email"`, an ID token whose e-mail the IdP did not
/// verify is not exchanged; a verified one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item5_real_idp_unverified_email_is_not_exchanged() {
    let idp = Idp::start(600);
    let config = auth_config(&idp, None, None, "")
        .replace("realm_access.roles", "groups")
        .replace(
            "client_id = \"phigate-cli\"",
            "client_id = \"phigate-cli\"\nsubject_claim = \"email\"",
        );
    let gw = start(config);
    let err = login_result(&gw, false, "dr.rivera+unverified@demo.phigate")
        .expect_err("an unverified e-mail was exchanged");
    assert!(err.contains("not verified"), "{err}");
    let ok = login(&gw, false, "dr.rivera@demo.phigate");
    assert_eq!(ok["subject"], "dr.rivera@demo.phigate");
}

/// Issue 16 item 13: `/v1/auth/config` lists every issuer — with its login client, or `null`
/// when it has none (then `phigate login` says so instead of "choose an issuer ... none") — the
/// claim that names the individual, and the scopes that release it; `phigate login` asks the
/// real IdP for them (its e-mail claims come with the `email` scope only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item13_auth_config_lists_every_issuer_and_login_asks_for_the_subject_scope() {
    let idp = Idp::start(600);
    let short = Idp::start(600);
    let config = auth_config(&idp, Some(&short), None, "")
        .replace("realm_access.roles", "groups")
        .replace(
            "client_id = \"phigate-cli\"",
            "client_id = \"phigate-cli\"\nsubject_claim = \"email\"",
        );
    let gw = start(config);
    let (code, body) = gw.http_get("/v1/auth/config").expect("auth config");
    assert_eq!(code, 200, "{body}");
    let body: Value = serde_json::from_str(&body).expect("json");
    let issuers = body["issuers"].as_array().expect("issuers");
    let by_name = |n: &str| {
        issuers
            .iter()
            .find(|i| i["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("{n} missing from {body}"))
    };
    let corp = by_name("corp");
    assert_eq!(corp["client_id"], "phigate-cli", "{corp}");
    assert_eq!(corp["subject_claim"], "email", "{corp}");
    assert_eq!(corp["scopes"], json!(["openid", "email"]), "{corp}");
    let short_issuer = by_name("short");
    assert_eq!(short_issuer["client_id"], Value::Null, "{short_issuer}");
    assert_eq!(short_issuer["issuer"], short.issuer.as_str());

    // An issuer without a login client: said plainly.
    let url = format!("http://127.0.0.1:{}", gw.http_port);
    let (ok, _, err) = phigate(&["login", "--no-browser", "--url", &url, "--issuer", "short"]);
    assert!(!ok);
    assert!(
        err.contains("no login client") && err.contains("client_id"),
        "{err}"
    );

    // The e-mail subject arrives because login asked for the email scope.
    let ok = login_with(&gw, false, "dr.rivera@demo.phigate", &["--issuer", "corp"]);
    let ok = ok.unwrap_or_else(|e| panic!("login failed: {e}"));
    assert_eq!(ok["subject"], "dr.rivera@demo.phigate");
}

/// Issue 16 item 13: when the IdP's device endpoint refuses, `phigate login --device` says
/// what it answered (status and OAuth error), not an opaque decoding error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item13_the_device_flow_says_what_the_idp_answered() {
    let idp = Idp::start(600);
    let config = auth_config(&idp, None, None, "").replace(
        "client_id = \"phigate-cli\"",
        "client_id = \"no-such-client\"",
    );
    let gw = start(config);
    let url = format!("http://127.0.0.1:{}", gw.http_port);
    let (ok, _, err) = phigate(&["login", "--device", "--no-browser", "--url", &url]);
    assert!(!ok);
    assert!(
        err.contains("device authorization endpoint answered 4") && err.contains("invalid_client"),
        "{err}"
    );
    assert!(!err.contains("decoding"), "{err}");
}

/// Issue 16 item 13: `/readyz` names each issuer; one that cannot be reached makes the gateway
/// `degraded`, still 200 (sessions open with other credentials and cached keys).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item13_readyz_reports_an_unreachable_issuer_as_degraded() {
    let idp = Idp::start(600);
    let gw = start(auth_config(&idp, None, None, ""));
    let readyz = || {
        let (code, body) = gw.http_get("/readyz").expect("readyz");
        (code, serde_json::from_str::<Value>(&body).expect("json"))
    };
    let (code, body) = readyz();
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["issuers"]["corp"], "reachable", "{body}");
    assert_eq!(body["status"], "ready", "{body}");

    drop(idp);
    let mut last = Value::Null;
    for _ in 0..100 {
        let (code, body) = readyz();
        assert_eq!(code, 200, "{body}");
        if body["issuers"]["corp"] == "unreachable" {
            assert_eq!(body["status"], "degraded", "{body}");
            assert_eq!(body["upstream"], "reachable", "{body}");
            assert_eq!(body["accepting"], true, "{body}");
            return;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the stopped IdP was never reported unreachable: {last}");
}

/// Issue 16 item 2: SIGHUP applies OIDC issuers and bindings. An issuer added to the file is
/// trusted at once; a session whose role came from a binding that was removed ends, and that
/// identity can no longer log in; the others go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item2_a_reload_applies_oidc_issuers_and_bindings() {
    let idp = Idp::start(600);
    let short = Idp::start(600);
    let before = auth_config(&idp, None, None, "");
    let gw = start(before.clone());
    let short_token = short.token("agent-ci", None).await;
    let (_, msg) = refusal(&gw, "ai-agent", &short_token).await;
    assert!(msg.contains("not trusted"), "{msg}");
    let agent_token = idp.token("agent-ci", None).await;
    let (agent, _a) = connect(&gw, "ai-agent", &agent_token).await.expect("agent");
    let clin_token = idp.token("clinician-svc", None).await;
    let (clin, clin_conn) = connect(&gw, "clinician", &clin_token)
        .await
        .expect("clinician");
    clin.simple_query("SELECT 1").await.expect("works");

    let clinicians =
        "[[binding]]\ngroups = [\"clinicians\"]\nroles = [\"clinician\", \"ai-agent\"]\n";
    let after = auth_config(&idp, Some(&short), None, "").replace(clinicians, "");
    assert!(before.contains(clinicians));
    let path = gw.config_path();
    let text = std::fs::read_to_string(&path).expect("config");
    assert!(text.contains(&before));
    std::fs::write(&path, text.replace(&before, &after)).expect("rewrite");
    gw.reload().expect("SIGHUP");
    gw.wait_log("configuration reloaded", 1).expect("reloaded");

    let ended = tokio::time::timeout(Duration::from_secs(10), clin_conn)
        .await
        .expect("the session of an unbound role was not ended")
        .expect("join");
    assert!(text_of(ended), "ended without saying why");
    let (_, msg) = refusal(&gw, "clinician", &idp.token("clinician-svc", None).await).await;
    assert!(msg.contains("not granted any role"), "{msg}");
    agent
        .simple_query("SELECT 1")
        .await
        .expect("the agent goes on");
    let (client, _c) = connect(&gw, "ai-agent", &short_token)
        .await
        .expect("the added issuer is trusted");
    assert_eq!(whoami(&client).await[2], "short");
}

/// Whether a session's end carried the gateway's reason.
fn text_of(ended: Result<(), tokio_postgres::Error>) -> bool {
    ended.is_err_and(|e| text(&e).contains("revoked"))
}
