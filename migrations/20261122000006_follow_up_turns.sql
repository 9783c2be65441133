-- Follow-up turns. A run that succeeded may keep its workspace container for a while (the
-- worker's workspace_idle_ttl): a message to that run then starts a new run, a follow-up turn,
-- on the same container and conversation, pinned to the worker that holds it.
alter table runs
    -- The run this one continues (a follow-up turn), if any.
    add column parent_run_id uuid,
    -- The workspace container the run uses or used (a follow-up turn inherits its parent's).
    add column workspace_container text,
    -- The worker holding that container; a follow-up turn can only run there.
    add column workspace_worker uuid references workers (id) on delete set null,
    -- Set while the finished run's workspace is kept for a follow-up; cleared when a follow-up
    -- claims it or the worker removes it.
    add column workspace_kept_until timestamptz,
    add foreign key (org_id, parent_run_id) references runs (org_id, id) on delete set null (parent_run_id);

create index runs_kept_workspaces on runs (workspace_worker, workspace_kept_until)
    where workspace_kept_until is not null;

-- A message to a finished run becomes the prompt of a follow-up turn.
alter table run_messages add column follow_up_run_id uuid;
