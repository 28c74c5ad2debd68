//! Site administration: the audit log (administrators only; everyone else
//! gets 404, as for any resource they may not see).

use axum::Json;

use super::conversations::page_limit;
use super::wire::{AuditList, AuditQuery, AuditView};
use super::{ApiQuery, AppState, Caller};
use crate::error::{ApiError, ErrorBody};

/// Security-relevant events, newest first.
#[utoipa::path(get, path = "/v1/admin/audit", tag = "admin",
    params(AuditQuery),
    responses((status = 200, body = AuditList), (status = 404, body = ErrorBody, description = "Not an administrator")),
    security(("bearer" = [])))]
pub async fn audit_log(
    state: AppState,
    caller: Caller,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<AuditList>, ApiError> {
    let user = state.caller_user(caller).await?;
    if !user.is_admin {
        return Err(ApiError::not_found("no route for /v1/admin/audit"));
    }
    let limit = page_limit(query.limit)?;
    let entries = state.store.audit_log(query.before, limit).await?;
    Ok(Json(AuditList {
        entries: entries.iter().map(AuditView::from).collect(),
    }))
}
