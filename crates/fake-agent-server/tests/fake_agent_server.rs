//! Drives the in-process fake agent-server over real HTTP and WebSocket connections, checking
//! the contract a Cadenza worker relies on.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cadenza_fake_agent_server::{FakeAgentServerConfig, RunningFakeAgentServer, spawn};
use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Upper bound for anything a test waits for; generous for a loaded 2-core CI machine.
const WAIT: Duration = Duration::from_secs(30);
const KEY: &str = "test-session-key";
const HELLO_TASK: &str = "$ echo hello > hello.txt\n$ cat hello.txt\ndone";

struct Fake {
    server: RunningFakeAgentServer,
    http: reqwest::Client,
    key: Option<&'static str>,
    root: TempDir,
}

impl Fake {
    async fn start() -> Self {
        Self::start_with_keys(Vec::new()).await
    }

    async fn start_with_keys(keys: Vec<String>) -> Self {
        let root = tempfile::tempdir().expect("temp dir");
        let key = if keys.is_empty() { None } else { Some(KEY) };
        let server = spawn(FakeAgentServerConfig {
            session_api_keys: keys,
            default_working_dir: root.path().to_path_buf(),
        })
        .await
        .expect("fake starts");
        Self {
            server,
            http: reqwest::Client::new(),
            key,
            root,
        }
    }

    /// A working directory that does not exist yet: the fake creates it.
    fn workspace(&self) -> PathBuf {
        self.root.path().join("project")
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.base_url())
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, self.url(path));
        match self.key {
            Some(key) => request.header("X-Session-API-Key", key),
            None => request,
        }
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        send(self.request(reqwest::Method::GET, path)).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        send(self.request(reqwest::Method::POST, path).json(&body)).await
    }

    fn create_body(&self, task: Option<&str>) -> Value {
        let mut body = json!({
            "agent_settings": { "llm": { "model": "openai/fake-model", "api_key": "sk-fake" } },
            "workspace": { "working_dir": self.workspace() },
            "max_iterations": 10,
        });
        if let Some(task) = task {
            body["initial_message"] = user_message(task);
        }
        body
    }

    async fn create(&self, task: &str) -> String {
        let (status, info) = self
            .post("/api/conversations", self.create_body(Some(task)))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{info}");
        info["id"].as_str().expect("id").to_owned()
    }

    async fn status(&self, id: &str) -> String {
        let (status, info) = self.get(&format!("/api/conversations/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{info}");
        info["execution_status"]
            .as_str()
            .expect("status")
            .to_owned()
    }

    /// Waits for the conversation to report `wanted` over REST.
    async fn wait_for_status(&self, id: &str, wanted: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let status = self.status(id).await;
            if status == wanted {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "conversation {id} stayed {status}, wanted {wanted}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the log holds an event matching `predicate`.
    async fn wait_for_event(&self, id: &str, predicate: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(event) = self.all_events(id).await.into_iter().find(&predicate) {
                return event;
            }
            assert!(Instant::now() < deadline, "event never appeared in {id}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every event, following `next_page_id` with a small page size.
    async fn all_events(&self, id: &str) -> Vec<Value> {
        let mut events = Vec::new();
        let mut page_id: Option<String> = None;
        for _ in 0..1000 {
            let mut path = format!("/api/conversations/{id}/events/search?limit=5");
            if let Some(page_id) = &page_id {
                path.push_str(&format!("&page_id={page_id}"));
            }
            let (status, page) = self.get(&path).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            events.extend(page["items"].as_array().expect("items").iter().cloned());
            match page["next_page_id"].as_str() {
                Some(next) => page_id = Some(next.to_owned()),
                None => return events,
            }
        }
        panic!("paging did not end");
    }

    async fn socket(&self, path: &str) -> Socket {
        let url = self.url(path).replacen("http://", "ws://", 1);
        let mut request = url.into_client_request().expect("socket request");
        if let Some(key) = self.key {
            request
                .headers_mut()
                .insert("X-Session-API-Key", HeaderValue::from_static(key));
        }
        let (socket, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .expect("socket connects in time")
            .expect("socket connects");
        socket
    }
}

async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = tokio::time::timeout(WAIT, request.send())
        .await
        .expect("response in time")
        .expect("request succeeds");
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

fn user_message(text: &str) -> Value {
    json!({ "role": "user", "content": [{ "type": "text", "text": text }] })
}

/// The next text frame as JSON; fails on close or silence.
async fn next_frame(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("a frame in time")
            .expect("socket open")
            .expect("frame readable");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON frame"),
            Message::Close(frame) => panic!("socket closed: {frame:?}"),
            _ => {}
        }
    }
}

async fn close_code(socket: &mut Socket) -> u16 {
    loop {
        let message = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("a frame in time");
        match message {
            Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
            Some(Ok(Message::Close(None))) | None => panic!("closed without a code"),
            Some(Err(error)) => panic!("socket failed before closing: {error}"),
            Some(Ok(_)) => {}
        }
    }
}

fn is_final_state(event: &Value, statuses: &[&str]) -> bool {
    event["kind"] == "ConversationStateUpdateEvent"
        && event["key"] == "full_state"
        && statuses
            .iter()
            .any(|status| event["value"]["execution_status"] == *status)
}

/// Durable frames `(seq, event)` until the run's closing `full_state`.
async fn durables_until_run_end(socket: &mut Socket) -> Vec<(u64, Value)> {
    let mut durables = Vec::new();
    loop {
        let frame = next_frame(socket).await;
        if frame["type"] != "durable" {
            continue;
        }
        let seq = frame["seq"].as_u64().expect("seq");
        let event = frame["event"].clone();
        let done = is_final_state(&event, &["finished", "error", "paused"]);
        durables.push((seq, event));
        if done {
            return durables;
        }
    }
}

/// A compact label per event, to compare whole sequences at once.
fn label(event: &Value) -> String {
    let kind = event["kind"].as_str().unwrap_or("?");
    match kind {
        "ConversationStateUpdateEvent" if event["key"] == "execution_status" => {
            format!("status:{}", event["value"].as_str().unwrap_or("?"))
        }
        "ConversationStateUpdateEvent" => format!("state:{}", event["key"].as_str().unwrap_or("?")),
        "ActionEvent" | "ObservationEvent" => {
            format!("{kind}:{}", event["tool_name"].as_str().unwrap_or("?"))
        }
        "MessageEvent" => format!("MessageEvent:{}", event["source"].as_str().unwrap_or("?")),
        _ => kind.to_owned(),
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[tokio::test]
async fn hello_script_runs_in_the_workspace_and_finishes_with_the_real_event_sequence() {
    let fake = Fake::start().await;
    let id = fake.create(HELLO_TASK).await;
    let mut socket = fake
        .socket(&format!("/sockets/session/{id}?after_seq=-1"))
        .await;

    let sync = next_frame(&mut socket).await;
    assert_eq!(sync["type"], "sync");
    assert_eq!(sync["from_seq"], -1);
    let durables = durables_until_run_end(&mut socket).await;

    let seqs: Vec<u64> = durables.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (0..durables.len() as u64).collect::<Vec<_>>());
    let labels: Vec<String> = durables.iter().map(|(_, event)| label(event)).collect();
    assert_eq!(
        labels,
        [
            "SystemPromptEvent",
            "MessageEvent:user",
            "state:last_user_message_id",
            "status:running",
            "ActionEvent:terminal",
            "ObservationEvent:terminal",
            "ActionEvent:terminal",
            "ObservationEvent:terminal",
            "ActionEvent:finish",
            "ObservationEvent:finish",
            "status:finished",
            "state:full_state",
        ]
    );

    let events: Vec<&Value> = durables.iter().map(|(_, event)| event).collect();
    for event in &events {
        for field in ["kind", "id", "timestamp", "source"] {
            assert!(event.get(field).is_some(), "{field} missing in {event}");
        }
        let timestamp = event["timestamp"].as_str().expect("timestamp");
        assert!(
            !timestamp.ends_with('Z') && !timestamp.contains('+'),
            "{timestamp}"
        );
    }
    assert_eq!(events[1]["llm_message"]["content"][0]["text"], HELLO_TASK);
    assert_eq!(events[3]["source"], "environment");

    let first_action = events[4];
    assert_eq!(first_action["source"], "agent");
    assert_eq!(first_action["action"]["kind"], "TerminalAction");
    assert_eq!(first_action["action"]["command"], "echo hello > hello.txt");
    assert_eq!(first_action["security_risk"], "LOW");
    assert_eq!(
        first_action["tool_call"]["id"],
        first_action["tool_call_id"]
    );
    let arguments: Value = serde_json::from_str(
        first_action["tool_call"]["arguments"]
            .as_str()
            .expect("arguments string"),
    )
    .expect("arguments JSON");
    assert_eq!(arguments["command"], "echo hello > hello.txt");

    let cat_observation = events[7];
    assert_eq!(cat_observation["source"], "environment");
    assert_eq!(cat_observation["action_id"], events[6]["id"]);
    assert_eq!(cat_observation["tool_call_id"], events[6]["tool_call_id"]);
    let observation = &cat_observation["observation"];
    assert_eq!(observation["kind"], "TerminalObservation");
    assert_eq!(observation["content"][0]["text"], "hello\n");
    assert_eq!(observation["exit_code"], 0);
    assert_eq!(observation["metadata"]["exit_code"], 0);
    assert_eq!(observation["timeout"], false);

    assert_eq!(
        events[8]["action"],
        json!({ "kind": "FinishAction", "message": "done" })
    );
    assert_eq!(events[9]["observation"]["kind"], "FinishObservation");
    assert_eq!(events[9]["observation"]["content"][0]["text"], "done");
    assert_eq!(events[11]["value"]["execution_status"], "finished");

    let workspace = fake.workspace();
    assert_eq!(
        std::fs::read_to_string(workspace.join("hello.txt")).expect("hello.txt written"),
        "hello\n"
    );
    assert!(
        workspace.join(".git").exists(),
        "the workspace is made a git repository"
    );
    assert_eq!(fake.status(&id).await, "finished");
    let (_, final_response) = fake
        .get(&format!("/api/conversations/{id}/agent_final_response"))
        .await;
    assert_eq!(final_response, json!({ "response": "done" }));
}

#[tokio::test]
async fn creating_twice_with_one_id_returns_the_existing_conversation_without_a_second_message() {
    let fake = Fake::start().await;
    let id = uuid::Uuid::new_v4().to_string();
    let mut body = fake.create_body(Some(HELLO_TASK));
    body["conversation_id"] = json!(id);
    body["persistence_dir"] = json!("ignored/unknown/key");

    let (first_status, first) = fake.post("/api/conversations", body.clone()).await;
    assert_eq!(first_status, StatusCode::CREATED, "{first}");
    assert_eq!(first["id"], id);
    let (second_status, second) = fake.post("/api/conversations", body).await;
    assert_eq!(second_status, StatusCode::OK, "{second}");
    assert_eq!(second["id"], id);

    fake.wait_for_status(&id, "finished").await;
    let (_, user_messages) = fake
        .get(&format!(
            "/api/conversations/{id}/events/count?kind=MessageEvent&source=user"
        ))
        .await;
    assert_eq!(user_messages, 1);
    let (_, finishes) = fake
        .get(&format!(
            "/api/conversations/{id}/events/count?kind=ActionEvent"
        ))
        .await;
    assert_eq!(finishes, 3, "two commands and one finish, run once");
}

#[tokio::test]
async fn session_socket_resumes_after_a_seq_without_gap_or_duplicate() {
    let fake = Fake::start().await;
    let id = fake.create(HELLO_TASK).await;
    fake.wait_for_status(&id, "finished").await;
    let history = fake.all_events(&id).await;
    let last_seq = history.len() as u64 - 1;

    let resume_after = 4;
    let mut socket = fake
        .socket(&format!("/sockets/session/{id}?after_seq={resume_after}"))
        .await;
    let sync = next_frame(&mut socket).await;
    assert_eq!(
        sync,
        json!({ "type": "sync", "from_seq": resume_after, "through_seq": last_seq })
    );
    let mut seqs = Vec::new();
    for _ in resume_after + 1..=last_seq {
        let frame = next_frame(&mut socket).await;
        assert_eq!(frame["type"], "durable", "{frame}");
        let seq = frame["seq"].as_u64().expect("seq");
        assert_eq!(
            frame["event"], history[seq as usize],
            "replay matches the log"
        );
        seqs.push(seq);
    }
    let transient = next_frame(&mut socket).await;
    assert_eq!(transient["type"], "transient");
    assert_eq!(transient["event"]["key"], "full_state");
    assert_eq!(transient["event"]["value"]["execution_status"], "finished");

    // A follow-up message sent over the socket starts a second turn; its events arrive live.
    socket
        .send(Message::Text(
            user_message("$ echo again >> hello.txt\nsecond")
                .to_string()
                .into(),
        ))
        .await
        .expect("send message frame");
    let live = durables_until_run_end(&mut socket).await;
    seqs.extend(live.iter().map(|(seq, _)| *seq));
    let expected: Vec<u64> = (resume_after + 1..resume_after + 1 + seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "contiguous, no gap and no duplicate");

    let labels: Vec<String> = live.iter().map(|(_, event)| label(event)).collect();
    assert_eq!(
        labels,
        [
            "status:idle",
            "MessageEvent:user",
            "state:last_user_message_id",
            "status:running",
            "ActionEvent:terminal",
            "ObservationEvent:terminal",
            "ActionEvent:finish",
            "ObservationEvent:finish",
            "status:finished",
            "state:full_state",
        ]
    );
    assert_eq!(
        std::fs::read_to_string(fake.workspace().join("hello.txt")).expect("hello.txt"),
        "hello\nagain\n"
    );
}

#[tokio::test]
async fn sockets_opened_during_a_run_see_every_event_exactly_once() {
    let fake = Fake::start().await;
    let task: String = (0..15)
        .map(|i| format!("$ echo step {i}\n"))
        .collect::<String>()
        + "ok";
    let mut body = fake.create_body(Some(&task));
    body["max_iterations"] = json!(50);
    let (status, info) = fake.post("/api/conversations", body).await;
    assert_eq!(status, StatusCode::CREATED);
    let id = info["id"].as_str().expect("id").to_owned();

    let mut sockets = Vec::new();
    for _ in 0..4 {
        sockets.push(
            fake.socket(&format!("/sockets/session/{id}?after_seq=-1"))
                .await,
        );
    }
    for socket in &mut sockets {
        let durables = durables_until_run_end(socket).await;
        let seqs: Vec<u64> = durables.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
        // Prompt, message, two state updates, 15 command pairs, the finish pair, the status
        // change and the closing snapshot.
        assert_eq!(seqs.len(), 4 + 30 + 2 + 2);
        assert!(is_final_state(&durables[seqs.len() - 1].1, &["finished"]));
    }
}

#[tokio::test]
async fn a_live_only_session_socket_gets_sync_then_the_snapshot_then_new_events() {
    let fake = Fake::start().await;
    let (status, info) = fake
        .post("/api/conversations", fake.create_body(None))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(info["execution_status"], "idle");
    let id = info["id"].as_str().expect("id").to_owned();

    let mut socket = fake.socket(&format!("/sockets/session/{id}")).await;
    assert_eq!(
        next_frame(&mut socket).await,
        json!({ "type": "sync", "from_seq": null, "through_seq": null })
    );
    let snapshot = next_frame(&mut socket).await;
    assert_eq!(snapshot["type"], "transient");
    assert_eq!(snapshot["event"]["value"]["execution_status"], "idle");

    let mut message = user_message("$ true\nfine");
    message["run"] = json!(true);
    let (status, _) = fake
        .post(&format!("/api/conversations/{id}/events"), message)
        .await;
    assert_eq!(status, StatusCode::OK);
    let live = durables_until_run_end(&mut socket).await;
    assert_eq!(live[0].0, 0);
    assert_eq!(label(&live[0].1), "SystemPromptEvent");
}

#[tokio::test]
async fn legacy_socket_sends_a_full_state_snapshot_first_then_the_replay() {
    let fake = Fake::start().await;
    let id = fake.create(HELLO_TASK).await;
    fake.wait_for_status(&id, "finished").await;
    let history = fake.all_events(&id).await;

    let mut socket = fake
        .socket(&format!("/sockets/events/{id}?resend_mode=all"))
        .await;
    let snapshot = next_frame(&mut socket).await;
    assert_eq!(snapshot["kind"], "ConversationStateUpdateEvent");
    assert_eq!(snapshot["key"], "full_state");
    assert!(
        history.iter().all(|event| event["id"] != snapshot["id"]),
        "the connect-time snapshot is not persisted"
    );
    for event in &history {
        assert_eq!(&next_frame(&mut socket).await, event);
    }
}

#[tokio::test]
async fn events_search_pages_with_inclusive_page_ids_and_filters() {
    let fake = Fake::start().await;
    let id = fake.create(HELLO_TASK).await;
    fake.wait_for_status(&id, "finished").await;
    let (_, everything) = fake
        .get(&format!("/api/conversations/{id}/events/search"))
        .await;
    let everything = everything["items"].as_array().expect("items").clone();
    assert_eq!(everything.len(), 12);

    let (_, first_page) = fake
        .get(&format!("/api/conversations/{id}/events/search?limit=5"))
        .await;
    assert_eq!(
        first_page["items"].as_array().expect("items")[..],
        everything[..5]
    );
    assert_eq!(first_page["next_page_id"], everything[5]["id"]);

    let page_id = everything[5]["id"].as_str().expect("id");
    let (_, second_page) = fake
        .get(&format!(
            "/api/conversations/{id}/events/search?limit=5&page_id={page_id}"
        ))
        .await;
    assert_eq!(
        second_page["items"][0], everything[5],
        "page_id is inclusive"
    );
    assert_eq!(second_page["next_page_id"], everything[10]["id"]);

    let (_, last_page) = fake
        .get(&format!(
            "/api/conversations/{id}/events/search?page_id={}",
            everything[10]["id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(last_page["items"].as_array().expect("items").len(), 2);
    assert_eq!(last_page["next_page_id"], Value::Null);

    let (_, restarted) = fake
        .get(&format!(
            "/api/conversations/{id}/events/search?limit=2&page_id=no-such-event"
        ))
        .await;
    assert_eq!(
        restarted["items"][0], everything[0],
        "unknown page_id restarts"
    );

    let (_, actions) = fake
        .get(&format!(
            "/api/conversations/{id}/events/search?kind=ActionEvent&source=agent"
        ))
        .await;
    assert_eq!(actions["items"].as_array().expect("items").len(), 3);
    let (_, environment_count) = fake
        .get(&format!(
            "/api/conversations/{id}/events/count?source=environment"
        ))
        .await;
    let expected = everything
        .iter()
        .filter(|event| event["source"] == "environment")
        .count();
    assert_eq!(environment_count, expected);

    let (status, single) = fake
        .get(&format!(
            "/api/conversations/{id}/events/{}",
            everything[4]["id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(single, everything[4]);
    let (status, _) = fake
        .get(&format!("/api/conversations/{id}/events/not-an-event"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    for bad_limit in ["0", "101", "many"] {
        let (status, body) = fake
            .get(&format!(
                "/api/conversations/{id}/events/search?limit={bad_limit}"
            ))
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad_limit}: {body}"
        );
    }
}

#[tokio::test]
async fn conversations_search_pages_and_filters_by_status() {
    let fake = Fake::start().await;
    let (_, info) = fake
        .post("/api/conversations", fake.create_body(None))
        .await;
    let idle = info["id"].as_str().expect("id").to_owned();
    let finished = fake.create("$ true\nok").await;
    fake.wait_for_status(&finished, "finished").await;

    let (_, page) = fake.get("/api/conversations/search?limit=1").await;
    assert_eq!(page["items"].as_array().expect("items").len(), 1);
    let next = page["next_page_id"]
        .as_str()
        .expect("a second page")
        .to_owned();
    let (_, rest) = fake
        .get(&format!("/api/conversations/search?limit=1&page_id={next}"))
        .await;
    assert_eq!(rest["items"][0]["id"], next);
    assert_eq!(rest["next_page_id"], Value::Null);

    let (_, idle_only) = fake.get("/api/conversations/search?status=idle").await;
    assert_eq!(idle_only["items"].as_array().expect("items").len(), 1);
    assert_eq!(idle_only["items"][0]["id"], idle);
    let (_, count) = fake.get("/api/conversations/count").await;
    assert_eq!(count, 2);
}

#[tokio::test]
async fn a_wrong_or_missing_session_key_is_rejected() {
    let fake = Fake::start_with_keys(vec![KEY.to_owned(), "rotated-key".to_owned()]).await;
    let client = reqwest::Client::new();
    let search = fake.url("/api/conversations/search");

    let (status, body) = send(client.get(&search)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body, json!({ "detail": "Unauthorized" }));
    let (status, body) = send(client.get(&search).header("X-Session-API-Key", "wrong")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body, json!({ "detail": "Unauthorized" }));
    let (status, _) = send(
        client
            .get(&search)
            .header("X-Session-API-Key", "rotated-key"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "every configured key is accepted");

    for open in ["/alive", "/health", "/ready", "/server_info"] {
        let (status, _) = send(client.get(fake.url(open))).await;
        assert_eq!(status, StatusCode::OK, "{open} needs no key");
    }

    let (_, info) = fake
        .post("/api/conversations", fake.create_body(None))
        .await;
    let id = info["id"].as_str().expect("id").to_owned();
    let socket_url = fake
        .url(&format!("/sockets/session/{id}"))
        .replacen("http://", "ws://", 1);

    let mut request = socket_url.as_str().into_client_request().expect("request");
    request
        .headers_mut()
        .insert("X-Session-API-Key", HeaderValue::from_static("wrong"));
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("accepted before auth");
    assert_eq!(close_code(&mut socket).await, 4001);

    let (mut socket, _) = tokio_tungstenite::connect_async(socket_url.as_str())
        .await
        .expect("accepted before auth");
    socket
        .send(Message::Text(
            json!({ "type": "auth", "session_api_key": "wrong" })
                .to_string()
                .into(),
        ))
        .await
        .expect("send auth frame");
    assert_eq!(close_code(&mut socket).await, 4001);

    let (mut socket, _) = tokio_tungstenite::connect_async(socket_url.as_str())
        .await
        .expect("accepted before auth");
    socket
        .send(Message::Text(
            json!({ "type": "auth", "session_api_key": KEY })
                .to_string()
                .into(),
        ))
        .await
        .expect("send auth frame");
    assert_eq!(next_frame(&mut socket).await["type"], "sync");

    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("{socket_url}?session_api_key={KEY}"))
            .await
            .expect("query auth");
    assert_eq!(next_frame(&mut socket).await["type"], "sync");
}

#[tokio::test]
async fn unknown_conversations_are_404_over_rest_and_4004_over_sockets() {
    let fake = Fake::start().await;
    let unknown = uuid::Uuid::new_v4();
    let (status, body) = fake.get(&format!("/api/conversations/{unknown}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["detail"].is_string());
    let (status, _) = fake
        .post(&format!("/api/conversations/{unknown}/run"), json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    for path in [
        format!("/sockets/session/{unknown}?after_seq=-1"),
        format!("/sockets/events/{unknown}"),
    ] {
        let mut socket = fake.socket(&path).await;
        assert_eq!(close_code(&mut socket).await, 4004, "{path}");
    }
}

#[tokio::test]
async fn run_while_running_is_a_conflict_and_interrupt_pauses_at_once() {
    let fake = Fake::start().await;
    let id = fake.create("$ sleep 30\nnever reached").await;
    fake.wait_for_event(&id, |event| event["action"]["command"] == "sleep 30")
        .await;
    assert_eq!(fake.status(&id).await, "running");

    let (status, body) = fake
        .post(&format!("/api/conversations/{id}/run"), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    let started = Instant::now();
    let (status, body) = fake
        .post(&format!("/api/conversations/{id}/interrupt"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "success": true }));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "interrupt took {:?}",
        started.elapsed()
    );
    assert_eq!(fake.status(&id).await, "paused");
    let events = fake.all_events(&id).await;
    assert!(
        events
            .iter()
            .all(|event| event["observation"]["kind"] != "TerminalObservation"),
        "the killed command produced no observation"
    );

    // Resuming carries on with what is left of the plan: the final answer.
    let (status, _) = fake
        .post(&format!("/api/conversations/{id}/run"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    fake.wait_for_status(&id, "finished").await;
    let (_, response) = fake
        .get(&format!("/api/conversations/{id}/agent_final_response"))
        .await;
    assert_eq!(response["response"], "never reached");
}

#[tokio::test]
async fn pause_stops_after_the_current_command() {
    let fake = Fake::start().await;
    let id = fake.create("$ echo first\n$ echo second\nok").await;
    let (status, _) = fake
        .post(&format!("/api/conversations/{id}/pause"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let status = fake.status(&id).await;
    assert!(
        status == "paused" || status == "finished",
        "pause returns once the run has stopped, got {status}"
    );
}

#[tokio::test]
async fn exceeding_max_iterations_is_a_conversation_error() {
    let fake = Fake::start().await;
    let mut body = fake.create_body(Some("$ true\n$ true\n$ true\nnot reached"));
    body["max_iterations"] = json!(2);
    let (status, info) = fake.post("/api/conversations", body).await;
    assert_eq!(status, StatusCode::CREATED);
    let id = info["id"].as_str().expect("id").to_owned();
    fake.wait_for_status(&id, "error").await;
    let error = fake
        .wait_for_event(&id, |event| event["kind"] == "ConversationErrorEvent")
        .await;
    assert_eq!(error["code"], "MaxIterationsReached");
    assert_eq!(error["source"], "environment");
    let (_, actions) = fake
        .get(&format!(
            "/api/conversations/{id}/events/count?kind=ActionEvent"
        ))
        .await;
    assert_eq!(actions, 2);
}

#[tokio::test]
async fn static_secrets_are_exported_to_the_commands() {
    let fake = Fake::start().await;
    let mut body = fake.create_body(Some("$ printf %s \"$API_TOKEN-$OTHER\" > token.txt\nok"));
    body["secrets"] = json!({
        "API_TOKEN": { "kind": "StaticSecret", "value": "s3cret" },
        "OTHER": { "kind": "StaticSecret", "value": "static", "description": "d" },
        "UNSET": { "kind": "StaticSecret" },
    });
    let (status, info) = fake.post("/api/conversations", body).await;
    assert_eq!(status, StatusCode::CREATED, "{info}");
    assert_eq!(info["agent"]["llm"]["api_key"], "**********");
    let id = info["id"].as_str().expect("id").to_owned();
    fake.wait_for_status(&id, "finished").await;
    assert_eq!(
        std::fs::read_to_string(fake.workspace().join("token.txt")).expect("token.txt"),
        "s3cret-static"
    );
}

/// The bodies are what the real server answered to the same requests.
#[tokio::test]
async fn create_refuses_plain_string_secrets_and_non_string_llm_keys_like_the_real_server() {
    let fake = Fake::start().await;
    let mut body = fake.create_body(Some("$ true\nok"));
    body["secrets"] = json!({
        "A": "x",
        "B": { "kind": "StaticSecret", "value": "y" },
        "C": { "kind": "Nope", "value": "z" },
    });
    let (status, refused) = fake.post("/api/conversations", body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let unknown_kind = "Unknown kind 'Nope' for openhands.sdk.secret.secrets.SecretSource; \
                        Expected one of: ['LookupSecret', 'StaticSecret']";
    assert_eq!(
        refused,
        json!({"detail": [
            {
                "type": "model_attributes_type",
                "loc": ["body", "secrets", "A"],
                "msg": "Input should be a valid dictionary or object to extract fields from",
                "input": "x",
            },
            {
                "type": "value_error",
                "loc": ["body", "secrets", "C"],
                "msg": format!("Value error, {unknown_kind}"),
                "input": { "kind": "Nope", "value": "z" },
                "ctx": { "error": unknown_kind },
            },
        ]})
    );

    let mut body = fake.create_body(None);
    body["secrets"] = json!({ "N": { "kind": "StaticSecret", "value": 7 } });
    let (status, refused) = fake.post("/api/conversations", body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        refused["detail"],
        json!([{
            "type": "string_type",
            "loc": ["body", "secrets", "N", "value"],
            "msg": "Input should be a valid string",
            "input": 7,
        }])
    );

    let mut body = fake.create_body(None);
    body["secrets"] = Value::Null;
    let (status, refused) = fake.post("/api/conversations", body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused["detail"][0]["type"], "dict_type");
    assert_eq!(refused["detail"][0]["loc"], json!(["body", "secrets"]));

    let mut body = fake.create_body(None);
    body.as_object_mut()
        .expect("object")
        .remove("agent_settings");
    body["agent"] = json!({
        "kind": "Agent",
        "llm": { "model": "openai/fake-model", "api_key": { "kind": "StaticSecret", "value": "sk" } },
        "tools": [],
    });
    let (status, refused) = fake.post("/api/conversations", body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let detail = refused["detail"].as_array().expect("detail list");
    assert_eq!(detail.len(), 2, "one error per union branch: {refused}");
    assert_eq!(
        detail[0]["loc"],
        json!(["body", "agent", "llm", "api_key", "str"])
    );
    assert_eq!(detail[0]["type"], "string_type");

    let mut body = fake.create_body(None);
    body["max_iterations"] = json!(0);
    let (status, refused) = fake.post("/api/conversations", body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        refused["detail"],
        json!([{
            "type": "greater_than_equal",
            "loc": ["body", "max_iterations"],
            "msg": "Input should be greater than or equal to 1",
            "input": 0,
            "ctx": { "ge": 1 },
        }])
    );

    // The secrets-update route, unlike create, takes plain strings.
    let (_, info) = fake
        .post("/api/conversations", fake.create_body(None))
        .await;
    let id = info["id"].as_str().expect("id");
    let (status, _) = fake
        .post(
            &format!("/api/conversations/{id}/secrets"),
            json!({ "secrets": { "A": "x" } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn git_delta_archive_covers_edits_new_files_and_deletions_without_touching_the_index() {
    let fake = Fake::start().await;
    let workspace = fake.workspace();
    std::fs::create_dir_all(&workspace).expect("workspace");
    git(&workspace, &["init", "--quiet"]);
    std::fs::write(workspace.join("README.md"), "original\n").expect("readme");
    std::fs::write(workspace.join("obsolete.txt"), "old\n").expect("obsolete");
    git(&workspace, &["add", "."]);
    git(&workspace, &["commit", "--quiet", "-m", "base"]);
    let base = git(&workspace, &["rev-parse", "HEAD"]);

    let id = fake
        .create("$ echo hello > hello.txt\n$ echo changed > README.md\n$ rm obsolete.txt\ndone")
        .await;
    fake.wait_for_status(&id, "finished").await;
    let status_before = git(&workspace, &["status", "--porcelain"]);

    let response = fake
        .request(reqwest::Method::GET, "/api/file/archive")
        .query(&[
            ("path", workspace.to_str().expect("utf-8 path")),
            ("format", "git-delta"),
            ("base_ref", base.as_str()),
        ])
        .send()
        .await
        .expect("archive request");
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/x-patch");
    assert_eq!(headers["x-archive-base-commit"], base.as_str());
    assert_eq!(headers["x-archive-base-ref"], base.as_str());
    assert_eq!(headers["x-archive-head-commit"], base.as_str());
    assert!(headers.contains_key("x-archive-branch"));
    assert_eq!(
        Path::new(headers["x-archive-repo-root"].to_str().expect("ascii"))
            .canonicalize()
            .expect("repo root exists"),
        workspace.canonicalize().expect("workspace exists")
    );
    let patch = response.text().await.expect("patch text");
    assert!(
        patch.contains("diff --git a/hello.txt b/hello.txt"),
        "{patch}"
    );
    assert!(patch.contains("+hello"), "{patch}");
    assert!(patch.contains("-original\n+changed"), "{patch}");
    assert!(patch.contains("deleted file mode"), "{patch}");

    assert_eq!(
        git(&workspace, &["status", "--porcelain"]),
        status_before,
        "the real index is untouched"
    );
    assert!(status_before.contains("?? hello.txt"), "{status_before}");

    // The patch applies cleanly to the base.
    let clone = fake.root.path().join("clone");
    git(
        fake.root.path(),
        &[
            "clone",
            "--quiet",
            workspace.to_str().expect("utf-8"),
            clone.to_str().expect("utf-8"),
        ],
    );
    std::fs::write(fake.root.path().join("change.patch"), &patch).expect("patch file");
    git(&clone, &["apply", "../change.patch"]);
    assert_eq!(
        std::fs::read_to_string(clone.join("hello.txt")).expect("hello.txt"),
        "hello\n"
    );
    assert!(!clone.join("obsolete.txt").exists());
}

#[tokio::test]
async fn git_delta_archive_without_commits_diffs_against_the_empty_tree() {
    let fake = Fake::start().await;
    let id = fake.create(HELLO_TASK).await;
    fake.wait_for_status(&id, "finished").await;
    let response = fake
        .request(reqwest::Method::GET, "/api/file/archive")
        .query(&[
            ("path", fake.workspace().to_str().expect("utf-8 path")),
            ("format", "git-delta"),
        ])
        .send()
        .await
        .expect("archive request");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["x-archive-base-commit"],
        "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
    );
    let patch = response.text().await.expect("patch");
    assert!(patch.contains("new file mode"), "{patch}");
    assert!(patch.contains("+hello"), "{patch}");

    let (status, body) = fake
        .get("/api/file/archive?path=relative/project&format=git-delta")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn execute_bash_command_returns_a_joined_bash_output() {
    let fake = Fake::start().await;
    let (status, output) = fake
        .post(
            "/api/bash/execute_bash_command",
            json!({ "command": "pwd; echo out; echo err >&2; exit 4", "cwd": fake.root.path(), "timeout": 30 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{output}");
    assert_eq!(output["kind"], "BashOutput");
    assert_eq!(output["exit_code"], 4);
    assert_eq!(
        output["stdout"],
        format!("{}\nout\n", fake.root.path().display())
    );
    assert_eq!(output["stderr"], "err\n");
    for field in ["id", "timestamp", "command_id", "order"] {
        assert!(output.get(field).is_some(), "{field} missing");
    }

    let (status, output) = fake
        .post(
            "/api/bash/execute_bash_command",
            json!({ "command": "sleep 30", "timeout": 0.2 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        output["exit_code"], -1,
        "a timed-out command has no exit code"
    );
}

#[tokio::test]
async fn malformed_requests_get_client_errors_not_panics() {
    let fake = Fake::start().await;
    let (status, _) = fake
        .post("/api/conversations", json!("not an object"))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = fake
        .post(
            "/api/conversations",
            json!({ "workspace": { "working_dir": "/tmp" } }),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "an agent is required"
    );
    let (status, _) = fake.get("/api/conversations/not-a-uuid").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (_, info) = fake
        .post("/api/conversations", fake.create_body(None))
        .await;
    let id = info["id"].as_str().expect("id");
    let (status, _) = fake
        .post(
            &format!("/api/conversations/{id}/events"),
            json!({ "role": "user", "content": [{ "type": "text", "text": "x", "extra": 1 }] }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = fake
        .post(
            "/api/bash/execute_bash_command",
            json!({ "command": "true", "timeout": -1 }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, body) = fake.get("/no/such/route").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, json!({ "detail": "Not Found" }));
}

#[tokio::test]
async fn server_info_reports_version_capabilities_and_tools() {
    let fake = Fake::start().await;
    let (status, info) = fake.get("/server_info").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        info["version"]
            .as_str()
            .expect("version")
            .starts_with("1.58")
    );
    assert!(
        info["capabilities"]
            .as_array()
            .expect("capabilities")
            .contains(&json!("idempotent_conversation_create_v1"))
    );
    assert!(
        info["usable_tools"]
            .as_array()
            .expect("tools")
            .contains(&json!("terminal"))
    );
    assert!(info["uptime"].is_number() && info["idle_time"].is_number());
    assert_eq!(fake.get("/health").await.1, json!({ "status": "ok" }));
    assert_eq!(fake.get("/alive").await.1, json!({ "status": "ok" }));
    assert_eq!(fake.get("/ready").await.1, json!({ "status": "ready" }));
}

#[tokio::test]
async fn deleting_a_conversation_keeps_the_workspace_and_forgets_the_history() {
    let fake = Fake::start().await;
    let id = fake.create(HELLO_TASK).await;
    fake.wait_for_status(&id, "finished").await;
    let response = fake
        .request(reqwest::Method::DELETE, &format!("/api/conversations/{id}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(response.status(), StatusCode::OK);
    let (status, _) = fake.get(&format!("/api/conversations/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(fake.workspace().join("hello.txt").exists());
}
