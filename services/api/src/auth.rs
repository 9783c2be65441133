//! Authentication and the authorization the router enforces for every route.
//!
//! Each route of the table in `routes/mod.rs` is wrapped in [`enforce_access`] with the
//! [`Access`] it declares. The layer authenticates the caller, counts the request against the
//! caller's (and the org's) rate limit, and for an org route resolves the org the path points at
//! (`{org_id}`, or the org of `{project_id}` / `{run_id}`) and checks the permission there: 404
//! when the caller cannot see that org, 403 when it lacks the permission. A handler that forgets
//! its own check is still denied. Handlers then take [`Authenticated`] or [`Authorized<P>`], which
//! hand over the principal the layer found; `Authorized<P>` also refuses (as an internal error) a
//! `P` that differs from what the route declares, so the two cannot drift apart.

use std::marker::PhantomData;

use axum::extract::{FromRequestParts, RawPathParams, Request, State};
use axum::http::header::{AUTHORIZATION, ORIGIN, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cadenza_domain::{OrgId, Permission, ProjectId, RunId, Scope};
use cadenza_storage::tokens::{self, TokenOwner};
use cadenza_storage::{StorageError, memberships, projects, runs, users};

use crate::error::ApiError;
use crate::principal::Principal;
use crate::state::AppState;

const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// What a route requires of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone, signed in or not.
    Public,
    /// Any signed-in caller; the handler decides what it shows.
    Authenticated,
    /// A permission in the org the route's path points at (`{org_id}`, `{project_id}` or
    /// `{run_id}`); a route without such a segment lists only what the caller may see.
    Org(Permission),
    /// Instance administration.
    Instance,
}

fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(header) = headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let header = header.to_str().map_err(|_| ApiError::Unauthenticated)?;
    let secret = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or(ApiError::Unauthenticated)?
        .trim();
    Ok(Some(secret))
}

/// Cookies ride along on cross-site requests, so a cookie-authenticated request that changes
/// something must come from a page of this site: its `Origin` (or, without one, its
/// `Sec-Fetch-Site`) says so. Bearer tokens are never sent by a browser on its own, so they need
/// no such check.
fn require_same_origin(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let refused = |why: &str| {
        ApiError::Forbidden(format!(
            "cross-site request refused: {why}; a browser session may only change things from a page of this site"
        ))
    };
    if let Some(origin) = headers.get(ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        return if state.origins.allows(origin, headers) {
            Ok(())
        } else {
            Err(refused(&format!("`Origin: {origin}` is not this site")))
        };
    }
    match headers
        .get(SEC_FETCH_SITE)
        .and_then(|value| value.to_str().ok())
    {
        Some("same-origin") => Ok(()),
        Some(site) => Err(refused(&format!("`Sec-Fetch-Site: {site}`"))),
        None => Err(refused(
            "the request has neither `Origin` nor `Sec-Fetch-Site`",
        )),
    }
}

fn unauthenticated_if_gone(err: StorageError) -> ApiError {
    match err {
        StorageError::NotFound(_) => ApiError::Unauthenticated,
        other => other.into(),
    }
}

/// Resolves the caller from a bearer token or, without one, from the session cookie.
pub async fn authenticate(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Principal, ApiError> {
    let Some(secret) = bearer(headers)? else {
        let (user_id, _) = state
            .sessions
            .authenticate(headers)
            .await?
            .ok_or(ApiError::Unauthenticated)?;
        require_same_origin(state, method, headers)?;
        let mut conn = state.pool.acquire().await?;
        let user = users::get(&mut conn, user_id)
            .await
            .map_err(unauthenticated_if_gone)?;
        let roles = memberships::roles_of(&mut conn, user_id).await?;
        return Ok(Principal::for_user(&user, roles, None, None));
    };
    let mut conn = state.pool.acquire().await?;
    let token = tokens::authenticate(&mut conn, secret)
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    let principal = match &token.owner {
        TokenOwner::User(user_id) => {
            let user = users::get(&mut conn, *user_id)
                .await
                .map_err(unauthenticated_if_gone)?;
            let roles = memberships::roles_of(&mut conn, *user_id).await?;
            Principal::for_user(&user, roles, Some(token.token_id), token.scopes.clone())
        }
        TokenOwner::Service { org, role } => Principal::for_service_token(&token, *org, *role),
    };
    if let Some(token_id) = principal.token_id {
        tracing::Span::current().record("token_id", tracing::field::display(token_id));
    }
    Ok(principal)
}

/// The org a route's path points at: `{org_id}` itself, or the org of `{project_id}` or
/// `{run_id}`. A malformed or unknown id answers 404, exactly like one of another org.
async fn org_of_path(state: &AppState, params: &RawPathParams) -> Result<Option<OrgId>, ApiError> {
    let Some((name, raw)) = params
        .iter()
        .find(|(name, _)| matches!(*name, "org_id" | "project_id" | "run_id"))
    else {
        return Ok(None);
    };
    let not_found = |what: &str| ApiError::not_found(what, raw);
    let mut conn = state.pool.acquire().await?;
    let org = match name {
        "org_id" => raw.parse::<OrgId>().map_err(|_| not_found("org"))?,
        "project_id" => {
            let id: ProjectId = raw.parse().map_err(|_| not_found("project"))?;
            projects::get(&mut conn, &Scope::Instance, id)
                .await
                .map_err(|err| match err {
                    StorageError::NotFound(_) => not_found("project"),
                    other => other.into(),
                })?
                .org_id
        }
        _ => {
            let id: RunId = raw.parse().map_err(|_| not_found("run"))?;
            runs::get(&mut conn, &Scope::Instance, id)
                .await
                .map_err(|err| match err {
                    StorageError::NotFound(_) => not_found("run"),
                    other => other.into(),
                })?
                .org_id
        }
    };
    Ok(Some(org))
}

/// The route's declared access, for the extractors to cross-check.
#[derive(Clone, Copy, Debug)]
struct DeclaredAccess(Access);

/// The caller the access layer authenticated and authorized.
#[derive(Clone)]
struct Checked(Principal);

async fn check(state: &AppState, access: Access, parts: &mut Parts) -> Result<(), ApiError> {
    parts.extensions.insert(DeclaredAccess(access));
    if access == Access::Public {
        return Ok(());
    }
    let principal = authenticate(state, &parts.method, &parts.headers).await?;
    state
        .rate_limiter
        .caller(&principal.rate_limit_bucket())
        .await?;
    match access {
        Access::Public | Access::Authenticated => {}
        Access::Instance => principal.require_instance_admin()?,
        Access::Org(permission) => {
            let params = RawPathParams::from_request_parts(parts, state)
                .await
                .map_err(|err| ApiError::Internal(Box::new(err)))?;
            if let Some(org) = org_of_path(state, &params).await? {
                principal.require(org, permission)?;
                state.rate_limiter.org(org).await?;
            }
        }
    }
    parts.extensions.insert(Checked(principal));
    Ok(())
}

/// Route layer: enforces `access` before the handler runs (see the module header).
pub async fn enforce_access(
    State((state, access)): State<(AppState, Access)>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    if let Err(err) = check(&state, access, &mut parts).await {
        return err.into_response();
    }
    next.run(Request::from_parts(parts, body)).await
}

/// Middleware: sliding refresh. A session cookie past half its lifetime gets a fresh one on a
/// successful response, up to the session's absolute maximum.
pub async fn refresh_sessions(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let refreshed = state.sessions.due_refresh(request.headers());
    let mut response = next.run(request).await;
    if let Some(claims) = refreshed
        && response.status().is_success()
        && !response.headers().contains_key(SET_COOKIE)
        && let Ok(cookie) = state.sessions.session_cookie(&claims)
    {
        response.headers_mut().insert(SET_COOKIE, cookie);
    }
    response
}

fn checked(parts: &Parts) -> Result<Principal, ApiError> {
    parts
        .extensions
        .get::<Checked>()
        .map(|Checked(principal)| principal.clone())
        .ok_or_else(|| {
            ApiError::Internal(
                "a handler asked for the caller on a route the access layer does not guard".into(),
            )
        })
}

/// Any authenticated caller.
pub struct Authenticated(pub Principal);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        checked(parts).map(Authenticated)
    }
}

/// A permission as a type, so a handler's signature says what it needs.
pub trait RequiredPermission: Send + Sync + 'static {
    const PERMISSION: Permission;
}

macro_rules! permission_types {
    ($($name:ident => $permission:ident),* $(,)?) => {
        pub mod perm {
            $(
                pub struct $name;
                impl super::RequiredPermission for $name {
                    const PERMISSION: cadenza_domain::Permission = cadenza_domain::Permission::$permission;
                }
            )*
        }
    };
}

permission_types!(
    OrgRead => OrgRead,
    OrgManage => OrgManage,
    OrgDelete => OrgDelete,
    MembersManage => MembersManage,
    ProjectsRead => ProjectsRead,
    ProjectsManage => ProjectsManage,
    RunsRead => RunsRead,
    RunsCreate => RunsCreate,
    RunsCancel => RunsCancel,
    SecretsManage => SecretsManage,
    AuditRead => AuditRead,
    TokensManage => TokensManage,
    InstanceAdmin => InstanceAdmin,
);

/// An authenticated caller holding permission `P` (in the org of the route's path, checked by
/// the access layer; handlers check again where they load the resource).
pub struct Authorized<P: RequiredPermission> {
    pub principal: Principal,
    _permission: PhantomData<P>,
}

impl<P: RequiredPermission> Authorized<P> {
    pub const PERMISSION: Permission = P::PERMISSION;

    /// Checks `P` in `org`: 404 when the org is invisible to the caller, 403 when `P` is
    /// missing.
    pub fn require(&self, org: OrgId) -> Result<(), ApiError> {
        self.principal.require(org, P::PERMISSION)
    }

    /// The orgs where the caller holds `P`.
    pub fn scope(&self) -> Scope {
        self.principal.scope_for(P::PERMISSION)
    }
}

impl<P: RequiredPermission> FromRequestParts<AppState> for Authorized<P> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        let declared = parts
            .extensions
            .get::<DeclaredAccess>()
            .map(|DeclaredAccess(access)| *access);
        let matches = match declared {
            Some(Access::Org(permission)) => permission == P::PERMISSION,
            Some(Access::Instance) => P::PERMISSION == Permission::InstanceAdmin,
            _ => false,
        };
        if !matches {
            return Err(ApiError::Internal(
                format!(
                    "the handler requires `{}` but the route declares {declared:?}",
                    P::PERMISSION
                )
                .into(),
            ));
        }
        Ok(Self {
            principal: checked(parts)?,
            _permission: PhantomData,
        })
    }
}
