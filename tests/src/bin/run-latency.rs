//! Measures how long a run takes from `POST /runs` to `running` and to `succeeded`, through all
//! four services as separate processes with the fake agent image.
//!
//! `cargo build --bins && cargo run -p cadenza-e2e --bin run-latency -- [samples] [--real]`
//!
//! With `--real` the project uses the real OpenHands agent-server image, driven by the scripted
//! LLM container.
//!
//! Times come from the run's own timestamps (Postgres `now()` at each transition), so client
//! polling does not inflate them. Prints a Markdown table with the median, min and max.

use std::time::Duration;

use anyhow::Context;
use cadenza_e2e::Api;
use cadenza_testkit::stack::Stack;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const HELLO: &str = "$ echo hello > hello.txt\n$ cat hello.txt\ndone";

fn at(run: &serde_json::Value, field: &str) -> anyhow::Result<OffsetDateTime> {
    let text = run[field]
        .as_str()
        .with_context(|| format!("{field} is missing"))?;
    Ok(OffsetDateTime::parse(text, &Rfc3339)?)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let real = args.iter().any(|arg| arg == "--real");
    let samples: usize = args
        .iter()
        .find(|arg| !arg.starts_with("--"))
        .map(|arg| arg.parse())
        .transpose()
        .context("the sample count must be a number")?
        .unwrap_or(5);
    let llm = real.then(cadenza_e2e::services::FakeLlm::start);
    let mut options = cadenza_testkit::stack::StackOptions::default();
    if let Some(llm) = &llm {
        options.extra_env = vec![
            ("CADENZA_ATTACH_CONTAINERS".into(), llm.name.clone()),
            (
                "CADENZA_DEFAULT_LLM_MODEL".into(),
                "openai/fake-model".into(),
            ),
            ("CADENZA_DEFAULT_LLM_BASE_URL".into(), llm.base_url()),
            ("CADENZA_DEFAULT_LLM_API_KEY".into(), "sk-fake".into()),
            ("CADENZA_LLM_API_MODE".into(), "chat".into()),
        ];
    }
    let stack = Stack::start_with(options).await?;
    let api = Api::new(&stack.api_url, &stack.token);
    let project = stack.project.id.to_string();
    if real {
        let response = api
            .http
            .patch(api.url(&format!("/projects/{project}")))
            .bearer_auth(&api.token)
            .json(&serde_json::json!({"agent": {"image": "cadenza/openhands-agent-server:1.58.0", "memory_mb": 2048, "cpus": 2.0}}))
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "patching the project failed"
        );
    }

    // One warm-up run: the first container start pays for cold caches.
    let (_, warm) = api.submit_run(&project, HELLO, None).await?;
    api.wait_for_end(warm["id"].as_str().context("id")?, Duration::from_secs(120))
        .await?;

    let mut to_running = Vec::new();
    let mut to_succeeded = Vec::new();
    for _ in 0..samples {
        let (_, run) = api.submit_run(&project, HELLO, None).await?;
        let run = api
            .wait_for_end(run["id"].as_str().context("id")?, Duration::from_secs(120))
            .await?;
        anyhow::ensure!(run["state"] == "succeeded", "run failed: {run}");
        let created = at(&run, "created_at")?;
        to_running.push((at(&run, "running_at")? - created).as_seconds_f64() * 1000.0);
        to_succeeded.push((at(&run, "finished_at")? - created).as_seconds_f64() * 1000.0);
    }
    let row = |name: &str, values: &mut Vec<f64>| {
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(0.0, f64::max);
        format!(
            "| {name} | {:.0} | {:.0} | {:.0} |",
            median(values),
            min,
            max
        )
    };
    #[expect(clippy::print_stdout, reason = "the report is the program's output")]
    {
        let image = if real {
            "real agent-server image, scripted LLM"
        } else {
            "fake agent image"
        };
        println!("Run latency over {samples} hello runs ({image}), in ms:\n");
        println!("| interval | median | min | max |\n|---|---|---|---|");
        println!("{}", row("POST → running", &mut to_running));
        println!("{}", row("POST → succeeded", &mut to_succeeded));
    }
    Ok(())
}
