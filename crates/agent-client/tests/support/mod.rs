//! The two agent-servers the conformance suite runs against, behind one harness.
//!
//! - `Backend::Fake`: `cadenza/fake-agent-server:dev`, whose scripted agent reads the task.
//! - `Backend::Real`: `cadenza/openhands-agent-server:1.58.0` (the real server from PyPI)
//!   driven by `cadenza/fake-llm:dev`, which reads the same task language from each request.
//!
//! Both run in containers with their port published on 127.0.0.1 only; the real server reaches
//! the fake LLM over a network the harness creates, by its alias. A test gets a fresh set of
//! containers, removed when the harness is dropped.

pub mod docker;

use std::time::Duration;

use cadenza_agent_client::{
    AgentServerClient, AgentSpec, ExecutionStatus, LlmConfig, StartConversationRequest,
};
use secrecy::SecretString;
use serde_json::json;
use url::Url;
use uuid::Uuid;

use self::docker::{Container, Network, require_image};

pub const WORKSPACE: &str = "/workspace/project";
const SESSION_KEY: &str = "conformance-session-key";
/// The LLM key every conversation carries; the real server's LLM (the fake) refuses any other.
pub const LLM_KEY: &str = "sk-conformance";
/// Set in every server container's environment, as the worker sets a project's `agent.env`.
pub const CONTAINER_ENV: (&str, &str) = ("CONFORMANCE_PROJECT_ENV", "from-the-container");
const LLM_ALIAS: &str = "fake-llm";
const LLM_PORT: u16 = 8080;
/// The real server imports its whole tool stack before binding its port (about 6 s on two
/// cores); a loaded CI machine running several tests at once takes longer.
const STARTUP_BUDGET: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Fake,
    Real,
}

impl Backend {
    /// Upper bound for one task to reach the expected state. The real server runs each command
    /// through tmux and makes an LLM call per step, so it is slower than the fake.
    pub fn budget(self) -> Duration {
        match self {
            Backend::Fake => Duration::from_secs(30),
            Backend::Real => Duration::from_secs(90),
        }
    }
}

fn fake_agent_image() -> String {
    cadenza_testkit::docker::fake_agent_image()
}

fn real_agent_image() -> String {
    std::env::var("CADENZA_TEST_REAL_AGENT_IMAGE")
        .unwrap_or_else(|_| "cadenza/openhands-agent-server:1.58.0".to_owned())
}

fn fake_llm_image() -> String {
    std::env::var("CADENZA_TEST_FAKE_LLM_IMAGE")
        .unwrap_or_else(|_| "cadenza/fake-llm:dev".to_owned())
}

/// A running agent-server and what it takes to drive it.
pub struct AgentServerUnderTest {
    pub backend: Backend,
    pub client: AgentServerClient,
    base_url: Url,
    llm_base_url: String,
    // Dropped in declaration order: the containers leave the network before it is removed.
    server: Container,
    _llm: Option<Container>,
    _network: Option<Network>,
}

impl AgentServerUnderTest {
    pub async fn start(backend: Backend) -> Self {
        let run = Uuid::new_v4().simple().to_string();
        let prefix = format!("cadenza-conformance-{}", &run[..12]);
        let session_key_env = format!("OH_SESSION_API_KEYS_0={SESSION_KEY}");
        let project_env = format!("{}={}", CONTAINER_ENV.0, CONTAINER_ENV.1);

        // In this order so that, should anything below panic, the locals drop in reverse: the
        // containers leave the network before it is removed.
        let (network, llm, server) = match backend {
            Backend::Fake => {
                let image = fake_agent_image();
                require_image(&image);
                let server = Container::run(
                    format!("{prefix}-agent"),
                    &[
                        "-p",
                        "127.0.0.1::8000",
                        "-e",
                        &session_key_env,
                        "-e",
                        &project_env,
                        &image,
                    ],
                );
                (None, None, server)
            }
            Backend::Real => {
                let (agent_image, llm_image) = (real_agent_image(), fake_llm_image());
                require_image(&agent_image);
                require_image(&llm_image);
                let network = Network::create(prefix.clone());
                let llm_key_env = format!("CADENZA_FAKE_LLM_API_KEY={LLM_KEY}");
                let port = LLM_PORT.to_string();
                let llm = Container::run(
                    format!("{prefix}-llm"),
                    &[
                        "--network",
                        &network.name,
                        "--network-alias",
                        LLM_ALIAS,
                        "-e",
                        &llm_key_env,
                        &llm_image,
                        "--host",
                        "0.0.0.0",
                        "--port",
                        &port,
                    ],
                );
                // A single-instance server: no ownership lease to wait out.
                let server = Container::run(
                    format!("{prefix}-agent"),
                    &[
                        "--network",
                        &network.name,
                        "-p",
                        "127.0.0.1::8000",
                        "-e",
                        &session_key_env,
                        "-e",
                        "OH_LEASE_TTL_SECONDS=0",
                        "-e",
                        &project_env,
                        &agent_image,
                    ],
                );
                (Some(network), Some(llm), server)
            }
        };

        let base_url = Url::parse(&format!("http://{}", server.published_address(8000))).unwrap();
        let client = client_for(&base_url, SESSION_KEY);
        let deadline = tokio::time::Instant::now() + STARTUP_BUDGET;
        loop {
            let error = match client.health().await {
                Ok(()) => break,
                Err(error) => error,
            };
            // A server that exited will never answer: fail now, with its output.
            if !error.is_retryable() || !server.is_running() {
                panic!(
                    "the {backend:?} agent-server failed to start: {error}\n{}",
                    server.logs()
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the {backend:?} agent-server did not answer /health within {STARTUP_BUDGET:?}\n{}",
                server.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Self {
            backend,
            client,
            base_url,
            llm_base_url: format!("http://{LLM_ALIAS}:{LLM_PORT}/v1"),
            server,
            _llm: llm,
            _network: network,
        }
    }

    /// A client for the same server with another session key.
    pub fn client_with_key(&self, key: &str) -> AgentServerClient {
        client_for(&self.base_url, key)
    }

    /// The LLM settings a worker would send. The fake agent-server ignores them; the real one
    /// calls the fake LLM with them (`api_mode: chat`: the fake serves chat completions only).
    pub fn llm(&self, stream: bool) -> LlmConfig {
        let mut llm = LlmConfig::new("openai/fake-model")
            .with_api_key(SecretString::from(LLM_KEY))
            .with_base_url(self.llm_base_url.clone())
            .with_usage_id("agent");
        llm.stream = Some(stream);
        // A failing LLM call should fail the test quickly, not after the default back-off.
        llm.num_retries = Some(1);
        llm.extra.insert("api_mode".into(), json!("chat"));
        llm
    }

    /// A conversation request for `task` (started at once) or none, with a fresh id.
    pub fn request(&self, task: Option<&str>) -> StartConversationRequest {
        let mut request = StartConversationRequest::new(
            WORKSPACE,
            AgentSpec::with_standard_tools(self.llm(false)),
        )
        .with_conversation_id(Uuid::new_v4())
        .with_max_iterations(20)
        .with_autotitle(false);
        request.initial_message = task.map(str::to_owned);
        request
    }

    /// Polls the conversation over REST until `accept` holds; a status seen on the socket is
    /// only a hint.
    pub async fn wait_for_status(
        &self,
        id: Uuid,
        what: &str,
        accept: impl Fn(&ExecutionStatus) -> bool,
    ) -> ExecutionStatus {
        let poll = async {
            loop {
                let status = self
                    .client
                    .get_conversation(id)
                    .await
                    .unwrap()
                    .execution_status;
                if accept(&status) {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        match tokio::time::timeout(self.backend.budget(), poll).await {
            Ok(status) => status,
            Err(_) => panic!(
                "{:?}: conversation {id} did not become {what} within {:?}; now {:?}\n{}",
                self.backend,
                self.backend.budget(),
                self.client
                    .get_conversation(id)
                    .await
                    .map(|info| info.execution_status),
                self.server.logs()
            ),
        }
    }

    /// Runs a shell command in the workspace through the server and returns its stdout.
    pub async fn shell(&self, command: &str) -> String {
        let output = self
            .client
            .execute_bash(command, Some(WORKSPACE), Duration::from_secs(60))
            .await
            .unwrap();
        assert!(output.succeeded(), "{command}: {output:?}");
        output.stdout
    }

    pub fn logs(&self) -> String {
        self.server.logs()
    }
}

fn client_for(base_url: &Url, key: &str) -> AgentServerClient {
    AgentServerClient::builder(base_url.clone(), SecretString::from(key.to_owned()))
        .request_timeout(Duration::from_secs(30))
        .socket_connect_timeout(Duration::from_secs(10))
        .build()
}
