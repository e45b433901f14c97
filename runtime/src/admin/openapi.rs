//! The admin API's OpenAPI document, generated from the endpoints' annotations. The repository
//! keeps a copy (`docs/openapi.json`); a test fails when the two differ.

use super::{handlers, tenants};
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "keyhole admin API",
        description = "Third parties upload and activate their WebAssembly handlers; the operator grants each \
                       tenant the topics, data sources and purposes it may use, and its limits. Errors are \
                       RFC 9457 problem details (application/problem+json).",
        license(name = "Apache-2.0"),
    ),
    paths(
        super::healthz,
        super::readyz,
        super::metrics,
        super::openapi_json,
        tenants::list,
        tenants::put,
        tenants::get,
        tenants::delete,
        tenants::issue_token,
        tenants::revoke_token,
        handlers::list,
        handlers::put,
        handlers::get,
        handlers::delete,
        handlers::upload,
        handlers::versions,
        handlers::version,
        handlers::delete_version,
        handlers::activate,
        handlers::rollback,
    ),
    modifiers(&Bearer),
    tags(
        (name = "monitoring", description = "Health, readiness, metrics: served on `admin.monitoring_listen`, \
                                             not on the API's listener; no token"),
        (name = "documentation", description = "This document; no token"),
        (name = "operator", description = "The operator's token only"),
        (name = "tenant", description = "A tenant's own token (or the operator's)"),
    )
)]
struct Document;

struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as pretty-printed JSON (with a final newline), as `docs/openapi.json` holds it.
pub fn document() -> String {
    let mut document = Document::openapi();
    // The crate's own version would make the document change with every release for no reason
    // a client cares about; the API's version is its path prefix.
    document.info.version = "v1".into();
    let mut text = document.to_pretty_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}
