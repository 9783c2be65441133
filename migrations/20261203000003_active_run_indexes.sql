-- The scheduler counts each worker's active runs for every lease decision, and looks for runs due
-- a retry every second. Without these, both scan `runs`, which only grows.
create index runs_active_by_holder on runs (lease_holder)
    where state in ('scheduled', 'provisioning', 'running');
create index runs_retrying on runs (updated_at) where state = 'retrying';
