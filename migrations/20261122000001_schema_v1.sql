-- Schema v1: tenants, projects, runs, the run journal, workers, API tokens and the outbox.
-- Every tenant-owned row carries org_id, and child rows reference their parent together with
-- the org (composite foreign keys), so a row can never point across tenants.

create table orgs (
    id          uuid primary key,
    slug        text not null unique check (slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    name        text not null,
    created_at  timestamptz not null default now()
);

create table projects (
    id                  uuid primary key,
    org_id              uuid not null references orgs (id) on delete cascade,
    slug                text not null check (slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    name                text not null,
    agent_image         text not null check (agent_image <> ''),
    agent_cpus          double precision not null default 2 check (agent_cpus > 0),
    agent_memory_mb     bigint not null default 4096 check (agent_memory_mb >= 64),
    agent_pids_limit    bigint not null default 512 check (agent_pids_limit >= 16),
    agent_max_iterations bigint not null default 100 check (agent_max_iterations > 0),
    agent_llm_model     text,
    agent_llm_base_url  text,
    agent_env           jsonb not null default '{}'::jsonb,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    unique (org_id, slug),
    unique (org_id, id)
);

create table workers (
    id                  uuid primary key,
    name                text not null unique,
    capacity            integer not null check (capacity >= 0),
    started_at          timestamptz not null default now(),
    last_heartbeat_at   timestamptz not null default now(),
    stopped_at          timestamptz
);

create table runs (
    id                  uuid primary key,
    org_id              uuid not null,
    project_id          uuid not null,
    state               text not null check (state in
                          ('queued','scheduled','provisioning','running','retrying',
                           'succeeded','failed','cancelled')),
    attempt             integer not null default 1 check (attempt >= 1),
    prompt              text not null,
    idempotency_key     text,
    lease_holder        uuid references workers (id),
    lease_expires_at    timestamptz,
    terminal_code       text,
    terminal_reason     text,
    conversation_id     uuid,
    final_message       text,
    last_event_seq      bigint not null default 0,
    created_at          timestamptz not null default now(),
    scheduled_at        timestamptz,
    provisioning_at     timestamptz,
    running_at          timestamptz,
    finished_at         timestamptz,
    updated_at          timestamptz not null default now(),
    foreign key (org_id, project_id) references projects (org_id, id) on delete cascade,
    unique (org_id, id),
    -- An end state always says why.
    check ((state in ('succeeded','failed','cancelled')) = (terminal_code is not null and finished_at is not null))
);

create unique index runs_idempotency on runs (project_id, idempotency_key)
    where idempotency_key is not null;
create index runs_org_created on runs (org_id, id desc);
create index runs_project_created on runs (project_id, id desc);
-- The scheduler's work queue and the lease reaper read these.
create index runs_queued on runs (created_at) where state = 'queued';
create index runs_leased on runs (lease_expires_at) where state in ('scheduled','provisioning','running');

create table run_events (
    run_id          uuid not null,
    org_id          uuid not null,
    seq             bigint not null check (seq >= 1),
    kind            text not null,
    payload         jsonb not null,
    raw             jsonb,
    -- The agent-server's own identity of the event, so a replay after a reconnect is not
    -- journaled twice.
    source_event_id text,
    source_seq      bigint,
    occurred_at     timestamptz not null,
    created_at      timestamptz not null default now(),
    primary key (run_id, seq),
    foreign key (org_id, run_id) references runs (org_id, id) on delete cascade
);

create unique index run_events_source on run_events (run_id, source_event_id)
    where source_event_id is not null;

create table run_diffs (
    run_id          uuid primary key,
    org_id          uuid not null,
    base_commit     text,
    patch           text not null,
    created_at      timestamptz not null default now(),
    foreign key (org_id, run_id) references runs (org_id, id) on delete cascade
);

-- API tokens: only a SHA-256 of the secret is stored. org_id null means an instance-wide token.
create table api_tokens (
    id              uuid primary key,
    org_id          uuid references orgs (id) on delete cascade,
    name            text not null,
    token_hash      bytea not null unique,
    prefix          text not null,
    created_at      timestamptz not null default now(),
    expires_at      timestamptz,
    revoked_at      timestamptz,
    last_used_at    timestamptz
);

-- Transactional outbox: a state change and the message it causes commit together, then a relay
-- publishes the message to NATS (with the row id as the de-duplication id) and marks it sent.
create table outbox (
    id              bigint generated always as identity primary key,
    subject         text not null,
    payload         jsonb not null,
    created_at      timestamptz not null default now(),
    published_at    timestamptz
);

create index outbox_unpublished on outbox (id) where published_at is null;
