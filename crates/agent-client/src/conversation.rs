//! Conversation requests and answers: what `POST /api/conversations` takes and what the
//! conversation routes return.

use std::collections::BTreeMap;
use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::json::{i64_at, str_at, string_at};

/// Tool names of the standard OpenHands tool set. Since the early-2026 rename they are
/// snake_case; the old `BashTool` style names are rejected by current servers.
pub mod tool_names {
    pub const TERMINAL: &str = "terminal";
    pub const FILE_EDITOR: &str = "file_editor";
    pub const TASK_TRACKER: &str = "task_tracker";
}

/// `ConversationExecutionStatus` of the agent-server.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ExecutionStatus {
    Idle,
    Running,
    Paused,
    WaitingForConfirmation,
    Finished,
    Error,
    Stuck,
    Deleting,
    /// A value this client does not know, kept verbatim (empty when the field was absent).
    Unknown(String),
}

impl ExecutionStatus {
    /// Parses the wire value; never fails, unknown values become [`ExecutionStatus::Unknown`].
    pub fn from_wire(value: &str) -> Self {
        match value {
            "idle" => Self::Idle,
            "running" => Self::Running,
            "paused" => Self::Paused,
            "waiting_for_confirmation" => Self::WaitingForConfirmation,
            "finished" => Self::Finished,
            "error" => Self::Error,
            "stuck" => Self::Stuck,
            "deleting" => Self::Deleting,
            other => Self::Unknown(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Idle => "idle",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::WaitingForConfirmation => "waiting_for_confirmation",
            Self::Finished => "finished",
            Self::Error => "error",
            Self::Stuck => "stuck",
            Self::Deleting => "deleting",
            Self::Unknown(other) => other,
        }
    }

    /// The run is over and will not continue by itself (the SDK's own definition). `idle` is
    /// not terminal: it is the initial state and what a fresh connection usually reports.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Finished | Self::Error | Self::Stuck)
    }
}

impl fmt::Display for ExecutionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ExecutionStatus {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ExecutionStatus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Ok(value
            .as_str()
            .map(Self::from_wire)
            .unwrap_or_else(|| Self::Unknown(String::new())))
    }
}

/// Body of `POST /api/conversations`.
///
/// Build it with [`StartConversationRequest::new`] and the `with_*` methods, or set the public
/// fields directly. Secrets (the LLM key, `secrets` values) are sent to the server but never
/// appear in `Debug` output.
#[derive(Debug, Clone)]
pub struct StartConversationRequest {
    /// Choosing the id makes creation idempotent: a retry after a lost answer gets the
    /// existing conversation back (200) instead of a second one.
    pub conversation_id: Option<Uuid>,
    /// Directory the agent works in, on the server's filesystem.
    pub working_dir: String,
    pub agent: AgentSource,
    /// First user message. When present the server starts a run at once.
    pub initial_message: Option<String>,
    pub max_iterations: Option<u32>,
    /// Exposed to the agent's shell as environment variables, masked in its output. Sent as
    /// `{"kind": "StaticSecret", "value": ...}`, the only static shape the create route takes.
    pub secrets: BTreeMap<String, SecretString>,
    pub autotitle: Option<bool>,
    /// Top-level fields this type does not model (`worktree`, `tags`, `confirmation_policy`,
    /// ...). A typed field of the same name wins, so this map cannot silently undo one.
    pub extra: Map<String, Value>,
}

impl StartConversationRequest {
    pub fn new(working_dir: impl Into<String>, agent: impl Into<AgentSource>) -> Self {
        Self {
            conversation_id: None,
            working_dir: working_dir.into(),
            agent: agent.into(),
            initial_message: None,
            max_iterations: None,
            secrets: BTreeMap::new(),
            autotitle: None,
            extra: Map::new(),
        }
    }

    pub fn with_conversation_id(mut self, id: Uuid) -> Self {
        self.conversation_id = Some(id);
        self
    }

    pub fn with_initial_message(mut self, text: impl Into<String>) -> Self {
        self.initial_message = Some(text.into());
        self
    }

    pub fn with_max_iterations(mut self, max_iterations: u32) -> Self {
        self.max_iterations = Some(max_iterations);
        self
    }

    pub fn with_secret(mut self, name: impl Into<String>, value: SecretString) -> Self {
        self.secrets.insert(name.into(), value);
        self
    }

    pub fn with_autotitle(mut self, autotitle: bool) -> Self {
        self.autotitle = Some(autotitle);
        self
    }

    pub fn with_extra(mut self, key: impl Into<String>, value: Value) -> Self {
        self.extra.insert(key.into(), value);
        self
    }

    /// The JSON body, secrets included. Only for sending; never log it.
    pub fn to_json(&self) -> Value {
        let mut body = self.extra.clone();
        if let Some(id) = self.conversation_id {
            body.insert("conversation_id".into(), json!(id));
        }
        body.insert(
            "workspace".into(),
            json!({"kind": "LocalWorkspace", "working_dir": self.working_dir}),
        );
        let (key, agent) = self.agent.to_json();
        body.insert(key.into(), agent);
        if let Some(text) = &self.initial_message {
            body.insert("initial_message".into(), user_message_json(text, true));
        }
        if let Some(max_iterations) = self.max_iterations {
            body.insert("max_iterations".into(), json!(max_iterations));
        }
        if !self.secrets.is_empty() {
            // The create route takes `SecretSource` objects only: unlike the secrets-update
            // route it does not turn a plain string into a `StaticSecret`, it refuses it (422).
            let secrets: Map<String, Value> = self
                .secrets
                .iter()
                .map(|(name, value)| {
                    (
                        name.clone(),
                        json!({"kind": "StaticSecret", "value": value.expose_secret()}),
                    )
                })
                .collect();
            body.insert("secrets".into(), Value::Object(secrets));
        }
        if let Some(autotitle) = self.autotitle {
            body.insert("autotitle".into(), json!(autotitle));
        }
        Value::Object(body)
    }
}

impl Serialize for StartConversationRequest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

/// `{"role":"user","content":[{"type":"text","text":...}],"run":...}`, the shape of both
/// `initial_message` and `SendMessageRequest`.
pub(crate) fn user_message_json(text: &str, run: bool) -> Value {
    json!({"role": "user", "content": [{"type": "text", "text": text}], "run": run})
}

/// Where the server gets the agent from; the server requires exactly one.
#[derive(Debug, Clone)]
pub enum AgentSource {
    /// A full `Agent` object (`"agent"`): the tool list is exactly what is given.
    Agent(AgentSpec),
    /// `"agent_settings"`: with no tools given, the server picks its standard set.
    Settings(AgentSettings),
    /// `"agent_profile_id"`: a profile stored on the server.
    Profile(Uuid),
}

impl AgentSource {
    fn to_json(&self) -> (&'static str, Value) {
        match self {
            AgentSource::Agent(agent) => ("agent", agent.to_json()),
            AgentSource::Settings(settings) => ("agent_settings", settings.to_json()),
            AgentSource::Profile(id) => ("agent_profile_id", json!(id)),
        }
    }
}

impl From<AgentSpec> for AgentSource {
    fn from(agent: AgentSpec) -> Self {
        AgentSource::Agent(agent)
    }
}

impl From<AgentSettings> for AgentSource {
    fn from(settings: AgentSettings) -> Self {
        AgentSource::Settings(settings)
    }
}

/// The `agent` object (`kind: "Agent"`).
#[derive(Debug, Clone)]
pub struct AgentSpec {
    pub llm: LlmConfig,
    /// An empty list gives the agent no terminal and no editor, only finish/think.
    pub tools: Vec<ToolSpec>,
    /// Agent fields not modelled here (`condenser`, `mcp_config`, ...); typed fields win.
    pub extra: Map<String, Value>,
}

impl AgentSpec {
    /// An agent with the given tools.
    pub fn new(llm: LlmConfig, tools: Vec<ToolSpec>) -> Self {
        Self {
            llm,
            tools,
            extra: Map::new(),
        }
    }

    /// An agent with terminal, file editor and task tracker: what a coding task needs.
    pub fn with_standard_tools(llm: LlmConfig) -> Self {
        Self::new(
            llm,
            vec![
                ToolSpec::named(tool_names::TERMINAL),
                ToolSpec::named(tool_names::FILE_EDITOR),
                ToolSpec::named(tool_names::TASK_TRACKER),
            ],
        )
    }

    fn to_json(&self) -> Value {
        let mut agent = self.extra.clone();
        agent.insert("kind".into(), json!("Agent"));
        agent.insert("llm".into(), self.llm.to_json());
        agent.insert(
            "tools".into(),
            Value::Array(self.tools.iter().map(ToolSpec::to_json).collect()),
        );
        Value::Object(agent)
    }
}

/// The `agent_settings` object.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub llm: LlmConfig,
    /// `None` lets the server resolve its standard tools.
    pub tools: Option<Vec<ToolSpec>>,
    pub agent_kind: Option<String>,
    /// Settings not modelled here; typed fields win.
    pub extra: Map<String, Value>,
}

impl AgentSettings {
    pub fn new(llm: LlmConfig) -> Self {
        Self {
            llm,
            tools: None,
            agent_kind: None,
            extra: Map::new(),
        }
    }

    fn to_json(&self) -> Value {
        let mut settings = self.extra.clone();
        settings.insert("llm".into(), self.llm.to_json());
        if let Some(tools) = &self.tools {
            settings.insert(
                "tools".into(),
                Value::Array(tools.iter().map(ToolSpec::to_json).collect()),
            );
        }
        if let Some(kind) = &self.agent_kind {
            settings.insert("agent_kind".into(), json!(kind));
        }
        Value::Object(settings)
    }
}

/// One entry of an agent's `tools` list.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub params: Map<String, Value>,
}

impl ToolSpec {
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            params: Map::new(),
        }
    }

    fn to_json(&self) -> Value {
        json!({"name": self.name, "params": self.params})
    }
}

/// The `llm` object. The server does not read `LLM_*` environment variables for
/// conversations: the model and key must travel here.
#[derive(Debug, Clone)]
pub struct LlmConfig {
    /// A LiteLLM model string such as `anthropic/claude-sonnet-4-5`. Always set it: the
    /// server's default is a hosted model.
    pub model: String,
    pub api_key: Option<SecretString>,
    pub base_url: Option<String>,
    pub api_version: Option<String>,
    /// Names this LLM in usage statistics.
    pub usage_id: Option<String>,
    pub num_retries: Option<u32>,
    /// Per-call timeout in seconds.
    pub timeout_seconds: Option<u64>,
    pub temperature: Option<f64>,
    pub max_output_tokens: Option<u64>,
    /// Streams token deltas to session sockets.
    pub stream: Option<bool>,
    /// LLM fields not modelled here; typed fields win.
    pub extra: Map<String, Value>,
}

impl LlmConfig {
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            api_key: None,
            base_url: None,
            api_version: None,
            usage_id: None,
            num_retries: None,
            timeout_seconds: None,
            temperature: None,
            max_output_tokens: None,
            stream: None,
            extra: Map::new(),
        }
    }

    pub fn with_api_key(mut self, api_key: SecretString) -> Self {
        self.api_key = Some(api_key);
        self
    }

    pub fn with_base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = Some(base_url.into());
        self
    }

    pub fn with_usage_id(mut self, usage_id: impl Into<String>) -> Self {
        self.usage_id = Some(usage_id.into());
        self
    }

    fn to_json(&self) -> Value {
        let mut llm = self.extra.clone();
        llm.insert("model".into(), json!(self.model));
        let optional = [
            (
                "api_key",
                self.api_key.as_ref().map(|key| json!(key.expose_secret())),
            ),
            ("base_url", self.base_url.as_ref().map(|url| json!(url))),
            (
                "api_version",
                self.api_version.as_ref().map(|version| json!(version)),
            ),
            ("usage_id", self.usage_id.as_ref().map(|id| json!(id))),
            (
                "num_retries",
                self.num_retries.map(|retries| json!(retries)),
            ),
            (
                "timeout",
                self.timeout_seconds.map(|seconds| json!(seconds)),
            ),
            (
                "temperature",
                self.temperature.map(|temperature| json!(temperature)),
            ),
            (
                "max_output_tokens",
                self.max_output_tokens.map(|tokens| json!(tokens)),
            ),
            ("stream", self.stream.map(|stream| json!(stream))),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                llm.insert(key.into(), value);
            }
        }
        Value::Object(llm)
    }
}

/// Whether `create_conversation` made a new conversation (201) or found the id taken (200).
/// An existing conversation does not receive the `initial_message` again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateOutcome {
    Created,
    Existing,
}

/// Answer of `POST /api/conversations/{id}/run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    Started,
    /// 409 without `retryable`: a run is already active, which for a caller that wants the
    /// conversation running is as good as starting it.
    AlreadyRunning,
}

/// `ConversationInfo`, as returned by create, get and search.
///
/// Only the fields a worker needs are typed; everything is kept in `raw`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationInfo {
    pub id: Uuid,
    /// [`ExecutionStatus::Unknown`] with an empty string when the field is absent.
    pub execution_status: ExecutionStatus,
    pub title: Option<String>,
    pub working_dir: Option<String>,
    pub max_iterations: Option<i64>,
    /// Naive server-local time, as sent.
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    pub raw: Value,
}

impl ConversationInfo {
    /// Reads the typed fields; only a missing or malformed `id` is an error.
    pub fn from_value(raw: Value) -> Result<Self, String> {
        let id = str_at(&raw, "id").ok_or("ConversationInfo has no string `id`")?;
        let id = Uuid::parse_str(id)
            .map_err(|error| format!("ConversationInfo `id` {id:?} is not a UUID: {error}"))?;
        Ok(Self {
            id,
            execution_status: str_at(&raw, "execution_status")
                .map(ExecutionStatus::from_wire)
                .unwrap_or_else(|| ExecutionStatus::Unknown(String::new())),
            title: string_at(&raw, "title"),
            working_dir: raw
                .get("workspace")
                .and_then(|workspace| string_at(workspace, "working_dir")),
            max_iterations: i64_at(&raw, "max_iterations"),
            created_at: string_at(&raw, "created_at"),
            updated_at: string_at(&raw, "updated_at"),
            raw,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llm() -> LlmConfig {
        LlmConfig::new("openai/fake-model")
            .with_api_key(SecretString::from("sk-llm-very-secret"))
            .with_base_url("http://llm.invalid/v1")
            .with_usage_id("agent")
    }

    #[test]
    fn agent_request_serializes_the_documented_shape() {
        let id = Uuid::parse_str("2f1d6c0e-7a39-4f7a-9d55-5a0c8c1b7e21").unwrap();
        let request = StartConversationRequest::new(
            "/workspace/project",
            AgentSpec::with_standard_tools(llm()),
        )
        .with_conversation_id(id)
        .with_initial_message("fix the bug")
        .with_max_iterations(100)
        .with_secret("GITHUB_TOKEN", SecretString::from("ghp-secret"))
        .with_autotitle(false)
        .with_extra("tags", json!({"run": "r1"}));

        let body = serde_json::to_value(&request).unwrap();
        assert_eq!(
            body,
            json!({
                "conversation_id": "2f1d6c0e-7a39-4f7a-9d55-5a0c8c1b7e21",
                "workspace": {"kind": "LocalWorkspace", "working_dir": "/workspace/project"},
                "agent": {
                    "kind": "Agent",
                    "llm": {
                        "model": "openai/fake-model",
                        "api_key": "sk-llm-very-secret",
                        "base_url": "http://llm.invalid/v1",
                        "usage_id": "agent"
                    },
                    "tools": [
                        {"name": "terminal", "params": {}},
                        {"name": "file_editor", "params": {}},
                        {"name": "task_tracker", "params": {}}
                    ]
                },
                "initial_message": {
                    "role": "user",
                    "content": [{"type": "text", "text": "fix the bug"}],
                    "run": true
                },
                "max_iterations": 100,
                "secrets": {"GITHUB_TOKEN": {"kind": "StaticSecret", "value": "ghp-secret"}},
                "autotitle": false,
                "tags": {"run": "r1"}
            })
        );
    }

    #[test]
    fn settings_request_leaves_tools_to_the_server_and_typed_fields_beat_extra() {
        let request = StartConversationRequest::new("/w", AgentSettings::new(llm()))
            .with_extra("workspace", json!({"working_dir": "/elsewhere"}))
            .with_extra("worktree", json!(true));
        let body = request.to_json();
        assert_eq!(body["workspace"]["working_dir"], "/w");
        assert_eq!(body["worktree"], true);
        assert!(body.get("agent").is_none());
        assert!(body["agent_settings"].get("tools").is_none());
        assert_eq!(body["agent_settings"]["llm"]["model"], "openai/fake-model");
        assert!(body.get("initial_message").is_none());
        assert!(body.get("secrets").is_none());
    }

    #[test]
    fn debug_output_never_contains_secrets() {
        let request = StartConversationRequest::new("/w", AgentSpec::with_standard_tools(llm()))
            .with_secret("TOKEN", SecretString::from("ghp-secret"));
        let printed = format!("{request:?}");
        assert!(!printed.contains("sk-llm-very-secret"), "{printed}");
        assert!(!printed.contains("ghp-secret"), "{printed}");
        assert!(printed.contains("REDACTED"));
    }

    #[test]
    fn execution_status_round_trips_and_keeps_unknown_values() {
        for wire in [
            "idle",
            "running",
            "paused",
            "waiting_for_confirmation",
            "finished",
            "error",
            "stuck",
            "deleting",
        ] {
            assert_eq!(ExecutionStatus::from_wire(wire).as_str(), wire);
        }
        let status: ExecutionStatus = serde_json::from_value(json!("hibernating")).unwrap();
        assert_eq!(status, ExecutionStatus::Unknown("hibernating".into()));
        assert_eq!(serde_json::to_value(&status).unwrap(), json!("hibernating"));
        let terminal: Vec<_> = ["idle", "running", "paused", "finished", "error", "stuck"]
            .into_iter()
            .filter(|wire| ExecutionStatus::from_wire(wire).is_terminal())
            .collect();
        assert_eq!(terminal, ["finished", "error", "stuck"]);
    }

    #[test]
    fn conversation_info_reads_known_fields_and_keeps_the_rest() {
        let info = ConversationInfo::from_value(json!({
            "id": "2f1d6c0e-7a39-4f7a-9d55-5a0c8c1b7e21",
            "workspace": {"kind": "LocalWorkspace", "working_dir": "/workspace/project"},
            "execution_status": "running",
            "title": null,
            "max_iterations": 100,
            "runtime_info": {"runtime_status": "available", "can_resume": true},
            "a_field_from_the_future": [1, 2, 3]
        }))
        .unwrap();
        assert_eq!(info.execution_status, ExecutionStatus::Running);
        assert_eq!(info.working_dir.as_deref(), Some("/workspace/project"));
        assert_eq!(info.title, None);
        assert_eq!(info.max_iterations, Some(100));
        assert_eq!(info.raw["a_field_from_the_future"], json!([1, 2, 3]));

        assert!(ConversationInfo::from_value(json!({"conversation_id": "x"})).is_err());
        assert!(ConversationInfo::from_value(json!({"id": "not-a-uuid"})).is_err());
    }
}
