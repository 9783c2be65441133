//! Deleting an org or project ends its workspaces: a running run's container and network go
//! within a few heartbeats, and so does a workspace kept for follow-up turns. The run rows
//! cascade away with the project or org, so nothing else is left to stop them.

use std::time::{Duration, Instant};

use cadenza_e2e::Api;
use cadenza_testkit::docker::{containers_with_label, networks_with_label};
use cadenza_testkit::stack::{Stack, StackOptions};

const RUN_BUDGET: Duration = Duration::from_secs(120);
/// A few worker heartbeats (1 s in the test stack).
const CLEANUP_BUDGET: Duration = Duration::from_secs(15);

/// Waits (bounded) until no container or network of `run_id` is left.
async fn wait_until_workspace_is_gone(stack: &Stack, run_id: &str) {
    let deadline = Instant::now() + CLEANUP_BUDGET;
    loop {
        let containers = containers_with_label("io.cadenza.run", run_id);
        let networks = networks_with_label("io.cadenza.run", run_id);
        if containers.is_empty() && networks.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the workspace of deleted run {run_id} is still there: containers {containers:?}, \
             networks {networks:?}\n{}",
            stack.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn delete(api: &Api, path: &str) {
    let response = api
        .http
        .delete(api.url(path))
        .bearer_auth(&api.token)
        .send()
        .await
        .expect("delete");
    assert_eq!(response.status(), 204, "DELETE {path}");
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
async fn deleting_a_project_stops_its_running_workspace() {
    let stack = Stack::start().await.expect("stack starts");
    let api = Api::new(&stack.api_url, &stack.token);
    let project_id = stack.project.id.to_string();
    let (_, run) = api
        .submit_run(&project_id, "$ sleep 300\nnever", None)
        .await
        .expect("submit");
    let run_id = run["id"].as_str().expect("id").to_owned();
    wait_for_action(&api, &run_id, "sleep 300").await;
    assert_eq!(containers_with_label("io.cadenza.run", &run_id).len(), 1);
    assert_eq!(networks_with_label("io.cadenza.run", &run_id).len(), 1);

    delete(&api, &format!("/projects/{project_id}")).await;
    wait_until_workspace_is_gone(&stack, &run_id).await;
    let gone = api.get(&format!("/runs/{run_id}")).await.expect("get");
    assert_eq!(gone.status(), 404);
}

#[tokio::test]
async fn deleting_an_org_removes_its_kept_workspace() {
    // Workspaces are kept for an hour: only the deletion can end this one within the test.
    let stack = Stack::start_with(StackOptions {
        extra_env: vec![("CADENZA_WORKSPACE_IDLE_TTL".into(), "1h".into())],
        ..Default::default()
    })
    .await
    .expect("stack starts");
    let api = Api::new(&stack.api_url, &stack.token);
    let run = api
        .run_to_end(
            &stack.project.id.to_string(),
            "$ echo kept > kept.txt\ndone",
            RUN_BUDGET,
        )
        .await
        .expect("the run ends");
    assert_eq!(run["state"], "succeeded", "{run}\n{}", stack.logs());
    let run_id = run["id"].as_str().expect("id").to_owned();
    assert_eq!(
        containers_with_label("io.cadenza.run", &run_id).len(),
        1,
        "the workspace is kept for a follow-up"
    );

    delete(&api, &format!("/orgs/{}", stack.org.id)).await;
    wait_until_workspace_is_gone(&stack, &run_id).await;
}
