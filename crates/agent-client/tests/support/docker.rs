//! Containers and networks a test creates through the Docker CLI, removed again on drop (also
//! when the test panics) and labelled so that leftovers of a killed run can be found:
//!
//! ```sh
//! docker rm -f $(docker ps -aq --filter label=io.cadenza.test=agent-client-conformance)
//! docker network prune -f --filter label=io.cadenza.test=agent-client-conformance
//! ```

use std::net::SocketAddr;
use std::process::{Command, Output};

pub const TEST_LABEL: &str = "io.cadenza.test=agent-client-conformance";

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("cannot run `docker {}`: {error}", args.join(" ")))
}

fn docker_ok(args: &[&str]) -> String {
    let output = docker(args);
    assert!(
        output.status.success(),
        "`docker {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Fails the test, saying how to get the image, when `image` is not present locally: a missing
/// image must never turn into a silently skipped suite.
pub fn require_image(image: &str) {
    let output = docker(&["image", "inspect", "--format", "{{.Id}}", image]);
    assert!(
        output.status.success(),
        "the image {image} is missing: build it with scripts/build-images.sh \
         (no registry is used; the images are built locally)"
    );
}

/// A user-defined bridge network, so containers reach each other by name.
pub struct Network {
    pub name: String,
}

impl Network {
    pub fn create(name: String) -> Self {
        docker_ok(&["network", "create", "--label", TEST_LABEL, &name]);
        Self { name }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &self.name]);
    }
}

/// A detached container; removed with its anonymous volumes on drop.
pub struct Container {
    pub name: String,
}

impl Container {
    /// `docker run -d --name <name> --label ... <args>`; `args` holds the options, the image
    /// and its arguments.
    pub fn run(name: String, args: &[&str]) -> Self {
        let mut command = vec!["run", "-d", "--name", &name, "--label", TEST_LABEL];
        command.extend_from_slice(args);
        docker_ok(&command);
        Self { name }
    }

    /// The loopback address Docker published the container's `port` on.
    pub fn published_address(&self, port: u16) -> SocketAddr {
        let mapping = docker_ok(&["port", &self.name, &format!("{port}/tcp")]);
        mapping
            .lines()
            .find_map(|line| line.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no IPv4 mapping for port {port} of {}: {mapping}",
                    self.name
                )
            })
    }

    pub fn is_running(&self) -> bool {
        docker(&["inspect", "--format", "{{.State.Running}}", &self.name])
            .stdout
            .starts_with(b"true")
    }

    /// The container's output so far, for failure messages.
    pub fn logs(&self) -> String {
        let output = docker(&["logs", "--tail", "60", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", "-v", &self.name]);
    }
}
