-- Fencing: every lease (the scheduler's `scheduled`, a worker adopting a run after its holder
-- died) bumps the run's lease epoch. A worker's writes for a run carry the epoch it was given and
-- are refused once a newer one exists, so a stale worker can never write over the current one.
alter table runs add column lease_epoch bigint not null default 0;

-- A draining worker (SIGTERM) takes no new leases; its runs are handed to the next worker on the
-- same Docker Engine.
alter table workers add column draining_at timestamptz;

-- Outbox rows that keep failing are set aside (with the last error) instead of blocking the rows
-- behind them.
alter table outbox add column attempts integer not null default 0;
alter table outbox add column last_error text;

-- Workers sweep their Docker Engine for containers no run needs; a container is still needed
-- while a run names it as its workspace.
create index runs_workspace_container on runs (workspace_container)
    where workspace_container is not null;
