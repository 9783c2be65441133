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
use cadenza_domain::{OrgId, Permission, Role, RunId};
use cadenza_storage::orgs;
use cadenza_storage::secrets::{self, SecretScope};
use cadenza_testkit::dns::TestDnsServer;
use cadenza_testkit::fixtures::{org_with_queued_run, service_token, user_with_token};
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
    let (org, project, run) = org_with_queued_run(&mut conn, slug)
        .await
        .expect("org with a run");
    // A diff as a finished run has it (written by its worker, fenced; here directly).
    sqlx::query("insert into run_diffs (run_id, org_id, patch) values ($1, $2, $3)")
        .bind(run.id.as_uuid())
        .bind(org.id.as_uuid())
        .bind("diff --git a/x b/x\n")
        .execute(&mut *conn)
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
    /// An owner's personal token narrowed to `tokens.manage` (a CI job rotating tokens).
    TokensManager,
    /// Service tokens of org A with each role.
    Service(Role),
}

const CALLERS: [Caller; 13] = [
    Caller::Anonymous,
    Caller::Viewer,
    Caller::Member,
    Caller::Admin,
    Caller::Owner,
    Caller::OwnerOfAnotherOrg,
    Caller::InstanceAdmin,
    Caller::Narrowed,
    Caller::TokensManager,
    Caller::Service(Role::Viewer),
    Caller::Service(Role::Member),
    Caller::Service(Role::Admin),
    Caller::Service(Role::Owner),
];

const TOKENS_MANAGER_SCOPES: [Permission; 1] = [Permission::TokensManage];

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
        Caller::TokensManager => (vec![(a, Role::Owner)], false, Some(&TOKENS_MANAGER_SCOPES)),
        Caller::Service(role) => {
            return Some(
                service_token(&mut conn, a, role, None)
                    .await
                    .expect("service token"),
            );
        }
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
        ("PUT", "/admin/orgs/{org_id}/agent-images") => json!({"rules": ["ghcr.io/acme/"]}),
        ("POST", "/invitations/accept") => json!({"token": "cdzi_unknown"}),
        ("POST", "/auth/logout") => return None,
        ("POST", "/runs/{run_id}/cancel") => return None,
        ("POST", "/runs/{run_id}/retry") => return None,
        ("POST", "/runs/{run_id}/messages") => json!({"text": "also add a test"}),
        ("DELETE", _) => return None,
        ("GET", _) => return None,
        (method, path) => panic!("no example body for {method} {path}: add one to this test"),
    };
    Some(body)
}

fn fill(path: &str, fixture: &OrgFixture) -> String {
    // Routes that need a query parameter get one that names something the fixture has (the
    // fixture's diff changes the file `x`).
    let query = match path {
        "/runs/{run_id}/files/patch" => "?path=x",
        _ => "",
    };
    let path = format!("{path}{query}");
    path.replace("{org_id}", &fixture.org.to_string())
        .replace("{project_id}", &fixture.project)
        .replace("{run_id}", &fixture.run.to_string())
        .replace("{user_id}", &fixture.target_member)
        .replace("{token_id}", &fixture.service_token_id)
        .replace("{invitation_id}", &fixture.invitation_id)
        .replace("{domain}", "example.org")
        .replace("{name}", "FIXTURE_SECRET")
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
        Caller::Owner | Caller::Narrowed | Caller::TokensManager => Some(Role::Owner),
        Caller::Service(role) => Some(role),
        _ => None,
    }
}

fn scopes_of(caller: Caller) -> Option<&'static [Permission]> {
    match caller {
        Caller::Narrowed => Some(&NARROWED_SCOPES),
        Caller::TokensManager => Some(&TOKENS_MANAGER_SCOPES),
        _ => None,
    }
}

fn is_service(caller: Caller) -> bool {
    matches!(caller, Caller::Service(_))
}

/// Routes for the user's own account: a person only, and a narrowed token only with
/// `account.manage`. (`GET /me`, `GET /orgs` and listing one's tokens are plain reads.)
fn is_account_action(spec: &RouteSpec) -> bool {
    matches!(
        (spec.method.as_str(), spec.path),
        ("POST", "/orgs")
            | ("POST", "/invitations/accept")
            | ("POST", "/auth/logout")
            | ("DELETE", "/tokens/{token_id}")
    )
}

/// Routes that act as a person: service tokens are refused.
fn needs_person(spec: &RouteSpec) -> bool {
    is_account_action(spec)
        || matches!(
            (spec.method.as_str(), spec.path),
            ("GET", "/tokens") | ("POST", "/tokens")
        )
}

/// What a caller should get on a route pointing at org A's resources.
fn expected(spec: &RouteSpec, caller: Caller) -> &'static str {
    if spec.access == Access::Public {
        // The same answer for every caller: no browser login is configured in this app, and a
        // callback without code and state is a failed login.
        return match spec.path {
            "/auth/login" => "404",
            "/auth/callback" => "401",
            _ => "allowed",
        };
    }
    if caller == Caller::Anonymous {
        return "401";
    }
    let has_ids = spec.path.contains('{');
    match spec.access {
        Access::Public => unreachable!("answered above"),
        Access::Authenticated if is_service(caller) && needs_person(spec) => "403",
        Access::Authenticated if is_account_action(spec) && scopes_of(caller).is_some() => "403",
        // An unknown invitation, and a token that is not the caller's own: nobody's.
        Access::Authenticated
            if spec.path == "/invitations/accept" || spec.path == "/tokens/{token_id}" =>
        {
            "404"
        }
        Access::Authenticated => "allowed",
        Access::Instance => match caller {
            Caller::InstanceAdmin => "allowed",
            _ => "403",
        },
        Access::Org(_) if !has_ids => "allowed",
        Access::Org(permission) => match caller {
            Caller::OwnerOfAnotherOrg => "404",
            Caller::InstanceAdmin => "allowed",
            caller if scopes_of(caller).is_some_and(|scopes| !scopes.contains(&permission)) => {
                "403"
            }
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
    let app = app(json!({
        "rate_limit_per_caller": 0,
        "rate_limit_per_org": 0,
        "rate_limit_logins_per_ip": 0
    }))
    .await;
    let specs = route_specs();
    // Every handler module's routes are in the table (a route missing from it would not be
    // served at all, as the router is built from it).
    for prefix in [
        "/auth/",
        "/me",
        "/orgs",
        "/invitations/",
        "/projects",
        "/runs",
        "/tokens",
        "/admin/",
    ] {
        assert!(
            specs.iter().any(|spec| spec.path.starts_with(prefix)),
            "{prefix}"
        );
    }
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
                // The fixture's run is queued, which a retry refuses after access is granted.
                "allowed" if spec.path == "/runs/{run_id}/retry" => {
                    status == StatusCode::CONFLICT && body.to_string().contains("only an ended run")
                }
                "allowed" => status.is_success(),
                "401" => status == StatusCode::UNAUTHORIZED,
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
        .filter(|spec| spec.method != Method::GET && spec.path != "/invitations/accept")
    {
        let a = org_fixture(&app, "a-").await;
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
        if spec.path == "/runs/{run_id}/retry" {
            // Only an ended run is retried.
            cadenza_storage::runs::transition(
                &mut conn,
                a.run,
                cadenza_domain::RunState::Queued,
                &cadenza_domain::RunEvent::Cancelled(cadenza_domain::TerminalReason::new(
                    cadenza_domain::TerminalCode::Cancelled,
                    "ended for the test",
                )),
                cadenza_storage::runs::Actor::Any,
                None,
            )
            .await
            .expect("ended");
        }
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
        // ...and each list does show the caller's own org's item, so an empty list cannot pass.
        let own = match path {
            "/orgs" => b.org.to_string(),
            "/projects" => b.project.clone(),
            _ => b.run.to_string(),
        };
        assert!(text.contains(&own), "{path} shows org B's item: {text}");
        assert_eq!(
            body["items"].as_array().map(Vec::len),
            Some(1),
            "{path}: {text}"
        );
    }
}

#[tokio::test]
async fn tokens_are_never_stored_in_plain_text_and_revocation_and_expiry_take_effect() {
    let app = app(json!({})).await;
    let a = org_fixture(&app, "a-").await;
    let b = org_fixture(&app, "b-").await;
    let owner = token_for(&app, Caller::Owner, a.org, b.org)
        .await
        .expect("token");
    let expires = (time::OffsetDateTime::now_utc() + Duration::from_secs(3600))
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
    let short_id = created["id"].as_str().expect("id").to_owned();
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
    let mut conn = app.db.pool.acquire().await.expect("conn");
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
    // Its expiry moves into the past (as time passing would do), no waiting.
    sqlx::query(
        "update api_tokens set expires_at = now() - interval '1 second' where id = $1::uuid",
    )
    .bind(&short_id)
    .execute(&mut *conn)
    .await
    .expect("expire");
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
    let accept = "/invitations/accept";
    let token_body = json!({"token": created["token"].as_str().expect("token")});

    let (status, _) = call(
        &app.router,
        Method::POST,
        accept,
        Some(&stranger_token),
        Some(token_body.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "another user cannot use it");
    let (status, joined) = call(
        &app.router,
        Method::POST,
        accept,
        Some(&invitee_token),
        Some(token_body.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    assert_eq!(joined["role"], "member");
    let (status, _) = call(
        &app.router,
        Method::POST,
        accept,
        Some(&invitee_token),
        Some(token_body.clone()),
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
        "/invitations/accept",
        Some(&invitee_token),
        Some(json!({"token": secret})),
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
    let fixture_secrets: i64 = sqlx::query_scalar("select count(*) from secrets")
        .fetch_one(&mut *conn)
        .await
        .expect("count");
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
        json!([{"kek_id": new_id, "secrets": fixture_secrets + 5}]),
        "the five old secrets and the fixture's"
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

/// A handler that checks nothing itself: the route's declared access must still hold.
async fn forgetful_handler() -> &'static str {
    "did the thing"
}

#[tokio::test]
async fn the_router_denies_what_a_handler_forgets_to_check() {
    let db = TestDatabase::create().await.expect("db");
    let (kek_id, kek) = cadenza_crypto::KeyRing::generate_key().expect("kek");
    let config: cadenza_api::ApiConfig = serde_json::from_value(json!({
        "secret_keks": format!("{kek_id}:{}", kek.expose_secret()),
        "database_url": db.url,
        "nats_url": nats_url(),
        "redis_url": redis_url(),
        "bus_prefix": unique_name("t"),
        "migrate_on_start": false,
    }))
    .expect("config");
    let shutdown = CancellationToken::new();
    let _guard = shutdown.clone().drop_guard();
    let api = cadenza_api::build(&config, shutdown).await.expect("api");
    let state = api.state();
    let routes = axum::Router::new()
        .route(
            "/orgs/{org_id}/forgetful",
            cadenza_api::routes::guarded(
                &state,
                Access::Org(Permission::ProjectsManage),
                axum::routing::post(forgetful_handler),
            ),
        )
        .route(
            "/runs/{run_id}/forgetful",
            cadenza_api::routes::guarded(
                &state,
                Access::Org(Permission::RunsCancel),
                axum::routing::post(forgetful_handler),
            ),
        )
        .route(
            "/admin/forgetful",
            cadenza_api::routes::guarded(
                &state,
                Access::Instance,
                axum::routing::post(forgetful_handler),
            ),
        );
    let router = api.router_with(routes);
    let app = App {
        router,
        db,
        keyring: cadenza_crypto::KeyRing::from_spec(&format!("{kek_id}:{}", kek.expose_secret()))
            .expect("ring"),
        dns: TestDnsServer::start().await.expect("dns server"),
        _shutdown: CancellationToken::new().drop_guard(),
    };
    let a = org_fixture(&app, "a-").await;
    let b = org_fixture(&app, "b-").await;
    let org_path = format!("/orgs/{}/forgetful", a.org);
    let run_path = format!("/runs/{}/forgetful", a.run);
    let cases = [
        (
            Caller::Anonymous,
            org_path.as_str(),
            StatusCode::UNAUTHORIZED,
        ),
        (Caller::Member, org_path.as_str(), StatusCode::FORBIDDEN),
        (
            Caller::Service(Role::Member),
            org_path.as_str(),
            StatusCode::FORBIDDEN,
        ),
        (Caller::Narrowed, org_path.as_str(), StatusCode::FORBIDDEN),
        (
            Caller::OwnerOfAnotherOrg,
            org_path.as_str(),
            StatusCode::NOT_FOUND,
        ),
        (Caller::Admin, org_path.as_str(), StatusCode::OK),
        (Caller::Viewer, run_path.as_str(), StatusCode::FORBIDDEN),
        (
            Caller::OwnerOfAnotherOrg,
            run_path.as_str(),
            StatusCode::NOT_FOUND,
        ),
        (Caller::Member, run_path.as_str(), StatusCode::OK),
        (Caller::Owner, "/admin/forgetful", StatusCode::FORBIDDEN),
        (Caller::InstanceAdmin, "/admin/forgetful", StatusCode::OK),
    ];
    for (caller, path, want) in cases {
        let token = token_for(&app, caller, a.org, b.org).await;
        let (status, body) = call(&app.router, Method::POST, path, token.as_deref(), None).await;
        assert_eq!(status, want, "{caller:?} POST {path}: {body}");
    }
    // An unknown or malformed id is a 404 like a foreign one.
    let owner = token_for(&app, Caller::Owner, a.org, b.org).await;
    for path in [
        "/runs/not-an-id/forgetful".to_owned(),
        format!("/runs/{}/forgetful", RunId::new()),
    ] {
        let (status, _) = call(&app.router, Method::POST, &path, owner.as_deref(), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
}

async fn create_token(app: &App, caller: &str, path: &str, body: Value) -> (StatusCode, Value) {
    call(&app.router, Method::POST, path, Some(caller), Some(body)).await
}

#[tokio::test]
async fn no_token_mints_a_token_that_can_do_more_than_itself() {
    let app = app(json!({})).await;
    let a = org_fixture(&app, "a-").await;
    let b = org_fixture(&app, "b-").await;
    let service_path = format!("/orgs/{}/tokens", a.org);
    // An owner's token narrowed to `tokens.manage` (e.g. for a CI job rotating tokens).
    let rotator = token_for(&app, Caller::TokensManager, a.org, b.org)
        .await
        .expect("token");
    for body in [
        json!({"name": "x", "role": "viewer", "scopes": ["runs.read"]}),
        json!({"name": "x", "role": "member", "scopes": ["tokens.manage", "runs.create"]}),
    ] {
        let (status, answer) = create_token(&app, &rotator, &service_path, body.clone()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body} → {answer}");
    }
    // Asking for an owner token without scopes (the escalation this guards against) gets one
    // narrowed to the caller's scopes: it can only manage tokens, like its maker.
    let (status, inherited) = create_token(
        &app,
        &rotator,
        &service_path,
        json!({"name": "rotated", "role": "owner"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{inherited}");
    assert_eq!(inherited["scopes"], json!(["tokens.manage"]));
    let rotated = inherited["token"].as_str().expect("secret").to_owned();
    let (status, _) = call(
        &app.router,
        Method::GET,
        &format!("/orgs/{}/secrets", a.org),
        Some(&rotated),
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the minted token cannot read secrets"
    );

    // A service token with tokens.manage (admin) cannot mint an owner token, and what it mints
    // is recorded as made in the name of the member who made it.
    let admin_user = token_for(&app, Caller::Admin, a.org, b.org)
        .await
        .expect("admin");
    let (status, admin_service) = create_token(
        &app,
        &admin_user,
        &service_path,
        json!({"name": "svc", "role": "admin"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let admin_service_secret = admin_service["token"].as_str().expect("secret").to_owned();
    let (status, _) = create_token(
        &app,
        &admin_service_secret,
        &service_path,
        json!({"name": "up", "role": "owner"}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, child) = create_token(
        &app,
        &admin_service_secret,
        &service_path,
        json!({"name": "child", "role": "member"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{child}");
    assert_eq!(child["created_by"], admin_service["created_by"]);
    assert_eq!(child["created_by_token"], admin_service["id"]);
    assert!(admin_service["created_by"].is_string(), "{admin_service}");
    let (_, listed) = call(
        &app.router,
        Method::GET,
        &service_path,
        Some(&admin_user),
        None,
    )
    .await;
    assert!(
        listed["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|token| token["id"] == child["id"]
                && token["created_by_token"] == admin_service["id"]),
        "{listed}"
    );

    // Narrowed personal tokens cannot do account actions without `account.manage`.
    let reader = token_for(&app, Caller::Narrowed, a.org, b.org)
        .await
        .expect("reader");
    let (status, _) = create_token(
        &app,
        &reader,
        "/tokens",
        json!({"name": "wider", "scopes": ["runs.create"]}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = call(
        &app.router,
        Method::POST,
        "/orgs",
        Some(&reader),
        Some(json!({"slug": unique_name("o-"), "name": "x"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn removing_or_demoting_a_member_reaches_the_service_tokens_made_in_their_name() {
    let app = app(json!({})).await;
    let a = org_fixture(&app, "a-").await;
    let b = org_fixture(&app, "b-").await;
    let owner = token_for(&app, Caller::Owner, a.org, b.org)
        .await
        .expect("owner");
    let mut conn = app.db.pool.acquire().await.expect("conn");
    let (admin, admin_token) = user_with_token(
        &mut conn,
        &format!("{}@example.com", unique_name("adm-")),
        &[(a.org, Role::Admin)],
        false,
        None,
    )
    .await
    .expect("admin");
    let service_path = format!("/orgs/{}/tokens", a.org);
    let mint = |role: &'static str| {
        let router = app.router.clone();
        let token = admin_token.clone();
        let path = service_path.clone();
        async move {
            let (status, made) = call(
                &router,
                Method::POST,
                &path,
                Some(&token),
                Some(json!({"name": role, "role": role})),
            )
            .await;
            assert_eq!(status, StatusCode::CREATED, "{made}");
            made["token"].as_str().expect("secret").to_owned()
        }
    };
    let admin_svc = mint("admin").await;
    let member_svc = mint("member").await;
    let secrets_path = format!("/orgs/{}/secrets", a.org);
    let (status, _) = call(
        &app.router,
        Method::GET,
        &secrets_path,
        Some(&admin_svc),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // Demoted to member: the admin token is lowered to member, so secrets are out of reach.
    let member_path = format!("/orgs/{}/members/{admin}", a.org);
    let (status, _) = call(
        &app.router,
        Method::PATCH,
        &member_path,
        Some(&owner),
        Some(json!({"role": "member"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(
        &app.router,
        Method::GET,
        &secrets_path,
        Some(&admin_svc),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = call(
        &app.router,
        Method::GET,
        &format!("/projects/{}", a.project),
        Some(&admin_svc),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "still a member token");

    // Removed: every token made in their name stops working.
    let (status, _) = call(
        &app.router,
        Method::DELETE,
        &member_path,
        Some(&owner),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for token in [&admin_svc, &member_svc] {
        let (status, _) = call(&app.router, Method::GET, "/me", Some(token), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let diff: Value = sqlx::query_scalar(
        "select diff from audit_log where action = 'member.remove' order by id desc limit 1",
    )
    .fetch_one(&mut *conn)
    .await
    .expect("audit");
    assert_eq!(
        diff["service_tokens_revoked"].as_array().map(Vec::len),
        Some(2)
    );
}

async fn raw(app: &App, request: Request<Body>) -> axum::response::Response {
    app.router.clone().oneshot(request).await.expect("response")
}

#[tokio::test]
async fn answers_carry_security_headers_and_requests_are_bounded() {
    let app =
        app(json!({"max_body_bytes": 4096, "frame_ancestors": "https://portal.example"})).await;
    let a = org_fixture(&app, "a-").await;
    let b = org_fixture(&app, "b-").await;
    let owner = token_for(&app, Caller::Owner, a.org, b.org)
        .await
        .expect("owner");
    let created = raw(
        &app,
        Request::builder()
            .method("POST")
            .uri("/api/v1/tokens")
            .header("authorization", format!("Bearer {owner}"))
            .header("content-type", "application/json")
            .body(Body::from(json!({"name": "shown once"}).to_string()))
            .expect("request"),
    )
    .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let headers = created.headers();
    assert_eq!(
        headers["cache-control"], "no-store",
        "a token secret is never cached"
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    let csp = headers["content-security-policy"].to_str().expect("csp");
    assert!(
        csp.contains("frame-ancestors https://portal.example"),
        "{csp}"
    );
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(
        headers.get("x-frame-options").is_none(),
        "embedding was allowed"
    );
    assert!(
        headers.get("strict-transport-security").is_some(),
        "HSTS outside dev mode"
    );

    // The diff (agent-controlled text) is never sniffed into something else.
    let diff = raw(
        &app,
        Request::builder()
            .uri(format!("/api/v1/runs/{}/diff", a.run))
            .header("authorization", format!("Bearer {owner}"))
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(diff.status(), StatusCode::OK);
    assert_eq!(diff.headers()["x-content-type-options"], "nosniff");

    // Too large a body: 413 with a problem, not a 400 or a dropped connection.
    let big = json!({"prompt": "x".repeat(8000)}).to_string();
    let too_big = raw(
        &app,
        Request::builder()
            .method("POST")
            .uri(format!("/api/v1/projects/{}/runs", a.project))
            .header("authorization", format!("Bearer {owner}"))
            .header("content-type", "application/json")
            .body(Body::from(big))
            .expect("request"),
    )
    .await;
    assert_eq!(too_big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        too_big.headers()["content-type"],
        "application/problem+json"
    );

    // The public readiness answer names no dependency; instance admins get the details.
    let ready = raw(
        &app,
        Request::builder()
            .uri("/readyz")
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    let bytes = ready.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(
        serde_json::from_slice::<Value>(&bytes).expect("json"),
        json!({"status": "ready"})
    );
    let admin = token_for(&app, Caller::InstanceAdmin, a.org, b.org)
        .await
        .expect("admin");
    let (status, details) = call(
        &app.router,
        Method::GET,
        "/admin/health",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        details["checks"].as_array().map(Vec::len),
        Some(3),
        "{details}"
    );
}

#[tokio::test]
async fn by_default_nobody_may_frame_the_app() {
    let app = app(json!({})).await;
    let response = raw(
        &app,
        Request::builder()
            .uri("/healthz")
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .expect("csp");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(response.headers()["x-frame-options"], "DENY");
}

#[tokio::test]
async fn a_taken_or_reserved_slug_answers_alike_with_a_free_one_to_use() {
    let app = app(json!({})).await;
    let a = org_fixture(&app, "a-").await;
    let b = org_fixture(&app, "b-").await;
    let stranger = token_for(&app, Caller::OwnerOfAnotherOrg, a.org, b.org)
        .await
        .expect("token");
    let mut conn = app.db.pool.acquire().await.expect("conn");
    let taken = orgs::get(&mut conn, &cadenza_domain::Scope::Instance, a.org)
        .await
        .expect("org")
        .slug;
    let mut details = Vec::new();
    for slug in [taken.as_str(), "admin"] {
        let (status, problem) = call(
            &app.router,
            Method::POST,
            "/orgs",
            Some(&stranger),
            Some(json!({"slug": slug, "name": "Mine"})),
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT, "{problem}");
        let detail = problem["detail"].as_str().expect("detail").to_owned();
        assert!(
            !detail.contains("taken") && !detail.contains("reserved"),
            "{detail}"
        );
        let suggested = detail.split('`').nth(3).expect("a suggestion").to_owned();
        let (status, _) = call(
            &app.router,
            Method::POST,
            "/orgs",
            Some(&stranger),
            Some(json!({"slug": suggested, "name": "Mine"})),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "the suggested slug {suggested} is free"
        );
        details.push(detail.replace(slug, "<slug>"));
    }
    // Apart from the slug and the random suggestion, both answers read the same.
    let shape = |detail: &str| detail.split('`').step_by(2).collect::<Vec<_>>().join("`");
    assert_eq!(shape(&details[0]), shape(&details[1]));
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

#[tokio::test]
async fn repository_credentials_are_refused_and_env_values_reach_only_project_managers() {
    let app = app(json!({})).await;
    let a = org_fixture(&app, "a-").await;
    let b = org_fixture(&app, "b-").await;
    let admin = token_for(&app, Caller::Admin, a.org, b.org)
        .await
        .expect("admin");

    // Credentials in the repository URL: refused at create and at PATCH, naming the fix.
    for url in [
        "https://x-access-token:ghp_leaky0123@github.com/acme/repo.git",
        "https://deploy@git.example.com/acme/repo.git",
    ] {
        let (status, problem) = call(
            &app.router,
            Method::POST,
            &format!("/orgs/{}/projects", a.org),
            Some(&admin),
            Some(json!({"slug": "leaky", "name": "Leaky", "repository": {"url": url}})),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("credentials_secret"), "{detail}");
        assert!(!detail.contains("ghp_leaky0123"), "{detail}");
    }
    let (status, project) = call(
        &app.router,
        Method::POST,
        &format!("/orgs/{}/projects", a.org),
        Some(&admin),
        Some(json!({
            "slug": "envy",
            "name": "Envy",
            "agent": {"env": {"API_HOST": "api.internal", "TEAM_PAT": "pat-not-a-secret-yet"}},
            // An `@` in the path and scp-like syntax are not user information.
            "repository": {"url": "https://git.example.com/acme/@scoped/repo.git"},
        })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{project}");
    assert_eq!(project["agent"]["env"]["TEAM_PAT"], "pat-not-a-secret-yet");
    let project_id = project["id"].as_str().expect("id").to_owned();
    for url in [
        "https://user:token@git.example.com/acme/repo.git",
        " http://u:p@host/x",
    ] {
        let (status, problem) = call(
            &app.router,
            Method::PATCH,
            &format!("/projects/{project_id}"),
            Some(&admin),
            Some(json!({"repository": {"url": url}})),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    }
    let (status, _) = call(
        &app.router,
        Method::PATCH,
        &format!("/projects/{project_id}"),
        Some(&admin),
        Some(json!({
            "agent": {"env": {"API_HOST": "api.internal", "TEAM_PAT": "pat-rotated-value"}},
            "repository": {"url": "git@git.example.com:acme/repo.git"},
        })),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // Members and viewers see the names, not the values; managers see both.
    for (caller, values_shown) in [
        (Caller::Viewer, false),
        (Caller::Member, false),
        (Caller::Service(Role::Member), false),
        (Caller::Admin, true),
        (Caller::Owner, true),
    ] {
        let token = token_for(&app, caller, a.org, b.org).await.expect("token");
        let (status, one) = call(
            &app.router,
            Method::GET,
            &format!("/projects/{project_id}"),
            Some(&token),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{caller:?}");
        let (status, listed) = call(
            &app.router,
            Method::GET,
            &format!("/orgs/{}/projects", a.org),
            Some(&token),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{caller:?}");
        let listed = listed["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|item| item["id"] == project_id.as_str())
            .expect("listed")
            .clone();
        for view in [one, listed] {
            let env = &view["agent"]["env"];
            let expected = if values_shown {
                json!({"API_HOST": "api.internal", "TEAM_PAT": "pat-rotated-value"})
            } else {
                json!({"API_HOST": "********", "TEAM_PAT": "********"})
            };
            assert_eq!(env, &expected, "{caller:?}");
        }
    }

    // The permanent audit log names the variables, never their values.
    let audit: Vec<Value> =
        sqlx::query_scalar("select diff from audit_log where resource_id = $1 order by id")
            .bind(&project_id)
            .fetch_all(&app.db.pool)
            .await
            .expect("audit");
    assert_eq!(audit.len(), 2, "{audit:?}");
    let text = serde_json::to_string(&audit).expect("json");
    assert!(!text.contains("pat-not-a-secret-yet"), "{text}");
    assert!(!text.contains("pat-rotated-value"), "{text}");
    assert!(!text.contains("api.internal"), "{text}");
    assert!(text.contains("TEAM_PAT"), "{text}");
    assert_eq!(
        audit[1]["agent.env_values_changed"],
        json!(["TEAM_PAT"]),
        "{}",
        audit[1]
    );
}

#[tokio::test]
async fn a_project_says_what_becomes_of_a_run_whose_workspace_is_lost() {
    let app = app(json!({})).await;
    let a = org_fixture(&app, "a-").await;
    let b = org_fixture(&app, "b-").await;
    let token = token_for(&app, Caller::Owner, a.org, b.org)
        .await
        .expect("owner");
    let path = format!("/projects/{}", a.project);
    let (status, project) = call(&app.router, Method::GET, &path, Some(&token), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        project["agent"]["on_lost_workspace"], "retry",
        "the default"
    );
    let (status, project) = call(
        &app.router,
        Method::PATCH,
        &path,
        Some(&token),
        Some(json!({"agent": {"on_lost_workspace": "fail"}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{project}");
    assert_eq!(project["agent"]["on_lost_workspace"], "fail");
    let (_, project) = call(&app.router, Method::GET, &path, Some(&token), None).await;
    assert_eq!(project["agent"]["on_lost_workspace"], "fail", "stored");
    // Anything else is a client mistake, named.
    let (status, problem) = call(
        &app.router,
        Method::PATCH,
        &path,
        Some(&token),
        Some(json!({"agent": {"on_lost_workspace": "sometimes"}})),
    )
    .await;
    assert!(status.is_client_error(), "{status}: {problem}");
    assert!(
        problem.to_string().contains("on_lost_workspace")
            || problem.to_string().contains("sometimes"),
        "{problem}"
    );
}
