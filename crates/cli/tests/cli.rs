//! The `cadenza` binary against a real stack: all four services as processes, real Postgres,
//! NATS, Redis and Docker, and the scripted fake agent-server. The CLI runs as a subprocess
//! with `CADENZA_SERVER`/`CADENZA_TOKEN` (or a config file under its own `XDG_CONFIG_HOME`).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cadenza_testkit::docker::fake_agent_image;
use cadenza_testkit::stack::Stack;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

const RUN_BUDGET: Duration = Duration::from_secs(120);
const HELLO: &str = "$ echo hello > hello.txt\n$ cat hello.txt\ndone";

/// How the tests run `cadenza`: a server, a token (or none) and a config directory of their own.
struct Cadenza {
    server: String,
    token: Option<String>,
    config_home: tempfile::TempDir,
}

/// What a finished `cadenza` printed.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Finished {
    fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    fn describe(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.status.code(),
            self.stdout,
            self.stderr
        )
    }
}

impl Cadenza {
    fn new(server: &str, token: Option<&str>) -> Self {
        Cadenza {
            server: server.to_owned(),
            token: token.map(str::to_owned),
            config_home: tempfile::tempdir().expect("config dir"),
        }
    }

    fn for_stack(stack: &Stack) -> Self {
        Self::new(&stack.api_url, Some(&stack.token))
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_cadenza"));
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.config_home.path())
            .env("XDG_CONFIG_HOME", self.config_home.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command.env("CADENZA_SERVER", &self.server);
        if let Some(token) = &self.token {
            command.env("CADENZA_TOKEN", token);
        }
        command
    }

    /// Runs `cadenza args…` to its end, with `stdin` as its standard input.
    async fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Finished {
        let mut child = self.command(args).spawn().expect("cadenza starts");
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(stdin.as_bytes())
            .await
            .expect("stdin written");
        drop(pipe);
        let output = tokio::time::timeout(RUN_BUDGET, child.wait_with_output())
            .await
            .expect("cadenza ends in time")
            .expect("cadenza output");
        Finished {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    async fn run(&self, args: &[&str]) -> Finished {
        self.run_with_stdin(args, "").await
    }

    /// Starts `cadenza args…` and hands its output over line by line while it runs.
    fn spawn(&self, args: &[&str]) -> Running {
        let mut child = self.command(args).spawn().expect("cadenza starts");
        drop(child.stdin.take());
        let (stdout_tx, stdout) = mpsc::unbounded_channel();
        let (stderr_tx, stderr) = mpsc::unbounded_channel();
        forward_lines(child.stdout.take().expect("stdout"), stdout_tx);
        forward_lines(child.stderr.take().expect("stderr"), stderr_tx);
        Running {
            child,
            stdout,
            stderr,
            stdout_seen: Vec::new(),
        }
    }
}

fn forward_lines(
    pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    sender: mpsc::UnboundedSender<String>,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
}

/// A `cadenza` still running.
struct Running {
    child: tokio::process::Child,
    stdout: mpsc::UnboundedReceiver<String>,
    stderr: mpsc::UnboundedReceiver<String>,
    stdout_seen: Vec<String>,
}

impl Running {
    /// Reads stdout until a line matches; every line read is kept.
    async fn wait_for_line(&mut self, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + RUN_BUDGET;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stdout.recv()).await {
                Ok(Some(line)) => {
                    self.stdout_seen.push(line.clone());
                    if matches(&line) {
                        return line;
                    }
                }
                Ok(None) => panic!(
                    "cadenza ended before the line came:\n{}",
                    self.stdout_seen.join("\n")
                ),
                Err(_) => panic!(
                    "no such line within {RUN_BUDGET:?}:\n{}",
                    self.stdout_seen.join("\n")
                ),
            }
        }
    }

    async fn finish(mut self) -> Finished {
        let status = tokio::time::timeout(RUN_BUDGET, self.child.wait())
            .await
            .expect("cadenza ends in time")
            .expect("exit status");
        // The pipes close when the process ends: what is left is read to the end.
        let mut stdout = std::mem::take(&mut self.stdout_seen);
        while let Ok(Some(line)) =
            tokio::time::timeout(Duration::from_secs(10), self.stdout.recv()).await
        {
            stdout.push(line);
        }
        let mut stderr = Vec::new();
        while let Ok(Some(line)) =
            tokio::time::timeout(Duration::from_secs(10), self.stderr.recv()).await
        {
            stderr.push(line);
        }
        Finished {
            status,
            stdout: stdout.join("\n"),
            stderr: stderr.join("\n"),
        }
    }
}

/// The API, asked directly, to check what the CLI did.
struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    fn new(stack: &Stack) -> Self {
        Api {
            base: format!("{}/api/v1", stack.api_url),
            token: stack.token.clone(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .no_proxy()
                .build()
                .expect("client"),
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Every journal seq of a run, as the API has them.
    async fn seqs(&self, run_id: &str) -> Vec<i64> {
        let (status, page) = self
            .get(&format!(
                "/runs/{run_id}/events?limit=1000&include_raw=false"
            ))
            .await;
        assert_eq!(status, 200, "{page}");
        seqs_of(page["items"].as_array().expect("items"))
    }
}

fn seqs_of(entries: &[Value]) -> Vec<i64> {
    entries
        .iter()
        .map(|entry| entry["seq"].as_i64().expect("seq"))
        .collect()
}

/// The journal entries a `--output json` follow printed, one per line.
fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}")))
        .collect()
}

/// Asserts a followed timeline is the run's whole journal, each entry once, in order.
async fn assert_whole_journal_once(api: &Api, run_id: &str, printed: &[Value]) {
    let printed_seqs = seqs_of(printed);
    let journal = api.seqs(run_id).await;
    assert_eq!(
        journal,
        (1..=journal.len() as i64).collect::<Vec<_>>(),
        "the API's journal is dense"
    );
    assert_eq!(printed_seqs, journal, "every entry exactly once, in order");
    assert!(
        printed.iter().all(|entry| entry["run_id"] == run_id),
        "only this run's entries"
    );
}

#[tokio::test]
async fn a_succeeding_run_started_with_follow_prints_its_timeline_once_and_exits_0() {
    let stack = Stack::start().await.expect("stack starts");
    let api = Api::new(&stack);
    let cadenza = Cadenza::for_stack(&stack);
    let project = stack.project.id.to_string();

    let followed = cadenza
        .run(&[
            "--output",
            "json",
            "runs",
            "start",
            "--project",
            &project,
            "--follow",
            HELLO,
        ])
        .await;
    assert_eq!(followed.code(), 0, "{}", followed.describe());
    let printed = json_lines(&followed.stdout);
    let run_id = printed[0]["run_id"].as_str().expect("run id").to_owned();
    assert_whole_journal_once(&api, &run_id, &printed).await;
    let last = printed.last().expect("entries");
    assert_eq!(last["kind"], "run_state");
    assert_eq!(last["payload"]["to"], "succeeded");
    assert!(
        printed.iter().any(
            |entry| entry["kind"] == "action" && entry["payload"]["command"] == "cat hello.txt"
        ),
        "the agent's actions are in the timeline"
    );

    // The same journal, read back in human form: one line per entry.
    let logs = cadenza.run(&["runs", "logs", &run_id]).await;
    assert_eq!(logs.code(), 0, "{}", logs.describe());
    assert_eq!(
        logs.stdout.lines().count(),
        printed.len(),
        "{}",
        logs.stdout
    );
    assert!(logs.stdout.contains("$ cat hello.txt"), "{}", logs.stdout);
    assert!(logs.stdout.contains("[exit 0] hello"), "{}", logs.stdout);
    assert!(
        logs.stdout.contains("running → succeeded"),
        "{}",
        logs.stdout
    );

    // Following a run that has ended prints it whole and exits with its outcome.
    let refollowed = cadenza
        .run(&["-o", "json", "runs", "logs", &run_id, "--follow"])
        .await;
    assert_eq!(refollowed.code(), 0, "{}", refollowed.describe());
    assert_whole_journal_once(&api, &run_id, &json_lines(&refollowed.stdout)).await;

    let diff = cadenza.run(&["runs", "diff", &run_id]).await;
    assert_eq!(diff.code(), 0, "{}", diff.describe());
    assert!(diff.stdout.contains("+hello"), "{}", diff.stdout);

    let by_slug = format!("{}/main", stack.org.slug);
    let listed = cadenza.run(&["runs", "list", "--project", &by_slug]).await;
    assert_eq!(listed.code(), 0, "{}", listed.describe());
    let header = listed.stdout.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("ID") && header.contains("STATE"),
        "{}",
        listed.stdout
    );
    assert!(listed.stdout.contains(&run_id), "{}", listed.stdout);

    let shown = cadenza.run(&["-o", "json", "runs", "show", &run_id]).await;
    let shown: Value = serde_json::from_str(&shown.stdout).expect("run JSON");
    assert_eq!(shown["state"], "succeeded");
    assert_eq!(shown["final_message"], "done");

    // The files the patch changes, and the run saved as an archive.
    let files = cadenza.run(&["runs", "files", &run_id]).await;
    assert_eq!(files.code(), 0, "{}", files.describe());
    assert!(
        files
            .stdout
            .lines()
            .any(|line| line.starts_with("added") && line.ends_with("hello.txt")),
        "{}",
        files.stdout
    );
    let dir = tempfile::tempdir().expect("dir");
    let archive = dir.path().join("run.tar.gz");
    let exported = cadenza
        .run(&[
            "runs",
            "export",
            &run_id,
            "--to",
            archive.to_str().expect("path"),
        ])
        .await;
    assert_eq!(exported.code(), 0, "{}", exported.describe());
    let bytes = std::fs::read(&archive).expect("the archive was written");
    assert_eq!(&bytes[..2], [0x1f, 0x8b], "gzip");

    // Retried: a new run of the same prompt, followed to its end.
    let retried = cadenza
        .run(&["-o", "json", "runs", "retry", &run_id, "--follow"])
        .await;
    assert_eq!(retried.code(), 0, "{}", retried.describe());
    let again = json_lines(&retried.stdout);
    let new_run = again[0]["run_id"].as_str().expect("run id").to_owned();
    assert_ne!(new_run, run_id, "a new run");
    assert_whole_journal_once(&api, &new_run, &again).await;
    assert_eq!(again.last().expect("entries")["payload"]["to"], "succeeded");
}

#[tokio::test]
async fn a_failing_run_exits_1_and_a_run_cancelled_while_followed_exits_2() {
    let stack = Stack::start().await.expect("stack starts");
    let api = Api::new(&stack);
    let cadenza = Cadenza::for_stack(&stack);

    // A project whose agent may take one step: a two-command prompt fails.
    let image = fake_agent_image();
    let created = cadenza
        .run(&[
            "projects",
            "create",
            "--org",
            &stack.org.slug,
            "--slug",
            "one-step",
            "--name",
            "One step",
            "--image",
            &image,
            "--max-iterations",
            "1",
        ])
        .await;
    assert_eq!(created.code(), 0, "{}", created.describe());
    let one_step = format!("{}/one-step", stack.org.slug);
    let failed = cadenza
        .run(&[
            "runs",
            "start",
            "--project",
            &one_step,
            "--follow",
            "$ echo one\n$ echo two\ndone",
        ])
        .await;
    assert_eq!(failed.code(), 1, "{}\n{}", failed.describe(), stack.logs());
    assert!(failed.stdout.contains("→ failed"), "{}", failed.describe());
    assert!(
        failed.stdout.contains("$ echo one"),
        "{}",
        failed.describe()
    );

    // A long run, followed in human form, cancelled through the API once its command runs.
    let project = stack.project.id.to_string();
    let mut following = cadenza.spawn(&[
        "runs",
        "start",
        "--project",
        &project,
        "--follow",
        "$ sleep 60\ndone",
    ]);
    following
        .wait_for_line(|line| line.contains("$ sleep 60"))
        .await;
    let (_, page) = api
        .get(&format!("/runs?project_id={project}&state=running"))
        .await;
    let run_id = page["items"][0]["id"]
        .as_str()
        .expect("a running run")
        .to_owned();
    let (status, receipt) = api.post(&format!("/runs/{run_id}/cancel")).await;
    assert!(matches!(status, 200 | 202), "{receipt}");
    let cancelled = following.finish().await;
    assert_eq!(cancelled.code(), 2, "{}", cancelled.describe());
    assert!(
        cancelled.stdout.contains("→ cancelled"),
        "{}",
        cancelled.describe()
    );
    assert!(
        cancelled.stderr.contains("was cancelled"),
        "{}",
        cancelled.describe()
    );
}

/// A TCP proxy on 127.0.0.1 in front of the API that can drop every connection it holds.
struct KillableProxy {
    addr: SocketAddr,
    kills: watch::Sender<u64>,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl KillableProxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (kills, watcher) = watch::channel(0u64);
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let mut killed = watcher.clone();
                // Only kills after this connection was accepted end it.
                killed.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = killed.changed() => {}
                    }
                    // Both sockets are dropped here, mid-response.
                });
            }
        });
        KillableProxy {
            addr,
            kills,
            accepted,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn kill_connections(&self) {
        self.kills.send_modify(|kills| *kills += 1);
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for KillableProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_follow_whose_connection_is_killed_mid_run_resumes_without_repeating_or_losing_entries() {
    let stack = Stack::start().await.expect("stack starts");
    let api = Api::new(&stack);
    let upstream: SocketAddr = stack
        .api_url
        .trim_start_matches("http://")
        .parse()
        .expect("api address");
    let proxy = KillableProxy::start(upstream).await;
    let cadenza = Cadenza::new(&proxy.url(), Some(&stack.token));
    let project = stack.project.id.to_string();

    let prompt = "$ sleep 1\n$ sleep 1\n$ sleep 1\n$ sleep 1\n$ echo after\nslept";
    let mut following = cadenza.spawn(&[
        "-o",
        "json",
        "runs",
        "start",
        "--project",
        &project,
        "--follow",
        prompt,
    ]);
    // Mid-run, twice: once the first command is announced, and once it has been observed.
    following
        .wait_for_line(|line| line.contains("\"kind\":\"action\"") && line.contains("sleep 1"))
        .await;
    let before_first_kill = proxy.accepted();
    proxy.kill_connections();
    following
        .wait_for_line(|line| line.contains("\"kind\":\"observation\""))
        .await;
    proxy.kill_connections();
    let finished = following.finish().await;

    assert_eq!(
        finished.code(),
        0,
        "{}\n{}",
        finished.describe(),
        stack.logs()
    );
    assert!(
        proxy.accepted() >= before_first_kill + 2,
        "the CLI reconnected after each kill ({} connections before, {} after)",
        before_first_kill,
        proxy.accepted()
    );
    let notices: Vec<Value> = finished
        .stderr
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .filter(|notice: &Value| notice["notice"] == "reconnecting")
        .collect();
    assert!(notices.len() >= 2, "{}", finished.describe());
    let printed = json_lines(&finished.stdout);
    let run_id = printed[0]["run_id"].as_str().expect("run id").to_owned();
    assert_whole_journal_once(&api, &run_id, &printed).await;
    assert_eq!(
        printed.last().expect("entries")["payload"]["to"],
        "succeeded"
    );
}

#[tokio::test]
async fn secrets_are_read_from_stdin_and_never_appear_in_arguments_or_output() {
    let stack = Stack::start().await.expect("stack starts");
    let api = Api::new(&stack);
    let cadenza = Cadenza::for_stack(&stack);
    let value = "s3cr3t-value-from-stdin";
    let org = stack.org.slug.clone();

    // There is no way to give the value as an argument.
    let refused = cadenza
        .run(&["secrets", "set", "CLI_SECRET", "--org", &org, value])
        .await;
    assert_eq!(refused.code(), 64, "{}", refused.describe());

    let args = ["secrets", "set", "CLI_SECRET", "--org", org.as_str()];
    assert!(!args.contains(&value));
    let set = cadenza.run_with_stdin(&args, &format!("{value}\n")).await;
    assert_eq!(set.code(), 0, "{}", set.describe());
    assert!(set.stdout.contains("version 1"), "{}", set.describe());
    let again = cadenza
        .run_with_stdin(
            &["-o", "json", "secrets", "set", "CLI_SECRET", "--org", &org],
            value,
        )
        .await;
    assert_eq!(again.code(), 0, "{}", again.describe());
    let meta: Value = serde_json::from_str(&again.stdout).expect("secret JSON");
    assert_eq!(meta["version"], 2);

    let (status, stored) = api
        .get(&format!("/orgs/{}/secrets/CLI_SECRET", stack.org.id))
        .await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["version"], 2);

    // A project secret, the project named by its slugs.
    let project = format!("{org}/main");
    let project_set = cadenza
        .run_with_stdin(
            &["secrets", "set", "CLI_SECRET", "--project", &project],
            value,
        )
        .await;
    assert_eq!(project_set.code(), 0, "{}", project_set.describe());
    let listed = cadenza
        .run(&["secrets", "list", "--project", &project])
        .await;
    assert_eq!(listed.code(), 0, "{}", listed.describe());
    assert!(listed.stdout.contains("CLI_SECRET"), "{}", listed.stdout);
    assert!(listed.stdout.contains("project"), "{}", listed.stdout);

    let empty = cadenza
        .run_with_stdin(&["secrets", "set", "EMPTY", "--org", &org], "\n")
        .await;
    assert_eq!(empty.code(), 64, "{}", empty.describe());

    let deleted = cadenza
        .run(&["secrets", "delete", "CLI_SECRET", "--org", &org])
        .await;
    assert_eq!(deleted.code(), 0, "{}", deleted.describe());
    let (status, _) = api
        .get(&format!("/orgs/{}/secrets/CLI_SECRET", stack.org.id))
        .await;
    assert_eq!(status, 404);

    for output in [
        &refused,
        &set,
        &again,
        &project_set,
        &listed,
        &empty,
        &deleted,
    ] {
        assert!(!output.stdout.contains(value), "{}", output.describe());
        assert!(!output.stderr.contains(value), "{}", output.describe());
    }
}

#[tokio::test]
async fn login_stores_a_private_config_that_later_commands_use_and_errors_say_what_went_wrong() {
    let stack = Stack::start().await.expect("stack starts");
    // No CADENZA_TOKEN: only what login stores.
    let cadenza = Cadenza::new(&stack.api_url, None);
    let config = cadenza
        .config_home
        .path()
        .join("cadenza")
        .join("config.toml");

    let wrong = cadenza
        .run_with_stdin(&["login", "--server", &stack.api_url], "cdz_not_a_token\n")
        .await;
    assert_eq!(wrong.code(), 4, "{}", wrong.describe());
    assert!(wrong.stderr.contains("HTTP 401"), "{}", wrong.describe());
    assert!(!config.exists(), "a refused token is not stored");

    let login = cadenza
        .run_with_stdin(
            &["login", "--server", &format!("{}/api/v1/", stack.api_url)],
            &format!("{}\n", stack.token),
        )
        .await;
    assert_eq!(login.code(), 0, "{}", login.describe());
    assert!(login.stdout.contains("logged in"), "{}", login.describe());
    assert!(!login.stdout.contains(&stack.token) && !login.stderr.contains(&stack.token));
    let mode = std::fs::metadata(&config)
        .expect("config")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let stored = std::fs::read_to_string(&config).expect("config");
    assert!(stored.contains(&stack.token), "{stored}");

    // Without CADENZA_SERVER either, the file is all there is.
    let mut whoami = cadenza.command(&["whoami"]);
    whoami.env_remove("CADENZA_SERVER");
    let whoami = whoami.output().await.expect("whoami");
    assert!(whoami.status.success(), "{whoami:?}");
    assert!(String::from_utf8_lossy(&whoami.stdout).contains(&stack.org.slug));

    let orgs = cadenza.run(&["orgs", "list"]).await;
    assert_eq!(orgs.code(), 0, "{}", orgs.describe());
    assert!(orgs.stdout.contains(&stack.org.slug), "{}", orgs.stdout);
    let health = cadenza.run(&["admin", "health"]).await;
    assert_eq!(health.code(), 0, "{}", health.describe());
    assert!(health.stdout.contains("postgres"), "{}", health.stdout);

    // A problem document: title, detail, status; as JSON on stderr with --output json.
    let missing = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
    let shown = cadenza.run(&["runs", "show", missing]).await;
    assert_eq!(shown.code(), 3, "{}", shown.describe());
    assert!(
        shown.stderr.starts_with("error: ") && shown.stderr.contains("(HTTP 404)"),
        "{}",
        shown.describe()
    );
    let shown = cadenza.run(&["-o", "json", "runs", "show", missing]).await;
    assert_eq!(shown.code(), 3, "{}", shown.describe());
    let error: Value = serde_json::from_str(shown.stderr.trim()).expect("error JSON");
    assert_eq!(error["error"]["status"], 404);
    assert_eq!(error["error"]["code"], "not_found");

    // The environment wins over the file.
    let overridden = Cadenza::new(&stack.api_url, Some("cdz_revoked_or_wrong"));
    let overridden_home = overridden.config_home.path().join("cadenza");
    std::fs::create_dir_all(&overridden_home).expect("dir");
    std::fs::copy(&config, overridden_home.join("config.toml")).expect("copy");
    let refused = overridden.run(&["orgs", "list"]).await;
    assert_eq!(refused.code(), 4, "{}", refused.describe());

    let logout = cadenza.run(&["logout"]).await;
    assert_eq!(logout.code(), 0, "{}", logout.describe());
    assert!(!config.exists());
    let after = cadenza.run(&["orgs", "list"]).await;
    assert_eq!(after.code(), 4, "{}", after.describe());
    assert!(
        after.stderr.contains("not logged in"),
        "{}",
        after.describe()
    );
}

#[tokio::test]
async fn an_unreachable_server_is_named_in_the_error_and_exits_5() {
    // A port that was just free on loopback: nothing listens there.
    let port = cadenza_testkit::stack::free_port().expect("port");
    let server = format!("http://127.0.0.1:{port}");
    let cadenza = Cadenza::new(&server, Some("cdz_anything"));
    let listed = cadenza.run(&["runs", "list"]).await;
    assert_eq!(listed.code(), 5, "{}", listed.describe());
    assert!(
        listed
            .stderr
            .contains(&format!("could not reach the server at {server}")),
        "{}",
        listed.describe()
    );
    let usage = cadenza.run(&["runs", "start", "no prompt flag"]).await;
    assert_eq!(usage.code(), 64, "{}", usage.describe());
}
