//! Helpers for the cross-service tests under `tests/tests/`: a small API client and an SSE reader.

pub mod services;
pub mod sse;

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// A thin client for Cadenza's public API, holding nothing but a base URL and a token.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str, token: &str) -> Self {
        Self {
            base: base.to_owned(),
            token: token.to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("a reqwest client"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        Ok(self
            .http
            .get(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await?)
    }

    pub async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let response = self.get(path).await?;
        let status = response.status();
        let body: Value = response.json().await.context("decoding JSON")?;
        if !status.is_success() {
            bail!("GET {path} answered {status}: {body}");
        }
        Ok(body)
    }

    pub async fn submit_run(
        &self,
        project_id: &str,
        prompt: &str,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<(reqwest::StatusCode, Value)> {
        let mut body = json!({ "prompt": prompt });
        if let Some(key) = idempotency_key {
            body["idempotency_key"] = json!(key);
        }
        let response = self
            .http
            .post(self.url(&format!("/projects/{project_id}/runs")))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        Ok((status, response.json().await?))
    }

    /// Polls the run until `done(run)` holds, for at most `budget`.
    pub async fn wait_for_run(
        &self,
        run_id: &str,
        budget: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + budget;
        loop {
            let run = self.get_json(&format!("/runs/{run_id}")).await?;
            if done(&run) {
                return Ok(run);
            }
            if Instant::now() > deadline {
                bail!("run {run_id} did not reach the expected state within {budget:?}: {run}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_for_end(&self, run_id: &str, budget: Duration) -> anyhow::Result<Value> {
        self.wait_for_run(run_id, budget, |run| {
            matches!(
                run["state"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            )
        })
        .await
    }

    /// The run's patch as text (empty when it has none).
    pub async fn diff(&self, run_id: &str) -> anyhow::Result<String> {
        Ok(self
            .get(&format!("/runs/{run_id}/diff"))
            .await?
            .text()
            .await?)
    }

    /// Submits a run and waits for its end.
    pub async fn run_to_end(
        &self,
        project_id: &str,
        prompt: &str,
        budget: Duration,
    ) -> anyhow::Result<Value> {
        let (status, run) = self.submit_run(project_id, prompt, None).await?;
        if status != reqwest::StatusCode::CREATED {
            bail!("submitting a run answered {status}: {run}");
        }
        let run_id = run["id"].as_str().context("run id")?.to_owned();
        self.wait_for_end(&run_id, budget).await
    }

    /// Every journal entry after `cursor`, paging with `limit`.
    pub async fn all_events(&self, run_id: &str, limit: u32) -> anyhow::Result<Vec<Value>> {
        let mut cursor = 0i64;
        let mut events = Vec::new();
        for _ in 0..10_000 {
            let page = self
                .get_json(&format!(
                    "/runs/{run_id}/events?cursor={cursor}&limit={limit}"
                ))
                .await?;
            let items = page["items"].as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                return Ok(events);
            }
            cursor = page["next_cursor"]
                .as_str()
                .and_then(|cursor| cursor.parse().ok())
                .context("next_cursor")?;
            events.extend(items);
        }
        bail!("paging did not end")
    }
}

/// The sequence numbers of journal entries, in order.
pub fn seqs(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .filter_map(|event| event["seq"].as_i64())
        .collect()
}

/// Waits (at most `budget`) until no container of the run is left: a worker removes a run's
/// container right after it records the end, so a client may see the end a moment before.
pub async fn containers_gone(run_id: &str, budget: Duration) -> bool {
    let deadline = Instant::now() + budget;
    loop {
        if cadenza_testkit::docker::containers_with_label("io.cadenza.run", run_id).is_empty() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
