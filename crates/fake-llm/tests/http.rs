//! The fake LLM over real HTTP on loopback, as the agent-server's LiteLLM client talks to it:
//! whole and streamed completions, the model list, and the API key.

use cadenza_fake_llm::{FakeLlmConfig, RunningFakeLlm, spawn};
use serde_json::{Value, json};

const KEY: &str = "sk-fake";
const TASK: &str = "$ echo hello > hello.txt\n$ cat hello.txt\ndone";

async fn start() -> (RunningFakeLlm, reqwest::Client) {
    let llm = spawn(FakeLlmConfig::with_api_key(KEY)).await.unwrap();
    (llm, reqwest::Client::new())
}

/// The first request of a conversation, shaped as the agent-server sends it.
fn first_request(stream: bool) -> Value {
    let mut body = json!({
        "model": "fake-model",
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "You are OpenHands agent..."}]},
            {"role": "user", "content": [{"type": "text", "text": TASK}]}
        ],
        "tools": [
            {"type": "function", "function": {"name": "terminal", "description": "Run a command", "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}},
            {"type": "function", "function": {"name": "finish", "description": "Finish", "parameters": {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]}}}
        ],
        "prompt_cache_key": "c0ffee",
        "reasoning_effort": "high"
    });
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

async fn post(
    client: &reqwest::Client,
    llm: &RunningFakeLlm,
    path: &str,
    body: &Value,
) -> reqwest::Response {
    client
        .post(format!("{}{path}", llm.base_url()))
        .bearer_auth(KEY)
        .json(body)
        .send()
        .await
        .unwrap()
}

fn arguments_of(call: &Value) -> Value {
    serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn a_whole_completion_calls_the_terminal_with_the_first_command() {
    let (llm, client) = start().await;
    let response = post(&client, &llm, "/chat/completions", &first_request(false)).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();

    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "fake-model");
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(choice["message"]["content"].is_string());
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(call["function"]["name"], "terminal");
    assert_eq!(
        arguments_of(call),
        json!({"command": "echo hello > hello.txt"})
    );
    let usage = &body["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn a_streamed_completion_sends_chunks_that_assemble_into_the_same_tool_call() {
    let (llm, client) = start().await;
    let response = post(&client, &llm, "/chat/completions", &first_request(true)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let text = response.text().await.unwrap();
    let payloads: Vec<&str> = text
        .split("\n\n")
        .filter(|frame| !frame.is_empty())
        .map(|frame| {
            frame
                .strip_prefix("data: ")
                .expect("every frame is a data line")
        })
        .collect();
    assert_eq!(payloads.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = payloads[..payloads.len() - 1]
        .iter()
        .map(|payload| serde_json::from_str(payload).unwrap())
        .collect();

    assert!(
        chunks
            .iter()
            .all(|chunk| chunk["object"] == "chat.completion.chunk")
    );
    let id = &chunks[0]["id"];
    assert!(chunks.iter().all(|chunk| &chunk["id"] == id));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");

    let deltas: Vec<&Value> = chunks
        .iter()
        .filter_map(|chunk| chunk["choices"].get(0))
        .map(|choice| &choice["delta"])
        .collect();
    let header = deltas
        .iter()
        .find_map(|delta| {
            delta["tool_calls"][0]["id"]
                .as_str()
                .map(|_| &delta["tool_calls"][0])
        })
        .expect("a tool-call header");
    assert_eq!(header["function"]["name"], "terminal");
    assert_eq!(header["function"]["arguments"], "");
    let arguments: String = deltas
        .iter()
        .filter_map(|delta| delta["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).unwrap(),
        json!({"command": "echo hello > hello.txt"})
    );

    let finish = &chunks[chunks.len() - 2]["choices"][0];
    assert_eq!(finish["finish_reason"], "tool_calls");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["total_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn after_the_last_command_result_the_answer_is_finish_with_the_final_line() {
    let (llm, client) = start().await;
    let mut request = first_request(false);
    let messages = request["messages"].as_array_mut().unwrap();
    for (index, command, output) in [
        (1, "echo hello > hello.txt", ""),
        (2, "cat hello.txt", "hello\n"),
    ] {
        let id = format!("call_{index}");
        messages.push(json!({
            "role": "assistant",
            "content": [{"type": "text", "text": "Running it."}],
            "tool_calls": [{"id": id, "type": "function", "function": {"name": "terminal", "arguments": json!({"command": command}).to_string()}}]
        }));
        messages.push(json!({
            "role": "tool",
            "tool_call_id": id,
            "name": "terminal",
            "content": [{"type": "text", "text": format!("{output}[The command completed with exit code 0.]")}]
        }));
    }
    let body: Value = post(&client, &llm, "/chat/completions", &request)
        .await
        .json()
        .await
        .unwrap();
    let call = &body["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "finish");
    assert_eq!(arguments_of(call), json!({"message": "done"}));
}

#[tokio::test]
async fn the_title_request_without_tools_gets_plain_text_in_both_modes() {
    let (llm, client) = start().await;
    let request = json!({
        "model": "fake-model",
        "messages": [{"role": "user", "content": "Write a short title for: Fix the login page"}]
    });
    let body: Value = post(&client, &llm, "/chat/completions", &request)
        .await
        .json()
        .await
        .unwrap();
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "stop");
    assert!(choice["message"].get("tool_calls").is_none());
    assert!(!choice["message"]["content"].as_str().unwrap().is_empty());

    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    let text = post(&client, &llm, "/chat/completions", &streamed)
        .await
        .text()
        .await
        .unwrap();
    assert!(text.contains(r#""finish_reason":"stop""#), "{text}");
    assert!(!text.contains("tool_calls"), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
}

#[tokio::test]
async fn a_missing_or_wrong_key_is_401_in_openais_error_shape_and_health_is_open() {
    let (llm, client) = start().await;
    let url = format!("{}/chat/completions", llm.base_url());

    let missing = client
        .post(&url)
        .json(&first_request(false))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 401);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert!(body["error"]["message"].is_string());

    let wrong = client
        .post(&url)
        .bearer_auth("sk-wrong")
        .json(&first_request(false))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    let models = client
        .get(format!("{}/models", llm.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 401);

    let health = client
        .get(format!("http://{}/health", llm.address()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn the_model_list_names_one_model_and_both_path_spellings_work() {
    let (llm, client) = start().await;
    let models: Value = client
        .get(format!("{}/models", llm.base_url()))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"].as_array().unwrap().len(), 1);
    assert_eq!(models["data"][0]["id"], "fake-model");

    let without_prefix = client
        .post(format!("http://{}/chat/completions", llm.address()))
        .bearer_auth(KEY)
        .json(&first_request(false))
        .send()
        .await
        .unwrap();
    assert_eq!(without_prefix.status(), 200);
}

#[tokio::test]
async fn malformed_requests_are_400_with_an_error_body() {
    let (llm, client) = start().await;
    for body in [json!([1, 2]), json!({"model": "fake-model"})] {
        let response = post(&client, &llm, "/chat/completions", &body).await;
        assert_eq!(response.status(), 400);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["type"], "invalid_request_error");
    }
    let not_json = client
        .post(format!("{}/chat/completions", llm.base_url()))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);
}

#[tokio::test]
async fn without_a_configured_key_no_authorization_is_needed() {
    let llm = spawn(FakeLlmConfig::default()).await.unwrap();
    let response = reqwest::Client::new()
        .post(format!("{}/chat/completions", llm.base_url()))
        .json(&first_request(false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}
