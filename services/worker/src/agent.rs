//! What a run's driver needs from an agent-server, as traits: the real client
//! ([`AgentServerClient`]) in production, a scripted session in the driver's tests.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cadenza_agent_client::{
    AgentEvent, AgentServerClient, ConversationInfo, CreateOutcome, DiffLimits, Error, GitDelta,
    SessionFrame, SessionSocket, StartConversationRequest,
};
use secrecy::SecretString;
use url::Url;

/// One conversation's agent-server, as the driver uses it.
#[async_trait]
pub(crate) trait AgentSession: Send + Sync {
    async fn health(&self) -> Result<(), Error>;
    async fn create_conversation(
        &self,
        request: &StartConversationRequest,
    ) -> Result<(ConversationInfo, CreateOutcome), Error>;
    async fn get_conversation(&self, id: uuid::Uuid) -> Result<ConversationInfo, Error>;
    /// Sends a user message; with `run`, starts the agent on it if it is idle.
    async fn send_message(&self, id: uuid::Uuid, text: &str, run: bool) -> Result<(), Error>;
    async fn interrupt(&self, id: uuid::Uuid) -> Result<(), Error>;
    /// Every event after `after` (all of them for `None`), in order.
    async fn events_after(
        &self,
        id: uuid::Uuid,
        after: Option<&str>,
    ) -> Result<Vec<AgentEvent>, Error>;
    async fn agent_final_response(&self, id: uuid::Uuid) -> Result<String, Error>;
    async fn archive_git_delta(
        &self,
        path: &str,
        base: Option<&str>,
        limits: DiffLimits,
    ) -> Result<GitDelta, Error>;
    /// The session socket: durable events after `after_seq`, then live ones.
    async fn open_session(
        &self,
        id: uuid::Uuid,
        after_seq: Option<i64>,
    ) -> Result<Box<dyn EventSocket>, Error>;
}

/// An open session socket.
#[async_trait]
pub(crate) trait EventSocket: Send {
    /// The next frame. Cancel-safe: a frame not yet yielded stays in the socket.
    async fn next_frame(&mut self) -> Result<SessionFrame, Error>;
}

/// Makes the session of a workspace container's agent-server.
pub(crate) trait AgentConnector: Send + Sync {
    fn connect(&self, host_port: u16, session_key: SecretString) -> Arc<dyn AgentSession>;
}

/// Connects over HTTP to the agent-server a container publishes on loopback.
pub(crate) struct HttpAgents {
    /// The largest answer or socket message read from an agent-server.
    pub(crate) max_message_bytes: usize,
}

impl AgentConnector for HttpAgents {
    fn connect(&self, host_port: u16, session_key: SecretString) -> Arc<dyn AgentSession> {
        let base_url = Url::parse(&format!("http://127.0.0.1:{host_port}"))
            .expect("a loopback URL with a port always parses");
        Arc::new(
            AgentServerClient::builder(base_url, session_key)
                .request_timeout(Duration::from_secs(60))
                .max_body_bytes(self.max_message_bytes)
                .max_message_bytes(self.max_message_bytes)
                .build(),
        )
    }
}

#[async_trait]
impl AgentSession for AgentServerClient {
    async fn health(&self) -> Result<(), Error> {
        AgentServerClient::health(self).await
    }

    async fn create_conversation(
        &self,
        request: &StartConversationRequest,
    ) -> Result<(ConversationInfo, CreateOutcome), Error> {
        AgentServerClient::create_conversation(self, request).await
    }

    async fn get_conversation(&self, id: uuid::Uuid) -> Result<ConversationInfo, Error> {
        AgentServerClient::get_conversation(self, id).await
    }

    async fn send_message(&self, id: uuid::Uuid, text: &str, run: bool) -> Result<(), Error> {
        AgentServerClient::send_message(self, id, text, run).await
    }

    async fn interrupt(&self, id: uuid::Uuid) -> Result<(), Error> {
        AgentServerClient::interrupt(self, id).await
    }

    async fn events_after(
        &self,
        id: uuid::Uuid,
        after: Option<&str>,
    ) -> Result<Vec<AgentEvent>, Error> {
        AgentServerClient::events_after(self, id, after).await
    }

    async fn agent_final_response(&self, id: uuid::Uuid) -> Result<String, Error> {
        AgentServerClient::agent_final_response(self, id).await
    }

    async fn archive_git_delta(
        &self,
        path: &str,
        base: Option<&str>,
        limits: DiffLimits,
    ) -> Result<GitDelta, Error> {
        AgentServerClient::archive_git_delta(self, path, base, limits).await
    }

    async fn open_session(
        &self,
        id: uuid::Uuid,
        after_seq: Option<i64>,
    ) -> Result<Box<dyn EventSocket>, Error> {
        let socket = AgentServerClient::open_session(self, id, after_seq).await?;
        Ok(Box::new(socket))
    }
}

#[async_trait]
impl EventSocket for SessionSocket {
    async fn next_frame(&mut self) -> Result<SessionFrame, Error> {
        SessionSocket::next_frame(self).await
    }
}
