-- Sealed-secret format 2 binds a secret's project and name into its ciphertext, beside its org,
-- id and version. The column mirrors the format byte inside `sealed` (like `kek_id`), so the
-- re-wrap job finds the rows still in format 1. Those were all written before this migration;
-- they keep opening, and the re-wrap (`cadenza-api secrets rewrap` or
-- `POST /api/v1/admin/secrets/rewrap`) upgrades them without decrypting a value.
alter table secrets add column format smallint not null default 1 check (format >= 1);
-- Every writer names the format it sealed in.
alter table secrets alter column format drop default;
