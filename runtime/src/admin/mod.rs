//! The admin API: third parties upload and activate their handlers; the operator grants each
//! tenant what it may consume. Monitoring reads `/metrics`, `/healthz` and `/readyz` on a
//! listener of its own ([`Listener::Monitoring`]): a flood of the tenant-facing API cannot blind the
//! probes, and the probes' listener, which names every tenant, need not be reachable by tenants.
//!
//! It reads and changes the registry and asks a [`Control`] to apply changes to the running
//! handlers; it owns no engine state and does not depend on the engine, so that it is tested
//! over an in-memory registry and a fake control (see the unit tests). Its OpenAPI document is generated from the handlers' annotations
//! ([`openapi`]), served at `/openapi.json` and kept in the repository as `docs/openapi.json`.

mod auth;
mod handlers;
pub mod openapi;
mod problem;
mod server;
mod tenants;

pub use auth::Caller;
pub use problem::{PROBLEM_JSON, Problem};
pub use server::Bounds;

use crate::config::AdminSettings;
use crate::registry::Registry;
use crate::sandbox::{ComponentReport, LoadError};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use std::future::Future;
use std::sync::Arc;

/// What the admin API's handlers share.
#[derive(Clone)]
pub struct Api(Arc<Inner>);

/// What the admin API asks of whatever runs the handlers (the engine's supervisor in keyhole; a
/// fake in the unit tests).
pub trait Control: Send + Sync + 'static {
    /// Validates a tenant's component exactly as `keyhole check` does, after the tenant's
    /// earlier uploads and apart from other tenants'; dropping the future stops it.
    fn check(&self, tenant: &str, wasm: Arc<Vec<u8>>) -> BoxFuture<'_, Result<ComponentReport, LoadError>>;
    /// What an uploaded handler's binding is doing: its state's name and why, if it has a reason.
    fn state(&self, tenant: &str, handler: &str) -> HandlerState;
    /// `Ok` when keyhole can do its work, else every reason it cannot.
    fn ready(&self) -> BoxFuture<'_, Result<(), Vec<String>>>;
    /// Makes the running handlers what the registry says, and waits until the bindings in
    /// `scope` are settled (started, swapped, or drained and stopped); other tenants' bindings
    /// starting or draining are not waited for. Per binding in `scope` (`tenant/handler`), what
    /// could not be applied.
    fn apply(&self, scope: Scope) -> BoxFuture<'_, Result<(), Vec<(String, String)>>>;
}

/// The bindings a write concerns: it is answered once they are settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every handler of a tenant (its grant changed, or it was deleted).
    Tenant(String),
    /// One handler.
    Handler {
        /// Its tenant.
        tenant: String,
        /// The handler.
        handler: String,
    },
}

/// A boxed future, as a trait object's async method returns.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What an uploaded handler's binding is doing, as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandlerState {
    /// `running`, `paused`, `stopping`, `inactive`, `not_granted`, `stopped`, `failed` or
    /// `finished`.
    pub label: &'static str,
    /// Why, for the states that have a reason.
    pub reason: Option<String>,
}

/// The shared state behind [`Api`].
pub struct Inner {
    /// Tenants, grants, tokens and handlers.
    registry: Arc<Registry>,
    /// Applies the registry's changes to the running handlers.
    control: Arc<dyn Control>,
    operator_token_sha256: Option<[u8; 32]>,
    max_upload_bytes: u64,
}

impl std::ops::Deref for Api {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Api {
    /// The API over `registry`, applying changes through `control`.
    pub fn new(registry: Arc<Registry>, control: Arc<dyn Control>, settings: &AdminSettings) -> Self {
        Api(Arc::new(Inner {
            registry,
            control,
            operator_token_sha256: settings.operator_token_sha256,
            max_upload_bytes: settings.max_upload_bytes,
        }))
    }
}

/// Connections the monitoring listener serves at once: probes and a scraper or two need a handful.
pub const MONITORING_MAX_CONNECTIONS: usize = 64;

/// Which of the two listeners a server is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// The tenant-facing API (`admin.listen`): `/v1` and `/openapi.json`.
    Api,
    /// `/healthz`, `/readyz` and `/metrics` (`admin.monitoring_listen`).
    Monitoring,
}

/// Serves `which` listener's routes on `listener`, within `bounds`, until `shutdown` completes.
pub async fn serve(
    which: Listener,
    listener: tokio::net::TcpListener,
    api: Api,
    bounds: Bounds,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (routes, what) = match which {
        Listener::Api => (router(api), "Admin API listening."),
        Listener::Monitoring => (monitoring_router(api), "Probes and metrics listening."),
    };
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, max_connections = bounds.max_connections, "{what}");
    }
    server::serve(listener, routes, bounds, shutdown).await
}

/// The probes and the metrics: the operator's, on their own listener.
pub fn monitoring_router(api: Api) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(no_route)
        .method_not_allowed_fallback(no_method)
        .with_state(api)
}

/// Every route of the API's listener. The OpenAPI document lists them and the monitoring
/// listener's (a test checks it against both routers).
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/v1/tenants", get(tenants::list))
        .route("/v1/tenants/{tenant}", put(tenants::put).get(tenants::get).delete(tenants::delete))
        .route("/v1/tenants/{tenant}/tokens", post(tenants::issue_token))
        .route("/v1/tenants/{tenant}/tokens/{token_id}", axum::routing::delete(tenants::revoke_token))
        .route("/v1/tenants/{tenant}/handlers", get(handlers::list))
        .route(
            "/v1/tenants/{tenant}/handlers/{handler}",
            put(handlers::put).get(handlers::get).delete(handlers::delete),
        )
        .route(
            "/v1/tenants/{tenant}/handlers/{handler}/versions",
            // The upload reads its body itself, within the tenant's limit.
            post(handlers::upload).get(handlers::versions).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route(
            "/v1/tenants/{tenant}/handlers/{handler}/versions/{version}",
            get(handlers::version).delete(handlers::delete_version),
        )
        .route(
            "/v1/tenants/{tenant}/handlers/{handler}/versions/{version}/activate",
            post(handlers::activate),
        )
        .route("/v1/tenants/{tenant}/handlers/{handler}/rollback", post(handlers::rollback))
        .route_layer(axum::middleware::from_fn_with_state(api.clone(), registry_synced))
        .route("/openapi.json", get(openapi_json))
        .fallback(no_route)
        .method_not_allowed_fallback(no_method)
        .with_state(api)
}

/// Every registry request waits for the registry to be current on this replica first (see
/// [`Registry::sync`]): a client load-balanced over replicas reads its own writes. A request no
/// token could authenticate is refused before: without a token, it costs no round trip to the
/// broker.
async fn registry_synced(
    State(api): State<Api>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Err(refused) = auth::could_be_anyone(&api, request.headers()) {
        // As a refused upload does: a client still sending its body then reads the 401 rather
        // than a reset connection.
        handlers::discard(request.into_body()).await;
        return refused.into_response();
    }
    match api.registry.sync().await {
        Ok(()) => next.run(request).await,
        Err(error) => Problem::from(error).into_response(),
    }
}

async fn no_route() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "no-such-route", "no such endpoint; see /openapi.json")
}

async fn no_method() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "this endpoint does not take that method; see /openapi.json",
    )
}

/// keyhole is alive.
#[utoipa::path(get, path = "/healthz", tag = "monitoring",
    responses((status = 200, description = "keyhole is alive", body = String, content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// keyhole can do its work: the Kafka cluster answers and no binding that should run has
/// stopped or failed.
#[utoipa::path(get, path = "/readyz", tag = "monitoring",
    responses(
        (status = 200, description = "Ready", body = String, content_type = "text/plain"),
        (status = 503, description = "Not ready, and why", body = Problem, content_type = "application/problem+json"),
    ))]
async fn readyz(State(api): State<Api>) -> Response {
    match api.control.ready().await {
        Ok(()) => "ready\n".into_response(),
        Err(problems) => {
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "not-ready", problems.join("; ")).into_response()
        }
    }
}

/// Prometheus metrics, in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "monitoring",
    responses((status = 200, description = "Every series (see docs/observability.md)", body = String,
        content_type = "text/plain; version=0.0.4")))]
async fn metrics() -> Response {
    let text = crate::telemetry::render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "documentation",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", body = Object)))]
async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi::document()).into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
