//! Reading the registry log: every replica reads every record from the beginning, in order, and
//! applies it to its state ([`command::apply`]). The writer of a record learns what it decided
//! here, when its own replica reads it back.

use super::signature::{self, Signer};
use super::{Announced, Envelope};
use crate::config::{KafkaRegistrySettings, KafkaSettings};
use crate::registry::command::{self, Applied, Command};
use crate::registry::model::State;
use crate::registry::{Catalog, RegistryError};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers as _, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How often the log's end is asked for, to know that this replica is current.
const WATERMARK_INTERVAL: Duration = Duration::from_millis(500);

/// How often the staleness gauge is brought up to date: apart from asking for the log's end,
/// which waits for the broker.
const STALENESS_INTERVAL: Duration = Duration::from_secs(1);

/// Versions announced ahead of their activation; more are dropped (they are fetched when
/// activated instead).
const ANNOUNCED_CAPACITY: usize = 64;

type Waiters = HashMap<String, oneshot::Sender<Result<Applied, RegistryError>>>;

/// A started reader: itself, the versions it announces, and its tasks.
pub(super) type Started = (Arc<Tail>, mpsc::Receiver<Announced>, JoinSet<()>);

/// This replica's reader of the registry log.
pub(super) struct Tail {
    topic: String,
    consumer: Arc<StreamConsumer>,
    state: Arc<Mutex<State>>,
    catalog: Arc<Catalog>,
    /// Checks each record's signature before it is applied.
    signer: Arc<Signer>,
    /// This replica's writes waiting to be read back, by record id.
    waiters: Mutex<Waiters>,
    /// The next offset to apply: every record before it is applied.
    applied: watch::Sender<i64>,
    /// When this replica last knew it had applied the whole log.
    current_at: Mutex<Option<Instant>>,
    /// When it started reading: stale since then until it has read the log to its end.
    started: Instant,
    announced: mpsc::Sender<Announced>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Tail {
    /// Starts reading the log from its beginning into `state`, until `cancel`. The reading
    /// tasks are the caller's: it stops them with `cancel` and awaits (or aborts) them.
    pub fn start(
        kafka: &KafkaSettings,
        settings: &KafkaRegistrySettings,
        state: Arc<Mutex<State>>,
        catalog: Arc<Catalog>,
        signer: Arc<Signer>,
        cancel: CancellationToken,
    ) -> Result<Started, RegistryError> {
        let consumer: StreamConsumer = crate::kafka::client_config(kafka, "keyhole-registry-reader")
            // Assigned, never subscribed: the group is never joined and nothing is committed;
            // librdkafka wants a group id all the same.
            .set("group.id", "keyhole-registry-reader")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .create()
            .map_err(|e| RegistryError::Unavailable(format!("cannot create the registry's reader: {e}")))?;
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&settings.topic, 0, Offset::Beginning)
            .and_then(|()| consumer.assign(&assignment))
            .map_err(|e| RegistryError::Unavailable(format!("cannot read {}: {e}", settings.topic)))?;
        // Every reason at 0 from the start: an alert on an increase needs a series to compare.
        for rejected in signature::Rejected::ALL {
            metrics::counter!(crate::telemetry::REGISTRY_RECORDS_REJECTED, "reason" => rejected.label())
                .increment(0);
        }
        let (announced, announcements) = mpsc::channel(ANNOUNCED_CAPACITY);
        let tail = Arc::new(Tail {
            topic: settings.topic.clone(),
            consumer: Arc::new(consumer),
            state,
            catalog,
            signer,
            waiters: Mutex::default(),
            applied: watch::Sender::new(0),
            current_at: Mutex::default(),
            started: Instant::now(),
            announced,
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(tail.clone().read(cancel.clone()));
        tasks.spawn(tail.clone().watch_end(cancel.clone()));
        tasks.spawn(tail.clone().report_staleness(cancel));
        Ok((tail, announcements, tasks))
    }

    /// Waits until the log, as long as it is now, is applied.
    pub async fn replayed(&self, within: Duration) -> Result<(), RegistryError> {
        let started = Instant::now();
        let end = self.end().await?;
        let mut applied = self.applied.subscribe();
        tokio::time::timeout(within.saturating_sub(started.elapsed()), applied.wait_for(|next| *next >= end))
            .await
            .map_err(|_| {
                RegistryError::Unavailable(format!(
                    "{} was not read to its end (offset {end}) within {} s",
                    self.topic,
                    within.as_secs()
                ))
            })?
            .map_err(|_| RegistryError::Unavailable("the registry's reader stopped".into()))?;
        *lock(&self.current_at) = Some(started);
        tracing::info!(topic = %self.topic, records = end, "Registry log replayed.");
        Ok(())
    }

    /// Waits until every record appended before now is applied: a read after this sees every
    /// write any replica confirmed before it.
    pub async fn sync(&self, within: Duration) -> Result<(), RegistryError> {
        let started = Instant::now();
        let end = tokio::time::timeout(within, self.end())
            .await
            .map_err(|_| RegistryError::Unavailable(format!("the end of {} is not known", self.topic)))??;
        let mut applied = self.applied.subscribe();
        match tokio::time::timeout(
            within.saturating_sub(started.elapsed()),
            applied.wait_for(|next| *next >= end),
        )
        .await
        {
            Ok(Ok(_)) => {
                *lock(&self.current_at) = Some(started);
                Ok(())
            }
            _ => Err(RegistryError::Unavailable(format!("{} was not read to its end in time", self.topic))),
        }
    }

    /// Registers a write about to be appended under `id`; its decision arrives when it is read
    /// back.
    pub fn await_decision(self: &Arc<Self>, id: &str) -> Decision {
        let (sender, receiver) = oneshot::channel();
        lock(&self.waiters).insert(id.to_string(), sender);
        Decision { receiver, id: id.to_string(), tail: self.clone() }
    }

    /// `Ok` when the whole log was applied less than `max_staleness` ago.
    pub fn current(&self, max_staleness: Duration) -> Result<(), RegistryError> {
        match *lock(&self.current_at) {
            Some(at) if at.elapsed() <= max_staleness => Ok(()),
            Some(at) => Err(RegistryError::Unavailable(format!(
                "this replica has not read the registry log for {} s (limit: registry.max_staleness_ms)",
                at.elapsed().as_secs()
            ))),
            None => Err(RegistryError::Unavailable("the registry log is not read yet".into())),
        }
    }

    /// The next offset to apply, as it changes.
    pub fn changes(&self) -> watch::Receiver<i64> {
        self.applied.subscribe()
    }

    /// The log's end (its high watermark), asked on a blocking thread.
    async fn end(&self) -> Result<i64, RegistryError> {
        let (consumer, topic) = (self.consumer.clone(), self.topic.clone());
        tokio::task::spawn_blocking(move || consumer.fetch_watermarks(&topic, 0, Duration::from_secs(5)))
            .await
            .map_err(|e| RegistryError::Unavailable(e.to_string()))?
            .map(|(_, high)| high)
            .map_err(|e| {
                RegistryError::Unavailable(format!("cannot read the end of {topic}: {e}", topic = self.topic))
            })
    }

    /// Applies every record as it arrives.
    async fn read(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            let message = tokio::select! {
                () = cancel.cancelled() => return,
                message = self.consumer.recv() => message,
            };
            match message {
                Ok(message) => {
                    let signatures: Vec<&[u8]> = message
                        .headers()
                        .map(|headers| {
                            headers
                                .iter()
                                .filter(|h| h.key == signature::HEADER)
                                .map(|h| h.value.unwrap_or_default())
                                .collect()
                        })
                        .unwrap_or_default();
                    let (key, payload) = (message.key().unwrap_or_default(), message.payload());
                    // A tombstone (no value) changes nothing and needs no signature.
                    let checked = payload.map(|value| self.signer.verify(key, value, &signatures));
                    match checked {
                        Some(Err(rejected)) => self.reject(message.offset(), rejected),
                        _ => self.apply(message.offset(), payload),
                    }
                }
                Err(error) => {
                    tracing::warn!(topic = %self.topic, %error, "Cannot read the registry log; retrying.");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Applies one record and answers its writer, if this replica wrote it. A record that is not
    /// a command (a tombstone, or one a newer keyhole wrote) changes nothing, on every replica.
    fn apply(&self, offset: i64, payload: Option<&[u8]>) {
        let envelope = payload.map(serde_json::from_slice::<Envelope>);
        if let Some(envelope) = envelope {
            match envelope {
                Ok(Envelope { id, at, command }) => {
                    let decision = command::apply(&mut lock(&self.state), &self.catalog, &command, &at);
                    match &decision {
                        Ok(_) => self.announce(&command),
                        Err(refused) => tracing::info!(offset, tenant = command.tenant(), reason = %refused,
                            "A registry change was refused where it landed in the log."),
                    }
                    if let Some(waiter) = lock(&self.waiters).remove(&id) {
                        let _ = waiter.send(decision);
                    }
                }
                Err(error) => tracing::error!(topic = %self.topic, offset, %error,
                    "A registry record is not a command this keyhole knows; skipped (is every replica the same version?)."),
            }
        }
        self.applied.send_replace(offset + 1);
    }

    /// Skips a record whose signature does not check out, on every replica alike: it was not
    /// written by a replica holding a signing key.
    fn reject(&self, offset: i64, rejected: signature::Rejected) {
        metrics::counter!(crate::telemetry::REGISTRY_RECORDS_REJECTED, "reason" => rejected.label())
            .increment(1);
        tracing::error!(topic = %self.topic, offset, reason = %rejected,
            "A registry record is not signed with any of registry.signing_keys; skipped. Someone other than a keyhole replica writes to the registry topic: check its ACLs.");
        self.applied.send_replace(offset + 1);
    }

    fn announce(&self, command: &Command) {
        if let Command::AddVersion { tenant, handler, info, .. } = command {
            let _ = self.announced.try_send(Announced {
                tenant: tenant.clone(),
                handler: handler.clone(),
                version: info.version.clone(),
            });
        }
    }

    /// How long ago this replica last knew it had applied the whole log (since it started
    /// reading, if it never has).
    fn staleness(&self) -> Duration {
        let current_at = *lock(&self.current_at);
        current_at.unwrap_or(self.started).elapsed()
    }

    /// Keeps the staleness gauge (`keyhole_registry_staleness_seconds`) up to date, every
    /// [`STALENESS_INTERVAL`] whether or not the broker answers.
    async fn report_staleness(self: Arc<Self>, cancel: CancellationToken) {
        let gauge = metrics::gauge!(crate::telemetry::REGISTRY_STALENESS);
        loop {
            gauge.set(self.staleness().as_secs_f64());
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(STALENESS_INTERVAL) => {}
            }
        }
    }

    /// Keeps `current_at` fresh: asks for the log's end, and records the time of asking once
    /// everything before that end is applied.
    async fn watch_end(self: Arc<Self>, cancel: CancellationToken) {
        let mut applied = self.applied.subscribe();
        while !cancel.is_cancelled() {
            let asked = Instant::now();
            if let Ok(end) = self.end().await {
                let caught_up =
                    tokio::time::timeout(WATERMARK_INTERVAL * 2, applied.wait_for(|next| *next >= end));
                if let Ok(Ok(_)) = caught_up.await {
                    *lock(&self.current_at) = Some(asked);
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(WATERMARK_INTERVAL) => {}
            }
        }
    }
}

/// A write's decision, once read back. Dropping it (a timed-out request) forgets the write's id.
pub(super) struct Decision {
    receiver: oneshot::Receiver<Result<Applied, RegistryError>>,
    id: String,
    tail: Arc<Tail>,
}

impl Decision {
    /// What the log decided.
    pub async fn wait(mut self) -> Result<Applied, RegistryError> {
        (&mut self.receiver)
            .await
            .unwrap_or_else(|_| Err(RegistryError::Unavailable("the registry's reader stopped".into())))
    }
}

impl Drop for Decision {
    fn drop(&mut self) {
        lock(&self.tail.waiters).remove(&self.id);
    }
}
