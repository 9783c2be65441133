//! Every request to the provider goes through here, so each has a time limit and a size limit
//! even when the caller's `reqwest::Client` has neither.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::de::DeserializeOwned;
use url::Url;

use crate::error::{BoxError, Error, Result};

/// Per request, including reading the body. Generous for a provider on another continent,
/// short enough that a hung provider does not hold a browser login open indefinitely.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Discovery documents and key sets are a few KiB; a token response is smaller still.
pub(crate) const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("request failed")]
    Transport(#[source] reqwest::Error),
    #[error("response body exceeds {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    #[error("cannot build the HTTP request")]
    Request(#[source] reqwest::Error),
    #[error("cannot build the HTTP response")]
    Response(#[source] http::Error),
}

/// `GET url` expecting a JSON document, reported as a discovery failure.
pub(crate) async fn get_json<T: DeserializeOwned>(http: &reqwest::Client, url: &Url) -> Result<T> {
    let discovery_error = |reason: String, source: Option<BoxError>| Error::Discovery {
        url: url.to_string(),
        reason,
        source,
    };
    let response = http
        .get(url.clone())
        .header(http::header::ACCEPT, "application/json")
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(|error| discovery_error("request failed".into(), Some(Box::new(error))))?;
    let status = response.status();
    if !status.is_success() {
        return Err(discovery_error(format!("HTTP {status}"), None));
    }
    let body = read_body(response)
        .await
        .map_err(|error| discovery_error(error.to_string(), Some(Box::new(error))))?;
    serde_json::from_slice(&body).map_err(|error| {
        discovery_error(
            "the response is not the expected JSON document".into(),
            Some(Box::new(error)),
        )
    })
}

async fn read_body(mut response: reqwest::Response) -> Result<Vec<u8>, FetchError> {
    if response
        .content_length()
        .is_some_and(|length| length > MAX_RESPONSE_BYTES as u64)
    {
        return Err(FetchError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(FetchError::Transport)? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(FetchError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The HTTP client the `oauth2` crate calls for the token exchange: its own reqwest adapter
/// has neither a timeout nor a size limit.
pub(crate) struct OAuthHttpClient<'a>(pub(crate) &'a reqwest::Client);

impl<'c> oauth2::AsyncHttpClient<'c> for OAuthHttpClient<'_> {
    type Error = FetchError;
    // Boxed as `dyn Future + Send`: with the concrete future type, the compiler cannot prove
    // the login future `Send` for every lifetime, and axum handlers need it to be.
    type Future =
        Pin<Box<dyn Future<Output = Result<oauth2::HttpResponse, FetchError>> + Send + 'c>>;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(execute_oauth_request(self.0, request))
    }
}

async fn execute_oauth_request(
    http: &reqwest::Client,
    request: oauth2::HttpRequest,
) -> Result<oauth2::HttpResponse, FetchError> {
    let mut request = reqwest::Request::try_from(request).map_err(FetchError::Request)?;
    *request.timeout_mut() = Some(REQUEST_TIMEOUT);
    let response = http.execute(request).await.map_err(FetchError::Transport)?;
    let mut builder = http::Response::builder()
        .status(response.status())
        .version(response.version());
    for (name, value) in response.headers() {
        builder = builder.header(name, value);
    }
    let body = read_body(response).await?;
    builder.body(body).map_err(FetchError::Response)
}
