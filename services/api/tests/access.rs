//! Authorization, tenant isolation, audit and rate limits, against the real router with real
//! Postgres, NATS and Redis (requests go through `tower::ServiceExt::oneshot`).
//!
//! The matrix enumerates every route of the route table the router is built from, so a new
//! route is checked against every kind of caller as soon as it exists; a route cannot be added
//! without declaring its access, and a mutating route without an example body here fails the
//! test.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use cadenza_api::routes::{Access, RouteSpec, route_specs};
use cadenza_domain::{AgentSettings, OrgId, Permission, Repository, Role, RunId};
use cadenza_storage::runs::{NewRun, Submitted};
use cadenza_storage::secrets::{self, SecretScope};
use cadenza_storage::{diffs, orgs, projects, runs};
use cadenza_testkit::dns::TestDnsServer;
use cadenza_testkit::fixtures::{service_token, user_with_token};
use cadenza_testkit::infra::{TestDatabase, nats_url, redis_url, unique_name};
use http_body_util::BodyExt;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

struct App {
    router: Router,
    db: TestDatabase,
    /// The API's key ring, for fixtures that store secrets.
    keyring: cadenza_crypto::KeyRing,
    /// Serves each fixture's domain verification record, so verifying its rule succeeds.
    dns: TestDnsServer,
    _shutdown: tokio_util::sync::DropGuard,
}

async fn app(extra: Value) -> App {
    let db = TestDatabase::create().await.expect("db");
    let dns = TestDnsServer::start().await.expect("dns server");
    let (kek_id, kek) = cadenza_crypto::KeyRing::generate_key().expect("kek");
    let kek_spec = format!("{kek_id}:{}", kek.expose_secret());
    let mut settings = json!({
        "secret_keks": kek_spec,
        "database_url": db.url,
        "nats_url": nats_url(),
        "redis_url": redis_url(),
        "bus_prefix": unique_name("t"),
        "migrate_on_start": false,
        "dns_nameservers": dns.address().to_string(),
    });
    if let (Some(target), Some(extra)) = (settings.as_object_mut(), extra.as_object()) {
        target.extend(extra.clone());
    }
    let keyring =
        cadenza_crypto::KeyRing::from_spec(settings["secret_keks"].as_str().unwrap_or(&kek_spec))
            .expect("key ring");
    let config: cadenza_api::ApiConfig = serde_json::from_value(settings).expect("config");
    let shutdown = CancellationToken::new();
    let api = cadenza_api::build(&config, shutdown.clone())
        .await
        .expect("api builds");
    App {
        router: api.router(),
        db,
        keyring,
        dns,
        _shutdown: shutdown.drop_guard(),
    }
}

/// One org with everything a route can point at.
struct OrgFixture {
    org: OrgId,
    project: String,
    run: RunId,
    target_member: String,
    service_token_id: String,
    invitation_id: String,
}

async fn org_fixture(app: &App, slug: &str) -> OrgFixture {
    let mut conn = app.db.pool.acquire().await.expect("conn");
    let org = orgs::create(&mut conn, &unique_name(slug), slug)
        .await
        .expect("org");
    let project = projects::create(
        &mut conn,
        org.id,
        "p",
        "p",
        &AgentSettings::with_image("img"),
        &Repository::default(),
    )
    .await
    .expect("project");
    let Submitted::Created(run) = runs::submit(
        &mut conn,
        NewRun {
            org_id: org.id,
            project_id: project.id,
            prompt: "$ true",
            idempotency_key: None,
        },
    )
    .await
    .expect("run") else {
        panic!("new run");
    };
    diffs::upsert(&mut conn, run.id, org.id, None, "diff --git a/x b/x\n")
        .await
        .expect("diff");
    let (target, _) = user_with_token(
        &mut conn,
        &format!("{}@example.com", unique_name("target-")),
        &[(org.id, Role::Viewer)],
        false,
        None,
    )
    .await
    .expect("target");
    service_token(&mut conn, org.id, Role::Member, None)
        .await
        .expect("service token");
    let tokens = cadenza_storage::tokens::list(
        &mut conn,
        &cadenza_storage::tokens::TokenOwner::Service {
            org: org.id,
            role: Role::Member,
        },
    )
    .await
    .expect("tokens");
    let (invitation, _) = cadenza_storage::invitations::create(
        &mut conn,
        org.id,
        "invitee@example.com",
        Role::Member,
        time::OffsetDateTime::now_utc() + Duration::from_secs(3600),
        None,
    )
    .await
    .expect("invitation");
    let (rule, _) =
        cadenza_storage::domain_rules::put(&mut conn, org.id, "example.org", Role::Viewer)
            .await
            .expect("domain rule");
    app.dns
        .add_txt(
            &cadenza_api::domain_verification::record_name(&rule.domain),
            &cadenza_api::domain_verification::record_value(&rule.verification_token),
        )
        .await
        .expect("verification record");
    for scope in [
        SecretScope::Org(org.id),
        SecretScope::Project(org.id, project.id),
    ] {
        secrets::put(
            &mut conn,
            &app.keyring,
            scope,
            "FIXTURE_SECRET",
            &secrecy::SecretString::from("fixture-secret-value"),
            "fixture",
        )
        .await
        .expect("secret");
    }
    OrgFixture {
        invitation_id: invitation.id.to_string(),
        org: org.id,
        project: project.id.to_string(),
        run: run.id,
        target_member: target.to_string(),
        service_token_id: tokens[0].id.to_string(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Caller {
    Anonymous,
    Viewer,
    Member,
    Admin,
    Owner,
    OwnerOfAnotherOrg,
    InstanceAdmin,
    /// An owner's personal token narrowed to reading.
    Narrowed,
}

const CALLERS: [Caller; 8] = [
    Caller::Anonymous,
    Caller::Viewer,
    Caller::Member,
    Caller::Admin,
    Caller::Owner,
    Caller::OwnerOfAnotherOrg,
    Caller::InstanceAdmin,
    Caller::Narrowed,
];

const NARROWED_SCOPES: [Permission; 3] = [
    Permission::OrgRead,
    Permission::ProjectsRead,
    Permission::RunsRead,
];

/// Roles, instance administration and token scopes of a kind of caller.
type CallerSetup = (Vec<(OrgId, Role)>, bool, Option<&'static [Permission]>);

async fn token_for(app: &App, caller: Caller, a: OrgId, b: OrgId) -> Option<String> {
    let mut conn = app.db.pool.acquire().await.expect("conn");
    let email = format!("{}@example.com", unique_name("caller-"));
    let (roles, admin, scopes): CallerSetup = match caller {
        Caller::Anonymous => return None,
        Caller::Viewer => (vec![(a, Role::Viewer)], false, None),
        Caller::Member => (vec![(a, Role::Member)], false, None),
        Caller::Admin => (vec![(a, Role::Admin)], false, None),
        Caller::Owner => (vec![(a, Role::Owner)], false, None),
        Caller::OwnerOfAnotherOrg => (vec![(b, Role::Owner)], false, None),
        Caller::InstanceAdmin => (vec![], true, None),
        Caller::Narrowed => (vec![(a, Role::Owner)], false, Some(&NARROWED_SCOPES)),
    };
    let (_, token) = user_with_token(&mut conn, &email, &roles, admin, scopes)
        .await
        .expect("caller");
    Some(token)
}

/// A valid body for each mutating route, so an allowed caller gets a success.
fn example_body(spec: &RouteSpec) -> Option<Value> {
    let body = match (spec.method.as_str(), spec.path) {
        ("POST", "/orgs") => json!({"slug": unique_name("o-"), "name": "New org"}),
        ("PATCH", "/orgs/{org_id}") => json!({"name": "Renamed"}),
        ("PATCH", "/orgs/{org_id}/members/{user_id}") => json!({"role": "member"}),
        ("POST", "/orgs/{org_id}/projects") => {
            json!({"slug": unique_name("p-"), "name": "New project"})
        }
        ("POST", "/orgs/{org_id}/tokens") => json!({"name": "ci", "role": "viewer"}),
        ("PATCH", "/projects/{project_id}") => {
            json!({"name": "Renamed", "agent": {"max_iterations": 7}})
        }
        ("POST", "/projects/{project_id}/runs") => json!({"prompt": "$ true"}),
        ("POST", "/tokens") => json!({"name": "mine"}),
        ("POST", "/orgs/{org_id}/invitations") => {
            json!({"email": "new@example.com", "role": "viewer"})
        }
        ("PUT", "/orgs/{org_id}/domains/{domain}") => json!({"role": "member"}),
        ("PUT", "/orgs/{org_id}/secrets/{name}" | "/projects/{project_id}/secrets/{name}") => {
            json!({"value": "example-secret-value"})
        }
        ("POST", "/admin/secrets/rewrap") => return None,
        ("POST", "/orgs/{org_id}/domains/{domain}/verify") => return None,
        ("POST", "/admin/orgs/{org_id}/domains/{domain}/approve") => return None,
        ("POST", "/invitations/{token}/accept") => return None,
        ("POST", "/auth/logout") => return None,
        ("POST", "/runs/{run_id}/cancel") => return None,
        ("POST", "/runs/{run_id}/messages") => json!({"text": "also add a test"}),
        ("DELETE", _) => return None,
        ("GET", _) => return None,
        (method, path) => panic!("no example body for {method} {path}: add one to this test"),
    };
    Some(body)
}

fn fill(path: &str, fixture: &OrgFixture) -> String {
    path.replace("{org_id}", &fixture.org.to_string())
        .replace("{project_id}", &fixture.project)
        .replace("{run_id}", &fixture.run.to_string())
        .replace("{user_id}", &fixture.target_member)
        .replace("{token_id}", &fixture.service_token_id)
        .replace("{invitation_id}", &fixture.invitation_id)
        .replace("{domain}", "example.org")
        .replace("{name}", "FIXTURE_SECRET")
        .replace("{token}", "cdzi_unknown")
}

async fn call(
    router: &Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("/api/v1{uri}"));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = match body {
        Some(body) => request
            .header("content-type", "application/json")
            .body(Body::from(body.to_string())),
        None => request.body(Body::empty()),
    }
    .expect("request");
    let response = router.clone().oneshot(request).await.expect("response");
    let status = response.status();
    let is_stream = response
        .headers()
        .get("content-type")
        .is_some_and(|value| value.as_bytes().starts_with(b"text/event-stream"));
    if is_stream {
        return (status, Value::Null);
    }
    let bytes = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
        .await
        .expect("body within 10 s")
        .expect("body")
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn role_of(caller: Caller) -> Option<Role> {
    match caller {
        Caller::Viewer => Some(Role::Viewer),
        Caller::Member => Some(Role::Member),
        Caller::Admin => Some(Role::Admin),
        Caller::Owner | Caller::Narrowed => Some(Role::Owner),
        _ => None,
    }
}

/// What a caller should get on a route pointing at org A's resources.
fn expected(spec: &RouteSpec, caller: Caller) -> &'static str {
    if spec.access == Access::Public {
        // Login routes answer redirects and login failures, never a refusal for who calls.
        return "not-403";
    }
    if caller == Caller::Anonymous {
        return "401";
    }
    let has_ids = spec.path.contains('{');
    match spec.access {
        Access::Public | Access::Authenticated => "not-401",
        Access::Instance => match caller {
            Caller::InstanceAdmin => "allowed",
            _ => "403",
        },
        Access::Org(_) if !has_ids => "allowed",
        Access::Org(permission) => match caller {
            Caller::OwnerOfAnotherOrg => "404",
            Caller::InstanceAdmin => "allowed",
            Caller::Narrowed if !NARROWED_SCOPES.contains(&permission) => "403",
            caller => {
                let role = role_of(caller).expect("a member of org A");
                if role.grants(permission) {
                    "allowed"
                } else {
                    "403"
                }
            }
        },
    }
}

#[tokio::test]
async fn every_route_answers_every_kind_of_caller_as_declared() {
    let app = app(json!({"rate_limit_per_caller": 0, "rate_limit_per_org": 0})).await;
    let specs = route_specs();
    assert!(specs.len() >= 25, "the route table lists every route");
    let mut failures = Vec::new();
    for spec in &specs {
        for caller in CALLERS {
            // Fresh orgs per check: successful mutations (deletes included) must not leak into the
            // next caller's check.
            let a = org_fixture(&app, "a-").await;
            let b = org_fixture(&app, "b-").await;
            let token = token_for(&app, caller, a.org, b.org).await;
            let uri = fill(spec.path, &a);
            let (status, body) = call(
                &app.router,
                spec.method.clone(),
                &uri,
                token.as_deref(),
                example_body(spec),
            )
            .await;
            let ok = match expected(spec, caller) {
                "allowed" => status.is_success(),
                "not-401" => status != StatusCode::UNAUTHORIZED && !status.is_server_error(),
                "401" => status == StatusCode::UNAUTHORIZED,
                "not-403" => status != StatusCode::FORBIDDEN && !status.is_server_error(),
                "403" => status == StatusCode::FORBIDDEN,
                "404" => status == StatusCode::NOT_FOUND,
                other => panic!("unknown expectation {other}"),
            };
            if !ok {
                failures.push(format!(
                    "{} {} as {caller:?}: expected {}, got {status} {body}",
                    spec.method,
                    spec.path,
                    expected(spec, caller)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn every_mutating_route_writes_exactly_one_audit_entry_with_its_actor() {
    let app = app(json!({})).await;
    // Accepting an invitation needs an invitation addressed to the caller; its own test below
    // checks that path, including its audit entry.
    for spec in route_specs()
        .iter()
        .filter(|spec| spec.method != Method::GET && spec.path != "/invitations/{token}/accept")
    {
        let a = org_fixture(&app, "a-").await;
        let b = org_fixture(&app, "b-").await;
        let mut conn = app.db.pool.acquire().await.expect("conn");
        let email = format!("{}@example.com", unique_name("owner-"));
        let (owner, token) = user_with_token(
            &mut conn,
            &email,
            &[(a.org, Role::Owner)],
            spec.access == Access::Instance,
            None,
        )
        .await
        .expect("owner");
        let _ = b;
        let before: i64 = sqlx::query_scalar("select count(*) from audit_log")
            .fetch_one(&mut *conn)
            .await
            .expect("count");
        let mut uri = fill(spec.path, &a);
        if spec.path == "/tokens/{token_id}" {
            // A personal token route points at one of the caller's own tokens.
            let own = cadenza_storage::tokens::list(
                &mut conn,
                &cadenza_storage::tokens::TokenOwner::User(owner),
            )
            .await
            .expect("own tokens");
            uri = format!("/tokens/{}", own[0].id);
        }
        let (status, body) = call(
            &app.router,
            spec.method.clone(),
            &uri,
            Some(&token),
            example_body(spec),
        )
        .await;
        assert!(
            status.is_success(),
            "{} {}: {status} {body}",
            spec.method,
            spec.path
        );
        let rows: Vec<(Option<uuid::Uuid>, String)> =
            sqlx::query_as("select actor_id, action from audit_log order by id offset $1")
                .bind(before)
                .fetch_all(&mut *conn)
                .await
                .expect("audit rows");
        assert_eq!(
            rows.len(),
            1,
            "{} {} wrote {rows:?}",
            spec.method,
            spec.path
        );
        assert_eq!(
            rows[0].0,
            Some(owner.as_uuid()),
            "{} {}",
            spec.method,
            spec.path
        );
    }
}

#[tokio::test]
async fn the_application_cannot_rewrite_or_erase_the_audit_log() {
    let app = app(json!({})).await;
    // The API's own connection: the runtime role, a member of `cadenza_runtime` owning nothing.
    let mut conn = app.db.pool.acquire().await.expect("conn");
    let (runtime, owns): (bool, bool) = sqlx::query_as(
        "select pg_has_role(current_user, 'cadenza_runtime', 'member'),
                pg_has_role(current_user, relowner, 'usage')
         from pg_class where oid = 'audit_log'::regclass",
    )
    .fetch_one(&mut *conn)
    .await
    .expect("role");
    assert!(runtime && !owns, "connected as the runtime role");
    sqlx::query("insert into audit_log (actor_type, action, resource_type) values ('system', 'test', 'org')")
        .execute(&mut *conn)
        .await
        .expect("insert is allowed");
    for statement in [
        "update audit_log set action = 'forged'",
        "delete from audit_log",
        "truncate audit_log",
        "alter table audit_log disable trigger all",
        "alter table audit_log add column forged text",
        "alter table audit_log owner to current_user",
        "drop trigger audit_log_no_update on audit_log",
        "drop table audit_log",
    ] {
        let result = sqlx::query(statement).execute(&mut *conn).await;
        assert!(result.is_err(), "`{statement}` succeeded");
    }
    let rows: i64 = sqlx::query_scalar("select count(*) from audit_log where action = 'test'")
        .fetch_one(&mut *conn)
        .await
        .expect("select is allowed");
    assert_eq!(rows, 1, "the entry is still there");
}

#[tokio::test]
async fn lists_never_show_another_orgs_data() {
    let app = app(json!({})).await;
    let a = org_fixture(&app, "a-").await;
    let b = org_fixture(&app, "b-").await;
    let token_b = token_for(&app, Caller::OwnerOfAnotherOrg, a.org, b.org)
        .await
        .expect("token");
    for path in ["/orgs", "/projects", "/runs"] {
        let (status, body) = call(&app.router, Method::GET, path, Some(&token_b), None).await;
        assert_eq!(status, StatusCode::OK);
        let text = body.to_string();
        assert!(
            !text.contains(&a.org.to_string()),
            "{path} leaks org A: {text}"
        );
        assert!(
            !text.contains(&a.project),
            "{path} leaks org A's project: {text}"
        );
        assert!(
            !text.contains(&a.run.to_string()),
            "{path} leaks org A's run: {text}"
        );
        assert!(
            text.contains(&b.org.to_string()) || path != "/orgs",
            "{path} shows org B: {text}"
        );
    }
    let (_, runs) = call(&app.router, Method::GET, "/runs", Some(&token_b), None).await;
    assert_eq!(runs["items"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn tokens_are_never_stored_in_plain_text_and_revocation_and_expiry_take_effect() {
    let app = app(json!({})).await;
    let a = org_fixture(&app, "a-").await;
    let b = org_fixture(&app, "b-").await;
    let owner = token_for(&app, Caller::Owner, a.org, b.org)
        .await
        .expect("token");
    let expires = (time::OffsetDateTime::now_utc() + Duration::from_secs(2))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("time");
    let (status, created) = call(
        &app.router,
        Method::POST,
        "/tokens",
        Some(&owner),
        Some(json!({"name": "short", "expires_at": expires})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let secret = created["token"].as_str().expect("shown once").to_owned();
    let (status, created) = call(
        &app.router,
        Method::POST,
        &format!("/orgs/{}/tokens", a.org),
        Some(&owner),
        Some(json!({"name": "svc"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let service_secret = created["token"].as_str().expect("secret").to_owned();
    let service_id = created["id"].as_str().expect("id").to_owned();

    // No column of any table holds either secret (read as the owner, who can read every table).
    let mut as_owner = app.db.owner_connection().await.expect("conn");
    let tables: Vec<String> =
        sqlx::query_scalar("select tablename::text from pg_tables where schemaname = 'public'")
            .fetch_all(&mut as_owner)
            .await
            .expect("tables");
    for table in tables {
        for needle in [&secret, &service_secret] {
            let hits: i64 = sqlx::query_scalar(&format!(
                "select count(*) from \"{table}\" t where t::text like '%' || $1 || '%'"
            ))
            .bind(needle.as_str())
            .fetch_one(&mut as_owner)
            .await
            .expect("scan");
            assert_eq!(hits, 0, "table {table} holds a token secret");
        }
    }
    // Listing shows only a prefix.
    let (_, list) = call(&app.router, Method::GET, "/tokens", Some(&owner), None).await;
    assert!(!list.to_string().contains(&secret));

    // Revocation is effective on the next request.
    let (status, _) = call(&app.router, Method::GET, "/me", Some(&service_secret), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(
        &app.router,
        Method::DELETE,
        &format!("/orgs/{}/tokens/{service_id}", a.org),
        Some(&owner),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = call(&app.router, Method::GET, "/me", Some(&service_secret), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Expiry too.
    let (status, _) = call(&app.router, Method::GET, "/me", Some(&secret), None).await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, _) = call(&app.router, Method::GET, "/me", Some(&secret), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_last_owner_can_be_neither_removed_nor_demoted() {
    let app = app(json!({})).await;
    let a = org_fixture(&app, "a-").await;
    let mut conn = app.db.pool.acquire().await.expect("conn");
    let (owner, token) = user_with_token(
        &mut conn,
        &format!("{}@example.com", unique_name("o-")),
        &[(a.org, Role::Owner)],
        false,
        None,
    )
    .await
    .expect("owner");
    let path = format!("/orgs/{}/members/{owner}", a.org);
    let (status, body) = call(
        &app.router,
        Method::PATCH,
        &path,
        Some(&token),
        Some(json!({"role": "admin"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = call(&app.router, Method::DELETE, &path, Some(&token), None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    // With a second owner, the first may step down.
    let (status, _) = call(
        &app.router,
        Method::PATCH,
        &format!("/orgs/{}/members/{}", a.org, a.target_member),
        Some(&token),
        Some(json!({"role": "owner"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(
        &app.router,
        Method::PATCH,
        &path,
        Some(&token),
        Some(json!({"role": "admin"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_noisy_org_is_limited_while_another_org_goes_on() {
    let app = app(json!({"rate_limit_per_org": 5, "rate_limit_per_caller": 1000})).await;
    let a = org_fixture(&app, "a-").await;
    let b = org_fixture(&app, "b-").await;
    let token_a = token_for(&app, Caller::Owner, a.org, b.org)
        .await
        .expect("a");
    let token_b = token_for(&app, Caller::OwnerOfAnotherOrg, a.org, b.org)
        .await
        .expect("b");
    let path_a = format!("/projects/{}", a.project);
    let mut limited = None;
    for _ in 0..10 {
        let request = Request::builder()
            .uri(format!("/api/v1{path_a}"))
            .header("authorization", format!("Bearer {token_a}"))
            .body(Body::empty())
            .expect("request");
        let response = app.router.clone().oneshot(request).await.expect("response");
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(response);
            break;
        }
    }
    let limited = limited.expect("org A is limited after 5 requests");
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .expect("header")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry_after));
    assert_eq!(limited.headers()["ratelimit-limit"], "5");
    assert_eq!(limited.headers()["ratelimit-remaining"], "0");
    let (status, _) = call(
        &app.router,
        Method::GET,
        &format!("/projects/{}", b.project),
        Some(&token_b),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "org B is not slowed by org A");
}

#[tokio::test]
async fn an_invitation_is_bound_to_its_email_expires_and_works_once() {
    let app = app(json!({})).await;
    let a = org_fixture(&app, "a-").await;
    let b = org_fixture(&app, "b-").await;
    let admin = token_for(&app, Caller::Admin, a.org, b.org)
        .await
        .expect("admin");
    let mut conn = app.db.pool.acquire().await.expect("conn");
    let email = format!("{}@example.com", unique_name("invitee-"));
    let (invitee, invitee_token) = user_with_token(&mut conn, &email, &[], false, None)
        .await
        .expect("invitee");
    let (_, stranger_token) = user_with_token(
        &mut conn,
        &format!("{}@example.com", unique_name("x-")),
        &[],
        false,
        None,
    )
    .await
    .expect("stranger");

    // Only an owner may invite an owner.
    let (status, _) = call(
        &app.router,
        Method::POST,
        &format!("/orgs/{}/invitations", a.org),
        Some(&admin),
        Some(json!({"email": email, "role": "owner"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, created) = call(
        &app.router,
        Method::POST,
        &format!("/orgs/{}/invitations", a.org),
        Some(&admin),
        Some(json!({"email": email.to_uppercase(), "role": "member"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let accept = format!(
        "/invitations/{}/accept",
        created["token"].as_str().expect("token")
    );

    let (status, _) = call(
        &app.router,
        Method::POST,
        &accept,
        Some(&stranger_token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "another user cannot use it");
    let (status, joined) = call(
        &app.router,
        Method::POST,
        &accept,
        Some(&invitee_token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    assert_eq!(joined["role"], "member");
    let (status, _) = call(
        &app.router,
        Method::POST,
        &accept,
        Some(&invitee_token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "single use");
    let (status, org) = call(
        &app.router,
        Method::GET,
        &format!("/orgs/{}", a.org),
        Some(&invitee_token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{org}");
    assert_eq!(org["role"], "member");

    // An expired invitation is refused.
    let (_, secret) = cadenza_storage::invitations::create(
        &mut conn,
        b.org,
        &email,
        Role::Viewer,
        time::OffsetDateTime::now_utc() - Duration::from_secs(1),
        None,
    )
    .await
    .expect("expired invitation");
    let (status, _) = call(
        &app.router,
        Method::POST,
        &format!("/invitations/{secret}/accept"),
        Some(&invitee_token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        cadenza_storage::memberships::role_of(&mut conn, b.org, invitee)
            .await
            .expect("role")
            .is_none()
    );
}

#[tokio::test]
async fn the_audit_log_filters_and_exports_as_json_lines() {
    let app = app(json!({})).await;
    let a = org_fixture(&app, "a-").await;
    let b = org_fixture(&app, "b-").await;
    let owner = token_for(&app, Caller::Owner, a.org, b.org)
        .await
        .expect("owner");
    let viewer = token_for(&app, Caller::Viewer, a.org, b.org)
        .await
        .expect("viewer");
    for name in ["One", "Two"] {
        let (status, _) = call(
            &app.router,
            Method::PATCH,
            &format!("/orgs/{}", a.org),
            Some(&owner),
            Some(json!({"name": name})),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _) = call(
        &app.router,
        Method::POST,
        &format!("/orgs/{}/projects", a.org),
        Some(&owner),
        Some(json!({"slug": "x", "name": "X"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, page) = call(
        &app.router,
        Method::GET,
        &format!("/orgs/{}/audit?action=org.update", a.org),
        Some(&owner),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let items = page["items"].as_array().expect("items");
    assert_eq!(items.len(), 2);
    assert_eq!(
        items[0]["diff"]["name"],
        json!({"before": "One", "after": "Two"}),
        "newest first, with the diff"
    );
    assert_eq!(items[0]["actor"]["type"], "user");

    let (status, _) = call(
        &app.router,
        Method::GET,
        &format!("/orgs/{}/audit", a.org),
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "viewers do not read the audit log"
    );

    let request = Request::builder()
        .uri(format!("/api/v1/orgs/{}/audit?format=jsonl", a.org))
        .header("authorization", format!("Bearer {owner}"))
        .body(Body::empty())
        .expect("request");
    let response = app.router.clone().oneshot(request).await.expect("response");
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let lines: Vec<Value> = String::from_utf8_lossy(&bytes)
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|line| line["org_id"] == a.org.to_string()));
}

#[tokio::test]
async fn secret_values_are_write_only_and_never_echoed_or_audited() {
    let app = app(json!({})).await;
    let a = org_fixture(&app, "sec-").await;
    let b = org_fixture(&app, "sec-other-").await;
    let mut conn = app.db.pool.acquire().await.expect("conn");
    let (_, owner) = user_with_token(
        &mut conn,
        &format!("{}@example.com", unique_name("sec-owner-")),
        &[(a.org, Role::Owner)],
        false,
        None,
    )
    .await
    .expect("owner");
    let canary = "cdz-canary-5c1d0e9b7a";
    let org_path = format!("/orgs/{}/secrets/CANARY", a.org);
    let project_path = format!("/projects/{}/secrets/CANARY", a.project);

    let (status, created) = call(
        &app.router,
        Method::PUT,
        &org_path,
        Some(&owner),
        Some(json!({"value": canary})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["version"], 1);
    assert_eq!(created["scope"], "org");
    let (status, updated) = call(
        &app.router,
        Method::PUT,
        &org_path,
        Some(&owner),
        Some(json!({"value": format!("{canary}-v2")})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["version"], 2);
    let (status, _) = call(
        &app.router,
        Method::PUT,
        &project_path,
        Some(&owner),
        Some(json!({"value": canary})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);

    // Everything readable about it, as the owner, holds no value.
    let mut seen = Vec::new();
    for path in [
        org_path.clone(),
        project_path.clone(),
        format!("/orgs/{}/secrets", a.org),
        format!("/projects/{}/secrets", a.project),
        format!("/orgs/{}/audit", a.org),
    ] {
        let (status, body) = call(&app.router, Method::GET, &path, Some(&owner), None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        seen.push(body.to_string());
    }
    let listed: Value = serde_json::from_str(&seen[2]).expect("json");
    let names: Vec<&str> = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|item| item["name"].as_str())
        .collect();
    assert_eq!(names, ["CANARY", "FIXTURE_SECRET"]);
    for body in &seen {
        assert!(!body.contains(canary), "a value came back: {body}");
        assert!(!body.contains("\"value\""), "{body}");
    }
    let audit_rows: Vec<String> = sqlx::query_scalar(
        "select row_to_json(a)::text from audit_log a where action like 'secret.%'",
    )
    .fetch_all(&mut *conn)
    .await
    .expect("audit");
    assert_eq!(audit_rows.len(), 3, "one entry per write");
    assert!(audit_rows.iter().all(|row| !row.contains(canary)));

    // Another org's owner cannot see or touch it; a member cannot write.
    let (_, stranger) = user_with_token(
        &mut conn,
        &format!("{}@example.com", unique_name("stranger-")),
        &[(b.org, Role::Owner)],
        false,
        None,
    )
    .await
    .expect("stranger");
    let (status, _) = call(&app.router, Method::GET, &org_path, Some(&stranger), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, member) = user_with_token(
        &mut conn,
        &format!("{}@example.com", unique_name("member-")),
        &[(a.org, Role::Member)],
        false,
        None,
    )
    .await
    .expect("member");
    let (status, _) = call(
        &app.router,
        Method::PUT,
        &org_path,
        Some(&member),
        Some(json!({"value": "member-overwrite"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Bad input: a clear 400 that never repeats the value.
    for (path, body) in [
        (
            format!("/orgs/{}/secrets/lower-case", a.org),
            json!({"value": canary}),
        ),
        (org_path.clone(), json!({"value": [canary]})),
        (org_path.clone(), json!({"value": canary, "note": canary})),
        (org_path.clone(), json!({"value": "ab"})),
        (org_path.clone(), json!({"secret": canary})),
    ] {
        let (status, problem) =
            call(&app.router, Method::PUT, &path, Some(&owner), Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {problem}");
        assert!(!problem.to_string().contains(canary), "{problem}");
    }

    let (status, _) = call(&app.router, Method::DELETE, &org_path, Some(&owner), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, problem) = call(&app.router, Method::GET, &org_path, Some(&owner), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
}

#[tokio::test]
async fn instance_admins_rewrap_secrets_with_the_active_key() {
    let (old_id, old_key) = (
        "kek-old",
        cadenza_crypto::KeyRing::generate_key().expect("kek").1,
    );
    let (new_id, new_key) = (
        "kek-new",
        cadenza_crypto::KeyRing::generate_key().expect("kek").1,
    );
    let old_ring =
        cadenza_crypto::KeyRing::from_spec(&format!("{old_id}:{}", old_key.expose_secret()))
            .expect("old ring");
    // The API runs with the new key active and the old one decrypt-only (rotation step 2).
    let app = app(json!({"secret_keks": format!(
        "{new_id}:{},{old_id}:{}",
        new_key.expose_secret(),
        old_key.expose_secret()
    )}))
    .await;
    let a = org_fixture(&app, "rw-").await;
    let mut conn = app.db.pool.acquire().await.expect("conn");
    for i in 0..5 {
        secrets::put(
            &mut conn,
            &old_ring,
            SecretScope::Org(a.org),
            &format!("OLD_{i}"),
            &secrecy::SecretString::from(format!("old-value-{i}")),
            "test",
        )
        .await
        .expect("old secret");
    }
    let (_, admin) = user_with_token(
        &mut conn,
        &format!("{}@example.com", unique_name("iadmin-")),
        &[],
        true,
        None,
    )
    .await
    .expect("admin");
    let (status, keys) = call(
        &app.router,
        Method::GET,
        "/admin/secrets/keys",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    assert_eq!(keys["active_kek_id"], new_id);
    assert!(keys["by_kek"].to_string().contains(old_id), "{keys}");

    let (status, report) = call(
        &app.router,
        Method::POST,
        "/admin/secrets/rewrap?batch_size=2",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["complete"], true, "{report}");
    assert_eq!(report["rewrapped"], 5, "{report}");
    assert_eq!(
        report["by_kek"],
        json!([{"kek_id": new_id, "secrets": 7}]),
        "the five old secrets and the two fixture secrets"
    );
    let audited: i64 =
        sqlx::query_scalar("select count(*) from audit_log where action = 'secrets.rewrapped'")
            .fetch_one(&mut *conn)
            .await
            .expect("audit");
    assert_eq!(audited, 1);
    // The old key is no longer needed.
    let new_only =
        cadenza_crypto::KeyRing::from_spec(&format!("{new_id}:{}", new_key.expose_secret()))
            .expect("new ring");
    secrets::check_keyring(&mut conn, &new_only)
        .await
        .expect("old key unused");

    let (status, problem) = call(
        &app.router,
        Method::POST,
        "/admin/secrets/rewrap?batch_size=0",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
}

#[tokio::test]
async fn the_api_refuses_to_start_without_a_key_it_needs() {
    let app = app(json!({})).await;
    let a = org_fixture(&app, "start-").await;
    let _ = a;
    // The fixture secrets are wrapped by the app's key; a ring without it must not start.
    let (id, key) = cadenza_crypto::KeyRing::generate_key().expect("kek");
    let settings = json!({
        "database_url": app.db.url,
        "nats_url": nats_url(),
        "redis_url": redis_url(),
        "bus_prefix": unique_name("t"),
        "migrate_on_start": false,
        "secret_keks": format!("{id}:{}", key.expose_secret()),
    });
    let config: cadenza_api::ApiConfig = serde_json::from_value(settings).expect("config");
    let err = match cadenza_api::build(&config, CancellationToken::new()).await {
        Ok(_) => panic!("the API started without the key its secrets need"),
        Err(err) => format!("{err:#}"),
    };
    assert!(err.contains(app.keyring.active_id()), "{err}");
    assert!(err.contains("refusing to start"), "{err}");
}

#[tokio::test]
async fn the_api_refuses_to_migrate_without_the_migration_role() {
    let db = TestDatabase::create().await.expect("db");
    let (id, key) = cadenza_crypto::KeyRing::generate_key().expect("kek");
    let settings = json!({
        "database_url": db.url,
        "nats_url": nats_url(),
        "redis_url": redis_url(),
        "bus_prefix": unique_name("t"),
        "secret_keks": format!("{id}:{}", key.expose_secret()),
    });
    let config: cadenza_api::ApiConfig = serde_json::from_value(settings).expect("config");
    let err = match cadenza_api::build(&config, CancellationToken::new()).await {
        Ok(_) => panic!("the API migrated without a migration role"),
        Err(err) => format!("{err:#}"),
    };
    assert!(err.contains("CADENZA_MIGRATION_DATABASE_URL"), "{err}");

    // With the owner's URL it migrates (nothing is pending here) and starts.
    let settings = json!({
        "database_url": db.url,
        "migration_database_url": db.owner_url,
        "nats_url": nats_url(),
        "redis_url": redis_url(),
        "bus_prefix": unique_name("t"),
        "secret_keks": format!("{id}:{}", key.expose_secret()),
    });
    let config: cadenza_api::ApiConfig = serde_json::from_value(settings).expect("config");
    cadenza_api::build(&config, CancellationToken::new())
        .await
        .expect("the API starts with a migration role");
}
