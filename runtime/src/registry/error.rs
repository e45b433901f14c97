//! Why a registry operation was refused ([`RegistryError`]).

/// Why a registry operation was refused. The admin API maps each to its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No such tenant.
    #[error("no tenant named {0:?}")]
    UnknownTenant(String),
    /// No such handler.
    #[error("tenant {tenant:?} has no handler named {handler:?}")]
    UnknownHandler {
        /// The tenant.
        tenant: String,
        /// The handler.
        handler: String,
    },
    /// No such version of the handler.
    #[error("handler {handler:?} has no version {version}")]
    UnknownVersion {
        /// The handler.
        handler: String,
        /// The version asked for.
        version: String,
    },
    /// No such token.
    #[error("tenant {tenant:?} has no token {id:?}")]
    UnknownToken {
        /// The tenant.
        tenant: String,
        /// The token id.
        id: String,
    },
    /// The handler's spec asks for something the tenant was not granted.
    #[error("{what} {value:?} is not granted to tenant {tenant:?}")]
    NotGranted {
        /// The tenant.
        tenant: String,
        /// `topic`, `data source`, `purpose` or `reply topic`.
        what: &'static str,
        /// What was asked for.
        value: String,
    },
    /// Above one of the tenant's limits.
    #[error("{limit} is {value}, above tenant {tenant:?}'s limit of {max}")]
    OverLimit {
        /// The tenant.
        tenant: String,
        /// The limit's name.
        limit: &'static str,
        /// What was asked for.
        value: u64,
        /// The limit.
        max: u64,
    },
    /// The request is malformed: a bad name, topic or value.
    #[error("{0}")]
    Invalid(String),
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The directory cannot be read or written.
    #[error("the registry's directory: {0}")]
    Storage(#[from] std::io::Error),
    /// The registry's Kafka topics cannot be written or read now (the broker is unreachable, or
    /// this replica has not read the registry log recently enough). Nothing was changed, or the
    /// change's outcome is not known yet; retry.
    #[error("the registry is unavailable: {0}")]
    Unavailable(String),
    /// A component's bytes are missing or damaged in the blob topic or the local cache.
    #[error("component {version}: {reason}")]
    Blob {
        /// The version.
        version: String,
        /// What is wrong.
        reason: String,
    },
}
