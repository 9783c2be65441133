//! A burst of runs on one worker: every run succeeds (the surplus waits in the queue), and the
//! worker never holds more workspace networks than its bound, kept workspaces included.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::system::EventsOptions;
use cadenza_e2e::Api;
use cadenza_testkit::stack::{Stack, StackOptions};
use futures::StreamExt;

const RUNS: usize = 200;
const MAX_NETWORKS: i64 = 6;
const BUDGET: Duration = Duration::from_secs(600);

#[tokio::test]
async fn a_burst_of_runs_all_succeed_within_the_network_bound() {
    let stack = Stack::start_with(StackOptions {
        worker_capacity: 4,
        extra_env: vec![
            (
                "CADENZA_MAX_WORKSPACE_NETWORKS".into(),
                MAX_NETWORKS.to_string(),
            ),
            // Every finished run is kept for a follow-up, so the bound is reached quickly and
            // kept workspaces must give way.
            ("CADENZA_WORKSPACE_IDLE_TTL".into(), "15m".into()),
        ],
        ..Default::default()
    })
    .await
    .expect("stack starts");

    // Record network events from the engine's own stream, started before any run. Network
    // events carry no labels, so they are told apart by name (`cadenza-run-<run id>-…`) at the
    // end, when every run id is known.
    let docker = Docker::connect_with_local_defaults().expect("docker");
    let filters = HashMap::from([("type".to_owned(), vec!["network".to_owned()])]);
    let mut events = docker.events(Some(EventsOptions::<String> {
        filters,
        ..Default::default()
    }));
    let seen: Arc<std::sync::Mutex<Vec<(String, String)>>> = Arc::default();
    let probe_prefix = format!("{}-probe-", stack.worker_name);
    let watcher = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(Ok(event)) = events.next().await {
                let name = event
                    .actor
                    .and_then(|actor| actor.attributes)
                    .and_then(|attributes| attributes.get("name").cloned())
                    .unwrap_or_default();
                let action = event.action.unwrap_or_default();
                if let Ok(mut seen) = seen.lock() {
                    seen.push((action, name));
                }
            }
        })
    };
    let probe_seen = || {
        seen.lock()
            .map(|seen| seen.iter().any(|(_, name)| name.starts_with(&probe_prefix)))
            .unwrap_or(false)
    };
    // The stream is live once it reports a probe network made with the worker's label (a probe
    // made before the subscription reached the engine goes unseen: try again, boundedly).
    for attempt in 0.. {
        assert!(
            attempt < 30,
            "the event stream never reported a probe network"
        );
        let probe = format!("{probe_prefix}{attempt}");
        docker
            .create_network(bollard::network::CreateNetworkOptions {
                name: probe.clone(),
                ..Default::default()
            })
            .await
            .expect("probe network");
        let deadline = Instant::now() + Duration::from_secs(1);
        while !probe_seen() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        docker.remove_network(&probe).await.expect("remove probe");
        if probe_seen() {
            break;
        }
    }

    let api = Api::new(&stack.api_url, &stack.token);
    let project_id = stack.project.id.to_string();
    let mut ids = Vec::with_capacity(RUNS);
    for i in 0..RUNS {
        let (status, run) = api
            .submit_run(&project_id, &format!("$ echo run {i}\ndone"), None)
            .await
            .expect("submit");
        assert_eq!(status, 201, "{run}");
        ids.push(run["id"].as_str().expect("id").to_owned());
    }

    let started = Instant::now();
    let counts = loop {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("select state, count(*) from runs where project_id = $1 group by state")
                .bind(stack.project.id.as_uuid())
                .fetch_all(&stack.db.pool)
                .await
                .expect("counts");
        let counts: HashMap<String, i64> = rows.into_iter().collect();
        let ended: i64 = ["succeeded", "failed", "cancelled"]
            .iter()
            .map(|state| counts.get(*state).copied().unwrap_or_default())
            .sum();
        if ended == RUNS as i64 {
            break counts;
        }
        assert!(
            started.elapsed() < BUDGET,
            "only {ended} of {RUNS} runs ended within {BUDGET:?}: {counts:?}\n{}",
            stack.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        counts.get("succeeded").copied().unwrap_or_default(),
        RUNS as i64,
        "{counts:?}\n{}",
        stack.logs()
    );
    watcher.abort();
    // The most networks of these runs that existed at once, replayed from the events.
    let ours = |name: &str| {
        ids.iter()
            .any(|id| name.starts_with(&format!("cadenza-run-{id}-")))
    };
    let (mut held, mut peak) = (0i64, 0i64);
    for (action, name) in seen.lock().expect("events").iter() {
        if !ours(name) {
            continue;
        }
        match action.as_str() {
            "create" => {
                held += 1;
                peak = peak.max(held);
            }
            "destroy" => held -= 1,
            _ => {}
        }
    }
    assert!(
        peak >= 4,
        "the worker used its capacity (peak {peak} networks)"
    );
    assert!(
        peak <= MAX_NETWORKS,
        "the worker held {peak} networks at once, more than its bound of {MAX_NETWORKS}"
    );
    println!(
        "{RUNS} runs in {:.1} s, at most {peak} networks at once",
        started.elapsed().as_secs_f64()
    );
}

/// The worker's peak resident memory (`VmHWM`), in bytes.
fn peak_memory(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .expect("VmHWM")
        * 1024
}

/// What the worker may hold at its peak while reading a run whose workspace has a 1 GiB file,
/// an 85 MB diff and a 100 MB command output, with another run beside it.
const WORKER_MEMORY_BOUND: u64 = 256 * 1024 * 1024;

#[tokio::test]
async fn huge_files_and_output_in_a_workspace_are_cut_and_leave_other_runs_alone() {
    let mut stack = Stack::start_with(StackOptions {
        worker_capacity: 2,
        ..Default::default()
    })
    .await
    .expect("stack starts");
    let api = Api::new(&stack.api_url, &stack.token);
    let project_id = stack.project.id.to_string();
    let huge = "$ head -c 1073741824 /dev/zero > zeros.bin\n\
                $ head -c 67108864 /dev/urandom > random.bin\n\
                $ yes 'a line of output that goes on' | head -c 100000000\n\
                $ echo small > small.txt\n\
                done";
    let (_, big_run) = api
        .submit_run(&project_id, huge, None)
        .await
        .expect("submit");
    let (_, other) = api
        .submit_run(&project_id, "$ echo beside > beside.txt\ndone", None)
        .await
        .expect("submit");
    let big_id = big_run["id"].as_str().expect("id").to_owned();
    let other_id = other["id"].as_str().expect("id").to_owned();

    let other = api.wait_for_end(&other_id, BUDGET).await.expect("ends");
    assert_eq!(other["state"], "succeeded", "{other}\n{}", stack.logs());
    let big = api.wait_for_end(&big_id, BUDGET).await.expect("ends");
    assert_eq!(big["state"], "succeeded", "{big}\n{}", stack.logs());

    // The output was cut to the terminal's limit, as the real agent-server does.
    let events = api.all_events(&big_id, 500).await.expect("events");
    let largest = events
        .iter()
        .map(|event| event.to_string().len())
        .max()
        .unwrap_or_default();
    assert!(largest < 256 * 1024, "a journal entry of {largest} bytes");

    // The diff keeps what fits, leaves the random file out and says so.
    let patch = api
        .get(&format!("/runs/{big_id}/diff"))
        .await
        .expect("diff")
        .text()
        .await
        .expect("patch");
    assert!(
        patch.len() <= 9 * 1024 * 1024,
        "a {} byte diff was stored",
        patch.len()
    );
    assert!(
        patch.starts_with("Cadenza left changes out of this diff:"),
        "{}",
        &patch[..200.min(patch.len())]
    );
    assert!(patch.contains("random.bin: its diff is larger than the per-file limit"));
    let note = &patch[..patch.find("diff --git").unwrap_or(patch.len()).min(2000)];
    assert!(patch.contains("b/small.txt"), "{note}");
    assert!(
        patch.contains("b/zeros.bin") || note.contains("zeros.bin: "),
        "the zero file is in the diff or named as left out: {note}"
    );
    let beside = api
        .get(&format!("/runs/{other_id}/diff"))
        .await
        .expect("diff")
        .text()
        .await
        .expect("patch");
    assert!(
        beside.contains("b/beside.txt") && !beside.contains("Cadenza left"),
        "{beside}"
    );

    let pid = stack.service("worker").expect("worker").pid();
    let peak = peak_memory(pid);
    println!(
        "worker peak memory: {} MiB (bound {} MiB)",
        peak >> 20,
        WORKER_MEMORY_BOUND >> 20
    );
    assert!(
        peak < WORKER_MEMORY_BOUND,
        "the worker peaked at {} MiB",
        peak >> 20
    );
}
