-- Cancellation requests: recorded on the run (the worker holding it acts on it at its next
-- heartbeat), with the correlation id of the request so the events it causes can name it.
alter table runs
    add column cancel_requested_at timestamptz,
    add column cancel_correlation_id uuid;

create index runs_cancel_requested on runs (lease_holder)
    where cancel_requested_at is not null and state in ('scheduled', 'provisioning', 'running');
