//! One conformance suite, run against the fake agent-server and against the real one.
//!
//! Every case is written once against [`AgentServerUnderTest`] and instantiated for both
//! backends by `conformance!` below. The fake must behave like the real server wherever
//! Cadenza's worker depends on it; where the real server legitimately does more (extra event
//! kinds, a system prompt event, state updates for statistics), the cases assert the contract
//! and not the incidental details.
//!
//! Needs Docker and the images built by `scripts/build-images.sh`; a missing image fails the
//! test with that advice rather than skipping it.

mod support;

use std::time::{Duration, Instant};

use cadenza_agent_client::{
    AgentEvent, AgentSpec, CreateOutcome, Error, ExecutionStatus, RunOutcome, SessionFrame,
    SessionSocket, StartConversationRequest, TypedEvent,
};
use secrecy::SecretString;
use serde_json::json;
use uuid::Uuid;

use support::{AgentServerUnderTest, Backend, CONTAINER_ENV, LLM_KEY, WORKSPACE};

/// The same task for both servers: two commands, then the final answer.
const HELLO_TASK: &str = "$ echo hello > hello.txt\n$ cat hello.txt\ndone";

/// How quickly `/interrupt` must stop a run whose command would take half a minute.
const INTERRUPT_BUDGET: Duration = Duration::from_secs(15);

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod fake_agent_server {
            $(
                #[tokio::test]
                async fn $case() {
                    let server = super::AgentServerUnderTest::start(super::Backend::Fake).await;
                    super::$case(&server).await;
                }
            )*
        }
        mod real_agent_server {
            $(
                #[tokio::test]
                async fn $case() {
                    let server = super::AgentServerUnderTest::start(super::Backend::Real).await;
                    super::$case(&server).await;
                }
            )*
        }
    };
}

conformance!(
    a_long_command_output_is_cut_to_the_terminals_limit,
    an_initial_message_runs_the_task_to_a_finish_confirmed_over_rest,
    without_an_initial_message_a_message_sent_with_run_starts_the_task,
    creating_twice_with_one_id_is_created_then_existing_and_runs_the_task_once,
    the_session_socket_replays_after_a_seq_and_resumes_without_gaps_after_a_disconnect,
    event_search_pages_with_an_inclusive_cursor_and_resumes_after_an_event,
    run_is_refused_while_running_and_interrupt_stops_a_long_command_promptly,
    pause_stops_after_the_step_in_flight_and_run_resumes_the_task,
    a_follow_up_message_after_the_finish_runs_a_second_turn,
    a_streaming_llm_configuration_runs_the_same_task,
    the_git_delta_against_a_recorded_base_holds_only_the_agents_changes,
    a_wrong_key_is_refused_on_rest_and_on_the_socket,
    an_unknown_conversation_is_not_found_on_rest_and_closes_the_socket_with_4004,
    a_plain_string_secret_or_a_non_string_llm_key_is_refused_with_422_naming_the_field,
    a_static_secret_and_the_container_environment_reach_the_agents_shell,
);

// ---------------------------------------------------------------------------------------------
// Helpers

async fn next_frame(
    server: &AgentServerUnderTest,
    socket: &mut SessionSocket,
) -> Result<SessionFrame, Error> {
    match tokio::time::timeout(server.backend.budget(), socket.next_frame()).await {
        Ok(frame) => frame,
        Err(_) => panic!(
            "{:?}: no session frame within {:?}\n{}",
            server.backend,
            server.backend.budget(),
            server.logs()
        ),
    }
}

async fn expect_sync(
    server: &AgentServerUnderTest,
    socket: &mut SessionSocket,
) -> (Option<i64>, Option<i64>) {
    match next_frame(server, socket).await.unwrap() {
        SessionFrame::Sync {
            from_seq,
            through_seq,
        } => (from_seq, through_seq),
        other => panic!("the first frame must be sync, got {other:?}"),
    }
}

/// Reads durable frames until `stop(seq, event)` holds for one (included), returning `(seq, event)` pairs.
/// Transient and streaming frames are skipped.
async fn read_durable_until(
    server: &AgentServerUnderTest,
    socket: &mut SessionSocket,
    stop: impl Fn(i64, &AgentEvent) -> bool,
) -> Vec<(i64, AgentEvent)> {
    let mut durable = Vec::new();
    loop {
        match next_frame(server, socket).await.unwrap() {
            SessionFrame::Durable { seq, event } => {
                let done = stop(seq, &event);
                durable.push((seq, event));
                if done {
                    return durable;
                }
            }
            SessionFrame::Sync { .. } => panic!("a second sync frame"),
            _ => {}
        }
    }
}

fn is_terminal_hint(_seq: i64, event: &AgentEvent) -> bool {
    event
        .execution_status()
        .is_some_and(|status| status.is_terminal())
}

fn ids(events: &[AgentEvent]) -> Vec<&str> {
    events.iter().map(|event| event.id.as_str()).collect()
}

fn commands(events: &[AgentEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|event| match event.typed() {
            TypedEvent::Action(action) => action.command,
            _ => None,
        })
        .collect()
}

fn finish_messages(events: &[AgentEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|event| match event.typed() {
            TypedEvent::Action(action) => action.finish_message,
            _ => None,
        })
        .collect()
}

fn user_messages(events: &[AgentEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|event| match event.typed() {
            TypedEvent::Message(message) if message.role == "user" => Some(message.text),
            _ => None,
        })
        .collect()
}

/// Creates a conversation for `task` and waits until the server reports a terminal status.
async fn run_to_the_end(server: &AgentServerUnderTest, task: &str) -> Uuid {
    let (info, outcome) = server
        .client
        .create_conversation(&server.request(Some(task)))
        .await
        .unwrap();
    assert_eq!(outcome, CreateOutcome::Created);
    let status = server
        .wait_for_status(info.id, "terminal", ExecutionStatus::is_terminal)
        .await;
    assert_eq!(status, ExecutionStatus::Finished, "{}", server.logs());
    info.id
}

/// Waits until the event log shows the action running `command` (the command has started).
async fn wait_for_command_to_start(server: &AgentServerUnderTest, id: Uuid, command: &str) {
    let poll = async {
        loop {
            let events = server.client.events_after(id, None).await.unwrap();
            if commands(&events).iter().any(|seen| seen == command) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(server.backend.budget(), poll)
        .await
        .unwrap_or_else(|_| panic!("`{command}` never started\n{}", server.logs()));
}

async fn file_exists(server: &AgentServerUnderTest, name: &str) -> bool {
    server
        .shell(&format!("test -e {name} && echo yes || echo no"))
        .await
        .trim()
        == "yes"
}

// ---------------------------------------------------------------------------------------------
// Cases

/// The title request of the real server (autotitle on) races the agent's first LLM call; the
/// fake LLM must answer both from their content.
/// The terminal tool's output limit (`MAX_CMD_OUTPUT_SIZE`), in characters: longer output is cut
/// (its tail kept). The worker's journal limits are a second line of defence, not the first.
const MAX_CMD_OUTPUT_SIZE: usize = 30_000;

async fn a_long_command_output_is_cut_to_the_terminals_limit(server: &AgentServerUnderTest) {
    let task = "$ echo START; yes 'a line of output' | head -c 200000; echo; echo END\ndone";
    let request = server.request(Some(task));
    let (info, _) = server.client.create_conversation(&request).await.unwrap();
    let mut socket = server.client.open_session(info.id, Some(-1)).await.unwrap();
    expect_sync(server, &mut socket).await;
    let streamed = read_durable_until(server, &mut socket, is_terminal_hint).await;
    let output = streamed
        .iter()
        .find_map(|(_, event)| match event.typed() {
            TypedEvent::Observation(observation)
                if observation.text.contains("a line of output") =>
            {
                Some(observation.text.clone())
            }
            _ => None,
        })
        .unwrap_or_else(|| {
            let seen: Vec<String> = streamed
                .iter()
                .filter_map(|(_, event)| match event.typed() {
                    TypedEvent::Observation(observation) => {
                        Some(format!("{}: {:.300}", event.kind, observation.text))
                    }
                    _ => None,
                })
                .collect();
            panic!("no observation of the command: {seen:#?}")
        });
    assert!(
        output.chars().count() <= MAX_CMD_OUTPUT_SIZE + 1000,
        "{} characters",
        output.chars().count()
    );
    // The real terminal's scrollback may drop the head before the cut; the tail is kept.
    assert!(output.contains("END"), "the tail is kept");
}

async fn an_initial_message_runs_the_task_to_a_finish_confirmed_over_rest(
    server: &AgentServerUnderTest,
) {
    let request = server.request(Some(HELLO_TASK)).with_autotitle(true);
    let (info, outcome) = server.client.create_conversation(&request).await.unwrap();
    assert_eq!(outcome, CreateOutcome::Created);
    assert_eq!(Some(info.id), request.conversation_id);
    assert_eq!(info.working_dir.as_deref(), Some(WORKSPACE));
    // The run starts in the background: the answer may say `idle` (the real server) or
    // `running` (the fake), never an end state.
    assert!(
        !info.execution_status.is_terminal(),
        "{:?}",
        info.execution_status
    );

    let mut socket = server.client.open_session(info.id, Some(-1)).await.unwrap();
    expect_sync(server, &mut socket).await;
    let streamed = read_durable_until(server, &mut socket, is_terminal_hint).await;
    let hint = streamed.last().unwrap().1.execution_status();
    assert_eq!(hint, Some(ExecutionStatus::Finished));

    // The socket's status is a hint; REST is the confirmation a worker acts on.
    let confirmed = server.client.get_conversation(info.id).await.unwrap();
    assert_eq!(confirmed.execution_status, ExecutionStatus::Finished);
    assert_eq!(
        server.client.agent_final_response(info.id).await.unwrap(),
        "done"
    );

    let events: Vec<AgentEvent> = streamed.into_iter().map(|(_, event)| event).collect();
    assert_eq!(user_messages(&events), [HELLO_TASK]);
    assert_eq!(
        commands(&events),
        ["echo hello > hello.txt", "cat hello.txt"]
    );
    assert_eq!(finish_messages(&events), ["done"]);
    let cat_output = events
        .iter()
        .find_map(|event| match event.typed() {
            TypedEvent::Observation(observation) if observation.text.contains("hello") => {
                Some(observation)
            }
            _ => None,
        })
        .expect("the output of `cat hello.txt`");
    assert_eq!(cat_output.tool_name, "terminal");
    assert_eq!(cat_output.exit_code, Some(0));
    assert!(file_exists(server, "hello.txt").await);
}

async fn without_an_initial_message_a_message_sent_with_run_starts_the_task(
    server: &AgentServerUnderTest,
) {
    let (info, outcome) = server
        .client
        .create_conversation(&server.request(None))
        .await
        .unwrap();
    assert_eq!(outcome, CreateOutcome::Created);
    assert!(
        !info.execution_status.is_terminal() && info.execution_status != ExecutionStatus::Running,
        "{:?}",
        info.execution_status
    );

    // Socket first, then the message: nothing between the two can be missed.
    let mut socket = server.client.open_session(info.id, None).await.unwrap();
    expect_sync(server, &mut socket).await;
    server
        .client
        .send_message(info.id, HELLO_TASK, true)
        .await
        .unwrap();
    let live = read_durable_until(server, &mut socket, is_terminal_hint).await;
    let live: Vec<AgentEvent> = live.into_iter().map(|(_, event)| event).collect();
    assert_eq!(commands(&live), ["echo hello > hello.txt", "cat hello.txt"]);

    let status = server
        .wait_for_status(info.id, "terminal", ExecutionStatus::is_terminal)
        .await;
    assert_eq!(status, ExecutionStatus::Finished);
    assert_eq!(
        server.client.agent_final_response(info.id).await.unwrap(),
        "done"
    );
}

async fn creating_twice_with_one_id_is_created_then_existing_and_runs_the_task_once(
    server: &AgentServerUnderTest,
) {
    let request = server.request(Some(HELLO_TASK));
    let (created, outcome) = server.client.create_conversation(&request).await.unwrap();
    assert_eq!(outcome, CreateOutcome::Created);
    let (existing, outcome) = server.client.create_conversation(&request).await.unwrap();
    assert_eq!(outcome, CreateOutcome::Existing);
    assert_eq!(existing.id, created.id);

    server
        .wait_for_status(created.id, "terminal", ExecutionStatus::is_terminal)
        .await;
    let events = server.client.events_after(created.id, None).await.unwrap();
    assert_eq!(user_messages(&events), [HELLO_TASK]);
    assert_eq!(finish_messages(&events), ["done"]);
}

async fn the_session_socket_replays_after_a_seq_and_resumes_without_gaps_after_a_disconnect(
    server: &AgentServerUnderTest,
) {
    // The sleeps keep the run going while the socket is dropped and reopened.
    let task = "$ echo one\n$ sleep 1\n$ echo two\n$ sleep 1\n$ echo three\nDone";
    let (info, _) = server
        .client
        .create_conversation(&server.request(Some(task)))
        .await
        .unwrap();

    let mut first = server.client.open_session(info.id, Some(-1)).await.unwrap();
    let (from_seq, _) = expect_sync(server, &mut first).await;
    assert_eq!(from_seq, Some(-1));
    let mut received = read_durable_until(server, &mut first, |_, event| {
        matches!(event.typed(), TypedEvent::Observation(observation) if observation.text.contains("one"))
    })
    .await;
    let resume_after = first.resume_after_seq().expect("durable frames were read");
    assert_eq!(resume_after, received.last().unwrap().0);
    // Dropped without a close, as a broken connection would be.
    drop(first);

    let mut second = server
        .client
        .open_session(info.id, Some(resume_after))
        .await
        .unwrap();
    let (from_seq, _) = expect_sync(server, &mut second).await;
    assert_eq!(from_seq, Some(resume_after));
    received.extend(read_durable_until(server, &mut second, is_terminal_hint).await);
    drop(second);

    let seqs: Vec<i64> = received.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(
        seqs,
        (0..seqs.len() as i64).collect::<Vec<_>>(),
        "gap or duplicate across the reconnect"
    );
    let streamed: Vec<AgentEvent> = received.into_iter().map(|(_, event)| event).collect();
    assert_eq!(
        commands(&streamed),
        ["echo one", "sleep 1", "echo two", "sleep 1", "echo three"]
    );

    server
        .wait_for_status(info.id, "terminal", ExecutionStatus::is_terminal)
        .await;
    let logged = server.client.events_after(info.id, None).await.unwrap();
    assert_eq!(ids(&logged)[..streamed.len()], ids(&streamed)[..]);

    // A replay from the middle starts right after the given seq and holds the same events.
    let middle = (streamed.len() / 2) as i64;
    let mut replay = server
        .client
        .open_session(info.id, Some(middle))
        .await
        .unwrap();
    let (from_seq, through_seq) = expect_sync(server, &mut replay).await;
    assert_eq!(from_seq, Some(middle));
    let through_seq = through_seq.expect("the log is not empty");
    let replayed = read_durable_until(server, &mut replay, |seq, _| seq >= through_seq).await;
    assert_eq!(replayed.first().unwrap().0, middle + 1);
    assert_eq!(
        replayed.first().unwrap().1.id,
        logged[(middle + 1) as usize].id
    );
}

async fn event_search_pages_with_an_inclusive_cursor_and_resumes_after_an_event(
    server: &AgentServerUnderTest,
) {
    let id = run_to_the_end(server, HELLO_TASK).await;
    let all = server.client.events_after(id, None).await.unwrap();
    assert!(all.len() >= 6, "{all:?}");

    let first_page = server.client.search_events(id, None, 2).await.unwrap();
    assert_eq!(ids(&first_page.items), ids(&all[..2]));
    assert_eq!(first_page.next_page_id.as_deref(), Some(all[2].id.as_str()));
    let second_page = server
        .client
        .search_events(id, first_page.next_page_id.as_deref(), 2)
        .await
        .unwrap();
    assert_eq!(ids(&second_page.items), ids(&all[2..4]));

    let mut paged = Vec::new();
    let mut page_id = None;
    for _ in 0..all.len() {
        let page = server
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
    assert_eq!(page_id, None, "paging did not end");
    assert_eq!(ids(&paged), ids(&all));

    let after_third = server
        .client
        .events_after(id, Some(&all[2].id))
        .await
        .unwrap();
    assert_eq!(ids(&after_third), ids(&all[3..]));
    let after_last = server
        .client
        .events_after(id, Some(&all.last().unwrap().id))
        .await
        .unwrap();
    assert!(after_last.is_empty());

    // The server restarts from the first event on an unknown cursor; the client refuses it.
    let unknown = Uuid::new_v4().to_string();
    let error = server
        .client
        .events_after(id, Some(&unknown))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::UnknownEventId { event_id, .. } if *event_id == unknown),
        "{error:?}"
    );
}

async fn run_is_refused_while_running_and_interrupt_stops_a_long_command_promptly(
    server: &AgentServerUnderTest,
) {
    let (info, _) = server
        .client
        .create_conversation(&server.request(Some("$ sleep 30\nnever reached")))
        .await
        .unwrap();
    wait_for_command_to_start(server, info.id, "sleep 30").await;
    assert_eq!(
        server
            .client
            .get_conversation(info.id)
            .await
            .unwrap()
            .execution_status,
        ExecutionStatus::Running
    );
    assert_eq!(
        server.client.run(info.id).await.unwrap(),
        RunOutcome::AlreadyRunning
    );

    let interrupted_at = Instant::now();
    server.client.interrupt(info.id).await.unwrap();
    let poll = server.wait_for_status(info.id, "paused", |status| {
        *status == ExecutionStatus::Paused
    });
    tokio::time::timeout(INTERRUPT_BUDGET, poll)
        .await
        .unwrap_or_else(|_| panic!("not paused within {INTERRUPT_BUDGET:?} of the interrupt"));
    assert!(interrupted_at.elapsed() < INTERRUPT_BUDGET);

    let events = server.client.events_after(info.id, None).await.unwrap();
    assert!(
        events
            .iter()
            .any(|event| event.typed() == TypedEvent::Interrupt),
        "no InterruptEvent in {:?}",
        events.iter().map(|event| &event.kind).collect::<Vec<_>>()
    );
    assert!(
        finish_messages(&events).is_empty(),
        "the task went on after the interrupt"
    );
    assert_eq!(
        server
            .client
            .get_conversation(info.id)
            .await
            .unwrap()
            .execution_status,
        ExecutionStatus::Paused
    );
}

async fn pause_stops_after_the_step_in_flight_and_run_resumes_the_task(
    server: &AgentServerUnderTest,
) {
    let task = "$ sleep 2\n$ echo after > after.txt\nresumed";
    let (info, _) = server
        .client
        .create_conversation(&server.request(Some(task)))
        .await
        .unwrap();
    wait_for_command_to_start(server, info.id, "sleep 2").await;
    server.client.pause(info.id).await.unwrap();
    server
        .wait_for_status(info.id, "paused", |status| {
            *status == ExecutionStatus::Paused
        })
        .await;

    let events = server.client.events_after(info.id, None).await.unwrap();
    assert!(
        events
            .iter()
            .any(|event| event.typed() == TypedEvent::Pause),
        "no PauseEvent in {:?}",
        events.iter().map(|event| &event.kind).collect::<Vec<_>>()
    );
    assert_eq!(commands(&events), ["sleep 2"]);
    assert!(!file_exists(server, "after.txt").await);

    assert_eq!(
        server.client.run(info.id).await.unwrap(),
        RunOutcome::Started
    );
    let status = server
        .wait_for_status(info.id, "terminal", ExecutionStatus::is_terminal)
        .await;
    assert_eq!(status, ExecutionStatus::Finished);
    assert!(file_exists(server, "after.txt").await);
    assert_eq!(
        server.client.agent_final_response(info.id).await.unwrap(),
        "resumed"
    );
}

async fn a_follow_up_message_after_the_finish_runs_a_second_turn(server: &AgentServerUnderTest) {
    let id = run_to_the_end(server, HELLO_TASK).await;
    let follow_up = "$ echo again > again.txt\nsecond";
    server
        .client
        .send_message(id, follow_up, true)
        .await
        .unwrap();

    // The status may still read `finished` from the first turn; the second turn is over when
    // its own answer is the final one and the status is terminal again.
    let poll = async {
        loop {
            let status = server
                .client
                .get_conversation(id)
                .await
                .unwrap()
                .execution_status;
            if status.is_terminal()
                && server.client.agent_final_response(id).await.unwrap() == "second"
            {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let status = tokio::time::timeout(server.backend.budget(), poll)
        .await
        .unwrap_or_else(|_| panic!("the second turn never finished\n{}", server.logs()));
    assert_eq!(status, ExecutionStatus::Finished);

    let events = server.client.events_after(id, None).await.unwrap();
    assert_eq!(user_messages(&events), [HELLO_TASK, follow_up]);
    assert_eq!(
        commands(&events),
        [
            "echo hello > hello.txt",
            "cat hello.txt",
            "echo again > again.txt"
        ]
    );
    assert_eq!(finish_messages(&events), ["done", "second"]);
    assert!(file_exists(server, "again.txt").await);
}

/// With `llm.stream` the real server takes the fake LLM's SSE answers; the outcome is the same.
async fn a_streaming_llm_configuration_runs_the_same_task(server: &AgentServerUnderTest) {
    let request = StartConversationRequest {
        agent: AgentSpec::with_standard_tools(server.llm(true)).into(),
        ..server.request(Some(HELLO_TASK))
    };
    let (info, _) = server.client.create_conversation(&request).await.unwrap();
    let status = server
        .wait_for_status(info.id, "terminal", ExecutionStatus::is_terminal)
        .await;
    assert_eq!(status, ExecutionStatus::Finished, "{}", server.logs());
    let events = server.client.events_after(info.id, None).await.unwrap();
    assert_eq!(
        commands(&events),
        ["echo hello > hello.txt", "cat hello.txt"]
    );
    assert_eq!(
        server.client.agent_final_response(info.id).await.unwrap(),
        "done"
    );
}

async fn the_git_delta_against_a_recorded_base_holds_only_the_agents_changes(
    server: &AgentServerUnderTest,
) {
    server
        .shell(
            "git init -q . && git config user.email conformance@example.com \
             && git config user.name conformance \
             && printf 'one\\ntwo\\n' > base.txt && git add base.txt && git commit -qm base",
        )
        .await;
    let base_commit = server.shell("git rev-parse HEAD").await.trim().to_owned();

    run_to_the_end(
        server,
        "$ echo hello > hello.txt\n$ echo three >> base.txt\nchanged two files",
    )
    .await;

    let delta = server
        .client
        .archive_git_delta(WORKSPACE, Some(&base_commit), Default::default())
        .await
        .unwrap();
    let patch = &delta.patch;
    assert!(
        patch.contains("diff --git a/hello.txt b/hello.txt"),
        "{patch}"
    );
    assert!(patch.contains("+hello"), "{patch}");
    assert!(
        patch.contains("diff --git a/base.txt b/base.txt"),
        "{patch}"
    );
    assert!(patch.contains("+three"), "{patch}");
    assert!(
        !patch.contains("+one"),
        "the base's own content is not a change: {patch}"
    );
    assert_eq!(delta.base_commit.as_deref(), Some(base_commit.as_str()));
    assert_eq!(delta.head_commit.as_deref(), Some(base_commit.as_str()));
}

async fn a_wrong_key_is_refused_on_rest_and_on_the_socket(server: &AgentServerUnderTest) {
    let (info, _) = server
        .client
        .create_conversation(&server.request(None))
        .await
        .unwrap();
    let intruder = server.client_with_key("wrong-key");

    // The health route is open by design; everything under /api is not.
    intruder.health().await.unwrap();
    let error = intruder.get_conversation(info.id).await.unwrap_err();
    assert!(matches!(error, Error::Unauthorized { .. }), "{error:?}");
    assert!(!error.is_retryable());
    let error = intruder
        .create_conversation(&server.request(None))
        .await
        .unwrap_err();
    assert!(error.is_unauthorized(), "{error:?}");

    // The contract a worker relies on: no frame is ever delivered and the failure is final.
    // How it is refused differs: the real server rejects the handshake (HTTP 403) when the
    // header carries a wrong key, the fake accepts and closes with 4001.
    let error = match intruder.open_session(info.id, Some(-1)).await {
        Err(error) => error,
        Ok(mut socket) => next_frame(server, &mut socket).await.unwrap_err(),
    };
    assert!(
        error.is_unauthorized() || error.status() == Some(http::StatusCode::FORBIDDEN),
        "{error:?}"
    );
    assert!(!error.is_retryable(), "{error:?}");
}

async fn an_unknown_conversation_is_not_found_on_rest_and_closes_the_socket_with_4004(
    server: &AgentServerUnderTest,
) {
    let unknown = Uuid::new_v4();
    let error = server.client.get_conversation(unknown).await.unwrap_err();
    assert!(matches!(error, Error::NotFound { .. }), "{error:?}");
    assert!(server.client.run(unknown).await.unwrap_err().is_not_found());

    let mut socket = server.client.open_session(unknown, None).await.unwrap();
    let error = next_frame(server, &mut socket).await.unwrap_err();
    assert_eq!(error.close_code(), Some(4004), "{error:?}");
    assert!(error.is_not_found());
    assert!(!error.is_retryable());
}

/// The create route takes `SecretSource` objects only, and the LLM key only as a string. Both
/// refusals are a 422 whose `loc` names the field; the error Cadenza builds from it names the
/// field too but never carries the refused value (the server echoes it in `input`).
async fn a_plain_string_secret_or_a_non_string_llm_key_is_refused_with_422_naming_the_field(
    server: &AgentServerUnderTest,
) {
    let value = "plain-secret-value-4711";
    let request = server
        .request(Some("$ true\ndone"))
        .with_extra("secrets", json!({ "PLAIN_TOKEN": value }));
    let id = request.conversation_id.unwrap();
    let error = server
        .client
        .create_conversation(&request)
        .await
        .expect_err("a plain-string secret is refused");
    assert_eq!(error.status(), Some(http::StatusCode::UNPROCESSABLE_ENTITY));
    assert_eq!(error.refused_fields(), vec!["body.secrets.PLAIN_TOKEN"]);
    assert!(error.is_refused_request() && !error.is_retryable());
    let message = error.to_string();
    assert!(message.contains("body.secrets.PLAIN_TOKEN"), "{message}");
    assert!(!message.contains(value), "{message}");
    assert!(!format!("{error:?}").contains(value), "{error:?}");
    assert!(
        server
            .client
            .get_conversation(id)
            .await
            .unwrap_err()
            .is_not_found(),
        "nothing was created"
    );

    let mut llm = server.llm(false);
    llm.api_key = None;
    llm.extra.insert(
        "api_key".into(),
        json!({ "kind": "StaticSecret", "value": value }),
    );
    let request = StartConversationRequest::new(WORKSPACE, AgentSpec::with_standard_tools(llm))
        .with_conversation_id(Uuid::new_v4())
        .with_autotitle(false);
    let error = server
        .client
        .create_conversation(&request)
        .await
        .expect_err("an LLM key that is not a string is refused");
    assert_eq!(error.status(), Some(http::StatusCode::UNPROCESSABLE_ENTITY));
    let fields = error.refused_fields();
    assert_eq!(
        fields.first(),
        Some(&"body.agent.llm.api_key.str"),
        "{error}"
    );
    assert!(
        fields
            .iter()
            .all(|field| field.starts_with("body.agent.llm.api_key.")),
        "{error}"
    );
    assert!(!error.to_string().contains(value), "{error}");
}

/// What the worker hands the agent reaches its shell: a project secret, sent as a
/// `StaticSecret`, and the container's environment (the project's `agent.env`). The LLM key
/// travels as a string (the real server's LLM refuses any other key, so the run finishing shows
/// it arrived), and neither it nor the secret comes back in the conversation's info.
async fn a_static_secret_and_the_container_environment_reach_the_agents_shell(
    server: &AgentServerUnderTest,
) {
    let value = "static-secret-value-0815";
    let (name, _) = CONTAINER_ENV;
    let task =
        format!("$ echo \"$CONFORMANCE_TOKEN\" > secret.txt\n$ echo \"${name}\" > env.txt\ndone");
    let request = server
        .request(Some(&task))
        .with_secret("CONFORMANCE_TOKEN", SecretString::from(value));
    let (info, outcome) = server.client.create_conversation(&request).await.unwrap();
    assert_eq!(outcome, CreateOutcome::Created);
    let status = server
        .wait_for_status(info.id, "terminal", ExecutionStatus::is_terminal)
        .await;
    assert_eq!(status, ExecutionStatus::Finished, "{}", server.logs());

    assert_eq!(server.shell("cat secret.txt").await, format!("{value}\n"));
    assert_eq!(
        server.shell("cat env.txt").await,
        format!("{}\n", CONTAINER_ENV.1)
    );
    let info = server.client.get_conversation(info.id).await.unwrap();
    let shown = info.raw.to_string();
    assert!(!shown.contains(value), "the secret came back: {shown}");
    assert!(!shown.contains(LLM_KEY), "the LLM key came back: {shown}");
}
