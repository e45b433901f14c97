//! Errors as RFC 9457 problem details (`application/problem+json`): a stable `type` a client can
//! act on, and a `detail` a person can read.

use crate::registry::RegistryError;
use crate::sandbox::LoadError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The media type of every error the admin API returns.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// One problem.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `urn:keyhole:problem:<kind>`: what went wrong, for programs.
    #[serde(rename = "type")]
    pub type_: String,
    /// A short summary of the kind.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong here, and how to fix it.
    pub detail: String,
    #[serde(skip)]
    challenge: Option<&'static str>,
}

impl Problem {
    /// A problem of kind `kind` (e.g. `not-granted`).
    pub fn new(status: StatusCode, kind: &str, detail: impl Into<String>) -> Self {
        Problem {
            type_: format!("urn:keyhole:problem:{kind}"),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            challenge: None,
        }
    }

    /// 401 with the `WWW-Authenticate` challenge RFC 6750 asks for.
    pub fn unauthorized(kind: &str, detail: impl Into<String>, challenge: &'static str) -> Self {
        Problem { challenge: Some(challenge), ..Problem::new(StatusCode::UNAUTHORIZED, kind, detail) }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let challenge = self.challenge;
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(challenge) = challenge {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        response
    }
}

/// A JSON body the endpoint could not take, as a problem (with the status axum chose: 400 for
/// malformed JSON, 415 for another content type, 422 for the wrong fields).
pub fn json_body<T>(
    body: Result<axum::Json<T>, axum::extract::rejection::JsonRejection>,
) -> Result<T, Problem> {
    body.map(|axum::Json(value)| value)
        .map_err(|rejection| Problem::new(rejection.status(), "malformed-body", rejection.body_text()))
}

impl From<RegistryError> for Problem {
    fn from(error: RegistryError) -> Self {
        let (status, kind) = match &error {
            RegistryError::UnknownTenant(_) => (StatusCode::NOT_FOUND, "unknown-tenant"),
            RegistryError::UnknownHandler { .. } => (StatusCode::NOT_FOUND, "unknown-handler"),
            RegistryError::UnknownVersion { .. } => (StatusCode::NOT_FOUND, "unknown-version"),
            RegistryError::UnknownToken { .. } => (StatusCode::NOT_FOUND, "unknown-token"),
            RegistryError::NotGranted { .. } => (StatusCode::FORBIDDEN, "not-granted"),
            RegistryError::OverLimit { .. } => (StatusCode::FORBIDDEN, "over-limit"),
            RegistryError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            RegistryError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            RegistryError::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage"),
            RegistryError::Blob { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "storage"),
            RegistryError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "registry-unavailable"),
        };
        if status.is_server_error() {
            tracing::error!(%error, "Admin API: the registry failed.");
        }
        Problem::new(status, kind, error.to_string())
    }
}

impl From<LoadError> for Problem {
    fn from(error: LoadError) -> Self {
        // Not the component's fault: the same upload may succeed later.
        if let LoadError::CompilerUnavailable(_) = error {
            return Problem::new(StatusCode::SERVICE_UNAVAILABLE, "compiler-unavailable", error.to_string());
        }
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            &error.kind().replace('_', "-"),
            format!("the component was refused: {error}"),
        )
    }
}
