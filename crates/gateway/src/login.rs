//! `phigate login`: signs the caller in with the identity provider the gateway trusts, then
//! exchanges the IdP's ID token for a short-lived gateway session token.
//!
//! Two OAuth flows for a public client (no secret on the caller's machine):
//! - authorization code with PKCE (S256) and a loopback redirect (RFC 8252): the browser comes
//!   back to `http://127.0.0.1:<port>/callback`, where this command listens for one request;
//! - the device flow (RFC 8628), for a machine without a browser: the user opens a page
//!   elsewhere and types a code.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::auth::jwks::get_json;

pub struct LoginOptions {
    /// The gateway's HTTP address.
    pub url: String,
    pub issuer: Option<String>,
    pub device: bool,
    pub open_browser: bool,
    pub role: Option<String>,
    pub database: Option<String>,
    pub json: bool,
}

/// Names a PEM bundle that the commands calling the gateway's HTTP listener (`login`, `review`,
/// `mcp --stdio`, `healthcheck`) trust besides the system's roots: a gateway with
/// `listen.http_tls` and a private CA, or a self-signed certificate.
pub const CA_FILE_ENV: &str = "PHIGATE_CA_FILE";

/// An HTTP client for the gateway (and, for `login`, the identity provider): the system's
/// roots and `PHIGATE_CA_FILE`'s certificates.
pub fn gateway_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder().use_rustls_tls().timeout(timeout);
    if let Some(path) = std::env::var_os(CA_FILE_ENV) {
        let path = std::path::PathBuf::from(path);
        let pem = std::fs::read(&path)
            .map_err(|e| anyhow::anyhow!("{CA_FILE_ENV}: cannot read {}: {e}", path.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)? {
            b = b.add_root_certificate(cert);
        }
    }
    Ok(b.build()?)
}

/// How long the user has to finish signing in.
const SIGN_IN_TIMEOUT: Duration = Duration::from_secs(300);

fn random_b64(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

fn str_field<'a>(v: &'a Value, name: &str) -> anyhow::Result<&'a str> {
    v.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow::anyhow!("the identity provider's response has no {name}"))
}

pub async fn run(opts: LoginOptions) -> anyhow::Result<()> {
    let gateway = opts.url.trim_end_matches('/').to_owned();
    // The session token comes back over this connection: only TLS, or loopback.
    let lower = gateway.to_ascii_lowercase();
    if !lower.starts_with("https://") && !crate::auth::is_loopback_url(&lower) {
        anyhow::bail!("--url must be https:// (plain http only to a gateway on this machine)");
    }
    let client = gateway_client(Duration::from_secs(15))?;
    let auth_config = get_json(&client, &format!("{gateway}/v1/auth/config")).await?;
    let issuers = auth_config
        .get("issuers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let chosen = match &opts.issuer {
        Some(name) => issuers
            .iter()
            .find(|i| i.get("name").and_then(Value::as_str) == Some(name.as_str())),
        None if issuers.len() == 1 => issuers.first(),
        None => None,
    };
    let Some(issuer) = chosen else {
        let names: Vec<&str> = issuers
            .iter()
            .filter_map(|i| i.get("name").and_then(Value::as_str))
            .collect();
        anyhow::bail!(
            "choose an issuer with --issuer (this gateway offers sign-in with: {})",
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        );
    };
    let resp = if issuer.get("kind").and_then(Value::as_str) == Some("saml") {
        saml_sign_in(&client, &gateway, issuer, &opts).await?
    } else {
        oidc_sign_in(&client, &gateway, issuer, &opts).await?
    };
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        anyhow::bail!(
            "the gateway refused the sign-in ({status}): {}",
            body.get("error")
                .and_then(Value::as_str)
                .unwrap_or("no reason given")
        );
    }
    let token = str_field(&body, "token")?;
    let roles: Vec<&str> = body
        .get("roles")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let role = opts
        .role
        .as_deref()
        .or(roles.first().copied())
        .unwrap_or_default();
    let host = reqwest::Url::parse(&gateway)?
        .host_str()
        .unwrap_or("localhost")
        .to_owned();
    let port = auth_config
        .get("postgres_port")
        .and_then(Value::as_u64)
        .unwrap_or(5432);
    let db = opts
        .database
        .clone()
        .or_else(|| {
            auth_config
                .get("database")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "postgres".into());
    // A token of base64url segments and dots needs no quoting; anything else is refused
    // rather than printed into a shell command.
    let safe = |v: &str| {
        !v.is_empty()
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@:".contains(&b))
    };
    if !safe(token) || !safe(role) || !safe(&db) || !safe(&host) {
        anyhow::bail!("the gateway returned values that are not safe to print as a command");
    }
    let sslmode = if crate::auth::is_loopback_url(&lower) {
        "prefer"
    } else {
        "verify-full"
    };
    let conn = format!("host={host} port={port} dbname={db} user={role} sslmode={sslmode}");
    if opts.json {
        let mut out = body.clone();
        out["connection"] = Value::String(conn);
        println!("{out}");
    } else {
        eprintln!(
            "Signed in as {} (roles: {}); the token expires {}.",
            body.get("subject").and_then(Value::as_str).unwrap_or("?"),
            roles.join(", "),
            body.get("expires_at")
                .and_then(Value::as_str)
                .unwrap_or("?")
        );
        println!("export PGPASSWORD='{token}'");
        println!("psql \"{conn}\"");
    }
    Ok(())
}

/// Signs in at an OIDC issuer (code flow with PKCE, or the device flow) and exchanges its ID
/// token at the gateway: the gateway's answer.
async fn oidc_sign_in(
    client: &reqwest::Client,
    gateway: &str,
    issuer: &Value,
    opts: &LoginOptions,
) -> anyhow::Result<reqwest::Response> {
    let issuer_url = str_field(issuer, "issuer")?
        .trim_end_matches('/')
        .to_owned();
    let Some(client_id) = issuer.get("client_id").and_then(Value::as_str) else {
        anyhow::bail!(
            "the gateway trusts issuer {} but has no login client for it: set client_id in its \
             [[auth.oidc]] table (a public client with PKCE / device flow at the IdP)",
            crate::text::display(str_field(issuer, "name").unwrap_or("?"))
        );
    };
    let client_id = client_id.to_owned();
    let scope = login_scope(issuer);
    let discovery = get_json(
        client,
        &format!("{issuer_url}/.well-known/openid-configuration"),
    )
    .await?;
    let token_endpoint = str_field(&discovery, "token_endpoint")?.to_owned();

    let tokens = if opts.device {
        let endpoint = str_field(&discovery, "device_authorization_endpoint")?;
        device_flow(client, endpoint, &token_endpoint, &client_id, &scope).await?
    } else {
        let endpoint = str_field(&discovery, "authorization_endpoint")?;
        code_flow(
            client,
            endpoint,
            &token_endpoint,
            &client_id,
            &scope,
            opts.open_browser,
        )
        .await?
    };
    let id_token = str_field(&tokens, "id_token")?;

    Ok(client
        .post(format!("{gateway}/v1/auth/token"))
        .bearer_auth(id_token)
        .send()
        .await?)
}

/// Signs in at a SAML identity provider through the gateway: the browser goes to the gateway's
/// `/saml/{name}/login` with this command's loopback port, state and S256 challenge; the
/// gateway verifies the IdP's response and sends the browser back here with a one-time code,
/// which only this command (holding the verifier) can redeem: the gateway's answer.
async fn saml_sign_in(
    client: &reqwest::Client,
    gateway: &str,
    issuer: &Value,
    opts: &LoginOptions,
) -> anyhow::Result<reqwest::Response> {
    if opts.device {
        anyhow::bail!(
            "--device is for OpenID Connect issuers; a SAML sign-in needs a browser (use \
             --no-browser to open the printed address yourself)"
        );
    }
    let name = str_field(issuer, "name")?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let (verifier, challenge) = pkce();
    let state = random_b64(16);
    let mut url = reqwest::Url::parse(gateway)?;
    url.path_segments_mut()
        .map_err(|()| anyhow::anyhow!("--url cannot be a base for paths"))?
        .pop_if_empty()
        .extend(["saml", name, "login"]);
    url.query_pairs_mut()
        .append_pair("cli_port", &listener.local_addr()?.port().to_string())
        .append_pair("cli_state", &state)
        .append_pair("cli_challenge", &challenge);
    // The gateway's URL was checked in `run`: https, or loopback.
    let code = in_browser(&url, opts.open_browser, &listener, &state).await?;
    Ok(client
        .post(format!("{gateway}/v1/auth/saml/token"))
        .form(&[
            ("code", code.as_str()),
            ("code_verifier", verifier.as_str()),
        ])
        .send()
        .await?)
}

async fn code_flow(
    client: &reqwest::Client,
    authorization_endpoint: &str,
    token_endpoint: &str,
    client_id: &str,
    scope: &str,
    open_browser: bool,
) -> anyhow::Result<Value> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let redirect_uri = format!(
        "http://127.0.0.1:{}/callback",
        listener.local_addr()?.port()
    );
    let (verifier, challenge) = pkce();
    let state = random_b64(16);
    let nonce = random_b64(16);
    let mut url = reqwest::Url::parse(authorization_endpoint)?;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", &redirect_uri)
        .append_pair("scope", scope)
        .append_pair("state", &state)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let endpoint = authorization_endpoint.to_ascii_lowercase();
    let secure = endpoint.starts_with("https://") || crate::auth::is_loopback_url(&endpoint);
    let code = in_browser(&url, open_browser && secure, &listener, &state).await?;
    let resp = client
        .post(token_endpoint)
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", redirect_uri.as_str()),
            ("client_id", client_id),
            ("code_verifier", verifier.as_str()),
        ])
        .send()
        .await?;
    token_response(resp).await
}

/// A PKCE verifier and its S256 challenge.
fn pkce() -> (String, String) {
    let verifier = random_b64(32);
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// Prints the sign-in address (and opens it in a browser when `open`), then waits, at most
/// [`SIGN_IN_TIMEOUT`], for the loopback callback that carries `state`: its code.
async fn in_browser(
    url: &reqwest::Url,
    open: bool,
    listener: &tokio::net::TcpListener,
    state: &str,
) -> anyhow::Result<String> {
    eprintln!("Open this address to sign in:\n{url}");
    if open {
        let _ = std::process::Command::new("xdg-open")
            .arg(url.as_str())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
    tokio::time::timeout(SIGN_IN_TIMEOUT, wait_for_code(listener, state))
        .await
        .map_err(|_| anyhow::anyhow!("sign-in was not completed within 5 minutes"))?
}

/// Accepts connections on the loopback redirect until one brings the code for our `state`.
async fn wait_for_code(listener: &tokio::net::TcpListener, state: &str) -> anyhow::Result<String> {
    loop {
        let (mut sock, _) = listener.accept().await?;
        let mut buf = vec![0u8; 8192];
        let mut len = 0;
        // The request line is all that matters; read until the end of the headers. A
        // connection that sends nothing (a browser's preconnect) must not block the real one.
        while len < buf.len() {
            let Ok(read) =
                tokio::time::timeout(Duration::from_secs(2), sock.read(&mut buf[len..])).await
            else {
                break;
            };
            let n = read?;
            if n == 0 {
                break;
            }
            len += n;
            if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        let head = String::from_utf8_lossy(&buf[..len]);
        let target = head
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_default()
            .to_owned();
        let Ok(url) = reqwest::Url::parse(&format!("http://127.0.0.1{target}")) else {
            continue;
        };
        if url.path() != "/callback" {
            let _ = sock
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
            continue;
        }
        let param = |k: &str| {
            url.query_pairs()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.into_owned())
        };
        if param("state").as_deref() != Some(state) {
            // Not ours (another tab, a stray local request): ignore it and keep waiting.
            let page = "This sign-in response does not belong to the running phigate login.";
            let _ = sock
                .write_all(
                    format!(
                        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                        page.len()
                    )
                    .as_bytes(),
                )
                .await;
            continue;
        }
        let (page, result) = if let Some(e) = param("error") {
            (
                "Sign-in failed; see the terminal.",
                Err(anyhow::anyhow!(
                    "the sign-in was refused: {e} {}",
                    param("error_description").unwrap_or_default()
                )),
            )
        } else if let Some(code) = param("code") {
            (
                "Signed in. You can close this window and return to the terminal.",
                Ok(code),
            )
        } else {
            continue;
        };
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
            page.len()
        );
        let _ = sock.write_all(response.as_bytes()).await;
        return result;
    }
}

async fn device_flow(
    client: &reqwest::Client,
    device_endpoint: &str,
    token_endpoint: &str,
    client_id: &str,
    scope: &str,
) -> anyhow::Result<Value> {
    let resp = client
        .post(device_endpoint)
        .form(&[("client_id", client_id), ("scope", scope)])
        .send()
        .await?;
    let start = idp_answer(resp, "device authorization endpoint").await?;
    let device_code = str_field(&start, "device_code")?.to_owned();
    let user_code = str_field(&start, "user_code")?;
    let uri = str_field(&start, "verification_uri")?;
    match start
        .get("verification_uri_complete")
        .and_then(Value::as_str)
    {
        Some(complete) => eprintln!("Open {complete}\n(or {uri} and enter the code {user_code})"),
        None => eprintln!("Open {uri} and enter the code {user_code}"),
    }
    let mut interval =
        Duration::from_secs(start.get("interval").and_then(Value::as_u64).unwrap_or(5));
    let deadline = Instant::now()
        + Duration::from_secs(
            start
                .get("expires_in")
                .and_then(Value::as_u64)
                .unwrap_or(300),
        );
    loop {
        if Instant::now() > deadline {
            anyhow::bail!("the device code expired before sign-in was completed");
        }
        tokio::time::sleep(interval).await;
        let resp = client
            .post(token_endpoint)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", device_code.as_str()),
                ("client_id", client_id),
            ])
            .send()
            .await?;
        let status = resp.status();
        let body = read_body(resp).await?;
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        if status.is_success() {
            if let Some(v) = json.as_ref().filter(|v| v.is_object()) {
                return Ok(v.clone());
            }
        } else {
            match json
                .as_ref()
                .and_then(|b| b.get("error"))
                .and_then(Value::as_str)
            {
                Some("authorization_pending") => continue,
                Some("slow_down") => {
                    interval += Duration::from_secs(5);
                    continue;
                }
                _ => {}
            }
        }
        anyhow::bail!(describe_answer(
            "token endpoint",
            status,
            json.as_ref(),
            &body
        ));
    }
}

async fn token_response(resp: reqwest::Response) -> anyhow::Result<Value> {
    idp_answer(resp, "token endpoint").await
}

/// The scopes to ask for: those the gateway lists for the issuer (`openid` and the scope that
/// releases its `subject_claim` among them), `openid` first, each once.
fn login_scope(issuer: &Value) -> String {
    let mut scopes = vec!["openid".to_owned()];
    let listed = issuer.get("scopes").and_then(Value::as_array);
    for s in listed.into_iter().flatten().filter_map(Value::as_str) {
        if !s.is_empty() && !scopes.iter().any(|x| x == s) {
            scopes.push(s.to_owned());
        }
    }
    scopes.join(" ")
}

/// Largest answer read from the IdP.
const MAX_ANSWER: usize = 256 * 1024;

async fn read_body(mut resp: reqwest::Response) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > MAX_ANSWER {
            anyhow::bail!("the identity provider's answer is larger than {MAX_ANSWER} bytes");
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A JSON object from an IdP endpoint, or an error that says what the IdP answered.
async fn idp_answer(resp: reqwest::Response, what: &str) -> anyhow::Result<Value> {
    let status = resp.status();
    let body = read_body(resp).await?;
    let json: Option<Value> = serde_json::from_slice(&body).ok();
    match json {
        Some(v) if status.is_success() && v.is_object() => Ok(v),
        json => anyhow::bail!(describe_answer(what, status, json.as_ref(), &body)),
    }
}

/// What an IdP endpoint answered instead of what was expected, for a person: the status, an
/// OAuth error (`error`, `error_description`), or the start of a body that is not JSON. Never
/// the fields of a successful answer (they hold codes and tokens); control characters escaped.
fn describe_answer(
    what: &str,
    status: reqwest::StatusCode,
    json: Option<&Value>,
    body: &[u8],
) -> String {
    let field = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let said = match json {
        Some(v) if field(v, "error").is_some() => {
            let error = field(v, "error").unwrap_or_default();
            match field(v, "error_description") {
                Some(d) => format!("{error}: {d}"),
                None => error,
            }
        }
        Some(v) if v.is_object() => "a JSON object without the expected fields".to_owned(),
        Some(_) => "JSON that is not an object".to_owned(),
        None if body.is_empty() => "an empty body".to_owned(),
        None => {
            let text = String::from_utf8_lossy(body);
            let excerpt: String = text.chars().take(200).collect();
            let more = if text.chars().count() > 200 {
                "…"
            } else {
                ""
            };
            format!("a body that is not JSON: \"{excerpt}{more}\"")
        }
    };
    let said: String = said.chars().take(400).collect();
    format!(
        "the identity provider's {what} answered {status} with {}",
        crate::text::display(&said)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_start_with_openid_once() {
        let issuer = serde_json::json!({"scopes": ["openid", "email", "", "email", "groups"]});
        assert_eq!(login_scope(&issuer), "openid email groups");
        assert_eq!(login_scope(&serde_json::json!({})), "openid");
    }

    #[test]
    fn what_the_idp_answered_is_said_escaped_and_without_secrets() {
        let bad = reqwest::StatusCode::BAD_REQUEST;
        let oauth = serde_json::json!({"error": "invalid_client", "error_description": "no\u{1b}[2Jsuch client"});
        let said = describe_answer("device authorization endpoint", bad, Some(&oauth), b"");
        assert_eq!(
            said,
            "the identity provider's device authorization endpoint answered 400 Bad Request with \
             invalid_client: no\\u{1b}[2Jsuch client"
        );
        let html = b"<html>\r\nProxy error</html>";
        let said = describe_answer(
            "token endpoint",
            reqwest::StatusCode::BAD_GATEWAY,
            None,
            html,
        );
        assert!(
            said.ends_with("502 Bad Gateway with a body that is not JSON: \"<html>\\u{d}\\u{a}Proxy error</html>\""),
            "{said}"
        );
        // A successful answer's fields (codes, tokens) are never repeated.
        let tokens =
            serde_json::json!({"access_token": "secret-token", "device_code": "secret-code"});
        let said = describe_answer(
            "token endpoint",
            reqwest::StatusCode::OK,
            Some(&tokens),
            b"",
        );
        assert!(!said.contains("secret"), "{said}");
        let long = "x".repeat(1000);
        let said = describe_answer("token endpoint", bad, None, long.as_bytes());
        assert!(said.len() < 400, "{said}");
    }
}
