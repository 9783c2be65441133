use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
pub struct WorkerConfig {
    /// Where `/healthz` and `/readyz` listen.
    #[serde(default = "default_listen")]
    pub worker_listen: SocketAddr,
    pub database_url: SecretString,
    /// Postgres connections this process may hold.
    #[serde(default = "default_pool_size")]
    pub database_pool_size: u32,
    pub nats_url: String,
    #[serde(default = "default_bus_prefix")]
    pub bus_prefix: String,
    /// A stable name: the worker keeps its id (and finds its containers) across restarts.
    /// Defaults to the host name.
    #[serde(default)]
    pub worker_name: Option<String>,
    /// Runs this worker executes at once.
    #[serde(default = "default_capacity")]
    pub worker_capacity: i32,
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Must match the scheduler's `lease_ttl`; each heartbeat extends held leases by this much.
    #[serde(default = "default_lease_ttl", with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// Wall-clock budget of one run, from provisioning to the end.
    #[serde(default = "default_run_timeout", with = "humantime_serde")]
    pub run_timeout: Duration,
    /// How long a new agent container may take to answer `/health`.
    #[serde(default = "default_agent_start_timeout", with = "humantime_serde")]
    pub agent_start_timeout: Duration,
    /// How long pulling a missing agent image may take.
    #[serde(default = "default_image_pull_timeout", with = "humantime_serde")]
    pub image_pull_timeout: Duration,
    /// After SIGTERM, how long runs still preparing their workspace may take to start their
    /// agent before the worker exits anyway. Running runs are never stopped by a shutdown: their
    /// containers stay, and the next worker on the same Docker Engine adopts them.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// A worker whose last heartbeat is older than this counts as dead: a worker on the same
    /// Docker Engine may adopt its runs (the scheduler's setting of the same name).
    #[serde(default = "default_worker_liveness", with = "humantime_serde")]
    pub worker_liveness: Duration,
    /// Attempts (including the first) a run gets when its workspace is lost (the scheduler's
    /// setting of the same name).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: i32,
    /// How long a run's writes to Postgres are retried through an outage before the run gives
    /// up (its end is then recorded by whoever adopts it).
    #[serde(default = "default_database_outage_budget", with = "humantime_serde")]
    pub database_outage_budget: Duration,
    /// Replicas of the JetStream stream (3 on a NATS cluster).
    #[serde(default = "default_stream_replicas")]
    pub nats_stream_replicas: usize,
    /// The agent's working directory inside the container.
    #[serde(default = "default_workspace_dir")]
    pub workspace_dir: String,
    /// Containers (comma-separated names) connected to every workspace network, reachable by
    /// name from the agent: e.g. an LLM gateway or a Git mirror. Workspaces still cannot reach
    /// each other.
    #[serde(default)]
    pub attach_containers: Option<String>,
    /// The model (a LiteLLM model string) used when a project names none. With neither, runs
    /// fail at once with `llm_unconfigured`, except on images labelled as scripted agents.
    #[serde(default)]
    pub default_llm_model: Option<String>,
    /// The LLM endpoint used when a project names none (an OpenAI-compatible base URL).
    #[serde(default)]
    pub default_llm_base_url: Option<String>,
    /// The instance-wide LLM API key, until projects name their own secret.
    #[serde(default)]
    pub default_llm_api_key: Option<SecretString>,
    /// `chat` for OpenAI-compatible gateways that serve only chat completions.
    #[serde(default)]
    pub llm_api_mode: Option<String>,
    /// How long a run's workspace container is kept after its agent finished, for follow-up
    /// turns (`POST /runs/{id}/messages`); `0s` removes it at once.
    #[serde(default = "default_workspace_idle_ttl", with = "humantime_serde")]
    pub workspace_idle_ttl: Duration,
    /// The key ring that opens secrets, as a key spec (`id:base64key,...`).
    #[serde(default)]
    pub secret_keks: Option<SecretString>,
    /// The key ring as a JSON key file (see docs/SECURITY.md).
    #[serde(default)]
    pub secret_keks_file: Option<String>,
    /// The agent images runs may use (comma-separated rules: `registry/`, `registry/path/` or
    /// `registry/repository`; `*` allows any), checked before every run together with the rules
    /// an instance administrator added for the run's org. Should match the API's setting.
    #[serde(default = "default_agent_images")]
    pub agent_images: String,
    /// The numeric `uid:gid` agent containers run as unless their image names a non-zero
    /// numeric user. Never 0.
    #[serde(default = "default_container_user")]
    pub container_user: String,
    /// The image that clones a project's repository into its workspace, outside the agent's
    /// container (needs `sh`, `git` and `chown`; `scripts/build-images.sh` builds it).
    #[serde(default = "default_git_image")]
    pub git_image: String,
    /// The IPv4 range workspace networks are carved from (never Docker's default pools, which
    /// hold only about thirty networks per host). Must not overlap the host's own networks.
    #[serde(default = "default_workspace_subnets")]
    pub workspace_subnets: String,
    /// The prefix length of each workspace network's subnet (at most 29).
    #[serde(default = "default_workspace_subnet_prefix")]
    pub workspace_subnet_prefix: u8,
    /// Workspace networks this worker holds at most: running and kept workspaces together.
    /// When a run needs one and none is free, the kept workspace that has waited longest for a
    /// follow-up is given up. At least the capacity.
    #[serde(default = "default_max_workspace_networks")]
    pub max_workspace_networks: usize,
    /// The largest diff stored for a run; files past it are left out and named.
    #[serde(default = "default_max_diff_bytes")]
    pub max_diff_bytes: usize,
    /// The largest diff of one file stored; a larger one is left out and named.
    #[serde(default = "default_max_diff_file_bytes")]
    pub max_diff_file_bytes: usize,
    /// The largest answer or session message read from an agent-server.
    #[serde(default = "default_max_agent_message_bytes")]
    pub max_agent_message_bytes: usize,
    /// The largest journal entry stored; longer text in it is cut, with a marker.
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
    /// Journal entries one run may make; past it the run fails (`agent_error`).
    #[serde(default = "default_max_events_per_run")]
    pub max_events_per_run: i64,
    #[serde(default)]
    pub log_json: bool,
}

/// The official agent-server image and its local build.
pub fn default_agent_images() -> String {
    "ghcr.io/openhands/agent-server, cadenza/openhands-agent-server".to_owned()
}
fn default_max_diff_bytes() -> usize {
    8 * 1024 * 1024
}
fn default_max_diff_file_bytes() -> usize {
    2 * 1024 * 1024
}
fn default_max_agent_message_bytes() -> usize {
    16 * 1024 * 1024
}
fn default_max_event_bytes() -> usize {
    256 * 1024
}
fn default_max_events_per_run() -> i64 {
    50_000
}
fn default_git_image() -> String {
    "cadenza/git-helper:dev".to_owned()
}
fn default_workspace_subnets() -> String {
    "10.213.0.0/16".to_owned()
}
fn default_workspace_subnet_prefix() -> u8 {
    28
}
fn default_max_workspace_networks() -> usize {
    64
}
fn default_container_user() -> String {
    "10001:10001".to_owned()
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8082))
}
fn default_bus_prefix() -> String {
    "cadenza".to_owned()
}
fn default_capacity() -> i32 {
    4
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(5)
}
fn default_lease_ttl() -> Duration {
    Duration::from_secs(30)
}
fn default_run_timeout() -> Duration {
    Duration::from_secs(3600)
}
fn default_agent_start_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_image_pull_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_worker_liveness() -> Duration {
    Duration::from_secs(15)
}
fn default_max_attempts() -> i32 {
    3
}
fn default_database_outage_budget() -> Duration {
    Duration::from_secs(600)
}
fn default_stream_replicas() -> usize {
    1
}
fn default_workspace_idle_ttl() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_workspace_dir() -> String {
    "/workspace/project".to_owned()
}

impl WorkerConfig {
    /// Settings for tests and embedding: defaults everywhere except the connections and name.
    pub fn new(
        database_url: SecretString,
        nats_url: String,
        bus_prefix: String,
        name: String,
    ) -> Self {
        Self {
            worker_listen: default_listen(),
            database_url,
            database_pool_size: default_pool_size(),
            nats_url,
            bus_prefix,
            worker_name: Some(name),
            worker_capacity: default_capacity(),
            heartbeat_interval: default_heartbeat(),
            lease_ttl: default_lease_ttl(),
            run_timeout: default_run_timeout(),
            agent_start_timeout: default_agent_start_timeout(),
            image_pull_timeout: default_image_pull_timeout(),
            shutdown_grace: default_shutdown_grace(),
            worker_liveness: default_worker_liveness(),
            max_attempts: default_max_attempts(),
            database_outage_budget: default_database_outage_budget(),
            nats_stream_replicas: default_stream_replicas(),
            workspace_dir: default_workspace_dir(),
            workspace_idle_ttl: default_workspace_idle_ttl(),
            default_llm_model: None,
            default_llm_base_url: None,
            default_llm_api_key: None,
            llm_api_mode: None,
            attach_containers: None,
            secret_keks: None,
            secret_keks_file: None,
            agent_images: default_agent_images(),
            container_user: default_container_user(),
            git_image: default_git_image(),
            max_diff_bytes: default_max_diff_bytes(),
            max_diff_file_bytes: default_max_diff_file_bytes(),
            max_agent_message_bytes: default_max_agent_message_bytes(),
            max_event_bytes: default_max_event_bytes(),
            max_events_per_run: default_max_events_per_run(),
            workspace_subnets: default_workspace_subnets(),
            workspace_subnet_prefix: default_workspace_subnet_prefix(),
            max_workspace_networks: default_max_workspace_networks(),
            log_json: false,
        }
    }

    pub fn keyring(&self) -> anyhow::Result<cadenza_crypto::KeyRing> {
        cadenza_service_runtime::load_keyring(
            self.secret_keks.as_ref(),
            self.secret_keks_file.as_deref(),
        )
    }

    /// The instance's agent-image allowlist.
    pub fn image_policy(&self) -> anyhow::Result<cadenza_domain::ImagePolicy> {
        cadenza_domain::ImagePolicy::parse(&self.agent_images)
            .map_err(|err| anyhow::anyhow!("CADENZA_AGENT_IMAGES: {err}"))
    }

    /// The subnets workspace networks come from, checked against the network bound and the
    /// capacity.
    pub fn subnet_pool(&self) -> anyhow::Result<crate::docker::SubnetPool> {
        let pool =
            crate::docker::SubnetPool::new(&self.workspace_subnets, self.workspace_subnet_prefix)
                .map_err(|err| {
                anyhow::anyhow!(
                    "CADENZA_WORKSPACE_SUBNETS / CADENZA_WORKSPACE_SUBNET_PREFIX: {err}"
                )
            })?;
        let capacity = usize::try_from(self.worker_capacity.max(0)).unwrap_or(0);
        if self.max_workspace_networks < capacity.max(1) {
            anyhow::bail!(
                "CADENZA_MAX_WORKSPACE_NETWORKS ({}) must be at least CADENZA_WORKER_CAPACITY ({capacity}): every running workspace holds a network",
                self.max_workspace_networks
            );
        }
        if pool.len() < self.max_workspace_networks {
            anyhow::bail!(
                "CADENZA_WORKSPACE_SUBNETS holds {} subnets of /{}, fewer than CADENZA_MAX_WORKSPACE_NETWORKS ({})",
                pool.len(),
                self.workspace_subnet_prefix,
                self.max_workspace_networks
            );
        }
        Ok(pool)
    }

    /// What of an agent's diff is read and kept.
    pub fn diff_limits(&self) -> cadenza_agent_client::DiffLimits {
        cadenza_agent_client::DiffLimits {
            max_bytes: self.max_diff_bytes,
            max_file_bytes: self.max_diff_file_bytes.min(self.max_diff_bytes),
            // Files past the kept patch are still named, up to this much reading.
            max_read_bytes: (self.max_diff_bytes as u64).saturating_mul(32),
        }
    }

    /// The non-root `(uid, gid)` for images that would run as root or by name.
    pub fn fallback_user(&self) -> anyhow::Result<(u32, u32)> {
        let invalid = || {
            anyhow::anyhow!(
                "CADENZA_CONTAINER_USER must be a numeric non-root `uid:gid` (e.g. `10001:10001`), got `{}`",
                self.container_user
            )
        };
        let (uid, gid) = self.container_user.split_once(':').ok_or_else(invalid)?;
        let uid: u32 = uid.trim().parse().map_err(|_| invalid())?;
        let gid: u32 = gid.trim().parse().map_err(|_| invalid())?;
        if uid == 0 || gid == 0 {
            return Err(invalid());
        }
        Ok((uid, gid))
    }

    pub fn attached_containers(&self) -> Vec<String> {
        self.attach_containers
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .collect()
    }

    pub fn resolved_name(&self) -> String {
        self.worker_name
            .clone()
            .filter(|name| !name.trim().is_empty())
            .or_else(|| {
                std::env::var("HOSTNAME")
                    .ok()
                    .filter(|name| !name.is_empty())
            })
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|name| name.trim().to_owned())
                    .filter(|name| !name.is_empty())
            })
            .unwrap_or_else(|| "worker".to_owned())
    }
}

fn default_pool_size() -> u32 {
    10
}
