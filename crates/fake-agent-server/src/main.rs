//! `cadenza-fake-agent-server`: the fake OpenHands agent-server as a process, for container
//! images and manual runs. Flags and environment follow the real `agent-server`.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use cadenza_fake_agent_server::{self as fake_agent, FakeAgentServerConfig};
use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(version, about = "A scripted fake of the OpenHands agent-server")]
struct Args {
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to bind.
    #[arg(long, default_value_t = 8000)]
    port: u16,
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
    let environment: BTreeMap<String, String> = std::env::vars().collect();
    let config = FakeAgentServerConfig {
        session_api_keys: session_api_keys(&environment)?,
        default_working_dir: environment
            .get("OH_WORKSPACE_PATH")
            .map_or_else(|| PathBuf::from("/workspace/project"), PathBuf::from),
    };
    if config.session_api_keys.is_empty() {
        tracing::warn!("no session API key configured: the API is open to anyone who can reach it");
    }

    let address: SocketAddr = tokio::net::lookup_host((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("cannot resolve --host {}", args.host))?
        .next()
        .with_context(|| format!("--host {} resolves to no address", args.host))?;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    tracing::info!(%address, version = env!("CARGO_PKG_VERSION"), "fake agent-server listening");

    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    fake_agent::serve(listener, config, shutdown)
        .await
        .context("server failed")?;
    tracing::info!("stopped");
    Ok(())
}

/// Keys the way the real server reads them: `OH_SESSION_API_KEYS_0`, `_1`, ... (or a JSON list in
/// `OH_SESSION_API_KEYS`), and `SESSION_API_KEY` only when none of those is set. Empty keys are
/// dropped; no key at all turns authentication off.
fn session_api_keys(environment: &BTreeMap<String, String>) -> anyhow::Result<Vec<String>> {
    let mut keys: Vec<String> = match environment.get("OH_SESSION_API_KEYS") {
        Some(list) if !list.trim().is_empty() => serde_json::from_str(list)
            .context("OH_SESSION_API_KEYS must be a JSON list of strings")?,
        _ => Vec::new(),
    };
    keys.extend(
        (0..)
            .map_while(|index| environment.get(&format!("OH_SESSION_API_KEYS_{index}")))
            .cloned(),
    );
    keys.retain(|key| !key.is_empty());
    if keys.is_empty() {
        keys.extend(
            environment
                .get("SESSION_API_KEY")
                .filter(|key| !key.is_empty())
                .cloned(),
        );
    }
    Ok(keys)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn environment(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    }

    #[test]
    fn indexed_keys_are_read_in_order_and_win_over_the_legacy_key() {
        let keys = session_api_keys(&environment(&[
            ("OH_SESSION_API_KEYS_0", "a"),
            ("OH_SESSION_API_KEYS_1", "b"),
            ("SESSION_API_KEY", "legacy"),
        ]))
        .expect("valid environment");
        assert_eq!(keys, ["a", "b"]);
    }

    #[test]
    fn the_legacy_key_is_used_when_no_indexed_key_is_set() {
        let keys = session_api_keys(&environment(&[("SESSION_API_KEY", "legacy")]))
            .expect("valid environment");
        assert_eq!(keys, ["legacy"]);
    }

    #[test]
    fn empty_keys_leave_authentication_off() {
        let keys = session_api_keys(&environment(&[("OH_SESSION_API_KEYS_0", "")]))
            .expect("valid environment");
        assert!(keys.is_empty());
    }

    #[test]
    fn a_json_list_is_accepted() {
        let keys = session_api_keys(&environment(&[("OH_SESSION_API_KEYS", r#"["x","y"]"#)]))
            .expect("valid environment");
        assert_eq!(keys, ["x", "y"]);
    }
}
