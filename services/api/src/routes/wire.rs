//! The public JSON shapes. They are separate from the domain types so a storage or domain change
//! cannot silently change the API contract.

use cadenza_domain::{JournalEvent, Org, Project, Role, Run};
use cadenza_storage::memberships::Member;
use cadenza_storage::tokens::{TokenOwner, TokenRecord};
use cadenza_storage::users::User;
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;

#[derive(Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass back as `?cursor=` for the next page; `null` at the end.
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ProjectView {
    pub id: String,
    pub org_id: String,
    pub slug: String,
    pub name: String,
    pub agent: AgentView,
    pub repository: RepositoryView,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

#[derive(Serialize, ToSchema)]
pub struct AgentView {
    pub image: String,
    pub cpus: f64,
    pub memory_mb: i64,
    pub pids_limit: i64,
    pub max_iterations: i64,
    pub llm_model: Option<String>,
    pub llm_base_url: Option<String>,
    pub llm_api_key_secret: Option<String>,
    pub env: std::collections::BTreeMap<String, String>,
    pub secrets: Vec<String>,
    /// `retry` or `fail`: a run whose workspace is lost while its agent works.
    #[schema(schema_with = schemas::on_lost_workspace)]
    pub on_lost_workspace: cadenza_domain::OnLostWorkspace,
}

#[derive(Serialize, ToSchema)]
pub struct RepositoryView {
    pub url: Option<String>,
    pub branch: Option<String>,
    pub credentials_secret: Option<String>,
}

/// What a caller without `projects.manage` sees in place of each `agent.env` value.
pub const HIDDEN_ENV_VALUE: &str = "********";

impl ProjectView {
    /// The view for a caller who may read the project but not manage it: `agent.env` keeps its
    /// names, every value is [`HIDDEN_ENV_VALUE`].
    pub fn with_env_values_hidden(mut self) -> Self {
        for value in self.agent.env.values_mut() {
            HIDDEN_ENV_VALUE.clone_into(value);
        }
        self
    }
}

impl From<Project> for ProjectView {
    fn from(project: Project) -> Self {
        Self {
            id: project.id.to_string(),
            org_id: project.org_id.to_string(),
            slug: project.slug,
            name: project.name,
            agent: AgentView {
                image: project.agent.image,
                cpus: project.agent.cpus,
                memory_mb: project.agent.memory_mb,
                pids_limit: project.agent.pids_limit,
                max_iterations: project.agent.max_iterations,
                llm_model: project.agent.llm_model,
                llm_base_url: project.agent.llm_base_url,
                llm_api_key_secret: project.agent.llm_api_key_secret,
                env: project.agent.env,
                secrets: project.agent.secrets,
                on_lost_workspace: project.agent.on_lost_workspace,
            },
            repository: RepositoryView {
                url: project.repository.url,
                branch: project.repository.branch,
                credentials_secret: project.repository.credentials_secret,
            },
            created_at: project.created_at,
            updated_at: project.updated_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ReasonView {
    pub code: String,
    pub message: String,
}

#[derive(Serialize, ToSchema)]
pub struct RunView {
    pub id: String,
    pub org_id: String,
    pub project_id: String,
    #[schema(schema_with = schemas::run_state)]
    pub state: &'static str,
    pub attempt: i32,
    pub prompt: String,
    pub idempotency_key: Option<String>,
    pub terminal_reason: Option<ReasonView>,
    pub final_message: Option<String>,
    /// The journal's last sequence number: an events cursor of this value is up to date.
    pub last_event_seq: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub scheduled_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub provisioning_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub running_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl From<Run> for RunView {
    fn from(run: Run) -> Self {
        Self {
            id: run.id.to_string(),
            org_id: run.org_id.to_string(),
            project_id: run.project_id.to_string(),
            state: run.state.as_str(),
            attempt: run.attempt,
            prompt: run.prompt,
            idempotency_key: run.idempotency_key,
            terminal_reason: run.terminal_reason.map(|reason| ReasonView {
                code: reason.code.as_str().to_owned(),
                message: reason.message,
            }),
            final_message: run.final_message,
            last_event_seq: run.last_event_seq,
            created_at: run.created_at,
            scheduled_at: run.scheduled_at,
            provisioning_at: run.provisioning_at,
            running_at: run.running_at,
            finished_at: run.finished_at,
            updated_at: run.updated_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct EventView {
    pub run_id: String,
    pub seq: i64,
    pub kind: String,
    pub payload: serde_json::Value,
    /// The original agent-server event, when the event came from the agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<serde_json::Value>,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
}

impl EventView {
    pub fn from_journal(event: JournalEvent, include_raw: bool) -> Self {
        Self {
            run_id: event.run_id.to_string(),
            seq: event.seq,
            kind: event.kind,
            payload: event.payload,
            raw: if include_raw { event.raw } else { None },
            occurred_at: event.occurred_at,
        }
    }

    /// Whether this entry ends the run's journal: the stream closes after it.
    pub fn is_terminal(&self) -> bool {
        self.kind == cadenza_domain::EventKind::RunState.as_str()
            && self.payload.get("terminal") == Some(&serde_json::Value::Bool(true))
    }
}

/// One entry of an org's event journal, as every org stream and list carries it (envelope
/// version 1). `seq` is dense per org: a reader that has seen N has seen everything before N
/// that it may see.
#[derive(Serialize, ToSchema)]
pub struct OrgEventView {
    /// The envelope's version; a change that is not additive gets a new one.
    pub version: u32,
    pub org_id: String,
    pub seq: i64,
    /// `run.created`, `run.state_changed`, `member.added`, `member.role_changed`,
    /// `member.removed`, `project.created`, `project.updated`, `project.deleted`, `org.updated`.
    #[schema(examples("run.state_changed"))]
    pub kind: String,
    /// What it is about.
    pub subject: OrgEventSubject,
    /// The project, for run and project entries.
    pub project_id: Option<String>,
    /// By kind. `run.created`: `run_id`, `state`, `attempt`, `parent_run_id`.
    /// `run.state_changed`: `run_id`, `from`, `to`, `attempt`, `terminal`, `terminal_code`,
    /// `terminal_reason`. `member.*`: `user_id`, `role` (or `from`, `to`). `project.*`:
    /// `project_id`, `slug`, `name`. `org.updated`: `slug`, `name`.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    /// The correlation id of the action receipt whose request caused this change, when one did
    /// (a cancel, a retry).
    pub correlation_id: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
}

#[derive(Serialize, ToSchema)]
pub struct OrgEventSubject {
    /// `run`, `user`, `project` or `org`.
    pub kind: String,
    pub id: String,
}

impl From<&cadenza_domain::OrgEvent> for OrgEventView {
    fn from(event: &cadenza_domain::OrgEvent) -> Self {
        Self {
            version: 1,
            org_id: event.org_id.to_string(),
            seq: event.seq,
            kind: event.kind.clone(),
            subject: OrgEventSubject {
                kind: event.subject_kind.clone(),
                id: event.subject_id.to_string(),
            },
            project_id: event.project_id.map(|project| project.to_string()),
            data: event.data.clone(),
            correlation_id: event.correlation_id.map(|id| id.to_string()),
            occurred_at: event.occurred_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct OrgView {
    pub id: String,
    pub slug: String,
    pub name: String,
    /// The caller's role in this org (`null` for an instance admin who is not a member).
    #[schema(schema_with = schemas::nullable_role)]
    pub role: Option<Role>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl OrgView {
    pub fn new(org: Org, role: Option<Role>) -> Self {
        Self {
            id: org.id.to_string(),
            slug: org.slug,
            name: org.name,
            role,
            created_at: org.created_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct MemberView {
    pub user_id: String,
    pub email: String,
    pub name: Option<String>,
    #[schema(schema_with = schemas::role)]
    pub role: Role,
    #[serde(with = "time::serde::rfc3339")]
    pub joined_at: OffsetDateTime,
}

impl From<Member> for MemberView {
    fn from(member: Member) -> Self {
        Self {
            user_id: member.user_id.to_string(),
            email: member.email,
            name: member.name,
            role: member.role,
            joined_at: member.joined_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct UserView {
    pub id: String,
    pub email: String,
    pub name: Option<String>,
    pub instance_admin: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_login_at: Option<OffsetDateTime>,
}

impl From<User> for UserView {
    fn from(user: User) -> Self {
        Self {
            id: user.id.to_string(),
            email: user.email,
            name: user.name,
            instance_admin: user.is_instance_admin,
            created_at: user.created_at,
            last_login_at: user.last_login_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub kind: &'static str,
    /// The first characters of the secret, to recognise the token.
    pub prefix: String,
    pub org_id: Option<String>,
    #[schema(schema_with = schemas::nullable_role)]
    pub role: Option<Role>,
    #[schema(schema_with = schemas::nullable_permissions)]
    pub scopes: Option<Vec<cadenza_domain::Permission>>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
    /// The person the token was made in the name of (`null`: made by the system, or before
    /// creators were recorded).
    pub created_by: Option<String>,
    /// The token that made this one, when a token did.
    pub created_by_token: Option<String>,
    /// Only in the answer to the create request: the secret, shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl TokenView {
    pub fn new(record: TokenRecord, secret: Option<String>) -> Self {
        let (kind, org_id, role) = match record.owner {
            TokenOwner::User(_) => ("personal", None, None),
            TokenOwner::Service { org, role } => ("service", Some(org.to_string()), Some(role)),
        };
        Self {
            id: record.id.to_string(),
            name: record.name,
            kind,
            prefix: record.prefix,
            org_id,
            role,
            scopes: record.scopes,
            created_at: record.created_at,
            expires_at: record.expires_at,
            revoked_at: record.revoked_at,
            last_used_at: record.last_used_at,
            created_by: record.created_by.map(|user| user.to_string()),
            created_by_token: record.created_by_token.map(|token| token.to_string()),
            token: secret,
        }
    }
}

/// The answer to an action on a run (cancel, message): what was accepted and the correlation id
/// that the events it causes carry.
#[derive(Serialize, ToSchema)]
pub struct Receipt {
    pub action: &'static str,
    pub run_id: String,
    /// The new run a message to a finished run started, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub follow_up_run_id: Option<String>,
    /// The new run a retry started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_run_id: Option<String>,
    pub correlation_id: String,
    /// The run's state as of the answer.
    #[schema(schema_with = schemas::run_state)]
    pub state: &'static str,
    /// For messages: whether the agent has it already.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered: Option<bool>,
    #[serde(with = "time::serde::rfc3339")]
    pub accepted_at: OffsetDateTime,
}

/// Schemas of the domain's enums as they travel (their `snake_case` or dotted names).
pub(crate) mod schemas {
    use cadenza_domain::{Permission, Role, RunState};
    use serde_json::{Value, json};
    use utoipa::openapi::schema::Schema;

    fn from_json(value: Value) -> Schema {
        serde_json::from_value(value).expect("a hand-written JSON Schema always parses")
    }

    fn roles() -> Vec<&'static str> {
        Role::ALL.iter().map(|role| role.as_str()).collect()
    }

    pub fn role() -> Schema {
        from_json(json!({"type": "string", "enum": roles()}))
    }

    pub fn nullable_role() -> Schema {
        let mut values: Vec<Value> = roles().into_iter().map(Value::from).collect();
        values.push(Value::Null);
        from_json(json!({"type": ["string", "null"], "enum": values}))
    }

    pub fn run_state() -> Schema {
        let states: Vec<&str> = RunState::ALL.iter().map(|state| state.as_str()).collect();
        from_json(json!({"type": "string", "enum": states}))
    }

    pub fn on_lost_workspace() -> Schema {
        from_json(json!({"type": "string", "enum": ["retry", "fail"]}))
    }

    pub fn permissions() -> Schema {
        let all: Vec<&str> = Permission::ALL.iter().map(|p| p.as_str()).collect();
        from_json(json!({"type": "array", "items": {"type": "string", "enum": all}}))
    }

    pub fn nullable_permissions() -> Schema {
        let all: Vec<&str> = Permission::ALL.iter().map(|p| p.as_str()).collect();
        from_json(json!({"type": ["array", "null"], "items": {"type": "string", "enum": all}}))
    }
}

/// `GET /me`: who the caller is.
#[derive(Serialize, ToSchema)]
pub struct MeView {
    pub actor: ActorView,
    pub instance_admin: bool,
    /// The orgs the caller belongs to, with its role in each.
    pub orgs: Vec<MembershipView>,
    /// The token the request came with (`null` for a browser session).
    pub token_id: Option<String>,
    /// The permissions a narrowed token is limited to (`null`: not narrowed).
    #[schema(schema_with = schemas::nullable_permissions)]
    pub scopes: Option<Vec<cadenza_domain::Permission>>,
}

/// Who is acting: a person, or an org's service token.
#[derive(Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ActorView {
    User {
        id: String,
        email: String,
        name: Option<String>,
    },
    ServiceToken {
        id: String,
        name: String,
    },
}

#[derive(Serialize, ToSchema)]
pub struct MembershipView {
    pub org_id: String,
    pub slug: String,
    pub name: String,
    #[schema(schema_with = schemas::role)]
    pub role: Role,
}

/// An invitation to an org.
#[derive(Serialize, ToSchema)]
pub struct InvitationView {
    pub id: String,
    pub org_id: String,
    pub email: String,
    #[schema(schema_with = schemas::role)]
    pub role: Role,
    /// `pending`, `accepted`, `revoked` or `expired`.
    pub status: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Only in the answer to the create request: the one-time token, shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Only in the answer to the create request: the request that accepts it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accept: Option<AcceptRequest>,
}

#[derive(Serialize, ToSchema)]
pub struct AcceptRequest {
    pub method: &'static str,
    pub path: &'static str,
    pub body: AcceptBody,
}

#[derive(Serialize, ToSchema)]
pub struct AcceptBody {
    pub token: String,
}

/// The membership an accepted invitation, or a role change, gave.
#[derive(Serialize, ToSchema)]
pub struct RoleGranted {
    pub org_id: String,
    /// The member (absent in the answer to accepting an invitation: it is the caller).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[schema(schema_with = schemas::role)]
    pub role: Role,
}

/// An e-mail domain whose verified users join an org.
#[derive(Serialize, ToSchema)]
pub struct DomainView {
    pub domain: String,
    #[schema(schema_with = schemas::role)]
    pub role: Role,
    /// `pending` or `verified`.
    pub state: &'static str,
    pub verification: Option<DomainVerificationView>,
    /// The TXT record that proves control of the domain.
    pub dns_record: DnsRecordView,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

#[derive(Serialize, ToSchema)]
pub struct DomainVerificationView {
    /// `dns` or `admin`.
    pub method: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    pub verified_at: OffsetDateTime,
    pub verified_by: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct DnsRecordView {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub value: String,
}

/// One entry of an org's audit log.
#[derive(Serialize, ToSchema)]
pub struct AuditEntryView {
    pub id: i64,
    pub org_id: Option<String>,
    pub actor: AuditActorView,
    /// e.g. `run.create`, `member.update`.
    pub action: String,
    pub resource: AuditResourceView,
    /// Changed fields as `{"field": {"before": .., "after": ..}}`; never secret values.
    pub diff: serde_json::Value,
    pub request_id: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

#[derive(Serialize, ToSchema)]
pub struct AuditActorView {
    /// `user`, `token`, `anonymous` or `system`.
    #[serde(rename = "type")]
    pub kind: String,
    pub id: Option<String>,
    pub label: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct AuditResourceView {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: Option<String>,
}

impl From<cadenza_storage::audit::AuditRecord> for AuditEntryView {
    fn from(record: cadenza_storage::audit::AuditRecord) -> Self {
        let entry = record.entry;
        Self {
            id: record.id,
            org_id: entry.org_id.map(|org| org.to_string()),
            actor: AuditActorView {
                kind: entry.actor_type,
                id: entry.actor_id.map(|id| id.to_string()),
                label: entry.actor_label,
            },
            action: entry.action,
            resource: AuditResourceView {
                kind: entry.resource_type,
                id: entry.resource_id,
            },
            diff: entry.diff,
            request_id: entry.request_id,
            ip: entry.ip,
            user_agent: entry.user_agent,
            created_at: record.created_at,
        }
    }
}

/// The files a run's patch changes.
#[derive(Serialize, ToSchema)]
pub struct RunFilesView {
    pub run_id: String,
    /// The commit the patch is against (`null` for a workspace without a repository).
    pub base_commit: Option<String>,
    pub files: Vec<FileView>,
    /// What Cadenza left out of the patch and why (too large, binary past the limit), when it
    /// left anything out.
    pub omitted: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct FileView {
    pub path: String,
    /// The path before a rename.
    pub old_path: Option<String>,
    /// `added`, `modified`, `deleted` or `renamed`.
    pub status: &'static str,
    pub additions: usize,
    pub deletions: usize,
    pub binary: bool,
}
