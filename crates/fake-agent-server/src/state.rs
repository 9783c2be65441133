//! In-memory state: conversations, their append-only event logs and their run bookkeeping.
//!
//! Each conversation's mutable state sits behind one `std::sync::Mutex` that is never held across
//! an `.await`. Appending an event and bumping the log-length watch happen under that lock, so
//! a reader that takes the lock, notes the length and subscribes sees every later event exactly
//! once: that is what makes socket replay-then-live free of gaps and duplicates.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::FakeAgentServerConfig;
use super::events;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExecutionStatus {
    Idle,
    Running,
    Paused,
    Finished,
    Error,
}

impl ExecutionStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Finished => "finished",
            Self::Error => "error",
        }
    }
}

/// One step of the scripted agent's plan, derived from user messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PlannedStep {
    Command(String),
    Finish(String),
}

/// Bookkeeping for the run task that is alive, if any.
pub(crate) struct ActiveRun {
    /// Set by `/interrupt` and by deletion: the run stops at once and kills its command.
    pub(crate) cancel: CancellationToken,
    /// Set by `/pause`: the run stops after the step in flight.
    pub(crate) pause_requested: bool,
    /// A start was asked for while this run was alive; after finishing, it carries on with
    /// whatever the plan holds instead of stranding a message sent during its last step.
    pub(crate) rerun_requested: bool,
    /// Cancelled when the run task has exited and published its final state.
    pub(crate) done: CancellationToken,
}

pub(crate) struct FakeServer {
    pub(crate) config: FakeAgentServerConfig,
    pub(crate) shutdown: CancellationToken,
    started_at: Instant,
    last_activity: Mutex<Instant>,
    conversations: Mutex<HashMap<Uuid, Arc<Conversation>>>,
}

impl FakeServer {
    pub(crate) fn new(config: FakeAgentServerConfig, shutdown: CancellationToken) -> Self {
        let now = Instant::now();
        Self {
            config,
            shutdown,
            started_at: now,
            last_activity: Mutex::new(now),
            conversations: Mutex::default(),
        }
    }

    pub(crate) fn uptime_seconds(&self) -> f64 {
        self.started_at.elapsed().as_secs_f64()
    }

    pub(crate) fn idle_seconds(&self) -> f64 {
        lock(&self.last_activity).elapsed().as_secs_f64()
    }

    /// Resets `idle_time`, as bash, file and git calls and agent activity do on the real server.
    pub(crate) fn touch(&self) {
        *lock(&self.last_activity) = Instant::now();
    }

    pub(crate) fn auth_enabled(&self) -> bool {
        !self.config.session_api_keys.is_empty()
    }

    pub(crate) fn accepts_key(&self, key: &str) -> bool {
        self.config
            .session_api_keys
            .iter()
            .any(|known| known.as_bytes() == key.as_bytes())
    }

    pub(crate) fn conversation(&self, id: Uuid) -> Option<Arc<Conversation>> {
        lock(&self.conversations).get(&id).cloned()
    }

    pub(crate) fn all_conversations(&self) -> Vec<Arc<Conversation>> {
        lock(&self.conversations).values().cloned().collect()
    }

    /// Inserts `candidate` unless a conversation with its id exists; returns the stored one and
    /// whether it is new. The check and the insert are one critical section, so two concurrent
    /// creates with the same id produce one conversation.
    pub(crate) fn insert_if_absent(&self, candidate: Conversation) -> (Arc<Conversation>, bool) {
        let mut conversations = lock(&self.conversations);
        if let Some(existing) = conversations.get(&candidate.id) {
            return (Arc::clone(existing), false);
        }
        let created = Arc::new(candidate);
        conversations.insert(created.id, Arc::clone(&created));
        (created, true)
    }

    pub(crate) fn remove(&self, id: Uuid) -> Option<Arc<Conversation>> {
        lock(&self.conversations).remove(&id)
    }
}

pub(crate) struct NewConversation {
    pub(crate) id: Uuid,
    pub(crate) working_dir: PathBuf,
    pub(crate) agent: Value,
    pub(crate) max_iterations: u32,
    pub(crate) stuck_detection: bool,
    pub(crate) secrets: BTreeMap<String, String>,
    pub(crate) tags: Value,
}

pub(crate) struct Conversation {
    pub(crate) id: Uuid,
    pub(crate) created_at: String,
    /// Cancelled when the conversation is deleted or the server shuts down; sockets and the run
    /// task listen to it.
    pub(crate) closed: CancellationToken,
    state: Mutex<ConversationState>,
}

impl Conversation {
    pub(crate) fn new(spec: NewConversation, server_shutdown: &CancellationToken) -> Self {
        let (log_len, _) = watch::channel(0);
        let now = events::utc_timestamp_now();
        Self {
            id: spec.id,
            created_at: now.clone(),
            closed: server_shutdown.child_token(),
            state: Mutex::new(ConversationState {
                events: Vec::new(),
                index_by_id: HashMap::new(),
                log_len,
                execution_status: ExecutionStatus::Idle,
                working_dir: spec.working_dir,
                agent: spec.agent,
                max_iterations: spec.max_iterations,
                stuck_detection: spec.stuck_detection,
                secrets: spec.secrets,
                tags: spec.tags,
                title: None,
                updated_at: now,
                system_prompt_sent: false,
                last_user_message_id: None,
                plan: VecDeque::new(),
                run: None,
            }),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, ConversationState> {
        lock(&self.state)
    }

    pub(crate) fn persistence_dir(&self) -> String {
        format!("workspace/conversations/{}", self.id.simple())
    }

    /// `ConversationInfo`, the body of create, get and search responses.
    pub(crate) fn info(&self) -> Value {
        let state = self.lock();
        json!({
            "id": self.id,
            "workspace": { "kind": "LocalWorkspace", "working_dir": state.working_dir },
            "persistence_dir": self.persistence_dir(),
            "max_iterations": state.max_iterations,
            "stuck_detection": state.stuck_detection,
            "execution_status": state.execution_status.as_str(),
            "confirmation_policy": { "kind": "NeverConfirm" },
            "security_analyzer": null,
            "agent": state.agent,
            "stats": { "usage_to_metrics": {} },
            "title": state.title,
            "metrics": null,
            "created_at": self.created_at,
            "updated_at": state.updated_at,
            "tags": state.tags,
            "parent_conversation_id": null,
            "sub_conversation_ids": [],
            "leaf_event_id": state.events.last().map(|event| events::id(event)),
            "activated_knowledge_skills": [],
            "invoked_skills": [],
            "blocked_actions": {},
            "blocked_messages": {},
            "agent_state": {},
            "hook_config": null,
            "runtime_info": { "runtime_status": "available", "can_resume": true },
            "client_tools": [],
            "tool_module_qualnames": {},
        })
    }

    /// The `value` of a `full_state` update: a dump of the conversation state.
    pub(crate) fn full_state(&self, state: &ConversationState) -> Value {
        json!({
            "id": self.id,
            "agent": state.agent,
            "workspace": { "kind": "LocalWorkspace", "working_dir": state.working_dir },
            "persistence_dir": self.persistence_dir(),
            "max_iterations": state.max_iterations,
            "stuck_detection": state.stuck_detection,
            "execution_status": state.execution_status.as_str(),
            "confirmation_policy": { "kind": "NeverConfirm" },
            "activated_knowledge_skills": [],
            "blocked_actions": {},
            "blocked_messages": {},
            "last_user_message_id": state.last_user_message_id,
            "stats": { "usage_to_metrics": {} },
            "tags": state.tags,
        })
    }

    pub(crate) fn full_state_event(&self, state: &ConversationState) -> Value {
        events::state_update_event("full_state", self.full_state(state))
    }
}

pub(crate) struct ConversationState {
    events: Vec<Arc<Value>>,
    index_by_id: HashMap<String, usize>,
    log_len: watch::Sender<usize>,
    pub(crate) execution_status: ExecutionStatus,
    pub(crate) working_dir: PathBuf,
    pub(crate) agent: Value,
    pub(crate) max_iterations: u32,
    pub(crate) stuck_detection: bool,
    pub(crate) secrets: BTreeMap<String, String>,
    pub(crate) tags: Value,
    pub(crate) title: Option<String>,
    pub(crate) updated_at: String,
    pub(crate) system_prompt_sent: bool,
    pub(crate) last_user_message_id: Option<String>,
    pub(crate) plan: VecDeque<PlannedStep>,
    pub(crate) run: Option<ActiveRun>,
}

impl ConversationState {
    /// Appends to the log (seq = index) and wakes every socket following it.
    pub(crate) fn append(&mut self, event: Value) -> usize {
        let seq = self.events.len();
        self.index_by_id.insert(events::id(&event).to_owned(), seq);
        self.events.push(Arc::new(event));
        self.updated_at = events::utc_timestamp_now();
        self.log_len.send_replace(self.events.len());
        seq
    }

    /// Changes `execution_status`, emitting the update event the real server emits on change.
    pub(crate) fn set_status(&mut self, status: ExecutionStatus) {
        if self.execution_status != status {
            self.execution_status = status;
            self.append(events::state_update_event(
                "execution_status",
                json!(status.as_str()),
            ));
        }
    }

    pub(crate) fn events(&self) -> &[Arc<Value>] {
        &self.events
    }

    pub(crate) fn event_by_id(&self, id: &str) -> Option<&Arc<Value>> {
        self.index_by_id
            .get(id)
            .and_then(|&seq| self.events.get(seq))
    }

    /// The current log length and a receiver woken by every later append.
    pub(crate) fn subscribe(&self) -> (usize, watch::Receiver<usize>) {
        (self.events.len(), self.log_len.subscribe())
    }
}

/// Locks a mutex, tolerating poisoning: every critical section leaves the state consistent, so a
/// panic elsewhere must not take the whole fake down with it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
