//! What the registry holds, as it is persisted and as the admin API shows it.

use crate::model::declared::Declared;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What the operator lets a tenant bind to, and how much it may use. Only the operator sets it;
/// a tenant's handlers are checked against it whenever either changes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// Topics of reference events the tenant's handlers may consume.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Data sources (`[[data_source]]` names) its handlers may resolve against.
    #[serde(default)]
    pub data_sources: Vec<String>,
    /// Purposes of processing it may declare; each is sent to the data owner with every request.
    #[serde(default)]
    pub purposes: Vec<String>,
    /// Topics its handlers may publish replies to.
    #[serde(default)]
    pub reply_topics: Vec<String>,
    /// Its limits.
    #[serde(default)]
    pub limits: TenantLimits,
}

/// A tenant's limits: what its handlers may ask for at most.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TenantLimits {
    /// Handlers the tenant may have.
    pub max_handlers: u32,
    /// Stored versions per handler.
    pub max_versions_per_handler: u32,
    /// Size of one uploaded component, in bytes.
    pub max_component_bytes: u64,
    /// Events in flight per handler.
    pub max_in_flight: u32,
    /// Linear memory per call, in bytes.
    pub max_memory_bytes: u64,
    /// Wall-clock time per call, in milliseconds.
    pub max_deadline_ms: u64,
}

impl Default for TenantLimits {
    fn default() -> Self {
        TenantLimits {
            max_handlers: 10,
            max_versions_per_handler: 20,
            max_component_bytes: 32 << 20,
            max_in_flight: 64,
            max_memory_bytes: 64 << 20,
            max_deadline_ms: 1_000,
        }
    }
}

/// How a tenant binds one of its handlers: what it consumes, from which data source, why, and
/// within which of its limits. Checked against the tenant's [`Grant`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HandlerSpec {
    /// Topics of reference events to consume; each must be granted.
    pub topics: Vec<String>,
    /// The data source references resolve against; must be granted.
    pub data_source: String,
    /// The declared purpose; must be one of the granted purposes.
    pub purpose: String,
    /// Where replies are published; must be granted. Without it, replies are dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_topic: Option<String>,
    /// Events in flight at most (default: the tenant's limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// Wall-clock time per call in milliseconds (default: the tenant's limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Linear memory per call in bytes (default: the tenant's limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_bytes: Option<u64>,
    /// For the record of processing: whose data, which kinds, who outside the tenant receives
    /// the results, transfers to third countries (each optional; not checked against the grant).
    #[serde(default, skip_serializing_if = "Declared::is_empty")]
    pub declared: Declared,
}

/// One uploaded version of a handler.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionInfo {
    /// `sha256:<hex>` of the component: its address in the store and its name everywhere else
    /// (logs, access receipts, dead-letter headers).
    pub version: String,
    /// When it was uploaded (RFC 3339).
    pub uploaded_at: String,
    /// The component's size.
    pub size_bytes: u64,
    /// The handler contract it was validated against, e.g. `keyhole:handler@0.1.0`.
    pub contract: String,
    /// Its imports, as `keyhole check` lists them.
    pub imports: Vec<String>,
}

/// A handler as persisted.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct HandlerRecord {
    pub spec: HandlerSpec,
    pub versions: Vec<VersionInfo>,
    pub active: Option<String>,
    /// Versions active before the current one, newest last: what a rollback returns to.
    pub previous: Vec<String>,
    /// In the Kafka store, where each version's bytes are in the blob topic.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub blobs: BTreeMap<String, BlobRef>,
    /// Which version became active when, oldest first, at most [`MAX_ACTIVATIONS`]: the record
    /// of processing says since when a version runs (absent in registries written before it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub activations: Vec<Activation>,
}

/// The most activations a handler's history keeps; older ones are dropped.
pub const MAX_ACTIVATIONS: usize = 64;

/// One activation of a version (an activation or a rollback).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Activation {
    /// The version that became active.
    pub version: String,
    /// When (RFC 3339): when the activation was asked, as its command carries it.
    pub at: String,
}

/// Where a version's bytes are in the blob topic: `chunks` records keyed
/// `<version>/<upload>/<index>`, at `offsets`. Each upload writes its own chunks, so that a
/// compaction never removes the chunks another manifest still names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// The upload's id (a UUID), part of every chunk's key.
    pub upload: String,
    /// The chunks' offsets in the blob topic's one partition, in order.
    pub offsets: Vec<i64>,
}

/// An API token, as persisted: never the token itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The token's id.
    pub id: String,
    /// Hex SHA-256 of the token. Tokens are 256 random bits, so a fast hash is enough: there
    /// is nothing to guess from it.
    pub sha256: String,
    /// When it was issued (RFC 3339).
    pub created_at: String,
}

/// A tenant as persisted.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct TenantRecord {
    pub grant: Grant,
    pub tokens: Vec<TokenRecord>,
    pub handlers: BTreeMap<String, HandlerRecord>,
}

/// Everything the registry persists, in one file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct State {
    pub tenants: BTreeMap<String, TenantRecord>,
}

/// A tenant as the admin API shows it (tokens by id only).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct TenantView {
    /// The tenant's name.
    pub tenant: String,
    /// What it was granted.
    pub grant: Grant,
    /// Its tokens' ids.
    pub token_ids: Vec<String>,
    /// Its handlers' names.
    pub handlers: Vec<String>,
}

/// A handler as the admin API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HandlerView {
    /// The tenant.
    pub tenant: String,
    /// The handler's name.
    pub handler: String,
    /// How it is bound.
    pub spec: HandlerSpec,
    /// The version new events run on, if one was activated.
    pub active: Option<String>,
    /// What a rollback would activate.
    pub rollback_to: Option<String>,
    /// Its stored versions, oldest first.
    pub versions: Vec<VersionInfo>,
    /// Whether its binding runs: `running`, `paused` (its data owner is unavailable or refuses
    /// keyhole's credentials; nothing is dead-lettered, the first answer resumes it), `stopping`
    /// (draining its in-flight events before it stops or restarts), `inactive`
    /// (no version active), `not_granted` (its spec exceeds the grant, changed since), `stopped`
    /// (a failure policy stopped it), `failed` (it could not start), `finished` (shut down).
    pub state: String,
    /// Why, when it is not running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<String>,
}

/// A freshly issued token: the only time it is shown.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct IssuedToken {
    /// The token's id, for revoking it.
    pub id: String,
    /// The bearer token. Stored only as a hash: keep it now, it cannot be shown again.
    pub token: String,
}

/// A handler to run: its spec and the active version's component file.
#[derive(Clone, Debug)]
pub struct Deployment {
    /// The tenant.
    pub tenant: String,
    /// The handler.
    pub handler: String,
    /// How it is bound.
    pub spec: HandlerSpec,
    /// The tenant's limits at the time.
    pub limits: TenantLimits,
    /// The active version.
    pub version: String,
    /// The active version's component file.
    pub component: std::path::PathBuf,
    /// Why it may not run, when the grant no longer covers its spec.
    pub not_granted: Option<String>,
}
