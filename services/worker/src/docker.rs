//! Workspace containers through the Docker Engine API.
//!
//! One container per run attempt, on its own bridge network, non-root, with every capability
//! dropped, `no-new-privileges`, CPU/memory/pids limits, and the agent port published on
//! 127.0.0.1 only. Labels carry the org, project, run and worker, so a restarted worker can find
//! and remove what it left behind.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::container::{
    Config, CreateContainerOptions, ListContainersOptions, LogOutput, LogsOptions,
    RemoveContainerOptions,
};
use bollard::errors::Error as DockerError;
use bollard::image::CreateImageOptions;
use bollard::models::{HostConfig, PortBinding};
use bollard::network::{ConnectNetworkOptions, CreateNetworkOptions, DisconnectNetworkOptions};
use futures::StreamExt;

pub const LABEL_MANAGED: &str = "io.cadenza.managed";
pub const LABEL_ORG: &str = "io.cadenza.org";
pub const LABEL_PROJECT: &str = "io.cadenza.project";
pub const LABEL_RUN: &str = "io.cadenza.run";
pub const LABEL_ATTEMPT: &str = "io.cadenza.attempt";
pub const LABEL_WORKER: &str = "io.cadenza.worker";
/// On an agent image: the agent follows a script and needs no LLM (the test kit's fake).
pub const LABEL_SCRIPTED_AGENT: &str = "io.cadenza.agent.scripted";

/// The port the agent-server listens on inside the container.
pub const AGENT_PORT: &str = "8000/tcp";
/// The user agent containers run as when the image would run as root (the official image's
/// `openhands` user).
const FALLBACK_USER: &str = "10001:10001";

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(
        "agent image `{image}` is not present on this worker's Docker Engine and could not be pulled: {detail}"
    )]
    ImageUnavailable { image: String, detail: String },
    #[error("Docker Engine request `{operation}` failed: {source}")]
    Docker {
        operation: &'static str,
        #[source]
        source: DockerError,
    },
    #[error("the container published no host port for {AGENT_PORT}")]
    NoPort,
}

fn docker_err(operation: &'static str) -> impl FnOnce(DockerError) -> ContainerError {
    move |source| ContainerError::Docker { operation, source }
}

fn is_not_found(err: &DockerError) -> bool {
    matches!(
        err,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// What a workspace container is made from.
#[derive(Clone, Debug)]
pub struct WorkspaceSpec {
    pub name: String,
    pub image: String,
    pub labels: HashMap<String, String>,
    pub env: Vec<(String, String)>,
    pub cpus: f64,
    pub memory_mb: i64,
    pub pids_limit: i64,
    /// Existing containers to connect to the workspace's network (by name, as their alias).
    pub attach: Vec<String>,
}

/// A started workspace container.
#[derive(Clone, Debug)]
pub struct Workspace {
    pub container_id: String,
    pub network: String,
    pub host_port: u16,
}

#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
}

impl DockerRuntime {
    /// Connects to the local engine (or `DOCKER_HOST`) and negotiates the API version, so an
    /// older engine works as long as it supports what we use.
    pub async fn connect() -> Result<Self, ContainerError> {
        let docker = Docker::connect_with_local_defaults().map_err(docker_err("connect"))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(docker_err("negotiate version"))?;
        Ok(Self { docker })
    }

    pub async fn ping(&self) -> Result<(), ContainerError> {
        self.docker.ping().await.map_err(docker_err("ping"))?;
        Ok(())
    }

    /// Makes sure the image is present, pulling it (bounded by `pull_timeout`) when it is not.
    /// Returns the user the image runs as.
    async fn ensure_image(
        &self,
        image: &str,
        pull_timeout: Duration,
    ) -> Result<String, ContainerError> {
        match self.docker.inspect_image(image).await {
            Ok(inspect) => {
                return Ok(inspect
                    .config
                    .and_then(|config| config.user)
                    .unwrap_or_default());
            }
            Err(err) if is_not_found(&err) => {}
            Err(err) => return Err(docker_err("inspect image")(err)),
        }
        tracing::info!(image, "agent image missing locally; pulling");
        let pull = async {
            let mut progress = self.docker.create_image(
                Some(CreateImageOptions {
                    from_image: image,
                    ..Default::default()
                }),
                None,
                None,
            );
            while let Some(step) = progress.next().await {
                step.map_err(|err| err.to_string())?;
            }
            Ok::<(), String>(())
        };
        match tokio::time::timeout(pull_timeout, pull).await {
            Ok(Ok(())) => {}
            Ok(Err(detail)) => {
                return Err(ContainerError::ImageUnavailable {
                    image: image.to_owned(),
                    detail,
                });
            }
            Err(_) => {
                return Err(ContainerError::ImageUnavailable {
                    image: image.to_owned(),
                    detail: format!("the pull did not finish within {pull_timeout:?}"),
                });
            }
        }
        let inspect = self
            .docker
            .inspect_image(image)
            .await
            .map_err(docker_err("inspect image"))?;
        Ok(inspect
            .config
            .and_then(|config| config.user)
            .unwrap_or_default())
    }

    /// Creates the workspace's network and container and starts it. On any failure, whatever was
    /// created is removed again.
    pub async fn start_workspace(
        &self,
        spec: &WorkspaceSpec,
        pull_timeout: Duration,
    ) -> Result<Workspace, ContainerError> {
        let image_user = self.ensure_image(&spec.image, pull_timeout).await?;
        let runs_as_root = matches!(image_user.as_str(), "" | "root" | "0" | "0:0");
        let network = spec.name.clone();
        self.docker
            .create_network(CreateNetworkOptions {
                name: network.clone(),
                driver: "bridge".to_owned(),
                labels: spec.labels.clone(),
                ..Default::default()
            })
            .await
            .map_err(docker_err("create network"))?;
        for name in &spec.attach {
            let connected = self
                .docker
                .connect_network(
                    &network,
                    ConnectNetworkOptions {
                        container: name.clone(),
                        endpoint_config: bollard::models::EndpointSettings {
                            aliases: Some(vec![name.clone()]),
                            ..Default::default()
                        },
                    },
                )
                .await;
            if let Err(err) = connected {
                self.remove_workspace(&spec.name, &network).await;
                return Err(docker_err("connect an attached container")(err));
            }
        }
        match self.create_and_start(spec, &network, runs_as_root).await {
            Ok(workspace) => Ok(workspace),
            Err(err) => {
                self.remove_workspace(&spec.name, &network).await;
                Err(err)
            }
        }
    }

    async fn create_and_start(
        &self,
        spec: &WorkspaceSpec,
        network: &str,
        runs_as_root: bool,
    ) -> Result<Workspace, ContainerError> {
        let port_bindings = HashMap::from([(
            AGENT_PORT.to_owned(),
            Some(vec![PortBinding {
                host_ip: Some("127.0.0.1".to_owned()),
                host_port: Some(String::new()),
            }]),
        )]);
        let host_config = HostConfig {
            nano_cpus: Some((spec.cpus * 1e9) as i64),
            memory: Some(spec.memory_mb * 1024 * 1024),
            memory_swap: Some(spec.memory_mb * 1024 * 1024),
            pids_limit: Some(spec.pids_limit),
            cap_drop: Some(vec!["ALL".to_owned()]),
            security_opt: Some(vec!["no-new-privileges".to_owned()]),
            network_mode: Some(network.to_owned()),
            port_bindings: Some(port_bindings),
            ..Default::default()
        };
        let env: Vec<String> = spec
            .env
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        let config = Config {
            image: Some(spec.image.clone()),
            env: Some(env),
            labels: Some(spec.labels.clone()),
            exposed_ports: Some(HashMap::from([(AGENT_PORT.to_owned(), HashMap::new())])),
            user: runs_as_root.then(|| FALLBACK_USER.to_owned()),
            host_config: Some(host_config),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: spec.name.clone(),
                    platform: None,
                }),
                config,
            )
            .await
            .map_err(docker_err("create container"))?;
        self.docker
            .start_container::<String>(&created.id, None)
            .await
            .map_err(docker_err("start container"))?;
        let inspect = self
            .docker
            .inspect_container(&created.id, None)
            .await
            .map_err(docker_err("inspect container"))?;
        let host_port = published_port(inspect).ok_or(ContainerError::NoPort)?;
        Ok(Workspace {
            container_id: created.id,
            network: network.to_owned(),
            host_port,
        })
    }

    /// The host port of a running workspace container's agent-server, `None` when the container
    /// is gone or stopped.
    pub async fn running_host_port(&self, container: &str) -> Option<u16> {
        let inspect = self.docker.inspect_container(container, None).await.ok()?;
        if inspect.state.as_ref().and_then(|state| state.running) != Some(true) {
            return None;
        }
        published_port(inspect)
    }

    /// The session API key a workspace container was started with (from its environment).
    pub async fn session_key(&self, container: &str) -> Option<secrecy::SecretString> {
        let inspect = self.docker.inspect_container(container, None).await.ok()?;
        inspect
            .config?
            .env?
            .into_iter()
            .find_map(|entry| {
                entry
                    .strip_prefix("OH_SESSION_API_KEYS_0=")
                    .map(str::to_owned)
            })
            .map(secrecy::SecretString::from)
    }

    /// Whether an image (present on the engine) is labelled as a scripted agent.
    pub async fn is_scripted_agent(&self, image: &str) -> bool {
        self.docker
            .inspect_image(image)
            .await
            .ok()
            .and_then(|inspect| inspect.config)
            .and_then(|config| config.labels)
            .is_some_and(|labels| {
                labels.get(LABEL_SCRIPTED_AGENT).map(String::as_str) == Some("true")
            })
    }

    /// Whether the container is still running, and if not, its exit code and last log lines.
    pub async fn exit_status(&self, container: &str) -> Option<String> {
        let inspect = self.docker.inspect_container(container, None).await.ok()?;
        let state = inspect.state?;
        if state.running == Some(true) {
            return None;
        }
        let code = state.exit_code.unwrap_or_default();
        let logs = self.log_tail(container, 20).await;
        Some(format!(
            "the agent container exited with code {code}; last log lines:\n{logs}"
        ))
    }

    /// The container's output (stdout and stderr, from its start, then as it comes) in the
    /// chunks the engine sends; ends when the container stops or is removed.
    pub fn follow_logs(
        &self,
        container: &str,
    ) -> impl futures::Stream<Item = bytes::Bytes> + Send + 'static {
        self.docker
            .logs(
                container,
                Some(LogsOptions::<String> {
                    follow: true,
                    stdout: true,
                    stderr: true,
                    ..Default::default()
                }),
            )
            .take_while(|chunk| std::future::ready(chunk.is_ok()))
            .filter_map(|chunk| {
                std::future::ready(match chunk {
                    Ok(
                        LogOutput::StdOut { message }
                        | LogOutput::StdErr { message }
                        | LogOutput::Console { message },
                    ) => Some(message),
                    _ => None,
                })
            })
    }

    async fn log_tail(&self, container: &str, lines: usize) -> String {
        let mut stream = self.docker.logs(
            container,
            Some(LogsOptions::<String> {
                stdout: true,
                stderr: true,
                tail: lines.to_string(),
                ..Default::default()
            }),
        );
        let mut out = String::new();
        while let Some(Ok(chunk)) = stream.next().await {
            match chunk {
                LogOutput::StdOut { message }
                | LogOutput::StdErr { message }
                | LogOutput::Console { message } => {
                    out.push_str(&String::from_utf8_lossy(&message))
                }
                LogOutput::StdIn { .. } => {}
            }
        }
        out
    }

    /// Removes a workspace's container (with its anonymous volumes) and network. Best effort and
    /// idempotent: a missing container or network is not an error.
    pub async fn remove_workspace(&self, container: &str, network: &str) {
        if let Err(err) = self
            .docker
            .remove_container(
                container,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
            .await
            && !is_not_found(&err)
        {
            tracing::warn!(container, error = %err, "removing a workspace container failed");
        }
        // Attached service containers must leave the network before it can go.
        if let Ok(inspect) = self.docker.inspect_network::<String>(network, None).await {
            for endpoint in inspect.containers.unwrap_or_default().into_keys() {
                let _ = self
                    .docker
                    .disconnect_network(
                        network,
                        DisconnectNetworkOptions {
                            container: endpoint,
                            force: true,
                        },
                    )
                    .await;
            }
        }
        if let Err(err) = self.docker.remove_network(network).await
            && !is_not_found(&err)
        {
            tracing::warn!(network, error = %err, "removing a workspace network failed");
        }
    }

    /// The containers this worker owns (running or not), by name, with the run each was made
    /// for (its `io.cadenza.run` label).
    pub async fn owned_workspaces(
        &self,
        worker: &str,
    ) -> Result<Vec<(String, Option<String>)>, ContainerError> {
        let filters =
            HashMap::from([("label".to_owned(), vec![format!("{LABEL_WORKER}={worker}")])]);
        let containers = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters,
                ..Default::default()
            }))
            .await
            .map_err(docker_err("list containers"))?;
        Ok(containers
            .into_iter()
            .filter_map(|container| {
                let run = container
                    .labels
                    .as_ref()
                    .and_then(|labels| labels.get(LABEL_RUN).cloned());
                let name = container.names?.into_iter().next()?;
                Some((name.trim_start_matches('/').to_owned(), run))
            })
            .collect())
    }

    /// Names of the containers this worker owns (running or not).
    pub async fn owned_containers(&self, worker: &str) -> Result<Vec<String>, ContainerError> {
        let filters =
            HashMap::from([("label".to_owned(), vec![format!("{LABEL_WORKER}={worker}")])]);
        let containers = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters,
                ..Default::default()
            }))
            .await
            .map_err(docker_err("list containers"))?;
        Ok(containers
            .into_iter()
            .filter_map(|container| container.names?.into_iter().next())
            .map(|name| name.trim_start_matches('/').to_owned())
            .collect())
    }
}

fn published_port(inspect: bollard::models::ContainerInspectResponse) -> Option<u16> {
    inspect
        .network_settings
        .and_then(|settings| settings.ports)
        .and_then(|ports| ports.get(AGENT_PORT).cloned().flatten())
        .and_then(|bindings| bindings.into_iter().find_map(|binding| binding.host_port))
        .and_then(|port| port.parse::<u16>().ok())
}
