//! The route table. Every route is declared here, one line each, with the access it requires.
//! The router is built from this table only, and wraps each route in the access layer that
//! enforces its declared `Access` (`crate::auth`), so a handler that forgets its own check is
//! still denied, and the authorization matrix test can enumerate every route the API serves and
//! check each against every kind of caller.

pub mod admin;
pub mod audit_log;
pub mod auth;
pub mod events;
pub mod invitations;
pub mod me;
pub mod members;
pub mod orgs;
pub mod projects;
pub mod runs;
pub mod secrets;
pub mod tokens;
pub mod wire;

use axum::Router;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{MethodFilter, MethodRouter, on};
use cadenza_domain::Permission;

pub use crate::auth::Access;
use crate::state::AppState;

#[derive(Clone, Debug)]
pub struct RouteSpec {
    pub method: Method,
    /// The path under `/api/v1`, in axum syntax (`/runs/{run_id}`).
    pub path: &'static str,
    pub access: Access,
}

struct Route {
    spec: RouteSpec,
    handler: MethodRouter<AppState>,
}

#[derive(Default)]
struct Table(Vec<Route>);

impl Table {
    fn add<H, T>(mut self, method: Method, path: &'static str, access: Access, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone())
            .unwrap_or_else(|_| panic!("the route table uses an unroutable method {method}"));
        self.0.push(Route {
            spec: RouteSpec {
                method,
                path,
                access,
            },
            handler: on(filter, handler),
        });
        self
    }
}

#[rustfmt::skip]
fn table() -> Table {
    use Access::{Authenticated, Instance, Org, Public};
    use Method as M;
    use Permission as P;
    Table::default()
        .add(M::GET,    "/auth/login",                                Public,                 auth::login)
        .add(M::GET,    "/auth/callback",                             Public,                 auth::callback)
        .add(M::POST,   "/auth/logout",                               Authenticated,          auth::logout)
        .add(M::GET,    "/.well-known/jwks.json",                     Public,                 auth::jwks)
        .add(M::GET,    "/me",                                        Authenticated,          me::get)
        .add(M::GET,    "/orgs",                                      Authenticated,          orgs::list)
        .add(M::POST,   "/orgs",                                      Authenticated,          orgs::create)
        .add(M::GET,    "/orgs/{org_id}",                             Org(P::OrgRead),        orgs::get)
        .add(M::PATCH,  "/orgs/{org_id}",                             Org(P::OrgManage),      orgs::update)
        .add(M::DELETE, "/orgs/{org_id}",                             Org(P::OrgDelete),      orgs::delete)
        .add(M::GET,    "/orgs/{org_id}/members",                     Org(P::OrgRead),        members::list)
        .add(M::PATCH,  "/orgs/{org_id}/members/{user_id}",           Org(P::MembersManage),  members::update)
        .add(M::DELETE, "/orgs/{org_id}/members/{user_id}",           Org(P::MembersManage),  members::remove)
        .add(M::GET,    "/orgs/{org_id}/invitations",                 Org(P::MembersManage),  invitations::list)
        .add(M::POST,   "/orgs/{org_id}/invitations",                 Org(P::MembersManage),  invitations::create)
        .add(M::DELETE, "/orgs/{org_id}/invitations/{invitation_id}", Org(P::MembersManage),  invitations::revoke)
        .add(M::POST,   "/invitations/accept",                        Authenticated,          invitations::accept)
        .add(M::GET,    "/orgs/{org_id}/domains",                     Org(P::MembersManage),  invitations::list_domains)
        .add(M::PUT,    "/orgs/{org_id}/domains/{domain}",            Org(P::MembersManage),  invitations::put_domain)
        .add(M::DELETE, "/orgs/{org_id}/domains/{domain}",            Org(P::MembersManage),  invitations::delete_domain)
        .add(M::POST,   "/orgs/{org_id}/domains/{domain}/verify",     Org(P::MembersManage),  invitations::verify_domain)
        .add(M::GET,    "/orgs/{org_id}/projects",                    Org(P::ProjectsRead),   projects::list_in_org)
        .add(M::POST,   "/orgs/{org_id}/projects",                    Org(P::ProjectsManage), projects::create)
        .add(M::GET,    "/orgs/{org_id}/tokens",                      Org(P::TokensManage),   tokens::list_service)
        .add(M::POST,   "/orgs/{org_id}/tokens",                      Org(P::TokensManage),   tokens::create_service)
        .add(M::DELETE, "/orgs/{org_id}/tokens/{token_id}",           Org(P::TokensManage),   tokens::revoke_service)
        .add(M::GET,    "/orgs/{org_id}/audit",                       Org(P::AuditRead),      audit_log::list)
        .add(M::GET,    "/orgs/{org_id}/secrets",                     Org(P::SecretsManage),  secrets::list_org)
        .add(M::GET,    "/orgs/{org_id}/secrets/{name}",              Org(P::SecretsManage),  secrets::get_org)
        .add(M::PUT,    "/orgs/{org_id}/secrets/{name}",              Org(P::SecretsManage),  secrets::put_org)
        .add(M::DELETE, "/orgs/{org_id}/secrets/{name}",              Org(P::SecretsManage),  secrets::delete_org)
        .add(M::GET,    "/projects/{project_id}/secrets",             Org(P::SecretsManage),  secrets::list_project)
        .add(M::GET,    "/projects/{project_id}/secrets/{name}",      Org(P::SecretsManage),  secrets::get_project)
        .add(M::PUT,    "/projects/{project_id}/secrets/{name}",      Org(P::SecretsManage),  secrets::put_project)
        .add(M::DELETE, "/projects/{project_id}/secrets/{name}",      Org(P::SecretsManage),  secrets::delete_project)
        .add(M::GET,    "/projects",                                  Org(P::ProjectsRead),   projects::list)
        .add(M::GET,    "/projects/{project_id}",                     Org(P::ProjectsRead),   projects::get)
        .add(M::PATCH,  "/projects/{project_id}",                     Org(P::ProjectsManage), projects::update)
        .add(M::DELETE, "/projects/{project_id}",                     Org(P::ProjectsManage), projects::delete)
        .add(M::POST,   "/projects/{project_id}/runs",                Org(P::RunsCreate),     runs::create)
        .add(M::GET,    "/runs",                                      Org(P::RunsRead),       runs::list)
        .add(M::POST,   "/runs/{run_id}/cancel",                      Org(P::RunsCancel),     runs::cancel)
        .add(M::POST,   "/runs/{run_id}/messages",                    Org(P::RunsCreate),     runs::message)
        .add(M::GET,    "/runs/{run_id}",                             Org(P::RunsRead),       runs::get)
        .add(M::GET,    "/runs/{run_id}/events",                      Org(P::RunsRead),       events::list)
        .add(M::GET,    "/runs/{run_id}/events/stream",               Org(P::RunsRead),       events::stream)
        .add(M::GET,    "/runs/{run_id}/diff",                        Org(P::RunsRead),       runs::diff)
        .add(M::GET,    "/tokens",                                    Authenticated,          tokens::list_personal)
        .add(M::POST,   "/tokens",                                    Authenticated,          tokens::create_personal)
        .add(M::DELETE, "/tokens/{token_id}",                         Authenticated,          tokens::revoke_personal)
        .add(M::GET,    "/admin/orgs",                                Instance,               admin::orgs)
        .add(M::GET,    "/admin/health",                              Instance,               admin::health)
        .add(M::GET,    "/admin/users",                               Instance,               admin::users)
        .add(M::GET,    "/admin/secrets/keys",                        Instance,               admin::secret_keys)
        .add(M::POST,   "/admin/secrets/rewrap",                      Instance,               admin::rewrap_secrets)
        .add(M::POST,   "/admin/orgs/{org_id}/domains/{domain}/approve", Instance,            admin::approve_domain)
        .add(M::GET,    "/admin/orgs/{org_id}/agent-images",          Instance,               admin::agent_images)
        .add(M::PUT,    "/admin/orgs/{org_id}/agent-images",          Instance,               admin::put_agent_images)
}

/// `handler` behind the access layer that enforces `access` (see `crate::auth`).
pub fn guarded(
    state: &AppState,
    access: Access,
    handler: MethodRouter<AppState>,
) -> MethodRouter<AppState> {
    handler.route_layer(axum::middleware::from_fn_with_state(
        (state.clone(), access),
        crate::auth::enforce_access,
    ))
}

/// The routes under `/api/v1`, each behind its access layer.
pub fn api_routes(state: AppState) -> Router<AppState> {
    table().0.into_iter().fold(Router::new(), |router, route| {
        router.route(
            route.spec.path,
            guarded(&state, route.spec.access, route.handler),
        )
    })
}

/// Every route the API serves under `/api/v1`, with its declared access.
pub fn route_specs() -> Vec<RouteSpec> {
    table().0.into_iter().map(|route| route.spec).collect()
}
