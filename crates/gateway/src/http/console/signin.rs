//! Signing in to the console: OIDC authorization code with PKCE (S256), nonce and state, with
//! the `openidconnect` crate over an HTTP client that never follows a redirect.
//!
//! Sign-in methods are a closed enum ([`Method`]): each begins with a redirect to where the
//! person proves who they are and finishes with a [`Verified`] individual. SAML (its own
//! issue) becomes one more variant with its own begin and finish; everything after
//! [`Verified`] — the gateway session token, the server-side session, the roles — is shared.
//!
//! After the IdP's ID token is verified here (signature, issuer, audience = the client, nonce,
//! expiry), an `[[auth.oidc]]` token also goes through the gateway's own token exchange
//! ([`crate::auth::Authenticator::exchange`]: the issuer's configured audience, subject
//! claim, revocations, once-only use), so the console trusts no one the rest of the gateway
//! would not.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreJwsSigningAlgorithm, CoreProviderMetadata,
};
use openidconnect::{
    AuthorizationCode, ClientId, CsrfToken, IssuerUrl, Nonce, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, Scope, TokenResponse,
};

use super::pending::Pending;
use super::session::{SignedIn, State as SessionState};
use super::{layout, Console};
use crate::auth::DEVELOPMENT_ISSUER;
use crate::state::Shared;

/// The client id the console uses at the development issuer.
pub const DEV_CLIENT_ID: &str = "phigate-console";

/// How a person signs in.
pub enum Method {
    /// An `[[auth.oidc]]` issuer that names a public `client_id` (the one `phigate login`
    /// uses; register `<console>/console/callback` as a redirect URI for it).
    Oidc {
        name: String,
        issuer: String,
        client_id: String,
        scopes: Vec<String>,
        algorithms: Vec<CoreJwsSigningAlgorithm>,
    },
    /// The gateway's development issuer (`auth.development`, the demo): its own sign-in page
    /// lists the demo identities.
    Development { issuer: String },
    /// An `[[auth.saml]]` identity provider ([`super::saml`]).
    Saml { name: String },
}

impl Method {
    pub fn name(&self) -> &str {
        match self {
            Method::Oidc { name, .. } | Method::Saml { name } => name,
            Method::Development { .. } => DEVELOPMENT_ISSUER,
        }
    }

    fn label(&self) -> String {
        match self {
            Method::Oidc { name, issuer, .. } => format!("Sign in with {name} ({issuer})"),
            Method::Development { .. } => {
                "Sign in with the development issuer (demo identities)".into()
            }
            Method::Saml { name } => format!("Sign in with {name} (SAML)"),
        }
    }

    fn issuer(&self) -> &str {
        match self {
            Method::Oidc { issuer, .. } | Method::Development { issuer } => issuer,
            Method::Saml { .. } => "",
        }
    }

    fn client_id(&self) -> &str {
        match self {
            Method::Oidc { client_id, .. } => client_id,
            Method::Development { .. } | Method::Saml { .. } => DEV_CLIENT_ID,
        }
    }

    /// The IdP's origin, for the CSP's `form-action` (a SAML sign-in leaves by redirect).
    pub fn origin(&self) -> Option<String> {
        let url = reqwest::Url::parse(self.issuer()).ok()?;
        Some(url.origin().ascii_serialization()).filter(|o| o != "null")
    }
}

/// Every sign-in method the configuration offers.
pub fn methods(shared: &Shared) -> Vec<Method> {
    let mut out = Vec::new();
    if shared.tokens.development {
        if let Some(s) = shared.auth.signer() {
            out.push(Method::Development {
                issuer: s.issuer.clone(),
            });
        }
    }
    for o in &shared.started.auth.oidc {
        let Some(client_id) = o.client_id.clone() else {
            continue;
        };
        out.push(Method::Oidc {
            name: o.name.clone(),
            issuer: o.issuer.clone(),
            client_id,
            scopes: crate::config::auth::login_scopes(o)
                .into_iter()
                .filter(|s| s != "openid")
                .collect(),
            algorithms: signing_algorithms(&o.algorithms),
        });
    }
    for s in &shared.started.auth.saml {
        out.push(Method::Saml {
            name: s.name.clone(),
        });
    }
    out
}

/// The algorithms an ID token may be signed with: those configured, else the asymmetric ones
/// the gateway accepts by default (never HS* or `none`).
fn signing_algorithms(configured: &[String]) -> Vec<CoreJwsSigningAlgorithm> {
    use CoreJwsSigningAlgorithm as A;
    let all = [
        ("RS256", A::RsaSsaPkcs1V15Sha256),
        ("RS384", A::RsaSsaPkcs1V15Sha384),
        ("RS512", A::RsaSsaPkcs1V15Sha512),
        ("PS256", A::RsaSsaPssSha256),
        ("PS384", A::RsaSsaPssSha384),
        ("PS512", A::RsaSsaPssSha512),
        ("ES256", A::EcdsaP256Sha256),
        ("ES384", A::EcdsaP384Sha384),
        ("EdDSA", A::EdDsa),
    ];
    all.into_iter()
        .filter(|(n, _)| configured.is_empty() || configured.iter().any(|c| c == n))
        .map(|(_, a)| a)
        .collect()
}

/// Who signed in, as the method vouches for them.
pub struct Verified {
    pub subject: String,
    pub groups: Vec<String>,
    /// The `[[auth.oidc]]` name, or `development`.
    pub issuer: String,
    pub expires_at: SystemTime,
}

#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error("the identity provider could not be reached or answered unexpectedly")]
    Provider,
    #[error("the identity provider's answer did not verify ({0})")]
    Invalid(String),
    #[error("authentication failed: {0}")]
    Refused(String),
}

type Client = openidconnect::Client<
    openidconnect::EmptyAdditionalClaims,
    openidconnect::core::CoreAuthDisplay,
    openidconnect::core::CoreGenderClaim,
    openidconnect::core::CoreJweContentEncryptionAlgorithm,
    openidconnect::core::CoreJsonWebKey,
    openidconnect::core::CoreAuthPrompt,
    openidconnect::StandardErrorResponse<openidconnect::core::CoreErrorResponseType>,
    openidconnect::core::CoreTokenResponse,
    openidconnect::core::CoreTokenIntrospectionResponse,
    openidconnect::core::CoreRevocableToken,
    openidconnect::core::CoreRevocationErrorResponse,
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

/// How long an issuer's discovery document (and its keys) is reused: sign-ins cannot make the
/// gateway fetch it more often, however many are started.
const DISCOVERY_TTL: Duration = Duration::from_secs(60);

/// Discovery documents by issuer, each at most [`DISCOVERY_TTL`] old: one entry per sign-in
/// method.
#[derive(Default)]
pub struct Discovered(
    std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, CoreProviderMetadata)>>,
);

impl Discovered {
    fn get(&self, issuer: &str) -> Option<CoreProviderMetadata> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(issuer)
            .filter(|(at, _)| at.elapsed() < DISCOVERY_TTL)
            .map(|(_, m)| m.clone())
    }

    fn put(&self, issuer: &str, meta: CoreProviderMetadata) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(issuer.to_owned(), (std::time::Instant::now(), meta));
    }

    /// Forgets an issuer's document (its keys may have rotated).
    fn forget(&self, issuer: &str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(issuer);
    }
}

async fn client(c: &Console, m: &Method) -> Result<Client, SignInError> {
    let meta = match c.discovered.get(m.issuer()) {
        Some(meta) => meta,
        None => {
            let issuer =
                IssuerUrl::new(m.issuer().to_owned()).map_err(|_| SignInError::Provider)?;
            let meta = CoreProviderMetadata::discover_async(issuer, c.http_for(m))
                .await
                .map_err(|e| {
                    tracing::warn!(issuer = %m.issuer(), error = %e, "console sign-in: discovery failed");
                    SignInError::Provider
                })?;
            c.discovered.put(m.issuer(), meta.clone());
            meta
        }
    };
    let redirect = RedirectUrl::new(c.redirect_uri()).map_err(|_| SignInError::Provider)?;
    let client: Client =
        CoreClient::from_provider_metadata(meta, ClientId::new(m.client_id().to_owned()), None)
            .set_redirect_uri(redirect);
    Ok(client)
}

impl Console {
    /// The HTTP client for a sign-in method's provider.
    fn http_for(&self, m: &Method) -> &reqwest::Client {
        match m {
            Method::Development { .. } => &self.own_http,
            Method::Oidc { .. } | Method::Saml { .. } => &self.http,
        }
    }
}

/// `GET /console/signin`: the methods, one link each.
pub async fn page(
    State(c): State<Arc<Console>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let body = html! {
        @if q.contains_key("out") {
            p role="status" { "You are signed out." }
        }
        @if c.methods.is_empty() {
            p { "No sign-in method is configured: give an [[auth.oidc]] issuer a client_id." }
        }
        ul.signin-list {
            @for m in &c.methods {
                li { a href={ "/console/signin/" (m.name()) } { (m.label()) } }
            }
        }
        p.muted { "Signed-in pages end after " (c.sessions.idle().as_secs() / 60) " minutes without activity." }
    };
    layout::respond(StatusCode::OK, layout::page("Sign in", None, body))
}

/// `GET /console/signin/{method}`: the sign-in sealed into the browser's own cookie, then off
/// to the IdP. A browser already signed in goes to its pages instead.
pub async fn begin(
    State(c): State<Arc<Console>>,
    parts: axum::http::request::Parts,
    Path(method): Path<String>,
) -> Response {
    let signed_in = c
        .session_id(&parts)
        .and_then(|id| c.sessions.peek(id))
        .is_some_and(|s| matches!(s.state, SessionState::SignedIn(_)));
    if signed_in {
        return Redirect::to("/console/").into_response();
    }
    let Some(m) = c.methods.iter().find(|m| m.name() == method) else {
        return layout::error(StatusCode::NOT_FOUND, "No such sign-in method.");
    };
    if let Method::Saml { name } = m {
        return super::saml::begin(&c, name).await;
    }
    let client = match client(&c, m).await {
        Ok(cl) => cl,
        Err(e) => return layout::error(StatusCode::BAD_GATEWAY, &e.to_string()),
    };
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut req = client.authorize_url(
        CoreAuthenticationFlow::AuthorizationCode,
        CsrfToken::new_random,
        Nonce::new_random,
    );
    if let Method::Oidc { scopes, .. } = m {
        for s in scopes {
            req = req.add_scope(Scope::new(s.clone()));
        }
    }
    let (url, state, nonce) = req.set_pkce_challenge(challenge).url();
    let pending = Pending::new(
        m.name().to_owned(),
        state.secret().clone(),
        nonce.secret().clone(),
        verifier.secret().clone(),
    );
    let Some(sealed) = c.sealer.seal(&pending) else {
        return layout::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Cannot start a sign-in now.",
        );
    };
    let mut res = Redirect::to(url.as_str()).into_response();
    res.headers_mut()
        .insert(header::SET_COOKIE, c.signin_cookie(&sealed));
    res
}

#[derive(serde::Deserialize)]
pub struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// `GET /console/callback?code&state`: the IdP sent the browser back. The state must be the
/// one this browser's signing-in session sent; the session is then replaced by a signed-in one
/// under a new id.
pub async fn callback(
    State(c): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    parts: axum::http::request::Parts,
    Query(q): Query<Callback>,
) -> Response {
    let pending = c.signin_cookie_value(&parts).and_then(|v| c.sealer.open(v));
    let Some(pending) = pending else {
        return layout::error(
            StatusCode::BAD_REQUEST,
            "This sign-in was not started in this browser, or took too long. Start again.",
        );
    };
    if q.error.is_some() {
        return layout::error(
            StatusCode::UNAUTHORIZED,
            "The identity provider did not sign you in.",
        );
    }
    let state_ok = q.state.as_deref().is_some_and(|s| {
        use subtle::ConstantTimeEq;
        s.len() == pending.state.len() && bool::from(s.as_bytes().ct_eq(pending.state.as_bytes()))
    });
    let (Some(code), true) = (q.code, state_ok) else {
        return layout::error(
            StatusCode::BAD_REQUEST,
            "The sign-in answer does not match this browser's request. Start again.",
        );
    };
    let Some(m) = c.methods.iter().find(|m| m.name() == pending.method) else {
        return layout::error(StatusCode::BAD_REQUEST, "No such sign-in method.");
    };
    let verified = match finish(&c, m, &pending, code, peer).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(%peer, method = %m.name(), error = %e, "console sign-in refused");
            c.audit_refused(peer, &e.to_string(), None);
            return layout::error(StatusCode::UNAUTHORIZED, &e.to_string());
        }
    };
    signed_in(&c, verified, peer)
}

/// Mints the gateway session token and stores the signed-in session under a new id.
pub(super) fn signed_in(c: &Console, v: Verified, peer: std::net::SocketAddr) -> Response {
    let shared = &c.shared;
    let roles = shared.auth.roles_for(&v.subject, &v.groups, &v.issuer);
    if roles.is_empty() {
        c.audit_refused(peer, "no role is bound to this identity", Some(&v.subject));
        return layout::error(
            StatusCode::FORBIDDEN,
            "Your identity is not granted any role of this gateway.",
        );
    }
    let Some(signer) = shared.auth.signer() else {
        return layout::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "This gateway signs no tokens.",
        );
    };
    let left = v
        .expires_at
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .saturating_sub(shared.auth.leeway());
    let absolute = Duration::from_secs(shared.started.console.absolute_timeout_secs);
    let ttl = shared
        .tokens
        .session_ttl
        .min(absolute)
        .min(Duration::from_secs(left.as_secs()));
    if ttl.is_zero() {
        return layout::error(
            StatusCode::UNAUTHORIZED,
            "Your sign-in has already expired.",
        );
    }
    let (token, expires) = match signer.mint(&v.subject, &v.groups, &v.issuer, ttl) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot sign a console session token");
            return layout::error(StatusCode::INTERNAL_SERVER_ERROR, "Cannot sign you in now.");
        }
    };
    let state = SessionState::SignedIn(SignedIn {
        subject: v.subject.clone(),
        issuer: v.issuer.clone(),
        groups: v.groups,
        token,
    });
    let id = match c.sessions.create(state, Some(expires)) {
        Ok(id) => id,
        Err(e) => return layout::error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    tracing::info!(%peer, subject = %v.subject, issuer = %v.issuer, "console sign-in");
    c.audit(phigate_audit::Event::ConsoleSignin {
        subject: v.subject.clone(),
        issuer: v.issuer.clone(),
        client_addr: peer.to_string(),
    });
    let mut res = Redirect::to("/console/").into_response();
    res.headers_mut().insert(header::SET_COOKIE, c.cookie(&id));
    // The sign-in in flight is done: its cookie goes.
    res.headers_mut()
        .append(header::SET_COOKIE, c.signin_cookie(""));
    res
}

async fn finish(
    c: &Console,
    m: &Method,
    pending: &Pending,
    code: String,
    peer: std::net::SocketAddr,
) -> Result<Verified, SignInError> {
    let client = client(c, m).await?;
    let token = client
        .exchange_code(AuthorizationCode::new(code))
        .map_err(|_| SignInError::Provider)?
        .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier.clone()))
        .request_async(c.http_for(m))
        .await
        .map_err(|e| {
            tracing::warn!(issuer = %m.issuer(), error = %e, "console sign-in: code exchange failed");
            SignInError::Provider
        })?;
    let id_token = token
        .id_token()
        .ok_or_else(|| SignInError::Invalid("no ID token".into()))?;
    let algorithms = match m {
        Method::Oidc { algorithms, .. } => algorithms.clone(),
        Method::Development { .. } => vec![CoreJwsSigningAlgorithm::EdDsa],
        Method::Saml { .. } => return Err(SignInError::Provider),
    };
    let verifier = client.id_token_verifier().set_allowed_algs(algorithms);
    let claims = id_token
        .claims(&verifier, &Nonce::new(pending.nonce.clone()))
        .map_err(|e| {
            // Perhaps signed with a key published since the document was fetched.
            c.discovered.forget(m.issuer());
            SignInError::Invalid(crate::text::display(&e.to_string()).to_string())
        })?;
    match m {
        Method::Saml { .. } => Err(SignInError::Provider),
        Method::Development { .. } => {
            // The development issuer is this gateway: its ID token carries the demo groups.
            let groups = token_claim_groups(&id_token.to_string());
            Ok(Verified {
                subject: claims.subject().as_str().to_owned(),
                groups,
                issuer: DEVELOPMENT_ISSUER.to_owned(),
                expires_at: claims.expiration().into(),
            })
        }
        Method::Oidc { .. } => {
            let x = c
                .shared
                .auth
                .exchange(peer.ip(), &id_token.to_string())
                .await
                .map_err(|e| {
                    super::super::extract::audit_failed_login(&c.shared, peer, "console", &e);
                    SignInError::Refused(e.to_string())
                })?;
            Ok(Verified {
                subject: x.subject,
                groups: x.groups,
                issuer: x.issuer,
                expires_at: x.expires_at,
            })
        }
    }
}

/// The `groups` claim of a JWT whose signature was verified already.
fn token_claim_groups(jwt: &str) -> Vec<String> {
    use base64::Engine;
    let Some(payload) = jwt.split('.').nth(1) else {
        return Vec::new();
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .map(|v| crate::auth::jwt::groups(&v, Some("groups")))
        .unwrap_or_default()
}
