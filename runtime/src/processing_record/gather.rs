//! Gathering the record: the configuration's facts, the registry's handlers (read, never
//! written), the configured components' digests, and what the broker reports of the topics.
//! Only what keyhole holds goes in, and of a credential only its kind.

use super::record::{
    Activity, ActivitySource, BrokerAnswer, DataSource, Deployment, FORMAT, Kafka, OnFailure, Record,
    RegistryLocation, Safeguards, SandboxLimits, Sink, TopicRetention, Version,
};
use super::{RecordError, retention};
use crate::config::{
    AuditSink, BindingSettings, FailurePolicy, GuestOutput, ReceiptSink, RegistryStore, Settings,
    UploadedBinding,
};
use crate::model::names;
use crate::registry::{Catalog, HandlerEntry, Snapshot};
use crate::resolve::Identity;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// Makes the record of `settings` (read from the file `configuration`) and the registry it
/// names.
pub async fn gather(settings: &Settings, configuration: &str) -> Result<Record, RecordError> {
    let mut activities = Vec::new();
    for binding in &settings.bindings {
        let component = component_version(binding.component.clone()).await?;
        activities.push(configured(settings, binding, component));
    }
    if let Some(admin) = &settings.admin {
        let snapshot = Snapshot::read(admin, &settings.kafka, Catalog::of(settings)).await?;
        activities.extend(snapshot.handlers().iter().map(|entry| uploaded(settings, entry)));
    }
    activities.sort_by(|a, b| (&a.tenant, &a.handler).cmp(&(&b.tenant, &b.handler)));

    // One request for every topic the record reports on.
    let mut topics: BTreeSet<String> =
        activities.iter().flat_map(|a| a.retention.iter().map(|r| r.topic.clone())).collect();
    let sinks = [sink_topic_of_audit(&settings.audit), sink_topic_of_receipts(&settings.receipts)];
    topics.extend(sinks.iter().flatten().cloned());
    let answers = retention::describe(&settings.kafka, &topics).await;
    let answer = |topic: &str| {
        answers.get(topic).cloned().unwrap_or(BrokerAnswer::Unavailable { reason: "not asked".into() })
    };
    for activity in &mut activities {
        for topic in &mut activity.retention {
            topic.broker = answer(&topic.topic);
        }
    }
    let sink = |kafka_topic: Option<String>, otherwise: Sink| match kafka_topic {
        Some(topic) => Sink::Kafka { broker: answer(&topic), topic },
        None => otherwise,
    };
    let audit = sink(
        sink_topic_of_audit(&settings.audit),
        match &settings.audit {
            AuditSink::File(path) => Sink::File { path: path.display().to_string() },
            AuditSink::LogOnly | AuditSink::Kafka { .. } => Sink::LogOnly,
        },
    );
    let receipts = sink(
        sink_topic_of_receipts(&settings.receipts),
        match &settings.receipts {
            ReceiptSink::File(path) => Sink::File { path: path.display().to_string() },
            ReceiptSink::Discard | ReceiptSink::Kafka { .. } => Sink::Nowhere,
        },
    );

    Ok(Record {
        format: FORMAT,
        generated_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        keyhole_version: env!("CARGO_PKG_VERSION"),
        configuration: configuration.to_string(),
        deployment: Deployment {
            kafka: Kafka {
                bootstrap_servers: settings.kafka.bootstrap_servers.clone(),
                security_protocol: settings
                    .kafka
                    .properties
                    .get("security.protocol")
                    .cloned()
                    .unwrap_or_else(|| "plaintext".into()),
                consumer_group_prefix: settings.kafka.group_id.clone(),
            },
            registry: settings.admin.as_ref().map(|admin| match &admin.registry {
                RegistryStore::Local => {
                    RegistryLocation::Local { directory: admin.state_dir.display().to_string() }
                }
                RegistryStore::Kafka(kafka) => RegistryLocation::Kafka {
                    topic: kafka.topic.clone(),
                    blob_topic: kafka.blob_topic.clone(),
                },
            }),
            audit,
            receipts,
            data_sources: settings
                .data_sources
                .iter()
                .map(|source| DataSource {
                    name: source.name.clone(),
                    base_url: source.base_url.to_string(),
                    identity: match source.identity {
                        Identity::None => "none",
                        Identity::Bearer(_) => "bearer_token",
                        Identity::ClientCertificate { .. } => "client_certificate",
                    },
                    resolution: if source.batch.is_some() { "batched" } else { "per_reference" },
                })
                .collect(),
        },
        activities,
    })
}

fn sink_topic_of_audit(audit: &AuditSink) -> Option<String> {
    match audit {
        AuditSink::Kafka { topic } => Some(topic.clone()),
        AuditSink::LogOnly | AuditSink::File(_) => None,
    }
}

fn sink_topic_of_receipts(receipts: &ReceiptSink) -> Option<String> {
    match receipts {
        ReceiptSink::Kafka { topic } => Some(topic.clone()),
        ReceiptSink::File(_) | ReceiptSink::Discard => None,
    }
}

/// A configured handler's component: its digest and size (the file read on a blocking thread).
async fn component_version(path: PathBuf) -> Result<Version, RecordError> {
    let read = tokio::task::spawn_blocking({
        let path = path.clone();
        move || std::fs::read(path)
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()));
    let wasm =
        read.and_then(|read| read).map_err(|source| RecordError::Component { path: path.clone(), source })?;
    Ok(Version {
        version: crate::sandbox::version_of(&wasm),
        active: true,
        stored: true,
        component: Some(path.display().to_string()),
        uploaded_at: None,
        size_bytes: Some(wasm.len() as u64),
        activated_at: Vec::new(),
    })
}

/// A `[[handler]]`'s activity.
fn configured(settings: &Settings, binding: &BindingSettings, component: Version) -> Activity {
    let mut activity = activity_of(settings, binding);
    activity.origin = "configuration";
    activity.status = "configured";
    activity.versions = vec![component];
    activity.declared = binding.declared.clone().into();
    activity
}

/// An uploaded handler's activity: bound as the supervisor binds it (`engine/supervisor.rs`,
/// `binding_settings`), what the spec leaves out taken from the tenant's limits.
fn uploaded(settings: &Settings, entry: &HandlerEntry) -> Activity {
    let spec = &entry.spec;
    let binding = settings.uploaded_binding(UploadedBinding {
        tenant: &entry.tenant,
        handler: &entry.handler,
        component: PathBuf::new(),
        topics: spec.topics.clone(),
        data_source: &spec.data_source,
        purpose: spec.purpose.clone(),
        max_in_flight: spec.max_in_flight.unwrap_or(entry.limits.max_in_flight),
        reply_topic: spec.reply_topic.clone(),
        deadline_ms: spec.deadline_ms.unwrap_or(entry.limits.max_deadline_ms),
        max_memory_bytes: spec.max_memory_bytes.unwrap_or(entry.limits.max_memory_bytes),
    });
    let mut activity = match &binding {
        Ok(binding) => activity_of(settings, binding),
        // Its data source is not configured (any more): it cannot run, and its grant says so.
        Err(_) => {
            let group = names::group_id(&settings.kafka.group_id, &entry.tenant, &entry.handler);
            let dead_letter_topic = names::default_dead_letter_topic(&group);
            Activity {
                tenant: entry.tenant.clone(),
                handler: entry.handler.clone(),
                origin: "registry",
                status: "not_granted",
                status_reason: None,
                purpose: spec.purpose.clone(),
                data_source: ActivitySource { name: spec.data_source.clone(), base_url: None },
                topics: spec.topics.clone(),
                consumer_group: group,
                reply_topic: spec.reply_topic.clone(),
                reply_topics_allowed: Vec::new(),
                retention: retention_of(spec.reply_topic.as_ref(), &[], &dead_letter_topic),
                dead_letter_topic,
                delivery: crate::config::Delivery::AtLeastOnce.as_str(),
                versions: Vec::new(),
                safeguards: None,
                declared: Default::default(),
            }
        }
    };
    activity.origin = "registry";
    (activity.status, activity.status_reason) = match (&entry.active, &entry.not_granted, &binding) {
        (None, _, _) => ("inactive", None),
        (Some(_), Some(reason), _) => ("not_granted", Some(reason.clone())),
        (Some(_), None, Err(reason)) => ("not_granted", Some(reason.clone())),
        (Some(_), None, Ok(_)) => ("active", None),
    };
    activity.versions = versions_of(entry);
    activity.declared = spec.declared.clone().into();
    activity
}

/// The stored versions, oldest first, then the versions the activation history names that are
/// no longer stored; each with the times it became active.
fn versions_of(entry: &HandlerEntry) -> Vec<Version> {
    let mut activated: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for activation in &entry.activations {
        activated.entry(&activation.version).or_default().push(activation.at.clone());
    }
    let mut versions: Vec<Version> = entry
        .versions
        .iter()
        .map(|info| Version {
            version: info.version.clone(),
            active: entry.active.as_ref() == Some(&info.version),
            stored: true,
            component: None,
            uploaded_at: Some(info.uploaded_at.clone()),
            size_bytes: Some(info.size_bytes),
            activated_at: activated.get(info.version.as_str()).cloned().unwrap_or_default(),
        })
        .collect();
    for activation in &entry.activations {
        if !versions.iter().any(|v| v.version == activation.version) {
            versions.push(Version {
                version: activation.version.clone(),
                active: false,
                stored: false,
                component: None,
                uploaded_at: None,
                size_bytes: None,
                activated_at: activated.get(activation.version.as_str()).cloned().unwrap_or_default(),
            });
        }
    }
    versions
}

/// What a binding's settings say, for either origin.
fn activity_of(settings: &Settings, binding: &BindingSettings) -> Activity {
    let source = settings.data_sources.get(binding.data_source);
    let policy = |policy: FailurePolicy| match policy {
        FailurePolicy::DeadLetter => "dead-letter",
        FailurePolicy::Retry => "retry",
        FailurePolicy::Stop => "stop",
    };
    let dead_letter_topic = binding.on_failure.dead_letter_topic.clone();
    Activity {
        tenant: binding.tenant.clone(),
        handler: binding.handler.clone(),
        origin: "configuration",
        status: "configured",
        status_reason: None,
        purpose: binding.purpose.clone(),
        data_source: ActivitySource {
            name: source.map(|s| s.name.clone()).unwrap_or_default(),
            base_url: source.map(|s| s.base_url.to_string()),
        },
        topics: binding.topics.clone(),
        consumer_group: binding.group_id.clone(),
        reply_topic: binding.reply_topic.clone(),
        reply_topics_allowed: binding.reply_topics_allowed.clone(),
        retention: retention_of(
            binding.reply_topic.as_ref(),
            &binding.reply_topics_allowed,
            &dead_letter_topic,
        ),
        dead_letter_topic,
        delivery: binding.delivery.as_str(),
        versions: Vec::new(),
        safeguards: Some(Safeguards {
            consent_checked_per_event: true,
            sandbox: SandboxLimits {
                deadline_ms: binding.limits.deadline_ms,
                max_memory_bytes: binding.limits.max_memory_bytes,
                max_reply_bytes: binding.limits.max_reply_bytes,
                max_log_bytes: binding.limits.max_log_bytes,
            },
            handler_output: match binding.guest_output {
                GuestOutput::Withhold => "withheld",
                GuestOutput::Forward => "forwarded",
            },
            max_in_flight: binding.max_in_flight,
            on_failure: OnFailure {
                envelope: policy(binding.on_failure.envelope),
                resolve: policy(binding.on_failure.resolve),
                handler: policy(binding.on_failure.handler),
                reply: policy(binding.on_failure.reply),
            },
            max_attempts: binding.retry.max_attempts,
        }),
        declared: Default::default(),
    }
}

/// The topics an activity writes to, each once, the broker's answer still to come.
fn retention_of(reply: Option<&String>, allowed: &[String], dead_letter: &str) -> Vec<TopicRetention> {
    let mut topics: Vec<TopicRetention> = Vec::new();
    let roles = reply
        .map(|t| (t.as_str(), "reply"))
        .into_iter()
        .chain(allowed.iter().map(|t| (t.as_str(), "reply_on_request")))
        .chain(std::iter::once((dead_letter, "dead_letter")));
    for (topic, role) in roles {
        if !topics.iter().any(|t| t.topic == topic) {
            topics.push(TopicRetention {
                topic: topic.to_string(),
                role,
                broker: BrokerAnswer::Unavailable { reason: "not asked".into() },
            });
        }
    }
    topics
}
