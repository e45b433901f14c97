//! The record of processing as data: what `--format json` prints, field for field, and what the
//! Markdown is rendered from. Every field is a fact keyhole holds (its configuration, its
//! registry, what the broker reports) or what a binding declared; none is a secret.

use crate::model::declared::{Declared, Transfer};
use serde::Serialize;

/// The format's name and version, the JSON document's first field: a tool reading the record
/// checks it.
pub const FORMAT: &str = "keyhole-processing-record/1";

/// The whole record.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    /// [`FORMAT`].
    pub format: &'static str,
    /// When the record was made (RFC 3339, UTC, seconds).
    pub generated_at: String,
    /// The keyhole version that made it.
    pub keyhole_version: &'static str,
    /// The configuration file it was made from, as named on the command line.
    pub configuration: String,
    /// The controller-side facts every activity shares.
    pub deployment: Deployment,
    /// One per (tenant, handler): configured and uploaded handlers alike, by tenant and name.
    pub activities: Vec<Activity>,
}

/// The keyhole deployment: where it reads and writes, whom it asks for data.
#[derive(Clone, Debug, Serialize)]
pub struct Deployment {
    /// The Kafka cluster.
    pub kafka: Kafka,
    /// Where uploaded handlers are registered; `None` without an `[admin]` section (only the
    /// configured handlers run).
    pub registry: Option<RegistryLocation>,
    /// Where the audit record of every event goes.
    pub audit: Sink,
    /// Where the access receipt of every request to a data owner goes.
    pub receipts: Sink,
    /// The data owners' APIs that references are resolved against.
    pub data_sources: Vec<DataSource>,
}

/// The Kafka cluster keyhole reads references from and writes replies, dead letters and
/// (when so configured) records to.
#[derive(Clone, Debug, Serialize)]
pub struct Kafka {
    /// `kafka.bootstrap_servers`.
    pub bootstrap_servers: String,
    /// librdkafka's `security.protocol` as configured (`plaintext` when not set): whether the
    /// connection is encrypted (`ssl`, `sasl_ssl`) and authenticated (`sasl_*`).
    pub security_protocol: String,
    /// `kafka.group_id`: every activity consumes as `<this>.<tenant>.<handler>`.
    pub consumer_group_prefix: String,
}

/// Where the registry of uploaded handlers is kept.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "store", rename_all = "snake_case")]
pub enum RegistryLocation {
    /// `admin.state_dir`.
    Local {
        /// The directory.
        directory: String,
    },
    /// The registry topics (`[registry] store = "kafka"`).
    Kafka {
        /// The registry log.
        topic: String,
        /// The components' bytes.
        blob_topic: String,
    },
}

/// Where audit records or access receipts go.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "sink", rename_all = "snake_case")]
pub enum Sink {
    /// Nowhere but keyhole's log (audit only: no `audit.path`).
    LogOnly,
    /// Not written at all (receipts in `keyhole dev` and `keyhole demo` only).
    Nowhere,
    /// A JSON-lines file.
    File {
        /// The file.
        path: String,
    },
    /// A Kafka topic.
    Kafka {
        /// The topic.
        topic: String,
        /// What the broker reports of its retention.
        #[serde(flatten)]
        broker: BrokerAnswer,
    },
}

/// A data owner's API.
#[derive(Clone, Debug, Serialize)]
pub struct DataSource {
    /// Its name in the configuration (`[[data_source]] name`).
    pub name: String,
    /// `base_url`: references are paths under it.
    pub base_url: String,
    /// How keyhole identifies itself to the owner: `none`, `bearer_token` or
    /// `client_certificate` (mTLS). Never the credential.
    pub identity: &'static str,
    /// `per_reference` (one request each) or `batched` (`[data_source.batch]`: the references
    /// in flight together for one handler version in one request, each decided on its own).
    pub resolution: &'static str,
}

/// One processing activity: a tenant's handler.
#[derive(Clone, Debug, Serialize)]
pub struct Activity {
    /// The third party the handler belongs to.
    pub tenant: String,
    /// The handler's name.
    pub handler: String,
    /// `configuration` (a `[[handler]]`) or `registry` (uploaded through the admin API).
    pub origin: &'static str,
    /// `configured` (runs whenever keyhole runs with this configuration), `active` (an
    /// uploaded handler with an active version), `inactive` (no version active: processes
    /// nothing) or `not_granted` (its tenant's grant no longer covers its spec: it does not run;
    /// `status_reason` says why).
    pub status: &'static str,
    /// Why, for `not_granted`.
    pub status_reason: Option<String>,
    /// The declared purpose, sent to the data owner with every request.
    pub purpose: String,
    /// The data source its references are resolved against.
    pub data_source: ActivitySource,
    /// The topics of reference events it reads.
    pub topics: Vec<String>,
    /// Its consumer group.
    pub consumer_group: String,
    /// Where its replies are published; `None`: replies are dropped.
    pub reply_topic: Option<String>,
    /// Other topics a request may ask its reply to go to (`replyto`).
    pub reply_topics_allowed: Vec<String>,
    /// Where events that failed for good go, as received (a reference, never resolved data).
    pub dead_letter_topic: String,
    /// `at-least-once`, `at-most-once` or `exactly-once`.
    pub delivery: &'static str,
    /// Its versions: for a configured handler, its component file; for an uploaded one, every
    /// stored version and every version in its activation history.
    pub versions: Vec<Version>,
    /// What the broker reports of the reply, allowed reply and dead-letter topics.
    pub retention: Vec<TopicRetention>,
    /// The safeguards keyhole applies to it; `None` when it cannot run (its data source is not
    /// configured).
    pub safeguards: Option<Safeguards>,
    /// What its `[handler.declared]` or spec declares of what keyhole cannot know.
    pub declared: Declarations,
}

/// A binding's declarations, every field present: `null` is not declared, `[]` declares none.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Declarations {
    /// Categories of data subjects (Art. 30(1)(c)).
    pub data_subjects: Option<Vec<String>>,
    /// Categories of personal data (Art. 30(1)(c)).
    pub data_categories: Option<Vec<String>>,
    /// Recipients outside the tenant (Art. 30(1)(d)).
    pub recipients: Option<Vec<String>>,
    /// Transfers to third countries, each with its safeguard (Art. 30(1)(e)).
    pub transfers: Option<Vec<Transfer>>,
}

impl From<Declared> for Declarations {
    fn from(declared: Declared) -> Self {
        let Declared { data_subjects, data_categories, recipients, transfers } = declared;
        Declarations { data_subjects, data_categories, recipients, transfers }
    }
}

/// The data source of an activity.
#[derive(Clone, Debug, Serialize)]
pub struct ActivitySource {
    /// Its name.
    pub name: String,
    /// Its base URL; `None` when no data source of that name is configured (any more).
    pub base_url: Option<String>,
}

/// A version of a handler: a component, by its digest.
#[derive(Clone, Debug, Serialize)]
pub struct Version {
    /// `sha256:<hex>` of the component: what the data owner sees in `Keyhole-Handler-Version`,
    /// the receipts and the audit records.
    pub version: String,
    /// Whether new events run on it.
    pub active: bool,
    /// Whether the registry still stores it (`false`: deleted, named by the activation history
    /// only).
    pub stored: bool,
    /// The component file, for a configured handler.
    pub component: Option<String>,
    /// When it was uploaded (RFC 3339), for an uploaded version.
    pub uploaded_at: Option<String>,
    /// The component's size, when known.
    pub size_bytes: Option<u64>,
    /// Every time it became active (RFC 3339), oldest first, as far as the history goes.
    pub activated_at: Vec<String>,
}

/// A topic, and what the broker reports of how long it keeps records.
#[derive(Clone, Debug, Serialize)]
pub struct TopicRetention {
    /// The topic.
    pub topic: String,
    /// `reply`, `reply_on_request` (in `reply_topics_allowed`) or `dead_letter`.
    pub role: &'static str,
    /// The broker's answer.
    #[serde(flatten)]
    pub broker: BrokerAnswer,
}

/// What the broker said of a topic's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum BrokerAnswer {
    /// The topic exists and the broker described it. `None`: the broker did not report the
    /// setting (some brokers report only what was set on the topic).
    Described {
        /// `cleanup.policy`: `delete` (records expire), `compact` (the latest per key is kept),
        /// or both.
        cleanup_policy: Option<String>,
        /// `retention.ms`: how long a record is kept, in milliseconds; `-1`: without limit.
        retention_ms: Option<String>,
        /// `retention.bytes`: a partition's size beyond which its oldest records are deleted;
        /// `-1`: without limit.
        retention_bytes: Option<String>,
    },
    /// The topic does not exist (yet): nothing is kept in it, and keyhole cannot write to it.
    Missing,
    /// The broker could not be asked or did not answer.
    Unavailable {
        /// Why.
        reason: String,
    },
}

/// What keyhole does to protect the data of one activity.
#[derive(Clone, Debug, Serialize)]
pub struct Safeguards {
    /// Always true: every event's reference is resolved at the data owner, as this tenant,
    /// handler, purpose and version, when it is processed; data the owner does not release
    /// never reaches the handler.
    pub consent_checked_per_event: bool,
    /// The limits each event's fresh sandbox instance runs under.
    pub sandbox: SandboxLimits,
    /// `withheld` (the handler's logs, output and error messages reach no log or record, only
    /// their sizes) or `forwarded` (they reach keyhole's log, audit records and dead letters).
    pub handler_output: &'static str,
    /// Events read but not finished at most.
    pub max_in_flight: usize,
    /// What happens to an event that failed for good, per stage: `dead-letter`, `retry` or
    /// `stop`.
    pub on_failure: OnFailure,
    /// Attempts of one event at most (each asks the owner again).
    pub max_attempts: u32,
}

/// The sandbox limits of one activity.
#[derive(Clone, Debug, Serialize)]
pub struct SandboxLimits {
    /// Wall-clock time per event.
    pub deadline_ms: u64,
    /// Linear memory per instance.
    pub max_memory_bytes: u64,
    /// Size of a reply's data.
    pub max_reply_bytes: u64,
    /// What the handler may log per event (each of log, stdout, stderr).
    pub max_log_bytes: u64,
}

/// Failure policies per stage.
#[derive(Clone, Debug, Serialize)]
pub struct OnFailure {
    /// A malformed event or a refused reference.
    pub envelope: &'static str,
    /// The data owner failed.
    pub resolve: &'static str,
    /// The handler failed.
    pub handler: &'static str,
    /// The reply could not go where asked.
    pub reply: &'static str,
}
