//! The OpenAPI document: what the API serves is what the code generates, is what is committed in
//! `docs/openapi.json`, and describes exactly the routes of the route table.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cadenza_api::routes::{Access, route_specs};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

mod common;
use common::app;

const COMMITTED: &str = include_str!("../../../docs/openapi.json");

#[test]
fn the_committed_document_is_what_the_code_generates() {
    assert!(
        COMMITTED == cadenza_api::openapi::rendered(),
        "docs/openapi.json is out of date: regenerate it with \
         `cargo run -q -p cadenza-api -- openapi > docs/openapi.json`"
    );
}

fn document() -> Value {
    serde_json::from_str(COMMITTED).expect("docs/openapi.json is JSON")
}

#[test]
fn every_route_of_the_table_is_documented_and_the_document_has_no_other() {
    let document = document();
    let documented: BTreeSet<(String, String)> = document["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, operations)| {
            operations
                .as_object()
                .expect("operations")
                .keys()
                .map(move |method| (method.to_uppercase(), path.clone()))
        })
        .collect();
    let routed: BTreeSet<(String, String)> = route_specs()
        .iter()
        .map(|spec| (spec.method.as_str().to_owned(), spec.path.to_owned()))
        .collect();
    assert_eq!(documented, routed);
    assert!(routed.len() > 50, "the whole table: {}", routed.len());
}

#[test]
fn each_operation_declares_the_access_its_route_enforces() {
    let document = document();
    for spec in route_specs() {
        let operation =
            &document["paths"][spec.path][spec.method.as_str().to_ascii_lowercase().as_str()];
        let security = operation["security"].as_array().expect("security");
        let responses = &operation["responses"];
        match spec.access {
            Access::Public => {
                assert!(security.is_empty(), "{} {}", spec.method, spec.path);
                assert_eq!(operation["x-cadenza-access"], json!("public"));
            }
            Access::Authenticated => {
                assert_eq!(security.len(), 2, "{} {}", spec.method, spec.path);
                assert!(
                    responses.get("401").is_some(),
                    "{} {}",
                    spec.method,
                    spec.path
                );
            }
            Access::Org(permission) => {
                assert_eq!(
                    operation["x-cadenza-access"],
                    json!(format!("org:{}", permission.as_str()))
                );
                assert!(
                    responses.get("403").is_some(),
                    "{} {}",
                    spec.method,
                    spec.path
                );
            }
            Access::Instance => {
                assert_eq!(operation["x-cadenza-access"], json!("instance-admin"));
            }
        }
    }
}

/// Every `$ref` in `value`.
fn references(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            for (key, field) in fields {
                match (key.as_str(), field) {
                    ("$ref", Value::String(reference)) => into.push(reference.clone()),
                    _ => references(field, into),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| references(item, into)),
        _ => {}
    }
}

#[test]
fn every_reference_resolves_and_every_operation_is_named_once_and_answers_something() {
    let document = document();
    assert_eq!(document["openapi"], "3.1.0");
    let mut found = Vec::new();
    references(&document, &mut found);
    assert!(!found.is_empty());
    for reference in found {
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("a local reference: {reference}"));
        assert!(
            document.pointer(pointer).is_some(),
            "`{reference}` resolves to nothing"
        );
    }
    let mut ids = BTreeSet::new();
    for operations in document["paths"].as_object().expect("paths").values() {
        for operation in operations.as_object().expect("operations").values() {
            let id = operation["operationId"].as_str().expect("an operationId");
            assert!(ids.insert(id.to_owned()), "`{id}` twice");
            assert!(
                operation["summary"].as_str().is_some_and(|s| !s.is_empty()),
                "{id} has a summary"
            );
            let responses = operation["responses"].as_object().expect("responses");
            assert!(
                responses
                    .keys()
                    .any(|status| status.starts_with('2') || status.starts_with('3')),
                "{id} answers success"
            );
        }
    }
    // Every problem code the API can answer is named in the schema.
    let codes = document["components"]["schemas"]["Problem"]["properties"]["code"]["enum"]
        .as_array()
        .expect("codes");
    for code in [
        "not_found",
        "rate_limited",
        "unauthenticated",
        "forbidden",
        "conflict",
    ] {
        assert!(codes.contains(&json!(code)), "{code}");
    }
}

#[tokio::test]
async fn the_api_serves_the_document_to_anyone() {
    let app = app(json!({})).await;
    let response = app
        .router
        .clone()
        .oneshot(
            Request::get("/api/v1/openapi.json")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("answer");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "served as JSON"
    );
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(
        std::str::from_utf8(&body).expect("text"),
        COMMITTED,
        "the served document is the committed one"
    );
}
