//! The operator's configuration: TOML read with serde, then validated as a whole before anything
//! starts. Validation reports every problem at once, each with its key path, and resolves secrets
//! (from environment variables or files) so that a missing one is found before the first event.

mod bindings;
mod settings;
mod telemetry;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
mod uploaded;
mod validate;

pub(crate) use bindings::{check_batch_path, parse_base_url};
pub use telemetry::TelemetryConfig;
pub use uploaded::UploadedBinding;

pub use settings::{
    AdminSettings, AuditSink, BindingSettings, ConfigError, FailurePolicies, KafkaRegistrySettings,
    KafkaSettings, Problem, ReceiptSink, RegistryStore, Settings, SigningKey,
};

use crate::sandbox::{Limits, SandboxConfig};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The configuration file as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The Kafka cluster.
    pub kafka: KafkaConfig,
    /// Engine-wide sandbox settings.
    #[serde(default)]
    pub sandbox: SandboxConfig,
    /// Where decisions are recorded.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Where access receipts (one per request to a data owner) are written.
    #[serde(default)]
    pub receipts: ReceiptsConfig,
    /// Draining on shutdown and on partition revocation.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// The data owners' APIs that references resolve against.
    #[serde(default, rename = "data_source")]
    pub data_sources: Vec<DataSourceConfig>,
    /// Handlers and what they consume (bindings).
    #[serde(default, rename = "handler")]
    pub handlers: Vec<HandlerConfig>,
    /// The admin API (uploads, grants, metrics, health). Without it, no HTTP server runs.
    pub admin: Option<AdminConfig>,
    /// Where the admin API's registry is kept: `admin.state_dir` (the default) or Kafka.
    #[serde(default)]
    pub registry: RegistryConfig,
    /// Span export over OTLP (off unless a collector is named here or in `OTEL_*` variables).
    #[serde(default)]
    pub telemetry: TelemetryConfig,
}

/// `[registry]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// `local` (in `admin.state_dir`, one instance) or `kafka` (shared by every replica).
    #[serde(default)]
    pub store: RegistryStoreKind,
    /// The registry log: one partition, compacted.
    #[serde(default = "default_registry_topic")]
    pub topic: String,
    /// Component bytes, in chunks: one partition, compacted.
    #[serde(default = "default_blob_topic")]
    pub blob_topic: String,
    /// Create the two topics at start when they do not exist.
    #[serde(default)]
    pub create_topics: bool,
    /// Their replication factor when keyhole creates them.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// How long an admin write waits for its record to be written and read back.
    #[serde(default = "default_write_timeout_ms")]
    pub write_timeout_ms: u64,
    /// How long a replica that cannot read the registry log keeps accepting tenants' tokens: a
    /// revocation is effective everywhere within this time.
    #[serde(default = "default_max_staleness_ms")]
    pub max_staleness_ms: u64,
    /// The keys that sign every registry record (HMAC-SHA256) and verify it before it is
    /// applied; required with `store = "kafka"`. The first signs, every one verifies.
    #[serde(default)]
    pub signing_keys: Vec<SigningKeyConfig>,
}

/// One of `registry.signing_keys`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKeyConfig {
    /// Names the key in each record's signature, so that replicas can hold two during a
    /// rotation.
    pub id: String,
    /// At least 32 bytes, held only by the replicas.
    pub secret: Secret,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            store: RegistryStoreKind::Local,
            topic: default_registry_topic(),
            blob_topic: default_blob_topic(),
            create_topics: false,
            replication_factor: default_replication_factor(),
            write_timeout_ms: default_write_timeout_ms(),
            max_staleness_ms: default_max_staleness_ms(),
            signing_keys: Vec::new(),
        }
    }
}

/// `registry.store`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegistryStoreKind {
    /// `admin.state_dir`.
    #[default]
    Local,
    /// The registry and blob topics.
    Kafka,
}

fn default_registry_topic() -> String {
    "keyhole-registry".into()
}
fn default_blob_topic() -> String {
    "keyhole-registry-blobs".into()
}
fn default_replication_factor() -> i32 {
    3
}
fn default_write_timeout_ms() -> u64 {
    10_000
}
fn default_max_staleness_ms() -> u64 {
    10_000
}

/// `[admin]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address the admin API listens on, e.g. `0.0.0.0:9090`.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// The operator's bearer token (grants tenants, issues their tokens). Without it, operator
    /// endpoints refuse every request.
    pub operator_token: Option<Secret>,
    /// Where the registry (tenants, grants, token hashes, handlers, components) is kept.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Largest request body, whatever a tenant's own limit.
    #[serde(default = "default_max_upload_bytes")]
    pub max_upload_bytes: u64,
    /// Address `/healthz`, `/readyz` and `/metrics` are served on, apart from the API.
    #[serde(default = "default_monitoring_listen")]
    pub monitoring_listen: String,
    /// Connections the API's listener serves at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Time a client has to send a request head, on both listeners.
    #[serde(default = "default_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// Time a connection may go without sending or reading a byte, on both listeners.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
}

fn default_admin_listen() -> String {
    "127.0.0.1:9090".into()
}
fn default_monitoring_listen() -> String {
    "127.0.0.1:9091".into()
}
fn default_max_connections() -> usize {
    512
}
fn default_header_read_timeout_ms() -> u64 {
    10_000
}
fn default_idle_timeout_ms() -> u64 {
    300_000
}
fn default_state_dir() -> PathBuf {
    "keyhole-state".into()
}
fn default_max_upload_bytes() -> u64 {
    64 << 20
}

/// `[kafka]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// Prefix of every binding's consumer group: a binding consumes as `<group_id>.<tenant>.<handler>`.
    pub group_id: String,
    /// This keyhole instance's name, unique among the instances sharing the consumer groups;
    /// an exactly-once binding's `transactional.id` is `<binding's group>.<instance_id>`.
    /// Default: the `HOSTNAME` environment variable (a pod's name), else the host's name.
    pub instance_id: Option<String>,
    /// librdkafka properties passed through as they are (TLS, SASL, tuning).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties whose values are secrets (`sasl.password`, `ssl.key.password`).
    #[serde(default)]
    pub secret_properties: BTreeMap<String, Secret>,
}

/// A secret's source. Written as `{ env = "NAME" }`, `{ file = "/run/secrets/x" }`, or, for
/// local testing only, `{ value = "..." }`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Secret {
    /// Read from an environment variable at start.
    Env(String),
    /// Read from a file at start (trailing newlines are dropped).
    File(PathBuf),
    /// Written into the configuration itself.
    Value(String),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Env(name) => write!(f, "Secret(env {name})"),
            Secret::File(path) => write!(f, "Secret(file {})", path.display()),
            Secret::Value(_) => f.write_str("Secret(value, redacted)"),
        }
    }
}

impl Secret {
    fn resolve(&self) -> Result<String, String> {
        match self {
            Secret::Env(name) => {
                std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))
            }
            Secret::File(path) => std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| format!("cannot read {}: {e}", path.display())),
            Secret::Value(value) => Ok(value.clone()),
        }
    }
}

/// `[audit]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Where audit records go: a JSON-lines file (the default) or a Kafka topic, which outlives
    /// the pod.
    #[serde(default)]
    pub sink: AuditSinkKind,
    /// The file, for `sink = "file"`: every decision is appended to it. Without it, decisions
    /// are only logged.
    pub path: Option<PathBuf>,
    /// The topic, for `sink = "kafka"` (required there).
    pub topic: Option<String>,
}

/// `audit.sink`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditSinkKind {
    /// A JSON-lines file, when `audit.path` names one.
    #[default]
    File,
    /// A Kafka topic.
    Kafka,
}

/// `[receipts]`: one access receipt per request to a data owner, for the owner's records.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptsConfig {
    /// Where receipts go: a JSON-lines file (the default) or a Kafka topic.
    #[serde(default)]
    pub sink: ReceiptSinkKind,
    /// The file, for `sink = "file"`; default `keyhole-receipts.jsonl` beside the configuration.
    pub path: Option<PathBuf>,
    /// The topic, for `sink = "kafka"` (required there).
    pub topic: Option<String>,
}

/// `receipts.sink`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReceiptSinkKind {
    /// A JSON-lines file.
    #[default]
    File,
    /// A Kafka topic.
    Kafka,
}

/// The default receipts file, relative to the configuration file.
const DEFAULT_RECEIPTS_PATH: &str = "keyhole-receipts.jsonl";

/// `[shutdown]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long in-flight events may take to finish on SIGTERM/SIGINT or partition revocation.
    pub drain_timeout_ms: u64,
    /// How long the final offset commit at shutdown may take; a broker that does not answer
    /// within it leaves the last events to be redelivered.
    pub commit_timeout_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { drain_timeout_ms: 30_000, commit_timeout_ms: 5_000 }
    }
}

/// `[[data_source]]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSourceConfig {
    /// Referenced by handlers' `data_source`.
    pub name: String,
    /// Base URL that references are relative to, e.g. `https://crm.example.com/api/v1/`.
    pub base_url: String,
    /// How keyhole identifies itself to the owner.
    #[serde(default)]
    pub identity: IdentityConfig,
    /// Per request, body included.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Larger answers are refused.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: u64,
    /// Requests in flight to this owner at once, across all handlers.
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// Send a bearer token over plain `http` to a host other than loopback. Off: the token, the
    /// references and the released data would cross the network in clear.
    #[serde(default)]
    pub allow_plaintext_credentials: bool,
    /// Batched resolution: the owner's batch endpoint (docs/data-owners.md). Without it, one
    /// request per reference.
    #[serde(default)]
    pub batch: Option<BatchConfig>,
}

/// `[data_source.batch]`: resolve the references in flight together in one request.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// The batch endpoint, relative to `base_url` (e.g. `"batch"`).
    pub path: String,
    /// The most references in one request (2-256).
    #[serde(default = "default_batch_max_references")]
    pub max_references: usize,
    /// How long the first reference waits for others (0-100 ms).
    #[serde(default = "default_batch_max_wait_ms")]
    pub max_wait_ms: u64,
}

fn default_batch_max_references() -> usize {
    16
}
fn default_batch_max_wait_ms() -> u64 {
    2
}

fn default_timeout_ms() -> u64 {
    5_000
}
fn default_max_response_bytes() -> u64 {
    1 << 20
}
fn default_max_concurrent_requests() -> usize {
    32
}

/// `[data_source.identity]`: a bearer token, or an mTLS client certificate and key.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Sent as `Authorization: Bearer <token>`.
    pub bearer_token: Option<Secret>,
    /// PEM client certificate (chain) for mTLS.
    pub client_certificate: Option<PathBuf>,
    /// PEM (PKCS#8) private key for mTLS.
    pub client_key: Option<Secret>,
}

/// `[[handler]]`: one binding of a handler component to topics.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerConfig {
    /// Unique within the tenant.
    pub name: String,
    /// The third party that owns the handler.
    pub tenant: String,
    /// The component file (`.wasm`).
    pub component: PathBuf,
    /// Topics of reference events to consume.
    pub topics: Vec<String>,
    /// The `[[data_source]]` references resolve against.
    pub data_source: String,
    /// The declared purpose of processing, sent to the data owner with every request.
    pub purpose: String,
    /// Events read but not yet finished, at most; fetching pauses at this number.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Where the handler's replies are published. Without it, a reply is logged and dropped.
    pub reply_topic: Option<String>,
    /// Other topics a request may name in its `replyto` attribute; any other is refused.
    #[serde(default)]
    pub reply_topics_allowed: Vec<String>,
    /// Sandbox limits for each call.
    #[serde(default)]
    pub limits: Limits,
    /// Retries of transient failures.
    #[serde(default)]
    pub retry: RetryConfig,
    /// What happens to an event that failed for good, per stage.
    #[serde(default)]
    pub on_failure: FailureConfig,
    /// The delivery guarantee: `at-least-once` (default), `at-most-once` or `exactly-once`.
    #[serde(default)]
    pub delivery: Delivery,
    /// What becomes of the handler's own text (its logs, stdout/stderr and error messages),
    /// which may be derived from the personal data it was given.
    #[serde(default)]
    pub guest_output: GuestOutput,
    /// For the record of processing (`keyhole processing-record`), what keyhole cannot know:
    /// whose data, which kinds, who else receives the results, transfers to third countries.
    #[serde(default)]
    pub declared: crate::model::declared::Declared,
}

fn default_max_in_flight() -> usize {
    64
}

/// How a binding acknowledges what it consumed. See docs/delivery.md.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// An event's offset is committed after it was handled and its reply or dead letter was
    /// confirmed: nothing is lost, a crash can deliver an event again.
    #[default]
    AtLeastOnce,
    /// An event's offset is committed before it is handled: nothing is delivered twice, a crash
    /// can lose the events in flight.
    AtMostOnce,
    /// Replies, dead letters and consumed offsets are written in one Kafka transaction.
    ExactlyOnce,
}

impl Delivery {
    /// The name used in configuration and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::AtLeastOnce => "at-least-once",
            Delivery::AtMostOnce => "at-most-once",
            Delivery::ExactlyOnce => "exactly-once",
        }
    }
}

pub use crate::sandbox::GuestOutput;

/// `[handler.on_failure]`: per stage, what happens to an event that failed for good.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailureConfig {
    /// Where dead letters go; default `<kafka.group_id>.<tenant>.<handler>.dlq`.
    pub dead_letter_topic: Option<String>,
    /// A malformed envelope or a refused reference (`dead-letter` or `stop`: retrying the same
    /// bytes cannot help).
    pub envelope: FailurePolicy,
    /// The data owner failed: unavailable past the retry limits, or an answer keyhole cannot use.
    pub resolve: FailurePolicy,
    /// The handler failed: its own error, a trap, a limit, or retryable failures past the limits.
    pub handler: FailurePolicy,
    /// The reply cannot be published where the request asked (`replyto` not allowed).
    pub reply: FailurePolicy,
}

impl Default for FailureConfig {
    fn default() -> Self {
        FailureConfig {
            dead_letter_topic: None,
            envelope: FailurePolicy::DeadLetter,
            resolve: FailurePolicy::DeadLetter,
            handler: FailurePolicy::DeadLetter,
            reply: FailurePolicy::DeadLetter,
        }
    }
}

/// What happens to an event that failed for good at one stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// Publish the event as received, with error headers, to the dead-letter topic; go on.
    DeadLetter,
    /// Retry with backoff without end: the event's key (and, at the limit, its partition) waits.
    Retry,
    /// Stop the binding without acknowledging the event; the other bindings go on.
    Stop,
}

/// The stage an event failed at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Reading the envelope and checking the reference.
    Envelope,
    /// Asking the data owner.
    Resolve,
    /// Running the handler.
    Handler,
    /// Publishing the reply.
    Reply,
    /// keyhole itself failed on the event (a bug: handling it panicked). Always dead lettered,
    /// whatever `on_failure` says: reading it again would fail again, and stopping would stop
    /// the binding on keyhole's bug rather than on the event.
    Internal,
}

impl Stage {
    /// Every stage, in the order an event passes them.
    pub const ALL: [Stage; 5] =
        [Stage::Envelope, Stage::Resolve, Stage::Handler, Stage::Reply, Stage::Internal];

    /// The stage's name in configuration, logs, audit records and dead-letter headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Envelope => "envelope",
            Stage::Resolve => "resolve",
            Stage::Handler => "handler",
            Stage::Reply => "reply",
            Stage::Internal => "internal",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[handler.retry]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// First backoff delay.
    pub initial_backoff_ms: u64,
    /// Largest backoff delay (a data owner's `Retry-After` may ask for more, up to 5 minutes).
    pub max_backoff_ms: u64,
    /// Attempts of an event that meets transient failures (the owner unavailable, the
    /// handler's `retryable` error, a deadline, a full pool) before its stage's failure policy
    /// applies. The owner is asked again on every attempt, so consent is checked again.
    pub max_attempts: u32,
    /// Time from an event's first attempt after which no new attempt starts and its stage's
    /// failure policy applies.
    pub max_elapsed_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_backoff_ms: 100,
            max_backoff_ms: 30_000,
            max_attempts: 10,
            max_elapsed_ms: 300_000,
        }
    }
}

impl RetryConfig {
    /// [`RetryConfig::max_elapsed_ms`] as a duration.
    pub fn max_elapsed(&self) -> Duration {
        Duration::from_millis(self.max_elapsed_ms)
    }
}
