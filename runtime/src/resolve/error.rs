//! The data owner's answers that release nothing, and what the caller does about each.
//!
//! The table "Answers from a data owner" in the project's reference decides the mapping: a
//! consent decision must never be confused with an owner that is merely unavailable, nor with
//! keyhole's own credentials being refused.

use std::time::Duration;

/// A data source's client could not be built. Messages name what to fix and never contain a
/// token or key bytes.
#[derive(Debug, thiserror::Error)]
pub enum ResolverBuildError {
    /// A setting is out of range or the base URL cannot be used.
    #[error("data source `{data_source}`: {reason}")]
    InvalidSetting {
        /// The data source's name.
        data_source: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The bearer token cannot be sent in an HTTP header.
    #[error(
        "data source `{data_source}`: the bearer token is not a valid HTTP header value (it must \
         be non-empty visible ASCII)"
    )]
    InvalidBearerToken {
        /// The data source's name.
        data_source: String,
    },
    /// The client certificate or its key cannot be read.
    #[error("data source `{data_source}`: {reason}")]
    InvalidClientCertificate {
        /// The data source's name.
        data_source: String,
        /// Which part is unreadable and what is expected instead.
        reason: &'static str,
    },
    /// The HTTP client itself could not be built (TLS set-up, for instance).
    #[error("data source `{data_source}`: cannot build the HTTP client: {reason}")]
    Client {
        /// The data source's name.
        data_source: String,
        /// The client library's explanation.
        reason: String,
    },
}

/// The owner released nothing. What the engine does next is `engine::decide::unresolved`'s rule.
///
/// Messages carry statuses and short reasons only: never the token, the body or the URL.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// 403 or 451: consent missing or withdrawn (or legally unavailable).
    #[error("the data owner refused to release the data (HTTP {status}): consent is missing or withdrawn")]
    ConsentDenied {
        /// The owner's status: 403 or 451.
        status: u16,
    },
    /// 404 or 410: unknown, deleted or erased.
    #[error("the data owner does not have the data (HTTP {status}): unknown, deleted or erased")]
    Gone {
        /// The owner's status: 404 or 410.
        status: u16,
    },
    /// 401: keyhole's own credentials were refused — not the user's decision.
    #[error("the data owner refused keyhole's credentials (HTTP 401)")]
    Unauthorized,
    /// 408, 429, 5xx, connection errors, timeouts: try again later.
    #[error("the data owner is unavailable, try again later: {reason}")]
    Transient {
        /// What happened, without the URL.
        reason: String,
        /// The owner's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// The body (or its Content-Length) exceeds max_response_bytes.
    #[error("the data owner's answer exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The data source's `max_response_bytes`.
        limit: u64,
    },
    /// Any other status (other 4xx, a 3xx redirect that was not followed, 1xx...): a permanent
    /// problem with this reference.
    #[error("the data owner answered HTTP {status}, which releases nothing for this reference")]
    Rejected {
        /// The owner's status.
        status: u16,
    },
    /// keyhole sent nothing: the URL lies outside the data source's base URL, or no valid
    /// request could be built from it. A permanent problem with this reference, recorded as
    /// `rejected` with no status.
    #[error("keyhole refused to request this reference: it lies outside the data source or cannot be sent")]
    NotSent,
}

impl ResolveError {
    /// Stable short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ResolveError::ConsentDenied { .. } => "consent_denied",
            ResolveError::Gone { .. } => "gone",
            ResolveError::Unauthorized => "unauthorized",
            ResolveError::Transient { .. } => "transient",
            ResolveError::TooLarge { .. } => "too_large",
            ResolveError::Rejected { .. } | ResolveError::NotSent => "rejected",
        }
    }

    /// The owner's HTTP status, when it answered with one that keyhole kept: not for a
    /// transient failure (which may be no answer at all) nor for an answer too large (a 2xx).
    pub fn status(&self) -> Option<u16> {
        match self {
            ResolveError::ConsentDenied { status } | ResolveError::Gone { status } => Some(*status),
            ResolveError::Unauthorized => Some(401),
            ResolveError::Rejected { status } => Some(*status),
            ResolveError::NotSent | ResolveError::Transient { .. } | ResolveError::TooLarge { .. } => None,
        }
    }

    /// The owner's `Retry-After`, when the error is transient and it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ResolveError::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::ResolveError;

    #[test]
    fn every_answer_has_its_label() {
        let cases = [
            (ResolveError::ConsentDenied { status: 403 }, "consent_denied"),
            (ResolveError::Gone { status: 410 }, "gone"),
            (ResolveError::Unauthorized, "unauthorized"),
            (ResolveError::Transient { reason: "timed out".into(), retry_after: None }, "transient"),
            (ResolveError::TooLarge { limit: 1 }, "too_large"),
            (ResolveError::Rejected { status: 400 }, "rejected"),
            (ResolveError::NotSent, "rejected"),
        ];
        for (error, kind) in cases {
            assert_eq!(error.kind(), kind, "{error}");
        }
    }
}
