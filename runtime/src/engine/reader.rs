//! Reads a binding's records into [`Work`]: each record is tracked for its offset, read as a
//! CloudEvent (or refused, keeping its id), and counted in flight until it is finished.

use super::dispatcher::Work;
use crate::cloudevents;
use crate::kafka::{self, BindingConsumer, OffsetTracker, Polled, Poller, TopicPartition};
use crate::model::Origin;
use crate::telemetry::BindingMetrics;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

/// Reads a binding's records.
pub struct Reader<'a> {
    /// The binding's name, for logs.
    pub name: &'a str,
    /// The binding's metric handles.
    pub metrics: &'a BindingMetrics,
    /// The binding's consumer (for its commits and seeks; records come from `poller`).
    pub consumer: &'a Arc<BindingConsumer>,
    /// The thread polling it.
    pub poller: &'a Poller,
    /// Partitions rewound ([`Reader::rewound`]) and the offset each was rewound to.
    pub rewinds: &'a Rewinds,
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
        match self.tracker.begin_at(
            TopicPartition::new(origin.topic.clone(), origin.partition),
            origin.offset,
            generation,
        ) {
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
            let polled = tokio::select! {
                biased;
                () = self.cancel.cancelled() => return None,
                polled = self.poller.next() => polled?,
            };
            let Polled { topic, partition, offset, received, event } = match polled {
                Ok(polled) => {
                    self.metrics.consumed.increment(1);
                    polled
                }
                Err(error) => {
                    tracing::warn!(binding = %self.name, %error, "Kafka consumer error.");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let key = TopicPartition::new(topic, partition);
            let Some(generation) = self.tracker.generation(&key) else {
                continue; // Its partition was revoked meanwhile: its next owner reads it.
            };
            if self.rewinds.stale(&key, offset, generation) {
                continue; // Read before its partition was rewound: it comes again from there.
            }
            let origin = Origin { topic: key.topic, partition, offset };
            let in_flight = self.metrics.in_flight();
            return Some(Read { generation, origin, received, event, permit, in_flight });
        }
    }

    /// The binding rewound `partition` to `offset` (after an aborted transaction, in the
    /// partition's current assignment): records the polling thread read from it before are
    /// dropped until `offset` comes again.
    pub fn rewound(&self, partition: TopicPartition, offset: i64) {
        let Some(generation) = self.tracker.generation(&partition) else { return };
        let mut rewinds = self.rewinds.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        rewinds.insert(partition, (offset, generation));
    }
}

/// Partitions rewound and not yet read again from where they were rewound to, with the
/// assignment they were rewound in.
#[derive(Default)]
pub struct Rewinds(Mutex<HashMap<TopicPartition, (i64, u64)>>);

impl Rewinds {
    /// Whether a record of `partition` at `offset`, read in assignment `generation`, was read
    /// before the partition was rewound: the first record at the offset it was rewound to ends
    /// the rewind, and so does a new assignment (it reads from the committed offset).
    fn stale(&self, partition: &TopicPartition, offset: i64, generation: u64) -> bool {
        let mut rewinds = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match rewinds.get(partition) {
            Some(&(to, rewound_in)) if rewound_in == generation && offset != to => true,
            Some(_) => {
                rewinds.remove(partition);
                false
            }
            None => false,
        }
    }
}
