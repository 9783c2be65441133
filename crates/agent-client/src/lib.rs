//! Typed async client for the OpenHands agent-server: REST calls and the resumable session
//! socket.
//!
//! Decoding is lenient on purpose. The server's models are strict on the Python side but move
//! between releases, so unknown fields, event kinds and frame types are kept (in `raw` or an
//! `Unknown` variant) and never turned into errors.
//!
//! ```no_run
//! use cadenza_agent_client::{
//!     AgentServerClient, AgentSpec, LlmConfig, SessionFrame, StartConversationRequest,
//! };
//! use secrecy::SecretString;
//!
//! # async fn demo() -> cadenza_agent_client::Result<()> {
//! let client = AgentServerClient::new(
//!     "http://127.0.0.1:8000".parse().unwrap(),
//!     SecretString::from("session-key"),
//! );
//! let llm = LlmConfig::new("anthropic/claude-sonnet-4-5")
//!     .with_api_key(SecretString::from("llm-key"));
//! let request = StartConversationRequest::new(
//!     "/workspace/project",
//!     AgentSpec::with_standard_tools(llm),
//! )
//! .with_conversation_id(uuid::Uuid::new_v4())
//! .with_initial_message("Fix the failing test");
//! let (conversation, _outcome) = client.create_conversation(&request).await?;
//!
//! let mut socket = client.open_session(conversation.id, Some(-1)).await?;
//! loop {
//!     if let SessionFrame::Durable { event, .. } = socket.next_frame().await? {
//!         if event.execution_status().is_some_and(|status| status.is_terminal()) {
//!             break;
//!         }
//!     }
//! }
//! println!("{}", client.agent_final_response(conversation.id).await?);
//! # Ok(())
//! # }
//! ```

mod client;
mod conversation;
mod error;
mod events;
mod json;
mod server;
mod session;
mod workspace;

pub use client::{
    AgentServerClient, AgentServerClientBuilder, MAX_PAGE_SIZE, SESSION_API_KEY_HEADER,
};
pub use conversation::{
    AgentSettings, AgentSource, AgentSpec, ConversationInfo, CreateOutcome, ExecutionStatus,
    LlmConfig, RunOutcome, StartConversationRequest, ToolSpec, tool_names,
};
pub use error::{
    CLOSE_ABNORMAL, CLOSE_NOT_FOUND, CLOSE_TRY_AGAIN_LATER, CLOSE_UNAUTHORIZED, Error,
    FieldProblem, Result,
};
pub use events::{
    ActionEvent, AgentErrorEvent, AgentEvent, ConversationErrorEvent, ConversationStateUpdateEvent,
    EventPage, EventSource, MessageEvent, ObservationEvent, TypedEvent,
};
pub use server::{CAPABILITY_IDEMPOTENT_CREATE, ServerInfo};
pub use session::{SessionFrame, SessionSocket, StreamDelta};
pub use workspace::{BashOutput, DiffLimits, GitDelta, OmittedFile};

/// Compiles the README's example, so it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
