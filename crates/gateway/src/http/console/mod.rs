//! The reviewer and auditor web console (docs/console.md): server-rendered HTML on the HTTP
//! listener, at `/console/`.
//!
//! - Pages are [maud] templates (checked by the compiler, escaped by default); htmx is
//!   vendored into the binary ([`assets`]); no inline script or style, so the CSP is
//!   `default-src 'none'` with `'self'` scripts and styles only ([`security_headers`]).
//! - Sign-in is OIDC authorization code + PKCE ([`signin`]); the browser then holds only a
//!   server-side session's id ([`session`]). Every page authorizes with the gateway session
//!   token minted at sign-in, through the same checks as the JSON API
//!   ([`super::extract::Credentials`]), and decides reviews through the API's own path
//!   ([`super::reviews::decide_review`]).
//! - Who sees what follows the roles: reviewer roles the inbox ([`inbox`]), `audit.reader_roles`
//!   the audit log and recorded sessions ([`audit`], [`sessions`]), everyone their own requests.

mod assets;
mod audit;
mod devidp;
mod inbox;
mod layout;
mod pending;
mod saml;
mod session;
mod sessions;
mod signin;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::header::{self, HeaderValue};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};

use super::extract::Credentials;
use crate::auth::Identity;
use crate::state::Shared;
use session::{SignedIn, Store};

/// The console of one gateway.
pub struct Console {
    shared: Arc<Shared>,
    sessions: Store,
    /// Seals the sign-ins in flight into their browsers' cookies.
    sealer: pending::Sealer,
    /// Where browsers reach the console (no trailing slash).
    base: String,
    /// Its `Host` (host and port, the port only if not the scheme's default).
    authority: String,
    /// The base is https: the cookie is `__Host-` prefixed and `Secure`.
    secure: bool,
    methods: Vec<signin::Method>,
    /// The development issuer's sign-in page (with `auth.development`).
    dev: Option<devidp::DevIdp>,
    /// For the identity providers: never follows a redirect.
    http: reqwest::Client,
    /// For the development issuer, which is this gateway: over `listen.http_tls`, it trusts
    /// exactly the certificate the gateway serves.
    own_http: reqwest::Client,
    /// The identity providers' discovery documents, briefly cached.
    discovered: signin::Discovered,
    /// The audit log's last verification, shown on the audit page.
    verified: audit::VerifyCache,
    /// The `Content-Security-Policy` of every console page.
    csp: HeaderValue,
}

impl Console {
    /// Writes a console event to the audit log (sign-ins, sign-outs, refused sign-ins).
    fn audit(&self, event: phigate_audit::Event) {
        if let Some(log) = &self.shared.audit.log {
            log.submit(phigate_audit::Pending::Event(event));
        }
    }

    /// A console sign-in refused after the browser came back from the identity provider:
    /// a `login_failed` record (`via: "console"`) and the failed-login counter.
    fn audit_refused(&self, peer: SocketAddr, reason: &str, subject: Option<&str>) {
        self.shared
            .metrics
            .login_failed("console_signin", "console");
        self.audit(phigate_audit::Event::LoginFailed {
            client_addr: peer.to_string(),
            user: "console".into(),
            reason: reason.chars().take(256).collect(),
            via: Some("console".into()),
            subject: subject.map(str::to_owned),
        });
    }

    fn cookie_name(&self) -> &'static str {
        if self.secure {
            "__Host-phigate-console"
        } else {
            "phigate-console"
        }
    }

    /// The `Set-Cookie` value for session `id` (empty `id`: the cookie is removed).
    fn cookie(&self, id: &str) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        let age = if id.is_empty() { "; Max-Age=0" } else { "" };
        let v = format!(
            "{}={id}; Path=/; HttpOnly; SameSite=Lax{secure}{age}",
            self.cookie_name()
        );
        HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    fn redirect_uri(&self) -> String {
        format!("{}/console/callback", self.base)
    }

    /// The `Set-Cookie` value of a sign-in in flight (empty `sealed`: removed). Its own cookie,
    /// so a signed-in session's is never replaced by a link that starts a sign-in.
    fn signin_cookie(&self, sealed: &str) -> HeaderValue {
        let (name, secure) = if self.secure {
            ("__Host-phigate-signin", "; Secure")
        } else {
            ("phigate-signin", "")
        };
        let age = if sealed.is_empty() {
            "0".to_owned()
        } else {
            pending::SIGN_IN_TIMEOUT.as_secs().to_string()
        };
        let v = format!("{name}={sealed}; Path=/; HttpOnly; SameSite=Lax{secure}; Max-Age={age}");
        HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    fn signin_cookie_value<'a>(&self, parts: &'a Parts) -> Option<&'a str> {
        let name = if self.secure {
            "__Host-phigate-signin"
        } else {
            "phigate-signin"
        };
        cookie_value(&parts.headers, name)
    }

    /// The cookie's session id, if the request carries one.
    fn session_id<'a>(&self, parts: &'a Parts) -> Option<&'a str> {
        cookie_value(&parts.headers, self.cookie_name())
    }
}

/// The value of cookie `name` in a request.
pub(super) fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The console's routes, or `None` when it is off (or has no signing key to mint tokens).
pub fn router(shared: Arc<Shared>) -> Option<Router<Arc<Shared>>> {
    let config = &shared.started.console;
    let http_addr = shared.listen.http_addr?;
    if !config.enabled || shared.auth.signer().is_none() {
        return None;
    }
    let scheme = if shared.listen.http_tls {
        "https"
    } else {
        "http"
    };
    let base = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{http_addr}"))
        .trim_end_matches('/')
        .to_owned();
    match console_transport(&base) {
        Transport::Https => {}
        Transport::LoopbackHttp => {
            layout::PLAIN_HTTP.store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
            %base,
            "the console is served over plain HTTP: any program on the browser's machine can \
             read its sign-in cookie (browsers share cookies across ports). For development \
             only; set listen.http_tls = true (or console.public_url = https://... behind a TLS \
             proxy)"
            )
        }
        Transport::RemoteHttp => {
            tracing::error!(
                %base,
                "the console is off: it would be reached over plain HTTP from other machines. \
                 Set listen.http_tls = true, or console.public_url = https://... behind a TLS \
                 proxy"
            );
            return None;
        }
    }
    let url = reqwest::Url::parse(&base).ok()?;
    let authority = match url.port() {
        Some(p) => format!("{}:{p}", url.host_str()?),
        None => url.host_str()?.to_owned(),
    };
    let methods = signin::methods(&shared);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .ok()?;
    let own_http = match (&shared.started.tls, shared.listen.http_tls) {
        (Some(tls), true) => reqwest::Client::builder()
            .use_preconfigured_tls(crate::tls::own_listener_config(&tls.cert_file).ok()?)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .ok()?,
        _ => http.clone(),
    };
    let csp = content_security_policy(&methods);
    let console = Arc::new(Console {
        sessions: Store::new(
            config.max_sessions,
            Duration::from_secs(config.idle_timeout_secs),
            Duration::from_secs(config.absolute_timeout_secs),
        ),
        sealer: pending::Sealer::new()?,
        secure: console_transport(&base) == Transport::Https,
        authority,
        dev: shared.tokens.development.then(|| {
            let idp = devidp::DevIdp::new();
            if !http_addr.ip().is_loopback() {
                tracing::warn!(
                    code = idp.remote_code(),
                    "development sign-in from other machines needs this code (auth.development: never in production)"
                );
            }
            idp
        }),
        base,
        methods,
        http,
        own_http,
        discovered: Default::default(),
        verified: Default::default(),
        csp,
        shared,
    });
    let routes = Router::new()
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route("/console/", get(home))
        .route("/console/signin", get(signin::page))
        .route("/console/signin/{method}", get(signin::begin))
        .route("/console/callback", get(signin::callback))
        .route("/console/saml/finish", get(saml::finish))
        .route("/console/logout", post(logout))
        .route("/console/inbox", get(inbox::page))
        .route("/console/inbox/rows", get(inbox::rows))
        .route("/console/events", get(inbox::events))
        .route("/console/requests", get(inbox::my_requests))
        .route("/console/reviews/{id}", get(inbox::review))
        .route("/console/reviews/{id}/decide", post(inbox::decide))
        .route("/console/audit", get(audit::page))
        .route("/console/audit.csv", get(audit::csv))
        .route("/console/sessions", get(sessions::list))
        .route("/console/sessions/{id}", get(sessions::replay))
        .route("/console/assets/{file}", get(assets::serve))
        .route(
            "/dev/authorize",
            get(devidp::authorize_page).post(devidp::authorize),
        )
        .route("/dev/token", post(devidp::token))
        .layer(axum::middleware::from_fn_with_state(
            console.clone(),
            security_headers,
        ))
        .with_state(console);
    Some(routes)
}

/// How browsers reach the console.
#[derive(Debug, PartialEq, Eq)]
pub enum Transport {
    Https,
    /// Plain HTTP on this machine: served, with a warning on every page.
    LoopbackHttp,
    /// Plain HTTP from elsewhere: refused (tokens and PHI in the clear on the network).
    RemoteHttp,
}

pub fn console_transport(base: &str) -> Transport {
    let lower = base.to_ascii_lowercase();
    if lower.starts_with("https://") {
        Transport::Https
    } else if crate::auth::is_loopback_url(&lower) {
        Transport::LoopbackHttp
    } else {
        Transport::RemoteHttp
    }
}

/// `form-action` names the identity providers too (a sign-in may post to them).
fn content_security_policy(methods: &[signin::Method]) -> HeaderValue {
    let mut form_action = vec!["'self'".to_owned()];
    for m in methods {
        if let Some(origin) = m.origin() {
            form_action.push(origin);
        }
    }
    let v = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'; form-action {}; frame-ancestors 'none'; base-uri 'none'",
        form_action.join(" ")
    );
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"))
}

/// Every console response: no caching (pages carry PHI), no referrer, no framing, the CSP.
/// Console pages answer only under the console's own host name (`console.public_url`): a
/// DNS-rebinding page elsewhere gets a redirect to the real origin, whose cookie it never has.
async fn security_headers(State(c): State<Arc<Console>>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let mut res =
        if req.uri().path().starts_with("/console") && !host.eq_ignore_ascii_case(&c.authority) {
            let to = format!(
                "{}{}",
                c.base,
                req.uri()
                    .path_and_query()
                    .map_or("/console/", |p| p.as_str())
            );
            match *req.method() {
                axum::http::Method::GET | axum::http::Method::HEAD => {
                    Redirect::permanent(&to).into_response()
                }
                _ => layout::error(
                    StatusCode::MISDIRECTED_REQUEST,
                    "This console answers under its own address only.",
                ),
            }
        } else {
            next.run(req).await
        };
    let h = res.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, c.csp.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    res
}

/// A signed-in browser: its session, who it is and what its roles let it see.
pub struct Viewer {
    session_id: String,
    csrf: String,
    who: SignedIn,
    peer: SocketAddr,
    /// Roles the identity may assume (its bindings).
    roles: Vec<String>,
    can_review: bool,
    can_audit: bool,
}

impl Viewer {
    fn credentials(&self) -> Credentials {
        Credentials::new(self.peer, self.who.token.clone())
    }

    /// The identity for one of `roles` (in order), checked as the API checks a bearer token.
    async fn authorize(
        &self,
        shared: &Shared,
        roles: &[String],
        what: &str,
    ) -> Result<Identity, super::ApiError> {
        self.credentials().authorize(shared, roles, what).await
    }
}

/// Reviewer roles: `approvals.reviewer_roles` and every rule's own.
fn reviewer_roles(shared: &Shared) -> Vec<String> {
    let (policy, _) = shared.policy.store.snapshot();
    let mut roles = shared.approvals.config.get().reviewer_roles.clone();
    roles.extend(policy.rule_reviewer_roles().map(str::to_owned));
    roles
}

/// What a browser without a live sign-in gets: the sign-in page (a page's GET), htmx's
/// whole-page redirect to it (the live inbox's refresh), or 401 (anything else, e.g. a form
/// post after the idle logoff).
#[derive(Clone, Copy)]
pub struct NotSignedIn {
    page: bool,
    htmx: bool,
}

impl NotSignedIn {
    fn of(parts: &Parts) -> NotSignedIn {
        NotSignedIn {
            page: parts.method == axum::http::Method::GET,
            htmx: parts.headers.contains_key("hx-request"),
        }
    }
}

impl IntoResponse for NotSignedIn {
    fn into_response(self) -> Response {
        if self.htmx {
            let mut res = StatusCode::UNAUTHORIZED.into_response();
            res.headers_mut()
                .insert("hx-redirect", HeaderValue::from_static("/console/signin"));
            return res;
        }
        if self.page {
            return Redirect::to("/console/signin").into_response();
        }
        layout::error(
            StatusCode::UNAUTHORIZED,
            "You are signed out (idle for too long, or signed out elsewhere). Sign in again.",
        )
    }
}

impl FromRequestParts<Arc<Console>> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, c: &Arc<Console>) -> Result<Self, Response> {
        let out = NotSignedIn::of(parts);
        let viewer = Viewer::from_session(parts, c)
            .await
            .map_err(|e| e.into_response())?;
        // Every request checks the sign-in's credential as the API checks a bearer token: a
        // revoked token, an issuer or binding removed by a reload, ends the console session.
        let shared = &c.shared;
        if let Err(e) = viewer
            .credentials()
            .authorize(shared, &viewer.roles, "use the web console")
            .await
        {
            if !shared.listen.credentials_from(viewer.peer.ip()) {
                return Err(layout::error(e.status(), e.message()));
            }
            c.sessions.remove(&viewer.session_id);
            tracing::info!(subject = %viewer.who.subject, error = %e.message(), "console session ended: its credential no longer holds");
            c.audit(phigate_audit::Event::ConsoleSignout {
                subject: viewer.who.subject.clone(),
                issuer: viewer.who.issuer.clone(),
                client_addr: viewer.peer.to_string(),
                reason: format!("credential no longer holds: {}", e.message())
                    .chars()
                    .take(256)
                    .collect(),
            });
            return Err(out.into_response());
        }
        Ok(viewer)
    }
}

impl Viewer {
    async fn from_session(parts: &mut Parts, c: &Arc<Console>) -> Result<Self, NotSignedIn> {
        let out = NotSignedIn::of(parts);
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0)
            .ok_or(out)?;
        let id = c.session_id(parts).ok_or(out)?.to_owned();
        // The live inbox's own requests do not count as activity (idle logoff).
        let automatic =
            parts.headers.contains_key("hx-request") || parts.uri.path() == "/console/events";
        let session = if automatic {
            c.sessions.peek(&id)
        } else {
            c.sessions.touch(&id)
        }
        .ok_or(out)?;
        let session::State::SignedIn(who) = session.state;
        let shared = &c.shared;
        let roles = shared
            .auth
            .roles_for(&who.subject, &who.groups, &who.issuer);
        let can_review = reviewer_roles(shared).iter().any(|r| roles.contains(r));
        let can_audit = shared.audit.dir.is_some()
            && shared
                .audit
                .reader_roles
                .get()
                .iter()
                .any(|r| roles.contains(r));
        Ok(Viewer {
            session_id: id,
            csrf: session.csrf,
            who,
            peer,
            roles,
            can_review,
            can_audit,
        })
    }
}

/// `GET /console/`: the first page the roles allow.
async fn home(v: Result<Viewer, Response>) -> Response {
    match v {
        Ok(v) if v.can_review => Redirect::to("/console/inbox").into_response(),
        Ok(v) if v.can_audit => Redirect::to("/console/audit").into_response(),
        Ok(_) => Redirect::to("/console/requests").into_response(),
        Err(_) => Redirect::to("/console/signin").into_response(),
    }
}

#[derive(serde::Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /console/logout`: the session ends on the server, the cookie is removed.
async fn logout(State(c): State<Arc<Console>>, v: Viewer, Form(f): Form<CsrfForm>) -> Response {
    if !csrf_ok(&c, &v, &f.csrf) {
        return layout::error(
            StatusCode::FORBIDDEN,
            "This form has expired; reload the page.",
        );
    }
    c.sessions.remove(&v.session_id);
    tracing::info!(subject = %v.who.subject, issuer = %v.who.issuer, "console sign-out");
    c.audit(phigate_audit::Event::ConsoleSignout {
        subject: v.who.subject.clone(),
        issuer: v.who.issuer.clone(),
        client_addr: v.peer.to_string(),
        reason: "signed out".into(),
    });
    let mut res = Redirect::to("/console/signin?out=1").into_response();
    res.headers_mut().insert(header::SET_COOKIE, c.cookie(""));
    res
}

/// Whether a posted form carries the session's CSRF token.
fn csrf_ok(c: &Console, v: &Viewer, submitted: &str) -> bool {
    c.sessions
        .touch(&v.session_id)
        .is_some_and(|s| session::csrf_ok(&s, submitted))
}
