//! `cadenza`, the command line for Cadenza's public API: start and follow runs, read their
//! journals and diffs, manage projects, orgs and secrets. It talks to `/api/v1` only.

pub mod client;
pub mod commands;
pub mod config;
pub mod error;
pub mod follow;
pub mod input;
pub mod output;

use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::error::{CliError, exit};
use crate::output::OutputMode;

#[derive(Parser)]
#[command(
    name = "cadenza",
    version,
    about = "Start, follow and manage Cadenza runs from the command line",
    after_help = "Exit codes: 0 success (a followed run succeeded), 1 a followed run failed, \
                  2 a followed run was cancelled, 3 the API refused the request, 4 not logged \
                  in or not allowed, 5 the server could not be reached, 6 a local error, \
                  64 bad arguments."
)]
pub struct Cli {
    /// `human` (tables, readable lines) or `json` (the API's JSON; errors as JSON on stderr).
    #[arg(
        long,
        short = 'o',
        global = true,
        value_enum,
        default_value_t,
        env = "CADENZA_OUTPUT"
    )]
    pub output: OutputMode,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Store a server URL and token, checked with the server first.
    Login(commands::auth::LoginArgs),
    /// Forget the stored server and token.
    Logout,
    /// Who the token belongs to, its orgs and roles.
    Whoami,
    /// Runs: start, follow, list, inspect, cancel, talk to.
    #[command(subcommand)]
    Runs(commands::runs::RunsCommand),
    /// Projects: list, show, create.
    #[command(subcommand)]
    Projects(commands::projects::ProjectsCommand),
    /// Orgs the caller belongs to.
    #[command(subcommand)]
    Orgs(commands::orgs::OrgsCommand),
    /// Org and project secrets (values are write-only, read from standard input).
    #[command(subcommand)]
    Secrets(commands::secrets::SecretsCommand),
    /// Instance administration.
    #[command(subcommand)]
    Admin(commands::admin::AdminCommand),
    /// Print a shell completion script.
    Completions(CompletionsArgs),
}

#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell.
    pub shell: CompletionShell,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

/// Parses the command line, runs the command, prints an error if there is one, and says how
/// the process exits.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let code = if err.use_stderr() {
                exit::USAGE
            } else {
                exit::SUCCESS
            };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    let mode = cli.output;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            output::print_error(mode, &CliError::io("starting the async runtime", err));
            return ExitCode::from(exit::LOCAL);
        }
    };
    let env = config::Env::from_process();
    match runtime.block_on(run(cli, env)) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            output::print_error(mode, &err);
            ExitCode::from(err.exit_code())
        }
    }
}

/// Runs one command; the exit code when it did not fail.
pub async fn run(cli: Cli, env: config::Env) -> Result<u8, CliError> {
    let context = commands::Context {
        output: cli.output,
        env,
    };
    match cli.command {
        Command::Login(args) => commands::auth::login(&context, args).await,
        Command::Logout => commands::auth::logout(&context),
        Command::Whoami => commands::auth::whoami(&context).await,
        Command::Runs(command) => commands::runs::run(&context, command).await,
        Command::Projects(command) => commands::projects::run(&context, command).await,
        Command::Orgs(command) => commands::orgs::run(&context, command).await,
        Command::Secrets(command) => commands::secrets::run(&context, command).await,
        Command::Admin(command) => commands::admin::run(&context, command).await,
        Command::Completions(args) => {
            let shell = match args.shell {
                CompletionShell::Bash => clap_complete::Shell::Bash,
                CompletionShell::Zsh => clap_complete::Shell::Zsh,
                CompletionShell::Fish => clap_complete::Shell::Fish,
            };
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "cadenza",
                &mut std::io::stdout(),
            );
            Ok(exit::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[tokio::test]
    async fn a_secret_value_given_as_an_argument_is_refused_without_being_repeated() {
        let cli = Cli::try_parse_from([
            "cadenza", "secrets", "set", "NAME", "--org", "o", "hunter22",
        ])
        .expect("parses, to be refused");
        let err = run(cli, config::Env::default()).await.expect_err("refused");
        assert_eq!(err.exit_code(), exit::USAGE);
        assert!(!err.to_string().contains("hunter22"), "{err}");
        assert!(err.to_string().contains("standard input"), "{err}");
    }
}
