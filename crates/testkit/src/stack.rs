//! Starts all four Cadenza services as separate processes against real Postgres, NATS, Redis and
//! Docker, each on a random loopback port, isolated from other tests by their own database, bus
//! prefix and worker name(s). By default the services use the shared test servers; a chaos test
//! points them at private ones it may kill (`StackOptions::database`, `StackOptions::nats_url`,
//! see `crate::chaos`), and may run several workers. Everything started here is stopped when the
//! `Stack` is dropped.

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
    /// The service's name in the stack (`api`, `scheduler`, `worker`, `worker-2`, …), also its
    /// log file's name.
    pub name: String,
    pub port: u16,
    pub log_path: PathBuf,
    binary: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl ServiceProcess {
    pub fn spawn(
        name: impl Into<String>,
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
        let name = name.into();
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

    /// Starts the process again (after `stop`, `kill`, `terminate` or a crash), with the same
    /// settings and log; a process still running is killed first.
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

    /// SIGKILL, as a crash would end it; returns once the process has exited. `restart` starts it
    /// again. Does nothing when it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM (a graceful shutdown) and returns at once: the process may still be
    /// draining, which `is_running` tells. `stop` waits instead; `restart` starts it again.
    pub fn terminate(&mut self) {
        if let Some(child) = &mut self.child
            && matches!(child.try_wait(), Ok(None))
        {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
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

/// How to start a `Stack`. Build it with `..Default::default()`: fields are added over time.
pub struct StackOptions {
    /// `CADENZA_WORKER_CAPACITY` of every worker.
    pub worker_capacity: u32,
    /// Extra environment for every service (e.g. shorter timeouts).
    pub extra_env: Vec<(String, String)>,
    /// The Postgres server the stack's database is created on, as (admin URL, runtime URL) for
    /// `TestDatabase::create_on` (e.g. a `chaos::PrivatePostgres`'s `admin_url()` and
    /// `runtime_url()`). `None`: the shared test server.
    pub database: Option<(String, String)>,
    /// The NATS URL every service gets (e.g. a `chaos::PrivateNats`'s `url()`). `None`: the
    /// shared test server.
    pub nats_url: Option<String>,
    /// How many worker processes to run (at least one): the first is the service `worker`
    /// named `Stack::worker_name`, the n-th the service `worker-<n>` named
    /// `<worker_name>-<n>`, each with its own listen port and otherwise the same environment.
    pub workers: u32,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            worker_capacity: 4,
            extra_env: Vec::new(),
            database: None,
            nats_url: None,
            workers: 1,
        }
    }
}

/// All four services (with `StackOptions::workers` workers), a database with one org and project
/// (using the fake agent image), and an instance-wide API token.
pub struct Stack {
    pub api_url: String,
    pub token: String,
    pub org: Org,
    pub project: Project,
    pub bus_prefix: String,
    /// The NATS URL the services were given.
    pub nats_url: String,
    /// The first worker's name (`CADENZA_WORKER_NAME` of the service `worker`).
    pub worker_name: String,
    /// Every worker's name, the first one first (the service `worker-<n>` has the n-th).
    pub worker_names: Vec<String>,
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
        if options.workers == 0 {
            bail!("a stack needs at least one worker (StackOptions::workers)");
        }
        let db = match &options.database {
            Some((admin_url, runtime_url)) => {
                TestDatabase::create_on(admin_url, runtime_url).await?
            }
            None => TestDatabase::create().await?,
        };
        let nats_url = options.nats_url.clone().unwrap_or_else(nats_url);
        let bus_prefix = unique_name("t");
        let worker_name = unique_name("test-worker-");
        let worker_names: Vec<String> = std::iter::once(worker_name.clone())
            .chain((2..=options.workers).map(|index| format!("{worker_name}-{index}")))
            .collect();
        let sweeper = ContainerSweeper::for_workers(worker_names.iter().cloned());
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
            ("CADENZA_NATS_URL".into(), nats_url.clone()),
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
        ];
        // Later entries win: each extra worker gets its own name and listen port.
        for (index, name) in worker_names.iter().enumerate().skip(1) {
            let port = free_port()?;
            let mut worker_env = env.clone();
            worker_env.push(("CADENZA_WORKER_NAME".into(), name.clone()));
            worker_env.push(("CADENZA_WORKER_LISTEN".into(), format!("127.0.0.1:{port}")));
            services.push(ServiceProcess::spawn(
                format!("worker-{}", index + 1),
                "cadenza-worker",
                port,
                &worker_env,
                log_dir.path(),
            )?);
        }
        services.push(ServiceProcess::spawn(
            "linear-sync",
            "cadenza-linear-sync",
            ports[3],
            &env,
            log_dir.path(),
        )?);
        for service in &mut services {
            service.wait_ready(Duration::from_secs(60)).await?;
        }
        Ok(Self {
            api_url: format!("http://127.0.0.1:{}", ports[0]),
            token,
            org,
            project,
            bus_prefix,
            nats_url,
            worker_name,
            worker_names,
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
        // JetStream state. Bounded (a chaos test's NATS may be down): at most 5 s to connect and
        // 5 s to delete. A comma-separated list of cluster URLs is split, as async-nats takes
        // one URL per string.
        let prefix = self.bus_prefix.clone();
        let servers: Vec<String> = self
            .nats_url
            .split(',')
            .map(|url| url.trim().to_owned())
            .filter(|url| !url.is_empty())
            .collect();
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
                    .connect(servers);
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
