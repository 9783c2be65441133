//! Conversation events. Decoding never fails: the server's event classes are strict on the
//! Python side but change between releases, so every event keeps its full JSON in `raw` and a
//! typed view is computed on demand.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::conversation::ExecutionStatus;
use crate::json::{bool_at, i64_at, joined_text, str_at, string_at, text_at};

/// Who produced an event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventSource {
    Agent,
    User,
    Environment,
    Hook,
    Other(String),
}

impl EventSource {
    pub fn from_wire(value: &str) -> Self {
        match value {
            "agent" => Self::Agent,
            "user" => Self::User,
            "environment" => Self::Environment,
            "hook" => Self::Hook,
            other => Self::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Agent => "agent",
            Self::User => "user",
            Self::Environment => "environment",
            Self::Hook => "hook",
            Self::Other(other) => other,
        }
    }
}

impl fmt::Display for EventSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event of a conversation, as the server sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentEvent {
    /// Event id (a UUID string); empty when absent.
    pub id: String,
    /// The event class name, e.g. `ActionEvent`; empty when absent.
    pub kind: String,
    pub source: Option<EventSource>,
    /// ISO timestamp in naive server-local time, kept as sent: it carries no zone, so
    /// turning it into an instant would be a guess.
    pub timestamp: Option<String>,
    /// The whole event, including fields this client does not model.
    pub raw: Value,
}

impl AgentEvent {
    pub fn from_value(raw: Value) -> Self {
        Self {
            id: string_at(&raw, "id").unwrap_or_default(),
            kind: string_at(&raw, "kind").unwrap_or_default(),
            source: str_at(&raw, "source").map(EventSource::from_wire),
            timestamp: string_at(&raw, "timestamp"),
            raw,
        }
    }

    /// The typed view of the event's kind.
    pub fn typed(&self) -> TypedEvent {
        let raw = &self.raw;
        match self.kind.as_str() {
            "MessageEvent" => TypedEvent::Message(MessageEvent::from_raw(raw)),
            "ActionEvent" => TypedEvent::Action(ActionEvent::from_raw(raw)),
            "ObservationEvent" => TypedEvent::Observation(ObservationEvent::from_raw(raw)),
            "AgentErrorEvent" => TypedEvent::AgentError(AgentErrorEvent {
                tool_name: string_at(raw, "tool_name"),
                tool_call_id: string_at(raw, "tool_call_id"),
                error: string_at(raw, "error").unwrap_or_default(),
            }),
            "ConversationStateUpdateEvent" => {
                TypedEvent::StateUpdate(ConversationStateUpdateEvent {
                    key: string_at(raw, "key").unwrap_or_default(),
                    value: raw.get("value").cloned().unwrap_or(Value::Null),
                })
            }
            "ConversationErrorEvent" => TypedEvent::ConversationError(ConversationErrorEvent {
                code: text_at(raw, "code").unwrap_or_default(),
                detail: string_at(raw, "detail").unwrap_or_default(),
                retryable: raw
                    .get("classification")
                    .and_then(|classification| bool_at(classification, "retryable")),
            }),
            "PauseEvent" => TypedEvent::Pause,
            "InterruptEvent" => TypedEvent::Interrupt,
            "SystemPromptEvent" => TypedEvent::SystemPrompt,
            other => TypedEvent::Unknown(other.to_owned()),
        }
    }

    /// The execution status this event announces, if it is a state update carrying one
    /// (directly or inside a `full_state` snapshot).
    pub fn execution_status(&self) -> Option<ExecutionStatus> {
        match self.typed() {
            TypedEvent::StateUpdate(update) => update.execution_status(),
            _ => None,
        }
    }

    pub fn parent_id(&self) -> Option<&str> {
        str_at(&self.raw, "parent_id")
    }
}

impl<'de> Deserialize<'de> for AgentEvent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Value::deserialize(deserializer).map(Self::from_value)
    }
}

impl Serialize for AgentEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.raw.serialize(serializer)
    }
}

/// Typed view of an [`AgentEvent`]. Kinds without a dedicated variant are
/// [`TypedEvent::Unknown`]; their JSON is still in [`AgentEvent::raw`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TypedEvent {
    Message(MessageEvent),
    Action(ActionEvent),
    Observation(ObservationEvent),
    AgentError(AgentErrorEvent),
    StateUpdate(ConversationStateUpdateEvent),
    ConversationError(ConversationErrorEvent),
    Pause,
    Interrupt,
    SystemPrompt,
    /// Any other kind, by name.
    Unknown(String),
}

/// A user or agent message. An agent message without a tool call ends the turn.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageEvent {
    /// `llm_message.role`: `user`, `assistant`, ...
    pub role: String,
    /// The text parts of `llm_message.content`, joined by newlines.
    pub text: String,
}

impl MessageEvent {
    fn from_raw(raw: &Value) -> Self {
        let message = raw.get("llm_message").unwrap_or(&Value::Null);
        Self {
            role: string_at(message, "role").unwrap_or_default(),
            text: joined_text(message.get("content")),
        }
    }
}

/// A tool call by the agent.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionEvent {
    pub tool_name: String,
    pub tool_call_id: Option<String>,
    /// `action.kind`, e.g. `TerminalAction`; `None` when the tool call failed to parse.
    pub action_kind: Option<String>,
    /// The shell command of a `TerminalAction`.
    pub command: Option<String>,
    /// The final answer of a `FinishAction`.
    pub finish_message: Option<String>,
    /// The agent's stated reasoning (`thought` text parts).
    pub thought: String,
    pub summary: Option<String>,
}

impl ActionEvent {
    fn from_raw(raw: &Value) -> Self {
        let action = raw.get("action").filter(|action| action.is_object());
        let action_kind = action.and_then(|action| string_at(action, "kind"));
        let action_field = |kind: &str, field: &str| {
            action
                .filter(|_| action_kind.as_deref() == Some(kind))
                .and_then(|action| string_at(action, field))
        };
        Self {
            tool_name: string_at(raw, "tool_name").unwrap_or_default(),
            tool_call_id: string_at(raw, "tool_call_id"),
            command: action_field("TerminalAction", "command"),
            finish_message: action_field("FinishAction", "message"),
            action_kind,
            thought: joined_text(raw.get("thought")),
            summary: string_at(raw, "summary"),
        }
    }
}

/// The result of a tool call.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservationEvent {
    pub tool_name: String,
    pub tool_call_id: Option<String>,
    /// Id of the [`ActionEvent`] this answers.
    pub action_id: Option<String>,
    /// `observation.kind`, e.g. `TerminalObservation`.
    pub observation_kind: Option<String>,
    /// The text parts of `observation.content`, joined by newlines.
    pub text: String,
    /// Shell exit code of a terminal observation.
    pub exit_code: Option<i64>,
    pub is_error: bool,
}

impl ObservationEvent {
    fn from_raw(raw: &Value) -> Self {
        let observation = raw.get("observation").unwrap_or(&Value::Null);
        let mut text = joined_text(observation.get("content"));
        if text.is_empty() {
            // Releases before the content list carried the output as a plain string.
            text = string_at(observation, "output").unwrap_or_default();
        }
        let exit_code = i64_at(observation, "exit_code").or_else(|| {
            observation
                .get("metadata")
                .and_then(|metadata| i64_at(metadata, "exit_code"))
        });
        Self {
            tool_name: string_at(raw, "tool_name").unwrap_or_default(),
            tool_call_id: string_at(raw, "tool_call_id"),
            action_id: string_at(raw, "action_id"),
            observation_kind: string_at(observation, "kind"),
            text,
            exit_code,
            is_error: bool_at(observation, "is_error").unwrap_or(false),
        }
    }
}

/// A tool-level error fed back to the LLM; the run goes on.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentErrorEvent {
    pub tool_name: Option<String>,
    pub tool_call_id: Option<String>,
    pub error: String,
}

/// A change of one conversation state field, or a `full_state` snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationStateUpdateEvent {
    pub key: String,
    pub value: Value,
}

impl ConversationStateUpdateEvent {
    /// Key of the whole-state snapshot sent on connect and at the end of every run.
    pub const FULL_STATE: &'static str = "full_state";
    pub const EXECUTION_STATUS: &'static str = "execution_status";

    /// The status set by this update, from either `key:"execution_status"` or a `full_state`
    /// snapshot.
    pub fn execution_status(&self) -> Option<ExecutionStatus> {
        let status = match self.key.as_str() {
            Self::EXECUTION_STATUS => self.value.as_str(),
            Self::FULL_STATE => str_at(&self.value, Self::EXECUTION_STATUS),
            _ => None,
        }?;
        Some(ExecutionStatus::from_wire(status))
    }
}

/// A run-level failure; the conversation's status becomes `error`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationErrorEvent {
    /// e.g. `MaxIterationsReached`, `LLMAuthenticationError`, or an exception class name.
    pub code: String,
    pub detail: String,
    /// `classification.retryable`, when the server classified the error.
    pub retryable: Option<bool>,
}

/// One page of `GET /api/conversations/{id}/events/search`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EventPage {
    #[serde(default)]
    pub items: Vec<AgentEvent>,
    /// Id of the first event that did not fit; `None` at the end of the log.
    #[serde(default)]
    pub next_page_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(raw: Value) -> AgentEvent {
        serde_json::from_value(raw).unwrap()
    }

    #[test]
    fn message_event_joins_text_parts() {
        let event = event(json!({
            "kind": "MessageEvent",
            "id": "e1",
            "timestamp": "2026-11-22T10:00:00.123456",
            "source": "user",
            "llm_message": {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Create hello.txt"},
                    {"type": "image", "image_urls": ["data:..."]},
                    {"type": "text", "text": "then finish"}
                ],
                "thinking_blocks": []
            },
            "activated_skills": [],
            "extended_content": [],
            "critic_result": null
        }));
        assert_eq!(event.id, "e1");
        assert_eq!(event.source, Some(EventSource::User));
        assert_eq!(
            event.timestamp.as_deref(),
            Some("2026-11-22T10:00:00.123456")
        );
        assert_eq!(
            event.typed(),
            TypedEvent::Message(MessageEvent {
                role: "user".into(),
                text: "Create hello.txt\nthen finish".into()
            })
        );
    }

    #[test]
    fn terminal_action_and_observation_expose_command_output_and_exit_code() {
        let action = event(json!({
            "kind": "ActionEvent",
            "id": "a1",
            "timestamp": "2026-11-22T10:00:01",
            "source": "agent",
            "thought": [{"type": "text", "text": "Listing files."}],
            "action": {"kind": "TerminalAction", "command": "ls -la", "is_input": false, "reset": false},
            "tool_name": "terminal",
            "tool_call_id": "call_1",
            "tool_call": {"id": "call_1", "name": "terminal", "arguments": "{\"command\":\"ls -la\"}", "origin": "completion"},
            "llm_response_id": "resp_1",
            "security_risk": "UNKNOWN",
            "summary": "list files"
        }));
        let TypedEvent::Action(view) = action.typed() else {
            panic!("expected an action");
        };
        assert_eq!(view.tool_name, "terminal");
        assert_eq!(view.tool_call_id.as_deref(), Some("call_1"));
        assert_eq!(view.action_kind.as_deref(), Some("TerminalAction"));
        assert_eq!(view.command.as_deref(), Some("ls -la"));
        assert_eq!(view.finish_message, None);
        assert_eq!(view.thought, "Listing files.");
        assert_eq!(view.summary.as_deref(), Some("list files"));

        let observation = event(json!({
            "kind": "ObservationEvent",
            "id": "o1",
            "timestamp": "2026-11-22T10:00:02",
            "source": "environment",
            "tool_name": "terminal",
            "tool_call_id": "call_1",
            "action_id": "a1",
            "observation": {
                "kind": "TerminalObservation",
                "content": [{"type": "text", "text": "hello.txt"}],
                "is_error": false,
                "command": "ls -la",
                "exit_code": 2,
                "timeout": false,
                "metadata": {"exit_code": 2, "pid": -1}
            }
        }));
        assert_eq!(
            observation.typed(),
            TypedEvent::Observation(ObservationEvent {
                tool_name: "terminal".into(),
                tool_call_id: Some("call_1".into()),
                action_id: Some("a1".into()),
                observation_kind: Some("TerminalObservation".into()),
                text: "hello.txt".into(),
                exit_code: Some(2),
                is_error: false,
            })
        );
    }

    #[test]
    fn observation_exit_code_falls_back_to_metadata() {
        let observation = event(json!({
            "kind": "ObservationEvent",
            "observation": {"kind": "TerminalObservation", "content": [], "metadata": {"exit_code": 0}}
        }));
        let TypedEvent::Observation(view) = observation.typed() else {
            panic!("expected an observation");
        };
        assert_eq!(view.exit_code, Some(0));
    }

    #[test]
    fn finish_action_carries_the_final_message_and_unparsed_actions_are_tolerated() {
        let finish = event(json!({
            "kind": "ActionEvent",
            "id": "a2",
            "source": "agent",
            "tool_name": "finish",
            "tool_call_id": "call_2",
            "action": {"kind": "FinishAction", "message": "Created hello.txt"}
        }));
        let TypedEvent::Action(view) = finish.typed() else {
            panic!("expected an action");
        };
        assert_eq!(view.finish_message.as_deref(), Some("Created hello.txt"));
        assert_eq!(view.command, None);

        let unparsed = event(json!({
            "kind": "ActionEvent",
            "id": "a3",
            "tool_name": "terminal",
            "action": null
        }));
        let TypedEvent::Action(view) = unparsed.typed() else {
            panic!("expected an action");
        };
        assert_eq!(view.action_kind, None);
        assert_eq!(view.command, None);
    }

    #[test]
    fn state_updates_yield_execution_status_from_key_value_and_full_state() {
        let direct = event(json!({
            "kind": "ConversationStateUpdateEvent",
            "id": "s1",
            "source": "environment",
            "key": "execution_status",
            "value": "finished"
        }));
        assert_eq!(direct.execution_status(), Some(ExecutionStatus::Finished));
        assert!(direct.execution_status().unwrap().is_terminal());

        let snapshot = event(json!({
            "kind": "ConversationStateUpdateEvent",
            "id": "s2",
            "source": "environment",
            "key": "full_state",
            "value": {"execution_status": "idle", "agent": {"kind": "Agent"}, "stats": {}}
        }));
        assert_eq!(snapshot.execution_status(), Some(ExecutionStatus::Idle));

        let other_key = event(json!({
            "kind": "ConversationStateUpdateEvent",
            "key": "stats",
            "value": {"usage_to_metrics": {}}
        }));
        assert_eq!(other_key.execution_status(), None);
        let TypedEvent::StateUpdate(update) = other_key.typed() else {
            panic!("expected a state update");
        };
        assert_eq!(update.key, "stats");
    }

    #[test]
    fn error_events_expose_codes_and_details() {
        let conversation_error = event(json!({
            "kind": "ConversationErrorEvent",
            "id": "x1",
            "source": "environment",
            "code": "MaxIterationsReached",
            "detail": "Agent reached the maximum number of iterations",
            "classification": {"kind": "limit", "retryable": false, "user_action": null, "error_id": "ab12"}
        }));
        assert_eq!(
            conversation_error.typed(),
            TypedEvent::ConversationError(ConversationErrorEvent {
                code: "MaxIterationsReached".into(),
                detail: "Agent reached the maximum number of iterations".into(),
                retryable: Some(false),
            })
        );

        let agent_error = event(json!({
            "kind": "AgentErrorEvent",
            "source": "agent",
            "tool_name": "file_editor",
            "tool_call_id": "call_9",
            "error": "File not found",
            "classification": "tool"
        }));
        assert_eq!(
            agent_error.typed(),
            TypedEvent::AgentError(AgentErrorEvent {
                tool_name: Some("file_editor".into()),
                tool_call_id: Some("call_9".into()),
                error: "File not found".into(),
            })
        );
    }

    #[test]
    fn simple_kinds_map_to_unit_variants() {
        for (kind, expected) in [
            ("PauseEvent", TypedEvent::Pause),
            ("InterruptEvent", TypedEvent::Interrupt),
            ("SystemPromptEvent", TypedEvent::SystemPrompt),
        ] {
            assert_eq!(
                event(json!({"kind": kind, "source": "user"})).typed(),
                expected
            );
        }
    }

    #[test]
    fn unknown_kinds_and_fields_are_kept_not_rejected() {
        let raw = json!({
            "kind": "CondensationSummaryEvent",
            "id": "c1",
            "timestamp": "2026-11-22T10:00:03",
            "source": "hook",
            "summary": "...",
            "field_from_the_future": {"nested": true}
        });
        let event = event(raw.clone());
        assert_eq!(
            event.typed(),
            TypedEvent::Unknown("CondensationSummaryEvent".into())
        );
        assert_eq!(event.source, Some(EventSource::Hook));
        assert_eq!(serde_json::to_value(&event).unwrap(), raw);

        let odd = AgentEvent::from_value(json!({"kind": 7, "source": "orchestrator"}));
        assert_eq!(odd.kind, "");
        assert_eq!(odd.source, Some(EventSource::Other("orchestrator".into())));
        assert_eq!(odd.typed(), TypedEvent::Unknown(String::new()));
        assert_eq!(AgentEvent::from_value(json!("not an object")).id, "");
    }

    #[test]
    fn event_page_decodes_items_and_cursor() {
        let page: EventPage = serde_json::from_value(json!({
            "items": [{"kind": "PauseEvent", "id": "p1", "source": "user"}],
            "next_page_id": "p2"
        }))
        .unwrap();
        assert_eq!(page.items[0].id, "p1");
        assert_eq!(page.next_page_id.as_deref(), Some("p2"));

        let last: EventPage =
            serde_json::from_value(json!({"items": [], "next_page_id": null})).unwrap();
        assert_eq!(last.next_page_id, None);
    }
}
