//! The one place requests are authenticated. Every handler that touches tenant data takes a
//! `Principal`, whose scope it passes to storage, so a query cannot forget its org filter.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use cadenza_domain::{OrgId, Scope, TokenId};
use cadenza_storage::tokens;

use crate::error::ApiError;
use crate::state::AppState;

#[derive(Clone, Copy, Debug)]
pub struct Principal {
    pub token_id: TokenId,
    pub scope: Scope,
}

impl Principal {
    pub fn org(&self) -> Option<OrgId> {
        match self.scope {
            Scope::Org(org) => Some(org),
            Scope::Instance => None,
        }
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or(ApiError::Unauthenticated)?
            .to_str()
            .map_err(|_| ApiError::Unauthenticated)?;
        let secret = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or(ApiError::Unauthenticated)?
            .trim();
        let mut conn = state
            .pool
            .acquire()
            .await
            .map_err(|err| ApiError::from(cadenza_storage::StorageError::from(err)))?;
        let principal = tokens::authenticate(&mut conn, secret)
            .await?
            .ok_or(ApiError::Unauthenticated)?;
        let scope = principal.org_id.map(Scope::Org).unwrap_or(Scope::Instance);
        let principal = Principal {
            token_id: principal.token_id,
            scope,
        };
        tracing::Span::current().record("token_id", tracing::field::display(principal.token_id));
        Ok(principal)
    }
}
