//! Browser login: the OpenID Connect code flow with PKCE, bound to the browser that started it,
//! ending in a session cookie; logout; the session keys' JWKS.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::header::{LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use cadenza_identity::SessionClaims;
use cadenza_storage::users::{LoginIdentity, LoginOutcome, LoginRefusal};
use cadenza_storage::{domain_rules, memberships, users};
use redis::AsyncCommands;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::audit::{self, Change, RequestMeta};
use crate::auth::Authenticated;
use crate::error::{ApiError, ApiResult};
use crate::principal::Principal;
use crate::sessions::LOGIN_TTL_SECONDS;
use crate::state::AppState;

/// The most of a provider's error text kept in the audit log and shown back.
const PROVIDER_TEXT_MAX: usize = 200;

#[derive(Serialize, Deserialize)]
struct PendingLogin {
    nonce: String,
    pkce_verifier: String,
    redirect: String,
}

fn pending_key(state: &AppState, login_state: &str) -> String {
    state
        .sessions
        .redis_key(&format!("oidc:pending:{login_state}"))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LoginQuery {
    /// Where to go after login: a path on this site (anything else is ignored).
    redirect: Option<String>,
}

/// Where to send the browser after login: `raw` when it is a path on this site, else `/`.
///
/// Browsers drop tabs and newlines from URLs and read `\` as `/`, so `/\t/evil` and `/\evil`
/// would leave the site as `//evil`; anything with a control character or a backslash is
/// refused outright, and what is left must resolve, by full URL parsing, to this site's origin.
pub fn safe_redirect(raw: Option<&str>) -> String {
    const HOME: &str = "/";
    let Some(raw) = raw else {
        return HOME.to_owned();
    };
    if !raw.starts_with('/')
        || raw.starts_with("//")
        || raw.len() > 2048
        || raw.chars().any(|c| c.is_control() || c == '\\')
    {
        return HOME.to_owned();
    }
    let Ok(base) = url::Url::parse("https://cadenza.invalid/") else {
        return HOME.to_owned();
    };
    match base.join(raw) {
        Ok(target) if target.origin() == base.origin() => {
            let mut path = target.path().to_owned();
            if let Some(query) = target.query() {
                path.push('?');
                path.push_str(query);
            }
            if let Some(fragment) = target.fragment() {
                path.push('#');
                path.push_str(fragment);
            }
            path
        }
        _ => HOME.to_owned(),
    }
}

/// `GET /auth/login`: starts the code flow, binds it to this browser with a short-lived cookie,
/// and redirects the browser to the provider.
pub async fn login(
    State(state): State<AppState>,
    meta: RequestMeta,
    Query(query): Query<LoginQuery>,
) -> ApiResult<Response> {
    state.rate_limiter.login(meta.client_ip).await?;
    let provider = state.sessions.provider().await?;
    let start = provider.begin_login();
    let pending = PendingLogin {
        nonce: start.nonce,
        pkce_verifier: start.pkce_verifier.expose_secret().to_owned(),
        redirect: safe_redirect(query.redirect.as_deref()),
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
    let headers = response.headers_mut();
    headers.insert(LOCATION, location);
    headers.append(SET_COOKIE, state.sessions.login_cookie(&start.state)?);
    Ok(response)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// Provider text as it may be stored and shown: printable, and at most `PROVIDER_TEXT_MAX`
/// characters.
fn bounded(text: &str) -> String {
    let mut clean: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(PROVIDER_TEXT_MAX)
        .collect();
    if text.chars().filter(|c| !c.is_control()).count() > PROVIDER_TEXT_MAX {
        clean.push('…');
    }
    clean
}

async fn audit_login_problem(
    state: &AppState,
    meta: &RequestMeta,
    action: &'static str,
    reason: &str,
    email: Option<&str>,
) {
    let mut diff = json!({"reason": reason});
    if let Some(email) = email {
        diff["email"] = json!(email);
    }
    if let Ok(mut conn) = state.pool.acquire().await {
        let _ = audit::record(
            &mut conn,
            None,
            meta,
            Change {
                org: None,
                action,
                resource_type: "session",
                resource_id: None,
                diff,
            },
        )
        .await;
    }
    tracing::info!(action, reason, "login did not complete");
}

async fn login_failed(state: &AppState, meta: &RequestMeta, reason: String) -> ApiError {
    audit_login_problem(state, meta, "login.failed", &reason, None).await;
    ApiError::LoginFailed(reason)
}

async fn login_refused(
    state: &AppState,
    meta: &RequestMeta,
    refusal: LoginRefusal,
    email: &str,
) -> ApiError {
    let (reason, detail) = match refusal {
        LoginRefusal::UnverifiedEmailInUse => (
            "unverified email in use",
            format!(
                "an account for {email} already exists, and your identity provider has not verified that this address is yours; verify it with your provider and sign in again"
            ),
        ),
        LoginRefusal::EmailLinkedToAnotherIdentity => (
            "email linked to another identity",
            format!(
                "{email} belongs to an account that signs in with another identity; sign in with that one, or ask an instance administrator"
            ),
        ),
    };
    audit_login_problem(state, meta, "login.refused", reason, Some(email)).await;
    ApiError::LoginRefused(detail)
}

/// `GET /auth/callback`: checks that this browser started the login and that `state` is known
/// (single use), exchanges the code, validates the ID token, maps the identity to an account
/// (linking by verified email only), joins orgs by verified email domain, sets the session
/// cookie and redirects.
pub async fn callback(
    State(state): State<AppState>,
    meta: RequestMeta,
    headers: HeaderMap,
    Query(query): Query<CallbackQuery>,
) -> ApiResult<Response> {
    state.rate_limiter.login(meta.client_ip).await?;
    if let Some(error) = query.error {
        let detail = query.error_description.unwrap_or_default();
        return Err(login_failed(
            &state,
            &meta,
            format!(
                "the provider refused the login: {} {}",
                bounded(&error),
                bounded(&detail)
            ),
        )
        .await);
    }
    let (Some(code), Some(login_state)) = (query.code, query.state) else {
        return Err(
            login_failed(&state, &meta, "the callback lacks `code` or `state`".into()).await,
        );
    };
    // Login CSRF: a callback only completes in the browser that started the login. Checked
    // before the state is consumed, so a forged callback cannot burn someone's pending login.
    if !state.sessions.login_started_here(&headers, &login_state) {
        return Err(login_failed(
            &state,
            &meta,
            "this browser did not start this login; start again from the sign-in page".into(),
        )
        .await);
    }
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
        Err(err) => return Err(login_failed(&state, &meta, bounded(&err.to_string())).await),
    };
    let Some(email) = identity.email.clone().filter(|email| email.contains('@')) else {
        return Err(login_failed(
            &state,
            &meta,
            "the identity provider returned no email".into(),
        )
        .await);
    };

    let mut tx = state.pool.begin().await?;
    let outcome = users::login(
        &mut tx,
        &LoginIdentity {
            issuer: &identity.issuer,
            subject: &identity.subject,
            email: &email,
            email_verified: identity.email_verified,
            name: identity.name.as_deref(),
        },
    )
    .await?;
    let (user, how, token_email) = match outcome {
        LoginOutcome::Refused(refusal) => {
            drop(tx);
            return Err(login_refused(&state, &meta, refusal, &email).await);
        }
        LoginOutcome::Returning { user, token_email } => (user, "returning", token_email),
        LoginOutcome::Claimed(user) => (user, "claimed", None),
        LoginOutcome::Created(user) => (user, "created", None),
    };
    // Domain rules admit a verified address only, and only the account's own address.
    let mut joined = Vec::new();
    if identity.email_verified
        && user.email_verified
        && token_email.is_none()
        && let Some((_, domain)) = user.email.rsplit_once('@')
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
    let principal = Principal::for_user(&user, [], None, None);
    let mut diff = json!({"account": how, "joined_by_domain": joined});
    if let Some(token_email) = &token_email {
        // The stored address is kept; the difference is on record for an administrator.
        diff["provider_email"] = json!(token_email);
    }
    audit::record(
        &mut tx,
        Some(&principal),
        &meta,
        Change {
            org: None,
            action: "login",
            resource_type: "session",
            resource_id: Some(claims.sid.to_string()),
            diff,
        },
    )
    .await?;
    tx.commit().await?;

    let mut response = StatusCode::FOUND.into_response();
    let headers = response.headers_mut();
    headers.append(SET_COOKIE, state.sessions.session_cookie(&claims)?);
    headers.append(SET_COOKIE, state.sessions.clear_login_cookie()?);
    let location =
        HeaderValue::from_str(&pending.redirect).unwrap_or(HeaderValue::from_static("/"));
    headers.insert(LOCATION, location);
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
    principal.require_account()?;
    let mut sid = None;
    if let Some(token) = state.sessions.session_token(&headers)
        && let Ok(claims) = state.sessions.keys.verify(token)
    {
        state.sessions.revoke(&claims).await?;
        sid = Some(claims.sid.to_string());
    }
    let mut conn = state.pool.acquire().await?;
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
        .insert(SET_COOKIE, state.sessions.clear_session_cookie()?);
    Ok(response)
}

/// `GET /.well-known/jwks.json`: the public keys that verify Cadenza's session tokens.
pub async fn jwks(State(state): State<AppState>) -> Json<Value> {
    Json(state.sessions.keys.jwks())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_text_is_printable_and_bounded() {
        assert_eq!(bounded("access_denied\r\n\tX"), "access_deniedX");
        let long = bounded(&"a".repeat(5000));
        assert_eq!(long.chars().count(), PROVIDER_TEXT_MAX + 1);
    }

    #[test]
    fn paths_on_this_site_survive_normalised() {
        assert_eq!(safe_redirect(Some("/runs?x=1#top")), "/runs?x=1#top");
        assert_eq!(safe_redirect(Some("/a/../b")), "/b");
        assert_eq!(safe_redirect(Some("/%2F%2Fevil")), "/%2F%2Fevil");
        assert_eq!(safe_redirect(None), "/");
    }
}
