//! Component bytes in the blob topic: a component (a Python one is 35-40 MB) cut into chunks
//! that fit the broker's default message size, keyed `<version>/<upload>/<index>`.
//!
//! Chunks are written before the manifest that names them (an `AddVersion` command in the
//! registry log), so no replica ever reads a manifest whose chunks are missing; they are read
//! back by offset, as Redpanda reads its transforms' binaries, and checked against the version's
//! digest. Deleting a version removes its manifest first, then tombstones its chunks.

use crate::config::{KafkaRegistrySettings, KafkaSettings};
use crate::registry::RegistryError;
use crate::registry::model::BlobRef;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use std::time::{Duration, Instant};

/// One chunk's size: half of the broker's and librdkafka's default message size (1 MB), so
/// that the record with its key and headers always fits.
pub(crate) const CHUNK_BYTES: usize = 512 * 1024;

/// How long reading one component back may take.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

fn key(version: &str, upload: &str, index: usize) -> String {
    format!("{version}/{upload}/{index}")
}

/// Writes `wasm` as chunks under a new upload id; returns where they are.
pub(super) async fn write(
    producer: &FutureProducer,
    settings: &KafkaRegistrySettings,
    version: &str,
    wasm: &[u8],
) -> Result<BlobRef, RegistryError> {
    let upload = uuid::Uuid::new_v4().to_string();
    let mut offsets = Vec::with_capacity(wasm.len().div_ceil(CHUNK_BYTES));
    // Sent one at a time, each confirmed: the offsets must be known, in order, before the
    // manifest is written, and a failure part-way leaves only chunks no manifest names.
    for (index, chunk) in wasm.chunks(CHUNK_BYTES).enumerate() {
        let key = key(version, &upload, index);
        let record = FutureRecord::to(&settings.blob_topic).key(&key).payload(chunk).partition(0);
        let delivery =
            producer.send(record, Timeout::After(settings.write_timeout)).await.map_err(|(error, _)| {
                RegistryError::Unavailable(format!("the blob topic cannot be written: {error}"))
            })?;
        offsets.push(delivery.offset);
    }
    Ok(BlobRef { upload, offsets })
}

/// Tombstones a version's chunks.
pub(super) async fn tombstone(
    producer: &FutureProducer,
    settings: &KafkaRegistrySettings,
    version: &str,
    blob: &BlobRef,
) -> Result<(), RegistryError> {
    for index in 0..blob.offsets.len() {
        let key = key(version, &blob.upload, index);
        let record = FutureRecord::<str, [u8]>::to(&settings.blob_topic).key(&key).partition(0);
        producer.send(record, Timeout::After(settings.write_timeout)).await.map_err(|(error, _)| {
            RegistryError::Unavailable(format!("the blob topic cannot be written: {error}"))
        })?;
    }
    Ok(())
}

/// Reads a version's chunks back, on a blocking thread, and checks the whole against `version`.
pub(super) async fn read(
    kafka: &KafkaSettings,
    settings: &KafkaRegistrySettings,
    version: &str,
    blob: &BlobRef,
) -> Result<Vec<u8>, RegistryError> {
    let (kafka, topic, version, blob) =
        (kafka.clone(), settings.blob_topic.clone(), version.to_string(), blob.clone());
    tokio::task::spawn_blocking(move || read_blocking(&kafka, &topic, &version, &blob))
        .await
        .map_err(|e| RegistryError::Unavailable(e.to_string()))?
}

fn read_blocking(
    kafka: &KafkaSettings,
    topic: &str,
    version: &str,
    blob: &BlobRef,
) -> Result<Vec<u8>, RegistryError> {
    let damaged = |reason: String| RegistryError::Blob { version: version.to_string(), reason };
    let (Some(&first), Some(&last)) = (blob.offsets.first(), blob.offsets.last()) else {
        return Err(damaged("its manifest names no chunks".into()));
    };
    let consumer: BaseConsumer = crate::kafka::client_config(kafka, "keyhole-registry-blobs")
        .set("group.id", "keyhole-registry-blobs")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // The end of the partition before the last chunk means chunks are gone: say so at once.
        .set("enable.partition.eof", "true")
        .create()
        .map_err(|e| RegistryError::Unavailable(format!("cannot create a blob reader: {e}")))?;
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Offset(first))
        .and_then(|()| consumer.assign(&assignment))
        .map_err(|e| RegistryError::Unavailable(format!("cannot read {topic}: {e}")))?;
    let mut chunks: Vec<Option<Vec<u8>>> = vec![None; blob.offsets.len()];
    let started = Instant::now();
    let mut missing = chunks.len();
    while missing > 0 {
        if started.elapsed() > READ_TIMEOUT {
            return Err(RegistryError::Unavailable(format!(
                "{topic} was not read within {} s",
                READ_TIMEOUT.as_secs()
            )));
        }
        let Some(message) = consumer.poll(Duration::from_millis(500)) else { continue };
        let message = match message {
            Ok(message) => message,
            Err(rdkafka::error::KafkaError::PartitionEOF(_)) => break,
            Err(e) => return Err(RegistryError::Unavailable(format!("cannot read {topic}: {e}"))),
        };
        let offset = message.offset();
        if offset > last {
            break;
        }
        let Some(index) = blob.offsets.iter().position(|o| *o == offset) else { continue };
        let expected = key(version, &blob.upload, index);
        if message.key() != Some(expected.as_bytes()) {
            return Err(damaged(format!("offset {offset} of {topic} is not its chunk {index}")));
        }
        let payload = message.payload().ok_or_else(|| damaged(format!("chunk {index} was deleted")))?;
        if chunks[index].replace(payload.to_vec()).is_none() {
            missing -= 1;
        }
    }
    if missing > 0 {
        return Err(damaged(format!("{missing} of its {} chunks are gone from {topic}", chunks.len())));
    }
    let wasm: Vec<u8> = chunks.into_iter().flatten().flatten().collect();
    if crate::sandbox::version_of(&wasm) != version {
        return Err(damaged("its chunks do not add up to its digest".into()));
    }
    Ok(wasm)
}
