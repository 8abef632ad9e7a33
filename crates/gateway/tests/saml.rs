//! SAML 2.0 sign-in for people, against a real SAML identity provider: `tests/saml-idp/idp.py`
//! (signed with Debian's `xmlsec1`, the way pysaml2 and most IdPs sign; its self-check runs the
//! good responses through pysaml2's own service provider). The console and `phigate login` sign
//! in through it, the identity's groups map to roles, and a corpus of hostile responses (XML
//! signature wrapping XSW1–8, a comment inside NameID, a key not in the metadata, SHA-1, other
//! audiences and recipients, expired, replayed, IdP-initiated, a DOCTYPE, ...) is each refused
//! with a clear message and recorded as a failed login.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use phigate_testkit::Gateway;
use serde_json::{json, Value};

mod saml_support;
use saml_support::{bin, gateway, Idp};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

fn location(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("location")
        .unwrap_or_else(|| panic!("no Location in {resp:?}"))
        .to_str()
        .expect("ascii")
        .to_owned()
}

/// A response as the test reads it: (status, the Location of a 303 or else the body).
async fn answer(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    if status == 303 {
        return (status, location(&resp));
    }
    (status, resp.text().await.expect("body"))
}

/// The `name=value` of the `Set-Cookie` named `name`.
fn cookie(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().to_owned())
        .find(|c| c.starts_with(&format!("{name}=")) && c.len() > name.len() + 1)
}

fn base(gw: &Gateway) -> String {
    format!("http://127.0.0.1:{}", gw.http_port)
}

/// Posts a response to an ACS: (status, Location or body).
async fn post_acs(
    gw: &Gateway,
    issuer: &str,
    response: &str,
    relay: Option<&str>,
) -> (u16, String) {
    let mut form = vec![("SAMLResponse", response.to_owned())];
    if let Some(r) = relay {
        form.push(("RelayState", r.to_owned()));
    }
    let resp = client()
        .post(format!("{}/saml/{issuer}/acs", base(gw)))
        .form(&form)
        .send()
        .await
        .expect("ACS");
    answer(resp).await
}

/// The audit records of `kind`, once there are at least `n` (they are written in batches).
async fn audit_records(gw: &Gateway, kind: &str, n: usize) -> Vec<Value> {
    for _ in 0..100 {
        let records = gw.audit_records(kind);
        if records.len() >= n {
            return records;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    gw.audit_records(kind)
}

/// Starts a `phigate login`-style sign-in at `issuer` in a browser: the IdP URL the gateway
/// redirects to, and the sign-in's ticket cookie.
async fn start_cli_flight(gw: &Gateway, issuer: &str) -> (String, String) {
    let resp = client()
        .get(format!(
            "{}/saml/{issuer}/login?cli_port=9&cli_state=state-0123456789abcdef&cli_challenge={}",
            base(gw),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        ))
        .send()
        .await
        .expect("login");
    assert_eq!(resp.status().as_u16(), 303, "{resp:?}");
    let ticket = cookie(&resp, "phigate-saml").expect("ticket cookie");
    (location(&resp), ticket)
}

/// Follows a redirect the gateway gave the browser (with `cookie`): the next one.
async fn follow(gw: &Gateway, to: &str, cookie: &str) -> (u16, String) {
    let resp = client()
        .get(format!("{}{to}", base(gw)))
        .header("cookie", cookie)
        .send()
        .await
        .expect("follow");
    answer(resp).await
}

/// Collects a `phigate login` sign-in at its finish URL `to` as the browser holding `ticket`
/// does: a verified one is confirmed first (the page names whom it signs in). Where the browser
/// is sent then.
async fn finish_cli(gw: &Gateway, to: &str, ticket: &str) -> (u16, String) {
    let (status, body) = follow(gw, to, ticket).await;
    if status != 200 {
        return (status, body);
    }
    assert!(
        body.contains("Continue only if you just ran phigate login"),
        "{body}"
    );
    let (path, key) = to.split_once("?key=").expect("a key");
    let resp = client()
        .post(format!("{}{path}", base(gw)))
        .header("cookie", ticket)
        .form(&[("key", key)])
        .send()
        .await
        .expect("confirm");
    answer(resp).await
}

/// What `phigate login` (loopback port 9) is told: its code, or the reason for a refusal.
fn told(callback: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(callback).map_err(|_| format!("not a URL: {callback}"))?;
    if !url.as_str().starts_with("http://127.0.0.1:9/callback?") {
        return Err(format!("sent elsewhere: {callback}"));
    }
    let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    if q.get("state").map(String::as_str) != Some("state-0123456789abcdef") {
        return Err(format!("wrong state: {callback}"));
    }
    match (q.get("code"), q.get("error"), q.get("error_description")) {
        (Some(code), None, None) => Ok(code.clone()),
        (None, Some(e), Some(d)) if e == "access_denied" => Err(d.clone()),
        _ => Err(format!("malformed: {callback}")),
    }
}

/// What a `phigate login` browser round trip came to.
struct CliSignIn {
    told: Result<String, String>,
    response: String,
    relay: Option<String>,
    ticket: String,
}

/// A whole `phigate login` browser round trip at `hospital`, answered by `idp` with `variant`.
async fn cli_sign_in(gw: &Gateway, idp: &Idp, variant: &str) -> CliSignIn {
    let acs = format!("{}/saml/hospital/acs", base(gw));
    let (url, ticket) = start_cli_flight(gw, "hospital").await;
    // The AuthnRequest goes to the IdP the metadata names; `idp` answers it.
    let url = url.replace(&url[..url.find("/sso/").expect("sso")], &idp.url);
    let (response, relay) = idp.answer(Some(&url), "clinician", variant, &acs).await;
    let (status, to) = post_acs(gw, "hospital", &response, relay.as_deref()).await;
    let told = if status != 303 || !to.starts_with("/saml/hospital/finish?key=") {
        Err(format!("ACS answered {status} {to}"))
    } else {
        match finish_cli(gw, &to, &ticket).await {
            (303, callback) => told(&callback),
            (status, body) => Err(format!("finish answered {status} {body}")),
        }
    };
    CliSignIn {
        told,
        response,
        relay,
        ticket,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_signs_in_through_saml_bound_to_the_browser_that_started() {
    let idp = Idp::start();
    let gw = gateway(&idp);
    let acs = format!("{}/saml/hospital/acs", base(&gw));
    let c = client();

    // SP metadata for the IdP's administrator.
    let md = c
        .get(format!("{}/saml/hospital/metadata", base(&gw)))
        .send()
        .await
        .expect("metadata");
    assert_eq!(md.status().as_u16(), 200);
    let md = md.text().await.expect("text");
    assert!(md.contains("WantAssertionsSigned=\"true\""), "{md}");
    assert!(md.contains(&acs), "{md}");
    assert!(
        md.contains("entityID=\"https://phigate.test/saml/hospital\""),
        "{md}"
    );

    let page = c
        .get(format!("{}/console/signin", base(&gw)))
        .send()
        .await
        .expect("signin page")
        .text()
        .await
        .expect("text");
    assert!(page.contains("Sign in with hospital (SAML)"), "{page}");

    // Sign in as the privacy officer (group reviewers: role reviewer), in "this browser".
    let begin = c
        .get(format!("{}/console/signin/hospital", base(&gw)))
        .send()
        .await
        .expect("begin");
    assert_eq!(begin.status().as_u16(), 303);
    let signin_cookie = cookie(&begin, "phigate-saml").expect("ticket cookie");
    let (response, relay) = idp
        .answer(Some(&location(&begin)), "reviewer", "good", &acs)
        .await;
    let (status, next) = post_acs(&gw, "hospital", &response, relay.as_deref()).await;
    assert_eq!(status, 303, "{next}");
    assert!(next.starts_with("/console/saml/finish?key="), "{next}");
    let finish = c
        .get(format!("{}{next}", base(&gw)))
        .header("cookie", &signin_cookie)
        .send()
        .await
        .expect("finish");
    assert_eq!(finish.status().as_u16(), 303, "{:?}", finish.text().await);
    assert_eq!(location(&finish), "/console/");
    let session = cookie(&finish, "phigate-console").expect("console session cookie");
    let home = c
        .get(format!("{}/console/", base(&gw)))
        .header("cookie", &session)
        .send()
        .await
        .expect("home");
    assert_eq!(
        location(&home),
        "/console/inbox",
        "a reviewer's home is the inbox"
    );
    let inbox = c
        .get(format!("{}/console/inbox", base(&gw)))
        .header("cookie", &session)
        .send()
        .await
        .expect("inbox");
    assert_eq!(inbox.status().as_u16(), 200);
    let inbox = inbox.text().await.expect("text");
    assert!(inbox.contains("privacy.officer@hospital.test"), "{inbox}");
    let signin = audit_records(&gw, "console_signin", 1).await;
    assert_eq!(signin.len(), 1, "{signin:?}");
    assert_eq!(signin[0]["subject"], "privacy.officer@hospital.test");
    assert_eq!(signin[0]["issuer"], "hospital");

    // A verified sign-in collected by a browser that did not start it (login CSRF): refused.
    let begin = c
        .get(format!("{}/console/signin/hospital", base(&gw)))
        .send()
        .await
        .expect("begin");
    let (response, relay) = idp
        .answer(Some(&location(&begin)), "clinician", "good", &acs)
        .await;
    let (status, next) = post_acs(&gw, "hospital", &response, relay.as_deref()).await;
    assert_eq!(status, 303, "{next}");
    let other = c
        .get(format!("{}{next}", base(&gw)))
        .send()
        .await
        .expect("finish");
    assert_eq!(other.status().as_u16(), 400);
    let text = other.text().await.expect("text");
    assert!(text.contains("not started in this browser"), "{text}");

    // A person no binding grants a role: refused at the console, with the reason audited.
    let begin = c
        .get(format!("{}/console/signin/hospital", base(&gw)))
        .send()
        .await
        .expect("begin");
    let signin_cookie = cookie(&begin, "phigate-saml").expect("ticket cookie");
    let (response, relay) = idp
        .answer(Some(&location(&begin)), "nobody", "good", &acs)
        .await;
    let (_, next) = post_acs(&gw, "hospital", &response, relay.as_deref()).await;
    let refused = c
        .get(format!("{}{next}", base(&gw)))
        .header("cookie", &signin_cookie)
        .send()
        .await
        .expect("finish");
    assert_eq!(refused.status().as_u16(), 403);
    let failed = audit_records(&gw, "login_failed", 2).await;
    assert!(
        failed
            .iter()
            .any(|r| r["subject"] == "nobody@hospital.test"),
        "{failed:?}"
    );
}

/// What `phigate login --issuer hospital` prints, after the browser part is played here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phigate_login_signs_in_with_saml_and_the_token_opens_a_session() {
    let idp = Idp::start();
    let gw = gateway(&idp);
    let acs = format!("{}/saml/hospital/acs", base(&gw));
    let mut login = Command::new(bin())
        .args([
            "login",
            "--no-browser",
            "--json",
            "--issuer",
            "hospital",
            "--url",
        ])
        .arg(base(&gw))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("phigate login");
    let mut lines = BufReader::new(login.stderr.take().expect("stderr")).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("login printed no address")
            .expect("line");
        if line.starts_with("http://") {
            break line;
        }
    };
    assert!(url.contains("/saml/hospital/login?cli_port="), "{url}");
    let c = client();
    let to_idp = c.get(&url).send().await.expect("gateway login");
    assert_eq!(to_idp.status().as_u16(), 303);
    let ticket = cookie(&to_idp, "phigate-saml").expect("ticket cookie");
    let (response, relay) = idp
        .answer(Some(&location(&to_idp)), "clinician", "good", &acs)
        .await;
    let (status, finish) = post_acs(&gw, "hospital", &response, relay.as_deref()).await;
    assert_eq!(status, 303, "{finish}");
    assert!(finish.starts_with("/saml/hospital/finish?key="), "{finish}");
    // Without the ticket of the browser that started it, the sign-in cannot be collected
    // (neither at the console, where a key of phigate login's is refused anyway).
    let (status, _) = follow(
        &gw,
        &finish.replace("/saml/hospital/", "/console/saml/"),
        &ticket,
    )
    .await;
    assert_eq!(
        status, 400,
        "a phigate login sign-in collected at the console"
    );
    let to_idp = c.get(&url).send().await.expect("gateway login");
    let (response, relay) = idp
        .answer(Some(&location(&to_idp)), "clinician", "good", &acs)
        .await;
    let (_, finish) = post_acs(&gw, "hospital", &response, relay.as_deref()).await;
    let (status, _) = follow(&gw, &finish, "").await;
    assert_eq!(status, 400, "collected without the ticket");
    // A third start in the same browser (the one the CLI's address opened) goes through.
    let to_idp = c.get(&url).send().await.expect("gateway login");
    let ticket = cookie(&to_idp, "phigate-saml").expect("ticket cookie");
    let (response, relay) = idp
        .answer(Some(&location(&to_idp)), "clinician", "good", &acs)
        .await;
    let (_, finish) = post_acs(&gw, "hospital", &response, relay.as_deref()).await;
    let (status, page) = follow(&gw, &finish, &ticket).await;
    assert_eq!(status, 200);
    assert!(page.contains("dr.house@hospital.test"), "{page}");
    let (status, callback) = finish_cli(&gw, &finish, &ticket).await;
    assert_eq!(status, 303, "{callback}");
    assert!(callback.starts_with("http://127.0.0.1:"), "{callback}");
    let done = reqwest::get(&callback).await.expect("CLI callback");
    assert_eq!(done.status().as_u16(), 200);
    let out = login.wait_with_output().expect("login output");
    assert!(out.status.success(), "{out:?}");
    let result: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(result["subject"], "dr.house@hospital.test");
    assert_eq!(result["roles"], json!(["clinician"]));

    // The token opens a database session as that individual.
    let token = result["token"].as_str().expect("token");
    let conninfo = format!(
        "host=127.0.0.1 port={} dbname=clinic user=clinician password='{token}' sslmode=disable",
        gw.pg_port
    );
    let (db, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .expect("connect with the SAML session token");
    tokio::spawn(conn);
    let row = db
        .query_one("SELECT current_setting('phigate.subject')", &[])
        .await
        .expect("whoami");
    assert_eq!(row.get::<_, String>(0), "dr.house@hospital.test");

    // The one-time code cannot be redeemed again.
    let code = reqwest::Url::parse(&callback)
        .expect("callback URL")
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("code");
    let again = c
        .post(format!("{}/v1/auth/saml/token", base(&gw)))
        .form(&[
            ("code", code.as_str()),
            ("code_verifier", "x".repeat(43).as_str()),
        ])
        .send()
        .await
        .expect("redeem");
    assert_eq!(again.status().as_u16(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_and_broken_responses_are_refused_and_audited() {
    let idp = Idp::start();
    let gw = gateway(&idp);
    // (variant, what the refusal says)
    let corpus = [
        (
            "unsigned",
            "neither the assertion nor the response is signed",
        ),
        (
            "wrong-key",
            "does not verify with the identity provider's certificate",
        ),
        ("sha1", "SHA-1"),
        ("xsw1", "exactly one assertion"),
        ("xsw2", "an element the profile does not allow there"),
        ("xsw3", "exactly one assertion"),
        ("xsw4", "exactly one assertion"),
        ("xsw5", "exactly one assertion"),
        ("xsw6", "exactly one assertion"),
        ("xsw7", "ID is used twice"),
        ("xsw8", "ID is used twice"),
        ("nameid-comment", "comments are not accepted"),
        ("audience", "another audience"),
        ("no-audience", "no AudienceRestriction"),
        ("recipient", "Recipient is not this gateway"),
        ("destination", "Destination is not this gateway"),
        ("expired", "expired"),
        ("not-yet-valid", "not yet valid"),
        ("wrong-in-response-to", "different sign-in request"),
        ("idp-initiated", "does not say which sign-in request"),
        ("doctype", "document type declaration"),
        ("empty-nameid", "the subject is empty"),
        ("wrong-issuer", "not the configured identity provider"),
        ("status-failure", "did not sign the person in"),
        ("two-assertions", "exactly one assertion"),
    ];
    // Each sign-in was started by `phigate login` (port 9): the refusal goes back to it, with
    // the reason, so that it ends at once.
    let mut wrong = Vec::new();
    for (variant, reason) in corpus {
        match cli_sign_in(&gw, &idp, variant).await.told {
            Err(d) if d.contains(reason) => {}
            other => wrong.push(format!("{variant}: {other:?}")),
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // Each refusal is a failed login with its reason.
    let failed = audit_records(&gw, "login_failed", corpus.len()).await;
    assert_eq!(failed.len(), corpus.len(), "{failed:#?}");
    for (record, (variant, reason)) in failed.iter().zip(corpus) {
        let text = record["reason"].as_str().unwrap_or_default();
        assert!(text.contains(reason), "{variant}: {record}");
        assert_eq!(record["user"], "saml:hospital");
    }

    // Valid shapes: a signed response covering an unsigned assertion, and both signed.
    for variant in ["only-response-signed", "response-signed"] {
        let outcome = cli_sign_in(&gw, &idp, variant).await.told;
        assert!(outcome.is_ok(), "{variant} refused: {outcome:?}");
    }

    // A request is answered once: the same response and RelayState again are refused.
    let first = cli_sign_in(&gw, &idp, "good").await;
    assert!(first.told.is_ok(), "{:?}", first.told);
    let (status, to) = post_acs(&gw, "hospital", &first.response, first.relay.as_deref()).await;
    assert_eq!(status, 303, "{to}");
    let (_, callback) = follow(&gw, &to, &first.ticket).await;
    let again = told(&callback);
    assert!(
        matches!(&again, Err(d) if d.contains("already answered")),
        "{again:?}"
    );

    // Starting sign-ins stores nothing: a flood from one address keeps no one out.
    for _ in 0..200 {
        start_cli_flight(&gw, "hospital").await;
    }
    let outcome = cli_sign_in(&gw, &idp, "good").await.told;
    assert!(outcome.is_ok(), "after a flood of starts: {outcome:?}");

    // No RelayState at an issuer that does not allow IdP-initiated sign-in.
    let (status, body) = post_acs(&gw, "hospital", &first.response, None).await;
    assert_eq!(status, 401);
    assert!(body.contains("IdP-initiated"), "{body}");

    // Where IdP-initiated sign-in is allowed, an assertion is still accepted only once.
    let portal_acs = format!("{}/saml/portal/acs", base(&gw));
    let (unsolicited, _) = idp
        .answer(None, "clinician", "idp-initiated", &portal_acs)
        .await;
    let (status, next) = post_acs(&gw, "portal", &unsolicited, None).await;
    assert_eq!(status, 303, "{next}");
    // It signs no one in by itself: the browser starts a sign-in bound to it at the gateway
    // (which the IdP's session completes at once).
    assert_eq!(next, "/console/signin/portal");
    let (status, body) = post_acs(&gw, "portal", &unsolicited, None).await;
    assert_eq!(status, 401);
    assert!(body.contains("already used"), "{body}");
    // ... and a response meant for one request is not accepted as unsolicited.
    let (url, _) = start_cli_flight(&gw, "portal").await;
    let (solicited, _) = idp
        .answer(Some(&url), "clinician", "good", &portal_acs)
        .await;
    let (status, body) = post_acs(&gw, "portal", &solicited, None).await;
    assert_eq!(status, 401);
    assert!(body.contains("not waiting for"), "{body}");

    // Parser bombs are refused before the XML parser runs, and the gateway serves on: 5,000
    // unclosed levels (the parser recurses per level) and 4,000 namespace declarations in
    // scope at each of 1,000 elements (it copies them per element).
    use base64::Engine;
    let b64 = |x: String| base64::engine::general_purpose::STANDARD.encode(x);
    let open = "<samlp:Response xmlns:samlp=\"urn:oasis:names:tc:SAML:2.0:protocol\"";
    let deep = b64(format!("{open}>{}", "<a>".repeat(5000)));
    let decls: String = (0..4000).map(|k| format!(" xmlns:a{k}=\"u\"")).collect();
    let wide = b64(format!(
        "{open}{decls}>{}</samlp:Response>",
        "<b xmlns:c=\"u\"/>".repeat(1000)
    ));
    for (bomb, reason) in [(deep, "nest too deeply"), (wide, "too many attributes")] {
        let started = std::time::Instant::now();
        let (status, body) = post_acs(&gw, "portal", &bomb, None).await;
        assert_eq!(status, 401, "{reason}: {body}");
        assert!(body.contains(reason), "{body}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "slow refusal"
        );
    }
    assert_eq!(gw.http_get("/healthz").expect("healthz").0, 200);

    // An oversized body is refused before it is read.
    let (status, _) = post_acs(&gw, "hospital", &"A".repeat(600 * 1024), None).await;
    assert_eq!(status, 413);
}

/// Metadata from which nothing could be verified stops the gateway from starting, and
/// `phigate check` says why.
#[test]
fn idp_metadata_without_a_signing_certificate_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let md = dir.path().join("idp.xml");
    std::fs::write(
        &md,
        r#"<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" entityID="https://idp.test">
  <md:IDPSSODescriptor protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">
    <md:KeyDescriptor use="encryption"><ds:KeyInfo xmlns:ds="http://www.w3.org/2000/09/xmldsig#"/></md:KeyDescriptor>
    <md:SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" Location="https://idp.test/sso"/>
  </md:IDPSSODescriptor>
</md:EntityDescriptor>"#,
    )
    .expect("write metadata");
    let config = dir.path().join("phigate.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[listen]\naddress = \"127.0.0.1:6432\"\n\
             [upstream]\nhost = \"127.0.0.1\"\ndatabase = \"clinic\"\nuser = \"phigate\"\n\
             password = \"x\"\n\
             [[auth.saml]]\nname = \"hospital\"\nidp_metadata_file = \"{}\"\n\
             sp_entity_id = \"https://phigate.test/saml/hospital\"\n\
             acs_url = \"https://phigate.test/saml/hospital/acs\"\n",
            dir.path().join("data").display(),
            md.display()
        ),
    )
    .expect("write config");
    // `serve` builds the same trust as `check` and refuses to start for the same reason.
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .expect("phigate check");
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.to_string().contains("no signing certificate"), "{e}");
}

/// The IdP rotates its signing key: responses signed with the new key are refused until the
/// operator puts the new metadata in place and reloads (SIGHUP); then the old key is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_idp_certificate_is_taken_at_reload() {
    let entity = "https://idp.hospital.test/saml";
    let old = Idp::start_as(Some(entity));
    let dir = tempfile::tempdir().expect("tempdir");
    let md = dir.path().join("idp-metadata.xml");
    std::fs::copy(&old.metadata_file, &md).expect("copy metadata");
    let gw = saml_support::gateway_for(md.to_str().expect("utf-8"));
    assert!(
        cli_sign_in(&gw, &old, "good").await.told.is_ok(),
        "the current key signs in"
    );
    let new = Idp::start_as(Some(entity));
    let refused = cli_sign_in(&gw, &new, "good").await.told;
    assert!(
        matches!(&refused, Err(d) if d.contains("does not verify")),
        "{refused:?}"
    );
    std::fs::copy(&new.metadata_file, &md).expect("rotate metadata");
    gw.reload().expect("SIGHUP");
    gw.wait_log("configuration reloaded", 1).expect("reloaded");
    assert!(
        cli_sign_in(&gw, &new, "good").await.told.is_ok(),
        "the new key signs in"
    );
    let refused = cli_sign_in(&gw, &old, "good").await.told;
    assert!(refused.is_err(), "{refused:?}");
}
