//! `cadenza-fake-oidc`: the fake OpenID Connect provider as a process, for manual demos of the
//! browser login without a real identity provider.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use cadenza_fake_oidc::{self as fake_oidc, FakeClient, FakeOidcConfig, FakeUser};
use clap::Parser;
use tokio_util::sync::CancellationToken;
use url::Url;

#[derive(Parser)]
#[command(
    version,
    about = "A fake OpenID Connect provider that logs users in without asking"
)]
struct Args {
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to bind.
    #[arg(long, default_value_t = 8090)]
    port: u16,
    /// Issuer URL, when browsers and relying parties reach the fake under another address
    /// (e.g. behind a proxy or a container port mapping). Defaults to http://HOST:PORT.
    #[arg(long)]
    issuer: Option<Url>,
    /// JSON file with users, clients and misbehaviour, in the shape of `FakeOidcConfig`
    /// (see the crate README). Flags below add to it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Registers a client with this id (needs --client-secret and --redirect-uri).
    #[arg(long, requires_all = ["client_secret", "redirect_uri"])]
    client_id: Option<String>,
    /// The secret of --client-id. The environment variable keeps it out of process listings.
    #[arg(long, env = "CADENZA_FAKE_OIDC_CLIENT_SECRET", hide_env_values = true)]
    client_secret: Option<String>,
    /// Redirect URI of --client-id; repeatable.
    #[arg(long)]
    redirect_uri: Vec<String>,
    /// Adds a user with this email (also its subject); repeatable. Without any user, a demo
    /// user demo@example.com is created.
    #[arg(long = "user")]
    users: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Container logs are files, where colour codes are noise.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    let args = Args::parse();
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --config {}", path.display()))?;
            serde_json::from_str::<FakeOidcConfig>(&text).with_context(|| {
                format!("--config {} is not a valid configuration", path.display())
            })?
        }
        None => FakeOidcConfig::default(),
    };
    if let Some(issuer) = args.issuer {
        config.issuer = Some(issuer);
    }
    if let (Some(client_id), Some(client_secret)) = (args.client_id, args.client_secret) {
        config.clients.push(FakeClient {
            client_id,
            client_secret,
            redirect_uris: args.redirect_uri,
        });
    }
    for email in args.users {
        config.users.push(FakeUser::new(email.clone(), email));
    }
    if config.clients.is_empty() {
        anyhow::bail!(
            "no client configured: pass --client-id/--client-secret/--redirect-uri or --config"
        );
    }
    if config.users.is_empty() {
        tracing::info!("no user configured; logging everyone in as demo@example.com");
        config
            .users
            .push(FakeUser::new("demo@example.com", "demo@example.com").with_name("Demo User"));
    }

    let address: SocketAddr = tokio::net::lookup_host((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("cannot resolve --host {}", args.host))?
        .next()
        .with_context(|| format!("--host {} resolves to no address", args.host))?;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    let issuer = config
        .issuer
        .as_ref()
        .map_or_else(|| format!("http://{address}"), Url::to_string);
    tracing::info!(%address, %issuer, clients = config.clients.len(), users = config.users.len(), "fake OpenID Connect provider listening");

    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    fake_oidc::serve(listener, config, shutdown)
        .await
        .context("server failed")?;
    tracing::info!("stopped");
    Ok(())
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
    shutdown.cancel();
}
