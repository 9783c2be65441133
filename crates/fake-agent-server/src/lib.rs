//! A contract-faithful fake of the OpenHands agent-server (`openhands-agent-server` 1.58).
//!
//! It serves the routes, event shapes, status codes and WebSocket protocols a Cadenza worker
//! relies on, but replaces the LLM-driven agent with a scripted one: a user message is a task
//! whose lines starting with `"$ "` are run as terminal commands in the conversation's workspace,
//! and whose last other line is the final answer. Everything else (event log, execution status,
//! replay by `seq`, pause and interrupt, git-delta archives) behaves as the real server does.
//!
//! State lives in memory and disappears with the server.
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use cadenza_fake_agent_server::{FakeAgentServerConfig, spawn};
//!
//! let server = spawn(FakeAgentServerConfig {
//!     session_api_keys: vec!["key".into()],
//!     default_working_dir: "/tmp/project".into(),
//! })
//! .await?;
//! let health = format!("{}/health", server.base_url());
//! # let _ = health;
//! # Ok(())
//! # }
//! ```

mod agent;
mod archive;
mod error;
mod events;
mod http;
mod shell;
mod sockets;
mod state;
mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::state::FakeServer;

/// What the fake is started with; the binary fills it from the same environment variables as the
/// real server (`OH_SESSION_API_KEYS_*`, `SESSION_API_KEY`, `OH_WORKSPACE_PATH`).
#[derive(Debug, Clone)]
pub struct FakeAgentServerConfig {
    /// Accepted `X-Session-API-Key` values; empty turns authentication off.
    pub session_api_keys: Vec<String>,
    /// Working directory of `execute_bash_command` calls that give no `cwd`.
    pub default_working_dir: PathBuf,
}

impl Default for FakeAgentServerConfig {
    fn default() -> Self {
        Self {
            session_api_keys: Vec::new(),
            default_working_dir: PathBuf::from("/workspace/project"),
        }
    }
}

/// The fake's routes, for in-process use (`tower::ServiceExt::oneshot`) or a caller's own server.
/// Runs started through it stop only when their commands end; prefer [`serve`] or [`spawn`],
/// which stop them on shutdown.
pub fn router(config: FakeAgentServerConfig) -> axum::Router {
    http::build_router(Arc::new(FakeServer::new(config, CancellationToken::new())))
}

/// Serves the fake on a bound listener until `shutdown` is cancelled; then closes every socket
/// and kills every running command.
pub async fn serve(
    listener: TcpListener,
    config: FakeAgentServerConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let server = Arc::new(FakeServer::new(config, shutdown.child_token()));
    let app = http::build_router(Arc::clone(&server));
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    server.shutdown.cancel();
    result
}

/// Starts the fake on `127.0.0.1` with an ephemeral port.
pub async fn spawn(config: FakeAgentServerConfig) -> std::io::Result<RunningFakeAgentServer> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let address = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(listener, config, shutdown.clone()));
    Ok(RunningFakeAgentServer {
        address,
        shutdown,
        task,
    })
}

/// A fake started by [`spawn`]; dropping it stops the server, its runs and their commands.
#[derive(Debug)]
pub struct RunningFakeAgentServer {
    address: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl RunningFakeAgentServer {
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }
}

impl Drop for RunningFakeAgentServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.task.abort();
    }
}
