//! Docker helpers for tests: which agent image to use, and a guard that removes every container
//! (and network) a test's worker created, also when the test fails.

use std::process::Command;

/// The scripted fake agent-server image built by `scripts/build-images.sh`.
pub fn fake_agent_image() -> String {
    std::env::var("CADENZA_TEST_FAKE_AGENT_IMAGE")
        .unwrap_or_else(|_| "cadenza/fake-agent-server:dev".to_owned())
}

/// Removes every Docker object of `kind` (`network`, `volume`) matching the `label=…` filter.
fn remove_labelled(kind: &str, filter: &str) {
    let Ok(output) = Command::new("docker")
        .args([kind, "ls", "-q", "--filter", filter])
        .output()
    else {
        return;
    };
    let ids: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .args([kind, "rm"])
            .args(&ids)
            .output();
    }
}

/// Ids of the containers carrying `label=value`, running or not.
pub fn containers_with_label(label: &str, value: &str) -> Vec<String> {
    let output = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label={label}={value}")])
        .output();
    match output {
        Ok(output) => String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Ids of the networks carrying `label=value`.
pub fn networks_with_label(label: &str, value: &str) -> Vec<String> {
    let output = Command::new("docker")
        .args([
            "network",
            "ls",
            "-q",
            "--filter",
            &format!("label={label}={value}"),
        ])
        .output();
    match output {
        Ok(output) => String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Removes, on drop, every container, network and volume labelled with one of these worker
/// names (`io.cadenza.worker`), so a stack with several workers leaves nothing behind.
pub struct ContainerSweeper {
    worker_names: Vec<String>,
}

impl ContainerSweeper {
    /// A sweeper for one worker's objects.
    pub fn for_worker(worker_name: impl Into<String>) -> Self {
        Self::for_workers([worker_name])
    }

    /// A sweeper for the objects of every one of these workers.
    pub fn for_workers<Name: Into<String>>(worker_names: impl IntoIterator<Item = Name>) -> Self {
        Self {
            worker_names: worker_names.into_iter().map(Into::into).collect(),
        }
    }

    /// Removes every container (with its anonymous volumes), network and volume of the workers
    /// now; errors are ignored (this runs on drop).
    pub fn sweep(&self) {
        for worker_name in &self.worker_names {
            let label = format!("label=io.cadenza.worker={worker_name}");
            let containers = containers_with_label("io.cadenza.worker", worker_name);
            if !containers.is_empty() {
                let _ = Command::new("docker")
                    .args(["rm", "-f", "-v"])
                    .args(&containers)
                    .output();
            }
            for kind in ["network", "volume"] {
                remove_labelled(kind, &label);
            }
        }
    }
}

impl Drop for ContainerSweeper {
    fn drop(&mut self) {
        self.sweep();
    }
}
