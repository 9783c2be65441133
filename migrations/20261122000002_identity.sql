-- Identity and tenancy: users, memberships with roles, invitations, email-domain rules, richer
-- API tokens, project settings, and an append-only audit log.

create table users (
    id                  uuid primary key,
    email               text not null,
    name                text,
    is_instance_admin   boolean not null default false,
    oidc_issuer         text,
    oidc_subject        text,
    created_at          timestamptz not null default now(),
    last_login_at       timestamptz,
    unique (oidc_issuer, oidc_subject)
);
create unique index users_email on users (lower(email));

create table memberships (
    org_id      uuid not null references orgs (id) on delete cascade,
    user_id     uuid not null references users (id) on delete cascade,
    role        text not null check (role in ('viewer', 'member', 'admin', 'owner')),
    created_at  timestamptz not null default now(),
    primary key (org_id, user_id)
);
create index memberships_user on memberships (user_id);

create table invitations (
    id          uuid primary key,
    org_id      uuid not null references orgs (id) on delete cascade,
    email       text not null,
    role        text not null check (role in ('viewer', 'member', 'admin', 'owner')),
    token_hash  bytea not null unique,
    created_by  uuid references users (id) on delete set null,
    created_at  timestamptz not null default now(),
    expires_at  timestamptz not null,
    accepted_at timestamptz,
    accepted_by uuid references users (id) on delete set null,
    revoked_at  timestamptz
);
create index invitations_org on invitations (org_id, id desc);

-- A user whose verified email is in `domain` joins the org with `role` at first login.
create table org_domain_rules (
    org_id      uuid not null references orgs (id) on delete cascade,
    domain      text not null check (domain = lower(domain) and domain ~ '^[a-z0-9.-]+\.[a-z]{2,}$'),
    role        text not null check (role in ('viewer', 'member', 'admin')),
    created_at  timestamptz not null default now(),
    primary key (org_id, domain)
);

-- Tokens: `personal` (acts as its user, optionally narrowed by scopes) or `service` (belongs to
-- an org, acts with its role). The bootstrap token is a personal token of an instance admin.
alter table api_tokens
    add column kind text not null default 'personal' check (kind in ('personal', 'service')),
    add column user_id uuid references users (id) on delete cascade,
    add column role text check (role in ('viewer', 'member', 'admin', 'owner')),
    -- Permissions the token is narrowed to; null means everything its owner may do.
    add column scopes text[],
    add column created_by uuid references users (id) on delete set null;
-- Tokens from schema v1 had no owner: org-scoped ones become admin service tokens, instance-wide
-- ones (the old bootstrap token) are dropped; `make run` issues a new one.
update api_tokens set kind = 'service', role = 'admin' where org_id is not null;
delete from api_tokens where org_id is null;
alter table api_tokens add constraint api_tokens_owner check (
    (kind = 'personal' and user_id is not null and org_id is null and role is null)
    or (kind = 'service' and org_id is not null and role is not null and user_id is null)
);
create index api_tokens_user on api_tokens (user_id);
create index api_tokens_org on api_tokens (org_id);

alter table projects
    add column agent_llm_api_key_secret text,
    add column agent_secrets text[] not null default '{}',
    add column repo_url text,
    add column repo_branch text,
    add column repo_credentials_secret text;

alter table orgs add column updated_at timestamptz not null default now();

-- The audit log outlives what it describes: no foreign keys, so deleting an org or a user keeps
-- its history.
create table audit_log (
    id              bigint generated always as identity primary key,
    org_id          uuid,
    actor_type      text not null check (actor_type in ('user', 'token', 'anonymous', 'system')),
    actor_id        uuid,
    actor_label     text,
    action          text not null,
    resource_type   text not null,
    resource_id     text,
    diff            jsonb not null default '{}'::jsonb,
    request_id      text,
    ip              text,
    user_agent      text,
    created_at      timestamptz not null default now()
);
create index audit_log_org on audit_log (org_id, id desc);
create index audit_log_actor on audit_log (actor_id, id desc);

-- Append-only, whoever asks: the application's role loses UPDATE, DELETE and TRUNCATE, and a
-- trigger refuses them even for a role that still has them.
revoke update, delete, truncate on audit_log from public;
revoke update, delete, truncate on audit_log from current_user;

create function audit_log_is_append_only() returns trigger language plpgsql as $$
begin
    raise exception 'audit_log is append-only';
end;
$$;

create trigger audit_log_no_update before update or delete on audit_log
    for each statement execute function audit_log_is_append_only();
create trigger audit_log_no_truncate before truncate on audit_log
    for each statement execute function audit_log_is_append_only();
