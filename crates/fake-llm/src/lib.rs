//! A scripted, OpenAI-compatible chat-completions server that drives the real OpenHands
//! agent-server through a task without a real model.
//!
//! It speaks the task language of the fake agent-server (see [`script`]): each `$ ` line of the
//! user's task becomes one `terminal` tool call, in order, then a `finish` tool call carries the
//! last other line. Each request is answered from its own content only, so concurrent, retried
//! or repeated requests get consistent answers.
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use cadenza_fake_llm::{FakeLlmConfig, spawn};
//!
//! let llm = spawn(FakeLlmConfig::with_api_key("sk-fake")).await?;
//! // Goes into the conversation's LLM config as `base_url`, with model `openai/fake-model`.
//! let base_url = llm.base_url();
//! # let _ = base_url;
//! # Ok(())
//! # }
//! ```

mod http;
mod openai;
pub mod script;

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Model name listed by `GET /v1/models` when none is configured.
pub const DEFAULT_MODEL: &str = "fake-model";

/// How the fake is started.
#[derive(Clone, Default)]
pub struct FakeLlmConfig {
    /// When set, `/v1/*` requires `Authorization: Bearer <api_key>` and answers 401 otherwise.
    pub api_key: Option<String>,
    /// Listed by `GET /v1/models`; completions echo the requested model instead. Empty means
    /// [`DEFAULT_MODEL`].
    pub model: String,
    /// Every distinct bearer key presented to `/v1/*` (accepted or not), in order, so a test can
    /// prove which keys reached this endpoint (`GET /_fake/api-keys`).
    pub presented: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl FakeLlmConfig {
    /// The keys presented so far.
    pub fn presented_keys(&self) -> Vec<String> {
        match self.presented.lock() {
            Ok(keys) => keys.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn with_api_key(api_key: impl Into<String>) -> Self {
        Self {
            api_key: Some(api_key.into()),
            ..Self::default()
        }
    }

    fn model(&self) -> &str {
        if self.model.is_empty() {
            DEFAULT_MODEL
        } else {
            &self.model
        }
    }
}

impl std::fmt::Debug for FakeLlmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeLlmConfig")
            .field("api_key", &self.api_key.as_ref().map(|_| "[REDACTED]"))
            .field("model", &self.model())
            .finish()
    }
}

/// The routes, for in-process use (`tower::ServiceExt::oneshot`) or a caller's own server.
pub fn router(config: FakeLlmConfig) -> axum::Router {
    http::build_router(config)
}

/// Serves on a bound listener until `shutdown` is cancelled; requests in flight are finished.
pub async fn serve(
    listener: TcpListener,
    config: FakeLlmConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(config))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Starts the fake on `127.0.0.1` with an ephemeral port.
pub async fn spawn(config: FakeLlmConfig) -> std::io::Result<RunningFakeLlm> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let address = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(listener, config, shutdown.clone()));
    Ok(RunningFakeLlm {
        address,
        shutdown,
        task,
    })
}

/// A fake started by [`spawn`]; dropping it stops the server.
#[derive(Debug)]
pub struct RunningFakeLlm {
    address: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl RunningFakeLlm {
    /// The OpenAI base URL, `http://127.0.0.1:PORT/v1`: what an LLM config's `base_url` takes.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.address)
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for RunningFakeLlm {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.task.abort();
    }
}

/// Compiles the README's example, so it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
