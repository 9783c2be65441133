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
use bollard::models::{HostConfig, Ipam, IpamConfig, Mount, MountTypeEnum, PortBinding};
use bollard::network::{
    ConnectNetworkOptions, CreateNetworkOptions, DisconnectNetworkOptions, ListNetworksOptions,
};
use bollard::volume::CreateVolumeOptions;
use futures::StreamExt;
use secrecy::{ExposeSecret, SecretString};

pub const LABEL_MANAGED: &str = "io.cadenza.managed";
pub const LABEL_ORG: &str = "io.cadenza.org";
pub const LABEL_PROJECT: &str = "io.cadenza.project";
pub const LABEL_RUN: &str = "io.cadenza.run";
pub const LABEL_ATTEMPT: &str = "io.cadenza.attempt";
pub const LABEL_WORKER: &str = "io.cadenza.worker";
/// The deployment a container belongs to (its bus prefix): workers adopt and sweep only their
/// own deployment's containers on an engine several deployments (or test stacks) share.
pub const LABEL_DEPLOYMENT: &str = "io.cadenza.deployment";
/// On a helper container (`clone`), as opposed to the workspace container itself.
pub const LABEL_ROLE: &str = "io.cadenza.role";
/// On an agent image: the agent follows a script and needs no LLM (the test kit's fake).
pub const LABEL_SCRIPTED_AGENT: &str = "io.cadenza.agent.scripted";

/// The port the agent-server listens on inside the container.
pub const AGENT_PORT: &str = "8000/tcp";
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The daemon's own words (which can describe hosts and ports it reached) are in `detail`,
    /// for the worker's log; the run's reason shows only [`ContainerError::tenant_message`].
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
    #[error("every subnet of the workspace address range is in use")]
    NoSubnet,
    /// The clone helper ran and git failed; `output` is git's (it never holds the credentials,
    /// which travel in a header, but the caller redacts it anyway).
    #[error("git exited with code {exit_code}: {output}")]
    CloneFailed { exit_code: i64, output: String },
    #[error("the clone did not finish within {0:?}")]
    CloneTimedOut(Duration),
}

impl ContainerError {
    /// What the run's end reason says: short and fixed, never the daemon's text.
    pub fn tenant_message(&self) -> String {
        match self {
            ContainerError::ImageUnavailable { image, .. } => format!(
                "agent image `{image}` is not present on this worker and could not be pulled \
                 (check the name and that the worker may pull it; the worker's log has the details)"
            ),
            ContainerError::Docker { operation, .. } => format!(
                "the workspace container could not be set up (Docker Engine request `{operation}` \
                 failed; the worker's log has the details)"
            ),
            ContainerError::NoPort
            | ContainerError::NoSubnet
            | ContainerError::CloneFailed { .. }
            | ContainerError::CloneTimedOut(_) => self.to_string(),
        }
    }
}

fn docker_err(operation: &'static str) -> impl FnOnce(DockerError) -> ContainerError {
    move |source| ContainerError::Docker { operation, source }
}

fn is_overlap(err: &DockerError) -> bool {
    matches!(
        err,
        DockerError::DockerResponseServerError { message, .. }
            if message.contains("overlap") || message.contains("in use")
    )
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
    /// The numeric user the container runs as unless the image names a non-zero numeric one.
    pub fallback_user: (u32, u32),
    /// The repository to clone into the workspace before the agent starts, by a helper
    /// container: the credentials never enter the agent's container.
    pub clone: Option<CloneSpec>,
    /// Where the agent works (the clone's volume is mounted there).
    pub workspace_dir: String,
}

/// A repository to clone into a workspace's volume.
#[derive(Clone, Debug)]
pub struct CloneSpec {
    /// The operator's git image (`CADENZA_GIT_IMAGE`): `sh`, `git`, `chown`.
    pub image: String,
    pub url: String,
    pub branch: Option<String>,
    /// `Authorization` header value for the remote, if the repository is private.
    pub auth_header: Option<SecretString>,
    pub timeout: Duration,
}

/// What the clone helper runs. The URL, branch and owner come in the environment, so nothing is
/// quoted into the script. It prints the base commit last, then hands the files to the agent's
/// user.
const CLONE_SCRIPT: &str = r#"set -eu
cd /
if [ -n "${CADENZA_CLONE_BRANCH:-}" ]; then
  git clone --quiet --branch "$CADENZA_CLONE_BRANCH" -- "$CADENZA_CLONE_URL" /clone 2>&1
else
  git clone --quiet -- "$CADENZA_CLONE_URL" /clone 2>&1
fi
echo "cadenza-base-commit $(git -C /clone rev-parse HEAD)"
chown -R "$CADENZA_CLONE_OWNER" /clone
"#;

/// A started workspace container.
#[derive(Clone, Debug)]
pub struct Workspace {
    pub container_id: String,
    pub network: String,
    pub host_port: u16,
    /// The commit the clone checked out, when the spec asked for one.
    pub base_commit: Option<String>,
}

/// The IPv4 range workspace networks are carved from, in subnets of one size. Docker's own
/// default address pools hold only about thirty networks per host, so workspaces never use them:
/// each network gets the first subnet of this range that no network on the engine holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetPool {
    base: u32,
    /// Bits of the range's prefix and of each subnet's.
    range_bits: u8,
    subnet_bits: u8,
}

impl SubnetPool {
    /// `range` as `a.b.c.d/n`; each subnet `/subnet_bits` (between `n` and 29: a workspace needs
    /// the gateway, its container and any attached ones).
    pub fn new(range: &str, subnet_bits: u8) -> Result<Self, String> {
        let (address, bits) = range
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("`{range}` is not an IPv4 range (`a.b.c.d/n`)"))?;
        let address: std::net::Ipv4Addr = address
            .parse()
            .map_err(|_| format!("`{address}` is not an IPv4 address"))?;
        let range_bits: u8 = bits
            .parse()
            .ok()
            .filter(|bits| (8..=28).contains(bits))
            .ok_or_else(|| format!("`/{bits}`: the range's prefix must be 8-28"))?;
        if !(range_bits..=29).contains(&subnet_bits) {
            return Err(format!(
                "the subnet prefix must be between the range's (/{range_bits}) and /29, got /{subnet_bits}"
            ));
        }
        let mask = u32::MAX << (32 - range_bits);
        Ok(Self {
            base: u32::from(address) & mask,
            range_bits,
            subnet_bits,
        })
    }

    /// How many subnets the range holds.
    pub fn len(&self) -> usize {
        1usize << (self.subnet_bits - self.range_bits)
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// The `index`th subnet, as `a.b.c.d/n`.
    pub fn subnet(&self, index: usize) -> String {
        let address = self.base + ((index as u32) << (32 - self.subnet_bits));
        format!("{}/{}", std::net::Ipv4Addr::from(address), self.subnet_bits)
    }
}

#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    subnets: SubnetPool,
}

impl DockerRuntime {
    /// Connects to the local engine (or `DOCKER_HOST`) and negotiates the API version, so an
    /// older engine works as long as it supports what we use.
    pub async fn connect(subnets: SubnetPool) -> Result<Self, ContainerError> {
        let docker = Docker::connect_with_local_defaults().map_err(docker_err("connect"))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(docker_err("negotiate version"))?;
        Ok(Self { docker, subnets })
    }

    /// The workspace networks on this engine, as (labels, subnets).
    async fn managed_networks(
        &self,
    ) -> Result<Vec<(HashMap<String, String>, Vec<String>)>, ContainerError> {
        let filters = HashMap::from([("label".to_owned(), vec![format!("{LABEL_MANAGED}=true")])]);
        let networks = self
            .docker
            .list_networks(Some(ListNetworksOptions { filters }))
            .await
            .map_err(docker_err("list networks"))?;
        Ok(networks
            .into_iter()
            .map(|network| {
                let subnets = network
                    .ipam
                    .and_then(|ipam| ipam.config)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|config| config.subnet)
                    .collect();
                (network.labels.unwrap_or_default(), subnets)
            })
            .collect())
    }

    /// How many workspace networks this worker holds now (running and kept workspaces).
    pub async fn networks_of(&self, worker: &str) -> Result<usize, ContainerError> {
        Ok(self
            .managed_networks()
            .await?
            .iter()
            .filter(|(labels, _)| labels.get(LABEL_WORKER).map(String::as_str) == Some(worker))
            .count())
    }

    /// Creates the workspace's bridge network on the first free subnet of the pool. Another
    /// worker on the engine may take a subnet between the listing and the create; the engine
    /// refuses the overlap and the next free one is tried.
    async fn create_workspace_network(&self, spec: &WorkspaceSpec) -> Result<(), ContainerError> {
        let mut taken: std::collections::HashSet<String> = self
            .managed_networks()
            .await?
            .into_iter()
            .flat_map(|(_, subnets)| subnets)
            .collect();
        let mut last_error = None;
        let mut attempts = 0;
        for index in 0..self.subnets.len() {
            let subnet = self.subnets.subnet(index);
            if taken.contains(&subnet) {
                continue;
            }
            attempts += 1;
            let created = self
                .docker
                .create_network(CreateNetworkOptions {
                    name: spec.name.clone(),
                    driver: "bridge".to_owned(),
                    labels: spec.labels.clone(),
                    ipam: Ipam {
                        config: Some(vec![IpamConfig {
                            subnet: Some(subnet.clone()),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    },
                    ..Default::default()
                })
                .await;
            match created {
                Ok(_) => return Ok(()),
                // The subnet overlaps a network the listing did not show (another worker's, or
                // one that is not Cadenza's): try the next one, a bounded number of times.
                Err(err) if attempts < 32 && is_overlap(&err) => {
                    taken.insert(subnet);
                    last_error = Some(err);
                }
                Err(err) => return Err(docker_err("create network")(err)),
            }
        }
        Err(match last_error {
            Some(err) => docker_err("create network")(err),
            None => ContainerError::NoSubnet,
        })
    }

    pub async fn ping(&self) -> Result<(), ContainerError> {
        self.docker.ping().await.map_err(docker_err("ping"))?;
        Ok(())
    }

    /// Makes sure the image is present, pulling it (bounded by `pull_timeout`) when it is not.
    /// Returns the user the image runs as.
    pub async fn ensure_image(
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

    /// Creates the workspace's network and container and starts it, from an image
    /// [`DockerRuntime::ensure_image`] made present (`image_user` is what it returned). On any
    /// failure, whatever was created is removed again.
    pub async fn start_workspace(
        &self,
        spec: &WorkspaceSpec,
        image_user: &str,
    ) -> Result<Workspace, ContainerError> {
        let (uid, gid) = cadenza_domain::images::container_user(image_user, spec.fallback_user);
        let user = format!("{uid}:{gid}");
        let network = spec.name.clone();
        self.create_workspace_network(spec).await?;
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
        let started = async {
            let base_commit = match &spec.clone {
                Some(clone) => Some(self.clone_into_volume(spec, clone, &network, &user).await?),
                None => None,
            };
            let mut workspace = self.create_and_start(spec, &network, &user).await?;
            workspace.base_commit = base_commit;
            Ok(workspace)
        };
        match started.await {
            Ok(workspace) => Ok(workspace),
            Err(err) => {
                self.remove_workspace(&spec.name, &network).await;
                Err(err)
            }
        }
    }

    /// Clones the repository into the workspace's volume (named like the workspace) with a
    /// short-lived helper on the workspace's network, and returns the base commit. The helper
    /// runs as root only to hand the files to the agent's `user`: every other capability is
    /// dropped, and it runs nothing from the repository. It is removed whatever happens.
    async fn clone_into_volume(
        &self,
        spec: &WorkspaceSpec,
        clone: &CloneSpec,
        network: &str,
        user: &str,
    ) -> Result<String, ContainerError> {
        self.docker
            .create_volume(CreateVolumeOptions {
                name: spec.name.clone(),
                labels: spec.labels.clone(),
                ..Default::default()
            })
            .await
            .map_err(docker_err("create volume"))?;
        let helper = format!("{}-clone", spec.name);
        let mut env = vec![
            "GIT_TERMINAL_PROMPT=0".to_owned(),
            format!("CADENZA_CLONE_URL={}", clone.url),
            format!(
                "CADENZA_CLONE_BRANCH={}",
                clone.branch.as_deref().unwrap_or_default()
            ),
            format!("CADENZA_CLONE_OWNER={user}"),
            // No credential helper may ask for or store anything.
            "GIT_CONFIG_COUNT=2".to_owned(),
            "GIT_CONFIG_KEY_0=credential.helper".to_owned(),
            "GIT_CONFIG_VALUE_0=".to_owned(),
        ];
        match &clone.auth_header {
            Some(header) => {
                env.push("GIT_CONFIG_KEY_1=http.extraHeader".to_owned());
                env.push(format!("GIT_CONFIG_VALUE_1={}", header.expose_secret()));
            }
            None => {
                env.push("GIT_CONFIG_KEY_1=core.askPass".to_owned());
                env.push("GIT_CONFIG_VALUE_1=".to_owned());
            }
        }
        let mut labels = spec.labels.clone();
        labels.insert(LABEL_ROLE.to_owned(), "clone".to_owned());
        let config = Config {
            image: Some(clone.image.clone()),
            env: Some(env),
            labels: Some(labels),
            user: Some("0:0".to_owned()),
            entrypoint: Some(vec!["sh".to_owned(), "-c".to_owned()]),
            cmd: Some(vec![CLONE_SCRIPT.to_owned()]),
            host_config: Some(HostConfig {
                cap_drop: Some(vec!["ALL".to_owned()]),
                cap_add: Some(vec!["CHOWN".to_owned()]),
                security_opt: Some(vec!["no-new-privileges".to_owned()]),
                network_mode: Some(network.to_owned()),
                pids_limit: Some(256),
                memory: Some(1024 * 1024 * 1024),
                mounts: Some(vec![Mount {
                    target: Some("/clone".to_owned()),
                    source: Some(spec.name.clone()),
                    typ: Some(MountTypeEnum::VOLUME),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let result = async {
            self.docker
                .create_container(
                    Some(CreateContainerOptions {
                        name: helper.clone(),
                        platform: None,
                    }),
                    config,
                )
                .await
                .map_err(docker_err("create clone helper"))?;
            self.docker
                .start_container::<String>(&helper, None)
                .await
                .map_err(docker_err("start clone helper"))?;
            let mut waited = self.docker.wait_container::<String>(&helper, None);
            let exit_code = match tokio::time::timeout(clone.timeout, waited.next()).await {
                Err(_) => return Err(ContainerError::CloneTimedOut(clone.timeout)),
                Ok(Some(Ok(exit))) => exit.status_code,
                // A non-zero exit arrives as an error carrying the code.
                Ok(Some(Err(DockerError::DockerContainerWaitError { code, .. }))) => code,
                Ok(Some(Err(err))) => return Err(docker_err("wait for clone helper")(err)),
                Ok(None) => -1,
            };
            let output = self.log_tail(&helper, 200).await;
            if exit_code != 0 {
                let output = output.trim().to_owned();
                return Err(ContainerError::CloneFailed { exit_code, output });
            }
            output
                .lines()
                .find_map(|line| line.trim().strip_prefix("cadenza-base-commit "))
                .map(|commit| commit.trim().to_owned())
                .filter(|commit| commit.len() >= 40)
                .ok_or_else(|| ContainerError::CloneFailed {
                    exit_code,
                    output: "the clone reported no base commit".to_owned(),
                })
        }
        .await;
        if let Err(err) = self
            .docker
            .remove_container(
                &helper,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await
            && !is_not_found(&err)
        {
            tracing::warn!(container = helper, error = %err, "removing the clone helper failed");
        }
        result
    }

    async fn create_and_start(
        &self,
        spec: &WorkspaceSpec,
        network: &str,
        user: &str,
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
            mounts: spec.clone.as_ref().map(|_| {
                vec![Mount {
                    target: Some(spec.workspace_dir.clone()),
                    source: Some(spec.name.clone()),
                    typ: Some(MountTypeEnum::VOLUME),
                    ..Default::default()
                }]
            }),
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
            // Always numeric and never 0 (see `cadenza_domain::images::container_user`).
            user: Some(user.to_owned()),
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
            base_commit: None,
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
        // The clone's volume, when the workspace had one (named like the container).
        if let Err(err) = self.docker.remove_volume(container, None).await
            && !is_not_found(&err)
        {
            tracing::warn!(volume = container, error = %err, "removing a workspace volume failed");
        }
    }

    /// Every container Cadenza manages on this engine, whichever worker made it: the worker
    /// adopts the runs of workers that died (found by their labels, not by worker name) and
    /// removes what no run needs any more.
    pub async fn managed_containers(
        &self,
        deployment: &str,
    ) -> Result<Vec<ManagedContainer>, ContainerError> {
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![
                format!("{LABEL_MANAGED}=true"),
                format!("{LABEL_DEPLOYMENT}={deployment}"),
            ],
        )]);
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
                let labels = container.labels.unwrap_or_default();
                let name = container.names?.into_iter().next()?;
                Some(ManagedContainer {
                    name: name.trim_start_matches('/').to_owned(),
                    run: labels
                        .get(LABEL_RUN)
                        .and_then(|run| uuid::Uuid::parse_str(run).ok())
                        .map(cadenza_domain::RunId::from),
                    attempt: labels.get(LABEL_ATTEMPT).and_then(|a| a.parse().ok()),
                    clone_helper: labels.get(LABEL_ROLE).map(String::as_str) == Some("clone"),
                    running: container.state.as_deref() == Some("running"),
                })
            })
            .collect())
    }
}

/// A container Cadenza made, as its labels describe it.
#[derive(Clone, Debug)]
pub struct ManagedContainer {
    pub name: String,
    /// The run it was made for (a follow-up turn works in its parent's container).
    pub run: Option<cadenza_domain::RunId>,
    pub attempt: Option<i32>,
    /// A clone helper (`<workspace>-clone`), alive only while a workspace is prepared.
    pub clone_helper: bool,
    pub running: bool,
}

fn published_port(inspect: bollard::models::ContainerInspectResponse) -> Option<u16> {
    inspect
        .network_settings
        .and_then(|settings| settings.ports)
        .and_then(|ports| ports.get(AGENT_PORT).cloned().flatten())
        .and_then(|bindings| bindings.into_iter().find_map(|binding| binding.host_port))
        .and_then(|port| port.parse::<u16>().ok())
}

#[cfg(test)]
mod tests {
    use super::SubnetPool;

    #[test]
    fn the_range_is_carved_into_equal_subnets() {
        let pool = SubnetPool::new("10.213.7.9/16", 28).expect("pool");
        assert_eq!(pool.len(), 4096);
        assert_eq!(pool.subnet(0), "10.213.0.0/28");
        assert_eq!(pool.subnet(1), "10.213.0.16/28");
        assert_eq!(pool.subnet(4095), "10.213.255.240/28");
        for (range, bits) in [
            ("10.0.0.0", 28),
            ("10.0.0.0/33", 28),
            ("x/16", 28),
            ("10.0.0.0/16", 30),
            ("10.0.0.0/24", 20),
        ] {
            assert!(SubnetPool::new(range, bits).is_err(), "{range} /{bits}");
        }
    }
}
