//! Secrets end to end: stored through the API, decrypted by the worker at provisioning, handed
//! to the agent's shell and the LLM configuration, and redacted from everything Cadenza keeps or
//! sends (the canary test); and runs whose secret is missing or tampered with fail with a reason.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use cadenza_e2e::Api;
use cadenza_e2e::services::{FakeLlm, PrivateGitServer};
use cadenza_e2e::sse::SseReader;
use cadenza_testkit::docker::containers_with_label;
use cadenza_testkit::infra::nats_url;
use cadenza_testkit::stack::{Stack, StackOptions};
use futures::StreamExt;
use serde_json::{Value, json};

const RUN_BUDGET: Duration = Duration::from_secs(120);
/// The real image starts in seconds but makes an LLM call per step, each through tmux.
const REAL_RUN_BUDGET: Duration = Duration::from_secs(300);
const REAL_IMAGE: &str = "cadenza/openhands-agent-server:1.58.0";
/// What the real agent-server writes in a command's output in place of a secret's value.
const REAL_SERVER_SECRET_MASK: &str = "<secret-hidden>";

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// The value and the encodings the prompt prints, as they would appear unredacted.
fn forms(value: &str) -> Vec<String> {
    let hex: String = value.bytes().map(|byte| format!("{byte:02x}")).collect();
    let spaced: Vec<String> = value.bytes().map(|byte| format!("{byte:02x}")).collect();
    vec![
        value.to_owned(),
        base64::engine::general_purpose::STANDARD.encode(value),
        base64::engine::general_purpose::STANDARD.encode(format!("{value}\n")),
        hex,
        // `od -An -tx1` prints 16 bytes per line; the first line alone is distinctive.
        spaced[..16].join(" "),
    ]
}

async fn put_secret(api: &Api, path: &str, value: &str) {
    let response = api
        .http
        .put(api.url(path))
        .bearer_auth(&api.token)
        .json(&json!({"value": value}))
        .send()
        .await
        .expect("put secret");
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
}

async fn patch_project(api: &Api, project_id: &str, body: Value) {
    let response = api
        .http
        .patch(api.url(&format!("/projects/{project_id}")))
        .bearer_auth(&api.token)
        .json(&body)
        .send()
        .await
        .expect("patch");
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
}

/// Points the project's shell secrets at `name`, runs a trivial task, and checks that the run
/// failed with `secret_unavailable`. Returns the failure message.
async fn failed_run_needing(api: &Api, project_id: &str, name: &str) -> String {
    patch_project(api, project_id, json!({"agent": {"secrets": [name]}})).await;
    let run = api
        .run_to_end(project_id, "$ true\ndone", RUN_BUDGET)
        .await
        .expect("the run ends");
    assert_eq!(run["state"], "failed", "{run}");
    assert_eq!(
        run["terminal_reason"]["code"], "secret_unavailable",
        "{run}"
    );
    run["terminal_reason"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Every row of every table, as text.
async fn dump_database(pool: &sqlx::PgPool) -> String {
    let tables: Vec<String> = sqlx::query_scalar(
        "select table_name::text from information_schema.tables
         where table_schema = 'public' and table_type = 'BASE TABLE'",
    )
    .fetch_all(pool)
    .await
    .expect("tables");
    assert!(tables.iter().any(|table| table == "secrets"));
    let mut dump = String::new();
    for table in tables {
        let rows: Option<String> = sqlx::query_scalar(&format!(
            "select string_agg(row_to_json(t)::text, E'\\n') from \"{table}\" t"
        ))
        .fetch_one(pool)
        .await
        .expect("dump table");
        dump.push_str(&rows.unwrap_or_default());
        dump.push('\n');
    }
    dump
}

/// Which agent-server the canary run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AgentServer {
    /// The scripted fake (the stack's default image).
    Fake,
    /// The real OpenHands image, driven by the scripted LLM.
    Real,
}

#[tokio::test]
async fn an_injected_canary_is_usable_by_the_agent_and_appears_nowhere_cadenza_records() {
    injected_canary_run(AgentServer::Fake).await;
}

#[tokio::test]
async fn an_injected_canary_is_usable_by_the_real_agent_and_appears_nowhere_cadenza_records() {
    injected_canary_run(AgentServer::Real).await;
}

async fn injected_canary_run(agent: AgentServer) {
    let canary = format!("cdz-canary-{}", random_hex(12));
    let second = format!("cdz-second-{}", random_hex(12));
    let llm_key = format!("sk-llm-canary-{}", random_hex(12));
    let git_token = format!("ghp_gitcanary{}", random_hex(12));
    // A private repository: the clone works only with the project's credentials secret.
    let git = PrivateGitServer::start(&format!("x-access-token:{git_token}"));
    let mut extra_env = vec![
        (
            "RUST_LOG".into(),
            "info,cadenza_worker=debug,cadenza_api=debug,cadenza_scheduler=debug,\
             cadenza_agent_client=debug,cadenza_storage=debug"
                .into(),
        ),
        // Kept after the run, to look inside the agent's container.
        ("CADENZA_WORKSPACE_IDLE_TTL".into(), "5m".into()),
    ];
    // The real server calls the LLM with the project's key, which this LLM insists on.
    let llm = (agent == AgentServer::Real).then(|| FakeLlm::start_requiring_key(&llm_key));
    let attached = match &llm {
        Some(llm) => format!("{},{}", git.name, llm.name),
        None => git.name.clone(),
    };
    extra_env.push(("CADENZA_ATTACH_CONTAINERS".into(), attached));
    if let Some(llm) = &llm {
        extra_env.extend([
            (
                "CADENZA_DEFAULT_LLM_MODEL".into(),
                "openai/fake-model".into(),
            ),
            ("CADENZA_DEFAULT_LLM_BASE_URL".into(), llm.base_url()),
            ("CADENZA_LLM_API_MODE".into(), "chat".into()),
        ]);
    }
    let budget = match agent {
        AgentServer::Fake => RUN_BUDGET,
        AgentServer::Real => REAL_RUN_BUDGET,
    };
    let stack = Stack::start_with(StackOptions {
        extra_env,
        ..Default::default()
    })
    .await
    .expect("stack starts");
    let api = Api::new(&stack.api_url, &stack.token);
    let project_id = stack.project.id.to_string();
    let org_id = stack.org.id.to_string();
    if agent == AgentServer::Real {
        patch_project(
            &api,
            &project_id,
            json!({"agent": {"image": REAL_IMAGE, "memory_mb": 2048, "cpus": 2.0}}),
        )
        .await;
    }

    // Capture every message on this stack's NATS subjects from before the run exists.
    let nats = async_nats::connect(nats_url()).await.expect("nats");
    let mut subscription = nats
        .subscribe(format!("{}.>", stack.bus_prefix))
        .await
        .expect("subscribe");
    let captured = Arc::new(Mutex::new(Vec::<String>::new()));
    let collector = {
        let captured = captured.clone();
        tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                captured
                    .lock()
                    .expect("lock")
                    .push(String::from_utf8_lossy(&message.payload).into_owned());
            }
        })
    };

    put_secret(
        &api,
        &format!("/orgs/{org_id}/secrets/CANARY"),
        "org-value-overridden",
    )
    .await;
    put_secret(
        &api,
        &format!("/projects/{project_id}/secrets/CANARY"),
        &canary,
    )
    .await;
    put_secret(
        &api,
        &format!("/projects/{project_id}/secrets/SECOND"),
        &second,
    )
    .await;
    put_secret(&api, &format!("/orgs/{org_id}/secrets/LLM_KEY"), &llm_key).await;
    put_secret(
        &api,
        &format!("/projects/{project_id}/secrets/GIT_TOKEN"),
        &git_token,
    )
    .await;
    patch_project(
        &api,
        &project_id,
        json!({
            "agent": {"secrets": ["CANARY", "SECOND"], "llm_api_key_secret": "LLM_KEY"},
            "repository": {"url": git.url(), "branch": "main", "credentials_secret": "GIT_TOKEN"},
        }),
    )
    .await;

    let prompt = "$ cat README.md\n\
                  $ echo $CANARY\n\
                  $ echo $CANARY | base64\n\
                  $ printf %s \"$CANARY\" | od -An -tx1\n\
                  $ echo \"token=$CANARY\" > leaked.txt\n\
                  $ echo \"second=$SECOND\" > second.txt\n\
                  $ ps -eo args\n\
                  done";
    let (status, run) = api
        .submit_run(&project_id, prompt, None)
        .await
        .expect("submit");
    assert_eq!(status, 201, "{run}");
    let run_id = run["id"].as_str().expect("id").to_owned();
    // Follow the live stream while the run goes.
    let mut sse = SseReader::open(
        &api.http,
        &api.url(&format!("/runs/{run_id}/events/stream")),
        &api.token,
        None,
    )
    .await
    .expect("stream");
    let mut streamed = String::new();
    while let Some(event) = sse.next(budget).await.expect("stream event") {
        streamed.push_str(&event.data);
        streamed.push('\n');
    }
    let run = api.wait_for_end(&run_id, budget).await.expect("ends");
    assert_eq!(run["state"], "succeeded", "{run}\n{}", stack.logs());

    // The agent really had the value: each command's output is there, redacted. The real server
    // masks the plain value itself (`<secret-hidden>`) before Cadenza sees it; the encodings
    // reach Cadenza and are redacted there.
    let events = api.all_events(&run_id, 200).await.expect("events");
    let outputs: Vec<String> = events
        .iter()
        .filter(|event| event["kind"] == "observation")
        .filter_map(|event| event["payload"]["output"].as_str().map(str::to_owned))
        .collect();
    let redacted = outputs
        .iter()
        .filter(|output| {
            output.contains("[REDACTED:CANARY]") || output.contains(REAL_SERVER_SECRET_MASK)
        })
        .count();
    assert!(
        redacted >= 3,
        "echo, base64 and od each printed the canary, redacted: {outputs:?}"
    );
    let redacted_by_cadenza = outputs
        .iter()
        .filter(|output| output.contains("[REDACTED:CANARY]"))
        .count();
    assert!(
        redacted_by_cadenza >= 2,
        "base64 and od printed encodings only Cadenza redacts: {outputs:?}"
    );
    assert!(
        !outputs.iter().any(|output| output.contains("org-value")),
        "the project secret overrides the org secret: {outputs:?}"
    );
    assert!(
        outputs.iter().any(|output| output.trim() == "private"),
        "the private repository was cloned with its credentials: {outputs:?}"
    );
    let diff = api.diff(&run_id).await.expect("diff");
    assert!(diff.contains("leaked.txt"), "{diff}");
    assert!(diff.contains("token=[REDACTED:CANARY]"), "{diff}");
    assert!(diff.contains("second=[REDACTED:SECOND]"), "{diff}");
    assert!(
        !diff.contains("README.md"),
        "the diff is against the cloned base: {diff}"
    );

    // Inside the agent's container: its processes, environment, files and Git config.
    let containers = containers_with_label("io.cadenza.run", &run_id);
    assert_eq!(containers.len(), 1, "the workspace is kept");
    let look = std::process::Command::new("docker")
        .args(["exec", &containers[0], "bash", "-c"])
        .arg(
            "ps -eo args; cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'; \
             git -C /workspace/project config --list; \
             grep -ra . /workspace 2>/dev/null | head -c 20000000",
        )
        .output()
        .expect("docker exec");
    let inside = String::from_utf8_lossy(&look.stdout).into_owned();
    assert!(
        inside.contains(&format!("remote.origin.url={}", git.url())),
        "the look inside worked"
    );
    let mut git_forms = forms(&git_token);
    git_forms.push(
        base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{git_token}")),
    );
    for form in git_forms {
        assert!(
            !inside.contains(&form),
            "the Git credential ({form}) is inside the agent's container"
        );
    }

    // Wait until the capture holds the live copy of the run's last journal event (everything
    // before it was published first), then look everywhere.
    let last_seq = events
        .iter()
        .filter_map(|event| event["seq"].as_i64())
        .max()
        .expect("the run has events");
    let last_published = |messages: &[String]| {
        messages.iter().any(|message| {
            serde_json::from_str::<serde_json::Value>(message).is_ok_and(|message| {
                message["run_id"] == run_id.as_str() && message["seq"] == last_seq
            })
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !last_published(&captured.lock().expect("lock")) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the run's last event (seq {last_seq}) never reached NATS"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    collector.abort();
    let nats_messages = captured.lock().expect("lock").join("\n");
    assert!(
        nats_messages.contains(&run_id),
        "the NATS capture saw the run's messages"
    );
    let metadata = api
        .get_json(&format!("/projects/{project_id}/secrets/CANARY"))
        .await
        .expect("metadata");
    assert!(
        metadata["last_used_at"].is_string(),
        "the run used it: {metadata}"
    );
    let places = [
        ("events API", serde_json::to_string(&events).expect("json")),
        ("SSE stream", streamed),
        ("diff", diff),
        (
            "run",
            api.get_json(&format!("/runs/{run_id}"))
                .await
                .expect("run")
                .to_string(),
        ),
        ("database", dump_database(&stack.db.pool).await),
        ("service logs", stack.logs()),
        ("NATS messages", nats_messages),
    ];
    for (name, secret) in [
        ("CANARY", &canary),
        ("SECOND", &second),
        ("LLM_KEY", &llm_key),
        ("GIT_TOKEN", &git_token),
    ] {
        for form in forms(secret) {
            for (place, text) in &places {
                assert!(
                    !text.contains(&form),
                    "{name} ({form}) leaked into the {place}"
                );
            }
        }
    }
}

/// When the agent-server refuses the conversation Cadenza asks for (its contract differs from
/// the one Cadenza speaks), the run fails at once with `agent_contract`, naming the refused
/// field and never a secret value, even though the request carried one.
#[tokio::test]
async fn a_conversation_the_agent_server_refuses_fails_with_agent_contract_naming_the_field() {
    let stack = Stack::start().await.expect("stack starts");
    let api = Api::new(&stack.api_url, &stack.token);
    let project_id = stack.project.id.to_string();
    let canary = format!("cdz-canary-{}", random_hex(12));
    put_secret(
        &api,
        &format!("/projects/{project_id}/secrets/CANARY"),
        &canary,
    )
    .await;
    patch_project(&api, &project_id, json!({"agent": {"secrets": ["CANARY"]}})).await;
    // The API and the schema keep `max_iterations` at 1 or more; lifting that guard in this
    // test's own database is the simplest way to make Cadenza send a field the server refuses.
    let mut owner = stack.db.owner_connection().await.expect("owner connection");
    sqlx::query("alter table projects drop constraint projects_agent_max_iterations_check")
        .execute(&mut owner)
        .await
        .expect("drop the check");
    sqlx::query("update projects set agent_max_iterations = 0 where id = $1")
        .bind(stack.project.id.as_uuid())
        .execute(&stack.db.pool)
        .await
        .expect("update");

    let run = api
        .run_to_end(&project_id, "$ echo $CANARY\ndone", RUN_BUDGET)
        .await
        .expect("the run ends");
    assert_eq!(run["state"], "failed", "{run}");
    assert_eq!(run["terminal_reason"]["code"], "agent_contract", "{run}");
    let message = run["terminal_reason"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("body.max_iterations"), "{message}");
    assert!(message.contains("422"), "{message}");
    assert!(
        !stack.logs().contains(&canary),
        "the canary leaked into the logs"
    );
    assert!(!run.to_string().contains(&canary), "{run}");
}

#[tokio::test]
async fn runs_whose_secret_is_missing_tampered_or_moved_fail_with_a_reason() {
    let stack = Stack::start().await.expect("stack starts");
    let api = Api::new(&stack.api_url, &stack.token);
    let project_id = stack.project.id.to_string();
    let org_id = stack.org.id.to_string();

    // Missing: the project refers to a name nobody set.
    let message = failed_run_needing(&api, &project_id, "NOT_SET").await;
    assert!(message.contains("NOT_SET"), "{message}");

    // Tampered: one bit of the stored ciphertext flipped.
    let value = format!("tamper-{}", random_hex(8));
    put_secret(&api, &format!("/orgs/{org_id}/secrets/TAMPERED"), &value).await;
    let (id, mut sealed): (uuid::Uuid, Vec<u8>) =
        sqlx::query_as("select id, sealed from secrets where name = 'TAMPERED'")
            .fetch_one(&stack.db.pool)
            .await
            .expect("row");
    let last = sealed.len() - 3;
    sealed[last] ^= 0x01;
    sqlx::query("update secrets set sealed = $2 where id = $1")
        .bind(id)
        .bind(&sealed)
        .execute(&stack.db.pool)
        .await
        .expect("tamper");
    let message = failed_run_needing(&api, &project_id, "TAMPERED").await;
    assert!(
        message.contains("TAMPERED") && message.contains("cannot decrypt"),
        "{message}"
    );

    // Moved: a secret row of another org placed into this org under the referenced name.
    let other = {
        let mut conn = stack.db.pool.acquire().await.expect("conn");
        cadenza_storage::orgs::create(&mut conn, &cadenza_testkit::infra::unique_name("o-"), "o")
            .await
            .expect("org")
    };
    put_secret(
        &api,
        &format!("/orgs/{}/secrets/FOREIGN", other.id),
        "foreign-value",
    )
    .await;
    sqlx::query("update secrets set org_id = $1, name = 'MOVED' where name = 'FOREIGN'")
        .bind(stack.org.id.as_uuid())
        .execute(&stack.db.pool)
        .await
        .expect("move");
    let message = failed_run_needing(&api, &project_id, "MOVED").await;
    // The row is found under the name; it is its org binding (the AAD) that refuses it, which
    // "not set" could not be mistaken for.
    assert!(
        message.contains("MOVED") && message.contains("cannot decrypt"),
        "{message}"
    );
    assert!(!message.contains("set neither"), "{message}");
    assert!(
        !stack.logs().contains("panicked"),
        "no service panicked:\n{}",
        stack.logs()
    );
}

#[tokio::test]
async fn a_worker_without_a_key_its_secrets_need_refuses_to_start_and_names_it() {
    let stack = Stack::start().await.expect("stack starts");
    let api = Api::new(&stack.api_url, &stack.token);
    put_secret(
        &api,
        &format!("/orgs/{}/secrets/NEEDS_KEY", stack.org.id),
        "needs-the-stack-key",
    )
    .await;
    let (other_id, other_key) = cadenza_crypto::KeyRing::generate_key().expect("key");
    let start = |keks: Option<String>| {
        let mut command =
            std::process::Command::new(cadenza_testkit::stack::bin_dir().join("cadenza-worker"));
        command
            .env_clear()
            .env("CADENZA_DATABASE_URL", &stack.db.url)
            .env("CADENZA_NATS_URL", nats_url())
            .env("CADENZA_WORKER_NAME", "refused-worker")
            .env("CADENZA_WORKER_LISTEN", "127.0.0.1:0");
        if let Some(keks) = keks {
            command.env("CADENZA_SECRET_KEKS", keks);
        }
        command.output().expect("the worker runs")
    };
    let wrong = start(Some(format!(
        "{other_id}:{}",
        secrecy::ExposeSecret::expose_secret(&other_key)
    )));
    assert!(!wrong.status.success(), "started with the wrong key ring");
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        stderr.contains("refusing to start") && stderr.contains(stack.keyring.active_id()),
        "{stderr}"
    );
    assert!(!stderr.contains(secrecy::ExposeSecret::expose_secret(&other_key)));
    let none = start(None);
    assert!(!none.status.success(), "started without any key");
    let stderr = String::from_utf8_lossy(&none.stderr);
    assert!(stderr.contains("CADENZA_SECRET_KEKS"), "{stderr}");
}

/// The value after `OH_SESSION_API_KEYS_0=` wherever it appears, up to the end of the token.
fn session_key_values(text: &str) -> Vec<String> {
    text.match_indices("OH_SESSION_API_KEYS_0=")
        .map(|(at, marker)| {
            text[at + marker.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '[' | ']' | '_' | ':'))
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn an_agent_printing_its_environment_does_not_put_the_session_key_in_the_journal() {
    let stack = Stack::start().await.expect("stack starts");
    let api = Api::new(&stack.api_url, &stack.token);
    let run = api
        .run_to_end(&stack.project.id.to_string(), "$ env\ndone", RUN_BUDGET)
        .await
        .expect("the run ends");
    assert_eq!(run["state"], "succeeded", "{run}\n{}", stack.logs());
    let run_id = run["id"].as_str().expect("id");

    let events = api.all_events(run_id, 100).await.expect("events");
    let journal = serde_json::to_string(&events).expect("json");
    let shown = session_key_values(&journal);
    assert!(
        !shown.is_empty(),
        "the agent printed its environment: {journal}"
    );
    assert!(
        shown
            .iter()
            .all(|value| value == "[REDACTED:AGENT_SESSION_KEY]"),
        "{shown:?}"
    );
    // Nor anywhere else Cadenza keeps: raw events, the diff, the end reason.
    let dump = dump_database(&stack.db.pool).await;
    assert!(
        session_key_values(&dump)
            .iter()
            .all(|value| value == "[REDACTED:AGENT_SESSION_KEY]"),
        "{:?}",
        session_key_values(&dump)
    );
}
