use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use cadenza_domain::{InvitationId, OrgId, Role};
use cadenza_storage::domain_rules::{DomainRule, VerificationMethod};
use cadenza_storage::invitations::{self, AcceptError, Invitation};
use cadenza_storage::{StorageError, domain_rules, users};
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;

use crate::audit::{self, AuditedTx, Change, RequestMeta};
use crate::auth::{Authenticated, Authorized, perm};
use crate::domain_verification::{self, Proof};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, parse_id};
use crate::routes::wire::{
    AcceptBody, AcceptRequest, DnsRecordView, DomainVerificationView, DomainView, InvitationView,
    Page, RoleGranted,
};
use crate::state::AppState;

fn view(invitation: &Invitation) -> InvitationView {
    let status = if invitation.accepted_at.is_some() {
        "accepted"
    } else if invitation.revoked_at.is_some() {
        "revoked"
    } else if invitation.expires_at < OffsetDateTime::now_utc() {
        "expired"
    } else {
        "pending"
    };
    InvitationView {
        id: invitation.id.to_string(),
        org_id: invitation.org_id.to_string(),
        email: invitation.email.clone(),
        role: invitation.role,
        status,
        created_at: invitation.created_at,
        expires_at: invitation.expires_at,
        token: None,
        accept: None,
    }
}

fn owner_only(auth: &Authorized<perm::MembersManage>, org: OrgId, role: Role) -> ApiResult<()> {
    let caller_is_owner =
        auth.principal.instance_admin || auth.principal.roles.get(&org) == Some(&Role::Owner);
    if role == Role::Owner && !caller_is_owner {
        return Err(ApiError::Forbidden(
            "only an owner can grant the owner role".into(),
        ));
    }
    Ok(())
}

fn valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && email.len() <= 320
        && !email.contains(char::is_whitespace)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInvitation {
    email: String,
    role: Option<String>,
    /// Lifetime in hours (default 168, at most 720).
    expires_in_hours: Option<u32>,
}

/// `POST /orgs/{org}/invitations`: an invitation bound to an email; the token is in this answer
/// only.
pub async fn create(
    State(state): State<AppState>,
    auth: Authorized<perm::MembersManage>,
    meta: RequestMeta,
    Path(org_id): Path<String>,
    ApiJson(body): ApiJson<CreateInvitation>,
) -> ApiResult<(StatusCode, Json<InvitationView>)> {
    let org_id: OrgId = parse_id(&org_id, "org")?;
    auth.require(org_id)?;
    if !valid_email(&body.email) {
        return Err(ApiError::BadRequest(format!(
            "`{}` is not an email address",
            body.email
        )));
    }
    let role: Role = body
        .role
        .as_deref()
        .unwrap_or("member")
        .parse()
        .map_err(ApiError::BadRequest)?;
    owner_only(&auth, org_id, role)?;
    let hours = body.expires_in_hours.unwrap_or(168);
    if !(1..=720).contains(&hours) {
        return Err(ApiError::BadRequest(
            "`expires_in_hours` must be 1-720".into(),
        ));
    }
    let expires_at = OffsetDateTime::now_utc() + time::Duration::hours(i64::from(hours));
    let mut tx = AuditedTx::begin(&state.pool, &auth.principal, &meta).await?;
    let (invitation, secret) = invitations::create(
        &mut tx,
        org_id,
        &body.email,
        role,
        expires_at,
        auth.principal.user_id(),
    )
    .await?;
    tx.record(Change {
            org: Some(org_id),
            action: "invitation.create",
            resource_type: "invitation",
            resource_id: Some(invitation.id.to_string()),
            diff: json!({"email": {"before": null, "after": invitation.email}, "role": {"before": null, "after": role}}),
        },
    )
    .await?;
    tx.commit().await?;
    let mut answer = view(&invitation);
    answer.accept = Some(AcceptRequest {
        method: "POST",
        path: "/api/v1/invitations/accept",
        body: AcceptBody {
            token: secret.clone(),
        },
    });
    answer.token = Some(secret);
    Ok((StatusCode::CREATED, Json(answer)))
}

pub async fn list(
    State(state): State<AppState>,
    auth: Authorized<perm::MembersManage>,
    Path(org_id): Path<String>,
) -> ApiResult<Json<Page<InvitationView>>> {
    let org_id: OrgId = parse_id(&org_id, "org")?;
    auth.require(org_id)?;
    let mut conn = state.pool.acquire().await?;
    let items: Vec<_> = invitations::list(&mut conn, org_id)
        .await?
        .iter()
        .map(view)
        .collect();
    Ok(Json(Page {
        items,
        next_cursor: None,
    }))
}

pub async fn revoke(
    State(state): State<AppState>,
    auth: Authorized<perm::MembersManage>,
    meta: RequestMeta,
    Path((org_id, invitation_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let org_id: OrgId = parse_id(&org_id, "org")?;
    auth.require(org_id)?;
    let id: InvitationId = parse_id(&invitation_id, "invitation")?;
    let mut tx = AuditedTx::begin(&state.pool, &auth.principal, &meta).await?;
    invitations::revoke(&mut tx, org_id, id)
        .await
        .map_err(|err| match err {
            StorageError::NotFound(_) => ApiError::not_found("pending invitation", id),
            other => other.into(),
        })?;
    tx.record(Change {
        org: Some(org_id),
        action: "invitation.revoke",
        resource_type: "invitation",
        resource_id: Some(id.to_string()),
        diff: json!({"revoked": {"before": false, "after": true}}),
    })
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptInvitation {
    /// The invitation's secret (in the body, so it stays out of URLs, access logs and history).
    token: String,
}

/// `POST /invitations/accept` `{token}`: the signed-in user joins the org, if the invitation is
/// pending, unexpired and addressed to the user's email, and that email is one the user is
/// known to own (verified by the identity provider, or the operator made the account for it).
pub async fn accept(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    meta: RequestMeta,
    ApiJson(body): ApiJson<AcceptInvitation>,
) -> ApiResult<Json<RoleGranted>> {
    let user_id = principal.require_account()?;
    let mut tx = AuditedTx::begin(&state.pool, &principal, &meta).await?;
    let user = users::get(&mut tx, user_id).await?;
    if !user.email_is_trusted() {
        return Err(ApiError::Forbidden(
            "your identity provider has not verified your email, so invitations addressed to it cannot be accepted".into(),
        ));
    }
    let invitation = match invitations::accept(&mut tx, &body.token, user_id, &user.email).await? {
        Ok(invitation) => invitation,
        Err(AcceptError::Unknown) => return Err(ApiError::NotFound("no such invitation".into())),
        Err(AcceptError::AlreadyUsed) => {
            return Err(ApiError::Conflict(
                "this invitation was already accepted".into(),
            ));
        }
        Err(AcceptError::Revoked) => {
            return Err(ApiError::Conflict("this invitation was revoked".into()));
        }
        Err(AcceptError::Expired) => {
            return Err(ApiError::Conflict("this invitation has expired".into()));
        }
        Err(AcceptError::WrongEmail) => {
            return Err(ApiError::Forbidden(
                "this invitation is addressed to another email".into(),
            ));
        }
    };
    tx.record(Change {
        org: Some(invitation.org_id),
        action: "invitation.accept",
        resource_type: "member",
        resource_id: Some(user_id.to_string()),
        diff: json!({"role": {"before": null, "after": invitation.role}}),
    })
    .await?;
    tx.commit().await?;
    Ok(Json(RoleGranted {
        org_id: invitation.org_id.to_string(),
        user_id: None,
        role: invitation.role,
    }))
}

pub(crate) fn normalize_domain(raw: &str) -> ApiResult<String> {
    let domain = raw.trim().to_ascii_lowercase();
    let valid = domain.contains('.')
        && domain.len() <= 253
        && domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        && !domain.starts_with('.')
        && !domain.ends_with('.');
    if valid {
        Ok(domain)
    } else {
        Err(ApiError::BadRequest(format!(
            "`{raw}` is not a domain name"
        )))
    }
}

/// A rule as the API shows it: its state, how and when it was verified, and the TXT record that
/// proves control of the domain.
pub(crate) fn domain_rule_view(rule: &DomainRule) -> DomainView {
    DomainView {
        domain: rule.domain.clone(),
        role: rule.role,
        state: if rule.is_verified() {
            "verified"
        } else {
            "pending"
        },
        verification: rule
            .verification
            .as_ref()
            .map(|verification| DomainVerificationView {
                method: verification.method.as_str(),
                verified_at: verification.at,
                verified_by: verification.by.map(|id| id.to_string()),
            }),
        dns_record: DnsRecordView {
            name: domain_verification::record_name(&rule.domain),
            kind: "TXT",
            value: domain_verification::record_value(&rule.verification_token),
        },
        created_at: rule.created_at,
    }
}

fn no_rule(domain: &str) -> impl FnOnce(StorageError) -> ApiError + '_ {
    move |err| match err {
        StorageError::NotFound(_) => ApiError::NotFound(format!("no rule for `{domain}`")),
        other => other.into(),
    }
}

pub async fn list_domains(
    State(state): State<AppState>,
    auth: Authorized<perm::MembersManage>,
    Path(org_id): Path<String>,
) -> ApiResult<Json<Page<DomainView>>> {
    let org_id: OrgId = parse_id(&org_id, "org")?;
    auth.require(org_id)?;
    let mut conn = state.pool.acquire().await?;
    let items: Vec<_> = domain_rules::list(&mut conn, org_id)
        .await?
        .iter()
        .map(domain_rule_view)
        .collect();
    Ok(Json(Page {
        items,
        next_cursor: None,
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutDomain {
    role: String,
}

/// `PUT /orgs/{org}/domains/{domain}`: once the domain is verified (`POST .../verify` after
/// publishing the TXT record this answers, or an instance administrator's approval), users whose
/// verified email is in the domain join the org with `role` (not owner) when they log in. A new
/// rule is pending; changing the role keeps the rule's verification.
pub async fn put_domain(
    State(state): State<AppState>,
    auth: Authorized<perm::MembersManage>,
    meta: RequestMeta,
    Path((org_id, domain)): Path<(String, String)>,
    ApiJson(body): ApiJson<PutDomain>,
) -> ApiResult<Json<DomainView>> {
    let org_id: OrgId = parse_id(&org_id, "org")?;
    auth.require(org_id)?;
    let domain = normalize_domain(&domain)?;
    let role: Role = body.role.parse().map_err(ApiError::BadRequest)?;
    if role == Role::Owner {
        return Err(ApiError::BadRequest(
            "a domain rule cannot grant the owner role".into(),
        ));
    }
    let mut tx = AuditedTx::begin(&state.pool, &auth.principal, &meta).await?;
    let (rule, previous) = domain_rules::put(&mut tx, org_id, &domain, role).await?;
    tx.record(Change {
        org: Some(org_id),
        action: "domain_rule.put",
        resource_type: "domain_rule",
        resource_id: Some(domain.clone()),
        diff: audit::diff(&json!({"role": previous}), &json!({"role": role})),
    })
    .await?;
    tx.commit().await?;
    Ok(Json(domain_rule_view(&rule)))
}

/// `POST /orgs/{org}/domains/{domain}/verify`: looks up the rule's TXT record and, when it is
/// published, marks the rule verified. Answers `domain_not_verified` naming the record to publish
/// otherwise. A verified rule stays verified (the record is checked once).
pub async fn verify_domain(
    State(state): State<AppState>,
    auth: Authorized<perm::MembersManage>,
    meta: RequestMeta,
    Path((org_id, domain)): Path<(String, String)>,
) -> ApiResult<Json<DomainView>> {
    let org_id: OrgId = parse_id(&org_id, "org")?;
    auth.require(org_id)?;
    let domain = normalize_domain(&domain)?;
    let rule = {
        let mut conn = state.pool.acquire().await?;
        domain_rules::get(&mut conn, org_id, &domain)
            .await
            .map_err(no_rule(&domain))?
    };
    if rule.is_verified() {
        return Ok(Json(domain_rule_view(&rule)));
    }
    let name = domain_verification::record_name(&domain);
    let value = domain_verification::record_value(&rule.verification_token);
    match state.dns.check(&domain, &rule.verification_token).await {
        Ok(Proof::Found) => {}
        Ok(Proof::NoRecord) => {
            return Err(ApiError::DomainNotVerified(format!(
                "no TXT record found at `{name}`; publish a TXT record `{name}` with the value \
                 `{value}`, then verify again"
            )));
        }
        Ok(Proof::WrongValue { records }) => {
            return Err(ApiError::DomainNotVerified(format!(
                "none of the {records} TXT record(s) at `{name}` has the value `{value}`; \
                 publish it, then verify again"
            )));
        }
        Err(err) => return Err(ApiError::Unavailable(Box::new(err))),
    }
    let mut tx = state.pool.begin().await?;
    let verified = domain_rules::mark_verified(
        &mut tx,
        org_id,
        &domain,
        VerificationMethod::Dns,
        auth.principal.user_id(),
    )
    .await
    .map_err(no_rule(&domain))?;
    let Some(verified) = verified else {
        // Verified by someone else meanwhile: nothing changed here.
        let rule = domain_rules::get(&mut tx, org_id, &domain)
            .await
            .map_err(no_rule(&domain))?;
        return Ok(Json(domain_rule_view(&rule)));
    };
    record_verification(&mut tx, &auth.principal, &meta, &verified).await?;
    tx.commit().await?;
    Ok(Json(domain_rule_view(&verified)))
}

/// The audit entry of a rule that became verified, by DNS or by approval.
pub(crate) async fn record_verification(
    tx: &mut sqlx::PgConnection,
    principal: &crate::principal::Principal,
    meta: &RequestMeta,
    rule: &DomainRule,
) -> ApiResult<()> {
    let method = rule.verification.as_ref().map(|v| v.method.as_str());
    audit::record(
        tx,
        Some(principal),
        meta,
        Change {
            org: Some(rule.org_id),
            action: "domain_rule.verify",
            resource_type: "domain_rule",
            resource_id: Some(rule.domain.clone()),
            diff: json!({
                "state": {"before": "pending", "after": "verified"},
                "method": {"before": null, "after": method},
            }),
        },
    )
    .await?;
    Ok(())
}

pub async fn delete_domain(
    State(state): State<AppState>,
    auth: Authorized<perm::MembersManage>,
    meta: RequestMeta,
    Path((org_id, domain)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let org_id: OrgId = parse_id(&org_id, "org")?;
    auth.require(org_id)?;
    let domain = normalize_domain(&domain)?;
    let mut tx = AuditedTx::begin(&state.pool, &auth.principal, &meta).await?;
    let previous = domain_rules::delete(&mut tx, org_id, &domain)
        .await
        .map_err(no_rule(&domain))?;
    tx.record(Change {
        org: Some(org_id),
        action: "domain_rule.delete",
        resource_type: "domain_rule",
        resource_id: Some(domain),
        diff: json!({"role": {"before": previous, "after": null}}),
    })
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
