//! One module per command group; what they share: the context, and turning the names a person
//! types (an org slug, `org-slug/project-slug`) into the ids the API takes.

pub mod admin;
pub mod auth;
pub mod orgs;
pub mod projects;
pub mod runs;
pub mod secrets;

use serde_json::Value;

use crate::client::{Client, segment};
use crate::config::{self, Env};
use crate::error::{CliError, exit};
use crate::output::{self, OutputMode};

pub struct Context {
    pub output: OutputMode,
    pub env: Env,
}

impl Context {
    /// A client for the configured server and token (`CADENZA_SERVER` / `CADENZA_TOKEN` win over
    /// the config file).
    pub fn client(&self) -> Result<Client, CliError> {
        let file = match &self.env.server {
            // Both from the environment: the config file is not read at all.
            Some(_) if self.env.token.is_some() => config::ConfigFile::default(),
            _ => config::load(&self.env.config_path()?)?,
        };
        Client::new(&config::resolve(&file, &self.env)?)
    }

    /// Prints a document: as JSON, or as the human form `human` makes of it.
    pub fn print(&self, value: &Value, human: impl FnOnce(&Value) -> String) -> u8 {
        match self.output {
            OutputMode::Json => output::print_json(value),
            OutputMode::Human => print!("{}", human(value)),
        }
        exit::SUCCESS
    }
}

/// Whether `raw` looks like an id (a UUID) rather than a slug.
pub fn is_id(raw: &str) -> bool {
    raw.len() == 36
        && raw.chars().enumerate().all(|(index, c)| match index {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// An org id from an id or a slug of an org the caller belongs to.
pub async fn resolve_org(client: &Client, raw: &str) -> Result<String, CliError> {
    if is_id(raw) {
        return Ok(raw.to_owned());
    }
    let orgs = client.list_all("/orgs").await?;
    orgs.iter()
        .find(|org| org["slug"] == raw)
        .and_then(|org| org["id"].as_str())
        .map(str::to_owned)
        .ok_or_else(|| CliError::Usage(format!("no org with the slug `{raw}` among yours")))
}

/// A project id from an id or `org-slug/project-slug`.
pub async fn resolve_project(client: &Client, raw: &str) -> Result<String, CliError> {
    if is_id(raw) {
        return Ok(raw.to_owned());
    }
    let Some((org, project)) = raw.split_once('/') else {
        return Err(CliError::Usage(format!(
            "`{raw}` is neither a project id nor `org-slug/project-slug`"
        )));
    };
    let org_id = resolve_org(client, org).await?;
    let projects = client
        .list_all(&format!("/orgs/{}/projects", segment(&org_id)))
        .await?;
    projects
        .iter()
        .find(|candidate| candidate["slug"] == project)
        .and_then(|candidate| candidate["id"].as_str())
        .map(str::to_owned)
        .ok_or_else(|| CliError::Usage(format!("no project `{project}` in the org `{org}`")))
}

/// Tells a person on stderr that a list has more pages (JSON output carries `next_cursor`).
pub fn more_hint(page: &Value) {
    if let Some(cursor) = page["next_cursor"].as_str() {
        eprintln!("(more: pass --cursor {cursor})");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_told_from_slugs() {
        assert!(is_id("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"));
        assert!(!is_id("acme"));
        assert!(!is_id("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5g"));
        assert!(!is_id("0190a1b2c3d4-7e5f-8a9b-0c1d2e3f4a5b-"));
    }
}
