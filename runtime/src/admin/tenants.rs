//! The operator's endpoints: tenants, what each is granted, and their tokens.

use super::Api;
use super::auth;
use super::problem::{self, Problem};
use crate::registry::{Grant, IssuedToken, TenantView};
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

/// Every tenant (operator only).
#[utoipa::path(get, operation_id = "list_tenants", path = "/v1/tenants", tag = "operator", security(("bearer" = [])),
    responses(
        (status = 200, description = "Every tenant", body = Vec<TenantView>),
        (status = 401, description = "No token, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The registry cannot be read or written now (Kafka store: the broker is unreachable, or this replica is behind); nothing was changed, or the outcome is not known yet: retry", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the operator's token", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list(State(api): State<Api>, headers: HeaderMap) -> Result<Json<Vec<TenantView>>, Problem> {
    auth::operator(&api, &headers)?;
    Ok(Json(api.registry.tenants()))
}

/// Creates a tenant or replaces what it is granted (operator only). Handlers the new grant no
/// longer covers stop, and say so in their `state`.
#[utoipa::path(put, operation_id = "put_tenant", path = "/v1/tenants/{tenant}", tag = "operator", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "The tenant's name (a-z, 0-9, '-', '_', '.')")),
    request_body = Grant,
    responses(
        (status = 200, description = "Grant replaced", body = TenantView),
        (status = 201, description = "Tenant created", body = TenantView),
        (status = 401, description = "No token, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The registry cannot be read or written now (Kafka store: the broker is unreachable, or this replica is behind); nothing was changed, or the outcome is not known yet: retry", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the operator's token", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not `Content-Type: application/json`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad name, topic, purpose, limit or unknown data source; or unknown fields", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn put(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    grant: Result<Json<Grant>, JsonRejection>,
) -> Result<Response, Problem> {
    auth::operator(&api, &headers)?;
    let grant = problem::json_body(grant)?;
    let (view, created) = api.registry.put_tenant(&tenant, grant).await?;
    applied(&api, &tenant).await;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(view)).into_response())
}

/// One tenant: its grant, token ids and handlers (the operator, or the tenant itself).
#[utoipa::path(get, operation_id = "get_tenant", path = "/v1/tenants/{tenant}", tag = "tenant", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "The tenant")),
    responses(
        (status = 200, description = "The tenant", body = TenantView),
        (status = 401, description = "No token, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The registry cannot be read or written now (Kafka store: the broker is unreachable, or this replica is behind); nothing was changed, or the outcome is not known yet: retry", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another tenant's token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Json<TenantView>, Problem> {
    auth::tenant(&api, &headers, &tenant)?;
    Ok(Json(api.registry.tenant(&tenant)?))
}

/// Deletes a tenant with its tokens and handlers; its bindings stop (operator only).
#[utoipa::path(delete, operation_id = "delete_tenant", path = "/v1/tenants/{tenant}", tag = "operator", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "The tenant")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No token, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The registry cannot be read or written now (Kafka store: the broker is unreachable, or this replica is behind); nothing was changed, or the outcome is not known yet: retry", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the operator's token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<StatusCode, Problem> {
    auth::operator(&api, &headers)?;
    api.registry.delete_tenant(&tenant).await?;
    applied(&api, &tenant).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Issues a bearer token for the tenant (operator only). The token is shown once; keyhole keeps
/// only its hash.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/tokens", tag = "operator", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "The tenant")),
    responses(
        (status = 201, description = "The new token", body = IssuedToken),
        (status = 401, description = "No token, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The registry cannot be read or written now (Kafka store: the broker is unreachable, or this replica is behind); nothing was changed, or the outcome is not known yet: retry", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the operator's token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn issue_token(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Response, Problem> {
    auth::operator(&api, &headers)?;
    let issued = api.registry.issue_token(&tenant).await?;
    tracing::info!(tenant = %tenant, token_id = %issued.id, "Token issued.");
    Ok((StatusCode::CREATED, Json(issued)).into_response())
}

/// Revokes one of the tenant's tokens (operator only).
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/tokens/{token_id}", tag = "operator", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "The tenant"), ("token_id" = String, Path, description = "The token's id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "No token, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The registry cannot be read or written now (Kafka store: the broker is unreachable, or this replica is behind); nothing was changed, or the outcome is not known yet: retry", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not the operator's token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant or token", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn revoke_token(
    State(api): State<Api>,
    headers: HeaderMap,
    Path((tenant, token_id)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    auth::operator(&api, &headers)?;
    api.registry.revoke_token(&tenant, &token_id).await?;
    tracing::info!(tenant = %tenant, token_id = %token_id, "Token revoked.");
    Ok(StatusCode::NO_CONTENT)
}

/// Applies a grant change to the tenant's running bindings and waits for them (not for other
/// tenants'); what cannot start is reported in each handler's state, not as the grant's failure.
async fn applied(api: &Api, tenant: &str) {
    if let Err(problems) = api.control.apply(super::Scope::Tenant(tenant.to_string())).await {
        for (binding, problem) in problems {
            tracing::warn!(binding = %binding, reason = %problem, "Uploaded handler cannot run.");
        }
    }
}
