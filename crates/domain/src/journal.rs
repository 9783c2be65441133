//! The kinds of entries in a run's journal.
//!
//! Agent-server events are normalized to a small, stable set of kinds (the original payload is
//! always kept beside the normalized one); Cadenza's own lifecycle changes are journaled as
//! `run_state` so a client reading the journal sees the whole story, in order, with one cursor.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A run lifecycle transition written by Cadenza (`{"from","to","reason"?}`).
    RunState,
    Message,
    Action,
    Observation,
    AgentError,
    StateUpdate,
    ConversationError,
    Pause,
    Interrupt,
    SystemPrompt,
    /// The workspace was prepared: repository, branch and base commit (`{"repository","branch","base_commit"}`).
    Workspace,
    /// An agent-server event kind this version does not know; the raw payload is kept.
    Unknown,
}

impl EventKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::RunState => "run_state",
            EventKind::Message => "message",
            EventKind::Action => "action",
            EventKind::Observation => "observation",
            EventKind::AgentError => "agent_error",
            EventKind::StateUpdate => "state_update",
            EventKind::ConversationError => "conversation_error",
            EventKind::Pause => "pause",
            EventKind::Interrupt => "interrupt",
            EventKind::SystemPrompt => "system_prompt",
            EventKind::Workspace => "workspace",
            EventKind::Unknown => "unknown",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
