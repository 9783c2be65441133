//! What the worker needs from a container engine, as a trait: the Docker Engine in production
//! ([`crate::docker::DockerRuntime`]), an in-process engine in the driver's tests.

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use secrecy::SecretString;

use crate::docker::{ContainerError, DockerRuntime, ManagedContainer, Workspace, WorkspaceSpec};

#[async_trait]
pub(crate) trait ContainerRuntime: Send + Sync {
    /// Whether the engine answers.
    async fn ping(&self) -> Result<(), ContainerError>;
    /// Makes the image present (pulling within `pull_timeout`); returns the user it runs as.
    async fn ensure_image(
        &self,
        image: &str,
        pull_timeout: Duration,
    ) -> Result<String, ContainerError>;
    /// Creates and starts the workspace's network and container (and clones its repository).
    async fn start_workspace(
        &self,
        spec: &WorkspaceSpec,
        image_user: &str,
    ) -> Result<Workspace, ContainerError>;
    /// `None` while the container runs; otherwise how it ended (exit code, last log lines).
    async fn exit_status(&self, container: &str) -> Option<String>;
    /// The agent-server's host port of a running container.
    async fn running_host_port(&self, container: &str) -> Option<u16>;
    /// The session key the container's agent-server was started with.
    async fn session_key(&self, container: &str) -> Option<SecretString>;
    /// Whether the image is labelled as a scripted agent (needs no LLM).
    async fn is_scripted_agent(&self, image: &str) -> bool;
    /// The container's output, from its start; ends when the container goes.
    fn follow_logs(&self, container: &str) -> BoxStream<'static, bytes::Bytes>;
    /// Removes the container, its network and its volume; never fails (logs instead).
    async fn remove_workspace(&self, container: &str, network: &str);
    /// How many workspace networks the named worker holds.
    async fn networks_of(&self, worker: &str) -> Result<usize, ContainerError>;
    /// Every container Cadenza manages for this deployment on the engine.
    async fn managed_containers(
        &self,
        deployment: &str,
    ) -> Result<Vec<ManagedContainer>, ContainerError>;
}

#[async_trait]
impl ContainerRuntime for DockerRuntime {
    async fn ping(&self) -> Result<(), ContainerError> {
        DockerRuntime::ping(self).await
    }

    async fn ensure_image(
        &self,
        image: &str,
        pull_timeout: Duration,
    ) -> Result<String, ContainerError> {
        DockerRuntime::ensure_image(self, image, pull_timeout).await
    }

    async fn start_workspace(
        &self,
        spec: &WorkspaceSpec,
        image_user: &str,
    ) -> Result<Workspace, ContainerError> {
        DockerRuntime::start_workspace(self, spec, image_user).await
    }

    async fn exit_status(&self, container: &str) -> Option<String> {
        DockerRuntime::exit_status(self, container).await
    }

    async fn running_host_port(&self, container: &str) -> Option<u16> {
        DockerRuntime::running_host_port(self, container).await
    }

    async fn session_key(&self, container: &str) -> Option<SecretString> {
        DockerRuntime::session_key(self, container).await
    }

    async fn is_scripted_agent(&self, image: &str) -> bool {
        DockerRuntime::is_scripted_agent(self, image).await
    }

    fn follow_logs(&self, container: &str) -> BoxStream<'static, bytes::Bytes> {
        Box::pin(DockerRuntime::follow_logs(self, container))
    }

    async fn remove_workspace(&self, container: &str, network: &str) {
        DockerRuntime::remove_workspace(self, container, network).await
    }

    async fn networks_of(&self, worker: &str) -> Result<usize, ContainerError> {
        DockerRuntime::networks_of(self, worker).await
    }

    async fn managed_containers(
        &self,
        deployment: &str,
    ) -> Result<Vec<ManagedContainer>, ContainerError> {
        DockerRuntime::managed_containers(self, deployment).await
    }
}
