//! Throwaway service containers for cross-service tests, removed on drop. The worker reaches
//! them by name through `CADENZA_ATTACH_CONTAINERS`.

use std::process::Command;
use std::time::{Duration, Instant};

/// A throwaway Git server (the fake agent image has git) removed on drop.
pub struct GitServer {
    pub name: String,
}

impl GitServer {
    pub fn start() -> Self {
        let name = cadenza_testkit::infra::unique_name("cadenza-test-git-");
        let script = "set -e; mkdir -p /tmp/srv; cd /tmp/srv; git init -q --bare repo.git; \
            git clone -q repo.git /tmp/w 2>/dev/null; cd /tmp/w; git config user.email t@example.com; \
            git config user.name t; echo base > README.md; git add README.md; git commit -qm base; \
            git push -q origin HEAD:refs/heads/main; git --git-dir=/tmp/srv/repo.git symbolic-ref HEAD refs/heads/main; \
            exec git daemon --reuseaddr --export-all --base-path=/tmp/srv --listen=0.0.0.0 --port=9418 /tmp/srv";
        let status = Command::new("docker")
            .args([
                "run",
                "-d",
                "--name",
                &name,
                "--label",
                "io.cadenza.test=git-server",
                "--entrypoint",
                "bash",
            ])
            .arg(cadenza_testkit::docker::fake_agent_image())
            .args(["-c", script])
            .output()
            .expect("docker run");
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        let server = Self { name };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let probe = Command::new("docker")
                .args([
                    "exec",
                    &server.name,
                    "git",
                    "ls-remote",
                    "git://127.0.0.1/repo.git",
                ])
                .output()
                .expect("docker exec");
            if probe.status.success() && !probe.stdout.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "the git server did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
    }
}

/// The scripted OpenAI-compatible LLM (`cadenza/fake-llm:dev`), listening on port 8080.
pub struct FakeLlm {
    pub name: String,
}

impl FakeLlm {
    /// Answers any API key.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Answers only `Authorization: Bearer <api_key>` (401 otherwise), so a run that finishes
    /// proves the key reached the LLM.
    pub fn start_requiring_key(api_key: &str) -> Self {
        Self::start_with(Some(api_key))
    }

    fn start_with(api_key: Option<&str>) -> Self {
        let name = cadenza_testkit::infra::unique_name("cadenza-test-llm-");
        let image = std::env::var("CADENZA_TEST_FAKE_LLM_IMAGE")
            .unwrap_or_else(|_| "cadenza/fake-llm:dev".to_owned());
        let mut command = Command::new("docker");
        command.args([
            "run",
            "-d",
            "--name",
            &name,
            "--label",
            "io.cadenza.test=fake-llm",
            // Published on loopback only, for the test to read what reached it.
            "--publish",
            "127.0.0.1::8080",
        ]);
        if let Some(key) = api_key {
            command.args(["-e", &format!("CADENZA_FAKE_LLM_API_KEY={key}")]);
        }
        let output = command.arg(&image).output().expect("docker run");
        assert!(
            output.status.success(),
            "starting {image} failed (run scripts/build-images.sh): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Self { name }
    }

    /// The base URL agents use to reach it.
    pub fn base_url(&self) -> String {
        format!("http://{}:8080/v1", self.name)
    }

    /// Every distinct API key presented to it so far.
    pub async fn presented_keys(&self) -> Vec<String> {
        let output = Command::new("docker")
            .args(["port", &self.name, "8080/tcp"])
            .output()
            .expect("docker port");
        let published = String::from_utf8_lossy(&output.stdout);
        let address = published
            .lines()
            .find(|line| line.starts_with("127.0.0.1:"))
            .expect("the fake LLM publishes its port on loopback")
            .trim()
            .to_owned();
        let answer: serde_json::Value = reqwest::get(format!("http://{address}/_fake/api-keys"))
            .await
            .expect("the fake LLM answers")
            .json()
            .await
            .expect("json");
        answer["api_keys"]
            .as_array()
            .map(|keys| {
                keys.iter()
                    .filter_map(|key| key.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
    }
}
