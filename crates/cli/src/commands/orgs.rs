//! `cadenza orgs list`.

use clap::Subcommand;

use crate::commands::{Context, more_hint};
use crate::error::CliError;
use crate::output::{OutputMode, Table, cell, time_cell};

#[derive(Subcommand)]
pub enum OrgsCommand {
    /// The orgs you belong to, with your role in each.
    List,
}

pub async fn run(context: &Context, command: OrgsCommand) -> Result<u8, CliError> {
    let client = context.client()?;
    match command {
        OrgsCommand::List => {
            let page = client
                .get_query("/orgs", &[("limit", "500".to_owned())])
                .await?;
            let code = context.print(&page, |page| {
                let mut table = Table::new(&["ID", "SLUG", "NAME", "ROLE", "CREATED"]);
                for org in page["items"].as_array().into_iter().flatten() {
                    table.row(vec![
                        cell(&org["id"]),
                        cell(&org["slug"]),
                        cell(&org["name"]),
                        cell(&org["role"]),
                        time_cell(&org["created_at"]),
                    ]);
                }
                table.render()
            });
            if context.output == OutputMode::Human {
                more_hint(&page);
            }
            Ok(code)
        }
    }
}
