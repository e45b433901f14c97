//! A tenant's endpoints: its handlers, their uploaded versions, activation and rollback. The
//! operator may call them too.

use super::auth;
use super::problem::{self, Problem};
use super::{Api, Scope};
use crate::registry::{HandlerSpec, HandlerView, VersionInfo};
use axum::Json;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// An uploaded component's bytes.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct Component(#[allow(dead_code)] Vec<u8>);

/// A tenant's handlers.
#[utoipa::path(get, operation_id = "list_handlers", path = "/v1/tenants/{tenant}/handlers", tag = "tenant", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "The tenant")),
    responses(
        (status = 200, description = "The tenant's handlers", body = Vec<HandlerView>),
        (status = 401, description = "No token, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The registry cannot be read or written now (Kafka store: the broker is unreachable, or this replica is behind); nothing was changed, or the outcome is not known yet: retry", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another tenant's token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Json<Vec<HandlerView>>, Problem> {
    auth::tenant(&api, &headers, &tenant)?;
    let handlers = api.registry.handlers(&tenant)?;
    Ok(Json(handlers.into_iter().map(|h| with_state(&api, h)).collect()))
}

/// Creates a handler or replaces how it is bound. The spec must stay within what the operator
/// granted the tenant; a running handler restarts on the new spec (draining first).
#[utoipa::path(put, operation_id = "put_handler", path = "/v1/tenants/{tenant}/handlers/{handler}", tag = "tenant", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "The tenant"), ("handler" = String, Path, description = "The handler's name")),
    request_body = HandlerSpec,
    responses(
        (status = 200, description = "Spec replaced", body = HandlerView),
        (status = 201, description = "Handler created", body = HandlerView),
        (status = 401, description = "No token, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The registry cannot be read or written now (Kafka store: the broker is unreachable, or this replica is behind); nothing was changed, or the outcome is not known yet: retry", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another tenant's token, or a topic, data source, purpose or limit not granted", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The name is taken by keyhole's configuration file", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not `Content-Type: application/json`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A malformed spec or name, or unknown fields", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn put(
    State(api): State<Api>,
    headers: HeaderMap,
    Path((tenant, handler)): Path<(String, String)>,
    spec: Result<Json<HandlerSpec>, JsonRejection>,
) -> Result<Response, Problem> {
    auth::tenant(&api, &headers, &tenant)?;
    let spec = problem::json_body(spec)?;
    let (view, created) = api.registry.put_handler(&tenant, &handler, spec).await?;
    applied(&api, &tenant, &handler).await?;
    let view = with_state(&api, view);
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(view)).into_response())
}

/// One handler: spec, versions, the active one and the binding's state.
#[utoipa::path(get, operation_id = "get_handler", path = "/v1/tenants/{tenant}/handlers/{handler}", tag = "tenant", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "The tenant"), ("handler" = String, Path, description = "The handler")),
    responses(
        (status = 200, description = "The handler", body = HandlerView),
        (status = 401, description = "No token, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The registry cannot be read or written now (Kafka store: the broker is unreachable, or this replica is behind); nothing was changed, or the outcome is not known yet: retry", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another tenant's token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant or handler", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get(
    State(api): State<Api>,
    headers: HeaderMap,
    Path((tenant, handler)): Path<(String, String)>,
) -> Result<Json<HandlerView>, Problem> {
    auth::tenant(&api, &headers, &tenant)?;
    Ok(Json(with_state(&api, api.registry.handler(&tenant, &handler)?)))
}

/// Deletes a handler and every version of it; its binding drains and stops.
#[utoipa::path(delete, operation_id = "delete_handler", path = "/v1/tenants/{tenant}/handlers/{handler}", tag = "tenant", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "The tenant"), ("handler" = String, Path, description = "The handler")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No token, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The registry cannot be read or written now (Kafka store: the broker is unreachable, or this replica is behind); nothing was changed, or the outcome is not known yet: retry", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another tenant's token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant or handler", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete(
    State(api): State<Api>,
    headers: HeaderMap,
    Path((tenant, handler)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    auth::tenant(&api, &headers, &tenant)?;
    api.registry.delete_handler(&tenant, &handler).await?;
    let _ = api.control.apply(scope(&tenant, &handler)).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Uploads a version: the component is validated exactly as `keyhole check` does, within the
/// size limits, and stored under its SHA-256. It does not run until activated.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/handlers/{handler}/versions", tag = "tenant", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "The tenant"), ("handler" = String, Path, description = "The handler")),
    request_body(content = Component, content_type = "application/wasm", description = "The component (`.wasm`)"),
    responses(
        (status = 200, description = "These bytes were already uploaded", body = VersionInfo),
        (status = 201, description = "Stored", body = VersionInfo),
        (status = 401, description = "No token, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The registry cannot be read or written now (Kafka store: the broker is unreachable, or this replica is behind), or keyhole cannot compile components now (`compiler-unavailable`); nothing was changed, or the outcome is not known yet: retry", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another tenant's token, or the tenant's version limit", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant or handler", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than the tenant's or keyhole's upload limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "A `Content-Type` other than `application/wasm` or `application/octet-stream`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Refused: not a component, wrong world, forbidden imports, code beyond keyhole's limits (`over-code-limit`), or a compile that took more than its budget (`compile-budget-exceeded`)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn upload(
    State(api): State<Api>,
    headers: HeaderMap,
    Path((tenant, handler)): Path<(String, String)>,
    body: Body,
) -> Result<Response, Problem> {
    // The body is read only once the caller is known and the handler exists, and no further
    // than the caller's limit: nobody can make keyhole buffer what it would refuse.
    let accepted = auth::tenant(&api, &headers, &tenant)
        .and_then(|_| Ok(api.registry.handler(&tenant, &handler)?))
        .and_then(|_| check_component_type(&headers))
        .and_then(|()| Ok(api.registry.upload_limit(&tenant)?.min(api.max_upload_bytes)));
    let limit = match accepted {
        Ok(limit) => limit,
        Err(problem) => {
            discard(body).await;
            return Err(problem);
        }
    };
    let too_large = |size: String| {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            format!("{size}; the limit is {limit} bytes"),
        )
    };
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if let Some(declared) = declared.filter(|&n| n > limit) {
        discard(body).await;
        return Err(too_large(format!("the component is {declared} bytes")));
    }
    let wasm = axum::body::to_bytes(body, usize::try_from(limit).unwrap_or(usize::MAX))
        .await
        .map_err(|_| too_large("the component is larger, or its upload broke off".into()))?;
    let wasm = Arc::new(wasm.to_vec());
    // Refused before compiling whatever can be refused without it.
    api.registry.version_room(&tenant, &handler, &crate::sandbox::version_of(&wasm))?;
    // In the tenant's own queue, within the compile budget; a client that goes away stops it.
    let report = api.control.check(&tenant, wasm.clone()).await?;
    let (info, created) = api.registry.add_version(&tenant, &handler, wasm, &report).await?;
    tracing::info!(tenant = %tenant, handler = %handler, version = %info.version, size_bytes = info.size_bytes,
        "Handler version uploaded.");
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    let location = format!("/v1/tenants/{tenant}/handlers/{handler}/versions/{}", info.version);
    Ok((status, [(header::LOCATION, location)], Json(info)).into_response())
}

/// How much of a refused upload's body is read and thrown away before the refusal is sent. A
/// client still sending its body when the answer comes and the connection closes sees a reset
/// instead of the answer; reading a little (nginx's "lingering close") lets ordinary uploads get
/// their 401 or 403. Bounded in size and time, and never buffered.
const DISCARD_BYTES: usize = 4 << 20;
const DISCARD_TIME: std::time::Duration = std::time::Duration::from_secs(2);

pub(super) async fn discard(body: Body) {
    use futures_util::StreamExt as _;
    let mut stream = body.into_data_stream();
    let mut read = 0;
    let _ = tokio::time::timeout(DISCARD_TIME, async {
        while let Some(Ok(chunk)) = stream.next().await {
            read += chunk.len();
            if read >= DISCARD_BYTES {
                break;
            }
        }
    })
    .await;
}

/// An upload is a component: `application/wasm`, or `application/octet-stream` for clients that
/// send any file that way. No `Content-Type` is taken as octet-stream (RFC 9110 8.3). Anything
/// else — `curl --data` sends a form — is refused without the body being kept or validated.
fn check_component_type(headers: &HeaderMap) -> Result<(), Problem> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else { return Ok(()) };
    let essence = value.to_str().unwrap_or_default().split(';').next().unwrap_or_default().trim();
    if essence.eq_ignore_ascii_case("application/wasm")
        || essence.eq_ignore_ascii_case("application/octet-stream")
    {
        return Ok(());
    }
    Err(Problem::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported-media-type",
        "upload the component as `Content-Type: application/wasm` (curl: --data-binary @handler.wasm -H 'content-type: application/wasm')",
    ))
}

/// A handler's versions, oldest first.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/handlers/{handler}/versions", tag = "tenant", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "The tenant"), ("handler" = String, Path, description = "The handler")),
    responses(
        (status = 200, description = "The versions", body = Vec<VersionInfo>),
        (status = 401, description = "No token, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The registry cannot be read or written now (Kafka store: the broker is unreachable, or this replica is behind); nothing was changed, or the outcome is not known yet: retry", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another tenant's token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant or handler", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn versions(
    State(api): State<Api>,
    headers: HeaderMap,
    Path((tenant, handler)): Path<(String, String)>,
) -> Result<Json<Vec<VersionInfo>>, Problem> {
    auth::tenant(&api, &headers, &tenant)?;
    Ok(Json(api.registry.handler(&tenant, &handler)?.versions))
}

/// One version's metadata.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/handlers/{handler}/versions/{version}", tag = "tenant", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "The tenant"), ("handler" = String, Path, description = "The handler"),
        ("version" = String, Path, description = "`sha256:<hex>`, or the bare hex digest")),
    responses(
        (status = 200, description = "The version", body = VersionInfo),
        (status = 401, description = "No token, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The registry cannot be read or written now (Kafka store: the broker is unreachable, or this replica is behind); nothing was changed, or the outcome is not known yet: retry", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another tenant's token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant, handler or version", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn version(
    State(api): State<Api>,
    headers: HeaderMap,
    Path((tenant, handler, version)): Path<(String, String, String)>,
) -> Result<Json<VersionInfo>, Problem> {
    auth::tenant(&api, &headers, &tenant)?;
    Ok(Json(api.registry.version(&tenant, &handler, &version)?))
}

/// Deletes a version that is not active.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/handlers/{handler}/versions/{version}", tag = "tenant", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "The tenant"), ("handler" = String, Path, description = "The handler"),
        ("version" = String, Path, description = "`sha256:<hex>`, or the bare hex digest")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No token, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The registry cannot be read or written now (Kafka store: the broker is unreachable, or this replica is behind); nothing was changed, or the outcome is not known yet: retry", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another tenant's token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant, handler or version", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "It is the active version", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_version(
    State(api): State<Api>,
    headers: HeaderMap,
    Path((tenant, handler, version)): Path<(String, String, String)>,
) -> Result<StatusCode, Problem> {
    auth::tenant(&api, &headers, &tenant)?;
    api.registry.delete_version(&tenant, &handler, &version).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Activates a version: new events run on it at once, without a restart; events in flight
/// finish on the version they started on. Answers once the version is live.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/handlers/{handler}/versions/{version}/activate", tag = "tenant", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "The tenant"), ("handler" = String, Path, description = "The handler"),
        ("version" = String, Path, description = "`sha256:<hex>`, or the bare hex digest")),
    responses(
        (status = 200, description = "Active", body = HandlerView),
        (status = 401, description = "No token, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The registry cannot be read or written now (Kafka store: the broker is unreachable, or this replica is behind); nothing was changed, or the outcome is not known yet: retry", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another tenant's token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant, handler or version", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "The version could not be started; the previous one stays active", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn activate(
    State(api): State<Api>,
    headers: HeaderMap,
    Path((tenant, handler, version)): Path<(String, String, String)>,
) -> Result<Json<HandlerView>, Problem> {
    auth::tenant(&api, &headers, &tenant)?;
    let registry = &api.registry;
    let before = registry.activation(&tenant, &handler)?;
    let (view, _) = registry.activate(&tenant, &handler, &version).await?;
    switched(&api, view, before).await.map(Json)
}

/// Activates the version that was active before the current one.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/handlers/{handler}/rollback", tag = "tenant", security(("bearer" = [])),
    params(("tenant" = String, Path, description = "The tenant"), ("handler" = String, Path, description = "The handler")),
    responses(
        (status = 200, description = "Rolled back", body = HandlerView),
        (status = 401, description = "No token, or not a valid one", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The registry cannot be read or written now (Kafka store: the broker is unreachable, or this replica is behind); nothing was changed, or the outcome is not known yet: retry", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another tenant's token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant or handler", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "No earlier version to roll back to", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "The version could not be started; the current one stays active", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn rollback(
    State(api): State<Api>,
    headers: HeaderMap,
    Path((tenant, handler)): Path<(String, String)>,
) -> Result<Json<HandlerView>, Problem> {
    auth::tenant(&api, &headers, &tenant)?;
    let registry = &api.registry;
    let before = registry.activation(&tenant, &handler)?;
    let (view, _) = registry.rollback(&tenant, &handler).await?;
    switched(&api, view, before).await.map(Json)
}

/// Applies an activation (`view`, the handler as the activation left it); if the binding cannot
/// take it, puts the registry back as it was, unless another activation came in the meantime.
async fn switched(
    api: &Api,
    view: HandlerView,
    before: (Option<String>, Vec<String>),
) -> Result<HandlerView, Problem> {
    let (tenant, handler) = (view.tenant.clone(), view.handler.clone());
    match applied(api, &tenant, &handler).await {
        Ok(()) => {
            tracing::info!(tenant, handler, version = view.active.as_deref(), "Handler version active.");
            Ok(with_state(api, view))
        }
        Err(problem) => {
            if let Some(failed) = &view.active {
                api.registry.restore_activation(&tenant, &handler, failed, before.0, before.1).await?;
            }
            let _ = api.control.apply(scope(&tenant, &handler)).await;
            Err(problem)
        }
    }
}

/// Applies the registry's change to the running bindings and waits for this handler's binding
/// alone (another tenant's draining binding does not hold the answer up); this handler's
/// failure is the request's.
async fn applied(api: &Api, tenant: &str, handler: &str) -> Result<(), Problem> {
    let name = crate::model::names::binding_name(tenant, handler);
    if let Err(problems) = api.control.apply(scope(tenant, handler)).await {
        for (binding, problem) in problems {
            if binding == name {
                return Err(Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "cannot-start", problem));
            }
            tracing::warn!(binding = %binding, reason = %problem, "Uploaded handler cannot run.");
        }
    }
    Ok(())
}

fn scope(tenant: &str, handler: &str) -> Scope {
    Scope::Handler { tenant: tenant.to_string(), handler: handler.to_string() }
}

/// Fills in what the binding is doing.
fn with_state(api: &Api, mut view: HandlerView) -> HandlerView {
    let state = match view.active {
        None => super::HandlerState { label: "inactive", reason: None },
        Some(_) => api.control.state(&view.tenant, &view.handler),
    };
    view.state = state.label.to_string();
    view.state_reason = state.reason;
    view
}
