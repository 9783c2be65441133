//! Request bodies and query parameters, parsed by hand so that every malformed request becomes
//! a FastAPI-shaped 422 instead of axum's plain-text rejections.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};
use uuid::Uuid;

use super::error::{ApiError, FieldError};

pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| ApiError::validation("body", error))
}

pub(crate) fn parse_uuid(raw: &str, location: &'static str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|error| ApiError::validation(location, error))
}

/// `SendMessageRequest`, also the inbound socket frame and `initial_message`.
#[derive(Debug, Deserialize)]
pub(crate) struct SendMessageRequest {
    pub(crate) role: String,
    pub(crate) content: Vec<ContentItem>,
    #[serde(default)]
    pub(crate) run: bool,
}

impl SendMessageRequest {
    /// The content as stored in the `MessageEvent`, after checking what the real server checks.
    pub(crate) fn validated_content(&self) -> Result<Vec<Value>, ApiError> {
        if self.role != "user" {
            return Err(ApiError::validation(
                "body.role",
                format!("only user messages can be sent, got role {:?}", self.role),
            ));
        }
        self.content
            .iter()
            .map(|item| {
                serde_json::to_value(item)
                    .map_err(|error| ApiError::validation("body.content", error))
            })
            .collect()
    }
}

/// Message content parts. Like the SDK's models they forbid unknown keys.
#[derive(Debug, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub(crate) enum ContentItem {
    Text(TextContent),
    Image(ImageContent),
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TextContent {
    text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cache_prompt: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    enable_truncation: Option<bool>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImageContent {
    image_urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cache_prompt: Option<bool>,
}

/// `StartConversationRequest`. Unknown keys are ignored, as on the real server.
#[derive(Debug, Deserialize)]
pub(crate) struct StartConversationRequest {
    pub(crate) agent: Option<Value>,
    pub(crate) agent_settings: Option<Value>,
    pub(crate) agent_profile_id: Option<Value>,
    pub(crate) workspace: WorkspaceSpec,
    pub(crate) conversation_id: Option<Uuid>,
    pub(crate) initial_message: Option<SendMessageRequest>,
    #[serde(default = "default_max_iterations")]
    pub(crate) max_iterations: u32,
    #[serde(default = "default_true")]
    pub(crate) stuck_detection: bool,
    /// Kept raw (an explicit `null` included) for [`start_secrets`], which refuses what the
    /// real server's `dict[str, SecretSource]` refuses.
    #[serde(default, deserialize_with = "present")]
    pub(crate) secrets: Option<Value>,
    pub(crate) tags: Option<Value>,
}

/// Tells an explicit `null` (`Some(Value::Null)`) from an absent field (`None`).
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

#[derive(Debug, Deserialize)]
pub(crate) struct WorkspaceSpec {
    pub(crate) working_dir: String,
}

fn default_max_iterations() -> u32 {
    500
}

fn default_true() -> bool {
    true
}

const SECRET_KINDS: &str = "['LookupSecret', 'StaticSecret']";

/// The create route's `secrets`, checked as the real server's pydantic model checks
/// `dict[str, SecretSource]`: each value must be an object with a known `kind`. Unlike the
/// secrets-update route it does **not** take plain strings. Every refused entry is reported, with
/// the real server's `type`, `loc`, `msg` and `input` (the refused value itself, as there).
/// Returns the static values; a `StaticSecret` without a value and lookups are skipped.
pub(crate) fn start_secrets(
    raw: Option<&Value>,
) -> Result<BTreeMap<String, String>, Vec<FieldError>> {
    let Some(raw) = raw else {
        return Ok(BTreeMap::new());
    };
    let Value::Object(entries) = raw else {
        return Err(vec![FieldError::new(
            "dict_type",
            vec![json!("body"), json!("secrets")],
            "Input should be a valid dictionary",
            raw.clone(),
        )]);
    };
    let mut resolved = BTreeMap::new();
    let mut errors = Vec::new();
    for (name, source) in entries {
        let loc = |extra: &[&str]| {
            let mut loc = vec![json!("body"), json!("secrets"), json!(name)];
            loc.extend(extra.iter().map(|segment| json!(segment)));
            loc
        };
        let Value::Object(fields) = source else {
            errors.push(FieldError::new(
                "model_attributes_type",
                loc(&[]),
                "Input should be a valid dictionary or object to extract fields from",
                source.clone(),
            ));
            continue;
        };
        let string_field = |field: &str, errors: &mut Vec<FieldError>| match fields.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(text.clone()),
            Some(other) => {
                errors.push(FieldError::new(
                    "string_type",
                    loc(&[field]),
                    "Input should be a valid string",
                    other.clone(),
                ));
                None
            }
        };
        string_field("description", &mut errors);
        match fields.get("kind").and_then(Value::as_str) {
            Some("StaticSecret") => {
                if let Some(value) = string_field("value", &mut errors) {
                    resolved.insert(name.clone(), value);
                }
            }
            Some("LookupSecret") => match fields.get("url") {
                None => {
                    let mut input = fields.clone();
                    input.remove("kind");
                    errors.push(FieldError::new(
                        "missing",
                        loc(&["url"]),
                        "Field required",
                        Value::Object(input),
                    ));
                }
                Some(_) => {
                    string_field("url", &mut errors);
                }
            },
            kind => {
                let error = format!(
                    "Unknown kind '{}' for openhands.sdk.secret.secrets.SecretSource; \
                     Expected one of: {SECRET_KINDS}",
                    kind.unwrap_or_default()
                );
                errors.push(
                    FieldError::new(
                        "value_error",
                        loc(&[]),
                        format!("Value error, {error}"),
                        source.clone(),
                    )
                    .with_ctx(json!({ "error": error })),
                );
            }
        }
    }
    if errors.is_empty() {
        Ok(resolved)
    } else {
        Err(errors)
    }
}

/// pydantic's `loc` for the second branch of `LLM.api_key: str | SecretStr | None`, verbatim.
const SECRET_STR_BRANCH: &str = "lax-or-strict[lax=json-or-python[json=function-after[SecretStr(), str],python=union[is-instance[SecretStr],function-after[SecretStr(), str]]],strict=json-or-python[json=function-after[SecretStr(), str],python=union[is-instance[SecretStr],function-after[SecretStr(), str]]]]";

/// `agent.llm.api_key` is `str | SecretStr | None`: anything else (a number, a `StaticSecret`
/// object) is refused with one error per union branch, as pydantic does.
pub(crate) fn check_llm_api_key(agent: &Value) -> Vec<FieldError> {
    match agent.get("llm").and_then(|llm| llm.get("api_key")) {
        None | Some(Value::Null | Value::String(_)) => Vec::new(),
        Some(other) => ["str", SECRET_STR_BRANCH]
            .into_iter()
            .map(|branch| {
                FieldError::new(
                    "string_type",
                    ["body", "agent", "llm", "api_key", branch]
                        .into_iter()
                        .map(Value::from)
                        .collect(),
                    "Input should be a valid string",
                    other.clone(),
                )
            })
            .collect(),
    }
}

/// `max_iterations` is `int = Field(ge=1)`.
pub(crate) fn check_max_iterations(max_iterations: u32) -> Vec<FieldError> {
    if max_iterations >= 1 {
        return Vec::new();
    }
    vec![
        FieldError::new(
            "greater_than_equal",
            vec![json!("body"), json!("max_iterations")],
            "Input should be greater than or equal to 1",
            json!(max_iterations),
        )
        .with_ctx(json!({ "ge": 1 })),
    ]
}

/// A secret as the secrets-update route takes it: a plain string or a `StaticSecret`. Other
/// kinds (lookups through a URL) cannot be resolved by the fake and are skipped.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum SecretValue {
    Plain(String),
    Static { value: String },
    Other(#[expect(dead_code, reason = "accepted and ignored")] Value),
}

pub(crate) fn resolve_secrets(secrets: BTreeMap<String, SecretValue>) -> BTreeMap<String, String> {
    secrets
        .into_iter()
        .filter_map(|(name, secret)| match secret {
            SecretValue::Plain(value) | SecretValue::Static { value } => Some((name, value)),
            SecretValue::Other(_) => None,
        })
        .collect()
}

#[derive(Debug, Deserialize)]
pub(crate) struct UpdateSecretsRequest {
    pub(crate) secrets: BTreeMap<String, SecretValue>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct UpdateConversationRequest {
    pub(crate) title: Option<String>,
    pub(crate) tags: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ExecuteBashRequest {
    pub(crate) command: String,
    pub(crate) cwd: Option<String>,
    pub(crate) timeout: Option<f64>,
}

/// Decoded query parameters, in order, repeated keys kept.
pub(crate) struct QueryParams(Vec<(String, String)>);

impl QueryParams {
    pub(crate) fn parse(raw: Option<&str>) -> Self {
        Self(
            url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
                .into_owned()
                .collect(),
        )
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    pub(crate) fn get_all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
            .collect()
    }

    pub(crate) fn limit(&self) -> Result<usize, ApiError> {
        match self.get("limit") {
            None => Ok(100),
            Some(raw) => match raw.parse::<usize>() {
                Ok(limit @ 1..=100) => Ok(limit),
                _ => Err(ApiError::validation(
                    "query.limit",
                    "limit must be an integer between 1 and 100",
                )),
            },
        }
    }

    pub(crate) fn flag(&self, name: &'static str, default: bool) -> Result<bool, ApiError> {
        match self.get(name) {
            None => Ok(default),
            Some("true" | "1" | "yes" | "on") => Ok(true),
            Some("false" | "0" | "no" | "off") => Ok(false),
            Some(other) => Err(ApiError::validation(
                name,
                format!("not a boolean: {other:?}"),
            )),
        }
    }
}

/// Brings a client timestamp to the fake's naive form so that timestamps compare as strings.
/// An aware value is converted to the server's local time (UTC), as the real server does.
pub(crate) fn normalize_timestamp(raw: &str, location: &'static str) -> Result<String, ApiError> {
    let naive = format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]"
    );
    let parsed = OffsetDateTime::parse(raw, &Rfc3339)
        .map(|aware| aware.to_offset(UtcOffset::UTC))
        .or_else(|_| PrimitiveDateTime::parse(raw, naive).map(PrimitiveDateTime::assume_utc))
        .map_err(|error| ApiError::validation(location, error))?;
    let canonical =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]");
    parsed
        .format(canonical)
        .map_err(|error| ApiError::validation(location, error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_parts_reject_unknown_keys() {
        let parsed: Result<SendMessageRequest, _> = serde_json::from_value(serde_json::json!({
            "role": "user",
            "content": [{"type": "text", "text": "hi", "colour": "red"}]
        }));
        assert!(parsed.is_err());
    }

    #[test]
    fn content_parts_serialise_back_with_their_type() {
        let parsed: SendMessageRequest = serde_json::from_value(serde_json::json!({
            "role": "user",
            "content": [{"type": "text", "text": "hi"}]
        }))
        .expect("valid message");
        assert_eq!(
            parsed.validated_content().expect("user message"),
            vec![serde_json::json!({"type": "text", "text": "hi"})]
        );
    }

    #[test]
    fn timestamps_normalise_to_the_event_format() {
        assert_eq!(
            normalize_timestamp("2026-11-22T10:11:12", "q").expect("naive"),
            "2026-11-22T10:11:12.000000"
        );
        assert_eq!(
            normalize_timestamp("2026-11-22T11:11:12.5+01:00", "q").expect("aware"),
            "2026-11-22T10:11:12.500000"
        );
        assert!(normalize_timestamp("yesterday", "q").is_err());
    }
}
