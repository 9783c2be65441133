//! `cadenza secrets set|list|delete`, for an org or a project. Values are read from standard
//! input (or the terminal, without echo), never from the command line, and never printed.

use clap::{Args, Subcommand};
use serde_json::json;

use crate::client::{Client, segment};
use crate::commands::{Context, resolve_org, resolve_project};
use crate::error::CliError;
use crate::input;
use crate::output::{Table, cell, time_cell};

#[derive(Subcommand)]
pub enum SecretsCommand {
    /// Create a secret or write its next version; the value comes from standard input.
    Set {
        /// An environment-variable name (A-Z, 0-9, `_`).
        name: String,
        #[command(flatten)]
        scope: ScopeArgs,
        /// Never used: a value typed here is refused without being repeated, since the command
        /// line is visible to other users (`ps`) and kept in shell history.
        #[arg(hide = true)]
        value_on_command_line: Option<String>,
    },
    /// List secrets (metadata only: no value is ever shown).
    List {
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Delete a secret.
    Delete {
        name: String,
        #[command(flatten)]
        scope: ScopeArgs,
    },
}

#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct ScopeArgs {
    /// An org secret (an org id or slug).
    #[arg(long)]
    pub org: Option<String>,
    /// A project secret, overriding the org's of the same name (an id or `org/project`).
    #[arg(long)]
    pub project: Option<String>,
}

/// The API path of the secrets of the scope.
async fn base_path(client: &Client, scope: &ScopeArgs) -> Result<String, CliError> {
    match (&scope.org, &scope.project) {
        (Some(org), _) => Ok(format!(
            "/orgs/{}/secrets",
            segment(&resolve_org(client, org).await?)
        )),
        (None, Some(project)) => Ok(format!(
            "/projects/{}/secrets",
            segment(&resolve_project(client, project).await?)
        )),
        (None, None) => Err(CliError::Usage("give --org or --project".into())),
    }
}

pub async fn run(context: &Context, command: SecretsCommand) -> Result<u8, CliError> {
    if let SecretsCommand::Set {
        value_on_command_line: Some(_),
        ..
    } = &command
    {
        return Err(CliError::Usage(
            "a secret's value is not taken from the command line, where `ps` and shell history \
             would keep it: pipe it to standard input (`cadenza secrets set NAME --org O < file`) \
             or type it at the prompt"
                .into(),
        ));
    }
    let client = context.client()?;
    match command {
        SecretsCommand::Set { name, scope, .. } => {
            let path = format!("{}/{}", base_path(&client, &scope).await?, segment(&name));
            let value = input::secret_value(&format!("value of {name}"), false)?;
            let body = json!({ "value": value.as_str() });
            let secret = client.put(&path, &body).await?;
            Ok(context.print(&secret, |secret| {
                format!(
                    "secret {} set (version {})\n",
                    cell(&secret["name"]),
                    cell(&secret["version"])
                )
            }))
        }
        SecretsCommand::List { scope } => {
            let list = client.get(&base_path(&client, &scope).await?).await?;
            Ok(context.print(&list, |list| {
                let mut table = Table::new(&[
                    "NAME",
                    "SCOPE",
                    "VERSION",
                    "UPDATED",
                    "UPDATED BY",
                    "LAST USED",
                ]);
                for secret in list["items"].as_array().into_iter().flatten() {
                    table.row(vec![
                        cell(&secret["name"]),
                        cell(&secret["scope"]),
                        cell(&secret["version"]),
                        time_cell(&secret["updated_at"]),
                        cell(&secret["updated_by"]),
                        time_cell(&secret["last_used_at"]),
                    ]);
                }
                table.render()
            }))
        }
        SecretsCommand::Delete { name, scope } => {
            let path = format!("{}/{}", base_path(&client, &scope).await?, segment(&name));
            client.delete(&path).await?;
            Ok(context.print(&json!({ "deleted": name }), |_| {
                format!("secret {name} deleted\n")
            }))
        }
    }
}
