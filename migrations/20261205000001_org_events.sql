-- The org event journal: what changed in an org (runs created and changing state, members and
-- projects added, changed and removed, the org renamed), one entry per change with a dense,
-- per-org sequence number, written by triggers in the same transaction as the change itself, so
-- no code path can change an org without leaving its entry (docs/decisions/0011-org-event-journal.md).
--
-- Each entry takes the next number from its org's head row, whose lock is held until the
-- transaction ends: entries of one org commit in the order of their numbers, so a reader that
-- has seen N has seen everything before N. A NOTIFY on `cadenza_org_events` (delivered at
-- commit) carries the entry to live readers; Postgres stays the source of truth.

create table org_event_heads (
    org_id      uuid primary key references orgs (id) on delete cascade,
    last_seq    bigint not null check (last_seq >= 0)
);

create table org_events (
    org_id          uuid not null references orgs (id) on delete cascade,
    seq             bigint not null check (seq >= 1),
    kind            text not null,
    subject_kind    text not null,
    subject_id      uuid not null,
    project_id      uuid,
    data            jsonb not null,
    -- The request that caused the change, when one did and said so (`cadenza.correlation_id`).
    correlation_id  uuid,
    occurred_at     timestamptz not null default now(),
    primary key (org_id, seq)
);

create index org_events_occurred on org_events (occurred_at);

create function cadenza_org_event(
    p_org uuid, p_kind text, p_subject_kind text, p_subject uuid, p_project uuid, p_data jsonb,
    p_correlation uuid default null
) returns void language plpgsql as $$
declare
    v_seq bigint;
    v_correlation uuid;
    v_entry jsonb;
begin
    -- An org being deleted leaves no entries: its journal goes with it.
    if not exists (select 1 from orgs where id = p_org) then
        return;
    end if;
    insert into org_event_heads (org_id, last_seq) values (p_org, 1)
        on conflict (org_id) do update set last_seq = org_event_heads.last_seq + 1
        returning last_seq into v_seq;
    v_correlation := p_correlation;
    if v_correlation is null then
        begin
            v_correlation := nullif(current_setting('cadenza.correlation_id', true), '')::uuid;
        exception when invalid_text_representation then
            v_correlation := null;
        end;
    end if;
    insert into org_events (org_id, seq, kind, subject_kind, subject_id, project_id, data,
                            correlation_id)
        values (p_org, v_seq, p_kind, p_subject_kind, p_subject, p_project, p_data, v_correlation);
    v_entry := jsonb_build_object(
        'org_id', p_org, 'seq', v_seq, 'kind', p_kind, 'subject_kind', p_subject_kind,
        'subject_id', p_subject, 'project_id', p_project, 'data', p_data,
        'correlation_id', v_correlation, 'occurred_at', now());
    -- NOTIFY payloads stop short of 8000 bytes; a larger entry is announced by number only and
    -- read from the table.
    if octet_length(v_entry::text) > 7000 then
        v_entry := jsonb_build_object('org_id', p_org, 'seq', v_seq);
    end if;
    perform pg_notify('cadenza_org_events', v_entry::text);
end
$$;

create function cadenza_runs_org_event() returns trigger language plpgsql as $$
begin
    if tg_op = 'INSERT' then
        perform cadenza_org_event(new.org_id, 'run.created', 'run', new.id, new.project_id,
            jsonb_build_object('run_id', new.id, 'state', new.state, 'attempt', new.attempt,
                               'parent_run_id', new.parent_run_id));
    else
        perform cadenza_org_event(new.org_id, 'run.state_changed', 'run', new.id, new.project_id,
            jsonb_build_object('run_id', new.id, 'from', old.state, 'to', new.state,
                               'attempt', new.attempt,
                               'terminal', new.state in ('succeeded', 'failed', 'cancelled'),
                               'terminal_code', new.terminal_code,
                               'terminal_reason', left(new.terminal_reason, 500)),
            -- A cancellation answers the cancel request that asked for it.
            case when new.state = 'cancelled' then new.cancel_correlation_id end);
    end if;
    return null;
end
$$;

create trigger runs_org_event_insert after insert on runs
    for each row execute function cadenza_runs_org_event();
create trigger runs_org_event_state after update of state on runs
    for each row when (old.state is distinct from new.state)
    execute function cadenza_runs_org_event();

create function cadenza_memberships_org_event() returns trigger language plpgsql as $$
begin
    if tg_op = 'INSERT' then
        perform cadenza_org_event(new.org_id, 'member.added', 'user', new.user_id, null,
            jsonb_build_object('user_id', new.user_id, 'role', new.role));
    elsif tg_op = 'UPDATE' then
        perform cadenza_org_event(new.org_id, 'member.role_changed', 'user', new.user_id, null,
            jsonb_build_object('user_id', new.user_id, 'from', old.role, 'to', new.role));
    else
        perform cadenza_org_event(old.org_id, 'member.removed', 'user', old.user_id, null,
            jsonb_build_object('user_id', old.user_id, 'role', old.role));
    end if;
    return null;
end
$$;

create trigger memberships_org_event_insert after insert or delete on memberships
    for each row execute function cadenza_memberships_org_event();
create trigger memberships_org_event_role after update of role on memberships
    for each row when (old.role is distinct from new.role)
    execute function cadenza_memberships_org_event();

create function cadenza_projects_org_event() returns trigger language plpgsql as $$
begin
    if tg_op = 'INSERT' then
        perform cadenza_org_event(new.org_id, 'project.created', 'project', new.id, new.id,
            jsonb_build_object('project_id', new.id, 'slug', new.slug, 'name', new.name));
    elsif tg_op = 'UPDATE' then
        perform cadenza_org_event(new.org_id, 'project.updated', 'project', new.id, new.id,
            jsonb_build_object('project_id', new.id, 'slug', new.slug, 'name', new.name));
    else
        perform cadenza_org_event(old.org_id, 'project.deleted', 'project', old.id, old.id,
            jsonb_build_object('project_id', old.id, 'slug', old.slug, 'name', old.name));
    end if;
    return null;
end
$$;

create trigger projects_org_event after insert or delete on projects
    for each row execute function cadenza_projects_org_event();
create trigger projects_org_event_update after update on projects
    for each row when (old.* is distinct from new.*)
    execute function cadenza_projects_org_event();

create function cadenza_orgs_org_event() returns trigger language plpgsql as $$
begin
    perform cadenza_org_event(new.id, 'org.updated', 'org', new.id, null,
        jsonb_build_object('slug', new.slug, 'name', new.name));
    return null;
end
$$;

create trigger orgs_org_event after update of slug, name on orgs
    for each row when (old.slug is distinct from new.slug or old.name is distinct from new.name)
    execute function cadenza_orgs_org_event();

-- Orgs that already have history start their journal at 0.
insert into org_event_heads (org_id, last_seq) select id, 0 from orgs;
