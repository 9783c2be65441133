/// Result alias used by every call of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong while logging a user in or checking a session.
///
/// Messages never contain tokens, secrets or key material, so they can be logged as they are.
/// Callers answer the browser with a generic message and use [`Error::kind`] to pick the status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The discovery document or the provider's key set could not be fetched or understood.
    #[error("OpenID Connect discovery failed at {url}: {reason}")]
    Discovery {
        url: String,
        reason: String,
        #[source]
        source: Option<BoxError>,
    },

    /// The discovery document names another issuer than the configured one: either the issuer
    /// URL is misconfigured or something is impersonating the provider.
    #[error("the provider at {configured} describes itself as issuer {advertised}")]
    DiscoveryIssuerMismatch {
        configured: String,
        advertised: String,
    },

    /// The token endpoint answered with an OAuth error, e.g. `invalid_grant` for an expired
    /// or already used authorization code, or `invalid_client` for a wrong client secret.
    #[error("the token endpoint rejected the request: {error}{}", fmt_description(.description))]
    TokenExchangeRejected {
        error: String,
        description: Option<String>,
    },

    /// The token endpoint could not be reached, timed out, or answered something that is not
    /// an OAuth token or error response.
    #[error("the token endpoint failed: {reason}")]
    TokenEndpoint {
        reason: String,
        #[source]
        source: Option<BoxError>,
    },

    /// The token response has no `id_token` (the `openid` scope is missing, or the provider is
    /// plain OAuth 2.0).
    #[error("the token response contains no ID token")]
    MissingIdToken,

    /// The signature does not verify against the key the token names, or the token's
    /// algorithm does not fit that key.
    #[error("the token's signature is invalid")]
    BadSignature,

    /// `iss` is missing or names another issuer.
    #[error("the token was issued by {actual:?}, expected {expected}")]
    WrongIssuer {
        expected: String,
        actual: Option<String>,
    },

    /// `aud` does not contain the expected audience, or `azp` names another party.
    #[error("the token is not meant for {expected}: {reason}")]
    WrongAudience { expected: String, reason: String },

    /// `exp` is in the past (beyond the allowed clock skew).
    #[error("the token expired at unix time {expired_at}")]
    Expired { expired_at: i64 },

    /// `nbf` is in the future (beyond the allowed clock skew).
    #[error("the token is not valid before unix time {not_before}")]
    NotYetValid { not_before: i64 },

    /// `nonce` is missing or differs from the one sent with the authorization request: the
    /// token belongs to another login attempt, or is being replayed.
    #[error("the ID token's nonce is missing or does not match this login")]
    NonceMismatch,

    /// No key in the key set matches the token's `kid`, even after refreshing the key set.
    #[error("no signing key is known for kid {kid:?}")]
    UnknownKey { kid: Option<String> },

    /// The token is signed with an algorithm this crate does not accept (`none`, HMAC, ...).
    #[error("the token's signing algorithm {algorithm} is not accepted")]
    UnsupportedAlgorithm { algorithm: String },

    /// Not a JWT, or a JWT whose header or claims do not have the required shape.
    #[error("malformed token: {reason}")]
    MalformedToken { reason: String },

    /// A configured session signing key cannot be used. The key itself is never included.
    #[error("session signing key {kid:?} is invalid: {reason}")]
    InvalidSessionKey { kid: String, reason: String },

    /// Configuration that cannot work, named by its setting.
    #[error("invalid identity configuration {setting}: {reason}")]
    InvalidConfig {
        setting: &'static str,
        reason: String,
    },
}

fn fmt_description(description: &Option<String>) -> String {
    description
        .as_deref()
        .map(|description| format!(" ({description})"))
        .unwrap_or_default()
}

/// What a caller should do about an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The login or session is not acceptable: answer 401 and let the user start over.
    Rejected,
    /// The identity provider is unreachable or misbehaving: answer 502/503; retrying later
    /// may succeed.
    ProviderUnavailable,
    /// Cadenza's own configuration is wrong (client secret, issuer, session keys): an
    /// operator has to act; retrying will not help.
    Misconfigured,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Discovery { .. } | Error::TokenEndpoint { .. } | Error::MissingIdToken => {
                ErrorKind::ProviderUnavailable
            }
            Error::DiscoveryIssuerMismatch { .. }
            | Error::InvalidSessionKey { .. }
            | Error::InvalidConfig { .. } => ErrorKind::Misconfigured,
            // These two are about the client's own credentials, not the user's login.
            Error::TokenExchangeRejected { error, .. }
                if error == "invalid_client" || error == "unauthorized_client" =>
            {
                ErrorKind::Misconfigured
            }
            Error::TokenExchangeRejected { .. }
            | Error::BadSignature
            | Error::WrongIssuer { .. }
            | Error::WrongAudience { .. }
            | Error::Expired { .. }
            | Error::NotYetValid { .. }
            | Error::NonceMismatch
            | Error::UnknownKey { .. }
            | Error::UnsupportedAlgorithm { .. }
            | Error::MalformedToken { .. } => ErrorKind::Rejected,
        }
    }

    pub(crate) fn malformed(reason: impl Into<String>) -> Self {
        Error::MalformedToken {
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejected_client_secret_is_a_configuration_problem_not_a_failed_login() {
        let invalid_client = Error::TokenExchangeRejected {
            error: "invalid_client".into(),
            description: None,
        };
        let invalid_grant = Error::TokenExchangeRejected {
            error: "invalid_grant".into(),
            description: Some("code already used".into()),
        };
        assert_eq!(invalid_client.kind(), ErrorKind::Misconfigured);
        assert_eq!(invalid_grant.kind(), ErrorKind::Rejected);
        assert_eq!(
            invalid_grant.to_string(),
            "the token endpoint rejected the request: invalid_grant (code already used)"
        );
    }
}
