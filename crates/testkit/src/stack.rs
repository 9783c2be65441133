//! Starts all four Cadenza services as separate processes against real Postgres, NATS, Redis and
//! Docker, each on a random loopback port, isolated from other tests by their own database, bus
//! prefix and worker name. Everything started here is stopped when the `Stack` is dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cadenza_domain::{AgentSettings, Org, Project, Repository, Role};
use cadenza_storage::{orgs, projects};

use crate::docker::{ContainerSweeper, fake_agent_image};
use crate::infra::{TestDatabase, nats_url, redis_url, unique_name};

/// Where the service binaries are: `CADENZA_BIN_DIR`, else the target directory this test binary
/// was built into (`target/<profile>/deps/..`).
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("CADENZA_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// One service process, stopped with SIGTERM (then SIGKILL) on drop.
pub struct ServiceProcess {
    pub name: &'static str,
    pub port: u16,
    pub log_path: PathBuf,
    binary: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl ServiceProcess {
    pub fn spawn(
        name: &'static str,
        binary: &str,
        port: u16,
        env: &[(String, String)],
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        let path = bin_dir().join(binary);
        if !path.exists() {
            bail!(
                "{} is missing; build the services first (`cargo build --bins`)",
                path.display()
            );
        }
        let log_path = log_dir.join(format!("{name}.log"));
        let mut process = Self {
            name,
            port,
            log_path,
            binary: path,
            env: env.to_vec(),
            child: None,
        };
        process.start()?;
        Ok(process)
    }

    fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let child = Command::new(&self.binary)
            .env_clear()
            .envs(
                [
                    "PATH",
                    "HOME",
                    "DOCKER_HOST",
                    "DOCKER_CERT_PATH",
                    "DOCKER_TLS_VERIFY",
                ]
                .iter()
                .filter_map(|key| {
                    std::env::var(key)
                        .ok()
                        .map(|value| (key.to_string(), value))
                }),
            )
            .env("RUST_LOG", "info,cadenza=debug")
            .envs(
                self.env
                    .iter()
                    .map(|(key, value)| (key.as_str(), value.as_str())),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Starts the process again (after `stop` or a kill), with the same settings and log.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.start()
    }

    /// The operating-system process id (0 when not running).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGTERM, then SIGKILL after `grace`. Returns whether it exited on SIGTERM.
    pub fn stop(&mut self, grace: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Waits until `/readyz` answers 200, failing early if the process exits.
    pub async fn wait_ready(&mut self, budget: Duration) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let deadline = Instant::now() + budget;
        loop {
            if !self.is_running() {
                bail!("{} exited during start-up:\n{}", self.name, self.logs());
            }
            if let Ok(response) = client.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} was not ready within {budget:?}:\n{}",
                    self.name,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

pub struct StackOptions {
    pub worker_capacity: u32,
    /// Extra environment for every service (e.g. shorter timeouts).
    pub extra_env: Vec<(String, String)>,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            worker_capacity: 4,
            extra_env: Vec::new(),
        }
    }
}

/// All four services, a database with one org and project (using the fake agent image), and an
/// instance-wide API token.
pub struct Stack {
    pub api_url: String,
    pub token: String,
    pub org: Org,
    pub project: Project,
    pub bus_prefix: String,
    pub worker_name: String,
    /// The services' key ring (`CADENZA_SECRET_KEKS`), one fresh key per stack.
    pub keyring: cadenza_crypto::KeyRing,
    pub services: Vec<ServiceProcess>,
    // Field order matters: services stop before containers are swept and the database dropped.
    _sweeper: ContainerSweeper,
    pub db: TestDatabase,
    log_dir: tempfile::TempDir,
}

impl Stack {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(StackOptions::default()).await
    }

    pub async fn start_with(options: StackOptions) -> anyhow::Result<Self> {
        let db = TestDatabase::create().await?;
        let bus_prefix = unique_name("t");
        let worker_name = unique_name("test-worker-");
        let sweeper = ContainerSweeper::for_worker(worker_name.clone());
        let log_dir = tempfile::tempdir()?;

        let mut conn = db.pool.acquire().await?;
        let org = orgs::create(&mut conn, &unique_name("org-"), "Test org").await?;
        let project = projects::create(
            &mut conn,
            org.id,
            "main",
            "Main project",
            &test_agent_settings(&fake_agent_image()),
            &Repository::default(),
        )
        .await?;
        // Like `make run`'s bootstrap: an instance administrator who owns the org.
        let (_, token) = crate::fixtures::user_with_token(
            &mut conn,
            &format!("{}@example.com", unique_name("admin-")),
            &[(org.id, Role::Owner)],
            true,
            None,
        )
        .await?;
        drop(conn);

        let (kek_id, kek) = cadenza_crypto::KeyRing::generate_key()?;
        let kek_spec = format!("{kek_id}:{}", secrecy::ExposeSecret::expose_secret(&kek));
        let keyring = cadenza_crypto::KeyRing::from_spec(&kek_spec)?;
        let ports = [free_port()?, free_port()?, free_port()?, free_port()?];
        let mut env: Vec<(String, String)> = vec![
            ("CADENZA_SECRET_KEKS".into(), kek_spec),
            // The runtime role, like production: the database is already migrated by its owner,
            // and no service gets the owner's credentials.
            ("CADENZA_DATABASE_URL".into(), db.url.clone()),
            ("CADENZA_MIGRATE_ON_START".into(), "false".into()),
            ("CADENZA_NATS_URL".into(), nats_url()),
            ("CADENZA_REDIS_URL".into(), redis_url()),
            ("CADENZA_BUS_PREFIX".into(), bus_prefix.clone()),
            (
                "CADENZA_API_LISTEN".into(),
                format!("127.0.0.1:{}", ports[0]),
            ),
            (
                "CADENZA_SCHEDULER_LISTEN".into(),
                format!("127.0.0.1:{}", ports[1]),
            ),
            (
                "CADENZA_WORKER_LISTEN".into(),
                format!("127.0.0.1:{}", ports[2]),
            ),
            (
                "CADENZA_LINEAR_SYNC_LISTEN".into(),
                format!("127.0.0.1:{}", ports[3]),
            ),
            ("CADENZA_WORKER_NAME".into(), worker_name.clone()),
            (
                "CADENZA_WORKER_CAPACITY".into(),
                options.worker_capacity.to_string(),
            ),
            ("CADENZA_HEARTBEAT_INTERVAL".into(), "1s".into()),
            ("CADENZA_LEASE_TTL".into(), "10s".into()),
            ("CADENZA_WORKER_LIVENESS".into(), "5s".into()),
            ("CADENZA_RECONCILE_INTERVAL".into(), "250ms".into()),
            ("CADENZA_SHUTDOWN_GRACE".into(), "5s".into()),
            ("CADENZA_IMAGE_PULL_TIMEOUT".into(), "20s".into()),
            // Tests that want follow-up turns keep workspaces with `extra_env`.
            ("CADENZA_WORKSPACE_IDLE_TTL".into(), "0s".into()),
            ("CADENZA_AGENT_IMAGES".into(), test_agent_images()),
        ];
        env.extend(options.extra_env);

        let mut services = vec![
            ServiceProcess::spawn("api", "cadenza-api", ports[0], &env, log_dir.path())?,
            ServiceProcess::spawn(
                "scheduler",
                "cadenza-scheduler",
                ports[1],
                &env,
                log_dir.path(),
            )?,
            ServiceProcess::spawn("worker", "cadenza-worker", ports[2], &env, log_dir.path())?,
            ServiceProcess::spawn(
                "linear-sync",
                "cadenza-linear-sync",
                ports[3],
                &env,
                log_dir.path(),
            )?,
        ];
        for service in &mut services {
            service.wait_ready(Duration::from_secs(60)).await?;
        }
        Ok(Self {
            api_url: format!("http://127.0.0.1:{}", ports[0]),
            token,
            org,
            project,
            bus_prefix,
            worker_name,
            keyring,
            services,
            _sweeper: sweeper,
            db,
            log_dir,
        })
    }

    /// A project of this stack's org with another agent image.
    pub async fn create_project(&self, slug: &str, image: &str) -> anyhow::Result<Project> {
        let mut conn = self.db.pool.acquire().await?;
        Ok(projects::create(
            &mut conn,
            self.org.id,
            slug,
            slug,
            &test_agent_settings(image),
            &Repository::default(),
        )
        .await?)
    }

    pub fn service(&mut self, name: &str) -> Option<&mut ServiceProcess> {
        self.services
            .iter_mut()
            .find(|service| service.name == name)
    }

    /// Every service's log, for assertions and for diagnosing a failed test.
    pub fn logs(&self) -> String {
        self.services
            .iter()
            .map(|service| format!("===== {} =====\n{}", service.name, service.logs()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn log_dir(&self) -> &Path {
        self.log_dir.path()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        // Stop the services first, so nothing recreates what is removed below.
        for service in &mut self.services {
            service.stop(Duration::from_secs(10));
        }
        // The bus prefix is unique to this stack: remove its stream so test runs do not pile up
        // JetStream state.
        let prefix = self.bus_prefix.clone();
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let connect = async_nats::ConnectOptions::new()
                    .connection_timeout(Duration::from_secs(2))
                    .connect(nats_url());
                if let Ok(Ok(client)) = tokio::time::timeout(Duration::from_secs(5), connect).await
                {
                    let bus = cadenza_bus::Bus::from_client(client, &prefix);
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), bus.delete_streams()).await;
                }
            });
        })
        .join();
    }
}

/// Agent settings small enough for a shared test machine.
/// The agent images a test stack allows: the test kit's fake agent, the real agent-server's local
/// build, images tests build themselves (`cadenza-test/…`), and a registry on a closed loopback
/// port (its pulls fail at once, without leaving the machine).
pub fn test_agent_images() -> String {
    let fake = fake_agent_image()
        .parse::<cadenza_domain::ImageRef>()
        .map(|image| image.name())
        .unwrap_or_else(|_| "cadenza/fake-agent-server".to_owned());
    format!("{fake}, cadenza/openhands-agent-server, cadenza-test/, 127.0.0.1:1/")
}

pub fn test_agent_settings(image: &str) -> AgentSettings {
    AgentSettings {
        cpus: 1.0,
        memory_mb: 512,
        pids_limit: 256,
        max_iterations: 100,
        ..AgentSettings::with_image(image)
    }
}
