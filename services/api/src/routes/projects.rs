use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use cadenza_domain::{AgentSettings, OrgId, Permission, Project, ProjectId, Repository, Scope};
use cadenza_storage::{StorageError, projects};
use serde::{Deserialize, Deserializer};
use serde_json::json;

use crate::audit::{self, AuditedTx, Change, RequestMeta};
use crate::auth::{Authorized, perm};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiQuery, next_cursor, page_limit, parse_cursor, parse_id};
use crate::principal::Principal;
use crate::routes::orgs::validate_name;
use crate::routes::wire::{Page, ProjectView};
use crate::state::AppState;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    cursor: Option<String>,
    limit: Option<i64>,
}

/// A project as `principal` may see it: `agent.env` values only for callers who may manage the
/// project (`projects.manage`), names with masked values for everyone else.
fn view_for(principal: &Principal, project: Project) -> ProjectView {
    let manages = principal
        .require(project.org_id, Permission::ProjectsManage)
        .is_ok();
    let view = ProjectView::from(project);
    if manages {
        view
    } else {
        view.with_env_values_hidden()
    }
}

async fn list_scoped(
    state: &AppState,
    principal: &Principal,
    scope: &Scope,
    query: ListQuery,
) -> ApiResult<Json<Page<ProjectView>>> {
    let limit = page_limit(
        query.limit,
        state.limits.default_page,
        state.limits.max_page,
    )?;
    let before = parse_cursor::<ProjectId>(query.cursor.as_deref())?;
    let mut conn = state.pool.acquire().await?;
    let items = projects::list(&mut conn, scope, before, limit).await?;
    let next_cursor = next_cursor(&items, limit, |project| project.id);
    Ok(Json(Page {
        items: items
            .into_iter()
            .map(|project| view_for(principal, project))
            .collect(),
        next_cursor,
    }))
}

/// `GET /projects`: projects of every org where the caller may read them.
pub async fn list(
    State(state): State<AppState>,
    auth: Authorized<perm::ProjectsRead>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<ProjectView>>> {
    list_scoped(&state, &auth.principal, &auth.scope(), query).await
}

pub async fn list_in_org(
    State(state): State<AppState>,
    auth: Authorized<perm::ProjectsRead>,
    Path(org_id): Path<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<ProjectView>>> {
    let org_id: OrgId = parse_id(&org_id, "org")?;
    auth.require(org_id)?;
    list_scoped(&state, &auth.principal, &Scope::Org(org_id), query).await
}

/// Loads a project for a caller who needs `P` in its org: 404 for projects of orgs the caller
/// cannot see, 403 when it can see the org but lacks `P`.
pub(crate) async fn load<P: crate::auth::RequiredPermission>(
    state: &AppState,
    auth: &Authorized<P>,
    raw_id: &str,
) -> ApiResult<Project> {
    let id: ProjectId = parse_id(raw_id, "project")?;
    let mut conn = state.pool.acquire().await?;
    let project = projects::get(&mut conn, &Scope::Instance, id)
        .await
        .map_err(|err| match err {
            StorageError::NotFound(_) => ApiError::not_found("project", id),
            other => other.into(),
        })?;
    auth.require(project.org_id).map_err(|err| match err {
        ApiError::NotFound(_) => ApiError::not_found("project", id),
        other => other,
    })?;
    Ok(project)
}

pub async fn get(
    State(state): State<AppState>,
    auth: Authorized<perm::ProjectsRead>,
    Path(project_id): Path<String>,
) -> ApiResult<Json<ProjectView>> {
    let project = load(&state, &auth, &project_id).await?;
    Ok(Json(view_for(&auth.principal, project)))
}

/// Accepts a field that may be absent (leave as is), `null` (clear) or a value.
fn nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentPatch {
    image: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    llm_model: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    llm_base_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    llm_api_key_secret: Option<Option<String>>,
    max_iterations: Option<i64>,
    cpus: Option<f64>,
    memory_mb: Option<i64>,
    pids_limit: Option<i64>,
    env: Option<BTreeMap<String, String>>,
    secrets: Option<Vec<String>>,
    #[schema(schema_with = crate::routes::wire::schemas::on_lost_workspace, required = false)]
    on_lost_workspace: Option<cadenza_domain::OnLostWorkspace>,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RepositoryPatch {
    #[serde(default, deserialize_with = "nullable")]
    url: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    branch: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    credentials_secret: Option<Option<String>>,
}

fn set<T>(target: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *target = value;
    }
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128
}

impl AgentPatch {
    fn apply(self, agent: &mut AgentSettings) -> ApiResult<()> {
        set(&mut agent.image, self.image);
        set(&mut agent.llm_model, self.llm_model);
        set(&mut agent.llm_base_url, self.llm_base_url);
        set(&mut agent.llm_api_key_secret, self.llm_api_key_secret);
        set(&mut agent.max_iterations, self.max_iterations);
        set(&mut agent.cpus, self.cpus);
        set(&mut agent.memory_mb, self.memory_mb);
        set(&mut agent.pids_limit, self.pids_limit);
        set(&mut agent.env, self.env);
        set(&mut agent.secrets, self.secrets);
        set(&mut agent.on_lost_workspace, self.on_lost_workspace);
        validate_agent(agent)
    }
}

fn validate_agent(agent: &AgentSettings) -> ApiResult<()> {
    let bad = |message: String| Err(ApiError::BadRequest(message));
    if agent.image.trim().is_empty()
        || agent.image.len() > 512
        || agent.image.contains(char::is_whitespace)
    {
        return bad("`agent.image` must be an image reference (tag or digest)".into());
    }
    if !(agent.cpus > 0.0 && agent.cpus <= 64.0) {
        return bad(format!(
            "`agent.cpus` must be in (0, 64], got {}",
            agent.cpus
        ));
    }
    if !(64..=262_144).contains(&agent.memory_mb) {
        return bad(format!(
            "`agent.memory_mb` must be 64-262144, got {}",
            agent.memory_mb
        ));
    }
    if !(16..=65_536).contains(&agent.pids_limit) {
        return bad(format!(
            "`agent.pids_limit` must be 16-65536, got {}",
            agent.pids_limit
        ));
    }
    if !(1..=10_000).contains(&agent.max_iterations) {
        return bad(format!(
            "`agent.max_iterations` must be 1-10000, got {}",
            agent.max_iterations
        ));
    }
    for name in agent.env.keys().chain(agent.secrets.iter()) {
        if !is_env_name(name) {
            return bad(format!("`{name}` is not a valid environment variable name"));
        }
        if name.starts_with("OH_") || name == "SESSION_API_KEY" {
            return bad(format!(
                "`{name}` is reserved for the agent-server's own settings"
            ));
        }
    }
    for secret in [&agent.llm_api_key_secret].into_iter().flatten() {
        if !is_env_name(secret) {
            return bad(format!("`{secret}` is not a valid secret name"));
        }
    }
    Ok(())
}

/// Whether a URL with a scheme (`https://user:token@host/…`) carries user information in its
/// authority. Credentials there would be shown to every reader of the project, journaled and
/// kept in the audit log. The scp-like `git@host:path` has no scheme and names no secret.
fn has_userinfo(url: &str) -> bool {
    let Some((_, rest)) = url.trim().split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority.contains('@')
}

impl RepositoryPatch {
    fn apply(self, repository: &mut Repository) -> ApiResult<()> {
        set(&mut repository.url, self.url);
        set(&mut repository.branch, self.branch);
        set(&mut repository.credentials_secret, self.credentials_secret);
        if let Some(url) = &repository.url {
            if url.trim().is_empty() {
                return Err(ApiError::BadRequest(
                    "`repository.url` must not be empty".into(),
                ));
            }
            if has_userinfo(url) {
                return Err(ApiError::BadRequest(
                    "`repository.url` must not contain a user name or password (`user:token@`): \
                     put the credentials in a secret and name it in \
                     `repository.credentials_secret`"
                        .into(),
                ));
            }
        }
        Ok(())
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    slug: String,
    name: String,
    #[serde(default)]
    agent: Option<AgentPatch>,
    #[serde(default)]
    repository: Option<RepositoryPatch>,
}

/// Refuses an image the instance's allowlist, with the org's own rules, does not allow.
async fn check_image(
    state: &AppState,
    conn: &mut sqlx::PgConnection,
    org: OrgId,
    image: &str,
) -> ApiResult<()> {
    let org_rules = cadenza_storage::agent_images::rules_of(conn, org).await?;
    state
        .images
        .with(org_rules)
        .check(image)
        .map(|_| ())
        .map_err(ApiError::BadRequest)
}

/// The agent image used when a project names none.
const DEFAULT_AGENT_IMAGE: &str = "ghcr.io/openhands/agent-server:1.58.0-python";

/// The settings as the permanent audit log keeps them: `agent.env` by name only, since a value
/// may be a credential someone put there by mistake and audit entries can never be purged.
fn settings_json(project: &Project) -> serde_json::Value {
    let mut agent = serde_json::to_value(&project.agent).unwrap_or_default();
    if let Some(fields) = agent.as_object_mut() {
        fields.insert(
            "env".into(),
            json!(project.agent.env.keys().collect::<Vec<_>>()),
        );
    }
    json!({
        "name": project.name,
        "agent": agent,
        "repository": serde_json::to_value(&project.repository).unwrap_or_default(),
    })
}

/// The audit diff of a settings change; `agent.env` values that changed are named, not shown.
fn settings_diff(before: &Project, after: &Project) -> serde_json::Value {
    let mut diff = audit::diff(&settings_json(before), &settings_json(after));
    let changed: Vec<&String> = after
        .agent
        .env
        .iter()
        .filter(|(name, value)| before.agent.env.get(*name).is_some_and(|old| old != *value))
        .map(|(name, _)| name)
        .collect();
    if let (false, Some(fields)) = (changed.is_empty(), diff.as_object_mut()) {
        fields.insert("agent.env_values_changed".into(), json!(changed));
    }
    diff
}

pub async fn create(
    State(state): State<AppState>,
    auth: Authorized<perm::ProjectsManage>,
    meta: RequestMeta,
    Path(org_id): Path<String>,
    ApiJson(body): ApiJson<CreateProject>,
) -> ApiResult<(StatusCode, Json<ProjectView>)> {
    let org_id: OrgId = parse_id(&org_id, "org")?;
    auth.require(org_id)?;
    validate_name(&body.name)?;
    let mut agent = AgentSettings::with_image(DEFAULT_AGENT_IMAGE);
    body.agent.unwrap_or_default().apply(&mut agent)?;
    let mut repository = Repository::default();
    body.repository.unwrap_or_default().apply(&mut repository)?;
    let mut tx = AuditedTx::begin(&state.pool, &auth.principal, &meta).await?;
    check_image(&state, &mut tx, org_id, &agent.image).await?;
    let project = projects::create(&mut tx, org_id, &body.slug, &body.name, &agent, &repository)
        .await
        .map_err(|err| match err {
            StorageError::Conflict(_) => {
                ApiError::Conflict(format!("the slug `{}` is taken in this org", body.slug))
            }
            StorageError::Database(_) => {
                ApiError::BadRequest(format!("invalid slug `{}`", body.slug))
            }
            other => other.into(),
        })?;
    tx.record(Change {
        org: Some(org_id),
        action: "project.create",
        resource_type: "project",
        resource_id: Some(project.id.to_string()),
        diff: audit::diff(&json!({}), &settings_json(&project)),
    })
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(project.into())))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProject {
    name: Option<String>,
    agent: Option<AgentPatch>,
    repository: Option<RepositoryPatch>,
}

/// `PATCH /projects/{id}`: changes the fields given; `null` clears an optional one.
pub async fn update(
    State(state): State<AppState>,
    auth: Authorized<perm::ProjectsManage>,
    meta: RequestMeta,
    Path(project_id): Path<String>,
    ApiJson(body): ApiJson<UpdateProject>,
) -> ApiResult<Json<ProjectView>> {
    let before = load(&state, &auth, &project_id).await?;
    let mut name = before.name.clone();
    if let Some(new_name) = body.name {
        validate_name(&new_name)?;
        name = new_name;
    }
    let mut agent = before.agent.clone();
    if let Some(patch) = body.agent {
        patch.apply(&mut agent)?;
    }
    let mut repository = before.repository.clone();
    if let Some(patch) = body.repository {
        patch.apply(&mut repository)?;
    }
    let mut tx = AuditedTx::begin(&state.pool, &auth.principal, &meta).await?;
    // An image chosen before the allowlist (or before an org rule was removed) stays until the
    // project changes it; the worker refuses it at run time either way.
    if agent.image != before.agent.image {
        check_image(&state, &mut tx, before.org_id, &agent.image).await?;
    }
    let after = projects::update(&mut tx, before.id, &name, &agent, &repository).await?;
    tx.record(Change {
        org: Some(after.org_id),
        action: "project.update",
        resource_type: "project",
        resource_id: Some(after.id.to_string()),
        diff: settings_diff(&before, &after),
    })
    .await?;
    tx.commit().await?;
    Ok(Json(after.into()))
}

pub async fn delete(
    State(state): State<AppState>,
    auth: Authorized<perm::ProjectsManage>,
    meta: RequestMeta,
    Path(project_id): Path<String>,
) -> ApiResult<StatusCode> {
    let project = load(&state, &auth, &project_id).await?;
    let mut tx = AuditedTx::begin(&state.pool, &auth.principal, &meta).await?;
    projects::delete(&mut tx, project.id).await?;
    tx.record(Change {
        org: Some(project.org_id),
        action: "project.delete",
        resource_type: "project",
        resource_id: Some(project.id.to_string()),
        diff: json!({"slug": {"before": project.slug, "after": null}}),
    })
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
