-- The services connect as a runtime role that owns nothing: members of the group role
-- `cadenza_runtime`, which may read and write the application's tables but only read and append to
-- the audit log. The role that runs these migrations owns the schema and is never given to a
-- service (docs/decisions/0006-runtime-and-migration-roles.md).

-- Roles belong to the whole server, so the role is usually made once by whoever set the server up
-- (`scripts/infra.sh`, or an operator). A migration role with CREATEROLE makes it here instead;
-- several databases migrating at once may race to create it, which `duplicate_object` absorbs.
do $$
begin
    if not exists (select from pg_roles where rolname = 'cadenza_runtime') then
        create role cadenza_runtime nologin;
    end if;
exception
    when duplicate_object then null;
    when insufficient_privilege then
        raise exception 'the role cadenza_runtime does not exist and % may not create it', current_user
            using hint = 'create it once per server as a superuser: create role cadenza_runtime nologin; see docs/OPERATIONS.md';
end
$$;

grant usage on schema public to cadenza_runtime;
grant select, insert, update, delete on all tables in schema public to cadenza_runtime;
grant usage, select on all sequences in schema public to cadenza_runtime;

-- Append-only for the runtime role: it may add entries and read them, nothing else. Not being the
-- owner, it cannot alter or drop the table, disable its triggers or grant itself more.
revoke all on audit_log from cadenza_runtime;
grant select, insert on audit_log to cadenza_runtime;

-- The migrator's own bookkeeping is none of the services' business.
do $$
begin
    if to_regclass('_sqlx_migrations') is not null then
        revoke all on _sqlx_migrations from cadenza_runtime;
    end if;
end
$$;

-- Tables and sequences later migrations create (as this same role) get the same grants. A later
-- append-only table must revoke `update` and `delete` from cadenza_runtime itself.
alter default privileges in schema public
    grant select, insert, update, delete on tables to cadenza_runtime;
alter default privileges in schema public
    grant usage, select on sequences to cadenza_runtime;
