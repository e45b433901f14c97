//! The thread that polls a binding's consumer.
//!
//! librdkafka serves a consumer's rebalance callbacks inside its poll, and a revocation must not
//! return before the revoked partitions are drained (their events finished, their offsets
//! stored). Polled from an async task, that wait would block an async worker (it used
//! `block_in_place`, which freezes the task's other branches and cannot work on a
//! current-thread runtime). So each binding's consumer is polled by a thread of its own, as
//! Vector's Kafka source does: the rebalance callback may block it while the binding's events
//! finish on the async workers. Records are read into [`Polled`] on that thread (the envelope
//! parsed, the record copied) and handed over in batches through a bounded channel: a binding
//! at its in-flight limit stops taking them, the channel fills, and the thread stops polling.
//! A batch is whatever librdkafka has ready, up to [`BATCH`] records: handing records over one
//! at a time woke the thread (and the binding's task) once per record, which cost more than
//! reading the record.

use super::dead_letter::Received;
use super::{BindingConsumer, raw_record};
use crate::cloudevents::{self, ReferenceEvent, Refusal};
use rdkafka::Message;
use rdkafka::error::KafkaError;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long one poll waits for a record: the longest the thread takes to notice it should stop.
const POLL: Duration = Duration::from_millis(100);

/// The most records handed over at once.
const BATCH: usize = 32;

/// Batches read ahead of the binding (so at most `HANDOVER * BATCH` records, plus the batch
/// being taken): librdkafka prefetches the rest.
const HANDOVER: usize = 2;

/// A record read from a partition, parsed.
pub struct Polled {
    /// Its topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The record as received, for a dead letter and the key order.
    pub received: Received,
    /// The envelope, or why it was refused.
    pub event: Result<ReferenceEvent, Refusal>,
}

/// A consumer's polling thread and the records it hands over.
pub struct Poller {
    /// What the thread read, in batches, and the rest of the batch being taken; taken one
    /// record at a time by the binding's read loop.
    records: tokio::sync::Mutex<Handover>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Poller {
    /// Starts polling `consumer` for binding `name`.
    pub fn start(name: &str, consumer: Arc<BindingConsumer>) -> std::io::Result<Self> {
        let (sender, records) = mpsc::channel(HANDOVER);
        let stop = Arc::new(AtomicBool::new(false));
        let (stopping, name) = (stop.clone(), name.to_string());
        let thread = std::thread::Builder::new()
            .name("keyhole-poll".into())
            .spawn(move || poll(&name, &consumer, &sender, &stopping))?;
        let records = Handover { batches: records, taking: std::collections::VecDeque::new() };
        Ok(Poller { records: tokio::sync::Mutex::new(records), stop, thread: Some(thread) })
    }

    /// The next record (or consumer error) the thread read; `None` once it stopped.
    pub async fn next(&self) -> Option<Result<Polled, KafkaError>> {
        let mut records = self.records.lock().await;
        loop {
            if let Some(next) = records.taking.pop_front() {
                return Some(next);
            }
            records.taking = records.batches.recv().await?.into();
        }
    }

    /// Stops the thread and waits for it: it lets go of the consumer, which may then be closed.
    /// Blocks for up to one poll (or the revocation the thread is serving): call it on a
    /// blocking thread.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let records = &mut self.records.get_mut().batches;
        // A thread waiting for room in the channel sees it closed.
        records.close();
        while records.try_recv().is_ok() {}
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Poller {
    /// A poller dropped without [`Poller::stop`] (its binding's task was dropped) still stops
    /// its thread, which then lets go of the consumer; nothing waits for it.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.records.get_mut().batches.close();
    }
}

/// The channel of batches and the batch being taken.
struct Handover {
    batches: mpsc::Receiver<Vec<Result<Polled, KafkaError>>>,
    taking: std::collections::VecDeque<Result<Polled, KafkaError>>,
}

fn poll(
    name: &str,
    consumer: &BindingConsumer,
    records: &mpsc::Sender<Vec<Result<Polled, KafkaError>>>,
    stop: &AtomicBool,
) {
    let read = |polled: rdkafka::error::KafkaResult<rdkafka::message::BorrowedMessage<'_>>| {
        polled.map(|message| read(name, &message))
    };
    while !stop.load(Ordering::SeqCst) {
        // Waits for a first record, then takes what else is ready without waiting.
        let Some(first) = consumer.poll(POLL) else { continue };
        let mut batch = Vec::with_capacity(BATCH);
        batch.push(read(first));
        while batch.len() < BATCH {
            match consumer.poll(Duration::ZERO) {
                Some(polled) => batch.push(read(polled)),
                None => break,
            }
        }
        if records.blocking_send(batch).is_err() {
            return; // The binding stopped reading.
        }
    }
}

/// Parses and copies one message.
fn read(name: &str, message: &rdkafka::message::BorrowedMessage<'_>) -> Polled {
    let record = raw_record(message);
    let event = cloudevents::read(&record);
    if let Err(refusal) = &event {
        tracing::warn!(binding = %name, topic = message.topic(), partition = message.partition(),
            offset = message.offset(), event_id = refusal.id.as_deref(), reason = %refusal.error, "Event refused.");
    }
    Polled {
        topic: message.topic().to_string(),
        partition: message.partition(),
        offset: message.offset(),
        received: Received::copy(&record, message.timestamp().to_millis()),
        event,
    }
}
