//! `cadenza runs …`: start (and follow), list, show, logs, diff, files, export, cancel, retry,
//! message.

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::client::{Client, segment};
use crate::commands::{Context, more_hint, resolve_project};
use crate::error::{CliError, exit};
use crate::follow::{self, FollowSettings, Outcome, Resume};
use crate::input::strip_final_newline;
use crate::output::{
    OutputMode, Table, TimelinePrinter, cell, event_line, fields, shorten, time_cell,
};

/// Journal entries read per page by `runs logs` without `--follow`.
const LOG_PAGE: u32 = 1000;
/// Pages `runs logs` reads at most (a million entries).
const MAX_LOG_PAGES: usize = 1000;

#[derive(Subcommand)]
pub enum RunsCommand {
    /// Start a run of a project; `--follow` prints its timeline until it ends and exits with
    /// its outcome (0 succeeded, 1 failed, 2 cancelled).
    Start(StartArgs),
    /// List runs, newest first.
    List(ListArgs),
    /// Show one run.
    Show { id: String },
    /// Print a run's journal; `--follow` keeps printing until the run ends.
    Logs(LogsArgs),
    /// Print a run's patch (git format) to stdout.
    Diff { id: String },
    /// Cancel a run.
    Cancel { id: String },
    /// Run an ended run's prompt again as a new run; `--follow` prints the new run's timeline.
    Retry(RetryArgs),
    /// List the files a run's patch changes, with line counts.
    Files { id: String },
    /// Save a run (metadata, whole journal, patch) as a .tar.gz.
    Export(ExportArgs),
    /// Send a message to a run's agent (to a succeeded run whose workspace is kept: a
    /// follow-up turn).
    Message(MessageArgs),
}

#[derive(Args)]
pub struct StartArgs {
    /// A project id, or `org-slug/project-slug`.
    #[arg(long, short = 'p')]
    pub project: String,
    /// What the agent is to do; `-` reads it from standard input.
    pub prompt: String,
    /// Print the run's timeline until it ends; exit with its outcome.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Starting again with the same key returns the first run instead of a second one.
    #[arg(long)]
    pub idempotency_key: Option<String>,
}

#[derive(Args)]
pub struct ListArgs {
    /// Only this project's runs (an id or `org-slug/project-slug`).
    #[arg(long, short = 'p')]
    pub project: Option<String>,
    /// Only runs in this state (queued, scheduled, provisioning, running, retrying, succeeded,
    /// failed, cancelled).
    #[arg(long, short = 's')]
    pub state: Option<String>,
    /// At most this many (1-500).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// The `next_cursor` of the page before.
    #[arg(long)]
    pub cursor: Option<String>,
}

#[derive(Args)]
pub struct LogsArgs {
    pub id: String,
    /// Keep printing until the run ends; exit with its outcome.
    #[arg(long, short = 'f')]
    pub follow: bool,
}

#[derive(Args)]
pub struct RetryArgs {
    pub id: String,
    /// Print the new run's timeline until it ends; exit with its outcome.
    #[arg(long, short = 'f')]
    pub follow: bool,
}

#[derive(Args)]
pub struct ExportArgs {
    pub id: String,
    /// Where to write the archive (default `run-<id>.tar.gz` in the current directory).
    #[arg(long)]
    pub to: Option<std::path::PathBuf>,
}

#[derive(Args)]
pub struct MessageArgs {
    pub id: String,
    /// The message; `-` reads it from standard input.
    pub text: String,
    #[arg(long)]
    pub idempotency_key: Option<String>,
}

pub async fn run(context: &Context, command: RunsCommand) -> Result<u8, CliError> {
    let client = context.client()?;
    match command {
        RunsCommand::Start(args) => start(context, &client, args).await,
        RunsCommand::List(args) => list(context, &client, args).await,
        RunsCommand::Show { id } => {
            let run = client.get(&format!("/runs/{}", segment(&id))).await?;
            Ok(context.print(&run, run_fields))
        }
        RunsCommand::Logs(args) => logs(context, &client, args).await,
        RunsCommand::Diff { id } => diff(context, &client, &id).await,
        RunsCommand::Cancel { id } => {
            let receipt = client
                .post(&format!("/runs/{}/cancel", segment(&id)), None)
                .await?;
            Ok(context.print(&receipt, |receipt| {
                let state = receipt["state"].as_str().unwrap_or_default();
                if state == "cancelled" {
                    format!("run {id} cancelled\n")
                } else {
                    format!(
                        "run {id} ({state}) will be cancelled by its worker (correlation id {})\n",
                        cell(&receipt["correlation_id"])
                    )
                }
            }))
        }
        RunsCommand::Message(args) => message(context, &client, args).await,
        RunsCommand::Retry(args) => retry(context, &client, args).await,
        RunsCommand::Files { id } => files(context, &client, &id).await,
        RunsCommand::Export(args) => export(context, &client, args).await,
    }
}

async fn retry(context: &Context, client: &Client, args: RetryArgs) -> Result<u8, CliError> {
    let receipt = client
        .post(&format!("/runs/{}/retry", segment(&args.id)), None)
        .await?;
    let new_run = receipt["retry_run_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if args.follow {
        return logs(
            context,
            client,
            LogsArgs {
                id: new_run,
                follow: true,
            },
        )
        .await;
    }
    Ok(context.print(&receipt, |_| {
        format!(
            "run {} retried as run {new_run} (`cadenza runs logs {new_run} --follow`)\n",
            args.id
        )
    }))
}

async fn files(context: &Context, client: &Client, id: &str) -> Result<u8, CliError> {
    let listed = client.get(&format!("/runs/{}/files", segment(id))).await?;
    Ok(context.print(&listed, |listed| {
        let mut table = Table::new(&["STATUS", "+", "-", "PATH"]);
        for file in listed["files"].as_array().into_iter().flatten() {
            let path = match file["old_path"].as_str() {
                Some(old) => format!("{old} -> {}", cell(&file["path"])),
                None => cell(&file["path"]),
            };
            let (added, removed) = if file["binary"] == Value::Bool(true) {
                ("bin".to_owned(), "bin".to_owned())
            } else {
                (cell(&file["additions"]), cell(&file["deletions"]))
            };
            table.row(vec![cell(&file["status"]), added, removed, path]);
        }
        let mut text = table.render();
        if let Some(note) = listed["omitted"].as_str() {
            text.push_str(note);
            text.push('\n');
        }
        text
    }))
}

async fn export(context: &Context, client: &Client, args: ExportArgs) -> Result<u8, CliError> {
    let archive = client
        .get_bytes(&format!("/runs/{}/export", segment(&args.id)))
        .await?;
    let to = args
        .to
        .unwrap_or_else(|| std::path::PathBuf::from(format!("run-{}.tar.gz", args.id)));
    std::fs::write(&to, &archive)
        .map_err(|err| CliError::io(format!("writing {}", to.display()), err))?;
    let summary =
        json!({"run_id": args.id, "path": to.display().to_string(), "bytes": archive.len()});
    Ok(context.print(&summary, |_| {
        format!("wrote {} ({} bytes)\n", to.display(), archive.len())
    }))
}

/// Text given as an argument, or all of standard input for `-`.
fn text_argument(raw: String, what: &str) -> Result<String, CliError> {
    if raw != "-" {
        return Ok(raw);
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
        .map_err(|err| CliError::io(format!("reading the {what} from standard input"), err))?;
    Ok(strip_final_newline(&text).to_owned())
}

async fn start(context: &Context, client: &Client, args: StartArgs) -> Result<u8, CliError> {
    let project = resolve_project(client, &args.project).await?;
    let prompt = text_argument(args.prompt, "prompt")?;
    let mut body = json!({ "prompt": prompt });
    if let Some(key) = &args.idempotency_key {
        body["idempotency_key"] = json!(key);
    }
    let run = client
        .post(
            &format!("/projects/{}/runs", segment(&project)),
            Some(&body),
        )
        .await?;
    let run_id = run["id"]
        .as_str()
        .ok_or_else(|| CliError::Protocol {
            server: client.server().to_owned(),
            detail: "the new run has no id".into(),
        })?
        .to_owned();
    if !args.follow {
        return Ok(context.print(&run, |run| {
            format!(
                "run {run_id} {}\n",
                run["state"].as_str().unwrap_or("queued")
            )
        }));
    }
    if context.output == OutputMode::Human {
        eprintln!("run {run_id} started; following its timeline");
    }
    follow_run(context, client, &run_id).await
}

async fn follow_run(context: &Context, client: &Client, run_id: &str) -> Result<u8, CliError> {
    let mut printer = TimelinePrinter::new(context.output, run_id);
    let outcome = follow::follow(
        client,
        run_id,
        Resume::default(),
        FollowSettings::default(),
        &mut printer,
    )
    .await;
    printer.finish();
    let outcome = outcome?;
    if context.output == OutputMode::Human && outcome != Outcome::Succeeded {
        // The reason is on the last line already; this says what the exit code means.
        eprintln!(
            "run {run_id} {}",
            match outcome {
                Outcome::Failed => "failed",
                _ => "was cancelled",
            }
        );
    }
    Ok(outcome.exit_code())
}

async fn list(context: &Context, client: &Client, args: ListArgs) -> Result<u8, CliError> {
    let mut query = vec![("limit", args.limit.to_string())];
    if let Some(project) = &args.project {
        query.push(("project_id", resolve_project(client, project).await?));
    }
    if let Some(state) = args.state {
        query.push(("state", state));
    }
    if let Some(cursor) = args.cursor {
        query.push(("cursor", cursor));
    }
    let page = client.get_query("/runs", &query).await?;
    let code = context.print(&page, |page| {
        let mut table = Table::new(&["ID", "STATE", "PROJECT", "CREATED", "PROMPT"]);
        for run in page["items"].as_array().into_iter().flatten() {
            table.row(vec![
                cell(&run["id"]),
                cell(&run["state"]),
                cell(&run["project_id"]),
                time_cell(&run["created_at"]),
                shorten(run["prompt"].as_str().unwrap_or_default(), 40),
            ]);
        }
        table.render()
    });
    if context.output == OutputMode::Human {
        more_hint(&page);
    }
    Ok(code)
}

fn run_fields(run: &Value) -> String {
    let reason = match run["terminal_reason"]["code"].as_str() {
        Some(code) => format!("{code}: {}", cell(&run["terminal_reason"]["message"])),
        None => "-".to_owned(),
    };
    let mut out = fields(&[
        ("id", cell(&run["id"])),
        ("state", cell(&run["state"])),
        ("attempt", cell(&run["attempt"])),
        ("project", cell(&run["project_id"])),
        ("org", cell(&run["org_id"])),
        ("reason", reason),
        ("created", time_cell(&run["created_at"])),
        ("running since", time_cell(&run["running_at"])),
        ("finished", time_cell(&run["finished_at"])),
        ("journal entries", cell(&run["last_event_seq"])),
        ("idempotency key", cell(&run["idempotency_key"])),
    ]);
    out.push_str("\nprompt:\n");
    out.push_str(run["prompt"].as_str().unwrap_or_default());
    out.push('\n');
    if let Some(message) = run["final_message"].as_str() {
        out.push_str("\nfinal message:\n");
        out.push_str(message);
        out.push('\n');
    }
    out
}

async fn logs(context: &Context, client: &Client, args: LogsArgs) -> Result<u8, CliError> {
    if args.follow {
        // Checks the run exists (a clear 404) before any stream is opened.
        client.get(&format!("/runs/{}", segment(&args.id))).await?;
        return follow_run(context, client, &args.id).await;
    }
    let path = format!("/runs/{}/events", segment(&args.id));
    let mut cursor = 0_i64;
    for _ in 0..MAX_LOG_PAGES {
        let page = client
            .get_query(
                &path,
                &[
                    ("cursor", cursor.to_string()),
                    ("limit", LOG_PAGE.to_string()),
                    ("include_raw", "false".to_owned()),
                ],
            )
            .await?;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        for entry in &items {
            match context.output {
                OutputMode::Json => println!("{entry}"),
                OutputMode::Human => println!("{}", event_line(entry)),
            }
        }
        match items.last().and_then(|entry| entry["seq"].as_i64()) {
            Some(last) if items.len() as u32 == LOG_PAGE => cursor = last,
            _ => break,
        }
    }
    Ok(exit::SUCCESS)
}

async fn diff(context: &Context, client: &Client, id: &str) -> Result<u8, CliError> {
    let (patch, base_commit) = client
        .get_patch(&format!("/runs/{}/diff", segment(id)))
        .await?;
    match context.output {
        OutputMode::Json => crate::output::print_json(&json!({
            "run_id": id,
            "base_commit": base_commit,
            "patch": patch,
        })),
        OutputMode::Human => print!("{patch}"),
    }
    Ok(exit::SUCCESS)
}

async fn message(context: &Context, client: &Client, args: MessageArgs) -> Result<u8, CliError> {
    let text = text_argument(args.text, "message")?;
    let mut body = json!({ "text": text });
    if let Some(key) = &args.idempotency_key {
        body["idempotency_key"] = json!(key);
    }
    let receipt = client
        .post(
            &format!("/runs/{}/messages", segment(&args.id)),
            Some(&body),
        )
        .await?;
    Ok(context.print(&receipt, |receipt| {
        match receipt["follow_up_run_id"].as_str() {
            Some(follow_up) => format!(
                "run {} had ended; the message started the follow-up run {follow_up} \
             (`cadenza runs logs {follow_up} --follow`)\n",
                args.id
            ),
            None => format!(
                "message to run {} accepted (correlation id {}){}\n",
                args.id,
                cell(&receipt["correlation_id"]),
                if receipt["delivered"] == Value::Bool(true) {
                    "; delivered"
                } else {
                    "; the worker delivers it within a heartbeat"
                }
            ),
        }
    }))
}
