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
    pub tracker: &'a Arc<OffsetTracker>,
    /// The binding's own token.
    pub cancel: &'a CancellationToken,
}

/// A record read and not yet begun: it holds an in-flight permit but no offset ticket, so a
/// rebalance's drain does not wait for it (see [`Reader::begin`]).
pub struct Read {
    /// The partition's assignment the record was read in.
    generation: u64,
    origin: Origin,
    received: kafka::Received,
    event: Result<cloudevents::ReferenceEvent, cloudevents::Refusal>,
    permit: OwnedSemaphorePermit,
    in_flight: crate::telemetry::InFlight,
}

impl Reader<'_> {
    /// The next record as work holding `permit`; `None` once the binding is cancelled.
    pub async fn next(&self, permit: OwnedSemaphorePermit) -> Option<Work> {
        let mut permit = permit;
        loop {
            let read = self.read(permit).await?;
            match self.begin(read) {
                Ok(work) => return Some(work),
                // Its partition was revoked meanwhile: its next owner reads it.
                Err(returned) => permit = returned,
            }
        }
    }

    /// Begins a record's event: it gets its offset ticket. The record comes back (as its
    /// permit) when its partition was revoked or reassigned since it was read: it is then read
    /// again by the partition's owner, not handled here. Batches read records first and begin
    /// them together, so that a rebalance during a batch never waits for records not yet
    /// handed on.
    pub fn begin(&self, read: Read) -> Result<Work, OwnedSemaphorePermit> {
        let Read { generation, origin, received, event, permit, in_flight } = read;
        match self.tracker.begin_at((origin.topic.clone(), origin.partition), origin.offset, generation) {
            Some(ticket) => {
                if ticket.first_in_assignment {
                    // Where each assignment starts reading, once per partition: after a crash
                    // or a rebalance, compare with the group's committed offset.
                    tracing::info!(binding = %self.name, topic = %origin.topic, partition = origin.partition,
                        offset = origin.offset, "Reading the partition from this offset.");
                }
                Ok(Work { ticket, origin, received, event, permit, in_flight })
            }
            None => Err(permit),
        }
    }

    /// The next record of an assigned partition, holding `permit`; `None` once the binding is
    /// cancelled.
    pub async fn read(&self, permit: OwnedSemaphorePermit) -> Option<Read> {
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
            let Some(generation) = self.tracker.generation(&(origin.topic.clone(), origin.partition)) else {
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
            return Some(Read { generation, origin, received, event, permit, in_flight });
        }
    }
}
