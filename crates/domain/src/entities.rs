//! The entities Cadenza stores, as plain data. Storage maps rows to these; services map these to
//! their wire types at the edge.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::ids::{OrgId, ProjectId, RunId, WorkerId};
use crate::run::{RunState, TerminalReason};

#[derive(Clone, Debug, PartialEq)]
pub struct Org {
    pub id: OrgId,
    pub slug: String,
    pub name: String,
    pub created_at: OffsetDateTime,
}

/// How a project's agent containers are built and bounded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentSettings {
    /// The agent-server image (tag or digest).
    pub image: String,
    /// CPU limit in cores (fractions allowed).
    pub cpus: f64,
    pub memory_mb: i64,
    pub pids_limit: i64,
    pub max_iterations: i64,
    pub llm_model: Option<String>,
    pub llm_base_url: Option<String>,
    /// The name of the org secret holding the LLM API key.
    pub llm_api_key_secret: Option<String>,
    /// Extra environment for the agent container (never secrets: those are injected separately).
    pub env: BTreeMap<String, String>,
    /// Names of secrets exposed to the agent's shell as environment variables.
    pub secrets: Vec<String>,
    /// What happens to a run whose workspace is lost while its agent works.
    pub on_lost_workspace: OnLostWorkspace,
}

/// A run's workspace can be lost while its agent works: its worker and Docker Engine went away
/// and no worker adopted the container. The agent may have done part of the task; the project
/// says whether the run starts again from scratch (`retry`, the default, while attempts remain)
/// or fails (`fail`: for tasks whose side effects must not be repeated). A run lost before its
/// agent got its task is always retried: nothing happened yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnLostWorkspace {
    #[default]
    Retry,
    Fail,
}

impl OnLostWorkspace {
    pub const fn as_str(self) -> &'static str {
        match self {
            OnLostWorkspace::Retry => "retry",
            OnLostWorkspace::Fail => "fail",
        }
    }
}

impl std::str::FromStr for OnLostWorkspace {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "retry" => Ok(OnLostWorkspace::Retry),
            "fail" => Ok(OnLostWorkspace::Fail),
            other => Err(format!("unknown lost-workspace policy `{other}`")),
        }
    }
}

impl AgentSettings {
    pub const DEFAULT_CPUS: f64 = 2.0;
    pub const DEFAULT_MEMORY_MB: i64 = 4096;
    pub const DEFAULT_PIDS_LIMIT: i64 = 512;
    pub const DEFAULT_MAX_ITERATIONS: i64 = 100;

    pub fn with_image(image: impl Into<String>) -> Self {
        Self {
            image: image.into(),
            cpus: Self::DEFAULT_CPUS,
            memory_mb: Self::DEFAULT_MEMORY_MB,
            pids_limit: Self::DEFAULT_PIDS_LIMIT,
            max_iterations: Self::DEFAULT_MAX_ITERATIONS,
            llm_model: None,
            llm_base_url: None,
            llm_api_key_secret: None,
            env: BTreeMap::new(),
            secrets: Vec::new(),
            on_lost_workspace: OnLostWorkspace::Retry,
        }
    }
}

/// The Git repository a project's runs work on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Repository {
    pub url: Option<String>,
    pub branch: Option<String>,
    /// The name of the org secret holding Git credentials.
    pub credentials_secret: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Project {
    pub id: ProjectId,
    pub org_id: OrgId,
    pub slug: String,
    pub name: String,
    pub agent: AgentSettings,
    pub repository: Repository,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    pub id: RunId,
    pub org_id: OrgId,
    pub project_id: ProjectId,
    pub state: RunState,
    pub attempt: i32,
    pub prompt: String,
    pub idempotency_key: Option<String>,
    pub lease_holder: Option<WorkerId>,
    pub lease_expires_at: Option<OffsetDateTime>,
    /// Bumped by every lease (and by a worker adopting the run after its holder died): the
    /// fencing token of the holder's writes.
    pub lease_epoch: i64,
    pub terminal_reason: Option<TerminalReason>,
    pub conversation_id: Option<Uuid>,
    /// The agent's last message when it finished.
    pub final_message: Option<String>,
    /// The highest journal sequence number written for this run (0 when none).
    pub last_event_seq: i64,
    pub created_at: OffsetDateTime,
    pub scheduled_at: Option<OffsetDateTime>,
    pub provisioning_at: Option<OffsetDateTime>,
    pub running_at: Option<OffsetDateTime>,
    pub finished_at: Option<OffsetDateTime>,
    pub updated_at: OffsetDateTime,
}

/// One entry of a run's journal. `seq` is dense per run, starting at 1.
#[derive(Clone, Debug, PartialEq)]
pub struct JournalEvent {
    pub run_id: RunId,
    pub org_id: OrgId,
    pub seq: i64,
    pub kind: String,
    /// The normalized form clients should read.
    pub payload: serde_json::Value,
    /// The original agent-server event, when the event came from the agent.
    pub raw: Option<serde_json::Value>,
    pub occurred_at: OffsetDateTime,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Worker {
    pub id: WorkerId,
    pub name: String,
    pub capacity: i32,
    pub started_at: OffsetDateTime,
    pub last_heartbeat_at: OffsetDateTime,
}

/// One entry of an org's event journal: a run created or changing state, a member or project
/// added, changed or removed, the org renamed. `seq` is dense per org, starting at 1. Written by
/// Postgres itself alongside each change; this is also the shape of its live notification.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct OrgEvent {
    pub org_id: OrgId,
    pub seq: i64,
    /// `run.created`, `run.state_changed`, `member.added`, `member.role_changed`,
    /// `member.removed`, `project.created`, `project.updated`, `project.deleted`, `org.updated`.
    pub kind: String,
    /// What the entry is about: `run`, `user`, `project` or `org`.
    pub subject_kind: String,
    pub subject_id: Uuid,
    pub project_id: Option<ProjectId>,
    pub data: serde_json::Value,
    /// The request that caused the change, when one did.
    pub correlation_id: Option<Uuid>,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
}

impl OrgEvent {
    /// What a reader needs in the org to see this entry: runs need `runs.read`, projects
    /// `projects.read`, members and the org itself `org.read`.
    pub fn required_permission(&self) -> crate::Permission {
        match self.subject_kind.as_str() {
            "run" => crate::Permission::RunsRead,
            "project" => crate::Permission::ProjectsRead,
            _ => crate::Permission::OrgRead,
        }
    }
}
