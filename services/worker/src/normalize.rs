//! Maps agent-server events to the journal's normalized kinds and payloads. The original event is
//! always stored beside the normalized form, so nothing is lost when an event kind is unknown.

use cadenza_agent_client::{AgentEvent, ConversationStateUpdateEvent, TypedEvent};
use cadenza_domain::EventKind;
use serde_json::{Value, json};

pub fn normalize(event: &AgentEvent, agent_seq: Option<i64>) -> (EventKind, Value) {
    let (kind, mut payload) = match event.typed() {
        TypedEvent::Message(message) => (
            EventKind::Message,
            json!({ "role": message.role, "text": message.text }),
        ),
        TypedEvent::Action(action) => (
            EventKind::Action,
            json!({
                "tool_name": action.tool_name,
                "tool_call_id": action.tool_call_id,
                "action_kind": action.action_kind,
                "command": action.command,
                "message": action.finish_message,
                "thought": action.thought,
                "summary": action.summary,
            }),
        ),
        TypedEvent::Observation(observation) => (
            EventKind::Observation,
            json!({
                "tool_name": observation.tool_name,
                "tool_call_id": observation.tool_call_id,
                "action_id": observation.action_id,
                "observation_kind": observation.observation_kind,
                "output": observation.text,
                "exit_code": observation.exit_code,
                "is_error": observation.is_error,
            }),
        ),
        TypedEvent::AgentError(error) => (
            EventKind::AgentError,
            json!({ "tool_name": error.tool_name, "tool_call_id": error.tool_call_id, "error": error.error }),
        ),
        TypedEvent::StateUpdate(update) => {
            // A full_state dump repeats the whole agent configuration; the journal keeps only
            // what a reader of the timeline needs (the raw event still has everything).
            let value = if update.key == ConversationStateUpdateEvent::FULL_STATE {
                json!({ "execution_status": update.execution_status().map(|s| s.as_str().to_owned()) })
            } else {
                update.value.clone()
            };
            (
                EventKind::StateUpdate,
                json!({ "key": update.key, "value": value }),
            )
        }
        TypedEvent::ConversationError(error) => (
            EventKind::ConversationError,
            json!({ "code": error.code, "detail": error.detail, "retryable": error.retryable }),
        ),
        TypedEvent::Pause => (EventKind::Pause, json!({})),
        TypedEvent::Interrupt => (EventKind::Interrupt, json!({})),
        TypedEvent::SystemPrompt => (EventKind::SystemPrompt, json!({})),
        _ => (EventKind::Unknown, json!({ "agent_kind": event.kind })),
    };
    if let Value::Object(map) = &mut payload {
        map.insert("agent_event_id".into(), json!(event.id));
        map.insert("agent_kind".into(), json!(event.kind));
        map.insert(
            "source".into(),
            json!(
                event
                    .source
                    .as_ref()
                    .map(|source| source.as_str().to_owned())
            ),
        );
        if let Some(seq) = agent_seq {
            map.insert("agent_seq".into(), json!(seq));
        }
    }
    (kind, payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminal_observation_keeps_output_and_exit_code() {
        let event = AgentEvent::from_value(json!({
            "kind": "ObservationEvent", "id": "o1", "timestamp": "2026-01-01T00:00:00",
            "source": "environment", "tool_name": "terminal", "tool_call_id": "c1", "action_id": "a1",
            "observation": {"kind": "TerminalObservation", "content": [{"type": "text", "text": "hello\n"}],
                            "is_error": false, "command": "cat hello.txt", "exit_code": 0}
        }));
        let (kind, payload) = normalize(&event, Some(7));
        assert_eq!(kind, EventKind::Observation);
        assert_eq!(payload["output"], "hello\n");
        assert_eq!(payload["exit_code"], 0);
        assert_eq!(payload["agent_seq"], 7);
        assert_eq!(payload["agent_event_id"], "o1");
    }

    #[test]
    fn an_unknown_kind_is_kept_as_unknown() {
        let event = AgentEvent::from_value(json!({
            "kind": "BrandNewEvent", "id": "x", "source": "agent", "whatever": 1
        }));
        let (kind, payload) = normalize(&event, None);
        assert_eq!(kind, EventKind::Unknown);
        assert_eq!(payload["agent_kind"], "BrandNewEvent");
    }

    #[test]
    fn full_state_is_trimmed_to_the_status() {
        let event = AgentEvent::from_value(json!({
            "kind": "ConversationStateUpdateEvent", "id": "s", "source": "environment",
            "key": "full_state", "value": {"execution_status": "finished", "agent": {"huge": true}}
        }));
        let (kind, payload) = normalize(&event, None);
        assert_eq!(kind, EventKind::StateUpdate);
        assert_eq!(payload["value"], json!({"execution_status": "finished"}));
    }
}

/// Bounds a JSON value to about `budget` bytes serialized: long strings are cut in the middle
/// (head and tail kept, a marker between), shorter and shorter until it fits; a value that still
/// does not fit (a huge array of short strings) is replaced by a note of its size.
pub fn bound_json(value: &mut Value, budget: usize) {
    let size = |value: &Value| serde_json::to_vec(value).map_or(usize::MAX, |bytes| bytes.len());
    let original = size(value);
    if original <= budget {
        return;
    }
    let mut longest = budget;
    while longest >= 256 {
        cut_strings(value, longest);
        if size(value) <= budget {
            return;
        }
        longest /= 2;
    }
    *value = json!({
        "cadenza_truncated": true,
        "original_bytes": original,
        "note": "this entry was larger than the journal's limit (CADENZA_MAX_EVENT_BYTES)",
    });
}

fn cut_strings(value: &mut Value, longest: usize) {
    match value {
        Value::String(text) if text.len() > longest => {
            let keep = longest.saturating_sub(96) / 2;
            let mut head_end = keep.min(text.len());
            while !text.is_char_boundary(head_end) {
                head_end -= 1;
            }
            let mut tail_start = text.len().saturating_sub(keep).max(head_end);
            while !text.is_char_boundary(tail_start) {
                tail_start += 1;
            }
            let cut = tail_start - head_end;
            *text = format!(
                "{}…[{cut} bytes cut: the journal entry limit]…{}",
                &text[..head_end],
                &text[tail_start..]
            );
        }
        Value::Array(items) => items.iter_mut().for_each(|item| cut_strings(item, longest)),
        Value::Object(fields) => fields
            .values_mut()
            .for_each(|field| cut_strings(field, longest)),
        _ => {}
    }
}

#[cfg(test)]
mod bound_tests {
    use super::*;

    #[test]
    fn a_large_entry_is_cut_to_its_budget_with_a_marker() {
        let output = format!("START{}END", "é".repeat(400_000));
        let mut payload = json!({"tool_name": "terminal", "output": output, "exit_code": 0});
        bound_json(&mut payload, 64 * 1024);
        let bytes = serde_json::to_vec(&payload).expect("json").len();
        assert!(bytes <= 64 * 1024, "{bytes}");
        let text = payload["output"].as_str().expect("still text");
        assert!(
            text.starts_with("START") && text.ends_with("END"),
            "head and tail kept"
        );
        assert!(text.contains("bytes cut: the journal entry limit"));
        assert_eq!(
            payload["tool_name"], "terminal",
            "short fields are untouched"
        );

        let mut small = json!({"output": "fine"});
        bound_json(&mut small, 1024);
        assert_eq!(small, json!({"output": "fine"}));

        let mut many = Value::Array((0..100_000).map(|i| json!(i)).collect());
        bound_json(&mut many, 1024);
        assert_eq!(many["cadenza_truncated"], true);
    }
}
