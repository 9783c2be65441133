//! Browser sessions: a cookie carrying a short-lived JWT signed with Cadenza's rotating keys, a
//! sliding refresh, logout through a Redis deny-list that lasts as long as the session could, and
//! the login-state cookie that binds an OpenID Connect login to the browser that started it.
//!
//! Cookies are `__Host-` prefixed (`Secure`, `Path=/`, no `Domain`), so a sibling subdomain can
//! neither set nor shadow them. Dev mode over plain HTTP drops `Secure` and therefore the prefix,
//! which browsers only accept with `Secure`.

use std::time::Duration;

use axum::http::header::COOKIE;
use axum::http::{HeaderMap, HeaderValue};
use cadenza_domain::UserId;
use cadenza_identity::{
    OidcConfig, OidcProvider, SessionClaims, SessionKeyConfig, SessionKeys, SessionLifetime,
};
use redis::AsyncCommands;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::sync::OnceCell;

use crate::error::{ApiError, ApiResult};

/// How long a login may take between `/auth/login` and `/auth/callback`.
pub const LOGIN_TTL_SECONDS: u64 = 600;

/// Login and session settings and state, shared by every request.
pub struct Sessions {
    pub keys: SessionKeys,
    pub lifetime: SessionLifetime,
    /// Cookies without `Secure` (and so without the `__Host-` prefix), for plain-HTTP local
    /// development only.
    pub insecure_cookies: bool,
    oidc_config: Option<OidcConfig>,
    oidc: OnceCell<OidcProvider>,
    http: reqwest::Client,
    redis: redis::aio::ConnectionManager,
    redis_prefix: String,
}

impl Sessions {
    pub fn new(
        keys: SessionKeys,
        lifetime: SessionLifetime,
        insecure_cookies: bool,
        oidc_config: Option<OidcConfig>,
        redis: redis::aio::ConnectionManager,
        redis_prefix: String,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|err| anyhow::anyhow!("building the OpenID Connect HTTP client: {err}"))?;
        Ok(Self {
            keys,
            lifetime,
            insecure_cookies,
            oidc_config,
            oidc: OnceCell::new(),
            http,
            redis,
            redis_prefix,
        })
    }

    /// The provider, discovered on first use (and again after a failed discovery), so an
    /// identity provider that is down does not keep the API from starting.
    pub async fn provider(&self) -> ApiResult<&OidcProvider> {
        let Some(config) = &self.oidc_config else {
            return Err(ApiError::NotFound(
                "browser login is not configured on this instance (CADENZA_OIDC_ISSUER)".into(),
            ));
        };
        self.oidc
            .get_or_try_init(|| OidcProvider::discover(config.clone(), self.http.clone()))
            .await
            .map_err(|err| ApiError::Unavailable(Box::new(err)))
    }

    /// Whether browser login through an OIDC provider is configured.
    pub fn login_available(&self) -> bool {
        self.oidc_config.is_some()
    }

    /// The session cookie's name.
    pub fn session_cookie_name(&self) -> &'static str {
        if self.insecure_cookies {
            "cadenza_session"
        } else {
            "__Host-cadenza_session"
        }
    }

    /// The login-state cookie's name.
    pub fn login_cookie_name(&self) -> &'static str {
        if self.insecure_cookies {
            "cadenza_login"
        } else {
            "__Host-cadenza_login"
        }
    }

    fn cookie(&self, name: &str, value: &str, max_age: i64) -> ApiResult<HeaderValue> {
        let secure = if self.insecure_cookies {
            ""
        } else {
            "; Secure"
        };
        HeaderValue::from_str(&format!(
            "{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
        ))
        .map_err(|err| ApiError::Internal(Box::new(err)))
    }

    /// `Set-Cookie` for a session token of `claims`.
    pub fn session_cookie(&self, claims: &SessionClaims) -> ApiResult<HeaderValue> {
        let max_age =
            (claims.max_expiry(&self.lifetime) - OffsetDateTime::now_utc()).whole_seconds();
        self.cookie(
            self.session_cookie_name(),
            &self.keys.issue(claims.clone()),
            max_age.max(0),
        )
    }

    /// `Set-Cookie` that removes the session cookie.
    pub fn clear_session_cookie(&self) -> ApiResult<HeaderValue> {
        self.cookie(self.session_cookie_name(), "", 0)
    }

    /// `Set-Cookie` binding the login with `state` to this browser: it holds a hash of the state,
    /// so the cookie alone cannot finish anyone's login.
    pub fn login_cookie(&self, state: &str) -> ApiResult<HeaderValue> {
        self.cookie(
            self.login_cookie_name(),
            &login_binding(state),
            LOGIN_TTL_SECONDS as i64,
        )
    }

    pub fn clear_login_cookie(&self) -> ApiResult<HeaderValue> {
        self.cookie(self.login_cookie_name(), "", 0)
    }

    /// Whether this browser started the login whose callback carries `state`.
    pub fn login_started_here(&self, headers: &HeaderMap, state: &str) -> bool {
        cookie_value(headers, self.login_cookie_name())
            .is_some_and(|binding| binding == login_binding(state))
    }

    /// The session token in the request's cookies, if any.
    pub fn session_token<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        cookie_value(headers, self.session_cookie_name())
    }

    fn revoked_key(&self, claims: &SessionClaims) -> String {
        format!("{}:session:revoked:{}", self.redis_prefix, claims.sid)
    }

    /// The user of a valid, unrevoked session cookie (`None` without one). Logout must hold, so
    /// an unreachable Redis rejects the session rather than skipping the deny-list.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<(UserId, SessionClaims)>, ApiError> {
        let Some(token) = self.session_token(headers) else {
            return Ok(None);
        };
        let claims = self
            .keys
            .verify(token)
            .map_err(|_| ApiError::Unauthenticated)?;
        let mut redis = self.redis.clone();
        let revoked: bool = redis
            .exists(self.revoked_key(&claims))
            .await
            .map_err(|err| ApiError::Unavailable(Box::new(err)))?;
        if revoked {
            return Err(ApiError::Unauthenticated);
        }
        let user: UserId = claims.sub.parse().map_err(|_| ApiError::Unauthenticated)?;
        Ok(Some((user, claims)))
    }

    /// Ends the session: its id stays on the deny-list until no token of it could be valid.
    pub async fn revoke(&self, claims: &SessionClaims) -> ApiResult<()> {
        let ttl = (claims.max_expiry(&self.lifetime) - OffsetDateTime::now_utc())
            .whole_seconds()
            .max(1) as u64;
        let mut redis = self.redis.clone();
        let _: () = redis
            .set_ex(self.revoked_key(claims), 1, ttl)
            .await
            .map_err(|err| ApiError::Unavailable(Box::new(err)))?;
        Ok(())
    }

    /// The refreshed claims when the request's session token is past half its lifetime.
    pub fn due_refresh(&self, headers: &HeaderMap) -> Option<SessionClaims> {
        let now = OffsetDateTime::now_utc();
        self.session_token(headers)
            .and_then(|token| self.keys.verify(token).ok())
            .filter(|claims| claims.is_due_for_refresh(now))
            .and_then(|claims| claims.refreshed(now, &self.lifetime))
    }

    pub fn redis(&self) -> redis::aio::ConnectionManager {
        self.redis.clone()
    }

    pub fn redis_key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.redis_prefix)
    }
}

fn login_binding(state: &str) -> String {
    hex::encode(Sha256::digest(state.as_bytes()))
}

/// The value of the first cookie called `name`. With `__Host-` names only this host can have set
/// it, so there is no other cookie of that name to prefer.
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(cookie, _)| *cookie == name)
        .map(|(_, value)| value)
}

/// Loads session keys from `path` (a JSON array of `{kid, private_key_pem}`), or makes an
/// ephemeral key when no path is configured.
pub fn load_keys(path: Option<&str>) -> anyhow::Result<SessionKeys> {
    match path {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|err| {
                anyhow::anyhow!("reading CADENZA_SESSION_KEYS_FILE {path}: {err}")
            })?;
            let keys: Vec<SessionKeyConfig> = serde_json::from_str(&text)
                .map_err(|err| anyhow::anyhow!("CADENZA_SESSION_KEYS_FILE {path} is not a JSON list of {{kid, private_key_pem}}: {err}"))?;
            Ok(SessionKeys::from_config(keys)?)
        }
        None => {
            tracing::warn!(
                "no CADENZA_SESSION_KEYS_FILE: sessions are signed with an ephemeral key and end when the API restarts"
            );
            Ok(SessionKeys::generate_ephemeral())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_binding_is_a_hash_of_the_state_not_the_state() {
        let binding = login_binding("abc");
        assert_eq!(
            binding,
            // `printf %s abc | sha256sum`
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn only_the_named_cookie_is_read() {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_static("cadenza_session=plain; __Host-cadenza_session=hosted"),
        );
        assert_eq!(
            cookie_value(&headers, "__Host-cadenza_session"),
            Some("hosted")
        );
        assert_eq!(cookie_value(&headers, "cadenza_session"), Some("plain"));
        assert_eq!(cookie_value(&headers, "other"), None);
    }
}
