//! Builders for the event JSON the real agent-server emits (`openhands.sdk.event.*`).
//!
//! Events are kept as `serde_json::Value` because that is what travels: the fake never has to
//! interpret its own events, and the field names below can be compared one to one with the
//! contract. Null fields are left out, as the real server serialises events with `exclude_none`.

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use uuid::Uuid;

const NAIVE_TIMESTAMP: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]");

/// The event `timestamp`: naive ISO time without a zone, like Python's `datetime.now().isoformat()`.
/// The clock is UTC, which is the local time of the container the server runs in.
pub(crate) fn naive_timestamp_now() -> String {
    format_naive(OffsetDateTime::now_utc())
}

/// `created_at`/`updated_at` of `ConversationInfo`, which pydantic renders as aware UTC times.
pub(crate) fn utc_timestamp_now() -> String {
    format!("{}Z", format_naive(OffsetDateTime::now_utc()))
}

fn format_naive(now: OffsetDateTime) -> String {
    // Formatting a plain date-time with a fixed description cannot fail; the fallback only keeps
    // this function total.
    now.format(NAIVE_TIMESTAMP)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

pub(crate) fn new_event_id() -> String {
    Uuid::new_v4().to_string()
}

/// A tool call id in the style of OpenAI's `call_...` ids, which is what the SDK stores.
pub(crate) fn new_tool_call_id() -> String {
    format!("call_{}", &Uuid::new_v4().simple().to_string()[..24])
}

pub(crate) fn new_llm_response_id() -> String {
    format!("chatcmpl-{}", Uuid::new_v4().simple())
}

fn envelope(kind: &str, source: &str) -> serde_json::Map<String, Value> {
    let mut event = serde_json::Map::new();
    event.insert("kind".into(), json!(kind));
    event.insert("id".into(), json!(new_event_id()));
    event.insert("timestamp".into(), json!(naive_timestamp_now()));
    event.insert("source".into(), json!(source));
    event
}

fn with_fields(mut event: serde_json::Map<String, Value>, fields: Value) -> Value {
    if let Value::Object(fields) = fields {
        event.extend(fields);
    }
    Value::Object(event)
}

pub(crate) fn text_content(text: &str) -> Value {
    json!({ "type": "text", "text": text })
}

fn terminal_tool_definition() -> Value {
    json!({
        "type": "function",
        "function": {
            "name": "terminal",
            "description": "Execute a bash command in the terminal within a persistent shell session.",
            "parameters": {
                "type": "object",
                "properties": {
                    "command": { "type": "string", "description": "The bash command to execute." },
                    "is_input": { "type": "boolean" },
                    "timeout": { "type": "number" },
                    "reset": { "type": "boolean" },
                    "summary": { "type": "string" },
                    "security_risk": { "type": "string", "enum": ["LOW", "MEDIUM", "HIGH"] }
                },
                "required": ["command"]
            }
        }
    })
}

fn finish_tool_definition() -> Value {
    json!({
        "type": "function",
        "function": {
            "name": "finish",
            "description": "Signals the completion of the current task or conversation.",
            "parameters": {
                "type": "object",
                "properties": { "message": { "type": "string", "description": "Final message to send to the user." } },
                "required": ["message"]
            }
        }
    })
}

/// When set in the fake's environment, the first run of each conversation also emits an event of
/// this kind (one no client knows), to test that clients keep unknown kinds and carry on.
pub const EXTRA_EVENT_KIND_VARIABLE: &str = "CADENZA_FAKE_EXTRA_EVENT_KIND";

pub(crate) fn unknown_kind_event(kind: &str) -> Value {
    with_fields(
        envelope(kind, "environment"),
        json!({ "detail": "an event kind from a newer agent-server", "payload": {"answer": 42} }),
    )
}

pub(crate) fn system_prompt_event() -> Value {
    with_fields(
        envelope("SystemPromptEvent", "agent"),
        json!({
            "system_prompt": text_content(
                "You are a scripted stand-in for the OpenHands agent. Lines starting with \"$ \" \
                 are run in the terminal; the last other line is the final answer."
            ),
            "tools": [terminal_tool_definition(), finish_tool_definition()],
        }),
    )
}

pub(crate) fn user_message_event(content: &[Value]) -> Value {
    with_fields(
        envelope("MessageEvent", "user"),
        json!({
            "llm_message": { "role": "user", "content": content },
            "activated_skills": [],
            "extended_content": [],
        }),
    )
}

pub(crate) fn state_update_event(key: &str, value: Value) -> Value {
    with_fields(
        envelope("ConversationStateUpdateEvent", "environment"),
        json!({ "key": key, "value": value }),
    )
}

/// The agent side of one tool call: what the LLM asked for, as the SDK records it.
pub(crate) struct ToolCall {
    pub(crate) tool_call_id: String,
    pub(crate) tool_name: &'static str,
    pub(crate) arguments: Value,
}

impl ToolCall {
    pub(crate) fn new(tool_name: &'static str, arguments: Value) -> Self {
        Self {
            tool_call_id: new_tool_call_id(),
            tool_name,
            arguments,
        }
    }
}

pub(crate) fn action_event(call: &ToolCall, action: Value, summary: &str) -> Value {
    with_fields(
        envelope("ActionEvent", "agent"),
        json!({
            "thought": [],
            "thinking_blocks": [],
            "action": action,
            "tool_name": call.tool_name,
            "tool_call_id": call.tool_call_id,
            "tool_call": {
                "id": call.tool_call_id,
                "name": call.tool_name,
                "arguments": call.arguments.to_string(),
                "origin": "completion",
            },
            "llm_response_id": new_llm_response_id(),
            "security_risk": "LOW",
            "summary": summary,
        }),
    )
}

pub(crate) fn terminal_action(command: &str) -> Value {
    // `timeout` is null in the SDK model and therefore absent on the wire.
    json!({ "kind": "TerminalAction", "command": command, "is_input": false, "reset": false })
}

pub(crate) fn finish_action(message: &str) -> Value {
    json!({ "kind": "FinishAction", "message": message })
}

pub(crate) fn observation_event(call: &ToolCall, action_id: &str, observation: Value) -> Value {
    with_fields(
        envelope("ObservationEvent", "environment"),
        json!({
            "tool_name": call.tool_name,
            "tool_call_id": call.tool_call_id,
            "action_id": action_id,
            "observation": observation,
        }),
    )
}

pub(crate) struct TerminalResult<'a> {
    pub(crate) command: &'a str,
    pub(crate) output: &'a str,
    pub(crate) exit_code: i32,
    pub(crate) timed_out: bool,
    pub(crate) pid: Option<u32>,
    pub(crate) working_dir: &'a str,
}

pub(crate) fn terminal_observation(result: &TerminalResult<'_>) -> Value {
    let suffix = if result.timed_out {
        "\n[The command timed out and was killed.]".to_owned()
    } else {
        format!(
            "\n[The command completed with exit code {}.]",
            result.exit_code
        )
    };
    let mut metadata = json!({
        "exit_code": result.exit_code,
        "working_dir": result.working_dir,
        "prefix": "",
        "suffix": suffix,
    });
    if let (Some(pid), Value::Object(fields)) = (result.pid, &mut metadata) {
        fields.insert("pid".into(), json!(pid));
    }
    json!({
        "kind": "TerminalObservation",
        "content": [text_content(result.output)],
        "is_error": false,
        "command": result.command,
        "exit_code": result.exit_code,
        "timeout": result.timed_out,
        "metadata": metadata,
    })
}

pub(crate) fn finish_observation(message: &str) -> Value {
    json!({ "kind": "FinishObservation", "content": [text_content(message)], "is_error": false })
}

pub(crate) fn pause_event() -> Value {
    Value::Object(envelope("PauseEvent", "user"))
}

pub(crate) fn interrupt_event() -> Value {
    Value::Object(envelope("InterruptEvent", "user"))
}

pub(crate) fn conversation_error_event(code: &str, detail: &str) -> Value {
    with_fields(
        envelope("ConversationErrorEvent", "environment"),
        json!({ "code": code, "detail": detail }),
    )
}

pub(crate) fn server_error_event(code: &str, detail: &str) -> Value {
    with_fields(
        envelope("ServerErrorEvent", "environment"),
        json!({ "code": code, "detail": detail }),
    )
}

/// The text a `MessageEvent` carries, joined across its text parts.
pub(crate) fn message_text(event: &Value) -> Option<String> {
    let content = event.get("llm_message")?.get("content")?.as_array()?;
    let parts: Vec<&str> = content
        .iter()
        .filter_map(|item| item.get("text").and_then(Value::as_str))
        .collect();
    Some(parts.join("\n"))
}

pub(crate) fn kind(event: &Value) -> &str {
    event.get("kind").and_then(Value::as_str).unwrap_or("")
}

pub(crate) fn id(event: &Value) -> &str {
    event.get("id").and_then(Value::as_str).unwrap_or("")
}

pub(crate) fn source(event: &Value) -> &str {
    event.get("source").and_then(Value::as_str).unwrap_or("")
}

pub(crate) fn timestamp(event: &Value) -> &str {
    event.get("timestamp").and_then(Value::as_str).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_naive_iso_with_microseconds() {
        let stamp = naive_timestamp_now();
        assert_eq!(stamp.len(), "2026-11-22T10:11:12.123456".len(), "{stamp}");
        assert_eq!(&stamp[10..11], "T");
        assert!(!stamp.ends_with('Z'));
    }

    #[test]
    fn every_event_carries_the_common_envelope() {
        let event = state_update_event("execution_status", json!("running"));
        for field in ["kind", "id", "timestamp", "source"] {
            assert!(event.get(field).is_some(), "missing {field}");
        }
        assert_eq!(source(&event), "environment");
    }
}
