//! The driver in process: a scripted agent-server session and an in-memory container engine in
//! place of the two external systems, against the real Postgres and NATS. The fake agent-server
//! process and the real-Docker tests in `tests/` stay the contract checks; these pin down the
//! follower's reconnect, confirm, cancel and message logic and what a worker killed at each
//! step of the start leaves behind.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cadenza_agent_client::{
    AgentEvent, CLOSE_ABNORMAL, CLOSE_UNAUTHORIZED, ConversationInfo, CreateOutcome, DiffLimits,
    Error, ExecutionStatus, GitDelta, SessionFrame, StartConversationRequest,
};
use cadenza_bus::Bus;
use cadenza_crypto::Redactor;
use cadenza_domain::{
    AgentSettings, EventKind, JournalEvent, Run, RunEvent, RunState, Scope, TerminalCode, Worker,
};
use cadenza_storage::runs::{self, Actor, Lease, NewRun, Submitted};
use cadenza_storage::{PgPool, journal as journal_rows, orgs, projects, run_messages, workers};
use cadenza_testkit::infra::{TestDatabase, nats_url, unique_name};
use futures::stream::BoxStream;
use secrecy::SecretString;
use serde_json::json;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::control::{self, Progress, RunCommand, RunControl, RunHandle};
use super::follow::{Cursor, FollowContext, FollowLimits, Follower};
use super::journal::RunJournal;
use super::phase::Phase;
use super::{Attempt, Entry, container_name};
use crate::Core;
use crate::agent::{AgentConnector, AgentSession, EventSocket};
use crate::docker::{ContainerError, ManagedContainer, Workspace, WorkspaceSpec};
use crate::runtime::ContainerRuntime;

const IMAGE: &str = "registry.example/agent:1";
/// Long enough for anything these tests wait on; a test that hangs fails instead.
const PATIENCE: Duration = Duration::from_secs(20);

/// What one socket connection does after its replay.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Stays open, delivering events as they are logged.
    Live,
    /// Drops (abnormal close) after yielding this many frames.
    DropAfter(usize),
    /// Closes at once with this code.
    Close(u16),
}

/// An agent-server conversation as the worker sees it: a durable event log replayed after a
/// seq, live events, REST status, and a scripted agent that answers a task.
struct ScriptedAgent {
    state: Mutex<AgentState>,
    /// Woken whenever the log, a socket or the messages change.
    changed: Notify,
    /// Where the run's state is read when a message arrives (to see what was committed).
    observer: Mutex<Option<(PgPool, cadenza_domain::RunId)>>,
}

#[derive(Default)]
struct AgentState {
    log: Vec<AgentEvent>,
    status: Option<ExecutionStatus>,
    faults: VecDeque<Fault>,
    /// The `after_seq` of each socket opened.
    opens: Vec<Option<i64>>,
    /// Messages received, in order.
    sent: Vec<String>,
    /// The run's state when each message arrived.
    seen_at_send: Vec<RunState>,
    /// Conversations created, by their initial message.
    created: Vec<Option<String>>,
    interrupts: usize,
    /// Whether a message starts the agent, which answers and finishes.
    answers: bool,
}

fn event(kind: &str, source: &str, fields: serde_json::Value) -> AgentEvent {
    let mut raw = json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "kind": kind,
        "source": source,
        "timestamp": "2026-12-04T10:00:00",
    });
    if let (Some(raw), Some(fields)) = (raw.as_object_mut(), fields.as_object()) {
        raw.extend(fields.clone());
    }
    AgentEvent::from_value(raw)
}

fn message(role: &str, text: &str) -> AgentEvent {
    event(
        "MessageEvent",
        role,
        json!({"llm_message": {"role": role, "content": [{"type": "text", "text": text}]}}),
    )
}

fn status_update(status: &str) -> AgentEvent {
    event(
        "ConversationStateUpdateEvent",
        "environment",
        json!({"key": "execution_status", "value": status}),
    )
}

impl ScriptedAgent {
    fn new(answers: bool) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(AgentState {
                answers,
                status: Some(ExecutionStatus::Idle),
                ..AgentState::default()
            }),
            changed: Notify::new(),
            observer: Mutex::new(None),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut AgentState) -> T) -> T {
        let value = f(&mut self.state.lock().expect("agent state"));
        self.changed.notify_waiters();
        value
    }

    fn push(&self, events: impl IntoIterator<Item = AgentEvent>) {
        self.with(|state| state.log.extend(events));
    }

    /// Waits (bounded) until `ready` holds of the agent's state.
    async fn until(&self, what: &str, ready: impl Fn(&AgentState) -> bool) {
        let wait = async {
            loop {
                let changed = self.changed.notified();
                if ready(&self.state.lock().expect("agent state")) {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(PATIENCE, wait)
            .await
            .unwrap_or_else(|_| panic!("the agent never saw {what}"));
    }

    fn info(&self, id: uuid::Uuid) -> ConversationInfo {
        let status = self.with(|state| state.status.clone());
        let status = status.map_or("idle".to_owned(), |status| status.as_str().to_owned());
        ConversationInfo::from_value(json!({"id": id.to_string(), "execution_status": status}))
            .expect("conversation info")
    }
}

#[async_trait]
impl AgentSession for Arc<ScriptedAgent> {
    async fn health(&self) -> Result<(), Error> {
        Ok(())
    }

    async fn create_conversation(
        &self,
        request: &StartConversationRequest,
    ) -> Result<(ConversationInfo, CreateOutcome), Error> {
        self.with(|state| state.created.push(request.initial_message.clone()));
        let id = request.conversation_id.unwrap_or_else(uuid::Uuid::new_v4);
        Ok((self.info(id), CreateOutcome::Created))
    }

    async fn get_conversation(&self, id: uuid::Uuid) -> Result<ConversationInfo, Error> {
        Ok(self.info(id))
    }

    async fn send_message(&self, _id: uuid::Uuid, text: &str, _run: bool) -> Result<(), Error> {
        let observer = self.observer.lock().expect("observer").clone();
        if let Some((pool, run_id)) = observer {
            let mut conn = pool.acquire().await.expect("conn");
            let run = runs::get(&mut conn, &Scope::Instance, run_id)
                .await
                .expect("run");
            self.with(|state| state.seen_at_send.push(run.state));
        }
        self.with(|state| {
            state.sent.push(text.to_owned());
            state.log.push(message("user", text));
            if state.answers {
                state.log.push(message("agent", &format!("done: {text}")));
                state.log.push(status_update("finished"));
                state.status = Some(ExecutionStatus::Finished);
            }
        });
        Ok(())
    }

    async fn interrupt(&self, _id: uuid::Uuid) -> Result<(), Error> {
        self.with(|state| state.interrupts += 1);
        Ok(())
    }

    async fn events_after(
        &self,
        _id: uuid::Uuid,
        after: Option<&str>,
    ) -> Result<Vec<AgentEvent>, Error> {
        Ok(self.with(|state| {
            let start = after
                .and_then(|after| state.log.iter().position(|event| event.id == after))
                .map_or(0, |index| index + 1);
            state.log[start..].to_vec()
        }))
    }

    async fn agent_final_response(&self, _id: uuid::Uuid) -> Result<String, Error> {
        Ok("all done".to_owned())
    }

    async fn archive_git_delta(
        &self,
        _path: &str,
        base: Option<&str>,
        _limits: DiffLimits,
    ) -> Result<GitDelta, Error> {
        Ok(GitDelta {
            patch: "diff --git a/README b/README\n".into(),
            base_commit: base.map(str::to_owned),
            base_ref: None,
            head_commit: None,
            branch: None,
            repo_remote: None,
            repo_root: None,
            omitted: Vec::new(),
            unread_after: None,
        })
    }

    async fn open_session(
        &self,
        _id: uuid::Uuid,
        after_seq: Option<i64>,
    ) -> Result<Box<dyn EventSocket>, Error> {
        let fault = self.with(|state| {
            state.opens.push(after_seq);
            state.faults.pop_front().unwrap_or(Fault::Live)
        });
        Ok(Box::new(ScriptedSocket {
            agent: self.clone(),
            next_seq: after_seq.map_or(0, |seq| seq + 1),
            fault,
            yielded: 0,
        }))
    }
}

struct ScriptedSocket {
    agent: Arc<ScriptedAgent>,
    next_seq: i64,
    fault: Fault,
    yielded: usize,
}

#[async_trait]
impl EventSocket for ScriptedSocket {
    async fn next_frame(&mut self) -> Result<SessionFrame, Error> {
        let closed = |code: u16| Error::SocketClosed {
            endpoint: "scripted".into(),
            code,
            reason: "scripted".into(),
        };
        loop {
            match self.fault {
                Fault::Close(code) => return Err(closed(code)),
                Fault::DropAfter(frames) if self.yielded >= frames => {
                    return Err(closed(CLOSE_ABNORMAL));
                }
                _ => {}
            }
            let changed = self.agent.changed.notified();
            let next = {
                let state = self.agent.state.lock().expect("agent state");
                usize::try_from(self.next_seq)
                    .ok()
                    .and_then(|index| state.log.get(index).cloned())
            };
            if let Some(event) = next {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.yielded += 1;
                return Ok(SessionFrame::Durable { seq, event });
            }
            changed.await;
        }
    }
}

/// Connects every container to the same scripted agent.
struct Connector(Arc<ScriptedAgent>);

impl AgentConnector for Connector {
    fn connect(&self, _host_port: u16, _session_key: SecretString) -> Arc<dyn AgentSession> {
        Arc::new(self.0.clone())
    }
}

/// A container engine in memory: containers start at once and run until told otherwise.
#[derive(Default)]
struct MemoryEngine {
    state: Mutex<EngineState>,
}

#[derive(Default)]
struct EngineState {
    /// Running containers, with their session keys.
    running: Vec<(String, SecretString)>,
    removed: Vec<String>,
    exited: Option<String>,
}

impl MemoryEngine {
    fn with<T>(&self, f: impl FnOnce(&mut EngineState) -> T) -> T {
        f(&mut self.state.lock().expect("engine state"))
    }
}

#[async_trait]
impl ContainerRuntime for MemoryEngine {
    async fn ping(&self) -> Result<(), ContainerError> {
        Ok(())
    }

    async fn ensure_image(
        &self,
        _image: &str,
        _pull_timeout: Duration,
    ) -> Result<String, ContainerError> {
        Ok(String::new())
    }

    async fn start_workspace(
        &self,
        spec: &WorkspaceSpec,
        _image_user: &str,
    ) -> Result<Workspace, ContainerError> {
        let key = spec
            .env
            .iter()
            .find(|(name, _)| name == "OH_SESSION_API_KEYS_0")
            .map(|(_, value)| SecretString::from(value.clone()))
            .ok_or(ContainerError::NoPort)?;
        self.with(|state| state.running.push((spec.name.clone(), key)));
        Ok(Workspace {
            container_id: spec.name.clone(),
            network: spec.name.clone(),
            host_port: 1,
            base_commit: None,
        })
    }

    async fn exit_status(&self, _container: &str) -> Option<String> {
        self.with(|state| state.exited.clone())
    }

    async fn running_host_port(&self, container: &str) -> Option<u16> {
        self.with(|state| state.running.iter().any(|(name, _)| name == container))
            .then_some(1)
    }

    async fn session_key(&self, container: &str) -> Option<SecretString> {
        self.with(|state| {
            state
                .running
                .iter()
                .find(|(name, _)| name == container)
                .map(|(_, key)| key.clone())
        })
    }

    async fn is_scripted_agent(&self, _image: &str) -> bool {
        true
    }

    fn follow_logs(&self, _container: &str) -> BoxStream<'static, bytes::Bytes> {
        Box::pin(futures::stream::empty())
    }

    async fn remove_workspace(&self, container: &str, _network: &str) {
        self.with(|state| {
            state.running.retain(|(name, _)| name != container);
            state.removed.push(container.to_owned());
        });
    }

    async fn networks_of(&self, _worker: &str) -> Result<usize, ContainerError> {
        Ok(0)
    }

    async fn managed_containers(
        &self,
        _deployment: &str,
    ) -> Result<Vec<ManagedContainer>, ContainerError> {
        Ok(Vec::new())
    }
}

/// A database with one org, project and run, a bus, and the two stand-ins.
struct World {
    db: TestDatabase,
    bus: Bus,
    prefix: String,
    agent: Arc<ScriptedAgent>,
    engine: Arc<MemoryEngine>,
}

impl World {
    async fn new(answers: bool) -> (World, Run) {
        let db = TestDatabase::create().await.expect("database");
        let prefix = unique_name("driver");
        let bus = Bus::connect(&nats_url(), &prefix).await.expect("bus");
        bus.ensure_streams().await.expect("streams");
        let mut conn = db.pool.acquire().await.expect("conn");
        let org = orgs::create(&mut conn, &unique_name("org"), "org")
            .await
            .expect("org");
        let project = projects::create(
            &mut conn,
            org.id,
            "p",
            "p",
            &AgentSettings::with_image(IMAGE),
            &cadenza_domain::Repository::default(),
        )
        .await
        .expect("project");
        let Submitted::Created(run) = runs::submit(
            &mut conn,
            NewRun {
                org_id: org.id,
                project_id: project.id,
                prompt: "add a README",
                idempotency_key: None,
            },
        )
        .await
        .expect("submit") else {
            panic!("a new run");
        };
        let agent = ScriptedAgent::new(answers);
        let world = World {
            db,
            bus,
            prefix,
            agent,
            engine: Arc::new(MemoryEngine::default()),
        };
        (world, run)
    }

    /// A worker of this world (registered in Postgres), with its core.
    async fn worker(&self, name: &str) -> Arc<Core> {
        let mut conn = self.db.pool.acquire().await.expect("conn");
        let worker = workers::register(&mut conn, &unique_name(name), 4)
            .await
            .expect("worker");
        let mut config = crate::WorkerConfig::new(
            SecretString::from(self.db.url.clone()),
            nats_url(),
            self.prefix.clone(),
            worker.name.clone(),
        );
        config.workspace_idle_ttl = Duration::ZERO;
        Arc::new(Core {
            pool: self.db.pool.clone(),
            heartbeat_pool: self.db.pool.clone(),
            bus: self.bus.clone(),
            runtime: self.engine.clone(),
            agents: Arc::new(Connector(self.agent.clone())),
            config,
            worker,
            keyring: cadenza_crypto::KeyRing::generate_ephemeral("test").expect("keyring"),
            images: cadenza_domain::ImagePolicy::parse("registry.example/agent").expect("images"),
            fallback_user: (10001, 10001),
            network_room: tokio::sync::Mutex::new(()),
            active: Default::default(),
            slots: Arc::new(tokio::sync::Semaphore::new(4)),
            tasks: Default::default(),
            detach: CancellationToken::new(),
            draining: CancellationToken::new(),
        })
    }

    /// Leases the run to `worker` and moves it to `provisioning`, as accepting it does.
    async fn accept(&self, run: &Run, worker: &Worker) -> Run {
        let mut conn = self.db.pool.acquire().await.expect("conn");
        let scheduled = runs::transition(
            &mut conn,
            run.id,
            RunState::Queued,
            &RunEvent::Leased,
            Actor::Any,
            Some(Lease {
                worker: worker.id,
                ttl: Duration::from_secs(60),
            }),
        )
        .await
        .expect("lease")
        .run;
        runs::transition(
            &mut conn,
            run.id,
            RunState::Scheduled,
            &RunEvent::ProvisioningStarted,
            Actor::LeaseHolder(cadenza_domain::Fence {
                worker: worker.id,
                epoch: scheduled.lease_epoch,
            }),
            None,
        )
        .await
        .expect("provisioning")
        .run
    }

    fn push(&self, events: impl IntoIterator<Item = AgentEvent>) {
        self.agent.push(events);
    }

    async fn current(&self, run: &Run) -> Run {
        let mut conn = self.db.pool.acquire().await.expect("conn");
        runs::get(&mut conn, &Scope::Instance, run.id)
            .await
            .expect("run")
    }

    async fn entries(&self, run: &Run) -> Vec<JournalEvent> {
        let mut conn = self.db.pool.acquire().await.expect("conn");
        journal_rows::list_after(&mut conn, &Scope::Instance, run.id, 0, 1000)
            .await
            .expect("journal")
    }

    /// The agent-server seqs journaled for the run, in journal order.
    async fn journaled_seqs(&self, run: &Run) -> Vec<i64> {
        self.entries(run)
            .await
            .iter()
            .filter_map(|entry| entry.payload["agent_seq"].as_i64())
            .collect()
    }

    fn journal(&self, core: &Core, run: &Run) -> RunJournal {
        RunJournal::new(
            self.db.pool.clone(),
            self.bus.clone(),
            run,
            core.worker.id,
            Duration::from_secs(5),
        )
    }

    /// Waits (bounded) until the run reaches a terminal state.
    async fn ended(&self, run: &Run) -> Run {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let current = self.current(run).await;
            if current.state.is_terminal() {
                return current;
            }
            assert!(
                Instant::now() < deadline,
                "the run did not end: {:?}",
                current.state
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn limits() -> FollowLimits {
    FollowLimits {
        max_event_bytes: 64 * 1024,
        max_events_per_run: 1000,
        confirm_budget: Duration::from_millis(300),
    }
}

fn mailbox(run: &Run) -> (RunHandle, RunControl) {
    control::channel(run.lease_epoch, CancellationToken::new(), Progress::Running)
}

/// Follows the world's conversation for `run` as `core`'s worker.
async fn follow(
    world: &World,
    core: &Core,
    run: &Run,
    control: &mut RunControl,
) -> Result<ExecutionStatus, cadenza_domain::TerminalReason> {
    let journal = world.journal(core, run);
    let redactor = Redactor::empty();
    let mut follower = Follower::new(
        FollowContext {
            agent: &world.agent,
            runtime: world.engine.as_ref(),
            journal: &journal,
            redactor: &redactor,
            limits: limits(),
            conversation_id: run.id.as_uuid(),
            container: "c",
        },
        Cursor::default(),
    );
    follower
        .follow(control, Instant::now() + PATIENCE, PATIENCE)
        .await
}

#[tokio::test]
async fn a_dropped_socket_is_resumed_after_the_last_journaled_event_and_nothing_is_journaled_twice()
{
    let (world, run) = World::new(false).await;
    let core = world.worker("a").await;
    let run = world.accept(&run, &core.worker).await;
    world.push([
        message("agent", "one"),
        message("agent", "two"),
        status_update("finished"),
    ]);
    world.agent.with(|state| {
        state.status = Some(ExecutionStatus::Finished);
        state
            .faults
            .extend([Fault::DropAfter(1), Fault::DropAfter(1)]);
    });
    let (_handle, mut control) = mailbox(&run);
    let status = follow(&world, &core, &run, &mut control)
        .await
        .expect("ends");
    assert_eq!(status, ExecutionStatus::Finished);
    assert_eq!(
        world.agent.with(|state| state.opens.clone()),
        [Some(-1), Some(0), Some(1)],
        "each reconnect resumes after the last event journaled"
    );
    assert_eq!(world.journaled_seqs(&run).await, [0, 1, 2]);
}

#[tokio::test]
async fn a_terminal_status_that_rest_does_not_confirm_is_followed_past_to_the_real_end() {
    let (world, run) = World::new(false).await;
    let core = world.worker("a").await;
    let run = world.accept(&run, &core.worker).await;
    // The socket says finished, REST still says running (a stop hook vetoed the end).
    world.push([status_update("finished")]);
    world
        .agent
        .with(|state| state.status = Some(ExecutionStatus::Running));
    let (_handle, mut control) = mailbox(&run);
    let agent = world.agent.clone();
    let (status, ()) = tokio::join!(follow(&world, &core, &run, &mut control), async {
        // The follower gave up confirming and reconnected: now the agent really ends.
        agent
            .until("a second connection", |state| state.opens.len() == 2)
            .await;
        agent.with(|state| {
            state.log.push(message("agent", "after the veto"));
            state.log.push(status_update("finished"));
            state.status = Some(ExecutionStatus::Finished);
        });
    });
    assert_eq!(status.expect("ends"), ExecutionStatus::Finished);
    assert_eq!(world.journaled_seqs(&run).await, [0, 1, 2]);
}

#[tokio::test]
async fn an_unauthorized_close_fails_the_run_at_once_and_an_exited_container_names_its_exit() {
    let (world, run) = World::new(false).await;
    let core = world.worker("a").await;
    let run = world.accept(&run, &core.worker).await;
    world
        .agent
        .with(|state| state.faults.push_back(Fault::Close(CLOSE_UNAUTHORIZED)));
    let (_handle, mut control) = mailbox(&run);
    let refused = follow(&world, &core, &run, &mut control)
        .await
        .expect_err("unauthorized");
    assert_eq!(refused.code, TerminalCode::AgentUnreachable);
    assert_eq!(world.agent.with(|state| state.opens.len()), 1, "no retry");

    world.agent.with(|state| {
        state.faults.push_back(Fault::DropAfter(0));
    });
    world
        .engine
        .with(|state| state.exited = Some("the agent container exited with code 137".into()));
    let exited = follow(&world, &core, &run, &mut control)
        .await
        .expect_err("exited");
    assert_eq!(exited.code, TerminalCode::ContainerFailed);
    assert!(exited.message.contains("code 137"), "{}", exited.message);
}

#[tokio::test]
async fn a_cancel_interrupts_the_agent_and_a_lost_lease_leaves_it_working() {
    let (world, run) = World::new(false).await;
    let core = world.worker("a").await;
    let run = world.accept(&run, &core.worker).await;
    let (handle, mut control) = mailbox(&run);
    let correlation = uuid::Uuid::new_v4();
    let agent = world.agent.clone();
    let (cancelled, ()) = tokio::join!(follow(&world, &core, &run, &mut control), async {
        agent
            .until("a connection", |state| state.opens.len() == 1)
            .await;
        handle.send(RunCommand::Cancel {
            correlation: Some(correlation),
        });
    });
    let cancelled = cancelled.expect_err("cancelled");
    assert_eq!(cancelled.code, TerminalCode::Cancelled);
    assert!(cancelled.message.contains(&correlation.to_string()));
    assert_eq!(world.agent.with(|state| state.interrupts), 1);

    let (handle, mut control) = mailbox(&run);
    let (lost, ()) = tokio::join!(follow(&world, &core, &run, &mut control), async {
        agent
            .until("a connection", |state| state.opens.len() == 2)
            .await;
        handle.send(RunCommand::Lost);
    });
    lost.expect_err("let go");
    assert!(control.detached());
    assert_eq!(
        world.agent.with(|state| state.interrupts),
        1,
        "the next holder finds the agent still working"
    );
}

#[tokio::test]
async fn a_message_reaches_the_conversation_once_and_its_effects_carry_its_correlation_id() {
    let (world, run) = World::new(true).await;
    let core = world.worker("a").await;
    let run = world.accept(&run, &core.worker).await;
    let stored = {
        let mut conn = world.db.pool.acquire().await.expect("conn");
        run_messages::create(
            &mut conn,
            run.id,
            run.org_id,
            "also add a licence",
            None,
            "user",
        )
        .await
        .expect("message")
        .0
    };
    let (handle, mut control) = mailbox(&run);
    let agent = world.agent.clone();
    let (status, ()) = tokio::join!(follow(&world, &core, &run, &mut control), async {
        agent
            .until("a connection", |state| state.opens.len() == 1)
            .await;
        // Offered at two heartbeats before the first is sent: sent once.
        handle.send(RunCommand::Deliver(stored.clone()));
        handle.send(RunCommand::Deliver(stored.clone()));
    });
    assert_eq!(status.expect("ends"), ExecutionStatus::Finished);
    assert_eq!(
        world.agent.with(|state| state.sent.clone()),
        ["also add a licence"]
    );
    let correlated: Vec<String> = world
        .entries(&run)
        .await
        .iter()
        .filter(|entry| entry.kind == EventKind::Message.as_str())
        .map(|entry| {
            entry.payload["correlation_id"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert_eq!(
        correlated,
        [
            stored.correlation_id.to_string(),
            stored.correlation_id.to_string()
        ],
        "the user message and the agent's answer"
    );
    let mut conn = world.db.pool.acquire().await.expect("conn");
    assert!(
        run_messages::pending_for(&mut conn, core.worker.id)
            .await
            .expect("pending")
            .is_empty(),
        "recorded as delivered"
    );
}

/// Drives `run` (accepted by `core`'s worker) through its phases until `stop_before` would be
/// entered, then drops everything, as a `kill -9` would.
async fn kill_before(world: &World, core: &Arc<Core>, run: &Run, stop_before: fn(&Phase) -> bool) {
    let journal = world.journal(core, run);
    let (_handle, mut control) = control::channel(
        run.lease_epoch,
        CancellationToken::new(),
        Progress::Preparing,
    );
    let (attempt, mut phase) =
        Attempt::prepare(core, run, journal, container_name(run), Entry::Fresh, None)
            .await
            .expect("prepared");
    while !stop_before(&phase) {
        phase = phase
            .next(&attempt, &mut control)
            .await
            .expect("next phase");
    }
}

/// The container of `run`'s first attempt, as the adopter's engine sweep lists it.
fn listed(run: &Run) -> ManagedContainer {
    ManagedContainer {
        name: container_name(run),
        run: Some(run.id),
        attempt: Some(run.attempt),
        clone_helper: false,
        running: true,
    }
}

/// Marks `core`'s worker dead and lets `adopter` take the run over.
async fn adopt_after_kill(world: &World, dead: &Core, adopter: &Arc<Core>, run: &Run) {
    let mut conn = world.db.pool.acquire().await.expect("conn");
    workers::mark_stopped(&mut conn, dead.worker.id)
        .await
        .expect("stopped");
    let current = world.current(run).await;
    crate::adopt(adopter, &current, &listed(&current)).await;
}

/// A second worker adopts the run of the killed one and drives it to success: the task sent
/// once in all, every agent event journaled once.
async fn the_adopter_finishes_the_run(world: &World, dead: &Core, run: &Run) {
    let adopter = world.worker("b").await;
    adopt_after_kill(world, dead, &adopter, run).await;
    let ended = world.ended(run).await;
    assert_eq!(
        ended.state,
        RunState::Succeeded,
        "{:?}",
        ended.terminal_reason
    );
    assert_eq!(
        world.agent.with(|state| state.sent.clone()),
        ["add a README"],
        "the task is sent once in all"
    );
    assert_eq!(world.journaled_seqs(run).await, [0, 1, 2]);
}

#[tokio::test]
async fn a_fresh_run_gives_its_agent_the_task_once_and_only_after_running_is_committed() {
    let (world, run) = World::new(true).await;
    let core = world.worker("a").await;
    let run = world.accept(&run, &core.worker).await;
    *world.agent.observer.lock().expect("observer") = Some((world.db.pool.clone(), run.id));
    let (_handle, control) = control::channel(
        run.lease_epoch,
        CancellationToken::new(),
        Progress::Preparing,
    );
    super::supervise(core.clone(), run.clone(), control, Entry::Fresh).await;
    let ended = world.current(&run).await;
    assert_eq!(
        ended.state,
        RunState::Succeeded,
        "{:?}",
        ended.terminal_reason
    );
    assert_eq!(ended.final_message.as_deref(), Some("all done"));
    world.agent.with(|state| {
        assert_eq!(state.created, [None], "created without the task");
        assert_eq!(state.sent, ["add a README"]);
        assert_eq!(state.seen_at_send, [RunState::Running]);
    });
    assert_eq!(world.journaled_seqs(&run).await, [0, 1, 2]);
    assert_eq!(
        world.engine.with(|state| state.removed.clone()),
        [container_name(&run)]
    );
}

#[tokio::test]
async fn a_worker_killed_between_creating_the_conversation_and_committing_running_leaves_an_agent_without_its_task()
 {
    let (world, run) = World::new(true).await;
    let first = world.worker("a").await;
    let run = world.accept(&run, &first.worker).await;
    // Killed with the conversation made, before `running` is committed.
    kill_before(&world, &first, &run, |phase| {
        matches!(phase, Phase::Start(_))
    })
    .await;
    let after_kill = world.current(&run).await;
    assert_eq!(after_kill.state, RunState::Provisioning);
    world.agent.with(|state| {
        assert_eq!(state.created.len(), 1, "the conversation was made");
        assert!(state.sent.is_empty(), "but the agent never got its task");
    });

    // The adopter sees a run that never started its agent: it is retried from scratch, safely.
    let adopter = world.worker("b").await;
    adopt_after_kill(&world, &first, &adopter, &run).await;
    let retried = world.current(&run).await;
    assert_eq!(retried.state, RunState::Retrying);
    let entries = world.entries(&run).await;
    let last = entries.last().expect("the retry is journaled");
    assert_eq!(last.payload["to"], "retrying");
    let reason = last.payload["reason"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("the agent had not started"), "{reason}");
    assert!(world.agent.with(|state| state.sent.is_empty()));
    assert!(
        world
            .engine
            .with(|state| state.removed.contains(&container_name(&run))),
        "the half-made workspace goes"
    );
}

#[tokio::test]
async fn a_worker_killed_after_committing_running_is_re_attached_and_the_task_is_sent_exactly_once()
{
    let (world, run) = World::new(true).await;
    let first = world.worker("a").await;
    let run = world.accept(&run, &first.worker).await;
    // Killed after `running` is committed, before the task is sent.
    kill_before(&world, &first, &run, |phase| {
        matches!(phase, Phase::Follow(_))
    })
    .await;
    assert_eq!(world.current(&run).await.state, RunState::Running);
    assert!(world.agent.with(|state| state.sent.is_empty()));

    the_adopter_finishes_the_run(&world, &first, &run).await;
}

#[tokio::test]
async fn a_worker_killed_just_after_sending_the_task_is_re_attached_without_sending_it_again() {
    let (world, run) = World::new(true).await;
    let first = world.worker("a").await;
    let run = world.accept(&run, &first.worker).await;
    let agent = world.agent.clone();
    tokio::select! {
        () = kill_before(&world, &first, &run, |phase| matches!(phase, Phase::Ended(_))) => {
            panic!("the run was to be killed before it ended");
        }
        () = agent.until("the task", |state| !state.sent.is_empty()) => {}
    }
    assert_eq!(world.current(&run).await.state, RunState::Running);

    the_adopter_finishes_the_run(&world, &first, &run).await;
}
