//! The operator's configuration: TOML read with serde, then validated as a whole before anything
//! starts. Validation reports every problem at once, each with its key path, and resolves secrets
//! (from environment variables or files) so that a missing one is found before the first event.

use crate::resolve::{DataSourceSettings, Identity};
use crate::sandbox::{Limits, SandboxConfig};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
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
}

fn default_admin_listen() -> String {
    "127.0.0.1:9090".into()
}
fn default_state_dir() -> PathBuf {
    "keyhole-state".into()
}
fn default_max_upload_bytes() -> u64 {
    64 << 20
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
}

impl fmt::Debug for AdminSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminSettings")
            .field("listen", &self.listen)
            .field("operator_token", &self.operator_token_sha256.map(|_| "<redacted>"))
            .field("state_dir", &self.state_dir)
            .field("max_upload_bytes", &self.max_upload_bytes)
            .finish()
    }
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
    /// A JSON-lines file that every decision is appended to. Without it, decisions are only
    /// logged.
    pub path: Option<PathBuf>,
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

/// The default receipts file, relative to the configuration file.
const DEFAULT_RECEIPTS_PATH: &str = "keyhole-receipts.jsonl";

/// `[shutdown]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long in-flight events may take to finish on SIGTERM/SIGINT or partition revocation.
    pub drain_timeout_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { drain_timeout_ms: 30_000 }
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
}

impl Stage {
    /// The stage's name in configuration, logs, audit records and dead-letter headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Envelope => "envelope",
            Stage::Resolve => "resolve",
            Stage::Handler => "handler",
            Stage::Reply => "reply",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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
        }
    }
}

fn default_max_in_flight() -> usize {
    64
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

/// A configuration that passed validation, with secrets resolved and paths made absolute.
#[derive(Clone, Debug)]
pub struct Settings {
    /// librdkafka settings common to every binding's consumer.
    pub kafka: KafkaSettings,
    /// Engine-wide sandbox settings.
    pub sandbox: SandboxConfig,
    /// The audit file, if any.
    pub audit_path: Option<PathBuf>,
    /// Where access receipts go.
    pub receipts: ReceiptSink,
    /// How long draining may take.
    pub drain_timeout: Duration,
    /// The data sources.
    pub data_sources: Vec<DataSourceSettings>,
    /// The bindings.
    pub bindings: Vec<BindingSettings>,
    /// The admin API, when configured.
    pub admin: Option<AdminSettings>,
}

/// Kafka settings after validation.
#[derive(Clone)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub bootstrap_servers: String,
    /// Prefix of consumer group ids.
    pub group_id: String,
    /// This instance's name (see [`KafkaConfig::instance_id`]).
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
}

/// librdkafka properties keyhole sets itself or that would break at-least-once delivery, with
/// the reason given to the operator.
const REFUSED_PROPERTIES: &[(&str, &str)] = &[
    (
        "enable.auto.offset.store",
        "keyhole stores an offset only once that event and every earlier one of its partition are \
         finished; automatic storing would commit events that were never handled",
    ),
    (
        "enable.auto.commit",
        "keyhole relies on librdkafka committing the offsets it stored; turning auto-commit off \
         would never commit them, and on would change nothing",
    ),
    ("group.id", "set kafka.group_id instead (each binding gets its own group under it)"),
    ("bootstrap.servers", "set kafka.bootstrap_servers instead"),
    ("enable.partition.eof", "keyhole consumes without end; partition EOF events are not handled"),
];

impl Config {
    /// Reads and validates a configuration file. Relative paths in it are relative to the file.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let config: Config = toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.validate(base).map_err(|problems| ConfigError::Invalid { path: path.to_path_buf(), problems })
    }

    /// Checks everything and resolves secrets; returns every problem found, not just the first.
    /// Relative component and certificate paths are resolved against `base`.
    pub fn validate(&self, base: &Path) -> Result<Settings, Vec<Problem>> {
        let mut problems = Problems::default();
        let kafka = self.validate_kafka(&mut problems);
        let sources = self.validate_data_sources(base, &mut problems);
        let bindings = self.validate_handlers(base, &sources, &mut problems);
        if self.shutdown.drain_timeout_ms == 0 {
            problems.add("shutdown.drain_timeout_ms", "must be greater than 0");
        }
        if self.sandbox.max_concurrent_instances == 0 {
            problems.add("sandbox.max_concurrent_instances", "must be greater than 0");
        }
        let admin = self.admin.as_ref().and_then(|admin| validate_admin(admin, base, &mut problems));
        let audit_path = self.audit.path.as_ref().map(|p| base.join(p));
        let receipts = self.validate_receipts(base, audit_path.as_deref(), &mut problems);
        problems.into_result(|| Settings {
            admin,
            kafka,
            sandbox: self.sandbox.clone(),
            audit_path,
            receipts,
            drain_timeout: Duration::from_millis(self.shutdown.drain_timeout_ms),
            data_sources: sources.into_iter().flatten().collect(),
            bindings,
        })
    }

    fn validate_kafka(&self, problems: &mut Problems) -> KafkaSettings {
        let k = &self.kafka;
        if k.bootstrap_servers.trim().is_empty() {
            problems.add("kafka.bootstrap_servers", "must list at least one host:port");
        }
        if k.group_id.trim().is_empty() {
            problems.add("kafka.group_id", "must not be empty");
        }
        let mut properties = BTreeMap::new();
        let names = k
            .properties
            .keys()
            .map(|n| ("properties", n))
            .chain(k.secret_properties.keys().map(|n| ("secret_properties", n)));
        for (table, name) in names {
            if let Some((_, reason)) = REFUSED_PROPERTIES.iter().find(|(refused, _)| refused == name) {
                problems.add(format!("kafka.{table}.\"{name}\""), format!("not allowed: {reason}"));
            }
        }
        for (name, value) in &k.properties {
            properties.insert(name.clone(), value.clone());
        }
        for (name, secret) in &k.secret_properties {
            if k.properties.contains_key(name) {
                problems.add(
                    format!("kafka.secret_properties.\"{name}\""),
                    "also set in kafka.properties; set it once",
                );
            }
            match secret.resolve() {
                Ok(value) => {
                    properties.insert(name.clone(), value);
                }
                Err(e) => problems.add(format!("kafka.secret_properties.\"{name}\""), e),
            }
        }
        let instance_id = k.instance_id.clone().unwrap_or_else(host_name);
        if !is_name(&instance_id.to_ascii_lowercase()) {
            problems.add(
                "kafka.instance_id",
                format!("{instance_id:?} must be 1-64 characters of letters, digits, '-', '_' or '.'"),
            );
        }
        KafkaSettings {
            bootstrap_servers: k.bootstrap_servers.clone(),
            group_id: k.group_id.clone(),
            instance_id,
            properties,
            secret_keys: k.secret_properties.keys().cloned().collect(),
        }
    }

    fn validate_receipts(
        &self,
        base: &Path,
        audit_path: Option<&Path>,
        problems: &mut Problems,
    ) -> ReceiptSink {
        let r = &self.receipts;
        match r.sink {
            ReceiptSinkKind::File => {
                if r.topic.is_some() {
                    problems.add("receipts.topic", "is only used with sink = \"kafka\"");
                }
                let path = base.join(r.path.as_deref().unwrap_or(Path::new(DEFAULT_RECEIPTS_PATH)));
                if audit_path == Some(path.as_path()) {
                    problems.add(
                        "receipts.path",
                        "is also audit.path: receipts (one per request) and audit records (one per event) need files of their own",
                    );
                }
                ReceiptSink::File(path)
            }
            ReceiptSinkKind::Kafka => {
                if r.path.is_some() {
                    problems.add("receipts.path", "is only used with sink = \"file\"");
                }
                let topic = r.topic.clone().unwrap_or_default();
                if r.topic.is_none() {
                    problems.add("receipts.topic", "is required with sink = \"kafka\"");
                } else if !is_topic(&topic) {
                    problems.add("receipts.topic", format!("{topic:?} is not a valid topic name"));
                } else if self.handlers.iter().any(|h| h.topics.contains(&topic)) {
                    problems.add(
                        "receipts.topic",
                        format!("{topic:?} is consumed by a handler: receipts are not reference events"),
                    );
                }
                ReceiptSink::Kafka { topic }
            }
        }
    }

    /// One entry per configured source (None where it is invalid), so indices line up.
    fn validate_data_sources(&self, base: &Path, problems: &mut Problems) -> Vec<Option<DataSourceSettings>> {
        let mut seen = HashSet::new();
        self.data_sources
            .iter()
            .enumerate()
            .map(|(i, source)| {
                let at = |key: &str| format!("data_source[{i}].{key}");
                let before = problems.len();
                if !is_name(&source.name) {
                    problems.add(at("name"), "must be 1-64 characters of a-z, 0-9, '-', '_' or '.'");
                } else if !seen.insert(source.name.as_str()) {
                    problems
                        .add(at("name"), format!("another data source is already named {:?}", source.name));
                }
                let base_url = match parse_base_url(&source.base_url) {
                    Ok(url) => Some(url),
                    Err(e) => {
                        problems.add(at("base_url"), e);
                        None
                    }
                };
                if source.timeout_ms == 0 {
                    problems.add(at("timeout_ms"), "must be greater than 0");
                }
                if source.max_response_bytes == 0 {
                    problems.add(at("max_response_bytes"), "must be greater than 0");
                }
                if source.max_concurrent_requests == 0 {
                    problems.add(at("max_concurrent_requests"), "must be greater than 0");
                }
                let identity =
                    validate_identity(&source.identity, base, &|k| at(&format!("identity.{k}")), problems);
                match (base_url, problems.len() == before) {
                    (Some(base_url), true) => Some(DataSourceSettings {
                        name: source.name.clone(),
                        base_url,
                        identity: identity.unwrap_or(Identity::None),
                        timeout: Duration::from_millis(source.timeout_ms),
                        max_response_bytes: source.max_response_bytes,
                        max_concurrent_requests: source.max_concurrent_requests,
                    }),
                    _ => None,
                }
            })
            .collect()
    }

    fn validate_handlers(
        &self,
        base: &Path,
        sources: &[Option<DataSourceSettings>],
        problems: &mut Problems,
    ) -> Vec<BindingSettings> {
        if self.handlers.is_empty() && self.admin.is_none() {
            problems.add(
                "handler",
                "no [[handler]] is configured and no [admin] API to upload one; there is nothing to run",
            );
        }
        let mut seen = HashSet::new();
        let mut bindings = Vec::new();
        for (i, h) in self.handlers.iter().enumerate() {
            let at = |key: &str| format!("handler[{i}].{key}");
            let before = problems.len();
            if !is_name(&h.tenant) {
                problems.add(at("tenant"), "must be 1-64 characters of a-z, 0-9, '-', '_' or '.'");
            }
            if !is_name(&h.name) {
                problems.add(at("name"), "must be 1-64 characters of a-z, 0-9, '-', '_' or '.'");
            } else if !seen.insert((h.tenant.as_str(), h.name.as_str())) {
                problems.add(
                    at("name"),
                    format!("tenant {:?} already has a handler named {:?}", h.tenant, h.name),
                );
            }
            let component = base.join(&h.component);
            if !component.is_file() {
                problems.add(at("component"), format!("{} is not a file", component.display()));
            }
            if h.topics.is_empty() {
                problems.add(at("topics"), "must name at least one topic");
            }
            for (t, topic) in h.topics.iter().enumerate() {
                if !is_topic(topic) {
                    problems.add(
                        at(&format!("topics[{t}]")),
                        format!("{topic:?} is not a valid topic name (1-249 characters of a-z, A-Z, 0-9, '.', '_', '-')"),
                    );
                }
            }
            for (key, topic) in h.reply_topic.iter().map(|t| ("reply_topic".to_string(), t)).chain(
                h.reply_topics_allowed
                    .iter()
                    .enumerate()
                    .map(|(t, topic)| (format!("reply_topics_allowed[{t}]"), topic)),
            ) {
                if !is_topic(topic) {
                    problems.add(at(&key), format!("{topic:?} is not a valid topic name"));
                } else if h.topics.contains(topic) {
                    problems.add(
                        at(&key),
                        format!("{topic:?} is also consumed by this handler: its replies would loop"),
                    );
                }
            }
            let source = self.data_sources.iter().position(|s| s.name == h.data_source);
            match source {
                None => {
                    let known: Vec<&str> = self.data_sources.iter().map(|s| s.name.as_str()).collect();
                    problems.add(
                        at("data_source"),
                        format!(
                            "no data source named {:?} (configured: {})",
                            h.data_source,
                            known.join(", ")
                        ),
                    );
                }
                // The source's own problems are reported under data_source[..].
                Some(index) if sources.get(index).is_some_and(Option::is_none) => {}
                Some(_) => {}
            }
            if h.purpose.trim().is_empty() {
                problems.add(
                    at("purpose"),
                    "must declare the purpose of processing; it is sent to the data owner",
                );
            } else if !h.purpose.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) || h.purpose.len() > 512 {
                problems.add(
                    at("purpose"),
                    "must be at most 512 printable ASCII characters (it travels in an HTTP header)",
                );
            }
            if h.max_in_flight == 0 || h.max_in_flight > 100_000 {
                problems.add(at("max_in_flight"), "must be between 1 and 100000");
            }
            validate_limits(&h.limits, &self.sandbox, &|k| at(&format!("limits.{k}")), problems);
            if h.retry.initial_backoff_ms == 0 || h.retry.max_backoff_ms < h.retry.initial_backoff_ms {
                problems.add(at("retry"), "needs 0 < initial_backoff_ms <= max_backoff_ms");
            }
            if h.retry.max_attempts == 0 {
                problems.add(at("retry.max_attempts"), "must be at least 1");
            }
            if h.retry.max_elapsed_ms == 0 {
                problems.add(at("retry.max_elapsed_ms"), "must be greater than 0");
            }
            if h.on_failure.envelope == FailurePolicy::Retry {
                problems.add(
                    at("on_failure.envelope"),
                    "must be \"dead-letter\" or \"stop\": the same bytes are refused again on every retry",
                );
            }
            let group_id = format!("{}.{}.{}", self.kafka.group_id, h.tenant, h.name);
            let dead_letter_topic =
                h.on_failure.dead_letter_topic.clone().unwrap_or_else(|| format!("{group_id}.dlq"));
            if !is_topic(&dead_letter_topic) {
                problems.add(
                    at("on_failure.dead_letter_topic"),
                    format!("{dead_letter_topic:?} is not a valid topic name"),
                );
            } else if h.topics.contains(&dead_letter_topic) {
                problems.add(
                    at("on_failure.dead_letter_topic"),
                    format!(
                        "{dead_letter_topic:?} is also consumed by this handler: dead letters would loop"
                    ),
                );
            }
            if let (true, Some(data_source)) = (problems.len() == before, source) {
                bindings.push(BindingSettings {
                    name: format!("{}/{}", h.tenant, h.name),
                    tenant: h.tenant.clone(),
                    handler: h.name.clone(),
                    component,
                    topics: h.topics.clone(),
                    group_id,
                    data_source,
                    purpose: h.purpose.clone(),
                    max_in_flight: h.max_in_flight,
                    reply_topic: h.reply_topic.clone(),
                    reply_topics_allowed: h.reply_topics_allowed.clone(),
                    limits: h.limits.clone(),
                    retry: h.retry.clone(),
                    on_failure: FailurePolicies {
                        dead_letter_topic,
                        envelope: h.on_failure.envelope,
                        resolve: h.on_failure.resolve,
                        handler: h.on_failure.handler,
                        reply: h.on_failure.reply,
                    },
                    delivery: h.delivery,
                    guest_output: h.guest_output,
                    key_path: format!("handler[{i}]"),
                });
            }
        }
        bindings
    }
}

fn validate_identity(
    identity: &IdentityConfig,
    base: &Path,
    at: &dyn Fn(&str) -> String,
    problems: &mut Problems,
) -> Option<Identity> {
    match (&identity.bearer_token, &identity.client_certificate, &identity.client_key) {
        (None, None, None) => Some(Identity::None),
        (Some(token), None, None) => match token.resolve() {
            Ok(token) if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) => {
                problems.add(at("bearer_token"), "is empty or has characters a header cannot carry");
                None
            }
            Ok(token) => Some(Identity::Bearer(token)),
            Err(e) => {
                problems.add(at("bearer_token"), e);
                None
            }
        },
        (None, Some(certificate), Some(key)) => {
            let certificate = base.join(certificate);
            let certificate_pem = std::fs::read(&certificate)
                .map_err(|e| {
                    problems
                        .add(at("client_certificate"), format!("cannot read {}: {e}", certificate.display()))
                })
                .ok();
            let key_pem = key.resolve().map_err(|e| problems.add(at("client_key"), e)).ok();
            Some(Identity::ClientCertificate {
                certificate_pem: certificate_pem?,
                key_pem: key_pem?.into_bytes(),
            })
        }
        (None, Some(_), None) | (None, None, Some(_)) => {
            problems.add(at("client_certificate"), "mTLS needs both client_certificate and client_key");
            None
        }
        (Some(_), _, _) => {
            problems.add(
                at("bearer_token"),
                "choose one identity: a bearer token, or a client certificate and key",
            );
            None
        }
    }
}

fn validate_admin(admin: &AdminConfig, base: &Path, problems: &mut Problems) -> Option<AdminSettings> {
    use sha2::Digest as _;
    let listen = admin
        .listen
        .parse()
        .map_err(|_| problems.add("admin.listen", format!("{:?} is not an ip:port address", admin.listen)))
        .ok();
    let operator_token = match admin.operator_token.as_ref().map(Secret::resolve) {
        None => None,
        Some(Ok(token)) if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) => {
            problems.add("admin.operator_token", "must be at least 16 printable ASCII characters, no spaces");
            None
        }
        Some(Ok(token)) => Some(sha2::Sha256::digest(token.as_bytes()).into()),
        Some(Err(e)) => {
            problems.add("admin.operator_token", e);
            None
        }
    };
    if admin.max_upload_bytes == 0 {
        problems.add("admin.max_upload_bytes", "must be greater than 0");
    }
    Some(AdminSettings {
        listen: listen?,
        operator_token_sha256: operator_token,
        state_dir: base.join(&admin.state_dir),
        max_upload_bytes: admin.max_upload_bytes,
    })
}

fn validate_limits(
    limits: &Limits,
    sandbox: &SandboxConfig,
    at: &dyn Fn(&str) -> String,
    problems: &mut Problems,
) {
    if limits.deadline_ms == 0 {
        problems.add(at("deadline_ms"), "must be greater than 0");
    }
    if limits.max_memory_bytes == 0 || limits.max_memory_bytes > sandbox.max_memory_bytes_ceiling {
        problems.add(
            at("max_memory_bytes"),
            format!(
                "must be between 1 and sandbox.max_memory_bytes_ceiling ({})",
                sandbox.max_memory_bytes_ceiling
            ),
        );
    }
    for (key, value) in [
        ("max_instances", u64::from(limits.max_instances)),
        ("max_tables", u64::from(limits.max_tables)),
        ("max_table_elements", u64::from(limits.max_table_elements)),
        ("max_reply_bytes", limits.max_reply_bytes),
    ] {
        if value == 0 {
            problems.add(at(key), "must be greater than 0");
        }
    }
}

/// Parses a data source's base URL: http(s), no credentials, query or fragment; the path is
/// made to end with '/' so that references resolve under it, never beside it.
fn parse_base_url(text: &str) -> Result<url::Url, String> {
    let mut url = url::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("must be an http or https URL, not {}:", url.scheme()));
    }
    if url.host().is_none() {
        return Err("must name a host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials; use identity.bearer_token or a client certificate".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// The host's name: `HOSTNAME` (set by shells and container runtimes), else /etc/hostname.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "keyhole".to_string())
}

pub(crate) fn is_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
}

pub(crate) fn is_topic(topic: &str) -> bool {
    (1..=249).contains(&topic.len())
        && topic != "."
        && topic != ".."
        && topic.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Collects problems; validation goes on after the first.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem { path: path.into(), message: message.into() });
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn into_result<T>(self, ok: impl FnOnce() -> T) -> Result<T, Vec<Problem>> {
        if self.0.is_empty() { Ok(ok()) } else { Err(self.0) }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        toml::from_str(text).unwrap()
    }

    const MINIMAL: &str = r#"
        [kafka]
        bootstrap_servers = "127.0.0.1:9092"
        group_id = "keyhole"

        [[data_source]]
        name = "crm"
        base_url = "http://127.0.0.1:8080/api"
        identity = { bearer_token = { value = "t0ken" } }

        [[handler]]
        name = "echo"
        tenant = "acme"
        component = "Cargo.toml"
        topics = ["refs"]
        data_source = "crm"
        purpose = "testing"
    "#;

    #[test]
    fn a_minimal_config_validates_and_derives_the_group() {
        let settings = parse(MINIMAL).validate(Path::new(".")).unwrap();
        assert_eq!(settings.bindings[0].group_id, "keyhole.acme.echo");
        assert_eq!(settings.data_sources[0].base_url.as_str(), "http://127.0.0.1:8080/api/");
        assert!(matches!(settings.data_sources[0].identity, Identity::Bearer(ref t) if t == "t0ken"));
    }

    #[test]
    fn every_problem_is_reported_with_its_key_path() {
        let text = MINIMAL
            .replace(r#"data_source = "crm""#, r#"data_source = "nope""#)
            .replace(r#"purpose = "testing""#, "purpose = \"\"\n        max_in_flight = 0")
            .replace(
                r#"group_id = "keyhole""#,
                "group_id = \"keyhole\"\n        properties = { \"enable.auto.offset.store\" = \"true\" }",
            );
        let problems = parse(&text).validate(Path::new(".")).unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "kafka.properties.\"enable.auto.offset.store\"",
                "handler[0].data_source",
                "handler[0].purpose",
                "handler[0].max_in_flight"
            ]
        );
        assert!(problems[0].message.contains("never handled"), "{}", problems[0].message);
    }

    #[test]
    fn a_missing_secret_is_found_at_validation() {
        let text = MINIMAL.replace(r#"{ value = "t0ken" }"#, r#"{ env = "KEYHOLE_TEST_SURELY_UNSET" }"#);
        let problems = parse(&text).validate(Path::new(".")).unwrap_err();
        assert_eq!(problems[0].path, "data_source[0].identity.bearer_token");
        assert!(problems[0].message.contains("KEYHOLE_TEST_SURELY_UNSET"));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let error =
            toml::from_str::<Config>(&MINIMAL.replace("purpose =", "purpos = \"x\"\n        purpose ="))
                .unwrap_err();
        assert!(error.to_string().contains("purpos"), "{error}");
    }

    #[test]
    fn base_urls_must_be_plain_http() {
        assert!(parse_base_url("ftp://x/").is_err());
        assert!(parse_base_url("https://user:pw@x/").is_err());
        assert!(parse_base_url("https://x/api?token=1").is_err());
        assert_eq!(parse_base_url("https://x/api").unwrap().path(), "/api/");
    }

    #[test]
    fn receipts_default_to_a_file_beside_the_configuration() {
        let settings = parse(MINIMAL).validate(Path::new(".")).unwrap();
        assert_eq!(settings.receipts, ReceiptSink::File(Path::new(".").join("keyhole-receipts.jsonl")));
    }

    #[test]
    fn a_kafka_receipt_sink_needs_a_topic_no_handler_consumes() {
        let with = |receipts: &str| {
            let text = MINIMAL.replace("[[data_source]]", &format!("{receipts}\n        [[data_source]]"));
            parse(&text).validate(Path::new("."))
        };
        let ok = with("[receipts]\n        sink = \"kafka\"\n        topic = \"receipts\"").unwrap();
        assert_eq!(ok.receipts, ReceiptSink::Kafka { topic: "receipts".into() });
        for (receipts, path) in [
            ("[receipts]\n        sink = \"kafka\"", "receipts.topic"),
            ("[receipts]\n        sink = \"kafka\"\n        topic = \"refs\"", "receipts.topic"),
            ("[receipts]\n        sink = \"kafka\"\n        topic = \"a b\"", "receipts.topic"),
            (
                "[receipts]\n        sink = \"kafka\"\n        topic = \"r\"\n        path = \"x\"",
                "receipts.path",
            ),
            ("[receipts]\n        topic = \"r\"", "receipts.topic"),
            (
                "[audit]\n        path = \"same\"\n        [receipts]\n        path = \"same\"",
                "receipts.path",
            ),
        ] {
            let problems = with(receipts).unwrap_err();
            assert_eq!(problems.iter().map(|p| p.path.as_str()).collect::<Vec<_>>(), [path], "{receipts}");
        }
    }

    #[test]
    fn secrets_are_not_debug_printed() {
        let settings = parse(MINIMAL).validate(Path::new(".")).unwrap();
        assert!(!format!("{settings:?}").contains("t0ken"));
    }
}
