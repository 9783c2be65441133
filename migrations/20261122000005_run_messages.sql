-- User messages sent to a run's conversation while it runs. The worker holding the run delivers
-- them (at its heartbeat) and records when; the correlation id appears on the journal entries
-- the message causes.
create table run_messages (
    id              uuid primary key,
    run_id          uuid not null,
    org_id          uuid not null,
    correlation_id  uuid not null unique,
    text            text not null check (length(text) >= 1),
    idempotency_key text,
    created_at      timestamptz not null default now(),
    created_by      text,
    delivered_at    timestamptz,
    foreign key (org_id, run_id) references runs (org_id, id) on delete cascade
);

create unique index run_messages_idempotency on run_messages (run_id, idempotency_key)
    where idempotency_key is not null;
create index run_messages_pending on run_messages (run_id, created_at) where delivered_at is null;
