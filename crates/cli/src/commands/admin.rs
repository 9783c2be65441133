//! `cadenza admin orgs|users|health`, for instance administrators.

use clap::Subcommand;

use crate::commands::{Context, more_hint};
use crate::error::{CliError, exit};
use crate::output::{OutputMode, Table, cell, time_cell};

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Every org of the instance.
    Orgs,
    /// Every user of the instance.
    Users,
    /// Each dependency's state, with its error. Exits 3 when one is not ready.
    Health,
}

pub async fn run(context: &Context, command: AdminCommand) -> Result<u8, CliError> {
    let client = context.client()?;
    let limit = [("limit", "500".to_owned())];
    let page = match command {
        AdminCommand::Orgs => {
            let page = client.get_query("/admin/orgs", &limit).await?;
            context.print(&page, |page| {
                let mut table = Table::new(&["ID", "SLUG", "NAME", "CREATED"]);
                for org in page["items"].as_array().into_iter().flatten() {
                    table.row(vec![
                        cell(&org["id"]),
                        cell(&org["slug"]),
                        cell(&org["name"]),
                        time_cell(&org["created_at"]),
                    ]);
                }
                table.render()
            });
            page
        }
        AdminCommand::Users => {
            let page = client.get_query("/admin/users", &limit).await?;
            context.print(&page, |page| {
                let mut table = Table::new(&["ID", "EMAIL", "NAME", "ADMIN", "LAST LOGIN"]);
                for user in page["items"].as_array().into_iter().flatten() {
                    table.row(vec![
                        cell(&user["id"]),
                        cell(&user["email"]),
                        cell(&user["name"]),
                        cell(&user["instance_admin"]),
                        time_cell(&user["last_login_at"]),
                    ]);
                }
                table.render()
            });
            page
        }
        AdminCommand::Health => {
            let health = client.get("/admin/health").await?;
            context.print(&health, |health| {
                let mut table = Table::new(&["CHECK", "OK", "ERROR"]);
                for check in health["checks"].as_array().into_iter().flatten() {
                    table.row(vec![
                        cell(&check["name"]),
                        cell(&check["ok"]),
                        cell(&check["error"]),
                    ]);
                }
                format!("status: {}\n\n{}", cell(&health["status"]), table.render())
            });
            return Ok(if health["status"] == "ready" {
                exit::SUCCESS
            } else {
                exit::API_ERROR
            });
        }
    };
    if context.output == OutputMode::Human {
        more_hint(&page);
    }
    Ok(exit::SUCCESS)
}
