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

/// A Git server over HTTP that answers only `Authorization: Basic <user:password>` (401
/// otherwise), serving `/repo.git` with one commit on `main`: a private repository. It runs
/// `git http-backend` behind a few lines of Python in the real agent-server image (the image
/// at hand that has both).
pub struct PrivateGitServer {
    pub name: String,
}

const PRIVATE_GIT_SERVER: &str = r#"
import base64, os, subprocess
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

EXPECTED = "Basic " + base64.b64encode(os.environ["GIT_AUTH"].encode()).decode()

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.serve()

    def do_POST(self):
        self.serve()

    def serve(self):
        if self.headers.get("Authorization") != EXPECTED:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        env = dict(os.environ, GIT_PROJECT_ROOT="/tmp/srv", GIT_HTTP_EXPORT_ALL="1",
                   PATH_INFO=path, QUERY_STRING=query, REQUEST_METHOD=self.command,
                   CONTENT_TYPE=self.headers.get("Content-Type", ""),
                   CONTENT_LENGTH=str(len(body)), REMOTE_USER="git", REMOTE_ADDR="127.0.0.1",
                   GIT_PROTOCOL=self.headers.get("Git-Protocol", ""))
        out = subprocess.run(["git", "http-backend"], input=body, env=env,
                             capture_output=True).stdout
        sep = b"\r\n\r\n" if b"\r\n\r\n" in out else b"\n\n"
        head, _, rest = out.partition(sep)
        status, headers = 200, []
        for line in head.decode().splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.strip().split()[0])
            elif key:
                headers.append((key, value.strip()))
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(rest)))
        self.end_headers()
        self.wfile.write(rest)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"#;

impl PrivateGitServer {
    /// `credentials` is `user:password`.
    pub fn start(credentials: &str) -> Self {
        let name = cadenza_testkit::infra::unique_name("cadenza-test-private-git-");
        let script = format!(
            "set -e; mkdir -p /tmp/srv; cd /tmp/srv; git init -q --bare repo.git; \
             git clone -q repo.git /tmp/w 2>/dev/null; cd /tmp/w; git config user.email t@example.com; \
             git config user.name t; echo private > README.md; git add README.md; git commit -qm base; \
             git push -q origin HEAD:refs/heads/main; git --git-dir=/tmp/srv/repo.git symbolic-ref HEAD refs/heads/main; \
             cat > /tmp/server.py <<'PY'\n{PRIVATE_GIT_SERVER}\nPY\n\
             exec python3 /tmp/server.py"
        );
        let output = Command::new("docker")
            .args([
                "run",
                "-d",
                "--name",
                &name,
                "--label",
                "io.cadenza.test=private-git-server",
                "-e",
                &format!("GIT_AUTH={credentials}"),
                "--entrypoint",
                "bash",
                "cadenza/openhands-agent-server:1.58.0",
                "-c",
                &script,
            ])
            .output()
            .expect("docker run");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let server = Self { name };
        // Ready when it refuses an anonymous request.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let probe = Command::new("docker")
                .args([
                    "exec",
                    &server.name,
                    "bash",
                    "-c",
                    "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /repo.git/info/refs HTTP/1.0\\r\\n\\r\\n' >&3 && head -c 12 <&3",
                ])
                .output()
                .expect("docker exec");
            if String::from_utf8_lossy(&probe.stdout).contains("401") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the private git server did not start: {}",
                String::from_utf8_lossy(&probe.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }

    pub fn url(&self) -> String {
        format!("http://{}:8080/repo.git", self.name)
    }
}

impl Drop for PrivateGitServer {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
    }
}
