use anyhow::Context;
use cadenza_api::ApiConfig;
use cadenza_service_runtime::config::figment_from_environment;
use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;

#[derive(Parser)]
#[command(name = "cadenza-api", about = "Cadenza's public HTTP API")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Create (or reuse) a demo org and project and print a new instance-admin token as JSON.
    Bootstrap {
        #[arg(long, default_value = "demo")]
        org: String,
        #[arg(long, default_value = "demo")]
        project: String,
        #[arg(long)]
        agent_image: String,
        /// The instance administrator who owns the token (created if missing).
        #[arg(long, default_value = "admin@localhost")]
        admin_email: String,
    },
    /// Instance administration from the command line.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Make a user an instance administrator (created if they have not logged in yet).
    Grant { email: String },
    /// Take instance administration away from a user.
    Revoke { email: String },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config: ApiConfig = cadenza_service_runtime::load_config(figment_from_environment())?;
    cadenza_service_runtime::init_tracing("api", config.log_json);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let shutdown = cadenza_service_runtime::shutdown_on_signal();
            let listener = tokio::net::TcpListener::bind(config.api_listen)
                .await
                .with_context(|| format!("binding {} (CADENZA_API_LISTEN)", config.api_listen))?;
            let api = cadenza_api::build(&config, shutdown).await?;
            api.run(listener).await
        }
        Command::Migrate => {
            let pool = cadenza_storage::connect(config.database_url.expose_secret(), 2).await?;
            cadenza_storage::migrate(&pool).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Admin { command } => {
            let pool = cadenza_storage::connect(config.database_url.expose_secret(), 2).await?;
            let mut conn = pool.acquire().await?;
            let (email, grant) = match command {
                AdminCommand::Grant { email } => (email, true),
                AdminCommand::Revoke { email } => (email, false),
            };
            let user = cadenza_storage::users::ensure(&mut conn, &email, None).await?;
            cadenza_storage::users::set_instance_admin(&mut conn, user.id, grant).await?;
            tracing::info!(%email, instance_admin = grant, "instance administration updated");
            Ok(())
        }
        Command::Bootstrap {
            org,
            project,
            agent_image,
            admin_email,
        } => {
            let pool = cadenza_storage::connect(config.database_url.expose_secret(), 2).await?;
            cadenza_storage::migrate(&pool).await?;
            let done = cadenza_api::bootstrap::bootstrap(
                &pool,
                &org,
                &project,
                &agent_image,
                &admin_email,
            )
            .await?;
            #[expect(
                clippy::print_stdout,
                reason = "the bootstrap result is the command's output"
            )]
            {
                println!("{}", serde_json::to_string_pretty(&done)?);
            }
            Ok(())
        }
    }
}
