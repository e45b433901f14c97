//! Runs a handler on fixtures through the real pipeline, with nothing else running: an in-process
//! Kafka cluster (librdkafka's mock cluster), an in-process sample data owner, and the same
//! `app::run` that `keyhole run` uses. This is `keyhole dev` and `keyhole demo`.

pub mod fixtures;
pub mod owner;
pub mod report;

use crate::app;
use crate::client::publish::{self, ReferenceEventSpec};
use crate::config::{
    BindingSettings, Delivery, FailurePolicies, FailurePolicy, KafkaSettings, ReceiptSink, RetryConfig,
    Settings,
};
use crate::records::audit::Outcome;
use crate::resolve::{DataSourceSettings, Identity};
use crate::sandbox::{GuestOutput, SandboxConfig};
use fixtures::{EventEntry, Fixtures};
use owner::{Consent, SampleOwner};
use rdkafka::mocking::MockCluster;
use std::path::Path;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The topic the simulator publishes to.
const TOPIC: &str = "references";
/// Where failed fixtures are dead lettered.
const DEAD_LETTER_TOPIC: &str = "references.dlq";
/// Attempts of an event that meets a retryable failure.
const DEV_ATTEMPTS: u32 = 3;

/// One fixture event and what keyhole decided for it.
#[derive(Debug)]
pub struct EventResult {
    /// The event as the fixtures describe it.
    pub event: EventEntry,
    /// What keyhole decided.
    pub outcome: Outcome,
}

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// The in-process Kafka cluster failed.
    #[error("the in-process Kafka cluster failed: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Publishing a fixture event failed.
    #[error("cannot publish a fixture event: {0}")]
    Publish(#[from] publish::PublishError),
    /// The sample data owner could not start.
    #[error("the sample data owner cannot start: {0}")]
    Owner(#[from] std::io::Error),
    /// The pipeline refused to start (an invalid handler, say) or failed.
    #[error(transparent)]
    Pipeline(#[from] app::RunError),
    /// Not every event was decided in time.
    #[error("only {decided} of {expected} events were decided within {waited:?}")]
    TimedOut {
        /// Decided events.
        decided: usize,
        /// Published events.
        expected: usize,
        /// How long the simulator waited.
        waited: Duration,
    },
}

/// Publishes the fixture events and runs `handler` on them through the real pipeline; returns
/// one result per event, in publishing order.
pub async fn run(handler: &Path, fixtures: &Fixtures) -> Result<Vec<EventResult>, SimulateError> {
    let cluster = MockCluster::new(1)?;
    cluster.create_topic(TOPIC, 1, 1)?;
    cluster.create_topic(DEAD_LETTER_TOPIC, 1, 1)?;
    // Withdrawn consent was granted when the event was published, and withdrawn before keyhole
    // consumes it: publish first, then withdraw.
    let owner = SampleOwner::start(fixtures.records.iter().cloned().map(|mut record| {
        if record.consent == Consent::Withdrawn {
            record.consent = Consent::Granted;
        }
        record
    }))
    .await?;
    let producer = publish::producer(&cluster.bootstrap_servers(), &[])?;
    for event in &fixtures.events {
        let spec = ReferenceEventSpec {
            id: event.id.clone(),
            source: event.source.clone(),
            type_: event.type_.clone(),
            subject: event.subject.clone(),
            time: event.time.clone(),
            dataref: event.dataref.clone(),
            partition_key: event.key.clone(),
            correlation_id: event.correlationid.clone(),
            reply_to: None,
        };
        publish::send(&producer, TOPIC, &spec, Duration::from_secs(10)).await?;
    }
    for record in fixtures.records.iter().filter(|r| r.consent == Consent::Withdrawn) {
        owner.set_consent(&record.path, Consent::Withdrawn);
    }

    let settings = settings(&cluster.bootstrap_servers(), owner.base_url(), handler, fixtures);
    let (tap, mut outcomes) = mpsc::channel(fixtures.events.len().max(1));
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(app::run(settings, Some(tap), async {
        let _ = stopped.await;
    }));

    // Every event can take its deadline times its attempts, plus time to start.
    let per_event = fixtures.limits.deadline() * DEV_ATTEMPTS + Duration::from_secs(2);
    let waited =
        Duration::from_secs(20) + per_event * u32::try_from(fixtures.events.len()).unwrap_or(u32::MAX);
    let mut decided: Vec<Outcome> = Vec::new();
    let deadline = tokio::time::Instant::now() + waited;
    while decided.len() < fixtures.events.len() {
        match tokio::time::timeout_at(deadline, outcomes.recv()).await {
            Ok(Some(outcome)) => decided.push(outcome),
            // The pipeline ended: it failed to start, or stopped; its result says why.
            Ok(None) => break,
            Err(_) => break,
        }
    }
    let _ = stop.send(());
    match running.await {
        Ok(Err(error)) => return Err(error.into()),
        Ok(Ok(())) => {}
        Err(join) => {
            return Err(SimulateError::Pipeline(app::RunError::Binding {
                binding: "dev".into(),
                message: join.to_string(),
            }));
        }
    }
    if decided.len() < fixtures.events.len() {
        return Err(SimulateError::TimedOut {
            decided: decided.len(),
            expected: fixtures.events.len(),
            waited,
        });
    }
    // One partition: an event's offset is its place in the fixtures.
    decided.sort_by_key(|o| o.origin.offset);
    Ok(fixtures
        .events
        .iter()
        .cloned()
        .zip(decided)
        .map(|(event, outcome)| EventResult { event, outcome })
        .collect())
}

fn settings(bootstrap: &str, owner: url::Url, handler: &Path, fixtures: &Fixtures) -> Settings {
    let mut properties = std::collections::BTreeMap::new();
    properties.insert("fetch.wait.max.ms".to_string(), "10".to_string());
    Settings {
        admin: None,
        own_topics: crate::model::names::OwnTopics::new("keyhole-dev"),
        trace_export: None,
        kafka: KafkaSettings {
            bootstrap_servers: bootstrap.to_string(),
            group_id: "keyhole-dev".into(),
            instance_id: "dev".into(),
            properties,
            secret_keys: Default::default(),
        },
        sandbox: SandboxConfig::default(),
        audit: crate::config::AuditSink::LogOnly,
        // Fixtures are made-up data, and the report shows every decision: no receipts.
        receipts: ReceiptSink::Discard,
        drain_timeout: Duration::from_secs(5),
        commit_timeout: Duration::from_secs(5),
        data_sources: vec![DataSourceSettings {
            name: "sample-owner".into(),
            base_url: owner,
            identity: Identity::Bearer(owner::SAMPLE_TOKEN.into()),
            timeout: Duration::from_secs(5),
            max_response_bytes: 1 << 20,
            max_concurrent_requests: 16,
            batch: None,
        }],
        bindings: vec![BindingSettings {
            name: "dev/handler".into(),
            tenant: "dev".into(),
            handler: "handler".into(),
            component: handler.to_path_buf(),
            topics: vec![TOPIC.into()],
            group_id: "keyhole-dev.dev.handler".into(),
            data_source: 0,
            purpose: "keyhole dev".into(),
            max_in_flight: 16,
            reply_topic: None,
            reply_topics_allowed: Vec::new(),
            limits: fixtures.limits.clone(),
            retry: RetryConfig {
                initial_backoff_ms: 10,
                max_backoff_ms: 100,
                max_attempts: DEV_ATTEMPTS,
                ..RetryConfig::default()
            },
            on_failure: FailurePolicies {
                dead_letter_topic: DEAD_LETTER_TOPIC.into(),
                envelope: FailurePolicy::DeadLetter,
                resolve: FailurePolicy::DeadLetter,
                handler: FailurePolicy::DeadLetter,
                reply: FailurePolicy::DeadLetter,
            },
            delivery: Delivery::AtLeastOnce,
            // Fixtures are made-up data: the handler author sees everything the handler wrote.
            guest_output: GuestOutput::Forward,
            key_path: "--handler".into(),
            declared: Default::default(),
        }],
    }
}
