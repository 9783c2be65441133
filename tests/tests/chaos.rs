//! The chaos suite: with 20 runs in flight, one fault at a time (a worker killed or shut down,
//! the control-plane services killed, NATS restarted with and without its store, Postgres away
//! for 5, 40 and 90 seconds, a NATS cluster node killed), every run still succeeds, each journal
//! is dense with no event twice, each agent command ran once, and stream readers that stayed
//! connected or reconnected with `Last-Event-ID` saw every event exactly once. Each scenario
//! prints its figures: runs, events, duplicates, losses, recovery time.
//!
//! Every scenario has its own Postgres and NATS (the kit's private servers), so a fault never
//! touches the other tests; the scenarios run one at a time (`.config/nextest.toml`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cadenza_e2e::Api;
use cadenza_e2e::services::FakeLlm;
use cadenza_e2e::sse::SseReader;
use cadenza_testkit::chaos::{NatsCluster, PrivateNats, PrivatePostgres};
use cadenza_testkit::stack::{Stack, StackOptions};
use serde_json::Value;
use tokio::task::JoinHandle;

/// Runs in flight during each fault.
const RUNS: usize = 20;
/// Commands per run, each appending its number to `steps.txt` and pausing a second.
const STEPS: u32 = 10;
/// The most any run may take to end once the fault is over.
const END_BUDGET: Duration = Duration::from_secs(300);

enum Bus {
    Single(PrivateNats),
    Cluster(NatsCluster),
}

/// One scenario's world. Field order is drop order: the services stop before the servers go.
struct Chaos {
    stack: Stack,
    api: Api,
    /// The scripted LLM, when a run of the real agent-server is in flight too.
    _llm: Option<FakeLlm>,
    bus: Bus,
    postgres: PrivatePostgres,
}

/// The real agent-server image (built by `scripts/build-images.sh`).
const REAL_IMAGE: &str = "cadenza/openhands-agent-server:1.58.0";

impl Chaos {
    async fn start(workers: u32, cluster: bool) -> anyhow::Result<Self> {
        Self::start_with(workers, cluster, false).await
    }

    /// With `real_agent`, the project `real` runs the real agent-server, driven by the scripted
    /// LLM.
    async fn start_with(workers: u32, cluster: bool, real_agent: bool) -> anyhow::Result<Self> {
        let postgres = PrivatePostgres::start().await?;
        let bus = if cluster {
            Bus::Cluster(NatsCluster::start().await?)
        } else {
            Bus::Single(PrivateNats::start().await?)
        };
        let nats_url = match &bus {
            Bus::Single(nats) => nats.url(),
            Bus::Cluster(cluster) => cluster.url(),
        };
        let mut extra_env = vec![
            ("CADENZA_REATTACH_GRACE".to_owned(), "30s".to_owned()),
            ("CADENZA_DATABASE_POOL_SIZE".to_owned(), "20".to_owned()),
            // The suite polls every run's journal and state: far above a person's request rate.
            ("CADENZA_RATE_LIMIT_PER_CALLER".to_owned(), "0".to_owned()),
            ("CADENZA_RATE_LIMIT_PER_ORG".to_owned(), "0".to_owned()),
        ];
        if cluster {
            extra_env.push(("CADENZA_NATS_STREAM_REPLICAS".to_owned(), "3".to_owned()));
        }
        let llm = real_agent.then(FakeLlm::start);
        if let Some(llm) = &llm {
            extra_env.extend([
                ("CADENZA_ATTACH_CONTAINERS".to_owned(), llm.name.clone()),
                (
                    "CADENZA_DEFAULT_LLM_MODEL".to_owned(),
                    "openai/fake-model".to_owned(),
                ),
                ("CADENZA_DEFAULT_LLM_BASE_URL".to_owned(), llm.base_url()),
                (
                    "CADENZA_DEFAULT_LLM_API_KEY".to_owned(),
                    "sk-fake".to_owned(),
                ),
                ("CADENZA_LLM_API_MODE".to_owned(), "chat".to_owned()),
            ]);
        }
        let stack = Stack::start_with(StackOptions {
            // Room for every run on any one worker: a worker left alone takes them all.
            worker_capacity: RUNS as u32 + 2,
            workers,
            database: Some((postgres.admin_url(), postgres.runtime_url())),
            nats_url: Some(nats_url),
            extra_env,
        })
        .await?;
        let api = Api::new(&stack.api_url, &stack.token);
        Ok(Self {
            stack,
            api,
            _llm: llm,
            bus,
            postgres,
        })
    }

    /// Submits the runs and starts a stream reader for each.
    async fn submit(&self) -> anyhow::Result<Vec<InFlight>> {
        self.submit_n(RUNS).await
    }

    async fn submit_n(&self, count: usize) -> anyhow::Result<Vec<InFlight>> {
        self.submit_to(&self.stack.project.id.to_string(), count)
            .await
    }

    async fn submit_to(&self, project: &str, count: usize) -> anyhow::Result<Vec<InFlight>> {
        let mut prompt: String = (1..=STEPS)
            .map(|step| format!("$ echo {step} >> steps.txt; sleep 1\n"))
            .collect();
        prompt.push_str("counted");
        let mut runs = Vec::with_capacity(count);
        for _ in 0..count {
            let (status, run) = self.api.submit_run(project, &prompt, None).await?;
            if status != reqwest::StatusCode::CREATED {
                bail!("submitting a run answered {status}: {run}");
            }
            let id = run["id"].as_str().context("run id")?.to_owned();
            let reader = tokio::spawn(follow(self.api.clone(), id.clone()));
            runs.push(InFlight { id, reader });
        }
        Ok(runs)
    }

    /// Waits until every run has its agent at work (a command's output journaled).
    async fn wait_all_working(&self, runs: &[InFlight]) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(180);
        for run in runs {
            loop {
                let events = self.api.all_events(&run.id, 500).await?;
                if events.iter().any(|event| event["kind"] == "observation") {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "run {} did not start working:\n{}",
                        run.id,
                        self.stack.logs()
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    /// Waits for every run to end and checks what the suite promises; prints the figures.
    async fn verify(
        &self,
        scenario: &str,
        runs: Vec<InFlight>,
        restored: Instant,
    ) -> anyhow::Result<()> {
        let mut ended = Vec::with_capacity(runs.len());
        for run in &runs {
            let end = self
                .api
                .wait_for_end(&run.id, END_BUDGET)
                .await
                .with_context(|| self.stack.logs())?;
            ended.push(end);
        }
        let recovery = restored.elapsed();
        let mut losses = Vec::new();
        let mut duplicates = Vec::new();
        let mut events_total = 0usize;
        let mut attempts: BTreeMap<i64, usize> = BTreeMap::new();
        for (run, end) in runs.into_iter().zip(&ended) {
            *attempts
                .entry(end["attempt"].as_i64().unwrap_or(0))
                .or_default() += 1;
            if end["state"] != "succeeded" {
                losses.push(format!(
                    "run {} ended {}: {}",
                    run.id, end["state"], end["terminal_reason"]
                ));
                continue;
            }
            // Each command ran exactly once, in order.
            let diff = self.api.diff(&run.id).await?;
            let added = added_lines(&diff, "steps.txt");
            let expected: Vec<String> = (1..=STEPS).map(|step| step.to_string()).collect();
            if added != expected {
                duplicates.push(format!("run {}: commands ran as {added:?}", run.id));
            }
            // The journal is dense.
            let events = self.api.all_events(&run.id, 500).await?;
            events_total += events.len();
            let seqs = cadenza_e2e::seqs(&events);
            if seqs != (1..=seqs.len() as i64).collect::<Vec<_>>() {
                losses.push(format!("run {}: journal not dense: {seqs:?}", run.id));
            }
            // The stream reader saw every entry exactly once.
            let streamed = run.reader.await.context("stream reader")??;
            if streamed != seqs {
                duplicates.push(format!(
                    "run {}: the stream delivered {} entries, the journal has {}",
                    run.id,
                    streamed.len(),
                    seqs.len()
                ));
            }
        }
        // No agent event was journaled twice.
        let twice: i64 = sqlx::query_scalar(
            "select count(*) from (select 1 from run_events where source_event_id is not null \
             group by run_id, source_event_id having count(*) > 1) twice",
        )
        .fetch_one(&self.stack.db.pool)
        .await?;
        if twice > 0 {
            duplicates.push(format!("{twice} agent events journaled twice"));
        }
        println!(
            "chaos {scenario}: runs {}, events {events_total}, duplicates {}, losses {}, \
             attempts {attempts:?}, all ended {:.1} s after recovery",
            ended.len(),
            duplicates.len(),
            losses.len(),
            recovery.as_secs_f64()
        );
        if !duplicates.is_empty() || !losses.is_empty() {
            bail!(
                "{scenario}: duplicates {duplicates:#?}\nlosses {losses:#?}\n{}",
                self.stack.logs()
            );
        }
        Ok(())
    }
}

/// The lines a patch adds to one file.
fn added_lines(patch: &str, file: &str) -> Vec<String> {
    let header = format!("diff --git a/{file} b/{file}");
    let mut in_file = false;
    let mut added = Vec::new();
    for line in patch.lines() {
        if line.starts_with("diff --git ") {
            in_file = line == header;
        } else if in_file && line.starts_with('+') && !line.starts_with("+++") {
            added.push(line[1..].to_owned());
        }
    }
    added
}

struct InFlight {
    id: String,
    /// The seqs a stream reader saw, reconnecting with `Last-Event-ID` whenever it was cut off.
    reader: JoinHandle<anyhow::Result<Vec<i64>>>,
}

/// Follows a run's stream to its terminal entry, reconnecting with `Last-Event-ID` after every
/// drop (the API restarting, Postgres away); returns the seqs delivered, in order.
async fn follow(api: Api, run_id: String) -> anyhow::Result<Vec<i64>> {
    let url = api.url(&format!("/runs/{run_id}/events/stream"));
    let deadline = Instant::now() + END_BUDGET + Duration::from_secs(300);
    let mut seen: Vec<i64> = Vec::new();
    while Instant::now() < deadline {
        let last = seen.last().copied();
        let mut reader = match SseReader::open(&api.http, &url, &api.token, last).await {
            Ok(reader) => reader,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        while let Ok(Some(event)) = reader.next(Duration::from_secs(60)).await {
            // The closing notice carries no id.
            let Some(id) = event.id.as_deref() else { break };
            let seq: i64 = id.parse().context("event id")?;
            seen.push(seq);
            let parsed: Value = serde_json::from_str(&event.data)?;
            if parsed["kind"] == "run_state" && parsed["payload"]["terminal"] == true {
                return Ok(seen);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("the stream of run {run_id} did not reach the end")
}

fn service<'a>(chaos: &'a mut Chaos, name: &str) -> &'a mut cadenza_testkit::stack::ServiceProcess {
    chaos
        .stack
        .service(name)
        .unwrap_or_else(|| panic!("no service {name}"))
}

#[tokio::test]
async fn a_worker_killed_and_restarted_re_attaches_to_every_run() {
    let mut chaos = Chaos::start_with(1, false, true)
        .await
        .expect("chaos starts");
    // One run of the real agent-server among the scripted ones.
    let real = chaos
        .stack
        .create_project("real", REAL_IMAGE)
        .await
        .expect("project");
    let patched = chaos
        .api
        .http
        .patch(chaos.api.url(&format!("/projects/{}", real.id)))
        .bearer_auth(&chaos.api.token)
        .json(&serde_json::json!({"agent": {"memory_mb": 2048, "cpus": 2.0}}))
        .send()
        .await
        .expect("patch");
    assert_eq!(patched.status(), 200);
    let mut runs = chaos
        .submit_to(&real.id.to_string(), 1)
        .await
        .expect("submit the real agent's run");
    runs.extend(chaos.submit_n(RUNS - 1).await.expect("submit"));
    chaos.wait_all_working(&runs).await.expect("working");
    let worker = service(&mut chaos, "worker");
    worker.kill();
    worker.restart().expect("restart");
    worker
        .wait_ready(Duration::from_secs(60))
        .await
        .expect("ready");
    let restored = Instant::now();
    chaos
        .verify("worker kill -9 and restart", runs, restored)
        .await
        .expect("every run survives");
}

#[tokio::test]
async fn a_second_worker_adopts_the_runs_of_a_worker_killed_for_good() {
    let mut chaos = Chaos::start(2, false).await.expect("chaos starts");
    let runs = chaos.submit().await.expect("submit");
    chaos.wait_all_working(&runs).await.expect("working");
    service(&mut chaos, "worker").kill();
    let restored = Instant::now();
    chaos
        .verify("worker kill -9, second worker adopts", runs, restored)
        .await
        .expect("every run survives");
}

#[tokio::test]
async fn a_rolling_restart_of_every_worker_loses_no_run() {
    let mut chaos = Chaos::start(2, false).await.expect("chaos starts");
    let runs = chaos.submit().await.expect("submit");
    chaos.wait_all_working(&runs).await.expect("working");
    for name in ["worker", "worker-2"] {
        let worker = service(&mut chaos, name);
        assert!(
            worker.stop(Duration::from_secs(40)),
            "{name} did not exit on SIGTERM"
        );
        worker.restart().expect("restart");
        worker
            .wait_ready(Duration::from_secs(60))
            .await
            .expect("ready");
    }
    let restored = Instant::now();
    chaos
        .verify("rolling SIGTERM of every worker", runs, restored)
        .await
        .expect("every run survives");
}

#[tokio::test]
async fn killing_the_scheduler_the_api_and_linear_sync_loses_no_run() {
    let mut chaos = Chaos::start(1, false).await.expect("chaos starts");
    let runs = chaos.submit().await.expect("submit");
    chaos.wait_all_working(&runs).await.expect("working");
    for name in ["scheduler", "api", "linear-sync"] {
        let process = service(&mut chaos, name);
        process.kill();
        process.restart().expect("restart");
        process
            .wait_ready(Duration::from_secs(60))
            .await
            .expect("ready");
    }
    let restored = Instant::now();
    chaos
        .verify("kill -9 of scheduler, api, linear-sync", runs, restored)
        .await
        .expect("every run survives");
}

#[tokio::test]
async fn a_nats_restart_loses_no_run() {
    nats_restart(false).await;
}

#[tokio::test]
async fn a_nats_restart_with_its_store_deleted_loses_no_run() {
    nats_restart(true).await;
}

async fn nats_restart(empty_store: bool) {
    let mut chaos = Chaos::start(1, false).await.expect("chaos starts");
    let runs = chaos.submit().await.expect("submit");
    chaos.wait_all_working(&runs).await.expect("working");
    let Bus::Single(nats) = &mut chaos.bus else {
        unreachable!("a single server")
    };
    nats.kill().await.expect("kill");
    if empty_store {
        nats.start_again_with_empty_store().await.expect("start");
    } else {
        nats.start_again().await.expect("start");
    }
    let restored = Instant::now();
    // New runs are scheduled after the restart too (the stream is created again if lost).
    let after = chaos.submit_n(5).await.expect("submit after the restart");
    let mut all = runs;
    all.extend(after);
    let name = if empty_store {
        "NATS restarted with its store deleted"
    } else {
        "NATS restarted"
    };
    chaos
        .verify(name, all, restored)
        .await
        .expect("every run survives");
}

#[tokio::test]
async fn postgres_away_for_5_seconds_loses_no_run() {
    postgres_outage(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn postgres_away_for_40_seconds_loses_no_run() {
    postgres_outage(Duration::from_secs(40)).await;
}

#[tokio::test]
async fn postgres_away_for_90_seconds_loses_no_run() {
    postgres_outage(Duration::from_secs(90)).await;
}

async fn postgres_outage(outage: Duration) {
    let chaos = Chaos::start(1, false).await.expect("chaos starts");
    let runs = chaos.submit().await.expect("submit");
    chaos.wait_all_working(&runs).await.expect("working");
    chaos.postgres.kill().await.expect("kill");
    let down = Instant::now();
    // The outage is the point: time passes with Postgres away.
    tokio::time::sleep_until((down + outage).into()).await;
    chaos.postgres.start_again().await.expect("start");
    let restored = Instant::now();
    chaos
        .verify(&format!("Postgres away for {outage:?}"), runs, restored)
        .await
        .expect("every run survives");
}

#[tokio::test]
async fn a_worker_killed_while_workspaces_are_prepared_starts_no_agent_twice() {
    let mut chaos = Chaos::start(1, false).await.expect("chaos starts");
    let runs = chaos.submit().await.expect("submit");
    // Killed while runs are still being provisioned (none of their agents has its task yet).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let provisioning =
            sqlx::query_scalar::<_, i64>("select count(*) from runs where state = 'provisioning'")
                .fetch_one(&chaos.stack.db.pool)
                .await
                .expect("count");
        if provisioning > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no run was ever provisioning");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let worker = service(&mut chaos, "worker");
    worker.kill();
    worker.restart().expect("restart");
    worker
        .wait_ready(Duration::from_secs(60))
        .await
        .expect("ready");
    let restored = Instant::now();
    chaos
        .verify("worker kill -9 during provisioning", runs, restored)
        .await
        .expect("every run survives, each command once");
}

#[tokio::test]
async fn a_nats_cluster_node_killed_and_restarted_loses_no_run() {
    let mut chaos = Chaos::start(1, true).await.expect("chaos starts");
    let runs = chaos.submit().await.expect("submit");
    chaos.wait_all_working(&runs).await.expect("working");
    let Bus::Cluster(cluster) = &mut chaos.bus else {
        unreachable!("a cluster")
    };
    cluster.kill(0).await.expect("kill a node");
    // New runs while a node is down.
    let during = chaos.submit_n(5).await.expect("submit with a node down");
    let Bus::Cluster(cluster) = &mut chaos.bus else {
        unreachable!("a cluster")
    };
    cluster.start_node(0).await.expect("restart the node");
    let restored = Instant::now();
    let mut all = runs;
    all.extend(during);
    chaos
        .verify("NATS cluster node killed and restarted", all, restored)
        .await
        .expect("every run survives");
}
