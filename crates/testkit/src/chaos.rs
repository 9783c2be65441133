//! Private, restartable infrastructure for chaos tests: a Postgres cluster, a NATS server and a
//! three-node NATS JetStream cluster of the test's own, which the test may kill and start again
//! mid-run. Other tests run in parallel against the shared servers of `scripts/infra.sh`, so a
//! chaos test never restarts those: it points a `Stack` (see `StackOptions::database` and
//! `StackOptions::nats_url`) at one of these instead.
//!
//! Everything listens on loopback only (the cluster's nodes run in containers on a Docker network
//! the test creates, with their ports published on 127.0.0.1). Every value stops what it started
//! and removes its data when dropped, also when the test panics; every wait has a deadline.

use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sqlx::{Connection, PgConnection};

use crate::infra::unique_name;
use crate::stack::free_port;

/// How long a server may take to start (or start again) before the test fails.
const START_BUDGET: Duration = Duration::from_secs(60);
/// How long one helper command (`pg_ctl`, `docker`) may take.
const COMMAND_BUDGET: Duration = Duration::from_secs(60);
/// How often a condition is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// A fresh free port may be taken by someone else before the server binds it: try a few.
const PORT_ATTEMPTS: usize = 3;

/// The label on every Docker object `NatsCluster` creates.
pub const NATS_CLUSTER_LABEL: &str = "io.cadenza.test=nats-cluster";

/// The three-node cluster's image, built by `scripts/build-images.sh`. Override with
/// `CADENZA_TEST_NATS_IMAGE`.
pub fn nats_image() -> String {
    std::env::var("CADENZA_TEST_NATS_IMAGE").unwrap_or_else(|_| "cadenza/nats:dev".to_owned())
}

/// Whether this process runs as root (Postgres refuses to, so its tools then run as `postgres`).
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|metadata| metadata.uid() == 0)
}

/// Runs `command` to completion within `budget`; fails, with its stderr, when it fails.
async fn run(command: Command, what: &str, budget: Duration) -> anyhow::Result<Output> {
    let mut command = tokio::process::Command::from(command);
    command.kill_on_drop(true).stdin(Stdio::null());
    let output = tokio::time::timeout(budget, command.output())
        .await
        .with_context(|| format!("{what} did not finish within {budget:?}"))?
        .with_context(|| format!("running {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {} {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        );
    }
    Ok(output)
}

/// Polls `condition` every `POLL_INTERVAL` until it holds; fails after `budget` with `what` and
/// the last error the condition gave.
async fn wait_until<F, Fut>(what: &str, budget: Duration, mut condition: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + budget;
    let mut last_error = None;
    loop {
        match condition().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(error) => last_error = Some(error),
        }
        if Instant::now() > deadline {
            match last_error {
                Some(error) => bail!("{what} within {budget:?}; last error: {error:#}"),
                None => bail!("{what} within {budget:?}"),
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Whether a server failed because its port was taken (by someone who bound it after
/// `free_port` found it free): then a start is worth retrying on another port.
fn port_was_taken(error: &anyhow::Error) -> bool {
    let message = format!("{error:#}").to_lowercase();
    message.contains("address already in use") || message.contains("port is already allocated")
}

/// The last lines of a log file, for error messages.
fn log_tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Postgres
// ---------------------------------------------------------------------------------------------

/// The newest PostgreSQL server binaries Debian installed (`/usr/lib/postgresql/<version>/bin`),
/// as `scripts/infra.sh` finds them.
fn postgres_bin_dir() -> anyhow::Result<PathBuf> {
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context(
            "PostgreSQL is not installed under /usr/lib/postgresql; run `scripts/infra.sh up`",
        )?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry
                .file_name()
                .to_str()?
                .split('.')
                .next()?
                .parse()
                .ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    candidates.sort();
    candidates
        .pop()
        .map(|(_, bin)| bin)
        .context("no PostgreSQL binaries under /usr/lib/postgresql/*/bin")
}

/// The group role the migrations grant privileges to and the runtime login role in it, with the
/// semantics of `runtime_roles_sql` in `scripts/infra.sh`: each statement tolerates the role
/// existing already.
fn runtime_roles_sql(user: &str, password: &str) -> String {
    format!(
        "set client_min_messages = warning;\n\
         do $$ begin create role cadenza_runtime nologin; exception when duplicate_object then null; end $$;\n\
         do $$ begin create role \"{user}\" login password '{password}'; exception when duplicate_object then null; end $$;\n\
         grant cadenza_runtime to \"{user}\";"
    )
}

/// A throwaway PostgreSQL cluster of one test's own, on a free loopback port, with the roles
/// `scripts/infra.sh` makes: the migration role `cadenza` (CREATEDB, owner of the database
/// `cadenza`), the group role `cadenza_runtime` and the runtime login role `cadenza_app` in it.
/// Authentication is `trust`, as on the shared server.
///
/// `kill` crashes it (an immediate shutdown: no checkpoint, crash recovery on the next start) and
/// `start_again` brings it back on the same port with the same data. Dropping it stops it at once
/// and deletes its data.
pub struct PrivatePostgres {
    port: u16,
    bin: PathBuf,
    data: PathBuf,
    log_path: PathBuf,
    as_root: bool,
    // Last: deleted after `drop` has stopped the server.
    dir: tempfile::TempDir,
}

impl PrivatePostgres {
    const MIGRATION_USER: &'static str = "cadenza";
    const RUNTIME_USER: &'static str = "cadenza_app";
    const DATABASE: &'static str = "cadenza";

    /// Creates the cluster (`initdb`), starts it, and makes the roles and the `cadenza` database.
    /// Returns once the server accepts connections. Runs Postgres' tools as the `postgres` user
    /// when the test runs as root.
    pub async fn start() -> anyhow::Result<Self> {
        let bin = postgres_bin_dir()?;
        let as_root = running_as_root();
        let dir = tempfile::Builder::new()
            .prefix("cadenza-chaos-postgres-")
            .tempdir()
            .context("creating the private Postgres directory")?;
        if as_root {
            let mut chown = Command::new("chown");
            chown.arg("postgres:postgres").arg(dir.path());
            run(
                chown,
                "chown postgres of the data directory",
                COMMAND_BUDGET,
            )
            .await?;
        }
        let data = dir.path().join("data");
        let mut postgres = Self {
            port: 0,
            bin,
            log_path: dir.path().join("server.log"),
            data,
            as_root,
            dir,
        };

        let mut initdb = postgres.tool("initdb");
        initdb
            .arg("-D")
            .arg(&postgres.data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
            .args(["--locale=C.UTF-8", "--no-sync"]);
        run(initdb, "initdb of the private Postgres", COMMAND_BUDGET).await?;
        // A kill here is a crash of Postgres, not of the machine: what it wrote is in the page
        // cache either way, so fsync would only make the tests slower. No Unix socket: clients
        // connect over loopback TCP, and `pg_ctl -w` reads the server's state from its pid file.
        let settings = "\n# cadenza chaos test kit\n\
                        listen_addresses = '127.0.0.1'\n\
                        unix_socket_directories = ''\n\
                        max_connections = 200\n\
                        shared_buffers = 32MB\n\
                        fsync = off\n";
        std::fs::OpenOptions::new()
            .append(true)
            .open(postgres.data.join("postgresql.conf"))
            .and_then(|mut file| std::io::Write::write_all(&mut file, settings.as_bytes()))
            .context("configuring the private Postgres")?;

        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            postgres.port = free_port()?;
            match postgres.pg_ctl_start().await {
                Ok(()) => {
                    last_error = None;
                    break;
                }
                Err(error) if port_was_taken(&error) => last_error = Some(error),
                Err(error) => return Err(error),
            }
        }
        if let Some(error) = last_error {
            return Err(error);
        }

        let mut superuser = postgres.connect_superuser().await?;
        let (migration_user, runtime_user, database) =
            (Self::MIGRATION_USER, Self::RUNTIME_USER, Self::DATABASE);
        sqlx::raw_sql(&format!(
            "create role \"{migration_user}\" login createdb password '{migration_user}'"
        ))
        .execute(&mut superuser)
        .await
        .context("creating the migration role")?;
        sqlx::raw_sql(&format!(
            "create database \"{database}\" owner \"{migration_user}\""
        ))
        .execute(&mut superuser)
        .await
        .context("creating the cadenza database")?;
        sqlx::raw_sql(&runtime_roles_sql(runtime_user, runtime_user))
            .execute(&mut superuser)
            .await
            .context("creating the runtime roles")?;
        superuser.close().await.ok();
        Ok(postgres)
    }

    /// The loopback port the server listens on; the same after `start_again`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The migration role's URL of the `cadenza` database: what `TestDatabase::create_on` takes
    /// as its admin URL (CREATEDB, owns what it creates).
    pub fn admin_url(&self) -> String {
        format!(
            "postgres://{user}:{user}@127.0.0.1:{}/{}",
            self.port,
            Self::DATABASE,
            user = Self::MIGRATION_USER
        )
    }

    /// The runtime role's URL of the `cadenza` database (a member of `cadenza_runtime` that owns
    /// nothing); `TestDatabase::create_on` uses only its user and password.
    pub fn runtime_url(&self) -> String {
        format!(
            "postgres://{user}:{user}@127.0.0.1:{}/{}",
            self.port,
            Self::DATABASE,
            user = Self::RUNTIME_USER
        )
    }

    /// The superuser's URL, for fixtures that must do what neither role may (e.g. end other
    /// sessions).
    pub fn superuser_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Crashes the server: an immediate shutdown, which ends every session at once without a
    /// checkpoint, so the next start runs crash recovery. Returns once the server is gone.
    pub async fn kill(&self) -> anyhow::Result<()> {
        let mut stop = self.tool("pg_ctl");
        stop.arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "-t", "30", "stop"]);
        run(stop, "pg_ctl stop -m immediate", COMMAND_BUDGET)
            .await
            .map(drop)
    }

    /// Starts the server again after `kill`, on the same port with the same data; returns once it
    /// accepts connections (crash recovery done). Fails when it is already running or the port
    /// has been taken meanwhile.
    pub async fn start_again(&self) -> anyhow::Result<()> {
        self.pg_ctl_start().await
    }

    /// Whether the server answers a query now (within two seconds).
    pub async fn is_up(&self) -> bool {
        let probe = async {
            let mut connection = PgConnection::connect(&self.superuser_url()).await?;
            sqlx::query("select 1").execute(&mut connection).await?;
            connection.close().await
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(2), probe).await,
            Ok(Ok(()))
        )
    }

    /// The server's log.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The directory holding the data and the log (deleted on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// One of Postgres' tools, as the `postgres` user when the test runs as root (as
    /// `scripts/infra.sh`'s `as_pg`).
    fn tool(&self, name: &str) -> Command {
        let program = self.bin.join(name);
        if self.as_root {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    async fn pg_ctl_start(&self) -> anyhow::Result<()> {
        let mut start = self.tool("pg_ctl");
        start
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log_path)
            .args(["-o", &format!("-p {}", self.port)])
            .args(["-w", "-t", "60", "start"]);
        run(start, "pg_ctl start", START_BUDGET)
            .await
            .with_context(|| {
                format!(
                    "starting the private Postgres on 127.0.0.1:{}; its log:\n{}",
                    self.port,
                    log_tail(&self.log_path)
                )
            })
            .map(drop)
    }

    async fn connect_superuser(&self) -> anyhow::Result<PgConnection> {
        let url = self.superuser_url();
        let deadline = Instant::now() + START_BUDGET;
        loop {
            match PgConnection::connect(&url).await {
                Ok(connection) => return Ok(connection),
                Err(error) if Instant::now() > deadline => {
                    return Err(error).context("connecting to the private Postgres as superuser");
                }
                Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
            }
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "===== private postgres (127.0.0.1:{}) =====\n{}",
                self.port,
                log_tail(&self.log_path)
            );
        }
        let mut stop = self.tool("pg_ctl");
        stop.arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "-t", "10", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = stop.status();
        // A postmaster that did not stop in time is killed, so the data can go.
        if let Ok(pid_file) = std::fs::read_to_string(self.data.join("postmaster.pid"))
            && let Some(pid) = pid_file.lines().next()
        {
            let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One NATS server
// ---------------------------------------------------------------------------------------------

/// Debian's `nats-server` (installed by `scripts/infra.sh`).
fn nats_server_binary() -> anyhow::Result<PathBuf> {
    let output = std::process::Command::new("sh")
        .args(["-c", "command -v nats-server"])
        .env(
            "PATH",
            format!(
                "{}:/usr/sbin:/sbin",
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .output()
        .context("looking for nats-server")?;
    let path = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if !output.status.success() || path.is_empty() {
        bail!("nats-server is not installed; `scripts/infra.sh up` installs it");
    }
    Ok(PathBuf::from(path))
}

/// Whether a JetStream-enabled NATS server answers on `url`: connects and asks `$JS.API.INFO`
/// (which only a server with JetStream ready answers). Raw, because async-nats 0.51's account
/// type does not parse nats-server 2.9's answer.
async fn jetstream_answers(url: &str) -> anyhow::Result<bool> {
    let probe = async {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(1))
            .connect(url)
            .await?;
        let answer = client.request("$JS.API.INFO", "".into()).await?;
        let answer: serde_json::Value = serde_json::from_slice(&answer.payload)?;
        if let Some(error) = answer.get("error") {
            bail!("JetStream answered with an error: {error}");
        }
        client.drain().await.ok();
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(3), probe)
        .await
        .context("no answer within 3 s")??;
    Ok(true)
}

/// A `nats-server -js` process of one test's own on a free loopback port, its JetStream store in a
/// temporary directory. `kill` is a SIGKILL (a crash: what the file store had not yet written is
/// lost), `start_again` brings it back on the same port with the same store,
/// `start_again_with_empty_store` on the same port with none (a server replaced by a new one).
/// Dropping it kills it and deletes the store.
pub struct PrivateNats {
    port: u16,
    binary: PathBuf,
    store: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    // Last: deleted after `drop` has killed the server.
    _dir: tempfile::TempDir,
}

impl PrivateNats {
    /// Starts the server; returns once JetStream answers.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("cadenza-chaos-nats-")
            .tempdir()
            .context("creating the private NATS directory")?;
        let mut nats = Self {
            port: 0,
            binary: nats_server_binary()?,
            store: dir.path().join("store"),
            log_path: dir.path().join("nats.log"),
            child: None,
            _dir: dir,
        };
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            nats.port = free_port()?;
            match nats.spawn_and_wait().await {
                Ok(()) => return Ok(nats),
                Err(error) if port_was_taken(&error) => last_error = Some(error),
                Err(error) => return Err(error),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("the private NATS did not start")))
    }

    /// `nats://127.0.0.1:<port>`, the same after every restart.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the process is running (it may not be ready yet).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL; returns once the process has exited. Does nothing when it is not running.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().context("waiting for the killed nats-server")?;
        }
        Ok(())
    }

    /// Starts the server again after `kill`, on the same port with the same store; returns once
    /// JetStream answers (streams recovered). Fails when it is running.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            bail!("the private NATS is running; kill it first");
        }
        self.spawn_and_wait().await
    }

    /// Deletes the store, then starts the server again on the same port: every stream, consumer
    /// and message is gone, as with a server replaced by a fresh one. Fails when it is running.
    pub async fn start_again_with_empty_store(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            bail!("the private NATS is running; kill it first");
        }
        if self.store.exists() {
            std::fs::remove_dir_all(&self.store).context("deleting the JetStream store")?;
        }
        self.spawn_and_wait().await
    }

    /// The server's log (every start appends to it).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The JetStream store directory.
    pub fn store_dir(&self) -> &Path {
        &self.store
    }

    async fn spawn_and_wait(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let child = Command::new(&self.binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-sd")
            .arg(&self.store)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.child = Some(child);
        let url = self.url();
        let deadline = Instant::now() + START_BUDGET;
        let ready = loop {
            if !self.is_running() {
                break Err(anyhow::anyhow!("nats-server exited during start-up"));
            }
            match jetstream_answers(&url).await {
                Ok(_) => break Ok(()),
                Err(error) if Instant::now() > deadline => {
                    break Err(error.context(format!(
                        "the private NATS did not answer with JetStream within {START_BUDGET:?}"
                    )));
                }
                Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
            }
        };
        if let Err(error) = ready {
            self.kill().await.ok();
            return Err(error.context(format!(
                "starting the private NATS on {url}; its log:\n{}",
                log_tail(&self.log_path)
            )));
        }
        Ok(())
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "===== private nats ({}) =====\n{}",
                self.url(),
                log_tail(&self.log_path)
            );
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A three-node NATS cluster
// ---------------------------------------------------------------------------------------------

/// One node of a `NatsCluster`.
struct ClusterNode {
    server_name: String,
    container: String,
    client_port: u16,
    monitor_port: u16,
    running: bool,
}

/// A three-node NATS JetStream cluster of one test's own: containers of `nats_image()` on a
/// Docker network the test creates (labelled `io.cadenza.test=nats-cluster`), joined by routes
/// on that network. Each node publishes its client port and its monitoring port on loopback
/// (fixed for the cluster's life, so URLs stay valid across restarts) and advertises its client
/// URL as that loopback address, so a client that learns the other nodes from the one it is
/// connected to can reach them. JetStream stores live inside the containers and survive
/// `kill`/`start_node`.
///
/// Dropping it removes the containers and the network.
pub struct NatsCluster {
    network: String,
    nodes: Vec<ClusterNode>,
    http: reqwest::Client,
}

impl NatsCluster {
    pub const NODES: usize = 3;

    /// Creates the network and the three nodes; returns once every node is healthy and the
    /// cluster has a JetStream meta leader. Fails, saying so, when the image is missing.
    pub async fn start() -> anyhow::Result<Self> {
        let image = nats_image();
        let mut inspect = Command::new("docker");
        inspect.args(["image", "inspect", "--format", "{{.Id}}", &image]);
        run(inspect, "docker image inspect", COMMAND_BUDGET)
            .await
            .with_context(|| {
                format!("the image {image} is missing; run scripts/build-images.sh")
            })?;

        let id = unique_name("");
        let network = format!("cadenza-test-nats-{id}");
        let mut create = Command::new("docker");
        create
            .args(["network", "create", "--label", NATS_CLUSTER_LABEL])
            .arg(&network);
        run(create, "docker network create", COMMAND_BUDGET).await?;
        // From here on, drop removes whatever was made.
        let mut cluster = Self {
            network,
            nodes: Vec::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()?,
        };
        let containers: Vec<String> = (1..=Self::NODES)
            .map(|index| format!("cadenza-test-nats-{id}-{index}"))
            .collect();
        let routes = containers
            .iter()
            .map(|container| format!("nats://{container}:6222"))
            .collect::<Vec<_>>()
            .join(",");
        for (index, container) in containers.iter().enumerate() {
            let server_name = format!("n{}", index + 1);
            let mut last_error = None;
            for _ in 0..PORT_ATTEMPTS {
                let (client_port, monitor_port) = (free_port()?, free_port()?);
                let mut docker_run = Command::new("docker");
                docker_run
                    .args(["run", "-d", "--name", container])
                    .args(["--label", NATS_CLUSTER_LABEL])
                    .args(["--network", &cluster.network])
                    .args(["-p", &format!("127.0.0.1:{client_port}:4222")])
                    .args(["-p", &format!("127.0.0.1:{monitor_port}:8222")])
                    .arg(&image)
                    .args(["-js", "-sd", "/data", "-p", "4222", "-m", "8222"])
                    .args(["--server_name", &server_name])
                    .args(["--cluster_name", &format!("cadenza-{id}")])
                    .args(["--cluster", "nats://0.0.0.0:6222", "--routes", &routes])
                    .args(["--client_advertise", &format!("127.0.0.1:{client_port}")]);
                match run(docker_run, "docker run (nats node)", COMMAND_BUDGET).await {
                    Ok(_) => {
                        cluster.nodes.push(ClusterNode {
                            server_name: server_name.clone(),
                            container: container.clone(),
                            client_port,
                            monitor_port,
                            running: true,
                        });
                        last_error = None;
                        break;
                    }
                    Err(error) => {
                        // A failed start (e.g. a port taken meanwhile) leaves a created
                        // container behind.
                        let mut remove = Command::new("docker");
                        remove.args(["rm", "-f", container]);
                        run(remove, "docker rm", COMMAND_BUDGET).await.ok();
                        if !port_was_taken(&error) {
                            return Err(error);
                        }
                        last_error = Some(error);
                    }
                }
            }
            if let Some(error) = last_error {
                return Err(error);
            }
        }
        cluster.wait_healthy().await?;
        Ok(cluster)
    }

    /// The three client URLs, comma-separated (`nats://127.0.0.1:<p1>,nats://…`). async-nats
    /// 0.51 does NOT accept this form as one `&str` (it parses it as a single URL and fails);
    /// give it `urls()` (a `Vec<String>` or slice) instead.
    pub fn url(&self) -> String {
        self.urls().join(",")
    }

    /// Every node's client URL, in node order: what `async_nats::connect` takes for a cluster.
    pub fn urls(&self) -> Vec<String> {
        (0..self.nodes.len())
            .map(|node| self.node_url(node))
            .collect()
    }

    /// One node's client URL (fixed for the cluster's life).
    pub fn node_url(&self, node: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[node].client_port)
    }

    /// The node's server name (`n1`, `n2`, `n3`), as JetStream reports leaders and peers.
    pub fn server_name(&self, node: usize) -> &str {
        &self.nodes[node].server_name
    }

    /// The index of the node with this server name (e.g. a stream's leader).
    pub fn node_named(&self, server_name: &str) -> Option<usize> {
        self.nodes
            .iter()
            .position(|node| node.server_name == server_name)
    }

    /// Kills the node's container (`docker kill`: SIGKILL); its store stays in the container.
    pub async fn kill(&mut self, node: usize) -> anyhow::Result<()> {
        let container = self.node(node)?.container.clone();
        let mut kill = Command::new("docker");
        kill.args(["kill", &container]);
        run(kill, "docker kill (nats node)", COMMAND_BUDGET).await?;
        self.nodes[node].running = false;
        Ok(())
    }

    /// Starts a killed node's container again (same ports, same store); returns once every
    /// running node, this one included, is healthy (JetStream current) and the cluster has a
    /// meta leader.
    pub async fn start_node(&mut self, node: usize) -> anyhow::Result<()> {
        let container = self.node(node)?.container.clone();
        let mut start = Command::new("docker");
        start.args(["start", &container]);
        run(start, "docker start (nats node)", COMMAND_BUDGET).await?;
        self.nodes[node].running = true;
        self.wait_healthy().await
    }

    /// The node's container log (`docker logs`).
    pub fn logs(&self, node: usize) -> String {
        let Some(node) = self.nodes.get(node) else {
            return String::new();
        };
        Command::new("docker")
            .args(["logs", "--tail", "200", &node.container])
            .output()
            .map(|output| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                )
            })
            .unwrap_or_default()
    }

    fn node(&self, node: usize) -> anyhow::Result<&ClusterNode> {
        self.nodes.get(node).with_context(|| {
            format!(
                "the cluster has no node {node} (nodes are 0..{})",
                Self::NODES
            )
        })
    }

    /// Waits until every running node answers `/healthz` with 200 (in a cluster: JetStream has a
    /// meta leader and this node's streams are current) and reports a meta leader on `/jsz`.
    async fn wait_healthy(&self) -> anyhow::Result<()> {
        for node in self.nodes.iter().filter(|node| node.running) {
            let base = format!("http://127.0.0.1:{}", node.monitor_port);
            let what = format!(
                "NATS node {} ({}) did not become healthy with a meta leader",
                node.server_name, node.container
            );
            let waited = wait_until(&what, START_BUDGET, || async {
                let health = self.http.get(format!("{base}/healthz")).send().await?;
                if !health.status().is_success() {
                    return Ok(false);
                }
                let jsz: serde_json::Value = self
                    .http
                    .get(format!("{base}/jsz"))
                    .send()
                    .await?
                    .json()
                    .await?;
                let leader = jsz["meta_cluster"]["leader"].as_str().unwrap_or_default();
                Ok(!leader.is_empty())
            })
            .await;
            if let Err(error) = waited {
                let index = self.node_named(&node.server_name).unwrap_or_default();
                return Err(error.context(format!("its log:\n{}", self.logs(index))));
            }
        }
        Ok(())
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (index, node) in self.nodes.iter().enumerate() {
                eprintln!(
                    "===== nats cluster node {} ({}) =====\n{}",
                    node.server_name,
                    node.container,
                    self.logs(index)
                );
            }
        }
        let containers: Vec<&str> = self
            .nodes
            .iter()
            .map(|node| node.container.as_str())
            .collect();
        if !containers.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f", "-v"])
                .args(&containers)
                .output();
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &self.network])
            .output();
    }
}
