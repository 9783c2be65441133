//! The HTTP client for the public API (`/api/v1`): bearer auth, JSON in and out, and every
//! error answer mapped to a [`Problem`].

use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::config::Settings;
use crate::error::{CliError, Problem};

/// How long an ordinary request may take; the server's own limit is 30 s.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(40);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How many pages a list that follows `next_cursor` reads at most.
const MAX_PAGES: usize = 100;

pub struct Client {
    server: String,
    token: Zeroizing<String>,
    http: reqwest::Client,
    /// Without an overall timeout: an event stream stays open as long as its run.
    streaming: reqwest::Client,
}

impl Client {
    pub fn new(settings: &Settings) -> Result<Self, CliError> {
        let user_agent = concat!("cadenza-cli/", env!("CARGO_PKG_VERSION"));
        let build = |timeout: Option<Duration>| {
            let mut builder = reqwest::Client::builder()
                .user_agent(user_agent)
                .connect_timeout(CONNECT_TIMEOUT);
            if let Some(timeout) = timeout {
                builder = builder.timeout(timeout);
            }
            builder.build().map_err(|err| CliError::Network {
                server: settings.server.clone(),
                message: format!("the HTTP client could not be set up: {err}"),
            })
        };
        Ok(Client {
            server: settings.server.clone(),
            token: settings.token.clone(),
            http: build(Some(REQUEST_TIMEOUT))?,
            streaming: build(None)?,
        })
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{}", self.server, path)
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(self.token.as_str())
    }

    /// Sends a request; a non-success answer becomes [`CliError::Api`].
    async fn send(&self, request: RequestBuilder) -> Result<Response, CliError> {
        let response = request
            .send()
            .await
            .map_err(|err| network_error(&self.server, &err))?;
        self.check(response).await
    }

    async fn check(&self, response: Response) -> Result<Response, CliError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.bytes().await.unwrap_or_default();
        Err(CliError::Api {
            problem: Problem::from_answer(status.as_u16(), status.canonical_reason(), &body),
        })
    }

    async fn json(&self, response: Response) -> Result<Value, CliError> {
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        let body = response
            .bytes()
            .await
            .map_err(|err| network_error(&self.server, &err))?;
        if body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&body).map_err(|err| CliError::Protocol {
            server: self.server.clone(),
            detail: format!("the answer is not JSON: {err}"),
        })
    }

    pub async fn get(&self, path: &str) -> Result<Value, CliError> {
        let response = self.send(self.request(Method::GET, path)).await?;
        self.json(response).await
    }

    pub async fn get_query(&self, path: &str, query: &[(&str, String)]) -> Result<Value, CliError> {
        let response = self
            .send(self.request(Method::GET, path).query(query))
            .await?;
        self.json(response).await
    }

    pub async fn post(&self, path: &str, body: Option<&Value>) -> Result<Value, CliError> {
        let mut request = self.request(Method::POST, path);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = self.send(request).await?;
        self.json(response).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        let response = self
            .send(self.request(Method::PUT, path).json(body))
            .await?;
        self.json(response).await
    }

    pub async fn delete(&self, path: &str) -> Result<(), CliError> {
        self.send(self.request(Method::DELETE, path)).await?;
        Ok(())
    }

    /// A text answer and its `X-Base-Commit` (the run's diff).
    pub async fn get_patch(&self, path: &str) -> Result<(String, Option<String>), CliError> {
        let response = self.send(self.request(Method::GET, path)).await?;
        let base_commit = response
            .headers()
            .get("x-base-commit")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let text = response
            .text()
            .await
            .map_err(|err| network_error(&self.server, &err))?;
        Ok((text, base_commit))
    }

    /// A binary answer (an export archive).
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, CliError> {
        let response = self.send(self.request(Method::GET, path)).await?;
        let body = response
            .bytes()
            .await
            .map_err(|err| network_error(&self.server, &err))?;
        Ok(body.to_vec())
    }

    /// Every item of a paginated list, following `next_cursor` (at most [`MAX_PAGES`] pages).
    pub async fn list_all(&self, path: &str) -> Result<Vec<Value>, CliError> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut query = vec![("limit", "500".to_owned())];
            if let Some(cursor) = &cursor {
                query.push(("cursor", cursor.clone()));
            }
            let page = self.get_query(path, &query).await?;
            if let Some(page_items) = page["items"].as_array() {
                items.extend(page_items.iter().cloned());
            }
            match page["next_cursor"].as_str() {
                Some(next) if !next.is_empty() => cursor = Some(next.to_owned()),
                _ => return Ok(items),
            }
        }
        Ok(items)
    }

    /// Opens a run's event stream after `last_event_id` (the last seq already shown).
    pub async fn open_stream(
        &self,
        run_id: &str,
        last_event_id: i64,
    ) -> Result<Response, CliError> {
        let path = format!("/runs/{}/events/stream", segment(run_id));
        let mut request = self
            .streaming
            .get(self.url(&path))
            .bearer_auth(self.token.as_str())
            .header("accept", "text/event-stream");
        if last_event_id > 0 {
            request = request.header("last-event-id", last_event_id.to_string());
        }
        let response = request
            .send()
            .await
            .map_err(|err| network_error(&self.server, &err))?;
        self.check(response).await
    }
}

/// A network failure, naming the server and the innermost cause (`Connection refused`, ...).
pub fn network_error(server: &str, err: &reqwest::Error) -> CliError {
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    let message = if err.is_timeout() {
        "no answer in time".to_owned()
    } else if let Some(innermost) = causes.last() {
        innermost.clone()
    } else {
        err.to_string()
    };
    CliError::Network {
        server: server.to_owned(),
        message,
    }
}

/// Percent-encodes one path segment (ids, slugs and secret names are plain already; anything a
/// user types is kept from changing the path, `.` included so `..` stays a name).
pub fn segment(raw: &str) -> String {
    let mut encoded = String::with_capacity(raw.len());
    for byte in raw.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'~') {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_cannot_change_the_path() {
        assert_eq!(segment("MY_SECRET"), "MY_SECRET");
        assert_eq!(segment("../admin"), "%2E%2E%2Fadmin");
        assert_eq!(segment("a b?c"), "a%20b%3Fc");
    }
}
