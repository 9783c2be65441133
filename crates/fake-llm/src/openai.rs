//! OpenAI chat-completions wire shapes: a whole `chat.completion`, or the `chat.completion.chunk`
//! frames of a streamed one, in the order OpenAI sends them.

use serde_json::{Value, json};

use crate::script::Reply;

/// One answer, with the ids and counts that both wire forms share.
#[derive(Debug, Clone)]
pub(crate) struct Completion {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub reply: Reply,
    pub tool_call_id: String,
    pub usage: Usage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Usage {
    /// A rough count (four bytes a token) so cost and context statistics on the server side
    /// move in a plausible way; no tokenizer is worth linking for a fake.
    pub fn estimate(request: &Value, reply: &Reply) -> Self {
        let prompt_bytes = request
            .get("messages")
            .map_or(0, |messages| messages.to_string().len());
        let completion_bytes = match reply {
            Reply::Text(text) => text.len(),
            Reply::ToolCall {
                content, arguments, ..
            } => content.len() + arguments.to_string().len(),
        };
        Self {
            prompt_tokens: (prompt_bytes as u64).div_ceil(4),
            completion_tokens: (completion_bytes as u64).div_ceil(4).max(1),
        }
    }

    fn to_json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }
}

impl Completion {
    fn finish_reason(&self) -> &'static str {
        match self.reply {
            Reply::Text(_) => "stop",
            Reply::ToolCall { .. } => "tool_calls",
        }
    }

    /// The non-streaming `chat.completion` object.
    pub fn to_json(&self) -> Value {
        let message = match &self.reply {
            Reply::Text(text) => json!({"role": "assistant", "content": text}),
            Reply::ToolCall {
                content,
                name,
                arguments,
            } => json!({
                "role": "assistant",
                "content": content,
                "tool_calls": [{
                    "id": self.tool_call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments.to_string()},
                }],
            }),
        };
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason()}],
            "usage": self.usage.to_json(),
        })
    }

    /// The SSE `data:` payloads of the streamed form, `[DONE]` included: role and text first,
    /// then the tool call's header with empty arguments and its arguments as a separate delta
    /// (clients must concatenate them), an empty delta with the finish reason, and the usage
    /// chunk (no choices) when the request asked for it.
    pub fn to_chunks(&self, include_usage: bool) -> Vec<String> {
        let chunk = |choices: Value| {
            json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": choices,
            })
        };
        let delta = |delta: Value, finish_reason: Value| {
            chunk(json!([{"index": 0, "delta": delta, "finish_reason": finish_reason}]))
        };

        let mut chunks = Vec::new();
        match &self.reply {
            Reply::Text(text) => {
                chunks.push(delta(
                    json!({"role": "assistant", "content": text}),
                    Value::Null,
                ));
            }
            Reply::ToolCall {
                content,
                name,
                arguments,
            } => {
                chunks.push(delta(
                    json!({"role": "assistant", "content": content}),
                    Value::Null,
                ));
                chunks.push(delta(
                    json!({"tool_calls": [{
                        "index": 0,
                        "id": self.tool_call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": ""},
                    }]}),
                    Value::Null,
                ));
                chunks.push(delta(
                    json!({"tool_calls": [{
                        "index": 0,
                        "function": {"arguments": arguments.to_string()},
                    }]}),
                    Value::Null,
                ));
            }
        }
        chunks.push(delta(json!({}), json!(self.finish_reason())));
        if include_usage {
            let mut usage = chunk(json!([]));
            usage["usage"] = self.usage.to_json();
            chunks.push(usage);
        }
        let mut frames: Vec<String> = chunks.iter().map(Value::to_string).collect();
        frames.push("[DONE]".to_owned());
        frames
    }
}

/// OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`.
pub(crate) fn error_body(message: &str, kind: &str, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(reply: Reply) -> Completion {
        Completion {
            id: "chatcmpl-1".into(),
            created: 1_763_800_000,
            model: "fake-model".into(),
            reply,
            tool_call_id: "call_1".into(),
            usage: Usage {
                prompt_tokens: 10,
                completion_tokens: 2,
            },
        }
    }

    fn tool_call() -> Reply {
        Reply::ToolCall {
            content: "Running `ls`.".into(),
            name: "terminal".into(),
            arguments: json!({"command": "ls"}),
        }
    }

    #[test]
    fn a_tool_call_completion_has_string_arguments_and_the_tool_calls_finish_reason() {
        let body = completion(tool_call()).to_json();
        assert_eq!(body["object"], "chat.completion");
        let choice = &body["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        let call = &choice["message"]["tool_calls"][0];
        assert_eq!(call["id"], "call_1");
        assert_eq!(call["function"]["name"], "terminal");
        let arguments: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(arguments, json!({"command": "ls"}));
        assert_eq!(body["usage"]["total_tokens"], 12);
    }

    #[test]
    fn streamed_tool_call_arguments_concatenate_to_the_arguments_and_usage_comes_last() {
        let frames = completion(tool_call()).to_chunks(true);
        assert_eq!(frames.last().unwrap(), "[DONE]");
        let chunks: Vec<Value> = frames[..frames.len() - 1]
            .iter()
            .map(|frame| serde_json::from_str(frame).unwrap())
            .collect();
        assert!(
            chunks
                .iter()
                .all(|chunk| chunk["object"] == "chat.completion.chunk")
        );
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let arguments: String = chunks
            .iter()
            .filter_map(|chunk| {
                chunk["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
            })
            .collect();
        assert_eq!(arguments, r#"{"command":"ls"}"#);
        let finish = &chunks[chunks.len() - 2]["choices"][0];
        assert_eq!(finish["finish_reason"], "tool_calls");
        assert_eq!(finish["delta"], json!({}));
        let usage = chunks.last().unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["prompt_tokens"], 10);

        let without_usage = completion(Reply::Text("Title".into())).to_chunks(false);
        assert_eq!(without_usage.len(), 3);
        assert!(without_usage[1].contains(r#""finish_reason":"stop""#));
    }
}
