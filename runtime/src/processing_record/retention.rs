//! What the broker reports of the topics keyhole writes personal data's traces to (replies, dead
//! letters, audit records, receipts): whether each exists, and its `cleanup.policy`,
//! `retention.ms` and `retention.bytes`. Asked once for all of them, within [`TIMEOUT`] per
//! request. A broker that does not implement DescribeConfigs, or reports only the settings made
//! on a topic (tansu), leaves a setting unreported rather than failing the record.

use super::record::BrokerAnswer;
use crate::config::KafkaSettings;
use rdkafka::admin::{AdminClient, AdminOptions, OwnedResourceSpecifier, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Bound on each request to the broker (metadata, then the topics' configurations).
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The broker's answer for each of `topics`.
pub async fn describe(kafka: &KafkaSettings, topics: &BTreeSet<String>) -> BTreeMap<String, BrokerAnswer> {
    if topics.is_empty() {
        return BTreeMap::new();
    }
    match ask(kafka, topics).await {
        Ok(answers) => answers,
        Err(reason) => {
            tracing::warn!(%reason, "The broker did not describe the topics; the record says so.");
            let unavailable = BrokerAnswer::Unavailable { reason };
            topics.iter().map(|topic| (topic.clone(), unavailable.clone())).collect()
        }
    }
}

async fn ask(
    kafka: &KafkaSettings,
    topics: &BTreeSet<String>,
) -> Result<BTreeMap<String, BrokerAnswer>, String> {
    let admin: AdminClient<DefaultClientContext> =
        crate::kafka::client_config(kafka, "keyhole-processing-record")
            .create()
            .map_err(|e| format!("cannot create a Kafka admin client: {e}"))?;
    let admin = Arc::new(admin);
    let existing = existing(&admin).await?;
    let mut answers: BTreeMap<String, BrokerAnswer> = topics
        .iter()
        .filter(|topic| !existing.contains(*topic))
        .map(|topic| (topic.clone(), BrokerAnswer::Missing))
        .collect();
    let present: Vec<&String> = topics.iter().filter(|topic| existing.contains(*topic)).collect();
    if present.is_empty() {
        return Ok(answers);
    }
    let resources: Vec<ResourceSpecifier<'_>> = present.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
    let options = AdminOptions::new().request_timeout(Some(TIMEOUT));
    let described =
        tokio::time::timeout(TIMEOUT + Duration::from_secs(1), admin.describe_configs(&resources, &options))
            .await
            .map_err(|_| format!("the broker did not describe the topics within {} s", TIMEOUT.as_secs()))?
            .map_err(|e| format!("the broker did not describe the topics: {e}"))?;
    // librdkafka answers in the order asked; a described resource names itself all the same.
    for (asked, result) in present.into_iter().zip(described) {
        let (topic, answer) = match result {
            Ok(resource) => {
                let value = |name: &str| resource.get(name).and_then(|entry| entry.value.clone());
                let answer = BrokerAnswer::Described {
                    cleanup_policy: value("cleanup.policy"),
                    retention_ms: value("retention.ms"),
                    retention_bytes: value("retention.bytes"),
                };
                match resource.specifier {
                    OwnedResourceSpecifier::Topic(name) => (name, answer),
                    _ => (asked.clone(), answer),
                }
            }
            Err(code) => (
                asked.clone(),
                BrokerAnswer::Unavailable { reason: format!("the broker did not describe it: {code}") },
            ),
        };
        answers.insert(topic, answer);
    }
    // A topic the broker left out of its answer is not described either.
    for topic in topics {
        answers
            .entry(topic.clone())
            .or_insert_with(|| BrokerAnswer::Unavailable { reason: "the broker did not describe it".into() });
    }
    Ok(answers)
}

/// The topics the cluster has, from its metadata (asked on a blocking thread).
async fn existing(admin: &Arc<AdminClient<DefaultClientContext>>) -> Result<HashSet<String>, String> {
    let admin = admin.clone();
    let metadata = tokio::task::spawn_blocking(move || admin.inner().fetch_metadata(None, TIMEOUT))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("the broker did not answer ({e})"))?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.name().to_string())
        .collect())
}
