//! The scripted agent's decisions, read from one chat-completions request.
//!
//! Task language (the same as the fake agent-server's): every line of the user's task that
//! starts with `"$ "` is a terminal command, run in order; the last other non-blank line is the
//! message given to the `finish` tool.
//!
//! Everything is decided from the request alone. The agent-server sends requests concurrently
//! (a title request races the first agent call), retries them, and may be restarted between two
//! of them, so any counter kept here would drift. The conversation itself says how far the task
//! has got: each tool result after the latest user message is one step already taken.

use serde_json::{Value, json};

/// What to answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Plain assistant text and no tool call. Used for requests that offer no tools (the
    /// server's title request) and after the script has run out of steps.
    Text(String),
    /// One tool call, with the assistant text that accompanies it (the agent's "thought").
    ToolCall {
        content: String,
        name: String,
        /// The arguments object; sent as a JSON string, as OpenAI does.
        arguments: Value,
    },
}

/// One step of a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Command(String),
    Finish(String),
}

/// Why a request cannot be answered; reported as a 400 in OpenAI's error shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScriptError {
    #[error("`messages` must be a non-empty array")]
    NoMessages,
}

/// Longest title returned for a request without tools; the server shows it in lists.
const TITLE_MAX_CHARS: usize = 50;

/// Reads a task into the steps the scripted agent takes: its commands, then a finish.
pub fn plan_task(text: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut final_message = "";
    for line in text.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Some(command) = line.strip_prefix("$ ") {
            steps.push(Step::Command(command.to_owned()));
        } else if !line.trim().is_empty() {
            final_message = line.trim();
        }
    }
    steps.push(Step::Finish(final_message.to_owned()));
    steps
}

/// The next reply for a chat-completions request body.
pub fn next_reply(request: &Value) -> Result<Reply, ScriptError> {
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .filter(|messages| !messages.is_empty())
        .ok_or(ScriptError::NoMessages)?;
    let task_index = messages.iter().rposition(|message| role(message) == "user");
    let task = task_index.map_or_else(String::new, |index| text_of(&messages[index]));

    if !offers_tools(request) {
        return Ok(Reply::Text(title_for(&task)));
    }

    let steps_taken = task_index.map_or(0, |index| {
        messages[index + 1..]
            .iter()
            .filter(|message| role(message) == "tool")
            .count()
    });
    let reply = match plan_task(&task).into_iter().nth(steps_taken) {
        Some(Step::Command(command)) => Reply::ToolCall {
            content: format!("Running `{command}`."),
            name: "terminal".to_owned(),
            arguments: json!({ "command": command }),
        },
        Some(Step::Finish(message)) => Reply::ToolCall {
            content: "The task is done.".to_owned(),
            name: "finish".to_owned(),
            arguments: json!({ "message": message }),
        },
        // Only reachable when the server asks again after a finish; plain text also ends a turn.
        None => Reply::Text(match plan_task(&task).pop() {
            Some(Step::Finish(message)) => message,
            _ => String::new(),
        }),
    };
    Ok(reply)
}

fn offers_tools(request: &Value) -> bool {
    request
        .get("tools")
        .and_then(Value::as_array)
        .is_some_and(|tools| !tools.is_empty())
}

fn role(message: &Value) -> &str {
    message.get("role").and_then(Value::as_str).unwrap_or("")
}

/// The text of a message whose `content` is a string or a list of parts; non-text parts
/// (images) are skipped.
fn text_of(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter(|part| part.get("type").and_then(Value::as_str).unwrap_or("text") == "text")
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// A short title naming the task's first command. The server's title request embeds the task
/// in its own prose, so the command is the one part of it that is reliably recognisable.
fn title_for(task: &str) -> String {
    let Some(command) = task
        .lines()
        .find_map(|line| line.trim_start().strip_prefix("$ "))
    else {
        return "Scripted task".to_owned();
    };
    let mut title = format!("Run {}", command.trim());
    if title.chars().count() > TITLE_MAX_CHARS {
        title = title.chars().take(TITLE_MAX_CHARS - 1).collect();
        title.push('…');
    }
    title
}

#[cfg(test)]
mod tests {
    use super::*;

    const TASK: &str = "$ echo hello > hello.txt\n$ cat hello.txt\ndone";

    /// The start of every request the agent-server sends: a long system prompt as a list of
    /// parts (with a cache marker), then the user's task as a list of parts.
    fn conversation(task: &str) -> Vec<Value> {
        vec![
            json!({
                "role": "system",
                "content": [{
                    "type": "text",
                    "text": "You are OpenHands agent, a helpful AI assistant...\n$ this line is not a task",
                    "cache_control": {"type": "ephemeral"}
                }]
            }),
            user(task),
        ]
    }

    fn user(text: &str) -> Value {
        json!({"role": "user", "content": [{"type": "text", "text": text}]})
    }

    fn tool_round(
        history: &mut Vec<Value>,
        call_id: &str,
        name: &str,
        arguments: &str,
        output: &str,
    ) {
        history.push(json!({
            "role": "assistant",
            "content": [{"type": "text", "text": "Running it."}],
            "tool_calls": [{
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": arguments}
            }]
        }));
        history.push(json!({
            "role": "tool",
            "tool_call_id": call_id,
            "name": name,
            "content": [{"type": "text", "text": output}]
        }));
    }

    fn request(messages: Vec<Value>) -> Value {
        json!({
            "model": "fake-model",
            "messages": messages,
            "tools": [
                {"type": "function", "function": {"name": "terminal", "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}},
                {"type": "function", "function": {"name": "finish", "parameters": {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]}}}
            ],
            "prompt_cache_key": "0b9c6a6e-2f0b-4a4f-9c37-1c1f8f3e2a10",
            "reasoning_effort": "high"
        })
    }

    fn terminal(command: &str) -> Reply {
        Reply::ToolCall {
            content: format!("Running `{command}`."),
            name: "terminal".into(),
            arguments: json!({ "command": command }),
        }
    }

    fn finish(message: &str) -> Reply {
        Reply::ToolCall {
            content: "The task is done.".into(),
            name: "finish".into(),
            arguments: json!({ "message": message }),
        }
    }

    #[test]
    fn the_first_request_runs_the_first_command() {
        let reply = next_reply(&request(conversation(TASK))).unwrap();
        assert_eq!(reply, terminal("echo hello > hello.txt"));
    }

    #[test]
    fn each_tool_result_after_the_task_moves_on_one_step_then_finish_carries_the_last_prose_line() {
        let mut history = conversation(TASK);
        tool_round(
            &mut history,
            "call_1",
            "terminal",
            r#"{"command": "echo hello > hello.txt"}"#,
            "\n[The command completed with exit code 0.]\n[Current working directory: /workspace/project]",
        );
        assert_eq!(
            next_reply(&request(history.clone())).unwrap(),
            terminal("cat hello.txt")
        );

        tool_round(
            &mut history,
            "call_2",
            "terminal",
            r#"{"command": "cat hello.txt"}"#,
            "hello\n[The command completed with exit code 0.]\n[Current working directory: /workspace/project]",
        );
        assert_eq!(next_reply(&request(history)).unwrap(), finish("done"));
    }

    #[test]
    fn a_failed_command_still_counts_as_a_step_taken() {
        let mut history = conversation("$ false\n$ true\nok");
        tool_round(
            &mut history,
            "call_1",
            "terminal",
            r#"{"command": "false"}"#,
            "\n[The command completed with exit code 1.]",
        );
        assert_eq!(next_reply(&request(history)).unwrap(), terminal("true"));
    }

    #[test]
    fn a_follow_up_message_starts_a_new_task_counted_from_zero() {
        let mut history = conversation("$ echo one\nfirst");
        tool_round(
            &mut history,
            "c1",
            "terminal",
            r#"{"command":"echo one"}"#,
            "one\n[The command completed with exit code 0.]",
        );
        tool_round(
            &mut history,
            "c2",
            "finish",
            r#"{"message":"first"}"#,
            "first",
        );
        history.push(user("$ echo two\n$ echo three\nsecond"));
        assert_eq!(
            next_reply(&request(history.clone())).unwrap(),
            terminal("echo two")
        );

        tool_round(
            &mut history,
            "c3",
            "terminal",
            r#"{"command":"echo two"}"#,
            "two\n[The command completed with exit code 0.]",
        );
        assert_eq!(
            next_reply(&request(history)).unwrap(),
            terminal("echo three")
        );
    }

    #[test]
    fn a_task_without_commands_finishes_at_once_and_without_prose_with_an_empty_message() {
        assert_eq!(
            next_reply(&request(conversation("Nothing to do"))).unwrap(),
            finish("Nothing to do")
        );
        let mut history = conversation("$ true");
        tool_round(
            &mut history,
            "c1",
            "terminal",
            r#"{"command":"true"}"#,
            "[The command completed with exit code 0.]",
        );
        assert_eq!(next_reply(&request(history)).unwrap(), finish(""));
    }

    #[test]
    fn string_content_and_several_text_parts_are_read_as_one_task() {
        let plain = request(vec![json!({"role": "user", "content": "$ ls\nlisted"})]);
        assert_eq!(next_reply(&plain).unwrap(), terminal("ls"));

        let parts = request(vec![json!({"role": "user", "content": [
            {"type": "text", "text": "$ pwd"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "text", "text": "$ ls\nlisted"}
        ]})]);
        assert_eq!(next_reply(&parts).unwrap(), terminal("pwd"));
    }

    #[test]
    fn a_request_after_the_finish_gets_the_final_message_as_plain_text() {
        let mut history = conversation("Nothing to do");
        tool_round(
            &mut history,
            "c1",
            "finish",
            r#"{"message":"Nothing to do"}"#,
            "Nothing to do",
        );
        assert_eq!(
            next_reply(&request(history)).unwrap(),
            Reply::Text("Nothing to do".into())
        );
    }

    #[test]
    fn a_request_without_tools_is_the_title_request_and_gets_a_short_title() {
        // The shape of the SDK's title request: the task embedded in instructions.
        let title_request = json!({
            "model": "fake-model",
            "messages": [
                {"role": "system", "content": "You are a helpful assistant that generates titles."},
                {"role": "user", "content": "Generate a title (maximum 50 characters) for a conversation that starts with this message:\n\n$ echo hello > hello.txt\n$ cat hello.txt\ndone.Also make sure to include ONE most relevant emoji at the start of the title."}
            ]
        });
        assert_eq!(
            next_reply(&title_request).unwrap(),
            Reply::Text("Run echo hello > hello.txt".into())
        );

        let long = json!({"messages": [user(&format!("$ echo {}", "x".repeat(80)))]});
        let Reply::Text(title) = next_reply(&long).unwrap() else {
            panic!("a title request gets text");
        };
        assert_eq!(title.chars().count(), TITLE_MAX_CHARS);
        assert!(title.ends_with('…'));

        let prose = json!({"messages": [user("Fix the login page")], "tools": []});
        assert_eq!(
            next_reply(&prose).unwrap(),
            Reply::Text("Scripted task".into())
        );
    }

    #[test]
    fn a_request_without_messages_is_rejected() {
        assert_eq!(
            next_reply(&json!({"model": "m"})),
            Err(ScriptError::NoMessages)
        );
        assert_eq!(
            next_reply(&json!({"messages": []})),
            Err(ScriptError::NoMessages)
        );
    }

    #[test]
    fn dollar_lines_need_the_space_and_carriage_returns_are_dropped() {
        assert_eq!(
            plan_task("Please:\r\n$ echo hi\r\n$HOME\r\n\r\n"),
            vec![
                Step::Command("echo hi".into()),
                Step::Finish("$HOME".into())
            ]
        );
    }
}
