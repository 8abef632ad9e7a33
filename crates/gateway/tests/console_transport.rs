//! How browsers and tools reach the HTTP listener: `listen.http_tls` serves it over TLS only
//! (the console's cookie then `__Host-` prefixed and `Secure`, `phigate healthcheck` trusting
//! `PHIGATE_CA_FILE`); a console that would be reached over plain HTTP from other machines is
//! off; one on plain HTTP loopback says on every page that it is for development only.

use std::path::Path;
use std::process::Command;

use phigate_testkit::{run, Certs, Gateway, GatewayOptions};

const BIN: &str = env!("CARGO_BIN_EXE_phigate");

fn gateway(listen_extra: &str, extra: &str) -> Gateway {
    let cluster = phigate_testkit::clinic(phigate::demo::SEED_SQL);
    let mut opts = GatewayOptions::for_cluster(cluster);
    opts.top = "auth.development = true\n".into();
    opts.listen_extra = listen_extra.into();
    opts.extra = extra.into();
    Gateway::start(Path::new(BIN), opts).expect("gateway")
}

/// The development sign-in from the start: (the callback's response, its session cookie).
async fn dev_sign_in(
    http: &reqwest::Client,
    base: &str,
    subject: &str,
) -> (reqwest::Response, String) {
    let start = http
        .get(format!("{base}/console/signin/development"))
        .send()
        .await
        .expect("sign-in");
    let pending = set_cookie(&start);
    let url = reqwest::Url::parse(&location(&start)).expect("authorize url");
    let mut form: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    form.push(("subject".into(), subject.into()));
    let back = http
        .post(format!("{base}/dev/authorize"))
        .form(&form)
        .send()
        .await
        .expect("authorize");
    let callback = location(&back);
    assert!(callback.contains("/console/callback?"), "{callback}");
    let signed = http
        .get(&callback)
        .header("cookie", &pending)
        .send()
        .await
        .expect("callback");
    let session = set_cookie(&signed);
    (signed, session)
}

/// The `name=value` of a response's Set-Cookie.
fn set_cookie(res: &reqwest::Response) -> String {
    res.headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn location(res: &reqwest::Response) -> String {
    res.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn client(ca: Option<&Path>) -> reqwest::Client {
    let mut b = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).expect("ca");
        b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("pem"));
    }
    b.build().expect("client")
}

#[tokio::test]
async fn the_http_listener_speaks_tls_only_when_asked_and_the_console_cookie_is_host_only() {
    let certs = Certs::generate().expect("certs");
    let tls = format!(
        "[[binding]]\nissuer = \"development\"\ngroups = [\"reviewers\"]\nroles = [\"reviewer\"]\n\n\
         [tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        certs.cert().display(),
        certs.key().display()
    );
    let gw = gateway("http_tls = true", &tls);
    let base = format!("https://127.0.0.1:{}", gw.http_port);

    let res = client(Some(&certs.ca()))
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("https");
    assert_eq!(res.status(), 200);
    // Plain HTTP on the same port gets no answer, never a page.
    assert!(phigate_testkit::http_get(gw.http_port, "/healthz").is_err());
    // A certificate from another CA is refused by the client.
    assert!(client(Some(&certs.other_ca()))
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_err());

    // The sign-in in flight's sealed cookie: host-only, Secure, HttpOnly.
    let res = client(Some(&certs.ca()))
        .get(format!("{base}/console/signin/development"))
        .send()
        .await
        .expect("sign-in");
    let cookie = res
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        cookie.starts_with("__Host-phigate-signin="),
        "{cookie}\n{}",
        gw.log()
    );
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    // The whole development sign-in over TLS: the console fetches its own issuer's discovery
    // document and exchanges the code over the TLS listener, trusting the served certificate.
    let http = client(Some(&certs.ca()));
    let (signed, session) = dev_sign_in(&http, &base, "privacy.officer@demo.phigate").await;
    let status = signed.status();
    assert!(
        session.starts_with("__Host-phigate-console="),
        "{status} {session}\n{}\n{}",
        signed.text().await.unwrap_or_default(),
        gw.log()
    );
    let home = http
        .get(format!("{base}/console/requests"))
        .header("cookie", &session)
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("text");
    assert!(home.contains("privacy.officer@demo.phigate"), "{home}");
    // The sign-in and the sign-out are audit records (HIPAA: log-in monitoring).
    let csrf = home
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("the page's CSRF token")
        .to_owned();
    let out = http
        .post(format!("{base}/console/logout"))
        .header("cookie", &session)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .expect("sign out");
    assert!(out.status().is_redirection(), "{}", out.status());
    let audited = |kind: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let found = gw.audit_records(kind);
            if !found.is_empty() || std::time::Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    let signin = audited("console_signin");
    assert_eq!(signin.len(), 1, "{signin:?}");
    assert_eq!(signin[0]["subject"], "privacy.officer@demo.phigate");
    assert_eq!(signin[0]["issuer"], "development");
    let signout = audited("console_signout");
    assert_eq!(signout.len(), 1, "{signout:?}");
    assert_eq!(signout[0]["reason"], "signed out");
    // An identity the provider vouches for but no role is bound to: refused, and audited.
    let (refused, cookie) = dev_sign_in(&http, &base, "coding-agent@demo.phigate").await;
    assert_eq!(refused.status(), 403);
    assert!(cookie.is_empty(), "{cookie}");
    let failed = audited("login_failed");
    assert!(
        failed
            .iter()
            .any(|r| r["via"] == "console" && r["subject"] == "coding-agent@demo.phigate"),
        "{failed:?}"
    );

    // The sign-in page carries no development-only warning over TLS.
    let page = client(Some(&certs.ca()))
        .get(format!("{base}/console/signin"))
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("text");
    assert!(page.contains("Sign in"), "{page}");
    assert!(!page.contains("plain HTTP"), "{page}");

    // The health probe for container runtimes trusts PHIGATE_CA_FILE.
    let url = format!("{base}/healthz");
    let (ok, out, err) = run(Command::new(BIN)
        .args(["healthcheck", "--url", &url])
        .env("PHIGATE_CA_FILE", certs.ca()))
    .expect("healthcheck");
    assert!(ok, "{out}{err}");
    let (ok, _, err) = run(Command::new(BIN)
        .args(["healthcheck", "--url", &url])
        .env_remove("PHIGATE_CA_FILE"))
    .expect("healthcheck");
    assert!(!ok, "a certificate no root vouches for was accepted: {err}");
}

#[tokio::test]
async fn a_console_over_plain_http_is_off_from_elsewhere_and_marked_on_loopback() {
    let remote = gateway(
        "",
        "[console]\npublic_url = \"http://phigate.example.org:6544\"\n",
    );
    let (status, page) =
        phigate_testkit::http_get(remote.http_port, "/console/signin").expect("get");
    assert!(
        status != 200 && !page.contains("Sign in"),
        "a console over plain HTTP to other machines: {status} {page}"
    );
    remote
        .wait_log("the console is off", 1)
        .expect("the log says why");

    let local = gateway("", "");
    let page = client(None)
        .get(format!(
            "http://127.0.0.1:{}/console/signin",
            local.http_port
        ))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    assert!(page.contains("Sign in"), "{page}");
    assert!(
        page.contains("Development only: this console is served over plain HTTP"),
        "{page}"
    );
}

#[test]
fn http_tls_without_a_certificate_is_a_config_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("phigate.toml");
    std::fs::write(
        &config,
        "[listen]\naddress = \"127.0.0.1:6432\"\nhttp_address = \"127.0.0.1:6544\"\n\
         http_tls = true\n\n[upstream]\nhost = \"127.0.0.1\"\nuser = \"app\"\n",
    )
    .expect("config");
    let (ok, out, err) =
        run(Command::new(BIN).args(["check", "--config"]).arg(&config)).expect("check");
    assert!(!ok, "{out}");
    assert!(err.contains("listen.http_tls needs"), "{err}");
}
