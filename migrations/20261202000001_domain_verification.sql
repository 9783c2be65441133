-- An email-domain rule joins users only once the org has proved control of the domain: a DNS TXT
-- record carrying the rule's token, or an instance administrator's approval. Until then the rule
-- is pending and joins nobody. Rules made before this migration were never proved, so they become
-- pending too, each with a fresh token.
alter table org_domain_rules
    add column verification_token  text,
    add column verified_at         timestamptz,
    add column verification_method text check (verification_method in ('dns', 'admin')),
    add column verified_by         uuid references users (id) on delete set null;

update org_domain_rules
    set verification_token = replace(gen_random_uuid()::text, '-', '')
        || replace(gen_random_uuid()::text, '-', '');

alter table org_domain_rules
    alter column verification_token set not null,
    add constraint org_domain_rules_verification_complete
        check ((verified_at is null) = (verification_method is null));

-- Login looks rules up by domain, and only verified ones count.
create index org_domain_rules_verified_domain on org_domain_rules (domain)
    where verified_at is not null;
