//! Browser login and sessions: the OpenID Connect code flow with PKCE, a session cookie carrying
//! a short-lived JWT signed with Cadenza's rotating keys, a sliding refresh, and logout through a
//! Redis deny-list that lasts as long as the session could.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, Request, State};
use axum::http::header::{COOKIE, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cadenza_domain::UserId;
use cadenza_identity::{
    OidcConfig, OidcProvider, SessionClaims, SessionKeyConfig, SessionKeys, SessionLifetime,
};
use cadenza_storage::{StorageError, domain_rules, memberships, users};
use redis::AsyncCommands;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::sync::OnceCell;

use crate::audit::{self, Change, RequestMeta};
use crate::auth::Authenticated;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

pub const COOKIE_NAME: &str = "cadenza_session";
/// How long a login may take between `/auth/login` and `/auth/callback`.
const LOGIN_TTL_SECONDS: u64 = 600;

/// Login and session settings, shared by every request.
pub struct Sessions {
    pub keys: SessionKeys,
    pub lifetime: SessionLifetime,
    /// Cookies without `Secure`, for plain-HTTP local development only.
    pub insecure_cookies: bool,
    oidc_config: Option<OidcConfig>,
    oidc: OnceCell<OidcProvider>,
    http: reqwest::Client,
}

impl Sessions {
    pub fn new(
        keys: SessionKeys,
        lifetime: SessionLifetime,
        insecure_cookies: bool,
        oidc_config: Option<OidcConfig>,
    ) -> Arc<Self> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Arc::new(Self {
            keys,
            lifetime,
            insecure_cookies,
            oidc_config,
            oidc: OnceCell::new(),
            http,
        })
    }

    /// The provider, discovered on first use (and again after a failed discovery), so an
    /// identity provider that is down does not keep the API from starting.
    async fn provider(&self) -> ApiResult<&OidcProvider> {
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

    fn cookie(&self, token: &str, max_age: i64) -> HeaderValue {
        let secure = if self.insecure_cookies {
            ""
        } else {
            "; Secure"
        };
        HeaderValue::from_str(&format!(
            "{COOKIE_NAME}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
        ))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    fn cookie_for(&self, claims: &SessionClaims) -> HeaderValue {
        let max_age =
            (claims.max_expiry(&self.lifetime) - OffsetDateTime::now_utc()).whole_seconds();
        self.cookie(&self.keys.issue(claims.clone()), max_age.max(0))
    }
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

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value)
}

fn revoked_key(state: &AppState, claims: &SessionClaims) -> String {
    format!(
        "{}:session:revoked:{}",
        state.limits.redis_prefix, claims.sid
    )
}

/// The user of a valid, unrevoked session cookie. A Redis failure counts as "not revoked"
/// only for sessions younger than the token lifetime is not acceptable here: logout must hold,
/// so an unreachable Redis rejects the session.
pub async fn authenticate_cookie(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<(UserId, SessionClaims)>, ApiError> {
    let Some(token) = session_cookie(headers) else {
        return Ok(None);
    };
    let claims = state
        .sessions
        .keys
        .verify(token)
        .map_err(|_| ApiError::Unauthenticated)?;
    let mut redis = state.redis.clone();
    let revoked: bool = redis
        .exists(revoked_key(state, &claims))
        .await
        .map_err(|err| ApiError::Unavailable(Box::new(err)))?;
    if revoked {
        return Err(ApiError::Unauthenticated);
    }
    let user: UserId = claims.sub.parse().map_err(|_| ApiError::Unauthenticated)?;
    Ok(Some((user, claims)))
}

/// Sliding refresh: a session cookie past half its lifetime gets a fresh one on the response,
/// up to the session's absolute maximum.
pub async fn refresh_sessions(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let refreshed = session_cookie(request.headers())
        .and_then(|token| state.sessions.keys.verify(token).ok())
        .filter(|claims| claims.is_due_for_refresh(OffsetDateTime::now_utc()))
        .and_then(|claims| claims.refreshed(OffsetDateTime::now_utc(), &state.sessions.lifetime));
    let mut response = next.run(request).await;
    if let Some(claims) = refreshed
        && response.status().is_success()
        && !response.headers().contains_key(SET_COOKIE)
    {
        response
            .headers_mut()
            .insert(SET_COOKIE, state.sessions.cookie_for(&claims));
    }
    response
}

#[derive(Serialize, Deserialize)]
struct PendingLogin {
    nonce: String,
    pkce_verifier: String,
    redirect: String,
}

fn pending_key(state: &AppState, login_state: &str) -> String {
    format!("{}:oidc:pending:{login_state}", state.limits.redis_prefix)
}

#[derive(Deserialize)]
pub struct LoginQuery {
    /// Where to go after login: a path on this site (anything else is ignored).
    redirect: Option<String>,
}

fn safe_redirect(raw: Option<String>) -> String {
    match raw {
        // A path on this site only: `//host` and `/\host` would leave it.
        Some(path)
            if path.starts_with('/') && !path.starts_with("//") && !path.starts_with("/\\") =>
        {
            path
        }
        _ => "/".to_owned(),
    }
}

/// `GET /auth/login`: starts the code flow and redirects the browser to the provider.
pub async fn login(
    State(state): State<AppState>,
    meta: RequestMeta,
    Query(query): Query<LoginQuery>,
) -> ApiResult<Response> {
    crate::ratelimit::check_login(&state, meta.ip.as_deref().unwrap_or("unknown")).await?;
    let provider = state.sessions.provider().await?;
    let start = provider.begin_login();
    let pending = PendingLogin {
        nonce: start.nonce,
        pkce_verifier: start.pkce_verifier.expose_secret().to_owned(),
        redirect: safe_redirect(query.redirect),
    };
    let mut redis = state.redis.clone();
    let value = serde_json::to_string(&pending).map_err(|err| ApiError::Internal(Box::new(err)))?;
    let _: () = redis
        .set_ex(pending_key(&state, &start.state), value, LOGIN_TTL_SECONDS)
        .await
        .map_err(|err| ApiError::Unavailable(Box::new(err)))?;
    let mut response = StatusCode::FOUND.into_response();
    let location = HeaderValue::from_str(start.authorize_url.as_str())
        .map_err(|err| ApiError::Internal(Box::new(err)))?;
    response.headers_mut().insert(LOCATION, location);
    Ok(response)
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

async fn login_failed(state: &AppState, meta: &RequestMeta, reason: String) -> ApiError {
    if let Ok(mut conn) = state.pool.acquire().await {
        let _ = audit::record(
            &mut conn,
            None,
            meta,
            Change {
                org: None,
                action: "login.failed",
                resource_type: "session",
                resource_id: None,
                diff: json!({"reason": reason}),
            },
        )
        .await;
    }
    tracing::info!(reason, "login failed");
    ApiError::LoginFailed(reason)
}

/// `GET /auth/callback`: checks `state` (single use), exchanges the code, validates the ID token,
/// creates the user at first login (joining orgs by verified email domain), sets the session
/// cookie and redirects.
pub async fn callback(
    State(state): State<AppState>,
    meta: RequestMeta,
    Query(query): Query<CallbackQuery>,
) -> ApiResult<Response> {
    crate::ratelimit::check_login(&state, meta.ip.as_deref().unwrap_or("unknown")).await?;
    if let Some(error) = query.error {
        let detail = query.error_description.unwrap_or_default();
        return Err(login_failed(
            &state,
            &meta,
            format!("the provider refused the login: {error} {detail}"),
        )
        .await);
    }
    let (Some(code), Some(login_state)) = (query.code, query.state) else {
        return Err(
            login_failed(&state, &meta, "the callback lacks `code` or `state`".into()).await,
        );
    };
    // GETDEL makes the state single use: a replayed callback finds nothing.
    let mut redis = state.redis.clone();
    let pending: Option<String> = redis::cmd("GETDEL")
        .arg(pending_key(&state, &login_state))
        .query_async(&mut redis)
        .await
        .map_err(|err| ApiError::Unavailable(Box::new(err)))?;
    let Some(pending) = pending.and_then(|raw| serde_json::from_str::<PendingLogin>(&raw).ok())
    else {
        return Err(login_failed(
            &state,
            &meta,
            "unknown, expired or already used login state".into(),
        )
        .await);
    };
    let provider = state.sessions.provider().await?;
    let identity = match provider
        .complete_login(
            &code,
            SecretString::from(pending.pkce_verifier),
            &pending.nonce,
        )
        .await
    {
        Ok(identity) => identity,
        Err(err) => return Err(login_failed(&state, &meta, err.to_string()).await),
    };
    let Some(email) = identity.email.clone().filter(|email| email.contains('@')) else {
        return Err(login_failed(
            &state,
            &meta,
            "the identity provider returned no email".into(),
        )
        .await);
    };

    let mut tx = state.pool.begin().await.map_err(StorageError::from)?;
    let (user, created) = users::upsert_from_login(
        &mut tx,
        &identity.issuer,
        &identity.subject,
        &email,
        identity.name.as_deref(),
    )
    .await?;
    let mut joined = Vec::new();
    if identity.email_verified
        && let Some((_, domain)) = email.rsplit_once('@')
    {
        for (org, role) in domain_rules::matching(&mut tx, domain).await? {
            if memberships::add(&mut tx, org, user.id, role).await? {
                joined.push(json!({"org_id": org.to_string(), "role": role}));
            }
        }
    }
    let claims = SessionClaims::start(
        user.id.to_string(),
        OffsetDateTime::now_utc(),
        &state.sessions.lifetime,
    );
    let principal = crate::auth::Principal {
        actor: crate::auth::Actor::User {
            id: user.id,
            email: user.email.clone(),
        },
        token_id: None,
        instance_admin: user.is_instance_admin,
        roles: Default::default(),
        scopes: None,
    };
    audit::record(
        &mut tx,
        Some(&principal),
        &meta,
        Change {
            org: None,
            action: "login",
            resource_type: "session",
            resource_id: Some(claims.sid.to_string()),
            diff: json!({"user_created": created, "joined_by_domain": joined}),
        },
    )
    .await?;
    tx.commit().await.map_err(StorageError::from)?;

    let mut response = StatusCode::FOUND.into_response();
    let headers = response.headers_mut();
    headers.insert(SET_COOKIE, state.sessions.cookie_for(&claims));
    if let Ok(location) = HeaderValue::from_str(&pending.redirect) {
        headers.insert(LOCATION, location);
    }
    Ok(response)
}

/// `POST /auth/logout`: ends the session of the cookie (deny-listed until it could have expired)
/// and clears the cookie.
pub async fn logout(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    meta: RequestMeta,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let mut sid = None;
    if let Some(token) = session_cookie(&headers)
        && let Ok(claims) = state.sessions.keys.verify(token)
    {
        let ttl = (claims.max_expiry(&state.sessions.lifetime) - OffsetDateTime::now_utc())
            .whole_seconds()
            .max(1) as u64;
        let mut redis = state.redis.clone();
        let _: () = redis
            .set_ex(revoked_key(&state, &claims), 1, ttl)
            .await
            .map_err(|err| ApiError::Unavailable(Box::new(err)))?;
        sid = Some(claims.sid.to_string());
    }
    let mut conn = state.pool.acquire().await.map_err(StorageError::from)?;
    audit::record(
        &mut conn,
        Some(&principal),
        &meta,
        Change {
            org: None,
            action: "logout",
            resource_type: "session",
            resource_id: sid,
            diff: json!({}),
        },
    )
    .await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(SET_COOKIE, state.sessions.cookie("", 0));
    Ok(response)
}

/// `GET /.well-known/jwks.json`: the public keys that verify Cadenza's session tokens.
pub async fn jwks(State(state): State<AppState>) -> Json<Value> {
    Json(state.sessions.keys.jwks())
}
