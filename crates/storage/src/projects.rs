use std::collections::BTreeMap;

use cadenza_domain::{AgentSettings, OrgId, Project, ProjectId, Repository, Scope};
use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{StorageError, StorageResult};

struct ProjectRow {
    id: Uuid,
    org_id: Uuid,
    slug: String,
    name: String,
    agent_image: String,
    agent_cpus: f64,
    agent_memory_mb: i64,
    agent_pids_limit: i64,
    agent_max_iterations: i64,
    agent_llm_model: Option<String>,
    agent_llm_base_url: Option<String>,
    agent_env: serde_json::Value,
    agent_llm_api_key_secret: Option<String>,
    agent_secrets: Vec<String>,
    agent_on_lost_workspace: String,
    repo_url: Option<String>,
    repo_branch: Option<String>,
    repo_credentials_secret: Option<String>,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
}

impl TryFrom<ProjectRow> for Project {
    type Error = StorageError;

    fn try_from(row: ProjectRow) -> Result<Self, Self::Error> {
        let env: BTreeMap<String, String> = serde_json::from_value(row.agent_env)
            .map_err(|err| StorageError::Corrupt(format!("project {} agent_env: {err}", row.id)))?;
        Ok(Project {
            id: row.id.into(),
            org_id: row.org_id.into(),
            slug: row.slug,
            name: row.name,
            agent: AgentSettings {
                image: row.agent_image,
                cpus: row.agent_cpus,
                memory_mb: row.agent_memory_mb,
                pids_limit: row.agent_pids_limit,
                max_iterations: row.agent_max_iterations,
                llm_model: row.agent_llm_model,
                llm_base_url: row.agent_llm_base_url,
                llm_api_key_secret: row.agent_llm_api_key_secret,
                env,
                secrets: row.agent_secrets,
                on_lost_workspace: row
                    .agent_on_lost_workspace
                    .parse()
                    .map_err(StorageError::Corrupt)?,
            },
            repository: Repository {
                url: row.repo_url,
                branch: row.repo_branch,
                credentials_secret: row.repo_credentials_secret,
            },
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

pub async fn create(
    conn: &mut PgConnection,
    org_id: OrgId,
    slug: &str,
    name: &str,
    agent: &AgentSettings,
    repository: &Repository,
) -> StorageResult<Project> {
    let env = serde_json::to_value(&agent.env)
        .map_err(|err| StorageError::Corrupt(format!("agent env: {err}")))?;
    let row = sqlx::query_as!(
        ProjectRow,
        r#"insert into projects (id, org_id, slug, name, agent_image, agent_cpus, agent_memory_mb,
                                 agent_pids_limit, agent_max_iterations, agent_llm_model,
                                 agent_llm_base_url, agent_env, agent_llm_api_key_secret,
                                 agent_secrets, repo_url, repo_branch, repo_credentials_secret,
                                 agent_on_lost_workspace)
           values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                   $18)
           returning id, org_id, slug, name, agent_image, agent_cpus, agent_memory_mb,
                     agent_pids_limit, agent_max_iterations, agent_llm_model, agent_llm_base_url,
                     agent_env, agent_llm_api_key_secret, agent_secrets, agent_on_lost_workspace, repo_url, repo_branch,
                     repo_credentials_secret, created_at, updated_at"#,
        ProjectId::new().as_uuid(),
        org_id.as_uuid(),
        slug,
        name,
        agent.image,
        agent.cpus,
        agent.memory_mb,
        agent.pids_limit,
        agent.max_iterations,
        agent.llm_model,
        agent.llm_base_url,
        env,
        agent.llm_api_key_secret,
        &agent.secrets,
        repository.url,
        repository.branch,
        repository.credentials_secret,
        agent.on_lost_workspace.as_str()
    )
    .fetch_one(conn)
    .await?;
    row.try_into()
}

/// Replaces a project's name and settings (the caller merged a patch into the current values).
pub async fn update(
    conn: &mut PgConnection,
    id: ProjectId,
    name: &str,
    agent: &AgentSettings,
    repository: &Repository,
) -> StorageResult<Project> {
    let env = serde_json::to_value(&agent.env)
        .map_err(|err| StorageError::Corrupt(format!("agent env: {err}")))?;
    let row = sqlx::query_as!(
        ProjectRow,
        r#"update projects set name = $2, agent_image = $3, agent_cpus = $4, agent_memory_mb = $5,
                  agent_pids_limit = $6, agent_max_iterations = $7, agent_llm_model = $8,
                  agent_llm_base_url = $9, agent_env = $10, agent_llm_api_key_secret = $11,
                  agent_secrets = $12, repo_url = $13, repo_branch = $14,
                  repo_credentials_secret = $15, agent_on_lost_workspace = $16, updated_at = now()
           where id = $1
           returning id, org_id, slug, name, agent_image, agent_cpus, agent_memory_mb,
                     agent_pids_limit, agent_max_iterations, agent_llm_model, agent_llm_base_url,
                     agent_env, agent_llm_api_key_secret, agent_secrets, agent_on_lost_workspace, repo_url, repo_branch,
                     repo_credentials_secret, created_at, updated_at"#,
        id.as_uuid(),
        name,
        agent.image,
        agent.cpus,
        agent.memory_mb,
        agent.pids_limit,
        agent.max_iterations,
        agent.llm_model,
        agent.llm_base_url,
        env,
        agent.llm_api_key_secret,
        &agent.secrets,
        repository.url,
        repository.branch,
        repository.credentials_secret,
        agent.on_lost_workspace.as_str()
    )
    .fetch_optional(conn)
    .await?
    .ok_or(StorageError::NotFound("project"))?;
    row.try_into()
}

pub async fn delete(conn: &mut PgConnection, id: ProjectId) -> StorageResult<()> {
    let done = sqlx::query!("delete from projects where id = $1", id.as_uuid())
        .execute(conn)
        .await?;
    if done.rows_affected() == 0 {
        return Err(StorageError::NotFound("project"));
    }
    Ok(())
}

/// Points an existing project at another agent image (used by bootstrap to keep the demo
/// project in step with the configured image).
pub async fn set_agent_image(
    conn: &mut PgConnection,
    id: ProjectId,
    image: &str,
) -> StorageResult<()> {
    sqlx::query!(
        "update projects set agent_image = $2, updated_at = now() where id = $1",
        id.as_uuid(),
        image
    )
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn get(conn: &mut PgConnection, scope: &Scope, id: ProjectId) -> StorageResult<Project> {
    let orgs = scope.org_filter();
    let row = sqlx::query_as!(
        ProjectRow,
        r#"select id, org_id, slug, name, agent_image, agent_cpus, agent_memory_mb,
                  agent_pids_limit, agent_max_iterations, agent_llm_model, agent_llm_base_url,
                  agent_env, agent_llm_api_key_secret, agent_secrets, agent_on_lost_workspace, repo_url, repo_branch,
                  repo_credentials_secret, created_at, updated_at
           from projects where id = $1 and ($2::uuid[] is null or org_id = any($2))"#,
        id.as_uuid(),
        orgs.as_deref()
    )
    .fetch_optional(conn)
    .await?
    .ok_or(StorageError::NotFound("project"))?;
    row.try_into()
}

pub async fn find_by_slug(
    conn: &mut PgConnection,
    org_id: OrgId,
    slug: &str,
) -> StorageResult<Option<Project>> {
    let row = sqlx::query_as!(
        ProjectRow,
        r#"select id, org_id, slug, name, agent_image, agent_cpus, agent_memory_mb,
                  agent_pids_limit, agent_max_iterations, agent_llm_model, agent_llm_base_url,
                  agent_env, agent_llm_api_key_secret, agent_secrets, agent_on_lost_workspace, repo_url, repo_branch,
                  repo_credentials_secret, created_at, updated_at
           from projects where org_id = $1 and slug = $2"#,
        org_id.as_uuid(),
        slug
    )
    .fetch_optional(conn)
    .await?;
    row.map(Project::try_from).transpose()
}

/// Newest first; `before` is the id of the last project of the previous page.
pub async fn list(
    conn: &mut PgConnection,
    scope: &Scope,
    before: Option<ProjectId>,
    limit: i64,
) -> StorageResult<Vec<Project>> {
    let orgs = scope.org_filter();
    let rows = sqlx::query_as!(
        ProjectRow,
        r#"select id, org_id, slug, name, agent_image, agent_cpus, agent_memory_mb,
                  agent_pids_limit, agent_max_iterations, agent_llm_model, agent_llm_base_url,
                  agent_env, agent_llm_api_key_secret, agent_secrets, agent_on_lost_workspace, repo_url, repo_branch,
                  repo_credentials_secret, created_at, updated_at
           from projects
           where ($1::uuid[] is null or org_id = any($1)) and ($2::uuid is null or id < $2)
           order by id desc limit $3"#,
        orgs.as_deref(),
        before.map(|id| id.as_uuid()),
        limit
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(Project::try_from).collect()
}
