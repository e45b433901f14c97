//! Reads a binding's records into [`Work`]: each record is tracked for its offset, read as a
//! CloudEvent (or refused, keeping its id), and counted in flight until it is finished.

use super::dispatcher::Work;
use crate::cloudevents;
use crate::kafka::{self, BindingConsumer, OffsetTracker};
use crate::records::audit::Origin;
use crate::telemetry::BindingMetrics;
use rdkafka::Message;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

/// Reads a binding's records.
pub struct Reader<'a> {
    /// The binding's name, for logs.
    pub name: &'a str,
    /// The binding's metric handles.
    pub metrics: &'a BindingMetrics,
    /// The binding's consumer.
    pub consumer: &'a Arc<BindingConsumer>,
    /// Its partitions' offsets.
    pub tracker: &'a OffsetTracker,
    /// The binding's own token.
    pub cancel: &'a CancellationToken,
}

impl Reader<'_> {
    /// The next record as work holding `permit`; `None` once the binding is cancelled.
    pub async fn next(&self, permit: OwnedSemaphorePermit) -> Option<Work> {
        loop {
            let message = tokio::select! {
                biased;
                () = self.cancel.cancelled() => return None,
                message = self.consumer.recv() => message,
            };
            let message = match message {
                Ok(message) => {
                    self.metrics.consumed.increment(1);
                    message
                }
                Err(error) => {
                    tracing::warn!(binding = %self.name, %error, "Kafka consumer error.");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let origin = Origin {
                topic: message.topic().to_string(),
                partition: message.partition(),
                offset: message.offset(),
            };
            let Some(ticket) = self.tracker.begin((origin.topic.clone(), origin.partition), origin.offset)
            else {
                continue; // Its partition was revoked meanwhile: its next owner reads it.
            };
            let record = kafka::raw_record(&message);
            let event = cloudevents::read(&record);
            if let Err(refusal) = &event {
                tracing::warn!(binding = %self.name, topic = %origin.topic, partition = origin.partition,
                    offset = origin.offset, event_id = refusal.id.as_deref(), reason = %refusal.error, "Event refused.");
            }
            let received = kafka::Received::copy(&record, message.timestamp().to_millis());
            let in_flight = self.metrics.in_flight();
            return Some(Work { ticket, origin, received, event, permit, in_flight });
        }
    }
}
