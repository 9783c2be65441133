//! Preparing a fresh run's workspace: the image checked against the allowlist, room for its
//! network, the container (with its repository cloned outside the agent), the agent-server
//! healthy, the model chosen, the conversation request.

use std::collections::HashMap;
use std::time::Duration;

use cadenza_domain::{Project, Run, TerminalCode, TerminalReason};
use cadenza_storage::{StorageError, workspaces};
use futures::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;
use tracing::Instrument;

use super::control::RunControl;
use super::outcome::{fail, internal};
use crate::Core;
use crate::agent::AgentSession;
use crate::docker::{
    LABEL_ATTEMPT, LABEL_DEPLOYMENT, LABEL_MANAGED, LABEL_ORG, LABEL_PROJECT, LABEL_RUN,
    LABEL_WORKER, WorkspaceSpec,
};
use crate::runtime::ContainerRuntime;
use crate::secrets::{LogLines, RunSecrets};

/// The model a run's agent uses: the project's, else the worker's default; a scripted agent
/// needs none. An agent without a model cannot do anything: the run fails now, saying how to
/// configure one, not after the first LLM call.
pub(crate) fn choose_model(
    project: &Project,
    default_model: Option<&str>,
    scripted: bool,
) -> Result<String, TerminalReason> {
    let model = project
        .agent
        .llm_model
        .as_deref()
        .or(default_model)
        .filter(|model| !model.trim().is_empty());
    match model {
        Some(model) => Ok(model.to_owned()),
        None if scripted => Ok("scripted/none".to_owned()),
        None => Err(fail(
            TerminalCode::LlmUnconfigured,
            format!(
                "no LLM is configured for this run: set the project's agent.llm_model \
                 (and agent.llm_api_key_secret, agent.llm_base_url as needed) with PATCH \
                 /api/v1/projects/{}, or the worker's CADENZA_DEFAULT_LLM_MODEL, \
                 CADENZA_DEFAULT_LLM_API_KEY and CADENZA_DEFAULT_LLM_BASE_URL (for `make \
                 run`: CADENZA_LLM_MODEL, CADENZA_LLM_API_KEY, CADENZA_LLM_BASE_URL); see \
                 docs/agent-server.md",
                project.id
            ),
        )),
    }
}

/// Waits until this worker holds fewer workspace networks than its bound, giving up the kept
/// workspace that has waited longest for a follow-up when that makes room (kept workspaces count
/// toward the bound). The caller holds `network_room`. Bounded by the agent start timeout.
pub(crate) async fn make_room(core: &Core, control: &mut RunControl) -> Result<(), TerminalReason> {
    let max = core.config.max_workspace_networks;
    let deadline = Instant::now() + core.config.agent_start_timeout;
    loop {
        let held = core
            .runtime
            .networks_of(&core.worker.name)
            .await
            .map_err(|err| {
                tracing::warn!(error = %err, "listing workspace networks failed");
                fail(TerminalCode::ContainerFailed, err.tenant_message())
            })?;
        if held < max {
            return Ok(());
        }
        let oldest = async {
            let mut conn = core.pool.acquire().await?;
            let Some((run_id, container)) =
                workspaces::oldest_kept(&mut conn, core.worker.id).await?
            else {
                return Ok(None);
            };
            let released = workspaces::release(&mut conn, run_id).await?;
            Ok::<_, StorageError>(Some((run_id, container, released)))
        }
        .await
        .map_err(internal)?;
        match oldest {
            Some((run_id, container, released)) => {
                if released {
                    tracing::info!(%run_id, container, held, max, "giving up a kept workspace to make room for a new run");
                    core.runtime.remove_workspace(&container, &container).await;
                }
                continue;
            }
            None if Instant::now() >= deadline => {
                return Err(fail(
                    TerminalCode::ContainerFailed,
                    format!(
                        "no workspace network became free within {:?}: this worker holds {held} of at most {max}",
                        core.config.agent_start_timeout
                    ),
                ));
            }
            None => {
                tokio::select! {
                    reason = control.stopped() => return Err(reason),
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
        }
    }
}

/// The instance's LLM key, when this run may have it: only with the operator's own model and
/// endpoint, and only in an image the instance itself allows (not one allowed for the org
/// alone). A project that changes any of these names its own key (`agent.llm_api_key_secret`),
/// or the run fails at once: the operator's key must never reach an endpoint or an image a
/// tenant chose.
pub(crate) fn operator_llm_key<'a>(
    config: &'a crate::WorkerConfig,
    images: &cadenza_domain::ImagePolicy,
    project: &Project,
) -> Result<Option<&'a SecretString>, TerminalReason> {
    let Some(key) = config.default_llm_api_key.as_ref() else {
        return Ok(None);
    };
    if project.agent.llm_api_key_secret.is_some() {
        return Ok(None);
    }
    let differs = |own: &Option<String>, instance: &Option<String>| {
        own.as_deref()
            .is_some_and(|own| Some(own.trim()) != instance.as_deref().map(str::trim))
    };
    let mut own = Vec::new();
    if differs(&project.agent.llm_base_url, &config.default_llm_base_url) {
        own.push("`agent.llm_base_url`");
    }
    if differs(&project.agent.llm_model, &config.default_llm_model) {
        own.push("`agent.llm_model`");
    }
    let instance_image = project
        .agent
        .image
        .parse::<cadenza_domain::ImageRef>()
        .is_ok_and(|image| images.allows(&image));
    if !instance_image {
        own.push("an `agent.image` allowed only for this org");
    }
    if own.is_empty() {
        return Ok(Some(key));
    }
    Err(fail(
        TerminalCode::LlmUnconfigured,
        format!(
            "this project sets its own {}, so it must name its own LLM key: store it as a secret \
             and set `agent.llm_api_key_secret` (PATCH /api/v1/projects/{}); the instance's key \
             is used only with the instance's own model, endpoint and images",
            own.join(" and "),
            project.id
        ),
    ))
}

/// Refuses an image the allowlist (with the org's own rules) does not allow: the project may
/// predate the allowlist, or an administrator may have narrowed it since.
pub(crate) async fn check_image(
    core: &Core,
    run: &Run,
    project: &Project,
) -> Result<(), TerminalReason> {
    let org_rules = async {
        let mut conn = core.pool.acquire().await?;
        cadenza_storage::agent_images::rules_of(&mut conn, run.org_id).await
    }
    .await
    .map_err(internal)?;
    core.images
        .with(org_rules)
        .check(&project.agent.image)
        .map(|_| ())
        .map_err(|message| fail(TerminalCode::ImageRefused, message))
}

pub(crate) fn workspace_spec(
    core: &Core,
    run: &Run,
    project: &Project,
    container: &str,
    session_key: &str,
    git_credentials: Option<&SecretString>,
) -> WorkspaceSpec {
    let labels = HashMap::from([
        (LABEL_MANAGED.to_owned(), "true".to_owned()),
        (LABEL_ORG.to_owned(), run.org_id.to_string()),
        (LABEL_PROJECT.to_owned(), run.project_id.to_string()),
        (LABEL_RUN.to_owned(), run.id.to_string()),
        (LABEL_ATTEMPT.to_owned(), run.attempt.to_string()),
        (LABEL_WORKER.to_owned(), core.worker.name.clone()),
        (LABEL_DEPLOYMENT.to_owned(), core.config.bus_prefix.clone()),
    ]);
    // Project environment first, so it can never override the settings Cadenza relies on.
    let mut env: Vec<(String, String)> = project
        .agent
        .env
        .iter()
        .filter(|(name, _)| {
            !name.starts_with("OH_SESSION_API_KEY") && name.as_str() != "SESSION_API_KEY"
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    env.extend(
        [
            ("OH_SESSION_API_KEYS_0", session_key),
            // One server per container: no ownership lease to wait out after a restart.
            ("OH_LEASE_TTL_SECONDS", "0"),
            ("OH_ENABLE_VSCODE", "false"),
            ("OH_PRELOAD_TOOLS", "false"),
            ("LITELLM_LOCAL_MODEL_COST_MAP", "True"),
            ("OH_WORKSPACE_PATH", core.config.workspace_dir.as_str()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.to_owned())),
    );
    WorkspaceSpec {
        name: container.to_owned(),
        image: project.agent.image.clone(),
        labels,
        env,
        cpus: project.agent.cpus,
        memory_mb: project.agent.memory_mb,
        pids_limit: project.agent.pids_limit,
        attach: core.config.attached_containers(),
        fallback_user: core.fallback_user,
        clone: project
            .repository
            .url
            .as_ref()
            .map(|url| crate::docker::CloneSpec {
                image: core.config.git_image.clone(),
                url: url.clone(),
                branch: project.repository.branch.clone(),
                auth_header: git_credentials.map(basic_auth_header),
                timeout: Duration::from_secs(600),
            }),
        workspace_dir: core.config.workspace_dir.clone(),
    }
}

/// The `Authorization` header the clone sends (`token`, or `user:token`; the user defaults to
/// `x-access-token`, which GitHub and Gitea accept, GitLab takes `oauth2`). It travels as git
/// configuration in the clone helper's environment: never in the URL, so not in `.git/config`,
/// the remote name or git's error messages, and never in the agent's container.
fn basic_auth_header(credentials: &SecretString) -> SecretString {
    use base64::Engine;
    let credentials = credentials.expose_secret().trim();
    let pair = if credentials.contains(':') {
        credentials.to_owned()
    } else {
        format!("x-access-token:{credentials}")
    };
    SecretString::from(format!(
        "Authorization: Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    ))
}

/// Follows the workspace container's output into this worker's log (at debug level, target
/// `cadenza_worker::agent_log`), redacted line by line, even when a value is split across the
/// chunks the engine sends. Ends when the container goes, or with the run's time budget.
pub(crate) fn forward_container_logs(core: &Core, container: &str, secrets: &RunSecrets) {
    let logs = core.runtime.follow_logs(container);
    let redactor = secrets.redactor.clone();
    let budget = core.config.run_timeout + Duration::from_secs(60);
    tokio::spawn(
        async move {
            let mut lines = LogLines::new(&redactor);
            let follow = async {
                futures::pin_mut!(logs);
                while let Some(chunk) = logs.next().await {
                    for line in lines.push(&chunk) {
                        tracing::debug!(target: "cadenza_worker::agent_log", "{line}");
                    }
                }
            };
            let _ = tokio::time::timeout(budget, follow).await;
            for line in lines.finish() {
                tracing::debug!(target: "cadenza_worker::agent_log", "{line}");
            }
        }
        .instrument(tracing::Span::current()),
    );
}

/// Waits for the agent-server to answer its health check, watching the container so a crash
/// fails fast. Bounded by `budget`.
pub(crate) async fn wait_healthy(
    agent: &dyn AgentSession,
    runtime: &dyn ContainerRuntime,
    container: &str,
    budget: Duration,
    control: &mut RunControl,
) -> Result<(), TerminalReason> {
    let deadline = Instant::now() + budget;
    let mut pause =
        crate::retry::Backoff::new(Duration::from_millis(50), Duration::from_millis(500));
    loop {
        match agent.health().await {
            Ok(()) => return Ok(()),
            Err(err) if err.is_retryable() => {}
            Err(err) => {
                return Err(fail(
                    TerminalCode::AgentUnreachable,
                    format!("the agent-server's health check failed: {err}"),
                ));
            }
        }
        if let Some(exit) = runtime.exit_status(container).await {
            return Err(fail(TerminalCode::ContainerFailed, exit));
        }
        let wait = pause.next();
        if Instant::now() + wait > deadline {
            return Err(fail(
                TerminalCode::AgentUnreachable,
                format!("the agent-server did not become healthy within {budget:?}"),
            ));
        }
        tokio::select! {
            reason = control.stopped() => return Err(reason),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;
    use time::OffsetDateTime;

    use super::*;

    fn project(image: &str) -> Project {
        Project {
            id: cadenza_domain::ProjectId::new(),
            org_id: cadenza_domain::OrgId::new(),
            slug: "p".into(),
            name: "p".into(),
            agent: cadenza_domain::AgentSettings::with_image(image),
            repository: Default::default(),
            created_at: OffsetDateTime::now_utc(),
            updated_at: OffsetDateTime::now_utc(),
        }
    }

    #[test]
    fn the_operator_key_goes_only_with_the_operators_model_endpoint_and_images() {
        let mut config = crate::WorkerConfig::new(
            SecretString::from("postgres://unused"),
            "nats://unused".into(),
            "t".into(),
            "w".into(),
        );
        config.default_llm_api_key = Some(SecretString::from("sk-operator"));
        config.default_llm_model = Some("openai/gpt".into());
        config.default_llm_base_url = Some("https://llm.internal/v1".into());
        let images =
            cadenza_domain::ImagePolicy::parse("ghcr.io/openhands/agent-server").expect("policy");
        let official = "ghcr.io/openhands/agent-server:1.58.0-python";

        let plain = project(official);
        let key = operator_llm_key(&config, &images, &plain).expect("allowed");
        assert_eq!(key.map(ExposeSecret::expose_secret), Some("sk-operator"));
        // Naming the operator's own values explicitly is the same as naming none.
        let mut same = project(official);
        same.agent.llm_model = Some("openai/gpt".into());
        same.agent.llm_base_url = Some("https://llm.internal/v1".into());
        assert!(
            operator_llm_key(&config, &images, &same)
                .expect("allowed")
                .is_some()
        );

        for (what, change) in [
            (
                "`agent.llm_base_url`",
                Box::new(|p: &mut Project| {
                    p.agent.llm_base_url = Some("https://attacker.example/v1".into())
                }) as Box<dyn Fn(&mut Project)>,
            ),
            (
                "`agent.llm_model`",
                Box::new(|p: &mut Project| p.agent.llm_model = Some("openai/other".into())),
            ),
            (
                "`agent.image`",
                Box::new(|p: &mut Project| p.agent.image = "ghcr.io/acme/agent:1".into()),
            ),
        ] {
            let mut tenant = project(official);
            change(&mut tenant);
            let refused = operator_llm_key(&config, &images, &tenant).expect_err(what);
            assert_eq!(refused.code, TerminalCode::LlmUnconfigured);
            assert!(refused.message.contains(what), "{}", refused.message);
            assert!(
                refused.message.contains("agent.llm_api_key_secret"),
                "{}",
                refused.message
            );
            // With its own key the project needs nothing from the operator.
            tenant.agent.llm_api_key_secret = Some("MY_KEY".into());
            assert!(
                operator_llm_key(&config, &images, &tenant)
                    .expect("own key")
                    .is_none()
            );
        }
        config.default_llm_api_key = None;
        let mut tenant = project(official);
        tenant.agent.llm_base_url = Some("https://attacker.example/v1".into());
        assert!(
            operator_llm_key(&config, &images, &tenant)
                .expect("no key to give")
                .is_none()
        );
    }

    #[test]
    fn the_model_is_the_projects_else_the_workers_and_a_scripted_agent_needs_none() {
        let mut with_own = project("img");
        with_own.agent.llm_model = Some("anthropic/claude".into());
        assert_eq!(
            choose_model(&with_own, Some("openai/gpt"), false).expect("own"),
            "anthropic/claude"
        );
        let plain = project("img");
        assert_eq!(
            choose_model(&plain, Some("openai/gpt"), false).expect("default"),
            "openai/gpt"
        );
        assert_eq!(
            choose_model(&plain, None, true).expect("scripted"),
            "scripted/none"
        );
        let mut blank = project("img");
        blank.agent.llm_model = Some("  ".into());
        let refused = choose_model(&blank, None, false).expect_err("no model");
        assert_eq!(refused.code, TerminalCode::LlmUnconfigured);
        assert!(
            refused.message.contains(&blank.id.to_string()),
            "{}",
            refused.message
        );
    }

    #[test]
    fn git_credentials_become_a_basic_header() {
        use base64::Engine;
        let header = basic_auth_header(&SecretString::from("ghp_tokenvalue123"));
        let encoded =
            base64::engine::general_purpose::STANDARD.encode("x-access-token:ghp_tokenvalue123");
        assert_eq!(
            header.expose_secret(),
            format!("Authorization: Basic {encoded}")
        );
        assert!(!header.expose_secret().contains("ghp_tokenvalue123"));
        let with_user = basic_auth_header(&SecretString::from(" oauth2:glpat-abc\n"));
        let encoded = base64::engine::general_purpose::STANDARD.encode("oauth2:glpat-abc");
        assert_eq!(
            with_user.expose_secret(),
            format!("Authorization: Basic {encoded}")
        );
    }
}
