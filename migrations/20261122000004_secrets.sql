-- Secrets: values sealed with envelope encryption (cadenza-crypto). A row holds only the sealed
-- bytes; the key-encryption key lives outside the database. An org-wide secret has no project;
-- a project secret overrides the org secret of the same name for that project's runs.
create table secrets (
    id              uuid primary key,
    org_id          uuid not null references orgs (id) on delete cascade,
    project_id      uuid,
    name            text not null check (name ~ '^[A-Z_][A-Z0-9_]{0,63}$'),
    -- Bound into the ciphertext's associated data with org_id and id: an older version's
    -- ciphertext restored into the row does not decrypt.
    version         integer not null check (version >= 1),
    -- The id of the key-encryption key that wraps the data key; duplicates the id inside
    -- `sealed` so rotation and the start-up check can find rows by key.
    kek_id          text not null,
    sealed          bytea not null,
    created_at      timestamptz not null default now(),
    created_by      text,
    updated_at      timestamptz not null default now(),
    updated_by      text,
    last_used_at    timestamptz,
    foreign key (org_id, project_id) references projects (org_id, id) on delete cascade,
    unique (org_id, id)
);

create unique index secrets_org_name on secrets (org_id, name) where project_id is null;
create unique index secrets_project_name on secrets (project_id, name) where project_id is not null;
-- Rotation looks for rows not yet wrapped by the active key.
create index secrets_kek on secrets (kek_id);
