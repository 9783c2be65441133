//! The OpenAPI 3.1 description of `/api/v1`, generated from the route table: every route's
//! method, path, access and documentation come from its one line in `routes::table`, and the
//! body and response shapes from the wire types' `ToSchema` derives. Served at
//! `GET /api/v1/openapi.json` and committed as `docs/openapi.json` (a test fails when they
//! differ).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use utoipa::openapi::RefOr;
use utoipa::openapi::path::{Parameter, ParameterIn};
use utoipa::openapi::schema::Schema;
use utoipa::{IntoParams, ToSchema};

use crate::auth::Access;
use crate::routes::RouteSpec;

/// The API's version, as the document and the capabilities report it.
pub const API_VERSION: &str = "1.0.0";

/// A type whose JSON Schema the document includes.
#[derive(Clone, Copy)]
pub struct Schematic {
    name: fn() -> Cow<'static, str>,
    schema: fn() -> RefOr<Schema>,
    dependencies: fn(&mut Vec<(String, RefOr<Schema>)>),
}

impl Schematic {
    pub fn of<T: ToSchema>() -> Self {
        Self {
            name: T::name,
            schema: T::schema,
            dependencies: T::schemas,
        }
    }

    fn reference(&self) -> Value {
        json!({ "$ref": format!("#/components/schemas/{}", (self.name)()) })
    }

    fn collect(&self, into: &mut BTreeMap<String, Value>) {
        into.insert((self.name)().into_owned(), to_json(&(self.schema)()));
        let mut more = Vec::new();
        (self.dependencies)(&mut more);
        for (name, schema) in more {
            into.insert(name, to_json(&schema));
        }
    }
}

fn to_json(value: &impl serde::Serialize) -> Value {
    serde_json::to_value(value).expect("an OpenAPI object always serializes")
}

/// What a successful call answers.
#[derive(Clone, Copy)]
enum Success {
    /// A JSON body of this type, with this status.
    Json(u16, Schematic),
    /// A page of items of this type (`items`, `next_cursor`).
    Page(Schematic),
    /// No body.
    Empty(u16),
    /// A body of this media type.
    Text(&'static str),
    /// A `text/event-stream` of journal entries.
    EventStream(Schematic),
    /// A redirect (`Location`).
    Redirect,
}

/// One route's documentation, as its line in the route table declares it.
#[derive(Clone, Copy)]
pub struct Doc {
    summary: &'static str,
    request: Option<Schematic>,
    query: Option<fn() -> Vec<Parameter>>,
    success: Success,
    /// Other success statuses with the same body (e.g. 200 for a repeated idempotent create).
    also: &'static [u16],
    /// Statuses this route answers beyond those its access implies (e.g. 409, 413, 422).
    errors: &'static [u16],
    /// The route gives `Idempotency-Key` a meaning of its own (a run's key, a message's key)
    /// instead of the generic replay.
    own_key: bool,
}

/// A route answering `200` with a `T`.
pub fn ok<T: ToSchema>(summary: &'static str) -> Doc {
    Doc::new(summary, Success::Json(200, Schematic::of::<T>()))
}

/// A route answering `201` with the `T` it created.
pub fn created<T: ToSchema>(summary: &'static str) -> Doc {
    Doc::new(summary, Success::Json(201, Schematic::of::<T>()))
}

/// A route answering `202` with a `T` (a receipt of an action that goes on).
pub fn accepted<T: ToSchema>(summary: &'static str) -> Doc {
    Doc::new(summary, Success::Json(202, Schematic::of::<T>()))
}

/// A route answering a page of `T`.
pub fn page<T: ToSchema>(summary: &'static str) -> Doc {
    Doc::new(summary, Success::Page(Schematic::of::<T>()))
}

/// A route answering `204` without a body.
pub fn no_content(summary: &'static str) -> Doc {
    Doc::new(summary, Success::Empty(204))
}

/// A route answering `200` with a body of `media` type.
pub fn text(summary: &'static str, media: &'static str) -> Doc {
    Doc::new(summary, Success::Text(media))
}

/// A route answering a server-sent event stream whose events carry a `T` each.
pub fn event_stream<T: ToSchema>(summary: &'static str) -> Doc {
    Doc::new(summary, Success::EventStream(Schematic::of::<T>()))
}

/// A route answering with a redirect.
pub fn redirect(summary: &'static str) -> Doc {
    Doc::new(summary, Success::Redirect)
}

impl Doc {
    fn new(summary: &'static str, success: Success) -> Self {
        Self {
            summary,
            request: None,
            query: None,
            success,
            also: &[],
            errors: &[],
            own_key: false,
        }
    }

    /// The JSON body the route takes.
    pub fn body<T: ToSchema>(mut self) -> Self {
        self.request = Some(Schematic::of::<T>());
        self
    }

    /// The query parameters the route takes.
    pub fn query<T: IntoParams>(mut self) -> Self {
        self.query = Some(|| T::into_params(|| Some(ParameterIn::Query)));
        self
    }

    /// Other success statuses with the same body.
    pub fn also(mut self, statuses: &'static [u16]) -> Self {
        self.also = statuses;
        self
    }

    /// The route handles `Idempotency-Key` itself.
    pub fn keyed_by_itself(mut self) -> Self {
        self.own_key = true;
        self
    }

    pub fn keys_itself(&self) -> bool {
        self.own_key
    }

    /// Statuses beyond those the route's access implies.
    pub fn errors(mut self, errors: &'static [u16]) -> Self {
        self.errors = errors;
        self
    }
}

/// A body whose shape this document does not describe yet: any JSON object.
pub struct Untyped;

impl utoipa::PartialSchema for Untyped {
    fn schema() -> RefOr<Schema> {
        RefOr::T(
            serde_json::from_value(json!({
                "type": "object",
                "description": "A JSON object; its shape is described in docs/API.md, not yet here.",
            }))
            .expect("a hand-written JSON Schema always parses"),
        )
    }
}

impl ToSchema for Untyped {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Untyped")
    }
}

/// The problem types the API answers with, as `(status, code, title)`.
fn problem_types() -> Vec<(u16, &'static str, &'static str)> {
    crate::error::ApiError::catalogue()
        .iter()
        .map(|error| {
            let (status, code, title) = error.parts();
            (status.as_u16(), code, title)
        })
        .collect()
}

fn status_name(status: u16) -> &'static str {
    match status {
        400 => "BadRequest",
        401 => "Unauthenticated",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        413 => "PayloadTooLarge",
        415 => "UnsupportedMediaType",
        422 => "Unprocessable",
        429 => "TooManyRequests",
        500 => "Internal",
        503 => "Unavailable",
        _ => "Problem",
    }
}

/// The error statuses a route's access implies: every route may refuse a bad request, be rate
/// limited or fail; a route that needs a caller may find none; one that needs a permission may
/// refuse it or not see the thing at all.
fn implied_errors(access: Access) -> &'static [u16] {
    match access {
        Access::Public => &[400, 429, 500, 503],
        Access::Authenticated => &[400, 401, 429, 500, 503],
        Access::Org(_) | Access::Instance => &[400, 401, 403, 404, 429, 500, 503],
    }
}

fn operation_id(spec: &RouteSpec) -> String {
    let mut id = spec.method.as_str().to_ascii_lowercase();
    for segment in spec.path.split('/').filter(|segment| !segment.is_empty()) {
        id.push('_');
        id.extend(
            segment
                .trim_matches(|c| c == '{' || c == '}')
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }),
        );
    }
    id
}

fn tag(path: &str) -> &str {
    path.trim_start_matches('/')
        .split('/')
        .next()
        .map(|segment| segment.trim_start_matches('.'))
        .unwrap_or("api")
}

fn path_parameters(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            let description = match name {
                "org_id" => "The org's id (`org_...`).",
                "project_id" => "The project's id (`prj_...`).",
                "run_id" => "The run's id (`run_...`).",
                "user_id" => "The user's id (`usr_...`).",
                "token_id" => "The token's id.",
                "invitation_id" => "The invitation's id.",
                "name" => "The secret's name (`[A-Z][A-Z0-9_]*`).",
                "domain" => "A DNS domain, e.g. `example.com`.",
                _ => "An identifier.",
            };
            json!({
                "name": name,
                "in": "path",
                "required": true,
                "description": description,
                "schema": {"type": "string"},
            })
        })
        .collect()
}

fn access_note(access: Access) -> String {
    match access {
        Access::Public => "public".to_owned(),
        Access::Authenticated => "authenticated".to_owned(),
        Access::Instance => "instance-admin".to_owned(),
        Access::Org(permission) => format!("org:{}", permission.as_str()),
    }
}

fn operation(spec: &RouteSpec, doc: &Doc, schemas: &mut BTreeMap<String, Value>) -> Value {
    let mut parameters = path_parameters(spec.path);
    if let Some(query) = doc.query {
        parameters.extend(query().iter().map(to_json));
    }
    if spec.method != axum::http::Method::GET {
        let description = if doc.own_key {
            "Makes the request safe to repeat; see the route's description for what a repeat answers."
        } else {
            "Makes the request safe to repeat: for a day, the same request with the same key gets the first answer again (`Idempotent-Replayed: true`) and changes nothing; the key with a different request, or while the first runs, answers 409."
        };
        parameters.push(json!({
            "name": "Idempotency-Key",
            "in": "header",
            "required": false,
            "description": description,
            "schema": {"type": "string", "maxLength": 255},
        }));
    }
    let mut responses = serde_json::Map::new();
    let mut success: (u16, Value) = match doc.success {
        Success::Json(status, schematic) => {
            schematic.collect(schemas);
            (
                status,
                json!({
                    "description": "Success.",
                    "content": {"application/json": {"schema": schematic.reference()}},
                }),
            )
        }
        Success::Page(schematic) => {
            schematic.collect(schemas);
            (
                200,
                json!({
                    "description": "A page of items, newest first; pass `next_cursor` back as `?cursor=` for the next.",
                    "content": {"application/json": {"schema": {
                        "type": "object",
                        "required": ["items", "next_cursor"],
                        "properties": {
                            "items": {"type": "array", "items": schematic.reference()},
                            "next_cursor": {"type": ["string", "null"]},
                        },
                    }}},
                }),
            )
        }
        Success::Empty(status) => (status, json!({"description": "Done; no body."})),
        Success::Text(media) => (
            200,
            json!({
                "description": "Success.",
                "content": {media: {"schema": {"type": "string"}}},
            }),
        ),
        Success::EventStream(schematic) => {
            schematic.collect(schemas);
            (
                200,
                json!({
                    "description": "Server-sent events: `id` is the entry's `seq` (send it back as `Last-Event-ID` to resume), `data` is one entry as JSON.",
                    "content": {"text/event-stream": {
                        "schema": {
                            "description": "One server-sent event.",
                            "type": "object",
                            "required": ["data"],
                            "properties": {
                                "id": {"type": "string"},
                                "event": {"type": "string"},
                                "data": {
                                    "type": "string",
                                    "contentMediaType": "application/json",
                                    "contentSchema": schematic.reference(),
                                },
                                "retry": {"type": "integer"},
                            },
                        },
                    }},
                }),
            )
        }
        Success::Redirect => (
            302,
            json!({
                "description": "Redirects (`Location`).",
                "headers": {"Location": {"schema": {"type": "string"}}},
            }),
        ),
    };
    let json_read = spec.method == axum::http::Method::GET
        && matches!(doc.success, Success::Json(..) | Success::Page(_));
    if json_read {
        success.1["headers"] = json!({"ETag": {
            "description": "A strong tag of this answer; send it back as `If-None-Match` to get `304` while it is unchanged.",
            "schema": {"type": "string"},
        }});
        responses.insert(
            "304".into(),
            json!({"description": "Not modified: the `If-None-Match` tag is current; no body."}),
        );
    }
    for status in doc.also {
        responses.insert(status.to_string(), success.1.clone());
    }
    responses.insert(success.0.to_string(), success.1);
    let mut errors: Vec<u16> = implied_errors(spec.access).to_vec();
    errors.extend_from_slice(doc.errors);
    if spec.method != axum::http::Method::GET && spec.access != Access::Public {
        errors.push(409);
    }
    errors.sort_unstable();
    errors.dedup();
    for status in errors {
        responses.insert(
            status.to_string(),
            json!({"$ref": format!("#/components/responses/{}", status_name(status))}),
        );
    }
    let mut operation = json!({
        "operationId": operation_id(spec),
        "summary": doc.summary,
        "tags": [tag(spec.path)],
        "parameters": parameters,
        "responses": responses,
        "x-cadenza-access": access_note(spec.access),
    });
    operation["security"] = match spec.access {
        Access::Public => json!([]),
        _ => json!([{"bearer": []}, {"session_cookie": []}]),
    };
    if let Some(request) = doc.request {
        request.collect(schemas);
        operation["requestBody"] = json!({
            "required": true,
            "content": {"application/json": {"schema": request.reference()}},
        });
    }
    operation
}

fn components(schemas: BTreeMap<String, Value>) -> Value {
    let problem_types = problem_types();
    let codes: Vec<&str> = problem_types.iter().map(|(_, code, _)| *code).collect();
    let mut schemas = serde_json::Map::from_iter(schemas);
    schemas.insert(
        "Problem".into(),
        json!({
            "type": "object",
            "description": "An RFC 9457 problem document (`application/problem+json`).",
            "required": ["type", "title", "status", "detail", "code"],
            "properties": {
                "type": {"type": "string", "description": "`urn:cadenza:problem:<code>`.", "examples": ["urn:cadenza:problem:not_found"]},
                "title": {"type": "string", "examples": ["Not found"]},
                "status": {"type": "integer", "examples": [404]},
                "detail": {"type": "string", "examples": ["no run with id `run_...`"]},
                "code": {"type": "string", "enum": codes},
            },
        }),
    );
    let mut responses = serde_json::Map::new();
    let mut statuses: Vec<u16> = problem_types.iter().map(|(status, _, _)| *status).collect();
    statuses.sort_unstable();
    statuses.dedup();
    for status in statuses {
        let kinds: Vec<String> = problem_types
            .iter()
            .filter(|(s, _, _)| *s == status)
            .map(|(_, code, title)| format!("`urn:cadenza:problem:{code}` ({title})"))
            .collect();
        responses.insert(
            status_name(status).into(),
            json!({
                "description": kinds.join(", "),
                "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
            }),
        );
    }
    json!({
        "schemas": schemas,
        "responses": responses,
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "A personal or service token (`cdz_...`), or a session token, in `Authorization: Bearer`.",
            },
            "session_cookie": {
                "type": "apiKey",
                "in": "cookie",
                "name": "__Host-cadenza_session",
                "description": "The browser session set by the OIDC login (named `cadenza_session` on a plain-HTTP development instance). Mutating requests with it need an `Origin` of the instance.",
            },
        },
    })
}

/// The document for these routes.
pub fn document(routes: &[(RouteSpec, Doc)]) -> Value {
    let mut schemas = BTreeMap::new();
    let mut paths: BTreeMap<&str, serde_json::Map<String, Value>> = BTreeMap::new();
    for (spec, doc) in routes {
        let operation = operation(spec, doc, &mut schemas);
        paths
            .entry(spec.path)
            .or_default()
            .insert(spec.method.as_str().to_ascii_lowercase(), operation);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Cadenza API",
            "version": API_VERSION,
            "description": "The control plane's public API: orgs, projects, runs of the coding agent, their journals and live streams. See docs/API.md for the conventions (errors, pagination, idempotency, streaming).",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": "/api/v1"}],
        "paths": paths,
        "components": components(schemas),
    })
}

/// The document of the API this build serves, made once.
pub fn current() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| document(&crate::routes::documented()))
}

/// The document as the committed `docs/openapi.json` holds it: pretty, with a final newline.
pub fn rendered() -> String {
    let mut text =
        serde_json::to_string_pretty(current()).expect("an OpenAPI document always serializes");
    text.push('\n');
    text
}

/// `GET /openapi.json`.
pub async fn serve() -> Response {
    let mut response = rendered().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_ids_and_tags_follow_the_path() {
        let spec = RouteSpec {
            method: axum::http::Method::POST,
            path: "/runs/{run_id}/cancel",
            access: Access::Public,
        };
        assert_eq!(operation_id(&spec), "post_runs_run_id_cancel");
        assert_eq!(tag("/.well-known/jwks.json"), "well-known");
        assert_eq!(tag("/orgs/{org_id}/members"), "orgs");
        let names: Vec<Value> = path_parameters("/orgs/{org_id}/members/{user_id}")
            .into_iter()
            .map(|parameter| parameter["name"].clone())
            .collect();
        assert_eq!(names, [json!("org_id"), json!("user_id")]);
    }
}
