//! Schema-driven fuzzing of the public API: schemathesis (from PyPI, installed by
//! `scripts/fuzz-env.sh`) reads the served OpenAPI document and sends generated requests to a
//! real stack, as an instance administrator and org owner. Every answer must be a documented
//! status with a body that matches its schema, and none may be a server error.

use std::process::Stdio;
use std::time::Duration;

use cadenza_testkit::stack::{Stack, StackOptions};

/// Generated cases per operation: about 10,000 requests in all.
const EXAMPLES_PER_OPERATION: u32 = 160;
/// The least the run must generate to count.
const MINIMUM_CASES: u64 = 10_000;

#[tokio::test]
async fn generated_requests_from_the_openapi_document_get_no_server_error_and_match_their_schemas()
{
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let setup = tokio::process::Command::new(root.join("scripts/fuzz-env.sh"))
        .output()
        .await
        .expect("scripts/fuzz-env.sh runs");
    assert!(
        setup.status.success(),
        "setting up schemathesis failed: {}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let schemathesis = String::from_utf8(setup.stdout).expect("a path");
    let schemathesis = schemathesis.trim();

    let stack = Stack::start_with(StackOptions {
        extra_env: vec![
            ("CADENZA_RATE_LIMIT_PER_CALLER".to_owned(), "0".to_owned()),
            ("CADENZA_RATE_LIMIT_PER_ORG".to_owned(), "0".to_owned()),
        ],
        ..StackOptions::default()
    })
    .await
    .expect("stack starts");
    let schema = format!("{}/api/v1/openapi.json", stack.api_url);
    let run = tokio::process::Command::new(schemathesis)
        .args([
            "run",
            &schema,
            "--url",
            &format!("{}/api/v1", stack.api_url),
            "--header",
            &format!("Authorization: Bearer {}", stack.token),
            "--max-examples",
            &EXAMPLES_PER_OPERATION.to_string(),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--request-timeout",
            "20",
            "--seed",
            "1",
            "--no-color",
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(1200), run)
        .await
        .expect("schemathesis finishes within 20 minutes")
        .expect("schemathesis runs");
    let report = String::from_utf8_lossy(&output.stdout);
    // The summary, with the request count, goes to the test's output.
    println!("{report}");
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The summary's "N generated, N passed": the run must have been as large as promised.
    let generated = report
        .lines()
        .find_map(|line| line.trim().split_once(" generated, "))
        .and_then(|(count, _)| count.trim().parse::<u64>().ok())
        .expect("the summary names how many cases were generated");
    assert!(
        generated >= MINIMUM_CASES,
        "only {generated} cases were generated; at least {MINIMUM_CASES} are required"
    );
}
