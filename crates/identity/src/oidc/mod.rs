//! Browser login against any OpenID Connect provider: authorization code flow with PKCE, the
//! ID token verified against the provider's published keys.
//!
//! The caller owns the browser round trip and the short-lived storage:
//!
//! 1. [`OidcProvider::begin_login`] gives the URL to redirect the browser to, plus `state`,
//!    `nonce` and the PKCE verifier. Store the last two under `state` (single use, a few minutes
//!    of TTL), then redirect.
//! 2. The provider redirects back with `code` and `state`. Take (and delete) the stored values
//!    for that `state`: an unknown `state` is a forged or replayed callback and must be refused
//!    before this crate is called.
//! 3. [`OidcProvider::complete_login`] exchanges the code and verifies the ID token.

mod id_token;
mod jwks;
mod transport;

use std::sync::Arc;

use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenType,
};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet,
    EndpointSet, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope,
    StandardRevocableToken, StandardTokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::error::{Error, Result};
use crate::jwt;

pub use self::id_token::CLOCK_LEEWAY_SECONDS;
use self::jwks::KeyCache;

/// How Cadenza is registered with one OpenID Connect provider.
#[derive(Debug, Clone, Deserialize)]
pub struct OidcConfig {
    /// The provider's issuer identifier, e.g. `https://accounts.google.com` or
    /// `https://sso.example.com/realms/acme`. Discovery is fetched from
    /// `{issuer}/.well-known/openid-configuration`.
    pub issuer: Url,
    pub client_id: String,
    pub client_secret: SecretString,
    /// Where the provider sends the browser back, e.g. `https://cadenza.example.com/api/v1/auth/callback`.
    /// Must be registered with the provider exactly as written here.
    pub redirect_url: Url,
    /// Requested scopes; must include `openid`.
    #[serde(default = "OidcConfig::default_scopes")]
    pub scopes: Vec<String>,
}

impl OidcConfig {
    pub fn new(
        issuer: Url,
        client_id: impl Into<String>,
        client_secret: SecretString,
        redirect_url: Url,
    ) -> Self {
        Self {
            issuer,
            client_id: client_id.into(),
            client_secret,
            redirect_url,
            scopes: Self::default_scopes(),
        }
    }

    /// `openid email profile`: the identity plus the claims needed to recognise and name a user.
    pub fn default_scopes() -> Vec<String> {
        ["openid", "email", "profile"].map(str::to_owned).into()
    }

    fn validate(&self) -> Result<()> {
        if self.client_id.is_empty() {
            return Err(Error::InvalidConfig {
                setting: "client_id",
                reason: "must not be empty".into(),
            });
        }
        if !self.scopes.iter().any(|scope| scope == "openid") {
            return Err(Error::InvalidConfig {
                setting: "scopes",
                reason: "must include openid, or the provider issues no ID token".into(),
            });
        }
        if let Some(scope) = self
            .scopes
            .iter()
            .find(|scope| scope.is_empty() || scope.contains(char::is_whitespace))
        {
            return Err(Error::InvalidConfig {
                setting: "scopes",
                reason: format!("{scope:?} is not a single scope"),
            });
        }
        for (setting, url) in [
            ("issuer", &self.issuer),
            ("redirect_url", &self.redirect_url),
        ] {
            if !matches!(url.scheme(), "https" | "http") {
                return Err(Error::InvalidConfig {
                    setting,
                    reason: format!("{url} is not an http(s) URL"),
                });
            }
        }
        if self.issuer.query().is_some() || self.issuer.fragment().is_some() {
            return Err(Error::InvalidConfig {
                setting: "issuer",
                reason: "an issuer has no query or fragment".into(),
            });
        }
        Ok(())
    }
}

/// What the browser needs now and what the callback will need later.
#[derive(Debug, Clone)]
pub struct LoginStart {
    /// Redirect the browser here.
    pub authorize_url: Url,
    /// Comes back in the callback's query; the key under which to store `nonce` and
    /// `pkce_verifier`.
    pub state: String,
    /// Pass to [`OidcProvider::complete_login`] as `expected_nonce`.
    pub nonce: String,
    /// Pass to [`OidcProvider::complete_login`]. Whoever holds it and the code can finish the
    /// login, so store it server-side only.
    pub pkce_verifier: SecretString,
}

/// A user the provider vouched for, taken from a verified ID token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifiedIdentity {
    /// The issuer exactly as the provider spells it; (`issuer`, `subject`) is the stable key
    /// of an external identity. Email addresses can change hands, subjects do not.
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
    /// Only trust `email` for account linking when this is true.
    pub email_verified: bool,
    pub name: Option<String>,
    /// Every claim of the ID token, for provider-specific mapping (groups, hosted domain, ...).
    pub claims: serde_json::Value,
}

/// The subset of the discovery document (OpenID Connect Discovery 1.0 §3) we rely on.
#[derive(Debug, Clone, Deserialize)]
struct ProviderMetadata {
    issuer: String,
    authorization_endpoint: Url,
    token_endpoint: Url,
    jwks_uri: Url,
    #[serde(default)]
    end_session_endpoint: Option<Url>,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    code_challenge_methods_supported: Option<Vec<String>>,
}

#[derive(Clone, Serialize, Deserialize)]
struct IdTokenFields {
    #[serde(default)]
    id_token: Option<String>,
}

impl oauth2::ExtraTokenFields for IdTokenFields {}

impl std::fmt::Debug for IdTokenFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdTokenFields")
            .field("id_token", &self.id_token.as_ref().map(|_| "[REDACTED]"))
            .finish()
    }
}

type OAuthClient = oauth2::Client<
    BasicErrorResponse,
    StandardTokenResponse<IdTokenFields, BasicTokenType>,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// A discovered provider, ready for logins. Cheap to clone; clones share the key cache.
#[derive(Clone)]
pub struct OidcProvider {
    inner: Arc<Inner>,
}

struct Inner {
    config: OidcConfig,
    metadata: ProviderMetadata,
    oauth: OAuthClient,
    keys: KeyCache,
    http: reqwest::Client,
}

impl std::fmt::Debug for OidcProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcProvider")
            .field("issuer", &self.inner.metadata.issuer)
            .field("client_id", &self.inner.config.client_id)
            .finish_non_exhaustive()
    }
}

impl OidcProvider {
    /// Fetches the provider's discovery document and signing keys.
    ///
    /// `http` should not follow redirects (`reqwest::redirect::Policy::none()`): nothing in
    /// this flow needs them, and following them lets a compromised endpoint point requests,
    /// including the client secret, elsewhere. Every request gets its own time limit here.
    pub async fn discover(config: OidcConfig, http: reqwest::Client) -> Result<Self> {
        config.validate()?;
        let discovery_url = discovery_url(&config.issuer)?;
        let metadata: ProviderMetadata = transport::get_json(&http, &discovery_url).await?;
        let discovery_error = |reason: String| Error::Discovery {
            url: discovery_url.to_string(),
            reason,
            source: None,
        };

        // Discovery §4.3: the document must name the issuer it was fetched for, or tokens
        // from one tenant of a multi-tenant host could be accepted for another. Comparing
        // parsed URLs forgives only the trailing slash `Url` adds to a bare host.
        if Url::parse(&metadata.issuer).ok().as_ref() != Some(&config.issuer) {
            return Err(Error::DiscoveryIssuerMismatch {
                configured: config.issuer.to_string(),
                advertised: metadata.issuer,
            });
        }
        if config.issuer.scheme() == "https" {
            for (name, endpoint) in [
                ("authorization_endpoint", &metadata.authorization_endpoint),
                ("token_endpoint", &metadata.token_endpoint),
                ("jwks_uri", &metadata.jwks_uri),
            ] {
                if endpoint.scheme() != "https" {
                    return Err(discovery_error(format!(
                        "{name} {endpoint} is not https although the issuer is"
                    )));
                }
            }
        }
        if let Some(methods) = &metadata.code_challenge_methods_supported
            && !methods.iter().any(|method| method == "S256")
        {
            return Err(discovery_error(
                "the provider does not support PKCE with S256".into(),
            ));
        }
        let auth_type = client_auth_type(metadata.token_endpoint_auth_methods_supported.as_deref())
            .map_err(discovery_error)?;

        let keys = KeyCache::fetch(&http, metadata.jwks_uri.clone()).await?;
        let oauth: OAuthClient = oauth2::Client::new(ClientId::new(config.client_id.clone()))
            .set_client_secret(ClientSecret::new(
                config.client_secret.expose_secret().to_owned(),
            ))
            .set_auth_uri(AuthUrl::from_url(metadata.authorization_endpoint.clone()))
            .set_token_uri(TokenUrl::from_url(metadata.token_endpoint.clone()))
            .set_redirect_uri(RedirectUrl::from_url(config.redirect_url.clone()))
            .set_auth_type(auth_type);
        tracing::info!(issuer = %metadata.issuer, client_id = %config.client_id, "OpenID Connect provider discovered");
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                metadata,
                oauth,
                keys,
                http,
            }),
        })
    }

    /// The issuer exactly as the provider spells it (and as `iss` must read).
    pub fn issuer(&self) -> &str {
        &self.inner.metadata.issuer
    }

    /// Where to send the browser for single logout (RP-initiated logout), if the provider
    /// offers it.
    pub fn end_session_endpoint(&self) -> Option<&Url> {
        self.inner.metadata.end_session_endpoint.as_ref()
    }

    /// Starts a login: fresh random `state`, `nonce` and PKCE (S256) verifier.
    pub fn begin_login(&self) -> LoginStart {
        let (pkce_challenge, pkce_verifier) = PkceCodeChallenge::new_random_sha256();
        let nonce = CsrfToken::new_random();
        let (authorize_url, state) = self
            .inner
            .oauth
            .authorize_url(CsrfToken::new_random)
            .add_scopes(self.inner.config.scopes.iter().cloned().map(Scope::new))
            .set_pkce_challenge(pkce_challenge)
            .add_extra_param("nonce", nonce.secret())
            .url();
        LoginStart {
            authorize_url,
            state: state.into_secret(),
            nonce: nonce.into_secret(),
            pkce_verifier: SecretString::from(pkce_verifier.into_secret()),
        }
    }

    /// Finishes a login: exchanges `code` at the token endpoint and verifies the ID token
    /// (signature, issuer, audience, expiry, nonce).
    pub async fn complete_login(
        &self,
        code: &str,
        pkce_verifier: SecretString,
        expected_nonce: &str,
    ) -> Result<VerifiedIdentity> {
        let response = self
            .inner
            .oauth
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .set_pkce_verifier(PkceCodeVerifier::new(
                pkce_verifier.expose_secret().to_owned(),
            ))
            .request_async(&transport::OAuthHttpClient(&self.inner.http))
            .await
            .map_err(token_error)?;
        let id_token = response
            .extra_fields()
            .id_token
            .as_deref()
            .ok_or(Error::MissingIdToken)?;
        self.verify_id_token(id_token, expected_nonce).await
    }

    /// Verifies an ID token issued to this client for the login that sent `expected_nonce`.
    pub async fn verify_id_token(
        &self,
        id_token: &str,
        expected_nonce: &str,
    ) -> Result<VerifiedIdentity> {
        // An empty expectation would accept a token carrying an empty nonce.
        if expected_nonce.is_empty() {
            return Err(Error::NonceMismatch);
        }
        let header = jwt::read_header(id_token)?;
        let key = self.inner.keys.key_for(&self.inner.http, &header).await?;
        let claims = jwt::verify_signature(id_token, &key, header.algorithm)?;
        id_token::check_claims(
            claims,
            &id_token::Expectations {
                issuer: &self.inner.metadata.issuer,
                client_id: &self.inner.config.client_id,
                nonce: expected_nonce,
                now: time::OffsetDateTime::now_utc().unix_timestamp(),
            },
        )
    }
}

fn discovery_url(issuer: &Url) -> Result<Url> {
    // Not `Url::join`: that would replace the last path segment of `.../realms/acme`.
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.as_str().trim_end_matches('/')
    );
    Url::parse(&url).map_err(|error| Error::InvalidConfig {
        setting: "issuer",
        reason: format!("cannot derive the discovery URL: {error}"),
    })
}

/// Basic unless the provider says it only takes the secret in the body; RFC 8414 makes basic
/// the default when the provider says nothing.
fn client_auth_type(methods: Option<&[String]>) -> std::result::Result<AuthType, String> {
    let Some(methods) = methods else {
        return Ok(AuthType::BasicAuth);
    };
    if methods.iter().any(|method| method == "client_secret_basic") {
        Ok(AuthType::BasicAuth)
    } else if methods.iter().any(|method| method == "client_secret_post") {
        Ok(AuthType::RequestBody)
    } else {
        Err(format!(
            "the token endpoint accepts neither client_secret_basic nor client_secret_post (only {methods:?})"
        ))
    }
}

/// Provider-chosen text ends up in logs; keep it to a sane size.
const MAX_ERROR_DESCRIPTION_CHARS: usize = 200;

fn token_error(error: RequestTokenError<transport::FetchError, BasicErrorResponse>) -> Error {
    match error {
        RequestTokenError::ServerResponse(response) => Error::TokenExchangeRejected {
            error: response.error().as_ref().to_owned(),
            description: response.error_description().map(|description| {
                description
                    .chars()
                    .take(MAX_ERROR_DESCRIPTION_CHARS)
                    .collect()
            }),
        },
        RequestTokenError::Request(error) => Error::TokenEndpoint {
            reason: error.to_string(),
            source: Some(Box::new(error)),
        },
        // The body is dropped on purpose: a half-valid token response may contain tokens.
        RequestTokenError::Parse(error, _body) => Error::TokenEndpoint {
            reason: "the response is neither a token nor an OAuth error".into(),
            source: Some(Box::new(error)),
        },
        RequestTokenError::Other(reason) => Error::TokenEndpoint {
            reason,
            source: None,
        },
    }
}

#[cfg(test)]
mod tests;
