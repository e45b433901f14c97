//! Reading receipts where keyhole wrote them: JSON-lines files, line by line, and a receipts
//! topic, every partition from its beginning to its end. Each line or record is handed on as
//! [`Value`] with its place, and not kept: the caller keeps what it needs of it.

use super::record::{MAX_RECORD_BYTES, Value};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead as _;
use std::path::Path;
use std::time::{Duration, Instant};

/// A receipts topic and how to reach it.
#[derive(Clone, Debug)]
pub struct TopicSource {
    /// Kafka's bootstrap servers.
    pub bootstrap_servers: String,
    /// The receipts topic.
    pub topic: String,
    /// librdkafka properties (security settings and the like), `name`, `value`.
    pub properties: Vec<(String, String)>,
    /// How long reading the whole topic may take.
    pub timeout: Duration,
}

/// What was read of a topic, besides its records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicRead {
    /// Each partition's first offset when reading began (its low watermark): above 0, records
    /// before it were deleted (retention, or a request to delete them).
    pub first_offsets: BTreeMap<i32, i64>,
}

/// Why a source could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A file cannot be opened or read.
    #[error("cannot read {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The topic cannot be read.
    #[error("cannot read the topic {topic}: {reason}")]
    Topic {
        /// The topic.
        topic: String,
        /// Why.
        reason: String,
    },
    /// The topic was not read to its end in time.
    #[error(
        "the topic {topic} was not read to its end within {} s (partitions {partitions:?} not at their end; \
         last error: {last_error}); raise --timeout",
        timeout.as_secs()
    )]
    TimedOut {
        /// The topic.
        topic: String,
        /// The limit.
        timeout: Duration,
        /// The partitions not read to their end.
        partitions: Vec<i32>,
        /// What the client last said, if anything.
        last_error: String,
    },
    /// The caller stopped reading (it holds as many receipts as it may).
    #[error("{0}")]
    Stopped(String),
}

/// Reads `path` line by line, handing `each` the line's number (from 1) and its bytes without
/// the newline. A line longer than [`MAX_RECORD_BYTES`] is handed on as [`Value::TooLong`], and
/// only that much of it is ever held. A last line without a newline is a line.
pub fn read_file(
    path: &Path,
    mut each: impl FnMut(u64, Value<'_>) -> Result<(), SourceError>,
) -> Result<(), SourceError> {
    let error = |source| SourceError::File { path: path.display().to_string(), source };
    let file = std::fs::File::open(path).map_err(error)?;
    let mut reader = std::io::BufReader::with_capacity(64 * 1024, file);
    let mut line: Vec<u8> = Vec::new();
    // The line's length so far, also past what is held.
    let mut length: u64 = 0;
    let mut number: u64 = 0;
    loop {
        let buffer = match reader.fill_buf() {
            Ok(buffer) => buffer,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(error(e)),
        };
        if buffer.is_empty() {
            if length > 0 {
                number += 1;
                each(number, value(&line, length))?;
            }
            return Ok(());
        }
        let (part, ends) = match buffer.iter().position(|&b| b == b'\n') {
            Some(at) => (&buffer[..at], true),
            None => (buffer, false),
        };
        let room = (MAX_RECORD_BYTES + 1).saturating_sub(line.len());
        line.extend_from_slice(&part[..part.len().min(room)]);
        length += part.len() as u64;
        let consumed = part.len() + usize::from(ends);
        reader.consume(consumed);
        if ends {
            number += 1;
            each(number, value(&line, length))?;
            line.clear();
            length = 0;
        }
    }
}

fn value(line: &[u8], length: u64) -> Value<'_> {
    if length > MAX_RECORD_BYTES as u64 { Value::TooLong(length) } else { Value::Bytes(line) }
}

/// Reads every partition of the topic from its beginning (`read_uncommitted`: receipts written
/// in transactions that were later aborted are part of their chains) until it reaches the
/// partition's end, handing `each` the partition, the offset and the value. The end is where the
/// client finds it, at or after the end when reading began (a record written meanwhile may be
/// read too). Blocks; gives up after the source's timeout.
pub fn read_topic(
    source: &TopicSource,
    mut each: impl FnMut(i32, i64, Value<'_>) -> Result<(), SourceError>,
) -> Result<TopicRead, SourceError> {
    let topic = source.topic.as_str();
    let failed = |reason: String| SourceError::Topic { topic: topic.to_string(), reason };
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &source.bootstrap_servers)
        .set("client.id", "keyhole-receipts")
        // Bounds what the client fetches ahead: records are handed on one at a time.
        .set("queued.max.messages.kbytes", "16384");
    for (name, value) in &source.properties {
        config.set(name, value);
    }
    // After the caller's properties: verification depends on these.
    config
        // Assigned, never subscribed: no group is joined and nothing is committed; librdkafka
        // wants a group id all the same.
        .set("group.id", "keyhole-receipts-verify")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_uncommitted");
    let consumer: BaseConsumer = config.create().map_err(|e| failed(e.to_string()))?;
    let deadline = Instant::now() + source.timeout;
    let remaining = || deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(10));
    let metadata = consumer.fetch_metadata(Some(topic), remaining()).map_err(|e| failed(e.to_string()))?;
    let Some(described) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(failed("the broker does not describe it".into()));
    };
    if let Some(error) = described.error() {
        return Err(failed(format!("{:?}", rdkafka::types::RDKafkaErrorCode::from(error))));
    }
    let partitions: Vec<i32> = described.partitions().iter().map(|p| p.id()).collect();
    if partitions.is_empty() {
        return Err(failed("it has no partitions".into()));
    }
    let mut read = TopicRead::default();
    let mut assignment = TopicPartitionList::new();
    let mut open: BTreeSet<i32> = BTreeSet::new();
    for &partition in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, remaining())
            .map_err(|e| failed(format!("partition {partition}: {e}")))?;
        read.first_offsets.insert(partition, low);
        if high > low {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .map_err(|e| failed(e.to_string()))?;
            open.insert(partition);
        }
    }
    if open.is_empty() {
        return Ok(read);
    }
    consumer.assign(&assignment).map_err(|e| failed(e.to_string()))?;
    let mut last_error = String::from("none");
    while !open.is_empty() {
        if Instant::now() >= deadline {
            return Err(SourceError::TimedOut {
                topic: topic.to_string(),
                timeout: source.timeout,
                partitions: open.into_iter().collect(),
                last_error,
            });
        }
        let Some(polled) = consumer.poll(Duration::from_millis(200)) else { continue };
        match polled {
            Ok(message) => {
                let partition = message.partition();
                // A partition already at its end: what comes now was written after reading began.
                if !open.contains(&partition) {
                    continue;
                }
                let value = match message.payload() {
                    None => Value::Missing,
                    Some(bytes) if bytes.len() > MAX_RECORD_BYTES => Value::TooLong(bytes.len() as u64),
                    Some(bytes) => Value::Bytes(bytes),
                };
                each(partition, message.offset(), value)?;
            }
            Err(KafkaError::PartitionEOF(partition)) => {
                open.remove(&partition);
            }
            Err(KafkaError::MessageConsumption(code)) if fatal(code) => {
                return Err(failed(format!("{code:?}")));
            }
            // Transport errors and the like: the client retries on its own, until the deadline.
            Err(error) => last_error = error.to_string(),
        }
    }
    Ok(read)
}

/// Errors that no retry mends.
fn fatal(code: rdkafka::types::RDKafkaErrorCode) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        code,
        Code::TopicAuthorizationFailed
            | Code::GroupAuthorizationFailed
            | Code::ClusterAuthorizationFailed
            | Code::SaslAuthenticationFailed
            | Code::UnknownTopicOrPartition
            | Code::UnknownTopic
            | Code::UnknownPartition
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn lines_of(content: &[u8]) -> Vec<(u64, Result<Vec<u8>, u64>)> {
        let path = std::env::temp_dir().join(format!("keyhole-proof-source-{}", uuid::Uuid::new_v4()));
        std::fs::write(&path, content).unwrap();
        let mut got = Vec::new();
        read_file(&path, |number, value| {
            got.push((
                number,
                match value {
                    Value::Bytes(bytes) => Ok(bytes.to_vec()),
                    Value::TooLong(length) => Err(length),
                    Value::Missing => panic!("a file has no missing values"),
                },
            ));
            Ok(())
        })
        .unwrap();
        std::fs::remove_file(&path).ok();
        got
    }

    #[test]
    fn lines_are_numbered_from_one_without_their_newline() {
        assert_eq!(lines_of(b""), vec![]);
        assert_eq!(lines_of(b"a\n"), vec![(1, Ok(b"a".to_vec()))]);
        assert_eq!(
            lines_of(b"a\n\nb\r\n"),
            vec![(1, Ok(b"a".to_vec())), (2, Ok(b"".to_vec())), (3, Ok(b"b\r".to_vec()))]
        );
    }

    #[test]
    fn a_last_line_without_its_newline_is_a_line() {
        assert_eq!(lines_of(b"a\n{\"torn"), vec![(1, Ok(b"a".to_vec())), (2, Ok(b"{\"torn".to_vec()))]);
    }

    #[test]
    fn a_huge_line_is_measured_not_held_and_the_next_line_is_read() {
        let mut content = vec![b'x'; 3 * MAX_RECORD_BYTES + 17];
        content.extend_from_slice(b"\nafter\n");
        content.extend(vec![b'y'; MAX_RECORD_BYTES + 1]);
        let got = lines_of(&content);
        assert_eq!(
            got,
            vec![
                (1, Err(3 * MAX_RECORD_BYTES as u64 + 17)),
                (2, Ok(b"after".to_vec())),
                (3, Err(MAX_RECORD_BYTES as u64 + 1)),
            ]
        );
        // Exactly the limit is still a line.
        let exact = vec![b'z'; MAX_RECORD_BYTES];
        assert_eq!(lines_of(&exact), vec![(1, Ok(exact.clone()))]);
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let error = read_file(Path::new("/nonexistent/receipts.jsonl"), |_, _| Ok(())).unwrap_err();
        assert!(error.to_string().contains("/nonexistent/receipts.jsonl"), "{error}");
    }
}
