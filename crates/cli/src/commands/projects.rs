//! `cadenza projects list|show|create`.

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::client::segment;
use crate::commands::{Context, more_hint, resolve_org, resolve_project};
use crate::error::CliError;
use crate::output::{OutputMode, Table, cell, fields, time_cell};

#[derive(Subcommand)]
pub enum ProjectsCommand {
    /// List projects (of every org of yours, or of one).
    List {
        /// Only this org's (an id or a slug).
        #[arg(long)]
        org: Option<String>,
    },
    /// Show one project (an id or `org-slug/project-slug`).
    Show { project: String },
    /// Create a project.
    Create(CreateArgs),
}

#[derive(Args)]
pub struct CreateArgs {
    /// The org (an id or a slug).
    #[arg(long)]
    pub org: String,
    #[arg(long)]
    pub slug: String,
    #[arg(long)]
    pub name: String,
    /// The agent image (the server's default when left out); it must be on the allowlist.
    #[arg(long)]
    pub image: Option<String>,
    /// The most agent steps a run may take.
    #[arg(long)]
    pub max_iterations: Option<i64>,
    /// A git repository to clone into each run's workspace.
    #[arg(long)]
    pub repository: Option<String>,
    /// The branch to clone (the repository's default when left out).
    #[arg(long, requires = "repository")]
    pub branch: Option<String>,
}

pub async fn run(context: &Context, command: ProjectsCommand) -> Result<u8, CliError> {
    let client = context.client()?;
    match command {
        ProjectsCommand::List { org } => {
            let path = match org {
                Some(org) => format!(
                    "/orgs/{}/projects",
                    segment(&resolve_org(&client, &org).await?)
                ),
                None => "/projects".to_owned(),
            };
            let page = client
                .get_query(&path, &[("limit", "500".to_owned())])
                .await?;
            let code = context.print(&page, |page| {
                let mut table = Table::new(&["ID", "ORG", "SLUG", "NAME", "IMAGE"]);
                for project in page["items"].as_array().into_iter().flatten() {
                    table.row(vec![
                        cell(&project["id"]),
                        cell(&project["org_id"]),
                        cell(&project["slug"]),
                        cell(&project["name"]),
                        cell(&project["agent"]["image"]),
                    ]);
                }
                table.render()
            });
            if context.output == OutputMode::Human {
                more_hint(&page);
            }
            Ok(code)
        }
        ProjectsCommand::Show { project } => {
            let id = resolve_project(&client, &project).await?;
            let project = client.get(&format!("/projects/{}", segment(&id))).await?;
            Ok(context.print(&project, project_fields))
        }
        ProjectsCommand::Create(args) => {
            let org = resolve_org(&client, &args.org).await?;
            let mut body = json!({ "slug": args.slug, "name": args.name });
            let mut agent = serde_json::Map::new();
            if let Some(image) = args.image {
                agent.insert("image".into(), json!(image));
            }
            if let Some(max_iterations) = args.max_iterations {
                agent.insert("max_iterations".into(), json!(max_iterations));
            }
            if !agent.is_empty() {
                body["agent"] = Value::Object(agent);
            }
            if let Some(url) = args.repository {
                body["repository"] = json!({ "url": url, "branch": args.branch });
            }
            let project = client
                .post(&format!("/orgs/{}/projects", segment(&org)), Some(&body))
                .await?;
            Ok(context.print(&project, |project| {
                format!(
                    "created project {} ({})\n",
                    cell(&project["slug"]),
                    cell(&project["id"])
                )
            }))
        }
    }
}

fn project_fields(project: &Value) -> String {
    let agent = &project["agent"];
    let repository = &project["repository"];
    fields(&[
        ("id", cell(&project["id"])),
        ("org", cell(&project["org_id"])),
        ("slug", cell(&project["slug"])),
        ("name", cell(&project["name"])),
        ("image", cell(&agent["image"])),
        ("max iterations", cell(&agent["max_iterations"])),
        (
            "resources",
            format!(
                "{} cpus, {} MiB, {} pids",
                cell(&agent["cpus"]),
                cell(&agent["memory_mb"]),
                cell(&agent["pids_limit"])
            ),
        ),
        ("llm model", cell(&agent["llm_model"])),
        ("secrets", list_cell(&agent["secrets"])),
        ("repository", cell(&repository["url"])),
        ("branch", cell(&repository["branch"])),
        ("created", time_cell(&project["created_at"])),
        ("updated", time_cell(&project["updated_at"])),
    ])
}

fn list_cell(value: &Value) -> String {
    match value.as_array() {
        Some(items) if !items.is_empty() => items.iter().map(cell).collect::<Vec<_>>().join(", "),
        _ => "-".to_owned(),
    }
}
