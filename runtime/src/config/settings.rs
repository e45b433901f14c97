//! The configuration after validation: what the rest of keyhole runs on, with secrets resolved,
//! paths made absolute and defaults filled in; and the errors a configuration that fails it gives.

use super::{Delivery, FailurePolicy, GuestOutput, RetryConfig, Stage};
use crate::resolve::DataSourceSettings;
use crate::sandbox::{Limits, SandboxConfig};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// A configuration that passed validation, with secrets resolved and paths made absolute.
#[derive(Clone, Debug)]
pub struct Settings {
    /// librdkafka settings common to every binding's consumer.
    pub kafka: KafkaSettings,
    /// Engine-wide sandbox settings.
    pub sandbox: SandboxConfig,
    /// Where audit records go.
    pub audit: AuditSink,
    /// Where access receipts go.
    pub receipts: ReceiptSink,
    /// How long draining may take.
    pub drain_timeout: Duration,
    /// Bound on the final offset commit at shutdown.
    pub commit_timeout: Duration,
    /// The data sources.
    pub data_sources: Vec<DataSourceSettings>,
    /// The bindings.
    pub bindings: Vec<BindingSettings>,
    /// keyhole's own topics, which no handler or grant may name.
    pub own_topics: crate::model::names::OwnTopics,
    /// The admin API, when configured.
    pub admin: Option<AdminSettings>,
    /// Span export, when a collector is named.
    pub trace_export: Option<crate::telemetry::otlp::TraceExport>,
}

/// Kafka settings after validation.
#[derive(Clone)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub bootstrap_servers: String,
    /// Prefix of consumer group ids.
    pub group_id: String,
    /// This instance's name (see [`KafkaConfig::instance_id`](super::KafkaConfig::instance_id)).
    pub instance_id: String,
    /// Pass-through librdkafka properties, secrets resolved.
    pub properties: BTreeMap<String, String>,
    /// Names of the properties that hold secrets, so they are never printed.
    pub secret_keys: HashSet<String>,
}

impl fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| (k.as_str(), if self.secret_keys.contains(k) { "<redacted>" } else { v.as_str() }))
            .collect();
        f.debug_struct("KafkaSettings")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("group_id", &self.group_id)
            .field("instance_id", &self.instance_id)
            .field("properties", &shown)
            .finish()
    }
}

/// One binding after validation.
#[derive(Clone, Debug)]
pub struct BindingSettings {
    /// `<tenant>/<handler>`, for logs.
    pub name: String,
    /// The tenant.
    pub tenant: String,
    /// The handler's name.
    pub handler: String,
    /// The component file.
    pub component: PathBuf,
    /// Topics consumed.
    pub topics: Vec<String>,
    /// The consumer group: `<kafka.group_id>.<tenant>.<handler>`.
    pub group_id: String,
    /// Index into [`Settings::data_sources`].
    pub data_source: usize,
    /// The declared purpose.
    pub purpose: String,
    /// Maximum events in flight.
    pub max_in_flight: usize,
    /// The default reply topic.
    pub reply_topic: Option<String>,
    /// Topics a request may ask its reply to go to.
    pub reply_topics_allowed: Vec<String>,
    /// Sandbox limits.
    pub limits: Limits,
    /// Retry policy.
    pub retry: RetryConfig,
    /// Failure policies and the dead-letter topic.
    pub on_failure: FailurePolicies,
    /// The delivery guarantee.
    pub delivery: Delivery,
    /// Whether the handler's own text reaches keyhole's logs and records.
    pub guest_output: GuestOutput,
    /// Where this binding was configured (`handler[i]`), to name it in errors found later.
    pub key_path: String,
    /// What its `[[handler]]` declares for the record of processing (`keyhole
    /// processing-record`); the pipeline never reads it. Empty for an uploaded handler: its
    /// spec in the registry holds its declarations.
    pub declared: crate::model::declared::Declared,
}

/// The failure policies of one binding, after validation.
#[derive(Clone, Debug)]
pub struct FailurePolicies {
    /// The dead-letter topic.
    pub dead_letter_topic: String,
    /// Policy per stage.
    pub envelope: FailurePolicy,
    /// Policy per stage.
    pub resolve: FailurePolicy,
    /// Policy per stage.
    pub handler: FailurePolicy,
    /// Policy per stage.
    pub reply: FailurePolicy,
}

impl FailurePolicies {
    /// The policy for a stage.
    pub fn at(&self, stage: Stage) -> FailurePolicy {
        match stage {
            Stage::Envelope => self.envelope,
            Stage::Resolve => self.resolve,
            Stage::Handler => self.handler,
            Stage::Reply => self.reply,
            Stage::Internal => FailurePolicy::DeadLetter,
        }
    }
}

/// The admin API's settings after validation.
#[derive(Clone)]
pub struct AdminSettings {
    /// The listening address.
    pub listen: std::net::SocketAddr,
    /// SHA-256 of the operator's token; the token itself is not kept.
    pub operator_token_sha256: Option<[u8; 32]>,
    /// The registry's directory.
    pub state_dir: PathBuf,
    /// Largest request body.
    pub max_upload_bytes: u64,
    /// Where the probes and metrics are served.
    pub monitoring_listen: std::net::SocketAddr,
    /// Connections the API's listener serves at once.
    pub max_connections: usize,
    /// Time a client has to send a request head.
    pub header_read_timeout: std::time::Duration,
    /// Time a connection may go without sending or reading a byte.
    pub idle_timeout: std::time::Duration,
    /// Where the registry is kept.
    pub registry: RegistryStore,
}

/// Where the registry is kept, after validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryStore {
    /// In `state_dir`.
    Local,
    /// In the Kafka cluster, shared by every replica; `state_dir` caches components.
    Kafka(KafkaRegistrySettings),
}

/// The Kafka registry's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaRegistrySettings {
    /// The registry log.
    pub topic: String,
    /// Component chunks.
    pub blob_topic: String,
    /// Create missing topics at start.
    pub create_topics: bool,
    /// Their replication factor when created.
    pub replication_factor: i32,
    /// How long a write waits to be read back.
    pub write_timeout: std::time::Duration,
    /// How long a replica that cannot read the log accepts tenants' tokens.
    pub max_staleness: std::time::Duration,
    /// Sign and verify registry records; never empty.
    pub signing_keys: Vec<SigningKey>,
}

/// A key that signs and verifies registry records.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey {
    /// Its name, carried in each signature.
    pub id: String,
    /// The HMAC key.
    pub secret: Vec<u8>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey").field("id", &self.id).field("secret", &"<redacted>").finish()
    }
}

impl fmt::Debug for AdminSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminSettings")
            .field("listen", &self.listen)
            .field("operator_token", &self.operator_token_sha256.map(|_| "<redacted>"))
            .field("state_dir", &self.state_dir)
            .field("max_upload_bytes", &self.max_upload_bytes)
            .field("monitoring_listen", &self.monitoring_listen)
            .field("max_connections", &self.max_connections)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("registry", &self.registry)
            .finish()
    }
}

/// Where access receipts go, after validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiptSink {
    /// Appended, one JSON line each, to this file.
    File(PathBuf),
    /// Published to this topic, keyed by the event's subject (else its id), by the binding's
    /// producer (so in an exactly-once binding's transaction).
    Kafka {
        /// The topic.
        topic: String,
    },
    /// Not written. Only `keyhole dev` and `keyhole demo` use it (their fixtures are made-up
    /// data); a configuration file cannot ask for it.
    Discard,
}

/// Where audit records (one per finished event) go, after validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditSink {
    /// Nowhere but the log (no `audit.path`): decisions are only logged.
    LogOnly,
    /// Appended, one JSON line each, to this file.
    File(PathBuf),
    /// Published to this topic, keyed by the event's `<topic>/<partition>`, by the binding's
    /// producer (so in an exactly-once binding's transaction).
    Kafka {
        /// The topic.
        topic: String,
    },
}

impl AuditSink {
    /// The audit file, when records go to one.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            AuditSink::File(path) => Some(path),
            AuditSink::LogOnly | AuditSink::Kafka { .. } => None,
        }
    }
}

/// One problem found in the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where, e.g. `handler[1].data_source`.
    pub path: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Why a configuration cannot be used: every problem at once.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for keyhole.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The file parsed but is not usable.
    #[error("{path}: {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  {}: {}", p.path, p.message)).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

#[cfg(test)]
mod tests {
    use super::{FailurePolicies, FailurePolicy, Stage};

    #[test]
    fn keyholes_own_failure_is_dead_lettered_whatever_the_policies_say() {
        let stop = FailurePolicy::Stop;
        let policies = FailurePolicies {
            dead_letter_topic: "dlq".into(),
            envelope: stop,
            resolve: stop,
            handler: stop,
            reply: stop,
        };
        for stage in Stage::ALL {
            let expected = if stage == Stage::Internal { FailurePolicy::DeadLetter } else { stop };
            assert_eq!(policies.at(stage), expected, "{}", stage.as_str());
        }
    }
}
