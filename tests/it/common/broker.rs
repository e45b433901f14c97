//! The Kafka-protocol broker the tests run against (tansu, started by scripts/test.sh), and
//! helpers to create topics, publish reference events and read committed offsets.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::time::Duration;

/// The broker's address, from scripts/test.sh (without it, the test binary stops and says what
/// to run).
pub fn bootstrap() -> String {
    super::prerequisite("KEYHOLE_TEST_BROKER")
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), rand::random::<u32>())
}

/// Creates a topic with `partitions` partitions and returns its name.
pub async fn create_topic(partitions: i32) -> String {
    let name = unique("refs");
    create_named_topic(&name, partitions).await;
    name
}

/// Creates a topic of the given name.
pub async fn create_named_topic(name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap()).create().unwrap();
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let results = admin.create_topics([&topic], &AdminOptions::new()).await.unwrap();
    for result in results {
        result.unwrap_or_else(|(topic, e)| panic!("create {topic}: {e}"));
    }
}

/// An idempotent producer, as a data owner would run.
pub fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true")
        .set("linger.ms", "1")
        .create()
        .unwrap()
}

/// The binary-mode headers of a reference event.
pub fn reference(id: &str, dataref: &str) -> Vec<(String, Vec<u8>)> {
    vec![
        ("ce_specversion".into(), b"1.0".to_vec()),
        ("ce_id".into(), id.as_bytes().to_vec()),
        ("ce_source".into(), b"https://crm.example.com/customers".to_vec()),
        ("ce_type".into(), b"com.example.customer.updated".to_vec()),
        ("ce_time".into(), b"2026-11-23T10:00:00Z".to_vec()),
        ("ce_dataref".into(), dataref.as_bytes().to_vec()),
    ]
}

/// Reference-event headers with another `ce_type` (the leaky guest chooses its ending by it).
pub fn with_type(mut headers: Vec<(String, Vec<u8>)>, type_: &str) -> Vec<(String, Vec<u8>)> {
    for (name, value) in &mut headers {
        if name == "ce_type" {
            *value = type_.as_bytes().to_vec();
        }
    }
    headers
}

/// Publishes a record to partition `partition` (or by key when None) and waits for the ack.
pub async fn publish(
    producer: &FutureProducer,
    topic: &str,
    partition: Option<i32>,
    key: Option<&str>,
    headers: &[(String, Vec<u8>)],
    value: Option<&[u8]>,
) {
    let mut owned = OwnedHeaders::new();
    for (name, value) in headers {
        owned = owned.insert(Header { key: name, value: Some(value) });
    }
    let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).headers(owned);
    if let Some(key) = key {
        record = record.key(key);
    }
    if let Some(value) = value {
        record = record.payload(value);
    }
    if let Some(partition) = partition {
        record = record.partition(partition);
    }
    producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
}

/// The offsets `group` has committed for each partition of `topic` (-1 when none).
pub fn committed(group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", bootstrap()).set("group.id", group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => -1,
        })
        .collect()
}

/// A reader of partition 0 of `topic` from its beginning.
fn reader_from_the_beginning(topic: &str) -> rdkafka::consumer::StreamConsumer {
    let consumer: rdkafka::consumer::StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique("reader"))
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
    consumer.assign(&tpl).unwrap();
    consumer
}

/// Reads the first `n` records of partition 0 of `topic` (fails after 30 s).
pub async fn read(topic: &str, n: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let consumer = reader_from_the_beginning(topic);
    let mut got = Vec::new();
    while got.len() < n {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} records on {topic}", got.len()))
            .unwrap();
        got.push(message.detach());
    }
    got
}

/// Every record on partition 0 of `topic`, once whoever writes to it has stopped: appends a
/// marker of its own and reads up to it. (tansu's "latest" offset is the last batch's first
/// offset plus one, so a watermark undercounts records written in one batch.)
pub async fn read_all(topic: &str) -> Vec<rdkafka::message::OwnedMessage> {
    let marker = unique("end-of-test");
    producer()
        .send(FutureRecord::<str, str>::to(topic).partition(0).key(&marker), Duration::from_secs(10))
        .await
        .unwrap_or_else(|(e, _)| panic!("marker on {topic}: {e}"));
    let consumer = reader_from_the_beginning(topic);
    let mut got = Vec::new();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("no end marker on {topic} after {} records", got.len()))
            .unwrap();
        if rdkafka::Message::key(&message) == Some(marker.as_bytes()) {
            return got;
        }
        got.push(message.detach());
    }
}

/// What a `read_committed` reader of partition 0 of `topic` on `bootstrap` sees: records per
/// value of the header `header` ("" without it), read until `quiet` passes with nothing new.
pub async fn records_per_header(
    bootstrap: &str,
    topic: &str,
    header: &str,
    quiet: Duration,
) -> std::collections::HashMap<String, usize> {
    use rdkafka::consumer::StreamConsumer;
    use rdkafka::message::{Headers as _, Message as _};
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("reader"))
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
    consumer.assign(&tpl).unwrap();
    let mut counts = std::collections::HashMap::new();
    while let Ok(message) = tokio::time::timeout(quiet, consumer.recv()).await {
        let message = message.unwrap();
        let value = message.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == header)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        });
        *counts.entry(value.unwrap_or_default()).or_default() += 1;
    }
    counts
}

/// A header's value as text.
pub fn header(message: &rdkafka::message::OwnedMessage, name: &str) -> Option<String> {
    use rdkafka::Message;
    use rdkafka::message::Headers;
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Publishes a reference event (`bg-<n>`, to `dataref`) on `partition` every 20 ms until
/// aborted: traffic the owner answers, which shows keyhole that the owner is up while one
/// reference keeps failing (a poison reference is then counted against its limits, not taken
/// for an outage).
pub fn healthy_traffic(topic: &str, partition: i32, dataref: &str) -> tokio::task::JoinHandle<()> {
    let (producer, topic, dataref) = (producer(), topic.to_string(), dataref.to_string());
    tokio::spawn(async move {
        for i in 0.. {
            let headers = reference(&format!("bg-{i}"), &dataref);
            publish(&producer, &topic, Some(partition), Some("bg"), &headers, None).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// Whether an outcome is of [`healthy_traffic`].
pub fn is_background(outcome: &keyhole::records::audit::Outcome) -> bool {
    outcome.event_id.as_deref().is_some_and(|id| id.starts_with("bg-"))
}

/// A tansu broker of the test's own, to stop while keyhole runs (the shared one must stay up).
pub struct OwnBroker {
    pub child: std::process::Child,
    pub bootstrap: String,
}

impl OwnBroker {
    /// Starts it on a free port and waits until it accepts connections.
    pub async fn start() -> OwnBroker {
        let tansu = super::prerequisite("KEYHOLE_TEST_TANSU");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = super::command_dying_with_the_test(tansu)
            .args(["broker", "--cluster-id", "keyhole-own", "--storage-engine", "memory://tansu/"])
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Owned before the wait, so that a broker that never answers is still stopped.
        let broker = OwnBroker { child, bootstrap: format!("127.0.0.1:{port}") };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(&broker.bootstrap).await.is_err() {
            assert!(std::time::Instant::now() < deadline, "tansu did not start on {}", broker.bootstrap);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        broker
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}
