//! The registry kept in Kafka, shared by every replica (`[registry] store = "kafka"`).
//!
//! Two topics, both one partition and compacted, as Kafka Connect and Schema Registry keep their
//! state: the registry log ([`tail`]), where every change is a [`Command`] record that every
//! replica applies in log order, and the blob topic ([`blob`]), where component bytes are kept
//! in chunks. A write appends its command and returns only once this replica has read it back
//! and applied it: the caller is answered with what the log decided (read-your-writes), and
//! conflicting writes on two replicas end in the same state everywhere. Every command record is
//! signed by the replica that writes it, and applied only when its signature checks out
//! ([`signature`]): writing to the topic is not enough to change the registry.

mod blob;
mod signature;
mod tail;
mod topics;

use super::command::{Applied, Command};
use super::model::{BlobRef, State};
use super::{Catalog, RegistryError};
use crate::config::{KafkaRegistrySettings, KafkaSettings};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use tail::Tail;
use tokio_util::sync::CancellationToken;

/// A command as the registry log carries it, keyed `command/<id>`.
#[derive(Serialize, Deserialize)]
struct Envelope {
    /// Unique per write: how the writing replica finds its own record when it reads it back.
    id: String,
    /// When it was asked (RFC 3339), for people reading the log; an activation is recorded
    /// with it (the same on every replica).
    at: String,
    command: Command,
}

/// The registry's Kafka topics, this replica's view of them, and its writer.
pub(crate) struct KafkaStore {
    settings: KafkaRegistrySettings,
    kafka: KafkaSettings,
    producer: FutureProducer,
    /// Signs the commands this replica writes (the tail verifies every record with it too).
    signer: Arc<signature::Signer>,
    tail: Arc<Tail>,
    /// Stops the tailing tasks.
    stop: CancellationToken,
    /// The tailing tasks: awaited by [`KafkaStore::close`], aborted when the store is dropped.
    tasks: tokio::sync::Mutex<tokio::task::JoinSet<()>>,
}

impl Drop for KafkaStore {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How long [`KafkaStore::close`] waits for the tailing tasks before it aborts them.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

impl KafkaStore {
    /// Checks (or creates) the topics, replays the registry log into `state` and starts tailing
    /// it. Refuses to open when a topic is missing, not compacted or has more than one partition.
    pub async fn open(
        kafka: &KafkaSettings,
        settings: &KafkaRegistrySettings,
        state: Arc<Mutex<State>>,
        catalog: Arc<Catalog>,
    ) -> Result<(Self, tokio::sync::mpsc::Receiver<Announced>), RegistryError> {
        topics::ensure(kafka, settings).await.map_err(RegistryError::Unavailable)?;
        let producer = crate::kafka::producer::own(kafka, "keyhole-registry")
            .map_err(|e| RegistryError::Unavailable(format!("cannot create the registry's producer: {e}")))?;
        let signer =
            signature::Signer::new(settings.signing_keys.clone()).map(Arc::new).ok_or_else(|| {
                RegistryError::Unavailable(
                    "registry.signing_keys is empty: the Kafka store needs a key".into(),
                )
            })?;
        let cancel = CancellationToken::new();
        let (tail, announced, tasks) =
            Tail::start(kafka, settings, state, catalog, signer.clone(), cancel.clone())?;
        // Not replayed: `tasks`, dropped on return, aborts the reading tasks.
        tail.replayed(settings.write_timeout.max(REPLAY_TIMEOUT)).await?;
        let store = KafkaStore {
            settings: settings.clone(),
            kafka: kafka.clone(),
            producer,
            signer,
            tail,
            stop: cancel,
            tasks: tokio::sync::Mutex::new(tasks),
        };
        Ok((store, announced))
    }

    /// Appends `command` to the log and waits until this replica has applied it: the result is
    /// what every replica decided.
    pub async fn submit(&self, command: Command) -> Result<Applied, RegistryError> {
        let id = uuid::Uuid::new_v4().to_string();
        let envelope = Envelope { id: id.clone(), at: super::rules::now(), command };
        let payload = serde_json::to_vec(&envelope).map_err(|e| RegistryError::Invalid(e.to_string()))?;
        let decision = self.tail.await_decision(&id);
        let key = format!("command/{id}");
        let signature = self.signer.sign(key.as_bytes(), &payload);
        let headers = OwnedHeaders::new().insert(Header { key: signature::HEADER, value: Some(&signature) });
        let record =
            FutureRecord::to(&self.settings.topic).key(&key).payload(&payload).headers(headers).partition(0);
        let timeout = self.settings.write_timeout;
        let answer = tokio::time::timeout(timeout, async {
            self.producer.send(record, Timeout::After(timeout)).await.map_err(|(error, _)| {
                RegistryError::Unavailable(format!("the registry log cannot be written: {error}"))
            })?;
            decision.wait().await
        });
        answer.await.unwrap_or_else(|_| {
            Err(RegistryError::Unavailable(format!(
                "the change was not confirmed within {} ms; it may still be applied: read the \
                 resource again before retrying",
                timeout.as_millis()
            )))
        })
    }

    /// Writes a component's bytes to the blob topic; the manifest naming them is written after.
    pub async fn put_blob(&self, version: &str, wasm: &[u8]) -> Result<BlobRef, RegistryError> {
        blob::write(&self.producer, &self.settings, version, wasm).await
    }

    /// Reads a version's bytes back from the blob topic, checked against its digest.
    pub async fn get_blob(&self, version: &str, blob: &BlobRef) -> Result<Vec<u8>, RegistryError> {
        blob::read(&self.kafka, &self.settings, version, blob).await
    }

    /// Tombstones the chunks of versions no longer stored (after their manifests were removed).
    pub async fn forget(&self, removed: &[(String, BlobRef)]) {
        for (version, blob) in removed {
            if let Err(error) = blob::tombstone(&self.producer, &self.settings, version, blob).await {
                tracing::warn!(%version, %error, "Cannot delete a removed version's chunks; they stay in the blob topic.");
            }
        }
    }

    /// `Ok` while this replica has read the registry log to its end within `max_staleness`:
    /// until then it does not accept tenants' tokens, so a revocation made elsewhere is
    /// effective here within that time even when this replica cannot reach the broker.
    pub fn current(&self) -> Result<(), RegistryError> {
        self.tail.current(self.settings.max_staleness)
    }

    /// Waits until this replica has applied every record appended before now, for at most
    /// [`SYNC_TIMEOUT`] (or `write_timeout_ms` if shorter).
    pub async fn sync(&self) -> Result<(), RegistryError> {
        self.tail.sync(self.settings.write_timeout.min(SYNC_TIMEOUT)).await
    }

    /// Stops following the registry log: the tailing tasks end, waited for within
    /// [`CLOSE_TIMEOUT`] and aborted after it.
    pub async fn close(&self) {
        self.stop.cancel();
        let mut tasks = self.tasks.lock().await;
        let ended = tokio::time::timeout(CLOSE_TIMEOUT, async {
            while let Some(ended) = tasks.join_next().await {
                if let Err(error) = ended {
                    tracing::error!(%error, "A task reading the registry log failed.");
                }
            }
        })
        .await;
        if ended.is_err() {
            tracing::warn!("The registry log's reader did not stop in time; aborted.");
            tasks.abort_all();
        }
    }

    /// Wakes whenever a record was applied: the supervisor follows the registry with it.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<i64> {
        self.tail.changes()
    }
}

/// Reads the registry log once, from its beginning to its end, into a state of its own, and
/// stops: for reports (`keyhole processing-record`). Writes nothing: the topics are checked as
/// at start but never created, no producer is made, and the reader is assigned the partition
/// (no consumer group is joined, no offset committed).
pub(crate) async fn read_once(
    kafka: &KafkaSettings,
    settings: &KafkaRegistrySettings,
    catalog: Catalog,
) -> Result<State, RegistryError> {
    let settings = KafkaRegistrySettings { create_topics: false, ..settings.clone() };
    // Nor by asking for them: a broker that creates topics on use would, for a metadata request
    // naming one, unless the client says not to.
    let mut kafka = kafka.clone();
    kafka.properties.insert("allow.auto.create.topics".into(), "false".into());
    let kafka = &kafka;
    topics::ensure(kafka, &settings).await.map_err(RegistryError::Unavailable)?;
    let signer = signature::Signer::new(settings.signing_keys.clone()).map(Arc::new).ok_or_else(|| {
        RegistryError::Unavailable("registry.signing_keys is empty: the Kafka store needs a key".into())
    })?;
    let state = Arc::new(Mutex::new(State::default()));
    let cancel = CancellationToken::new();
    let (tail, _announced, mut tasks) =
        Tail::start(kafka, &settings, state.clone(), Arc::new(catalog), signer, cancel.clone())?;
    let replayed = tail.replayed(settings.write_timeout.max(REPLAY_TIMEOUT)).await;
    cancel.cancel();
    let joined = tokio::time::timeout(CLOSE_TIMEOUT, async { while tasks.join_next().await.is_some() {} });
    if joined.await.is_err() {
        tasks.abort_all();
    }
    replayed?;
    let read = state.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
    Ok(read)
}

/// The longest a request waits for this replica to read the registry log to its end before it
/// is served from what the replica has (or refused, when that is too old).
const SYNC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The longest a replica waits at start to read the registry log to its end.
const REPLAY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// A version that a record made known: this replica fetches and compiles it ahead of its
/// activation.
#[derive(Clone, Debug)]
pub struct Announced {
    /// The tenant.
    pub tenant: String,
    /// The handler.
    pub handler: String,
    /// The version.
    pub version: String,
}
