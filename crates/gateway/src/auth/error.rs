//! Why a credential was refused: the messages clients read, and the kinds metrics count.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// Unknown token or key, or a wrong secret: deliberately says nothing more.
    #[error("authentication failed")]
    InvalidCredentials,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issuer is not trusted")]
    UntrustedIssuer,
    #[error("token audience is not this gateway")]
    WrongAudience,
    #[error("token signature algorithm is not allowed")]
    AlgorithmNotAllowed,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token signing key is unknown")]
    UnknownKey,
    #[error("token is malformed")]
    Malformed,
    #[error("token is larger than {0} bytes")]
    TooLarge(usize),
    #[error("token lacks the {0} claim")]
    MissingClaim(&'static str),
    #[error("token does not name an individual (subject claim missing or empty)")]
    MissingSubject,
    #[error("token's e-mail address is not verified by the identity provider (email_verified is not true)")]
    UnverifiedEmail,
    #[error("API key revoked")]
    KeyRevoked { subject: String },
    #[error("token revoked (phigate token revoke); sign in again")]
    TokenRevoked { subject: String },
    #[error("this identity provider token was already exchanged; sign in again for a new one")]
    AlreadyExchanged,
    #[error("too many token exchanges are remembered right now; try again later")]
    ExchangeBusy,
    #[error("you have exchanged too many identity provider tokens recently; use the session token you have, or try again later")]
    ExchangeTooOften,
    #[error("API key expired")]
    KeyExpired { subject: String },
    #[error("the identity provider's keys cannot be fetched right now")]
    IdpUnavailable,
    #[error("too many failed logins from this address; try again in {0} s")]
    RateLimited(u64),
    #[error("identity {subject} may not assume role \"{role}\"")]
    RoleNotAllowed { subject: String, role: String },
    #[error("identity {subject} is not granted any role")]
    NoRole { subject: String },
    /// A SAML response or sign-in that did not verify; the text names the rule it broke.
    #[error("SAML sign-in refused: {0}")]
    Saml(String),
    #[error("this SAML assertion was already used; sign in again")]
    SamlReplayed,
    #[error("too many sign-ins are in progress; try again shortly")]
    SignInsBusy,
}

impl AuthError {
    /// A stable, bounded name for the kind of refusal (a metrics label).
    pub fn kind(&self) -> &'static str {
        match self {
            AuthError::InvalidCredentials => "invalid_credentials",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::UntrustedIssuer => "untrusted_issuer",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::AlgorithmNotAllowed => "algorithm_not_allowed",
            AuthError::BadSignature => "bad_signature",
            AuthError::UnknownKey => "unknown_key",
            AuthError::Malformed => "malformed",
            AuthError::TooLarge(_) => "too_large",
            AuthError::MissingClaim(_) => "missing_claim",
            AuthError::MissingSubject => "missing_subject",
            AuthError::UnverifiedEmail => "unverified_email",
            AuthError::KeyRevoked { .. } => "key_revoked",
            AuthError::TokenRevoked { .. } => "token_revoked",
            AuthError::AlreadyExchanged => "already_exchanged",
            AuthError::ExchangeBusy => "exchange_busy",
            AuthError::ExchangeTooOften => "exchange_too_often",
            AuthError::KeyExpired { .. } => "key_expired",
            AuthError::IdpUnavailable => "idp_unavailable",
            AuthError::RateLimited(_) => "rate_limited",
            AuthError::RoleNotAllowed { .. } => "role_not_allowed",
            AuthError::NoRole { .. } => "no_role",
            AuthError::Saml(_) => "saml_refused",
            AuthError::SamlReplayed => "saml_replayed",
            AuthError::SignInsBusy => "signins_busy",
        }
    }

    /// The individual a refused credential named, when it was genuine (its signature or
    /// secret checked out) and only something else was wrong: for the `login_failed` record.
    pub fn subject(&self) -> Option<&str> {
        match self {
            AuthError::RoleNotAllowed { subject, .. }
            | AuthError::NoRole { subject }
            | AuthError::KeyRevoked { subject }
            | AuthError::KeyExpired { subject }
            | AuthError::TokenRevoked { subject } => Some(subject),
            _ => None,
        }
    }

    /// Counts towards the failed-login limit: a wrong or forged credential. Not: a valid
    /// credential asking for the wrong role, an IdP outage, or the limit itself.
    pub(super) fn is_failed_guess(&self) -> bool {
        !matches!(
            self,
            AuthError::RoleNotAllowed { .. }
                | AuthError::NoRole { .. }
                | AuthError::IdpUnavailable
                | AuthError::ExchangeBusy
                | AuthError::ExchangeTooOften
                | AuthError::RateLimited(_)
                | AuthError::SignInsBusy
        )
    }
}
