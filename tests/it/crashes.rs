//! keyhole killed with SIGKILL again and again mid-stream, under a slow data owner, in each
//! delivery mode and on both brokers, then left to finish. What the delivery mode promises is
//! checked from outside keyhole only: the replies a `read_committed` reader of the reply topic
//! sees (by `ce_causationid`), the data the owner released (by `Keyhole-Event-Id`), and the
//! group's committed offsets.
//!
//! - at-least-once: every event has a reply (duplicates allowed);
//! - at-most-once: no event is released or replied twice, and at most `max_in_flight` events
//!   are lost per crash;
//! - exactly-once (noida-db only: tansu 0.6.0 has no EndTxn): one reply per event.
//!
//! Each kill comes a random number of owner requests after keyhole (re)started, while events
//! are in flight: the owner answers after 50 ms, so at any moment up to `max_in_flight`
//! requests are open.

use crate::common;

use common::broker::{self, publish, reference, unique};
use common::config::TestConfig;
use common::noida::Noida;
use common::owner::{Answer, Owner};
use rand::Rng as _;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const EVENTS: usize = 400;
const KILLS: usize = 10;
const MAX_IN_FLIGHT: usize = 8;
const PARTITIONS: i32 = 2;

/// The broker a run uses.
enum Broker {
    /// The suite's shared tansu.
    Tansu,
    /// A noida-db of the test's own.
    Noida(Noida),
}

impl Broker {
    fn bootstrap(&self) -> String {
        match self {
            Broker::Tansu => broker::bootstrap(),
            Broker::Noida(noida) => noida.bootstrap.clone(),
        }
    }

    async fn create_topics(&self, topics: &[(&str, i32)]) {
        match self {
            Broker::Tansu => {
                for (name, partitions) in topics {
                    broker::create_named_topic(name, *partitions).await;
                }
            }
            Broker::Noida(noida) => noida.create_topics(topics).await,
        }
    }
}

/// One run: a topic of references, a reply topic, a slow owner releasing every event, and a
/// keyhole configuration with one echo binding in `delivery` mode.
struct Crashes {
    broker: Broker,
    owner: Owner,
    refs: String,
    replies: String,
    group: String,
    dir: PathBuf,
    /// The binding's `delivery`.
    mode: &'static str,
}

impl Crashes {
    async fn setup(broker: Broker, delivery: &'static str) -> Crashes {
        let (refs, replies, group) = (unique("refs"), unique("replies"), unique("keyhole"));
        let receipts = unique("receipts");
        broker.create_topics(&[(&refs, PARTITIONS), (&replies, PARTITIONS), (&receipts, PARTITIONS)]).await;
        let owner = Owner::start().await;
        owner.set_delay(Duration::from_millis(50));
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap())
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()
            .unwrap();
        let sends = (0..EVENTS).map(|i| {
            let id = format!("ev-{i}");
            owner.set(&format!("r/{id}"), Answer::Release("text/plain", id.clone().into_bytes()));
            let (producer, refs) = (&producer, &refs);
            async move {
                let key = format!("key-{}", i % 20);
                publish(producer, refs, None, Some(&key), &reference(&id, &format!("r/{id}")), None).await;
            }
        });
        match broker {
            // One record per batch: tansu 0.6.0 skips the rest of a batch when a consumer
            // resumes inside it (`brokers.rs`), which would lose events whatever keyhole does.
            Broker::Tansu => {
                for send in sends {
                    send.await;
                }
            }
            // Batches, as a real producer makes them: resuming inside one must lose nothing.
            Broker::Noida(_) => drop(futures_util::future::join_all(sends).await),
        }

        let dir = std::env::temp_dir().join(unique("keyhole-crashes"));
        std::fs::create_dir_all(&dir).unwrap();
        let identity = r#"{ bearer_token = { env = "KEYHOLE_TEST_OWNER_TOKEN" } }"#;
        let extra = format!(
            "delivery = \"{delivery}\"\n        reply_topic = \"{replies}\"\n        max_in_flight = {MAX_IN_FLIGHT}"
        );
        let mut config = TestConfig::echo(&group, &refs, &owner.base_url(), identity, &extra);
        config
            .set("kafka.bootstrap_servers", broker.bootstrap())
            // Access receipts in Kafka: under exactly-once they are in the batch's transaction too.
            .set("receipts.sink", "kafka")
            .set("receipts.topic", receipts.as_str());
        if matches!(broker, Broker::Noida(_)) {
            // noida-db 0.2.3 never expires a member that stopped heartbeating: a new member's
            // JoinGroup waits out the whole rebalance timeout (max.poll.interval.ms, 5 minutes)
            // for the killed one. A static member (KIP-345; what exactly-once bindings are
            // anyway) replaces its killed predecessor at once.
            config.kafka_property("group.instance.id", "crash-test");
        }
        config.write(&dir.join("keyhole.toml"));
        Crashes { broker, owner, refs, replies, group, dir, mode: delivery }
    }

    fn start(&self) -> common::Keyhole {
        common::run_keyhole(&self.dir.join("keyhole.toml"))
    }

    /// The binding's committed offsets, per partition of the references' topic (-1: none).
    fn committed(&self) -> Vec<i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.broker.bootstrap())
            .set("group.id", format!("{}.acme.echo", self.group))
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition(&self.refs, p);
        }
        let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
        committed.elements().iter().map(|e| if let Offset::Offset(o) = e.offset() { o } else { -1 }).collect()
    }

    /// Starts keyhole, waits until the owner got `requests` more requests, and kills it with
    /// SIGKILL.
    async fn crash_after(&self, requests: usize, kill: usize) {
        let target = self.owner.seen().len() + requests;
        let mut keyhole = self.start();
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.owner.seen().len() < target {
            if let Some(exit) = keyhole.try_wait().unwrap() {
                panic!("keyhole exited on its own ({exit}) before kill {kill}:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "no progress before kill {kill}:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Command::new("kill").args(["-KILL", &keyhole.id().to_string()]).status().unwrap();
        keyhole.wait().unwrap();
    }

    /// Starts keyhole and lets it run until the group committed the whole input, then stops it
    /// with SIGTERM (which drains what is in flight).
    async fn finish(&self) {
        let mut keyhole = self.start();
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let committed = self.committed();
            if committed.iter().sum::<i64>() >= EVENTS as i64 {
                break;
            }
            assert!(Instant::now() < deadline, "committed {committed:?} of {EVENTS} events:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Command::new("kill").args(["-TERM", &keyhole.id().to_string()]).status().unwrap();
        assert_eq!(keyhole.wait().unwrap().code(), Some(0), "SIGTERM exits 0:\n{}", self.log());
    }

    /// Replies per request id, as a `read_committed` reader of every partition of the reply
    /// topic sees them, read to the end of each partition. Called only while no keyhole runs.
    async fn replies(&self) -> HashMap<String, usize> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.broker.bootstrap())
            .set("group.id", unique("reader"))
            .set("isolation.level", "read_committed")
            .set("fetch.wait.max.ms", "10")
            .set("enable.partition.eof", "true")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(&self.replies, p, Offset::Beginning).unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let (mut counts, mut at_end) = (HashMap::new(), std::collections::HashSet::new());
        while at_end.len() < PARTITIONS as usize {
            let next = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await;
            match next.expect("the reply topic's end was never reached") {
                Ok(message) => {
                    let id = broker::header(&message.detach(), "ce_causationid").unwrap_or_default();
                    *counts.entry(id).or_default() += 1;
                }
                Err(KafkaError::PartitionEOF(partition)) => drop(at_end.insert(partition)),
                Err(error) => panic!("reading replies: {error}"),
            }
        }
        counts
    }

    /// Releases per event id, as the owner recorded them.
    fn released(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for seen in self.owner.seen().into_iter().filter(|s| s.status == 200) {
            *counts.entry(seen.event_id.unwrap_or_default()).or_default() += 1;
        }
        counts
    }

    fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("keyhole.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Kills keyhole `KILLS` times, each after 8 to 24 owner requests, then lets it finish.
    /// Returns replies and releases per event.
    async fn run(self) -> (HashMap<String, usize>, HashMap<String, usize>) {
        let mode = self.mode;
        let (mut lost, mut per_kill) = (0, Vec::new());
        for kill in 1..=KILLS {
            let requests = rand::rng().random_range(8..=24);
            self.crash_after(requests, kill).await;
            let committed = self.committed();
            let committed_events: i64 = committed.iter().map(|c| (*c).max(0)).sum();
            assert!(
                committed_events < EVENTS as i64,
                "{mode}: kill {kill} came after the end ({committed:?}): nothing left to test"
            );
            if mode == "at-most-once" {
                // Committed before handling: a committed event without a reply is never read
                // again. Each crash may add at most the events it had in flight.
                let replied = self.replies().await.len() as i64;
                let now = (committed_events - replied).max(0) as usize;
                assert!(
                    now.saturating_sub(lost) <= MAX_IN_FLIGHT,
                    "kill {kill} lost {} events (committed {committed_events}, replied {replied}); at most {MAX_IN_FLIGHT} were in flight",
                    now - lost
                );
                per_kill.push(now.saturating_sub(lost));
                lost = now;
            }
        }
        self.finish().await;
        let (replies, released) = (self.replies().await, self.released());
        let ids = || (0..EVENTS).map(|i| format!("ev-{i}"));
        let missing: Vec<String> = ids().filter(|id| !replies.contains_key(id)).collect();
        let twice = replies.values().filter(|n| **n > 1).count();
        let asked_twice = released.values().filter(|n| **n > 1).count();
        eprintln!(
            "{mode} on {}: {KILLS} SIGKILLs, {} of {EVENTS} events replied, {} missing (per kill: {per_kill:?}), {twice} replied more than once, {asked_twice} released more than once",
            match self.broker {
                Broker::Tansu => "tansu",
                Broker::Noida(_) => "noida-db",
            },
            replies.len(),
            missing.len(),
        );
        let unknown: Vec<&String> = replies.keys().filter(|id| !id.starts_with("ev-")).collect();
        assert!(unknown.is_empty(), "replies to events never published: {unknown:?}");
        if std::env::var_os("KEYHOLE_KEEP_TEST_DIRS").is_none() {
            std::fs::remove_dir_all(&self.dir).ok();
        }
        (replies, released)
    }
}

fn assert_at_least_once(replies: &HashMap<String, usize>) {
    let missing: Vec<String> =
        (0..EVENTS).map(|i| format!("ev-{i}")).filter(|id| !replies.contains_key(id)).collect();
    assert!(missing.is_empty(), "at-least-once lost {} events: {missing:?}", missing.len());
}

fn assert_at_most_once(replies: &HashMap<String, usize>, released: &HashMap<String, usize>) {
    let twice: Vec<_> = replies.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "at-most-once replied twice: {twice:?}");
    let asked_twice: Vec<_> = released.iter().filter(|(_, n)| **n > 1).collect();
    assert!(asked_twice.is_empty(), "at-most-once had data released twice: {asked_twice:?}");
    let lost = EVENTS - replies.len();
    let bound = MAX_IN_FLIGHT * KILLS;
    assert!(
        lost <= bound,
        "at-most-once lost {lost} events in {KILLS} crashes; at most {bound} were in flight"
    );
}

fn assert_exactly_once(replies: &HashMap<String, usize>) {
    let wrong: Vec<(String, usize)> = (0..EVENTS)
        .map(|i| format!("ev-{i}"))
        .map(|id| {
            let n = replies.get(&id).copied().unwrap_or(0);
            (id, n)
        })
        .filter(|(_, n)| *n != 1)
        .collect();
    assert!(wrong.is_empty(), "exactly-once: events without exactly one reply: {wrong:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_sigkills_at_least_once_on_tansu_lose_nothing() {
    let (replies, _) = Crashes::setup(Broker::Tansu, "at-least-once").await.run().await;
    assert_at_least_once(&replies);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_sigkills_at_most_once_on_tansu_lose_at_most_the_in_flight_and_repeat_nothing() {
    let (replies, released) = Crashes::setup(Broker::Tansu, "at-most-once").await.run().await;
    assert_at_most_once(&replies, &released);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_sigkills_at_least_once_on_noida_lose_nothing() {
    let broker = Broker::Noida(Noida::start().await);
    let (replies, _) = Crashes::setup(broker, "at-least-once").await.run().await;
    assert_at_least_once(&replies);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_sigkills_at_most_once_on_noida_lose_at_most_the_in_flight_and_repeat_nothing() {
    let broker = Broker::Noida(Noida::start().await);
    let (replies, released) = Crashes::setup(broker, "at-most-once").await.run().await;
    assert_at_most_once(&replies, &released);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_sigkills_exactly_once_on_noida_reply_to_each_event_once() {
    let broker = Broker::Noida(Noida::start().await);
    let (replies, _) = Crashes::setup(broker, "exactly-once").await.run().await;
    assert_exactly_once(&replies);
}
