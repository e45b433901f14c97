//! Resolution of references: asks the data owner for the data an event only refers to.
//!
//! An event on Kafka carries no personal data, only a reference to it. keyhole resolves that
//! reference with an HTTP `GET` to the data owner's API *as the consuming service*, and the owner
//! checks the end user's consent at that moment. The owner's answer decides what happens to the
//! event (the owner table in docs/configuration.md; the engine decides, and tells an
//! unavailable owner from a reference that fails on its own, in `engine::decide`): released
//! data goes to the handler; consent denied
//! or data gone is a decision to acknowledge and record; an owner that is unavailable is asked
//! again later with [`Backoff`]; refused credentials pause the binding, because they are
//! keyhole's problem, not the user's decision.
//!
//! One [`Resolver`] serves one configured data source: one pooled HTTP client, its identity
//! (bearer token or client certificate), a bound on concurrent requests, a timeout and a bound on
//! the size of what is read. A resolver never leaves its data source: a URL outside the source's
//! base URL is never requested, and redirects are followed only within it.
//!
//! Nothing here logs or reports the token, the released body or a reference's query string
//! (which may carry personal data): errors name the status or a short reason instead.

mod backoff;
mod batch;
mod client;
mod error;

pub use backoff::{Backoff, RETRY_AFTER_CEILING};
pub use batch::{BATCH_PROTOCOL_VERSION, BatchSettings};
pub use client::{MAX_REDIRECTS, RedirectRule, Resolver};
// For `keyhole owner check` (the `owner_check` module), which holds a data owner to what this
// module does with its answers.
pub(crate) use client::{Inspection, parse_retry_after};
pub use error::{ResolveError, ResolverBuildError};

use std::fmt;
use std::time::Duration;

/// Header naming the tenant whose handler asks for the data.
pub const TENANT_HEADER: &str = "keyhole-tenant";
/// Header naming the handler that will receive the data.
pub const HANDLER_HEADER: &str = "keyhole-handler";
/// Header naming the purpose the data is asked for, as configured for the binding.
pub const PURPOSE_HEADER: &str = "keyhole-purpose";
/// Header carrying the CloudEvents `id` of the event being handled.
pub const EVENT_ID_HEADER: &str = "keyhole-event-id";
/// Header naming the handler version that will receive the data: the SHA-256 digest of its
/// component (`sha256:<hex>`), so that an owner can release data only to versions it approved.
pub const HANDLER_VERSION_HEADER: &str = "keyhole-handler-version";

/// Settings for one data source, already validated by the config module.
#[derive(Clone, Debug)]
pub struct DataSourceSettings {
    /// The data source's name in the configuration; names it in logs, metrics and errors.
    pub name: String,
    /// Base URL; its path ends with '/'. References are resolved against it by the caller
    /// (`cloudevents::DataRef::resolve_against`) before [`Resolver::fetch`] is called, and the
    /// resolver refuses any URL (or redirect) that leaves it.
    pub base_url: url::Url,
    /// How keyhole proves who it is to the data owner.
    pub identity: Identity,
    /// Limit on one whole request: connecting, the answer's head and its body.
    pub timeout: Duration,
    /// Limit on a released body; larger answers are refused, not truncated.
    pub max_response_bytes: u64,
    /// How many requests to this data source may be under way at once.
    pub max_concurrent_requests: usize,
    /// Batched resolution, when the owner has a batch endpoint; `None`: one request per
    /// reference.
    pub batch: Option<BatchSettings>,
}

/// How keyhole proves who it is to the data owner. `Debug` shows no secret.
#[derive(Clone)]
pub enum Identity {
    /// No credentials (the owner trusts the network, or the data is not protected).
    None,
    /// `Authorization: Bearer <token>`; the token is never logged nor reported.
    Bearer(String),
    /// Mutual TLS with a client certificate.
    ClientCertificate {
        /// The client certificate chain in PEM, leaf first.
        certificate_pem: Vec<u8>,
        /// The certificate's private key, PKCS#8 in PEM (`-----BEGIN PRIVATE KEY-----`).
        key_pem: Vec<u8>,
    },
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::None => f.write_str("None"),
            Identity::Bearer(_) => f.debug_tuple("Bearer").field(&"<redacted>").finish(),
            Identity::ClientCertificate { certificate_pem, .. } => f
                .debug_struct("ClientCertificate")
                .field("certificate_pem", &format_args!("<{} bytes>", certificate_pem.len()))
                .field("key_pem", &"<redacted>")
                .finish(),
        }
    }
}

/// Who is asking and why; sent to the owner as request headers so that it can decide on consent
/// and keep its own records.
///
/// Each value is sent percent-encoded: bytes that may not appear in a header value (controls,
/// non-ASCII) and `%` itself become `%XX` of their UTF-8 bytes, so that any event id from Kafka
/// can be sent and the owner can decode it unambiguously. Ordinary ASCII values go unchanged.
#[derive(Clone, Copy, Debug)]
pub struct Requester<'a> {
    /// The tenant that owns the handler.
    pub tenant: &'a str,
    /// The handler that will receive the data.
    pub handler: &'a str,
    /// The purpose of processing, as configured for the binding.
    pub purpose: &'a str,
    /// The CloudEvents `id` of the event being handled.
    pub event_id: &'a str,
    /// The handler version the event runs on (`sha256:<hex>` of its component): the code the
    /// released data will reach.
    pub handler_version: &'a str,
}

/// What the owner released.
///
/// `Debug` shows the body's length only: the body is personal data and must not reach logs.
#[derive(Clone)]
pub struct Released {
    /// The body exactly as the owner sent it.
    pub body: bytes::Bytes,
    /// The answer's `Content-Type`, when present and readable as text.
    pub content_type: Option<String>,
}

impl fmt::Debug for Released {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Released")
            .field("body", &format_args!("<{} bytes>", self.body.len()))
            .field("content_type", &self.content_type)
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::{Identity, Released};

    #[test]
    fn identity_debug_shows_no_secret() {
        let bearer = format!("{:?}", Identity::Bearer("tok-s3cr3t".into()));
        assert!(!bearer.contains("tok-s3cr3t"), "{bearer}");
        let cert = Identity::ClientCertificate {
            certificate_pem: b"CERT-BYTES".to_vec(),
            key_pem: b"KEY-S3CR3T".to_vec(),
        };
        let cert = format!("{cert:?}");
        assert!(!cert.contains("KEY-S3CR3T") && !cert.contains("CERT-BYTES"), "{cert}");
        assert!(cert.contains("<10 bytes>"), "{cert}");
    }

    #[test]
    fn released_debug_shows_no_body() {
        let released = Released { body: "alice@example.com".into(), content_type: None };
        let shown = format!("{released:?}");
        assert!(!shown.contains("alice"), "{shown}");
        assert!(shown.contains("<17 bytes>"), "{shown}");
    }
}
