//! The route table. Every route is declared here, one line each, with the access it requires.
//! The router is built from this table only, and wraps each route in the access layer that
//! enforces its declared `Access` (`crate::auth`), so a handler that forgets its own check is
//! still denied, and the authorization matrix test can enumerate every route the API serves and
//! check each against every kind of caller.

pub mod admin;
pub mod audit_log;
pub mod auth;
pub mod capabilities;
pub mod events;
pub mod export;
pub mod invitations;
pub mod me;
pub mod members;
pub mod org_events;
pub mod orgs;
pub mod projects;
pub mod runs;
pub mod secrets;
pub mod snapshot;
pub mod tokens;
pub mod wire;

use axum::Router;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{MethodFilter, MethodRouter, on};
use cadenza_domain::Permission;

pub use crate::auth::Access;
use crate::openapi::{Doc, accepted, created, event_stream, no_content, ok, page, redirect, text};
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
    doc: Doc,
    handler: MethodRouter<AppState>,
}

#[derive(Default)]
struct Table(Vec<Route>);

impl Table {
    fn add<H, T>(
        mut self,
        method: Method,
        path: &'static str,
        access: Access,
        handler: H,
        doc: Doc,
    ) -> Self
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
            doc,
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
    use crate::openapi::Untyped;
    use secrets::{SecretList, SecretView};
    use wire::{EventView, MemberView, OrgView, ProjectView, Receipt, RunView, TokenView, UserView};
    Table::default()
        .add(M::GET,    "/openapi.json",                              Public,                 crate::openapi::serve,
             text("This document", "application/json"))
        .add(M::GET,    "/auth/login",                                Public,                 auth::login,
             redirect("Start the OIDC login (redirects to the identity provider; 404 when no provider is configured)").query::<auth::LoginQuery>().errors(&[404]))
        .add(M::GET,    "/auth/callback",                             Public,                 auth::callback,
             redirect("Finish the OIDC login (sets the session cookie)").query::<auth::CallbackQuery>().errors(&[401, 403]))
        .add(M::POST,   "/auth/logout",                               Authenticated,          auth::logout,
             no_content("End the session"))
        .add(M::GET,    "/.well-known/jwks.json",                     Public,                 auth::jwks,
             ok::<Untyped>("The keys that sign this instance's session tokens (JWKS)"))
        .add(M::GET,    "/capabilities",                              Authenticated,          capabilities::get,
             ok::<capabilities::Capabilities>("What this instance offers the caller: versions, streams, actions, harnesses, limits, features"))
        .add(M::GET,    "/me",                                        Authenticated,          me::get,
             ok::<wire::MeView>("Who the caller is, its orgs and roles, and what its token may do"))
        .add(M::GET,    "/orgs",                                      Authenticated,          orgs::list,
             page::<OrgView>("List the caller's orgs").query::<orgs::ListQuery>())
        .add(M::POST,   "/orgs",                                      Authenticated,          orgs::create,
             created::<OrgView>("Create an org (the caller becomes its owner)").body::<orgs::CreateOrg>().errors(&[409]))
        .add(M::GET,    "/orgs/{org_id}",                             Org(P::OrgRead),        orgs::get,
             ok::<OrgView>("Get an org"))
        .add(M::PATCH,  "/orgs/{org_id}",                             Org(P::OrgManage),      orgs::update,
             ok::<OrgView>("Rename an org").body::<orgs::UpdateOrg>())
        .add(M::DELETE, "/orgs/{org_id}",                             Org(P::OrgDelete),      orgs::delete,
             no_content("Delete an org with everything in it"))
        .add(M::GET,    "/orgs/{org_id}/members",                     Org(P::OrgRead),        members::list,
             page::<MemberView>("List an org's members"))
        .add(M::PATCH,  "/orgs/{org_id}/members/{user_id}",           Org(P::MembersManage),  members::update,
             ok::<wire::RoleGranted>("Change a member's role").body::<members::UpdateMember>().errors(&[409]))
        .add(M::DELETE, "/orgs/{org_id}/members/{user_id}",           Org(P::MembersManage),  members::remove,
             no_content("Remove a member").errors(&[409]))
        .add(M::GET,    "/orgs/{org_id}/invitations",                 Org(P::MembersManage),  invitations::list,
             page::<wire::InvitationView>("List an org's invitations"))
        .add(M::POST,   "/orgs/{org_id}/invitations",                 Org(P::MembersManage),  invitations::create,
             created::<wire::InvitationView>("Invite someone by e-mail (the answer holds the one-time token)").body::<invitations::CreateInvitation>().errors(&[409]))
        .add(M::DELETE, "/orgs/{org_id}/invitations/{invitation_id}", Org(P::MembersManage),  invitations::revoke,
             no_content("Revoke an invitation"))
        .add(M::POST,   "/invitations/accept",                        Authenticated,          invitations::accept,
             ok::<wire::RoleGranted>("Accept an invitation with its token").body::<invitations::AcceptInvitation>().errors(&[403, 404, 409]))
        .add(M::GET,    "/orgs/{org_id}/domains",                     Org(P::MembersManage),  invitations::list_domains,
             page::<wire::DomainView>("List the org's e-mail domains that join it automatically"))
        .add(M::PUT,    "/orgs/{org_id}/domains/{domain}",            Org(P::MembersManage),  invitations::put_domain,
             ok::<wire::DomainView>("Claim an e-mail domain for the org (pending until verified)").body::<invitations::PutDomain>().errors(&[409]))
        .add(M::DELETE, "/orgs/{org_id}/domains/{domain}",            Org(P::MembersManage),  invitations::delete_domain,
             no_content("Drop an e-mail domain"))
        .add(M::POST,   "/orgs/{org_id}/domains/{domain}/verify",     Org(P::MembersManage),  invitations::verify_domain,
             ok::<wire::DomainView>("Verify a domain through its DNS TXT record").errors(&[422]))
        .add(M::GET,    "/orgs/{org_id}/projects",                    Org(P::ProjectsRead),   projects::list_in_org,
             page::<ProjectView>("List an org's projects").query::<projects::ListQuery>())
        .add(M::POST,   "/orgs/{org_id}/projects",                    Org(P::ProjectsManage), projects::create,
             created::<ProjectView>("Create a project").body::<projects::CreateProject>().errors(&[409]))
        .add(M::GET,    "/orgs/{org_id}/tokens",                      Org(P::TokensManage),   tokens::list_service,
             page::<TokenView>("List an org's service tokens"))
        .add(M::POST,   "/orgs/{org_id}/tokens",                      Org(P::TokensManage),   tokens::create_service,
             created::<TokenView>("Create a service token (the secret is shown once)").body::<tokens::CreateToken>())
        .add(M::DELETE, "/orgs/{org_id}/tokens/{token_id}",           Org(P::TokensManage),   tokens::revoke_service,
             no_content("Revoke a service token"))
        .add(M::GET,    "/orgs/{org_id}/snapshot",                    Org(P::OrgRead),        snapshot::get,
             ok::<snapshot::SnapshotView>("The org's dashboard in one consistent read, with the event cursor to follow from"))
        .add(M::GET,    "/orgs/{org_id}/events",                      Org(P::OrgRead),        org_events::list,
             page::<wire::OrgEventView>("Read the org's events after a cursor, oldest first").query::<org_events::ListQuery>().errors(&[410]))
        .add(M::GET,    "/orgs/{org_id}/events/stream",               Org(P::OrgRead),        org_events::stream,
             event_stream::<wire::OrgEventView>("Follow the org's events live (resumable with Last-Event-ID)").query::<org_events::StreamQuery>().errors(&[410]))
        .add(M::GET,    "/orgs/{org_id}/audit",                       Org(P::AuditRead),      audit_log::list,
             page::<wire::AuditEntryView>("Read the org's audit log, newest first (`format=jsonl` exports JSON lines)").query::<audit_log::AuditQuery>())
        .add(M::GET,    "/orgs/{org_id}/secrets",                     Org(P::SecretsManage),  secrets::list_org,
             ok::<SecretList>("List the org's secrets (names and versions, never values)"))
        .add(M::GET,    "/orgs/{org_id}/secrets/{name}",              Org(P::SecretsManage),  secrets::get_org,
             ok::<SecretView>("Get an org secret's metadata"))
        .add(M::PUT,    "/orgs/{org_id}/secrets/{name}",              Org(P::SecretsManage),  secrets::put_org,
             ok::<SecretView>("Set an org secret (201 when new)").body::<secrets::SecretValue>().also(&[201]))
        .add(M::DELETE, "/orgs/{org_id}/secrets/{name}",              Org(P::SecretsManage),  secrets::delete_org,
             no_content("Delete an org secret"))
        .add(M::GET,    "/projects/{project_id}/secrets",             Org(P::SecretsManage),  secrets::list_project,
             ok::<SecretList>("List the project's secrets (names and versions, never values)"))
        .add(M::GET,    "/projects/{project_id}/secrets/{name}",      Org(P::SecretsManage),  secrets::get_project,
             ok::<SecretView>("Get a project secret's metadata"))
        .add(M::PUT,    "/projects/{project_id}/secrets/{name}",      Org(P::SecretsManage),  secrets::put_project,
             ok::<SecretView>("Set a project secret (201 when new)").body::<secrets::SecretValue>().also(&[201]))
        .add(M::DELETE, "/projects/{project_id}/secrets/{name}",      Org(P::SecretsManage),  secrets::delete_project,
             no_content("Delete a project secret"))
        .add(M::GET,    "/projects",                                  Org(P::ProjectsRead),   projects::list,
             page::<ProjectView>("List the projects the caller can see").query::<projects::ListQuery>())
        .add(M::GET,    "/projects/{project_id}",                     Org(P::ProjectsRead),   projects::get,
             ok::<ProjectView>("Get a project (`agent.env` values hidden without projects.manage)"))
        .add(M::PATCH,  "/projects/{project_id}",                     Org(P::ProjectsManage), projects::update,
             ok::<ProjectView>("Change a project's settings").body::<projects::UpdateProject>().errors(&[409]))
        .add(M::DELETE, "/projects/{project_id}",                     Org(P::ProjectsManage), projects::delete,
             no_content("Delete a project with its runs (running workspaces are stopped)"))
        .add(M::POST,   "/projects/{project_id}/runs",                Org(P::RunsCreate),     runs::create,
             created::<RunView>("Start a run (200 with the first run on a repeated idempotency key)").body::<runs::CreateRun>().also(&[200]).errors(&[409, 413]).keyed_by_itself())
        .add(M::GET,    "/runs",                                      Org(P::RunsRead),       runs::list,
             page::<RunView>("List runs, newest first").query::<runs::ListQuery>())
        .add(M::POST,   "/runs/{run_id}/cancel",                      Org(P::RunsCancel),     runs::cancel,
             accepted::<Receipt>("Cancel a run (200 when it ended at once)").also(&[200]).errors(&[409]))
        .add(M::POST,   "/runs/{run_id}/messages",                    Org(P::RunsCreate),     runs::message,
             accepted::<Receipt>("Send the agent a message (a finished run continues as a follow-up run, 201)").body::<runs::SendMessage>().also(&[200, 201]).errors(&[409, 413]).keyed_by_itself())
        .add(M::POST,   "/runs/{run_id}/retry",                       Org(P::RunsCreate),     runs::retry,
             created::<Receipt>("Run an ended run's prompt again as a new run (200 with the first retry on a repeated Idempotency-Key)").also(&[200]).errors(&[409]).keyed_by_itself())
        .add(M::GET,    "/runs/{run_id}",                             Org(P::RunsRead),       runs::get,
             ok::<RunView>("Get a run"))
        .add(M::GET,    "/runs/{run_id}/events",                      Org(P::RunsRead),       events::list,
             page::<EventView>("Read a run's journal after a cursor").query::<events::ListQuery>())
        .add(M::GET,    "/runs/{run_id}/events/stream",               Org(P::RunsRead),       events::stream,
             event_stream::<EventView>("Follow a run's journal live (resumable with Last-Event-ID)").query::<events::StreamQuery>())
        .add(M::GET,    "/runs/{run_id}/diff",                        Org(P::RunsRead),       runs::diff,
             text("The patch the run produced (404 until it has one)", "text/x-patch"))
        .add(M::GET,    "/runs/{run_id}/files",                       Org(P::RunsRead),       runs::files,
             ok::<wire::RunFilesView>("The files the run's patch changes, with line counts (404 until it has one)"))
        .add(M::GET,    "/runs/{run_id}/files/patch",                 Org(P::RunsRead),       runs::file_patch,
             text("One file's part of the run's patch", "text/x-patch").query::<runs::FileQuery>())
        .add(M::GET,    "/runs/{run_id}/export",                      Org(P::RunsRead),       export::export,
             text("The run as a .tar.gz: manifest.json, run.json, journal.jsonl (every entry, with the agent's own events) and patch.diff", "application/gzip").errors(&[413]))
        .add(M::GET,    "/tokens",                                    Authenticated,          tokens::list_personal,
             page::<TokenView>("List the caller's personal tokens"))
        .add(M::POST,   "/tokens",                                    Authenticated,          tokens::create_personal,
             created::<TokenView>("Create a personal token (the secret is shown once)").body::<tokens::CreateToken>().errors(&[403]))
        .add(M::DELETE, "/tokens/{token_id}",                         Authenticated,          tokens::revoke_personal,
             no_content("Revoke a personal token").errors(&[404]))
        .add(M::GET,    "/admin/orgs",                                Instance,               admin::orgs,
             page::<OrgView>("List every org").query::<admin::ListQuery>())
        .add(M::GET,    "/admin/health",                              Instance,               admin::health,
             ok::<Untyped>("The instance's dependencies as the API sees them"))
        .add(M::GET,    "/admin/users",                               Instance,               admin::users,
             page::<UserView>("List every user").query::<admin::ListQuery>())
        .add(M::GET,    "/admin/secrets/keys",                        Instance,               admin::secret_keys,
             ok::<Untyped>("Which key-encryption keys the stored secrets use"))
        .add(M::POST,   "/admin/secrets/rewrap",                      Instance,               admin::rewrap_secrets,
             ok::<Untyped>("Re-wrap stored secrets under the active key").query::<admin::RewrapQuery>())
        .add(M::POST,   "/admin/orgs/{org_id}/domains/{domain}/approve", Instance,            admin::approve_domain,
             ok::<wire::DomainView>("Approve an org's e-mail domain without DNS"))
        .add(M::GET,    "/admin/orgs/{org_id}/agent-images",          Instance,               admin::agent_images,
             ok::<Untyped>("The agent images allowed for an org beyond the instance's"))
        .add(M::PUT,    "/admin/orgs/{org_id}/agent-images",          Instance,               admin::put_agent_images,
             ok::<Untyped>("Set the agent images allowed for an org").body::<admin::AgentImagesBody>())
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
        // A mutating route takes an `Idempotency-Key` (checked after access, so a refused caller
        // never touches the store), unless it gives the key a meaning of its own.
        let handler = if route.spec.method != Method::GET && !route.doc.keys_itself() {
            route.handler.layer(axum::middleware::from_fn_with_state(
                state.clone(),
                crate::idempotency::idempotency,
            ))
        } else {
            route.handler
        };
        router.route(route.spec.path, guarded(&state, route.spec.access, handler))
    })
}

/// Every route with its documentation, for the OpenAPI document.
pub fn documented() -> Vec<(RouteSpec, Doc)> {
    table()
        .0
        .into_iter()
        .map(|route| (route.spec, route.doc))
        .collect()
}

/// Every route the API serves under `/api/v1`, with its declared access.
pub fn route_specs() -> Vec<RouteSpec> {
    table().0.into_iter().map(|route| route.spec).collect()
}
