//! The client against the contract-faithful fake agent-server: every call a worker makes, over
//! real HTTP and WebSocket connections on loopback.
//!
//! The fake's scripted agent runs each task line starting with `$ ` in the workspace, then
//! finishes with the last other line as its answer.

use std::path::Path;
use std::time::Duration;

use cadenza_agent_client::{
    AgentEvent, AgentServerClient, AgentSpec, CreateOutcome, Error, ExecutionStatus, LlmConfig,
    RunOutcome, SessionFrame, SessionSocket, StartConversationRequest, TypedEvent,
};
use cadenza_testkit::fake_agent::{self, FakeAgentServerConfig, RunningFakeAgentServer};
use secrecy::SecretString;
use tempfile::TempDir;
use url::Url;
use uuid::Uuid;

const SESSION_KEY: &str = "fake-session-key";
/// Upper bound for anything the fake does; it finishes scripted tasks in well under a second.
const BUDGET: Duration = Duration::from_secs(20);

struct Harness {
    client: AgentServerClient,
    workspace: TempDir,
    server: RunningFakeAgentServer,
}

impl Harness {
    async fn start() -> Self {
        let workspace = tempfile::tempdir().unwrap();
        let server = fake_agent::spawn(FakeAgentServerConfig {
            session_api_keys: vec![SESSION_KEY.to_owned()],
            default_working_dir: workspace.path().to_path_buf(),
        })
        .await
        .unwrap();
        let client = client_with_key(&server, SESSION_KEY);
        Self {
            client,
            workspace,
            server,
        }
    }

    fn workspace_dir(&self) -> String {
        path_text(self.workspace.path())
    }

    fn request(&self, task: &str) -> StartConversationRequest {
        let llm = LlmConfig::new("openai/fake-model")
            .with_api_key(SecretString::from("sk-fake"))
            .with_usage_id("agent");
        StartConversationRequest::new(self.workspace_dir(), AgentSpec::with_standard_tools(llm))
            .with_conversation_id(Uuid::new_v4())
            .with_initial_message(task)
            .with_max_iterations(20)
            .with_autotitle(false)
    }

    /// Creates a conversation for `task` and waits until its run is over.
    async fn run_task(&self, task: &str) -> Uuid {
        let (info, outcome) = self
            .client
            .create_conversation(&self.request(task))
            .await
            .unwrap();
        assert_eq!(outcome, CreateOutcome::Created);
        wait_for_status(&self.client, info.id, |status| status.is_terminal()).await;
        info.id
    }

    async fn shell(&self, command: &str) -> String {
        let output = self
            .client
            .execute_bash(
                command,
                Some(&self.workspace_dir()),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        assert!(output.succeeded(), "{command}: {output:?}");
        output.stdout
    }
}

fn client_with_key(server: &RunningFakeAgentServer, key: &str) -> AgentServerClient {
    AgentServerClient::builder(
        Url::parse(&server.base_url()).unwrap(),
        SecretString::from(key),
    )
    .request_timeout(Duration::from_secs(10))
    .socket_connect_timeout(Duration::from_secs(5))
    .build()
}

fn path_text(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

/// Polls the conversation over REST: a status seen on the socket is only a hint.
async fn wait_for_status(
    client: &AgentServerClient,
    id: Uuid,
    accept: impl Fn(&ExecutionStatus) -> bool,
) -> ExecutionStatus {
    let poll = async {
        loop {
            let status = client.get_conversation(id).await.unwrap().execution_status;
            if accept(&status) {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(BUDGET, poll)
        .await
        .expect("the conversation never reached the expected status")
}

async fn next_frame(socket: &mut SessionSocket) -> Result<SessionFrame, Error> {
    tokio::time::timeout(BUDGET, socket.next_frame())
        .await
        .expect("no session frame within the budget")
}

/// Reads durable frames until one announces a terminal status (or `limit` durable frames,
/// when given), returning `(seq, event)` pairs. Transient frames are skipped.
async fn read_durable(socket: &mut SessionSocket, limit: Option<usize>) -> Vec<(i64, AgentEvent)> {
    let mut durable = Vec::new();
    loop {
        match next_frame(socket).await.unwrap() {
            SessionFrame::Durable { seq, event } => {
                let terminal = event
                    .execution_status()
                    .is_some_and(|status| status.is_terminal());
                durable.push((seq, event));
                if terminal || limit == Some(durable.len()) {
                    return durable;
                }
            }
            SessionFrame::Sync { .. } => panic!("a second sync frame"),
            _ => {}
        }
    }
}

fn ids(events: &[AgentEvent]) -> Vec<&str> {
    events.iter().map(|event| event.id.as_str()).collect()
}

const HELLO_TASK: &str = "$ echo hello > hello.txt\n$ cat hello.txt\nCreated hello.txt";

#[tokio::test]
async fn health_and_server_info_describe_the_server() {
    let harness = Harness::start().await;
    harness.client.health().await.unwrap();
    harness
        .client
        .wait_until_healthy(Duration::from_secs(5))
        .await
        .unwrap();
    let info = harness.client.server_info().await.unwrap();
    assert!(info.version.is_some(), "{info:?}");
    assert!(info.has_capability(cadenza_agent_client::CAPABILITY_IDEMPOTENT_CREATE));
}

#[tokio::test]
async fn creating_twice_with_one_id_returns_the_existing_conversation_without_a_second_message() {
    let harness = Harness::start().await;
    let request = harness.request(HELLO_TASK);

    let (created, outcome) = harness.client.create_conversation(&request).await.unwrap();
    assert_eq!(outcome, CreateOutcome::Created);
    assert_eq!(Some(created.id), request.conversation_id);
    assert_eq!(
        created.working_dir.as_deref(),
        Some(harness.workspace_dir().as_str())
    );

    let (existing, outcome) = harness.client.create_conversation(&request).await.unwrap();
    assert_eq!(outcome, CreateOutcome::Existing);
    assert_eq!(existing.id, created.id);

    wait_for_status(&harness.client, created.id, ExecutionStatus::is_terminal).await;
    let events = harness.client.events_after(created.id, None).await.unwrap();
    let user_messages = events
        .iter()
        .filter(
            |event| matches!(event.typed(), TypedEvent::Message(message) if message.role == "user"),
        )
        .count();
    assert_eq!(user_messages, 1);
}

#[tokio::test]
async fn full_replay_shows_the_commands_their_output_and_the_final_answer() {
    let harness = Harness::start().await;
    let id = harness.run_task(HELLO_TASK).await;

    let mut socket = harness.client.open_session(id, Some(-1)).await.unwrap();
    let SessionFrame::Sync {
        from_seq,
        through_seq,
    } = next_frame(&mut socket).await.unwrap()
    else {
        panic!("the first frame must be sync");
    };
    assert_eq!(from_seq, Some(-1));
    let through_seq = through_seq.expect("a finished conversation has events");

    let durable = read_durable(&mut socket, None).await;
    let seqs: Vec<i64> = durable.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (0..seqs.len() as i64).collect::<Vec<_>>());
    assert!(*seqs.last().unwrap() <= through_seq);
    assert_eq!(socket.resume_after_seq(), seqs.last().copied());

    let typed: Vec<TypedEvent> = durable.iter().map(|(_, event)| event.typed()).collect();
    let commands: Vec<&str> = typed
        .iter()
        .filter_map(|event| match event {
            TypedEvent::Action(action) => action.command.as_deref(),
            _ => None,
        })
        .collect();
    assert_eq!(commands, ["echo hello > hello.txt", "cat hello.txt"]);
    let cat_output = typed.iter().find_map(|event| match event {
        TypedEvent::Observation(observation) if observation.text.contains("hello") => {
            Some(observation.clone())
        }
        _ => None,
    });
    let cat_output = cat_output.expect("the output of cat hello.txt");
    assert_eq!(cat_output.exit_code, Some(0));
    assert_eq!(cat_output.tool_name, "terminal");
    let finish = typed.iter().find_map(|event| match event {
        TypedEvent::Action(action) => action.finish_message.clone(),
        _ => None,
    });
    assert_eq!(finish.as_deref(), Some("Created hello.txt"));
    assert_eq!(
        durable.last().unwrap().1.execution_status(),
        Some(ExecutionStatus::Finished)
    );

    assert_eq!(
        harness.client.agent_final_response(id).await.unwrap(),
        "Created hello.txt"
    );
    socket.close().await.unwrap();
}

#[tokio::test]
async fn reconnecting_mid_run_with_after_seq_loses_and_repeats_nothing() {
    let harness = Harness::start().await;
    // The sleeps keep the run going while the socket is dropped and reopened.
    let task = "$ echo one\n$ sleep 0.3\n$ echo two\n$ sleep 0.3\n$ echo three\nDone";
    let (info, _) = harness
        .client
        .create_conversation(&harness.request(task))
        .await
        .unwrap();

    let mut first = harness
        .client
        .open_session(info.id, Some(-1))
        .await
        .unwrap();
    assert!(matches!(
        next_frame(&mut first).await.unwrap(),
        SessionFrame::Sync { .. }
    ));
    let mut received = read_durable(&mut first, Some(5)).await;
    let (_, last_before_drop) = received.last().unwrap();
    assert!(
        !last_before_drop
            .execution_status()
            .is_some_and(|status| status.is_terminal()),
        "the reconnect must happen before the end of the run's log"
    );
    let resume_after = first.resume_after_seq().unwrap();
    assert_eq!(resume_after, received.last().unwrap().0);
    // Dropped without a close, as a broken connection would be.
    drop(first);

    let mut second = harness
        .client
        .open_session(info.id, Some(resume_after))
        .await
        .unwrap();
    let SessionFrame::Sync { from_seq, .. } = next_frame(&mut second).await.unwrap() else {
        panic!("the first frame must be sync");
    };
    assert_eq!(from_seq, Some(resume_after));
    received.extend(read_durable(&mut second, None).await);

    let seqs: Vec<i64> = received.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(
        seqs,
        (0..seqs.len() as i64).collect::<Vec<_>>(),
        "gap or duplicate"
    );

    wait_for_status(&harness.client, info.id, ExecutionStatus::is_terminal).await;
    let logged = harness.client.events_after(info.id, None).await.unwrap();
    let streamed: Vec<AgentEvent> = received.into_iter().map(|(_, event)| event).collect();
    assert_eq!(ids(&logged)[..streamed.len()], ids(&streamed)[..]);
}

#[tokio::test]
async fn event_search_pages_with_an_inclusive_cursor_and_resumes_after_an_event() {
    let harness = Harness::start().await;
    let id = harness.run_task(HELLO_TASK).await;
    let all = harness.client.events_after(id, None).await.unwrap();
    assert!(all.len() >= 6, "{all:?}");

    let first_page = harness.client.search_events(id, None, 2).await.unwrap();
    assert_eq!(ids(&first_page.items), ids(&all[..2]));
    assert_eq!(first_page.next_page_id.as_deref(), Some(all[2].id.as_str()));
    let second_page = harness
        .client
        .search_events(id, first_page.next_page_id.as_deref(), 2)
        .await
        .unwrap();
    assert_eq!(ids(&second_page.items), ids(&all[2..4]));

    let mut paged = Vec::new();
    let mut page_id = None;
    for _ in 0..all.len() {
        let page = harness
            .client
            .search_events(id, page_id.as_deref(), 2)
            .await
            .unwrap();
        paged.extend(page.items);
        page_id = page.next_page_id;
        if page_id.is_none() {
            break;
        }
    }
    assert_eq!(ids(&paged), ids(&all));

    let after_third = harness
        .client
        .events_after(id, Some(&all[2].id))
        .await
        .unwrap();
    assert_eq!(ids(&after_third), ids(&all[3..]));
    let after_last = harness
        .client
        .events_after(id, Some(&all.last().unwrap().id))
        .await
        .unwrap();
    assert!(after_last.is_empty());

    let unknown = Uuid::new_v4().to_string();
    let error = harness
        .client
        .events_after(id, Some(&unknown))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::UnknownEventId { event_id, .. } if *event_id == unknown),
        "{error:?}"
    );
}

#[tokio::test]
async fn git_delta_archive_contains_the_agents_new_file_against_the_base_commit() {
    let harness = Harness::start().await;
    harness
        .shell(
            "git init -q . && git config user.email t@example.com && git config user.name t \
             && echo base > base.txt && git add base.txt && git commit -qm base",
        )
        .await;
    let base_commit = harness.shell("git rev-parse HEAD").await.trim().to_owned();

    harness.run_task(HELLO_TASK).await;

    // Pinned to the recorded base, as a worker does: only the agent's work is in the patch.
    let delta = harness
        .client
        .archive_git_delta(
            &harness.workspace_dir(),
            Some(&base_commit),
            Default::default(),
        )
        .await
        .unwrap();
    assert!(
        delta.patch.contains("diff --git a/hello.txt b/hello.txt"),
        "{}",
        delta.patch
    );
    assert!(delta.patch.contains("+hello"), "{}", delta.patch);
    assert!(!delta.patch.contains("base.txt"), "{}", delta.patch);
    assert_eq!(delta.base_commit.as_deref(), Some(base_commit.as_str()));
    assert_eq!(delta.head_commit.as_deref(), Some(base_commit.as_str()));
    assert!(delta.repo_root.is_some(), "{delta:?}");

    // Without a remote the auto-detected base is the empty tree, so every file is "new".
    let unpinned = harness
        .client
        .archive_git_delta(&harness.workspace_dir(), None, Default::default())
        .await
        .unwrap();
    assert!(unpinned.patch.contains("b/hello.txt"), "{}", unpinned.patch);
    assert!(unpinned.patch.contains("b/base.txt"), "{}", unpinned.patch);
}

#[tokio::test]
async fn a_wrong_key_is_401_on_rest_and_close_4001_on_the_socket() {
    let harness = Harness::start().await;
    let id = harness.run_task("Nothing to do").await;
    let intruder = client_with_key(&harness.server, "wrong-key");

    // The health routes are open by design; everything under /api is not.
    intruder.health().await.unwrap();
    let error = intruder.get_conversation(id).await.unwrap_err();
    assert!(matches!(error, Error::Unauthorized { .. }), "{error:?}");
    assert!(error.is_unauthorized());
    assert!(!error.is_retryable());

    let mut socket = intruder.open_session(id, Some(-1)).await.unwrap();
    let error = next_frame(&mut socket).await.unwrap_err();
    assert_eq!(error.close_code(), Some(4001), "{error:?}");
    assert!(error.is_unauthorized());
    assert!(!error.is_retryable());
    // A closed socket keeps answering with the same close.
    assert_eq!(
        socket.next_frame().await.unwrap_err().close_code(),
        Some(4001)
    );
}

#[tokio::test]
async fn an_unknown_conversation_is_404_on_rest_and_close_4004_on_the_socket() {
    let harness = Harness::start().await;
    let unknown = Uuid::new_v4();

    let error = harness.client.get_conversation(unknown).await.unwrap_err();
    assert!(matches!(error, Error::NotFound { .. }), "{error:?}");
    assert!(
        harness
            .client
            .run(unknown)
            .await
            .unwrap_err()
            .is_not_found()
    );

    let mut socket = harness.client.open_session(unknown, None).await.unwrap();
    let error = next_frame(&mut socket).await.unwrap_err();
    assert_eq!(error.close_code(), Some(4004), "{error:?}");
    assert!(error.is_not_found());
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn run_while_running_reports_already_running_and_interrupt_pauses() {
    let harness = Harness::start().await;
    let (info, _) = harness
        .client
        .create_conversation(&harness.request("$ sleep 30\nnever reached"))
        .await
        .unwrap();
    wait_for_status(&harness.client, info.id, |status| {
        *status == ExecutionStatus::Running
    })
    .await;

    assert_eq!(
        harness.client.run(info.id).await.unwrap(),
        RunOutcome::AlreadyRunning
    );
    harness.client.interrupt(info.id).await.unwrap();
    wait_for_status(&harness.client, info.id, |status| {
        *status == ExecutionStatus::Paused
    })
    .await;

    harness.client.delete_conversation(info.id).await.unwrap();
    assert!(
        harness
            .client
            .get_conversation(info.id)
            .await
            .unwrap_err()
            .is_not_found()
    );
}

#[tokio::test]
async fn a_message_sent_later_starts_a_run_that_the_live_socket_follows() {
    let harness = Harness::start().await;
    let request = StartConversationRequest {
        initial_message: None,
        ..harness.request("")
    };
    let (info, outcome) = harness.client.create_conversation(&request).await.unwrap();
    assert_eq!(outcome, CreateOutcome::Created);
    assert!(!info.execution_status.is_terminal());

    // Socket first, then the message: nothing between the two can be missed.
    let mut socket = harness.client.open_session(info.id, None).await.unwrap();
    assert!(matches!(
        next_frame(&mut socket).await.unwrap(),
        SessionFrame::Sync { .. }
    ));
    harness
        .client
        .send_message(info.id, "$ echo live\nSaw it live", true)
        .await
        .unwrap();
    let live = read_durable(&mut socket, None).await;
    assert!(live.iter().any(|(_, event)| matches!(
        event.typed(),
        TypedEvent::Observation(observation) if observation.text.contains("live")
    )));

    wait_for_status(&harness.client, info.id, ExecutionStatus::is_terminal).await;
    assert_eq!(
        harness.client.agent_final_response(info.id).await.unwrap(),
        "Saw it live"
    );
}

#[tokio::test]
async fn pause_lets_the_step_in_flight_finish_and_stops_before_the_next() {
    let harness = Harness::start().await;
    let (info, _) = harness
        .client
        .create_conversation(&harness.request("$ sleep 0.5\n$ echo after > after.txt\nDone"))
        .await
        .unwrap();
    wait_for_status(&harness.client, info.id, |status| {
        *status == ExecutionStatus::Running
    })
    .await;
    harness.client.pause(info.id).await.unwrap();
    wait_for_status(&harness.client, info.id, |status| {
        *status == ExecutionStatus::Paused
    })
    .await;

    let events = harness.client.events_after(info.id, None).await.unwrap();
    assert!(
        events
            .iter()
            .any(|event| event.typed() == TypedEvent::Pause)
    );
    assert!(!harness.workspace.path().join("after.txt").exists());
}
