-- Agent images an instance administrator allows for one org, beyond the instance's own allowlist
-- (`CADENZA_AGENT_IMAGES`). Each rule is a registry (`registry.example.com/`), a repository prefix
-- (`ghcr.io/acme/`) or one repository (`ghcr.io/acme/agent`), stored normalised.
create table org_agent_image_rules (
    org_id     uuid        not null references orgs (id) on delete cascade,
    rule       text        not null check (length(rule) between 1 and 300),
    created_by uuid        references users (id) on delete set null,
    created_at timestamptz not null default now(),
    primary key (org_id, rule)
);
