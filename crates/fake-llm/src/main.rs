//! `cadenza-fake-llm`: the scripted OpenAI-compatible LLM as a process, for container images and
//! manual runs against a real agent-server.

use std::io::IsTerminal;
use std::net::SocketAddr;

use anyhow::Context;
use cadenza_fake_llm::{self as fake_llm, FakeLlmConfig};
use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    version,
    about = "A scripted OpenAI-compatible chat-completions server"
)]
struct Args {
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to bind.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Bearer key every /v1 request must carry; none leaves the API open. The environment
    /// variable keeps the key out of process listings.
    #[arg(long, env = "CADENZA_FAKE_LLM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Model name listed by GET /v1/models.
    #[arg(long, default_value = fake_llm::DEFAULT_MODEL)]
    model: String,
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
    let config = FakeLlmConfig {
        api_key: args.api_key.filter(|key| !key.is_empty()),
        model: args.model,
        ..FakeLlmConfig::default()
    };
    if config.api_key.is_none() {
        tracing::warn!("no API key configured: the API is open to anyone who can reach it");
    }

    let address: SocketAddr = tokio::net::lookup_host((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("cannot resolve --host {}", args.host))?
        .next()
        .with_context(|| format!("--host {} resolves to no address", args.host))?;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    tracing::info!(%address, version = env!("CARGO_PKG_VERSION"), "fake LLM listening");

    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    fake_llm::serve(listener, config, shutdown)
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
