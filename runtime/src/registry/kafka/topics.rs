//! The two topics' shape, checked at start: each exists, has one partition (the log's order is
//! the registry's order) and is compacted (deleting a version frees its bytes, and nothing
//! expires with time). Confluent Schema Registry refuses to start on a `_schemas` topic that is
//! not compacted; keyhole does the same, or creates the topics when the operator allows it.

use crate::config::{KafkaRegistrySettings, KafkaSettings};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Checks both topics; creates the missing ones when `create_topics` is set. The error says
/// what is wrong and how to fix it.
pub(super) async fn ensure(kafka: &KafkaSettings, settings: &KafkaRegistrySettings) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> =
        crate::kafka::client_config(kafka, "keyhole-registry-admin")
            .create()
            .map_err(|e| format!("cannot create a Kafka admin client: {e}"))?;
    let admin = std::sync::Arc::new(admin);
    for topic in [&settings.topic, &settings.blob_topic] {
        let partitions = partitions(&admin, topic).await?;
        match partitions {
            Some(_) => {}
            None if settings.create_topics => create(&admin, topic, settings.replication_factor).await?,
            None => {
                return Err(format!(
                    "topic {topic} does not exist: create it with one partition and \
                     cleanup.policy=compact (see docs/cluster.md), or set registry.create_topics = true"
                ));
            }
        }
        if let Some(n) = partitions.filter(|n| *n != 1) {
            return Err(format!("topic {topic} has {n} partitions; the registry needs exactly one"));
        }
        check_compacted(&admin, topic).await?;
    }
    Ok(())
}

/// The topic's partition count; `None` when it does not exist.
async fn partitions(
    admin: &std::sync::Arc<AdminClient<DefaultClientContext>>,
    topic: &str,
) -> Result<Option<usize>, String> {
    let (admin, name) = (admin.clone(), topic.to_string());
    let metadata = tokio::task::spawn_blocking(move || admin.inner().fetch_metadata(Some(&name), TIMEOUT))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("the Kafka cluster did not answer: {e}"))?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else { return Ok(None) };
    match found.error() {
        None if !found.partitions().is_empty() => Ok(Some(found.partitions().len())),
        _ => Ok(None),
    }
}

async fn create(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    replication: i32,
) -> Result<(), String> {
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(replication))
        .set("cleanup.policy", "compact")
        .set("retention.ms", "-1");
    let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    let results =
        admin.create_topics([&new], &options).await.map_err(|e| format!("cannot create {topic}: {e}"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(format!("cannot create {topic}: {code}")),
        }
    }
    tracing::info!(%topic, replication, "Registry topic created (one partition, compacted).");
    Ok(())
}

async fn check_compacted(admin: &AdminClient<DefaultClientContext>, topic: &str) -> Result<(), String> {
    let options = AdminOptions::new().request_timeout(Some(TIMEOUT));
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &options)
        .await
        .map_err(|e| format!("cannot read {topic}'s configuration: {e}"))?;
    let resource = described
        .into_iter()
        .next()
        .ok_or_else(|| format!("the cluster did not describe {topic}"))?
        .map_err(|code| format!("cannot read {topic}'s configuration: {code}"))?;
    let policy = resource.get("cleanup.policy").and_then(|entry| entry.value.clone()).unwrap_or_default();
    if !policy.split(',').any(|p| p.trim() == "compact") {
        return Err(format!(
            "topic {topic} has cleanup.policy={policy:?}: the registry needs a compacted topic, or \
             its records would expire (set cleanup.policy=compact; see docs/cluster.md)"
        ));
    }
    Ok(())
}
