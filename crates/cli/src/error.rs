//! The CLI's errors and the exit code each one ends the process with.

use serde_json::{Value, json};

/// Exit codes. A followed run ends the process with its outcome (0, 1, 2); everything else that
/// goes wrong has a code of its own, so a script can tell "the run failed" from "the CLI could
/// not find out".
pub mod exit {
    /// The command did what it was asked; a followed run succeeded.
    pub const SUCCESS: u8 = 0;
    /// A followed run ended `failed`.
    pub const RUN_FAILED: u8 = 1;
    /// A followed run ended `cancelled`.
    pub const RUN_CANCELLED: u8 = 2;
    /// The API refused the request (a problem document other than 401/403).
    pub const API_ERROR: u8 = 3;
    /// Not logged in, or the API answered 401 or 403.
    pub const AUTH: u8 = 4;
    /// The server could not be reached, or a followed stream could not be resumed.
    pub const NETWORK: u8 = 5;
    /// A local problem: the config file, standard input, an answer the CLI cannot read.
    pub const LOCAL: u8 = 6;
    /// Bad arguments.
    pub const USAGE: u8 = 64;
}

/// An `application/problem+json` answer (or what the CLI could make of a non-JSON error).
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub status: u16,
    pub title: String,
    pub detail: Option<String>,
    pub code: Option<String>,
    /// The document as the server sent it (`null` when the body was not JSON).
    pub document: Value,
}

impl Problem {
    /// Reads an error answer: a problem document when the body is one, else the status with
    /// the start of the body.
    pub fn from_answer(status: u16, reason: Option<&str>, body: &[u8]) -> Self {
        let fallback_title = reason.unwrap_or("HTTP error").to_owned();
        match serde_json::from_slice::<Value>(body) {
            Ok(document) if document.is_object() => {
                let text = |field: &str| document.get(field).and_then(Value::as_str);
                Problem {
                    status,
                    title: text("title").map_or(fallback_title, str::to_owned),
                    detail: text("detail").map(str::to_owned),
                    code: text("code").map(str::to_owned),
                    document,
                }
            }
            _ => {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                Problem {
                    status,
                    title: fallback_title,
                    detail: (!text.is_empty()).then(|| crate::output::shorten(text, 200)),
                    code: None,
                    document: Value::Null,
                }
            }
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.detail {
            Some(detail) => write!(f, "{}: {} (HTTP {})", self.title, detail, self.status),
            None => write!(f, "{} (HTTP {})", self.title, self.status),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error(
        "not logged in: run `cadenza login --server URL`, or set CADENZA_SERVER and CADENZA_TOKEN"
    )]
    NotLoggedIn,
    #[error("{problem}{}", auth_hint(.problem))]
    Api { problem: Problem },
    #[error("could not reach the server at {server}: {message}")]
    Network { server: String, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error("the server at {server} answered something the CLI cannot read: {detail}")]
    Protocol { server: String, detail: String },
    #[error("the event stream of run {run_id} ended: {detail}")]
    StreamClosed { run_id: String, detail: String },
}

fn auth_hint(problem: &Problem) -> &'static str {
    if problem.status == 401 {
        "; log in again with `cadenza login`"
    } else {
        ""
    }
}

impl CliError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        CliError::Io {
            context: context.into(),
            source,
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => exit::USAGE,
            CliError::NotLoggedIn => exit::AUTH,
            CliError::Api { problem } if matches!(problem.status, 401 | 403) => exit::AUTH,
            CliError::Api { .. } => exit::API_ERROR,
            CliError::Network { .. } => exit::NETWORK,
            CliError::StreamClosed { .. } => exit::NETWORK,
            CliError::Io { .. } | CliError::Config(_) | CliError::Protocol { .. } => exit::LOCAL,
        }
    }

    /// The error as `--output json` prints it on stderr.
    pub fn to_json(&self) -> Value {
        let mut error = json!({
            "message": self.to_string(),
            "exit_code": self.exit_code(),
        });
        if let CliError::Api { problem } = self {
            error["status"] = json!(problem.status);
            error["code"] = json!(problem.code);
            error["problem"] = problem.document.clone();
        }
        json!({ "error": error })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_document_is_shown_with_title_detail_and_status() {
        let body = br#"{"type":"urn:cadenza:problem:not_found","title":"Not found","status":404,
                       "detail":"no run 42","code":"not_found"}"#;
        let problem = Problem::from_answer(404, Some("Not Found"), body);
        assert_eq!(problem.code.as_deref(), Some("not_found"));
        let error = CliError::Api { problem };
        assert_eq!(error.to_string(), "Not found: no run 42 (HTTP 404)");
        assert_eq!(error.exit_code(), exit::API_ERROR);
        let json = error.to_json();
        assert_eq!(json["error"]["status"], 404);
        assert_eq!(json["error"]["problem"]["code"], "not_found");
    }

    #[test]
    fn an_error_page_that_is_not_json_keeps_the_status_and_the_start_of_the_body() {
        let problem = Problem::from_answer(502, Some("Bad Gateway"), b"<html>upstream down</html>");
        assert_eq!(
            problem.to_string(),
            "Bad Gateway: <html>upstream down</html> (HTTP 502)"
        );
        assert_eq!(problem.document, Value::Null);
    }

    #[test]
    fn unauthenticated_and_forbidden_exit_with_the_auth_code_and_say_how_to_log_in() {
        let unauthenticated = CliError::Api {
            problem: Problem::from_answer(401, None, br#"{"title":"Unauthenticated"}"#),
        };
        assert_eq!(unauthenticated.exit_code(), exit::AUTH);
        assert!(unauthenticated.to_string().contains("cadenza login"));
        let forbidden = CliError::Api {
            problem: Problem::from_answer(403, None, br#"{"title":"Forbidden"}"#),
        };
        assert_eq!(forbidden.exit_code(), exit::AUTH);
    }
}
