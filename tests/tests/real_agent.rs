//! End to end through all four services with the real OpenHands agent-server image, driven by the
//! scripted LLM: the run clones a test repository, executes the task, succeeds, and its diff
//! adds the new file relative to the recorded base commit; a follow-up message then runs a second
//! turn on the same workspace and conversation.

use std::time::Duration;

use cadenza_e2e::Api;
use cadenza_e2e::services::{FakeLlm, GitServer};
use cadenza_testkit::docker::containers_with_label;
use cadenza_testkit::stack::{Stack, StackOptions};
use serde_json::json;

const REAL_IMAGE: &str = "cadenza/openhands-agent-server:1.58.0";

#[tokio::test]
async fn the_real_agent_server_runs_a_task_on_a_cloned_repository() {
    let git = GitServer::start();
    let llm = FakeLlm::start();
    let stack = Stack::start_with(StackOptions {
        extra_env: vec![
            (
                "CADENZA_ATTACH_CONTAINERS".into(),
                format!("{},{}", git.name, llm.name),
            ),
            (
                "CADENZA_DEFAULT_LLM_MODEL".into(),
                "openai/fake-model".into(),
            ),
            ("CADENZA_DEFAULT_LLM_BASE_URL".into(), llm.base_url()),
            ("CADENZA_DEFAULT_LLM_API_KEY".into(), "sk-fake".into()),
            ("CADENZA_LLM_API_MODE".into(), "chat".into()),
            ("CADENZA_WORKSPACE_IDLE_TTL".into(), "5m".into()),
        ],
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
        .json(&json!({
            "agent": {"image": REAL_IMAGE, "memory_mb": 2048, "cpus": 2.0},
            "repository": {"url": format!("git://{}/repo.git", git.name), "branch": "main"},
        }))
        .send()
        .await
        .expect("patch");
    assert_eq!(patched.status(), 200);

    let (status, run) = api
        .submit_run(
            &project_id,
            "$ echo hello > hello.txt\n$ cat hello.txt\ndone",
            None,
        )
        .await
        .expect("submit");
    assert_eq!(status, 201);
    let run_id = run["id"].as_str().expect("id").to_owned();
    let run = api
        .wait_for_end(&run_id, Duration::from_secs(300))
        .await
        .expect("the run ends");
    assert_eq!(run["state"], "succeeded", "{run}\n{}", stack.logs());
    assert_eq!(run["final_message"], "done");

    let events = api.all_events(&run_id, 200).await.expect("events");
    let base = events
        .iter()
        .find(|event| event["kind"] == "workspace")
        .and_then(|event| event["payload"]["base_commit"].as_str())
        .expect("base commit")
        .to_owned();
    assert!(
        events.iter().any(|event| {
            event["kind"] == "observation"
                && event["payload"]["tool_name"] == "terminal"
                && event["payload"]["output"]
                    .as_str()
                    .is_some_and(|output| output.contains("hello"))
        }),
        "the terminal observation of `cat hello.txt`"
    );
    assert!(
        events
            .iter()
            .any(|event| event["raw"]["kind"] == "SystemPromptEvent"),
        "real agent events are kept raw"
    );

    let diff = api
        .get(&format!("/runs/{run_id}/diff"))
        .await
        .expect("diff");
    let patch = diff.text().await.expect("patch");
    assert!(
        patch.contains("b/hello.txt") && patch.contains("+hello"),
        "{patch}"
    );
    assert!(
        !patch.contains("README.md"),
        "relative to the base commit {base}: {patch}"
    );
    assert_eq!(
        containers_with_label("io.cadenza.run", &run_id).len(),
        1,
        "the workspace is kept for a follow-up"
    );

    // A follow-up message: a second turn in the same container and conversation.
    let response = api
        .http
        .post(api.url(&format!("/runs/{run_id}/messages")))
        .bearer_auth(&api.token)
        .json(&json!({"text": "$ cat hello.txt\n$ echo again > again.txt\nsecond turn done"}))
        .send()
        .await
        .expect("message");
    assert_eq!(response.status(), 201);
    let receipt: serde_json::Value = response.json().await.expect("receipt");
    let second_id = receipt["follow_up_run_id"]
        .as_str()
        .expect("follow-up run")
        .to_owned();
    let second = api
        .wait_for_end(&second_id, Duration::from_secs(300))
        .await
        .expect("the second turn ends");
    assert_eq!(second["state"], "succeeded", "{second}\n{}", stack.logs());
    assert_eq!(second["final_message"], "second turn done");
    let events = api.all_events(&second_id, 200).await.expect("events");
    assert!(
        events.iter().any(|event| {
            event["kind"] == "observation"
                && event["payload"]["output"]
                    .as_str()
                    .is_some_and(|output| output.contains("hello"))
        }),
        "the second turn read the first turn's file: {events:?}"
    );
    assert!(
        events.iter().any(|event| {
            event["kind"] == "message"
                && event["payload"]["role"] == "user"
                && event["payload"]["correlation_id"] == receipt["correlation_id"]
        }),
        "the message carries the receipt's correlation id"
    );
    let patch = api.diff(&second_id).await.expect("diff");
    assert!(
        patch.contains("b/again.txt") && patch.contains("b/hello.txt"),
        "the second diff is relative to the same base {base}: {patch}"
    );
}

#[tokio::test]
async fn the_operators_llm_key_never_reaches_an_endpoint_a_tenant_chose() {
    let operator_llm = FakeLlm::start();
    let tenant_llm = FakeLlm::start();
    let operator_key = format!("sk-operator-{}", uuid::Uuid::now_v7().simple());
    let tenant_key = format!("sk-tenant-{}", uuid::Uuid::now_v7().simple());
    let stack = Stack::start_with(StackOptions {
        extra_env: vec![
            (
                "CADENZA_ATTACH_CONTAINERS".into(),
                format!("{},{}", operator_llm.name, tenant_llm.name),
            ),
            (
                "CADENZA_DEFAULT_LLM_MODEL".into(),
                "openai/fake-model".into(),
            ),
            (
                "CADENZA_DEFAULT_LLM_BASE_URL".into(),
                operator_llm.base_url(),
            ),
            ("CADENZA_DEFAULT_LLM_API_KEY".into(), operator_key.clone()),
            ("CADENZA_LLM_API_MODE".into(), "chat".into()),
        ],
        ..Default::default()
    })
    .await
    .expect("stack starts");
    let api = Api::new(&stack.api_url, &stack.token);
    let project_id = stack.project.id.to_string();
    let patch = |body: serde_json::Value| {
        api.http
            .patch(api.url(&format!("/projects/{project_id}")))
            .bearer_auth(&api.token)
            .json(&body)
            .send()
    };

    // A tenant's own endpoint, no key of its own: the run fails at once and nothing is sent.
    let patched = patch(json!({
        "agent": {"image": REAL_IMAGE, "memory_mb": 2048, "cpus": 2.0, "llm_base_url": tenant_llm.base_url()},
    }))
    .await
    .expect("patch");
    assert_eq!(patched.status(), 200);
    let (_, run) = api
        .submit_run(&project_id, "$ echo hi\ndone", None)
        .await
        .expect("submit");
    let run = api
        .wait_for_end(run["id"].as_str().expect("id"), Duration::from_secs(120))
        .await
        .expect("ends");
    assert_eq!(run["state"], "failed", "{run}");
    assert_eq!(run["terminal_reason"]["code"], "llm_unconfigured", "{run}");
    assert!(
        run["terminal_reason"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("agent.llm_base_url"),
        "{run}"
    );
    assert!(tenant_llm.presented_keys().await.is_empty());

    // With its own key the run goes to its endpoint with that key, and only that key.
    let stored = api
        .http
        .put(api.url(&format!("/projects/{project_id}/secrets/TENANT_LLM_KEY")))
        .bearer_auth(&api.token)
        .json(&json!({"value": tenant_key}))
        .send()
        .await
        .expect("secret");
    assert!(stored.status().is_success(), "{}", stored.status());
    let patched = patch(json!({"agent": {"llm_api_key_secret": "TENANT_LLM_KEY"}}))
        .await
        .expect("patch");
    assert_eq!(patched.status(), 200);
    let (_, run) = api
        .submit_run(&project_id, "$ echo hi\ndone", None)
        .await
        .expect("submit");
    let run = api
        .wait_for_end(run["id"].as_str().expect("id"), Duration::from_secs(300))
        .await
        .expect("ends");
    assert_eq!(run["state"], "succeeded", "{run}\n{}", stack.logs());
    assert_eq!(tenant_llm.presented_keys().await, vec![tenant_key]);
    assert!(
        operator_llm.presented_keys().await.is_empty(),
        "the operator's endpoint was not used"
    );
    assert!(
        !stack.logs().contains(&operator_key),
        "the operator key is in no log"
    );
}
