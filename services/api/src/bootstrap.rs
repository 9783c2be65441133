//! First-run set-up for a single-host install: a demo org and project and an instance-admin API
//! token. Idempotent for the org and project; each call issues a fresh token.

use anyhow::Context;
use cadenza_domain::{AgentSettings, Org, Project, Repository, Role};
use cadenza_storage::tokens::{NewToken, TokenOwner};
use cadenza_storage::{PgPool, memberships, orgs, projects, tokens, users};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Bootstrapped {
    pub org_id: String,
    pub org_slug: String,
    pub project_id: String,
    pub project_slug: String,
    pub agent_image: String,
    pub admin_email: String,
    /// Shown once: only its hash is stored.
    pub token: String,
}

pub async fn bootstrap(
    pool: &PgPool,
    org_slug: &str,
    project_slug: &str,
    agent_image: &str,
    admin_email: &str,
) -> anyhow::Result<Bootstrapped> {
    let mut tx = pool.begin().await?;
    let org: Org = match orgs::find_by_slug(&mut tx, org_slug).await? {
        Some(org) => org,
        None => orgs::create(&mut tx, org_slug, "Demo")
            .await
            .with_context(|| format!("creating org `{org_slug}`"))?,
    };
    let project: Project = match projects::find_by_slug(&mut tx, org.id, project_slug).await? {
        Some(project) => {
            if project.agent.image != agent_image {
                projects::set_agent_image(&mut tx, project.id, agent_image).await?;
            }
            project
        }
        None => projects::create(
            &mut tx,
            org.id,
            project_slug,
            "Demo project",
            &AgentSettings::with_image(agent_image),
            &Repository::default(),
        )
        .await
        .with_context(|| format!("creating project `{project_slug}`"))?,
    };
    // The bootstrap token is a personal token of an instance administrator who owns the demo org.
    let admin = users::ensure(&mut tx, admin_email, Some("Administrator")).await?;
    users::set_instance_admin(&mut tx, admin.id, true).await?;
    memberships::add(&mut tx, org.id, admin.id, Role::Owner).await?;
    let (_, token) = tokens::create(
        &mut tx,
        NewToken {
            name: "bootstrap admin",
            owner: TokenOwner::User(admin.id),
            scopes: None,
            expires_at: None,
            created_by: Some(admin.id),
            created_by_token: None,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(Bootstrapped {
        org_id: org.id.to_string(),
        org_slug: org.slug,
        project_id: project.id.to_string(),
        project_slug: project.slug,
        agent_image: agent_image.to_owned(),
        admin_email: admin.email,
        token,
    })
}
