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
    /// Apply pending database migrations as CADENZA_MIGRATION_DATABASE_URL and exit.
    Migrate,
    /// Create (or reuse) a demo org and project and print a new instance-admin token as JSON
    /// (after applying migrations when CADENZA_MIGRATION_DATABASE_URL is set).
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
    /// Print the API's OpenAPI 3.1 document (what `GET /api/v1/openapi.json` serves; needs no
    /// configuration). `docs/openapi.json` is this output.
    Openapi,
    /// Key-encryption keys for secrets.
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Print a new key-encryption key as `id:base64key` (needs no configuration).
    GenerateKek,
    /// Re-wrap every secret's data key with the active key-encryption key, in batches, online.
    /// Safe to interrupt (Ctrl-C stops after the current batch) and to run again: it continues
    /// where it stopped. Exits non-zero while any secret is not re-wrapped.
    Rewrap {
        #[arg(long, default_value_t = 100)]
        batch_size: i64,
    },
    /// How many secrets each key-encryption key wraps.
    Keys,
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
    if let Some(Command::Openapi) = &cli.command {
        #[expect(clippy::print_stdout, reason = "the document is the command's output")]
        {
            print!("{}", cadenza_api::openapi::rendered());
        }
        return Ok(());
    }
    if let Some(Command::Secrets {
        command: SecretsCommand::GenerateKek,
    }) = &cli.command
    {
        let (id, key) = cadenza_crypto::KeyRing::generate_key()?;
        #[expect(clippy::print_stdout, reason = "the key is the command's output")]
        {
            println!("{id}:{}", key.expose_secret());
        }
        return Ok(());
    }
    let config: ApiConfig = cadenza_service_runtime::load_config(figment_from_environment())?;
    cadenza_service_runtime::init_tracing("api", config.log_json);
    match cli.command.unwrap_or(Command::Serve) {
        // Answered above, before any configuration is read.
        Command::Openapi => Ok(()),
        Command::Serve => {
            let shutdown = cadenza_service_runtime::shutdown_on_signal();
            let listener = tokio::net::TcpListener::bind(config.api_listen)
                .await
                .with_context(|| format!("binding {} (CADENZA_API_LISTEN)", config.api_listen))?;
            let api = cadenza_api::build(&config, shutdown).await?;
            api.run(listener).await
        }
        Command::Migrate => {
            cadenza_api::apply_migrations(&config).await?;
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
        Command::Secrets { command } => secrets_command(&config, command).await,
        Command::Bootstrap {
            org,
            project,
            agent_image,
            admin_email,
        } => {
            if config.migration_database_url.is_some() {
                cadenza_api::apply_migrations(&config).await?;
            }
            let pool = cadenza_storage::connect(config.database_url.expose_secret(), 2).await?;
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

async fn secrets_command(config: &ApiConfig, command: SecretsCommand) -> anyhow::Result<()> {
    let pool = cadenza_storage::connect(config.database_url.expose_secret(), 2).await?;
    let keyring = config.keyring()?;
    match command {
        SecretsCommand::GenerateKek => Ok(()),
        SecretsCommand::Keys => {
            let mut conn = pool.acquire().await?;
            for (kek_id, count) in cadenza_storage::secrets::count_by_kek(&mut conn).await? {
                let state = if kek_id == keyring.active_id() {
                    "active"
                } else if keyring.contains(&kek_id) {
                    "decrypt-only"
                } else {
                    "NOT CONFIGURED"
                };
                tracing::info!(%kek_id, secrets = count, state, "key");
            }
            let outdated = cadenza_storage::secrets::count_outdated_format(&mut conn).await?;
            tracing::info!(
                secrets = outdated,
                "secrets in an older format (`secrets rewrap` upgrades them)"
            );
            Ok(())
        }
        SecretsCommand::Rewrap { batch_size } => {
            let stop = cadenza_service_runtime::shutdown_on_signal();
            tracing::info!(
                active = keyring.active_id(),
                batch_size,
                "re-wrapping data keys"
            );
            let report = cadenza_storage::secrets::rewrap_all(
                &pool,
                &keyring,
                batch_size,
                |progress| {
                    tracing::info!(
                        batches = progress.batches,
                        rewrapped = progress.rewrapped,
                        failed = progress.failed,
                        "progress"
                    );
                },
                || stop.is_cancelled(),
            )
            .await?;
            let mut conn = pool.acquire().await?;
            cadenza_storage::audit::record(
                &mut conn,
                &cadenza_storage::audit::AuditEntry {
                    org_id: None,
                    actor_type: "system".into(),
                    actor_id: None,
                    actor_label: Some("cadenza-api secrets rewrap".into()),
                    action: "secrets.rewrapped".into(),
                    resource_type: "key_ring".into(),
                    resource_id: Some(keyring.active_id().to_owned()),
                    diff: serde_json::json!({
                        "rewrapped": report.progress.rewrapped,
                        "failed": report.failed.len(),
                        "complete": !report.interrupted && report.failed.is_empty(),
                    }),
                    request_id: None,
                    ip: None,
                    user_agent: None,
                },
            )
            .await?;
            for (id, why) in &report.failed {
                tracing::error!(secret_id = %id, error = %why, "could not re-wrap");
            }
            for (kek_id, count) in &report.by_kek {
                tracing::info!(%kek_id, secrets = count, "secrets per key");
            }
            if report.interrupted {
                anyhow::bail!(
                    "interrupted after {} secrets; run again to continue",
                    report.progress.rewrapped
                );
            }
            if !report.failed.is_empty() {
                anyhow::bail!("{} secrets could not be re-wrapped", report.failed.len());
            }
            tracing::info!(
                rewrapped = report.progress.rewrapped,
                "every data key is wrapped by the active key"
            );
            Ok(())
        }
    }
}
