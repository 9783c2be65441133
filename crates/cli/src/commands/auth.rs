//! `cadenza login`, `logout`, `whoami`.

use clap::Args;
use serde_json::Value;

use crate::client::Client;
use crate::commands::Context;
use crate::config::{self, ConfigFile, Settings};
use crate::error::{CliError, exit};
use crate::input;
use crate::output::{Table, cell, fields};

#[derive(Args)]
pub struct LoginArgs {
    /// The server's URL, e.g. https://cadenza.example.com.
    #[arg(long)]
    pub server: String,
    /// Read the token from standard input even when it is a terminal (without this, a
    /// terminal is prompted without echo, and anything else is read).
    #[arg(long)]
    pub token_stdin: bool,
}

/// Who a token is, from `GET /me`, in a few words.
fn caller(me: &Value) -> String {
    let actor = &me["actor"];
    match actor["type"].as_str() {
        Some("user") => actor["email"].as_str().unwrap_or("a user").to_owned(),
        Some("service_token") => format!(
            "the service token `{}`",
            actor["name"].as_str().unwrap_or_default()
        ),
        _ => "an unknown caller".to_owned(),
    }
}

pub async fn login(context: &Context, args: LoginArgs) -> Result<u8, CliError> {
    let server = config::normalize_server(&args.server)?;
    let token = input::secret_value("token", args.token_stdin)?;
    let token = zeroize::Zeroizing::new(token.trim().to_owned());
    let settings = Settings {
        server: server.clone(),
        token: token.clone(),
    };
    let me = Client::new(&settings)?.get("/me").await?;
    let path = context.env.config_path()?;
    config::save(
        &path,
        &ConfigFile {
            server: Some(server.clone()),
            token: Some(token.to_string()),
        },
    )?;
    Ok(context.print(&me, |me| {
        format!(
            "logged in to {server} as {}; saved in {}\n",
            caller(me),
            path.display()
        )
    }))
}

pub fn logout(context: &Context) -> Result<u8, CliError> {
    let path = context.env.config_path()?;
    let removed = config::remove(&path)?;
    let document = serde_json::json!({"removed": removed, "path": path.display().to_string()});
    Ok(context.print(&document, |_| {
        if removed {
            format!("logged out: removed {}\n", path.display())
        } else {
            "not logged in: there was no stored token\n".to_owned()
        }
    }))
}

pub async fn whoami(context: &Context) -> Result<u8, CliError> {
    let client = context.client()?;
    let me = client.get("/me").await?;
    context.print(&me, |me| {
        let mut out = fields(&[
            ("server", client.server().to_owned()),
            ("caller", caller(me)),
            ("instance admin", cell(&me["instance_admin"])),
        ]);
        if let Some(orgs) = me["orgs"].as_array().filter(|orgs| !orgs.is_empty()) {
            let mut table = Table::new(&["ORG", "SLUG", "ROLE"]);
            for org in orgs {
                table.row(vec![
                    cell(&org["org_id"]),
                    cell(&org["slug"]),
                    cell(&org["role"]),
                ]);
            }
            out.push('\n');
            out.push_str(&table.render());
        }
        out
    });
    Ok(exit::SUCCESS)
}
