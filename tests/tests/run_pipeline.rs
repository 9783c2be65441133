//! The run pipeline end to end: all four services as separate processes, real Postgres, NATS,
//! Redis and Docker, and the scripted fake agent-server image.

use std::time::{Duration, Instant};

use cadenza_e2e::sse::SseReader;
use cadenza_e2e::{Api, containers_gone, seqs};
use cadenza_testkit::docker::containers_with_label;
use cadenza_testkit::stack::Stack;
use serde_json::Value;

const HELLO: &str = "$ echo hello > hello.txt\n$ cat hello.txt\ndone";
const RUN_BUDGET: Duration = Duration::from_secs(120);

#[tokio::test]
async fn a_hello_run_succeeds_and_its_history_outlives_every_client() {
    let stack = Stack::start().await.expect("stack starts");
    let project_id = stack.project.id.to_string();

    // Submit, then drop the client and every connection it had.
    let run_id = {
        let api = Api::new(&stack.api_url, &stack.token);
        let (status, run) = api
            .submit_run(&project_id, HELLO, None)
            .await
            .expect("submit");
        assert_eq!(status, 201, "{run}");
        assert_eq!(run["state"], "queued");
        run["id"].as_str().expect("run id").to_owned()
    };

    // Watch the run finish through the database only: no client is connected to the API.
    let run_uuid: cadenza_domain::RunId = run_id.parse().expect("uuid");
    let deadline = Instant::now() + RUN_BUDGET;
    loop {
        let mut conn = stack.db.pool.acquire().await.expect("db");
        let run = cadenza_storage::runs::get(&mut conn, &cadenza_domain::Scope::Instance, run_uuid)
            .await
            .expect("run");
        if run.state.is_terminal() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "run did not end: {:?}",
            run.state
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A new client reads the complete history.
    let api = Api::new(&stack.api_url, &stack.token);
    let run = api.get_json(&format!("/runs/{run_id}")).await.expect("run");
    assert_eq!(run["state"], "succeeded", "{run}\n{}", stack.logs());
    assert_eq!(run["terminal_reason"]["code"], "agent_finished");
    assert_eq!(run["final_message"], "done");

    let events = api.all_events(&run_id, 7).await.expect("events");
    let seq = seqs(&events);
    assert_eq!(
        seq,
        (1..=seq.len() as i64).collect::<Vec<_>>(),
        "dense from 1"
    );
    assert_eq!(
        seq.len() as i64,
        run["last_event_seq"].as_i64().expect("last seq")
    );

    let states: Vec<&str> = events
        .iter()
        .filter(|event| event["kind"] == "run_state")
        .filter_map(|event| event["payload"]["to"].as_str())
        .collect();
    assert_eq!(
        states,
        [
            "queued",
            "scheduled",
            "provisioning",
            "running",
            "succeeded"
        ]
    );
    let last = events.last().expect("events");
    assert_eq!(last["kind"], "run_state");
    assert_eq!(last["payload"]["to"], "succeeded");

    let cat_action = events
        .iter()
        .find(|event| event["kind"] == "action" && event["payload"]["command"] == "cat hello.txt")
        .expect("the cat action is journaled");
    assert_eq!(cat_action["payload"]["tool_name"], "terminal");
    assert_eq!(cat_action["raw"]["kind"], "ActionEvent");
    let cat_observation = events
        .iter()
        .find(|event| {
            event["kind"] == "observation"
                && event["payload"]["action_id"] == cat_action["payload"]["agent_event_id"]
        })
        .expect("the cat observation is journaled");
    assert_eq!(
        cat_observation["payload"]["output"].as_str().map(str::trim),
        Some("hello")
    );
    assert_eq!(cat_observation["payload"]["exit_code"], 0);
    assert!(
        events
            .iter()
            .any(|event| event["kind"] == "action" && event["payload"]["tool_name"] == "finish"),
        "the finish action is journaled"
    );

    let diff = api
        .get(&format!("/runs/{run_id}/diff"))
        .await
        .expect("diff");
    assert_eq!(diff.status(), 200);
    assert!(
        diff.headers()["content-type"]
            .to_str()
            .unwrap_or_default()
            .starts_with("text/x-patch")
    );
    let patch = diff.text().await.expect("patch");
    assert!(patch.contains("hello.txt"), "{patch}");
    assert!(patch.contains("+hello"), "{patch}");

    assert!(
        containers_gone(&run_id, Duration::from_secs(10)).await,
        "the workspace container was removed"
    );
}

#[tokio::test]
async fn a_reconnecting_stream_reader_sees_every_event_exactly_once() {
    let stack = Stack::start().await.expect("stack starts");
    let api = Api::new(&stack.api_url, &stack.token);
    let prompt =
        "$ for i in $(seq 1 60); do echo $i; sleep 0.1; done\n$ echo second\n$ echo third\ncounted";
    let (status, run) = api
        .submit_run(&stack.project.id.to_string(), prompt, None)
        .await
        .expect("submit");
    assert_eq!(status, 201);
    let run_id = run["id"].as_str().expect("id").to_owned();
    let url = api.url(&format!("/runs/{run_id}/events/stream"));

    // First half: read until the agent has started the long command, then drop the connection
    // while the run is live.
    let mut first_half: Vec<Value> = Vec::new();
    {
        let mut reader = SseReader::open(&api.http, &url, &api.token, None)
            .await
            .expect("stream opens");
        loop {
            let event = reader
                .next(RUN_BUDGET)
                .await
                .expect("an event")
                .expect("the stream stays open while the run is live");
            let parsed: Value = serde_json::from_str(&event.data).expect("json");
            assert_eq!(
                event.id.as_deref(),
                Some(parsed["seq"].to_string().as_str())
            );
            let mid_run =
                parsed["kind"] == "action" && parsed["payload"]["tool_name"] == "terminal";
            first_half.push(parsed);
            if mid_run {
                break;
            }
        }
    }
    let last_seen = first_half
        .last()
        .and_then(|event| event["seq"].as_i64())
        .expect("seq");

    // Second half: resume with Last-Event-ID and read until the server closes the stream.
    let mut second_half: Vec<Value> = Vec::new();
    let mut reader = SseReader::open(&api.http, &url, &api.token, Some(last_seen))
        .await
        .expect("stream reopens");
    while let Some(event) = reader.next(RUN_BUDGET).await.expect("event or end") {
        second_half.push(serde_json::from_str(&event.data).expect("json"));
    }
    let last = second_half.last().expect("the second half is not empty");
    assert_eq!(last["kind"], "run_state");
    assert_eq!(last["payload"]["terminal"], true);
    assert_eq!(last["payload"]["to"], "succeeded", "{}", stack.logs());

    let mut all = first_half.clone();
    all.extend(second_half);
    let seq = seqs(&all);
    let n = seq.len() as i64;
    assert_eq!(
        seq,
        (1..=n).collect::<Vec<_>>(),
        "dense, no gap, no duplicate"
    );

    // The REST journal tells the same story.
    let rest = api.all_events(&run_id, 10).await.expect("events");
    assert_eq!(seqs(&rest), seq);
    // The loop's 60 numbers were journaled as one observation.
    assert!(rest.iter().any(|event| {
        event["kind"] == "observation"
            && event["payload"]["output"]
                .as_str()
                .is_some_and(|output| output.lines().count() == 60 && output.contains("\n60"))
    }));

    // A stream opened after the end replays everything and closes.
    let mut replay = SseReader::open(&api.http, &url, &api.token, None)
        .await
        .expect("replay opens");
    let mut replayed = Vec::new();
    while let Some(event) = replay
        .next(Duration::from_secs(30))
        .await
        .expect("event or end")
    {
        replayed.push(serde_json::from_str::<Value>(&event.data).expect("json"));
    }
    assert_eq!(seqs(&replayed), seq);

    // `?cursor=` resumes like Last-Event-ID.
    let mut from_cursor = SseReader::open(
        &api.http,
        &format!("{url}?cursor={}", n - 2),
        &api.token,
        None,
    )
    .await
    .expect("cursor stream opens");
    let mut tail = Vec::new();
    while let Some(event) = from_cursor
        .next(Duration::from_secs(30))
        .await
        .expect("event or end")
    {
        tail.push(serde_json::from_str::<Value>(&event.data).expect("json"));
    }
    assert_eq!(seqs(&tail), vec![n - 1, n]);
}

#[tokio::test]
async fn two_posts_with_one_idempotency_key_create_one_run() {
    let stack = Stack::start().await.expect("stack starts");
    let api = Api::new(&stack.api_url, &stack.token);
    let project_id = stack.project.id.to_string();
    let (first_status, first) = api
        .submit_run(&project_id, HELLO, Some("ticket-42"))
        .await
        .expect("first");
    let (second_status, second) = api
        .submit_run(&project_id, HELLO, Some("ticket-42"))
        .await
        .expect("second");
    assert_eq!(first_status, 201);
    assert_eq!(second_status, 200);
    assert_eq!(first["id"], second["id"]);

    // Reusing the key for a different request is a conflict, not a silent second run.
    let (conflict_status, problem) = api
        .submit_run(&project_id, "$ echo other", Some("ticket-42"))
        .await
        .expect("third");
    assert_eq!(conflict_status, 409, "{problem}");

    let runs = api
        .get_json(&format!("/runs?project_id={project_id}"))
        .await
        .expect("list");
    assert_eq!(runs["items"].as_array().map(Vec::len), Some(1));

    let run_id = first["id"].as_str().expect("id");
    let run = api.wait_for_end(run_id, RUN_BUDGET).await.expect("ends");
    assert_eq!(run["state"], "succeeded", "{run}");
}

#[tokio::test]
async fn a_run_whose_image_is_missing_fails_with_a_short_reason() {
    let stack = Stack::start().await.expect("stack starts");
    // Allowed, but its registry is a closed port on the worker's loopback: the pull fails at once.
    let image = "127.0.0.1:1/cadenza-test/does-not-exist:never";
    let project = stack
        .create_project("broken", image)
        .await
        .expect("project");
    let api = Api::new(&stack.api_url, &stack.token);
    let started = Instant::now();
    let (status, run) = api
        .submit_run(&project.id.to_string(), HELLO, None)
        .await
        .expect("submit");
    assert_eq!(status, 201);
    let run = api
        .wait_for_end(run["id"].as_str().expect("id"), Duration::from_secs(60))
        .await
        .expect("the run ends within a bounded time");
    assert_eq!(run["state"], "failed");
    assert_eq!(run["terminal_reason"]["code"], "container_failed");
    let message = run["terminal_reason"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains(image) && message.contains("could not be pulled"),
        "{message}"
    );
    // The daemon's own words (which tell an open port from a closed one) stay in the worker's log.
    for daemon_text in ["connection refused", "dial tcp", "127.0.0.1:1/v2", "Get \""] {
        assert!(!message.contains(daemon_text), "{message}");
    }
    assert!(
        stack.logs().contains("could not be pulled"),
        "the worker logs the details"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(
        containers_gone(
            run["id"].as_str().unwrap_or_default(),
            Duration::from_secs(10)
        )
        .await
    );
}

#[tokio::test]
async fn a_run_whose_image_is_not_allowed_fails_before_anything_is_pulled() {
    let stack = Stack::start().await.expect("stack starts");
    // Stored directly, as a project made before the allowlist would be.
    let project = stack
        .create_project("unlisted", "10.0.3.7:8080/internal/agent:1")
        .await
        .expect("project");
    let api = Api::new(&stack.api_url, &stack.token);
    let (status, run) = api
        .submit_run(&project.id.to_string(), HELLO, None)
        .await
        .expect("submit");
    assert_eq!(status, 201);
    let run = api
        .wait_for_end(run["id"].as_str().expect("id"), Duration::from_secs(60))
        .await
        .expect("the run ends");
    assert_eq!(run["state"], "failed", "{run}");
    assert_eq!(run["terminal_reason"]["code"], "image_refused", "{run}");
    let message = run["terminal_reason"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("10.0.3.7:8080/internal/agent:1"),
        "{message}"
    );
    assert!(
        containers_gone(
            run["id"].as_str().unwrap_or_default(),
            Duration::from_secs(10)
        )
        .await
    );
}

/// Builds `cadenza-test/user:<tag>`: the fake agent image with `USER <user>`.
fn image_with_user(tag: &str, user: &str) -> String {
    let image = format!("cadenza-test/user:{tag}");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!(
            "FROM {}\nUSER {user}\n",
            cadenza_testkit::docker::fake_agent_image()
        ),
    )
    .expect("dockerfile");
    let output = std::process::Command::new("docker")
        .env("DOCKER_BUILDKIT", "0")
        .args([
            "build",
            "--quiet",
            "--label",
            "io.cadenza.test=user-image",
            "-t",
            &image,
        ])
        .arg(dir.path())
        .output()
        .expect("docker build");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    image
}

#[tokio::test]
async fn an_image_that_would_run_as_root_runs_as_the_configured_user() {
    let stack = Stack::start().await.expect("stack starts");
    let api = Api::new(&stack.api_url, &stack.token);
    // Every spelling of root, and a user name, run as the fallback; a numeric user is kept.
    for (tag, user, expected) in [
        ("root-root", "root:root", "10001 10001"),
        ("zero-group", "0:1000", "10001 10001"),
        ("root-zero", "root:0", "10001 10001"),
        ("named", "nobody", "10001 10001"),
        ("numeric", "2000:2001", "2000 2001"),
    ] {
        let image = image_with_user(tag, user);
        let project = stack.create_project(tag, &image).await.expect("project");
        let (status, run) = api
            .submit_run(
                &project.id.to_string(),
                "$ echo \"ids $(id -u) $(id -g)\"\ndone",
                None,
            )
            .await
            .expect("submit");
        assert_eq!(status, 201);
        let run_id = run["id"].as_str().expect("id").to_owned();
        let run = api.wait_for_end(&run_id, RUN_BUDGET).await.expect("ends");
        assert_eq!(run["state"], "succeeded", "{user}: {run}\n{}", stack.logs());
        let events = api.all_events(&run_id, 100).await.expect("events");
        let printed = events
            .iter()
            .filter(|event| event["kind"] == "observation")
            .map(|event| event["payload"].to_string())
            .collect::<String>();
        assert!(
            printed.contains(&format!("ids {expected}")),
            "{user}: {printed}"
        );
    }
}

/// Waits (bounded) until the run's journal holds the action that runs `command`.
async fn wait_for_action(api: &Api, run_id: &str, command: &str) {
    let deadline = Instant::now() + RUN_BUDGET;
    loop {
        let events = api.all_events(run_id, 100).await.expect("events");
        if events
            .iter()
            .any(|event| event["kind"] == "action" && event["payload"]["command"] == command)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never ran `{command}`: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn cancelling_a_long_run_ends_it_within_ten_seconds_and_removes_its_container() {
    let stack = Stack::start().await.expect("stack starts");
    let api = Api::new(&stack.api_url, &stack.token);
    let (_, run) = api
        .submit_run(&stack.project.id.to_string(), "$ sleep 120\nnever", None)
        .await
        .expect("submit");
    let run_id = run["id"].as_str().expect("id").to_owned();
    api.wait_for_run(&run_id, RUN_BUDGET, |run| run["state"] == "running")
        .await
        .expect("the run starts");
    // Let the agent reach the long command: its action is in the journal.
    wait_for_action(&api, &run_id, "sleep 120").await;
    assert!(!containers_with_label("io.cadenza.run", &run_id).is_empty());

    let started = Instant::now();
    let response = api
        .http
        .post(api.url(&format!("/runs/{run_id}/cancel")))
        .bearer_auth(&api.token)
        .send()
        .await
        .expect("cancel");
    assert_eq!(response.status(), 202);
    let receipt: Value = response.json().await.expect("receipt");
    assert_eq!(receipt["action"], "cancel");
    let correlation = receipt["correlation_id"]
        .as_str()
        .expect("correlation id")
        .to_owned();

    let ended = api
        .wait_for_end(&run_id, Duration::from_secs(10))
        .await
        .expect("the run ends within 10 s");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(ended["state"], "cancelled", "{ended}");
    assert_eq!(ended["terminal_reason"]["code"], "cancelled");
    assert!(
        containers_gone(&run_id, Duration::from_secs(10)).await,
        "the container is gone"
    );

    let events = api.all_events(&run_id, 100).await.expect("events");
    let last = events.last().expect("events");
    assert_eq!(last["payload"]["to"], "cancelled");
    assert_eq!(
        last["payload"]["correlation_id"],
        correlation.as_str(),
        "the event names the request"
    );

    // Cancelling again is a conflict: the run has ended.
    let again = api
        .http
        .post(api.url(&format!("/runs/{run_id}/cancel")))
        .bearer_auth(&api.token)
        .send()
        .await
        .expect("cancel again");
    assert_eq!(again.status(), 409);
}

#[tokio::test]
async fn a_run_works_on_a_clone_of_the_projects_repository_and_diffs_against_its_base() {
    let git = cadenza_e2e::services::GitServer::start();
    let stack = Stack::start_with(cadenza_testkit::stack::StackOptions {
        extra_env: vec![("CADENZA_ATTACH_CONTAINERS".into(), git.name.clone())],
        ..Default::default()
    })
    .await
    .expect("stack starts");
    let api = Api::new(&stack.api_url, &stack.token);
    let project_id = stack.project.id.to_string();
    let patched = api
        .http
        .patch(api.url(&format!("/projects/{project_id}")))
        .bearer_auth(&api.token)
        .json(&serde_json::json!({"repository": {"url": format!("git://{}/repo.git", git.name), "branch": "main"}}))
        .send()
        .await
        .expect("patch");
    assert_eq!(patched.status(), 200);

    let (_, run) = api
        .submit_run(
            &project_id,
            "$ echo hello > hello.txt\n$ cat README.md\ndone",
            None,
        )
        .await
        .expect("submit");
    let run_id = run["id"].as_str().expect("id").to_owned();
    let run = api.wait_for_end(&run_id, RUN_BUDGET).await.expect("ends");
    assert_eq!(run["state"], "succeeded", "{run}\n{}", stack.logs());

    let events = api.all_events(&run_id, 100).await.expect("events");
    let workspace = events
        .iter()
        .find(|event| event["kind"] == "workspace")
        .expect("workspace event");
    let base = workspace["payload"]["base_commit"]
        .as_str()
        .expect("base commit");
    assert_eq!(base.len(), 40);
    assert!(
        events.iter().any(|event| {
            event["kind"] == "observation"
                && event["payload"]["output"].as_str().map(str::trim) == Some("base")
        }),
        "the agent read the cloned README"
    );

    let diff = api
        .get(&format!("/runs/{run_id}/diff"))
        .await
        .expect("diff");
    assert_eq!(diff.headers()["x-base-commit"], base);
    let patch = diff.text().await.expect("patch");
    assert!(patch.contains("b/hello.txt"), "{patch}");
    assert!(
        !patch.contains("README.md"),
        "the diff is relative to the base commit: {patch}"
    );
    // The attached git server is on no workspace network once the run is over.
    assert!(containers_gone(&run_id, Duration::from_secs(10)).await);
    let networks = std::process::Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{len .NetworkSettings.Networks}}",
            &git.name,
        ])
        .output()
        .expect("inspect");
    assert_eq!(String::from_utf8_lossy(&networks.stdout).trim(), "1");
}

#[tokio::test]
async fn an_event_kind_the_client_does_not_know_is_kept_raw_and_the_run_goes_on() {
    let stack = Stack::start().await.expect("stack starts");
    let api = Api::new(&stack.api_url, &stack.token);
    let project_id = stack.project.id.to_string();
    // The fake agent-server emits an event of this kind when told to through its environment.
    let patched = api
        .http
        .patch(api.url(&format!("/projects/{project_id}")))
        .bearer_auth(&api.token)
        .json(&serde_json::json!({"agent": {"env": {"CADENZA_FAKE_EXTRA_EVENT_KIND": "FutureInsightEvent"}}}))
        .send()
        .await
        .expect("patch");
    assert_eq!(patched.status(), 200);
    let (_, run) = api
        .submit_run(&project_id, HELLO, None)
        .await
        .expect("submit");
    let run_id = run["id"].as_str().expect("id").to_owned();
    let run = api.wait_for_end(&run_id, RUN_BUDGET).await.expect("ends");
    assert_eq!(run["state"], "succeeded", "{run}");
    let events = api.all_events(&run_id, 100).await.expect("events");
    let unknown = events
        .iter()
        .find(|event| event["kind"] == "unknown")
        .expect("the unknown event is journaled");
    assert_eq!(unknown["payload"]["agent_kind"], "FutureInsightEvent");
    assert_eq!(unknown["raw"]["kind"], "FutureInsightEvent");
    assert_eq!(
        unknown["raw"]["payload"]["answer"], 42,
        "the raw event is kept whole"
    );
}

#[tokio::test]
async fn a_run_of_a_real_agent_without_an_llm_fails_at_once_saying_how_to_configure_one() {
    let stack = Stack::start().await.expect("stack starts");
    // Any agent image not labelled as a scripted agent needs an LLM; neither the project nor
    // the worker names a model. (The fake LLM image stands in: the run must end before its
    // agent would ever be asked anything.) Tagged under the prefix the test stack allows.
    let image = "cadenza-test/not-scripted:dev";
    let tagged = std::process::Command::new("docker")
        .args(["tag", "cadenza/fake-llm:dev", image])
        .output()
        .expect("docker tag");
    assert!(
        tagged.status.success(),
        "{}",
        String::from_utf8_lossy(&tagged.stderr)
    );
    let project = stack
        .create_project("no-llm", image)
        .await
        .expect("project");
    let api = Api::new(&stack.api_url, &stack.token);
    let started = Instant::now();
    let (_, run) = api
        .submit_run(&project.id.to_string(), "Create hello.txt", None)
        .await
        .expect("submit");
    let run_id = run["id"].as_str().expect("id").to_owned();
    let run = api.wait_for_end(&run_id, RUN_BUDGET).await.expect("ends");
    assert_eq!(run["state"], "failed", "{run}");
    assert_eq!(run["terminal_reason"]["code"], "llm_unconfigured", "{run}");
    let message = run["terminal_reason"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("agent.llm_model") && message.contains("CADENZA_LLM_MODEL"),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "failed fast: {:?}",
        started.elapsed()
    );
    assert!(containers_gone(&run_id, Duration::from_secs(10)).await);
}

#[tokio::test]
async fn a_message_to_a_running_run_reaches_its_conversation_with_a_correlation_id() {
    let stack = Stack::start().await.expect("stack starts");
    let api = Api::new(&stack.api_url, &stack.token);
    let project_id = stack.project.id.to_string();
    // The first command holds the run open until the test says go (bounded at 60 s), so the
    // message is sent while the run is running however slow the machine is.
    let hold = "for i in $(seq 1 600); do [ -f /tmp/go ] && break; sleep 0.1; done";
    let (_, run) = api
        .submit_run(&project_id, &format!("$ {hold}\nfirst done"), None)
        .await
        .expect("submit");
    let run_id = run["id"].as_str().expect("id").to_owned();
    wait_for_action(&api, &run_id, hold).await;

    let send = |text: &str, key: &str| {
        api.http
            .post(api.url(&format!("/runs/{run_id}/messages")))
            .bearer_auth(&api.token)
            .json(&serde_json::json!({"text": text, "idempotency_key": key}))
            .send()
    };
    let response = send("$ echo second > second.txt\nboth done", "m-1")
        .await
        .expect("message");
    assert_eq!(response.status(), 202);
    let receipt: Value = response.json().await.expect("receipt");
    assert_eq!(receipt["action"], "message");
    let correlation = receipt["correlation_id"].as_str().expect("id").to_owned();
    // The same idempotency key: the same receipt, not a second message.
    let again: Value = send("$ echo second > second.txt\nboth done", "m-1")
        .await
        .expect("message")
        .json()
        .await
        .expect("receipt");
    assert_eq!(again["correlation_id"], correlation.as_str());
    let held = api.get_json(&format!("/runs/{run_id}")).await.expect("run");
    assert_eq!(
        held["state"], "running",
        "the message went to a running run"
    );

    // Release the first command once the message has reached the conversation (the worker
    // delivers it at its next heartbeat).
    let deadline = Instant::now() + RUN_BUDGET;
    loop {
        let events = api.all_events(&run_id, 100).await.expect("events");
        if events.iter().any(|event| {
            event["kind"] == "message" && event["payload"]["correlation_id"] == correlation.as_str()
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the message was never delivered: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let containers = containers_with_label("io.cadenza.run", &run_id);
    let container = containers.first().expect("the run's container");
    let released = std::process::Command::new("docker")
        .args(["exec", container, "touch", "/tmp/go"])
        .status()
        .expect("docker exec");
    assert!(released.success());

    let run = api.wait_for_end(&run_id, RUN_BUDGET).await.expect("ends");
    assert_eq!(run["state"], "succeeded", "{run}\n{}", stack.logs());
    assert_eq!(run["final_message"], "both done", "the agent did both");
    let events = api.all_events(&run_id, 100).await.expect("events");
    let user_messages: Vec<&Value> = events
        .iter()
        .filter(|event| event["kind"] == "message" && event["payload"]["role"] == "user")
        .collect();
    assert_eq!(
        user_messages.len(),
        2,
        "the task and the message, once each"
    );
    assert_eq!(
        user_messages[1]["payload"]["correlation_id"],
        correlation.as_str()
    );
    assert!(user_messages[0]["payload"].get("correlation_id").is_none());
    let caused = events
        .iter()
        .find(|event| {
            event["kind"] == "action" && event["payload"]["command"] == "echo second > second.txt"
        })
        .expect("the message's command ran");
    assert_eq!(caused["payload"]["correlation_id"], correlation.as_str());
    let patch = api.diff(&run_id).await.expect("diff");
    assert!(patch.contains("second.txt"), "{patch}");

    // The run is over: nothing is left to talk to.
    let late = send("anything else?", "m-2").await.expect("message");
    assert_eq!(late.status(), 409);
    let empty = send("   ", "m-3").await.expect("message");
    assert_eq!(empty.status(), 400);
}

#[tokio::test]
async fn a_message_to_a_finished_run_starts_a_follow_up_turn_on_the_same_workspace() {
    let stack = Stack::start_with(cadenza_testkit::stack::StackOptions {
        extra_env: vec![("CADENZA_WORKSPACE_IDLE_TTL".into(), "6s".into())],
        ..Default::default()
    })
    .await
    .expect("stack starts");
    let api = Api::new(&stack.api_url, &stack.token);
    let project_id = stack.project.id.to_string();
    let (_, first) = api
        .submit_run(&project_id, "$ echo one > one.txt\nfirst turn", None)
        .await
        .expect("submit");
    let first_id = first["id"].as_str().expect("id").to_owned();
    let first = api.wait_for_end(&first_id, RUN_BUDGET).await.expect("ends");
    assert_eq!(first["state"], "succeeded", "{first}\n{}", stack.logs());
    assert_eq!(
        containers_with_label("io.cadenza.run", &first_id).len(),
        1,
        "the workspace is kept for a follow-up"
    );

    let send = |run_id: &str, text: &str| {
        api.http
            .post(api.url(&format!("/runs/{run_id}/messages")))
            .bearer_auth(&api.token)
            .json(&serde_json::json!({"text": text}))
            .send()
    };
    let response = send(
        &first_id,
        "$ cat one.txt\n$ echo two > two.txt\nsecond turn",
    )
    .await
    .expect("message");
    assert_eq!(response.status(), 201);
    let receipt: Value = response.json().await.expect("receipt");
    let second_id = receipt["follow_up_run_id"]
        .as_str()
        .expect("a follow-up run")
        .to_owned();
    let correlation = receipt["correlation_id"].as_str().expect("correlation");
    // The workspace belongs to the follow-up now: a second message to the first run is refused.
    let again = send(&first_id, "another").await.expect("message");
    assert_eq!(again.status(), 409);

    let second = api
        .wait_for_end(&second_id, RUN_BUDGET)
        .await
        .expect("ends");
    assert_eq!(second["state"], "succeeded", "{second}\n{}", stack.logs());
    assert_eq!(second["final_message"], "second turn");
    let events = api.all_events(&second_id, 100).await.expect("events");
    let user_messages: Vec<&Value> = events
        .iter()
        .filter(|event| event["kind"] == "message" && event["payload"]["role"] == "user")
        .collect();
    assert_eq!(
        user_messages.len(),
        1,
        "only the new message: {user_messages:?}"
    );
    assert_eq!(user_messages[0]["payload"]["correlation_id"], correlation);
    assert!(
        events.iter().any(|event| {
            event["kind"] == "observation"
                && event["payload"]["output"].as_str().map(str::trim) == Some("one")
        }),
        "the second turn read the file the first turn wrote"
    );
    let patch = api.diff(&second_id).await.expect("diff");
    assert!(
        patch.contains("two.txt") && patch.contains("one.txt"),
        "{patch}\n{}",
        stack.logs()
    );

    // Kept for six seconds after the second turn, then removed; later messages are refused.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !containers_with_label("io.cadenza.run", &first_id).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the idle workspace was not removed"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let late = send(&second_id, "anything else?").await.expect("message");
    assert_eq!(late.status(), 409);
}

#[tokio::test]
async fn git_credentials_never_enter_the_agents_container() {
    use base64::Engine;
    let git = cadenza_e2e::services::GitServer::start();
    let stack = Stack::start_with(cadenza_testkit::stack::StackOptions {
        extra_env: vec![
            ("CADENZA_ATTACH_CONTAINERS".into(), git.name.clone()),
            // Kept after the run, so the test can look inside.
            ("CADENZA_WORKSPACE_IDLE_TTL".into(), "5m".into()),
        ],
        ..Default::default()
    })
    .await
    .expect("stack starts");
    let api = Api::new(&stack.api_url, &stack.token);
    let project_id = stack.project.id.to_string();
    let canary = format!("ghp_canary{}", uuid::Uuid::now_v7().simple());
    let stored = api
        .http
        .put(api.url(&format!("/projects/{project_id}/secrets/GIT_TOKEN")))
        .bearer_auth(&api.token)
        .json(&serde_json::json!({"value": canary}))
        .send()
        .await
        .expect("secret");
    assert!(stored.status().is_success());
    let patched = api
        .http
        .patch(api.url(&format!("/projects/{project_id}")))
        .bearer_auth(&api.token)
        .json(&serde_json::json!({"repository": {
            "url": format!("git://{}/repo.git", git.name),
            "branch": "main",
            "credentials_secret": "GIT_TOKEN",
        }}))
        .send()
        .await
        .expect("patch");
    assert_eq!(patched.status(), 200);

    let (_, run) = api
        .submit_run(&project_id, "$ cat README.md\n$ ps -eo args\ndone", None)
        .await
        .expect("submit");
    let run_id = run["id"].as_str().expect("id").to_owned();
    let run = api.wait_for_end(&run_id, RUN_BUDGET).await.expect("ends");
    assert_eq!(run["state"], "succeeded", "{run}\n{}", stack.logs());

    // The credential in every form git could carry it: as given, and inside the Basic header.
    let forms = [
        canary.clone(),
        base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{canary}")),
    ];
    let containers = containers_with_label("io.cadenza.run", &run_id);
    assert_eq!(containers.len(), 1, "only the agent's container is left");
    let look = std::process::Command::new("docker")
        .args(["exec", &containers[0], "bash", "-c"])
        .arg(
            "ps -eo args; cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'; \
             git -C /workspace/project config --list; \
             grep -ra . /workspace 2>/dev/null | head -c 10000000",
        )
        .output()
        .expect("docker exec");
    let inside = String::from_utf8_lossy(&look.stdout);
    assert!(
        inside.contains("remote.origin.url=git://"),
        "the look inside worked: {inside}"
    );
    let inspect = std::process::Command::new("docker")
        .args(["inspect", &containers[0]])
        .output()
        .expect("inspect");
    let inspect = String::from_utf8_lossy(&inspect.stdout);
    let events = api.all_events(&run_id, 200).await.expect("events");
    let journal = serde_json::to_string(&events).expect("json");
    for form in &forms {
        assert!(
            !inside.contains(form.as_str()),
            "the agent's container holds the credential"
        );
        assert!(
            !inspect.contains(form.as_str()),
            "the container's settings hold the credential"
        );
        assert!(
            !journal.contains(form.as_str()),
            "the journal holds the credential"
        );
        assert!(
            !stack.logs().contains(form.as_str()),
            "a log holds the credential"
        );
    }
}
