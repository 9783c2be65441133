//! Each service as a process: configuration errors name the setting, health endpoints answer,
//! SIGTERM stops it cleanly, and a run survives the kill -9 of its worker: the restarted worker
//! re-attaches to the container and the run succeeds, every command run once.

use std::process::Command;
use std::time::Duration;

use cadenza_e2e::Api;
use cadenza_testkit::docker::containers_with_label;
use cadenza_testkit::stack::{Stack, bin_dir};

#[test]
fn a_missing_or_invalid_setting_is_named_at_start_up() {
    for binary in [
        "cadenza-api",
        "cadenza-scheduler",
        "cadenza-worker",
        "cadenza-linear-sync",
    ] {
        let output = Command::new(bin_dir().join(binary))
            .env_clear()
            .env("CADENZA_NATS_URL", "nats://127.0.0.1:1")
            .env("CADENZA_REDIS_URL", "redis://127.0.0.1:1")
            .output()
            .expect("the binary runs");
        assert!(
            !output.status.success(),
            "{binary} started without a database URL"
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("CADENZA_DATABASE_URL"),
            "{binary} did not name the missing setting: {stderr}"
        );
    }
    let output = Command::new(bin_dir().join("cadenza-scheduler"))
        .env_clear()
        .env("CADENZA_DATABASE_URL", "postgres://x@127.0.0.1:1/x")
        .env("CADENZA_NATS_URL", "nats://127.0.0.1:1")
        .env("CADENZA_LEASE_TTL", "soon")
        .output()
        .expect("the binary runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("CADENZA_LEASE_TTL"), "{stderr}");
}

#[tokio::test]
async fn every_service_reports_health_and_stops_cleanly_on_sigterm() {
    let mut stack = Stack::start().await.expect("stack starts");
    let http = reqwest::Client::new();
    for service in &stack.services {
        for path in ["/healthz", "/readyz"] {
            let response = http
                .get(format!("http://127.0.0.1:{}{path}", service.port))
                .send()
                .await
                .expect("health answers");
            assert_eq!(response.status(), 200, "{} {path}", service.name);
        }
    }
    // The public answer says only ready or not; the details are for instance admins.
    let readiness: serde_json::Value = http
        .get(format!("{}/readyz", stack.api_url))
        .send()
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    assert_eq!(readiness, serde_json::json!({"status": "ready"}));
    let details: serde_json::Value = http
        .get(format!("{}/api/v1/admin/health", stack.api_url))
        .bearer_auth(&stack.token)
        .send()
        .await
        .expect("admin health")
        .json()
        .await
        .expect("json");
    let checks: Vec<&str> = details["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter_map(|check| check["name"].as_str())
        .collect();
    assert_eq!(checks, ["postgres", "nats", "redis"]);

    for service in &mut stack.services {
        assert!(
            service.stop(Duration::from_secs(15)),
            "{} did not stop within 15 s of SIGTERM",
            service.name
        );
        assert!(
            service.logs().contains("stopped"),
            "{} did not log a clean stop:\n{}",
            service.name,
            service.logs()
        );
    }
}

/// A task of `steps` commands, each appending its number to `steps.txt`: the run's diff shows
/// whether any command ran twice (or not at all).
fn counted_steps(steps: u32, pause: &str) -> String {
    let mut prompt: String = (1..=steps)
        .map(|step| format!("$ echo {step} >> steps.txt; sleep {pause}\n"))
        .collect();
    prompt.push_str("counted");
    prompt
}

#[tokio::test]
async fn a_run_whose_worker_is_killed_is_re_attached_by_the_restarted_worker_and_succeeds() {
    let mut stack = Stack::start().await.expect("stack starts");
    let api = Api::new(&stack.api_url, &stack.token);
    let (_, run) = api
        .submit_run(
            &stack.project.id.to_string(),
            &counted_steps(8, "0.5"),
            None,
        )
        .await
        .expect("submit");
    let run_id = run["id"].as_str().expect("id").to_owned();
    // Killed once the agent is at work: after its first command.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let events = api.all_events(&run_id, 100).await.expect("events");
        if events.iter().any(|event| event["kind"] == "observation") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never ran a command"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // kill -9: no chance to clean up or record anything.
    let worker = stack.service("worker").expect("worker");
    let _ = Command::new("kill")
        .args(["-KILL", &worker.pid().to_string()])
        .status();
    assert!(!containers_with_label("io.cadenza.run", &run_id).is_empty());
    let killed = std::time::Instant::now();
    worker.restart().expect("restart");
    worker
        .wait_ready(Duration::from_secs(60))
        .await
        .expect("worker ready again");

    let ended = api
        .wait_for_end(&run_id, Duration::from_secs(120))
        .await
        .expect("the run ends");
    eprintln!(
        "re-attached and finished {:?} after the kill",
        killed.elapsed()
    );
    assert_eq!(ended["state"], "succeeded", "{ended}");
    assert_eq!(ended["attempt"], 1, "re-attached, not retried: {ended}");
    // Every command ran once, in order.
    let diff = api.diff(&run_id).await.expect("diff");
    let added: Vec<&str> = diff
        .lines()
        .filter(|line| line.starts_with('+') && !line.starts_with("+++"))
        .collect();
    assert_eq!(
        added,
        ["+1", "+2", "+3", "+4", "+5", "+6", "+7", "+8"],
        "{diff}"
    );
    // The journal is dense, holds each agent event once, and no state but the happy path.
    let events = api.all_events(&run_id, 500).await.expect("events");
    let seqs = cadenza_e2e::seqs(&events);
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    let (entries, distinct): (i64, i64) = sqlx::query_as(
        "select count(source_event_id), count(distinct source_event_id) from run_events where run_id = $1::uuid",
    )
    .bind(&run_id)
    .fetch_one(&stack.db.pool)
    .await
    .expect("count");
    assert!(entries > 0);
    assert_eq!(entries, distinct, "an agent event was journaled twice");
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
    // The container went with the end.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !containers_with_label("io.cadenza.run", &run_id).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the container was not removed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_failed_test_leaves_no_container_behind() {
    let mut stack = Stack::start().await.expect("stack starts");
    let api = Api::new(&stack.api_url, &stack.token);
    let (_, run) = api
        .submit_run(&stack.project.id.to_string(), "$ sleep 60\nnever", None)
        .await
        .expect("submit");
    let run_id = run["id"].as_str().expect("id").to_owned();
    api.wait_for_run(&run_id, Duration::from_secs(60), |run| {
        run["state"] == "running"
    })
    .await
    .expect("the run starts");
    let worker_name = stack.worker_name.clone();
    // The worker dies without cleaning up, as it would when a test fails half-way...
    let worker = stack.service("worker").expect("worker");
    let _ = Command::new("kill")
        .args(["-KILL", &worker.pid().to_string()])
        .status();
    assert!(!containers_with_label("io.cadenza.worker", &worker_name).is_empty());
    // ...and the test's stack is dropped (as a panicking test's would be).
    drop(stack);
    assert!(containers_with_label("io.cadenza.worker", &worker_name).is_empty());
}

/// kill -9 of the worker, and its run's container removed too (the engine lost it): the
/// restarted worker finds the run without its workspace.
async fn lose_the_workspace_of_a_running_run(
    stack: &mut Stack,
    api: &Api,
    project: &str,
) -> String {
    let (_, run) = api
        .submit_run(project, &counted_steps(4, "1"), None)
        .await
        .expect("submit");
    let run_id = run["id"].as_str().expect("id").to_owned();
    api.wait_for_run(&run_id, Duration::from_secs(60), |run| {
        run["state"] == "running"
    })
    .await
    .expect("the run starts");
    let worker = stack.service("worker").expect("worker");
    worker.kill();
    for container in containers_with_label("io.cadenza.run", &run_id) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &container])
            .output();
    }
    worker.restart().expect("restart");
    worker
        .wait_ready(Duration::from_secs(60))
        .await
        .expect("worker ready again");
    run_id
}

#[tokio::test]
async fn a_run_whose_workspace_is_lost_starts_again_or_fails_as_its_project_says() {
    let mut stack = Stack::start().await.expect("stack starts");
    let api = Api::new(&stack.api_url, &stack.token);
    let project = stack.project.id.to_string();

    // The default: started again from scratch, and every command of the new attempt runs once.
    let run_id = lose_the_workspace_of_a_running_run(&mut stack, &api, &project).await;
    let ended = api
        .wait_for_end(&run_id, Duration::from_secs(120))
        .await
        .expect("the run ends");
    assert_eq!(ended["state"], "succeeded", "{ended}");
    assert_eq!(ended["attempt"], 2, "{ended}");
    let diff = api.diff(&run_id).await.expect("diff");
    let added: Vec<&str> = diff
        .lines()
        .filter(|line| line.starts_with('+') && !line.starts_with("+++"))
        .collect();
    assert_eq!(added, ["+1", "+2", "+3", "+4"], "{diff}");

    // A project whose runs must not repeat work fails the run, saying why and what to change.
    let patched = api
        .http
        .patch(api.url(&format!("/projects/{project}")))
        .bearer_auth(&api.token)
        .json(&serde_json::json!({"agent": {"on_lost_workspace": "fail"}}))
        .send()
        .await
        .expect("patch");
    assert_eq!(patched.status(), 200);
    let run_id = lose_the_workspace_of_a_running_run(&mut stack, &api, &project).await;
    let ended = api
        .wait_for_end(&run_id, Duration::from_secs(120))
        .await
        .expect("the run ends");
    assert_eq!(ended["state"], "failed", "{ended}");
    assert_eq!(ended["attempt"], 1, "{ended}");
    assert_eq!(
        ended["terminal_reason"]["code"], "workspace_unavailable",
        "{ended}"
    );
    let message = ended["terminal_reason"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("agent.on_lost_workspace"), "{message}");
}
