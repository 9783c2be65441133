-- Account linking by verified email only (docs/ACCESS.md, "Signing in").
--
-- `email_verified` records whether the identity provider vouched for the address when the account
-- was linked. An email is *claimed* by an account that is either pre-created (bootstrap admin,
-- `admin grant`, not yet linked to an identity) or linked by a verified email; at most one
-- account claims each address. An account whose provider did not verify its email claims nothing,
-- so it can never block the real owner's first login or be handed someone else's invitation.
alter table users add column email_verified boolean not null default false;
-- Accounts linked before this rule existed keep their claim.
update users set email_verified = true where oidc_subject is not null;
drop index users_email;
create unique index users_email_claimed on users (lower(email))
    where email_verified or oidc_subject is null;
create index users_email on users (lower(email));

-- Service tokens remember who made them: the person (also when a token made them), and the token
-- that did, so removing or demoting that person reaches every token made in their name.
alter table api_tokens
    add column created_by_token uuid references api_tokens (id) on delete set null;
create index api_tokens_created_by on api_tokens (created_by) where kind = 'service';
