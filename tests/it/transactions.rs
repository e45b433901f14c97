//! Exactly-once on a broker that implements transactions: noida-db (PyPI, installed by
//! scripts/test.sh), which hides aborted and open transactions from `read_committed` readers,
//! stores `TxnOffsetCommit` offsets only on commit, and fences an old producer. keyhole runs as
//! a separate process and is killed, fenced and restarted under load; what a `read_committed`
//! reader sees is checked record by record. (The mock-cluster tests in `exactly_once.rs` keep
//! the fault injection the mock can do.)
//!
//! noida-db does not time out an abandoned transaction: each test recovers by restarting keyhole
//! with the same `transactional.id`, which aborts it (as Kafka's fencing does).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::config::TestConfig;
use common::noida::Noida;
use common::owner::{Answer, Owner};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 2;

/// A directory with `keyhole.toml`: the exactly-once echo binding on `refs`, replies to
/// `replies`, receipts to the `receipts` topic (in the binding's transactions), an audit file.
fn keyhole_dir(noida: &Noida, group: &str, owner: &Owner) -> PathBuf {
    let dir = std::env::temp_dir().join(common::broker::unique("keyhole-transactions"));
    std::fs::create_dir_all(&dir).unwrap();
    let identity = r#"{ bearer_token = { env = "KEYHOLE_TEST_OWNER_TOKEN" } }"#;
    let extra = "delivery = \"exactly-once\"\n        reply_topic = \"replies\"\n        max_in_flight = 16";
    TestConfig::echo(group, "refs", &owner.base_url(), identity, extra)
        .set("kafka.bootstrap_servers", noida.bootstrap.as_str())
        .set("audit.path", "audit.jsonl")
        .set("receipts.sink", "kafka")
        .set("receipts.topic", "receipts")
        .write(&dir.join("keyhole.toml"));
    dir
}

/// `n` reference events `ev-<i>`, released by the owner; every `malformed`-th one instead has a
/// reference that is refused before anyone is asked (a dead letter).
async fn publish_events(noida: &Noida, owner: &Owner, n: usize, malformed: usize) {
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", &noida.bootstrap).create().unwrap();
    for i in 0..n {
        let id = format!("ev-{i}");
        owner.set(&format!("r/{id}"), Answer::Release("text/plain", id.clone().into_bytes()));
        let dataref =
            if malformed > 0 && i % malformed == 0 { "../escape".to_string() } else { format!("r/{id}") };
        let headers = common::broker::reference(&id, &dataref);
        common::broker::publish(
            &producer,
            "refs",
            None,
            Some(&format!("key-{}", i % 10)),
            &headers,
            Some(&[]),
        )
        .await;
    }
}

/// The group's committed offsets and the input's end, per partition of `refs`.
fn committed_and_end(noida: &Noida, group: &str) -> (Vec<i64>, Vec<i64>) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &noida.bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition("refs", p);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    let committed = committed
        .elements()
        .iter()
        .map(|e| if let Offset::Offset(o) = e.offset() { o } else { -1 })
        .collect();
    let end = (0..PARTITIONS)
        .map(|p| consumer.fetch_watermarks("refs", p, Duration::from_secs(10)).unwrap().1)
        .collect();
    (committed, end)
}

fn audited(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("audit.jsonl")).unwrap_or_default().lines().count()
}

async fn wait_until_audited(dir: &Path, at_least: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while audited(dir) < at_least {
        assert!(Instant::now() < deadline, "keyhole handled only {} events", audited(dir));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs keyhole until the group has committed the whole input, then stops it with SIGTERM.
async fn run_to_the_end(noida: &Noida, dir: &Path, group: &str) {
    let mut keyhole = common::run_keyhole(&dir.join("keyhole.toml"));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (committed, end) = committed_and_end(noida, &format!("{group}.acme.echo"));
        if committed == end {
            break;
        }
        assert!(Instant::now() < deadline, "committed {committed:?} of {end:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Command::new("kill").args(["-TERM", &keyhole.id().to_string()]).status().unwrap();
    assert_eq!(keyhole.wait().unwrap().code(), Some(0));
}

/// Every event once: one reply per released event, one dead letter per refused one, one
/// receipt per released event, as a `read_committed` reader sees them.
async fn assert_exactly_once(noida: &Noida, group: &str, n: usize, malformed: usize) {
    let refused = |i: usize| malformed > 0 && i.is_multiple_of(malformed);
    let quiet = Duration::from_secs(2);
    let replies =
        common::broker::records_per_header(&noida.bootstrap, "replies", "ce_causationid", quiet).await;
    let letters = common::broker::records_per_header(
        &noida.bootstrap,
        &format!("{group}.acme.echo.dlq"),
        "ce_id",
        quiet,
    )
    .await;
    let receipts =
        common::broker::records_per_header(&noida.bootstrap, "receipts", "ce_subject", quiet).await;
    for i in 0..n {
        let id = format!("ev-{i}");
        let (want_reply, want_letter) = if refused(i) { (0, 1) } else { (1, 0) };
        assert_eq!(replies.get(&id).copied().unwrap_or(0), want_reply, "replies to {id}: {replies:?}");
        assert_eq!(letters.get(&id).copied().unwrap_or(0), want_letter, "dead letters of {id}: {letters:?}");
    }
    let expected_receipts = (0..n).filter(|i| !refused(*i)).count();
    assert_eq!(receipts.values().sum::<usize>(), expected_receipts, "receipts: {receipts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sigkills_mid_batch_leave_exactly_one_reply_per_event_and_the_offsets_at_the_end() {
    const EVENTS: usize = 300;
    let noida = Noida::start().await;
    let group = common::broker::unique("keyhole");
    let dlq = format!("{group}.acme.echo.dlq");
    noida.create_topics(&[("refs", PARTITIONS), ("replies", 1), ("receipts", 1), (&dlq, 1)]).await;
    let owner = Owner::start().await;
    owner.set_delay(Duration::from_millis(20));
    publish_events(&noida, &owner, EVENTS, 25).await;
    let dir = keyhole_dir(&noida, &group, &owner);

    for kill in 1..=3 {
        let mut keyhole = common::run_keyhole(&dir.join("keyhole.toml"));
        wait_until_audited(&dir, audited(&dir) + 40, Duration::from_secs(90)).await;
        Command::new("kill").args(["-KILL", &keyhole.id().to_string()]).status().unwrap();
        keyhole.wait().unwrap();
        let (committed, end) = committed_and_end(&noida, &format!("{group}.acme.echo"));
        assert_ne!(committed, end, "kill {kill} came after the end: nothing left to test");
    }
    run_to_the_end(&noida, &dir, &group).await;
    assert_exactly_once(&noida, &group, EVENTS, 25).await;
    // The kills interrupted batches: those events were handled (and their data asked for) again,
    // and still have one reply each.
    let asked = owner.seen().len();
    let released = (0..EVENTS).filter(|i| i % 25 != 0).count();
    assert!(asked > released, "no batch was handled again ({asked} requests for {released} events)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fencing_restart_aborts_the_open_batch_which_is_handled_again_with_consent_asked_again() {
    const EVENTS: usize = 120;
    let noida = Noida::start().await;
    let group = common::broker::unique("keyhole");
    let dlq = format!("{group}.acme.echo.dlq");
    noida.create_topics(&[("refs", PARTITIONS), ("replies", 1), ("receipts", 1), (&dlq, 1)]).await;
    let owner = Owner::start().await;
    // Slow answers: a batch is open for a while, so the second start fences it mid-way.
    owner.set_delay(Duration::from_millis(150));
    publish_events(&noida, &owner, EVENTS, 10).await;
    let dir = keyhole_dir(&noida, &group, &owner);

    let mut first = common::run_keyhole(&dir.join("keyhole.toml"));
    wait_until_audited(&dir, 20, Duration::from_secs(90)).await;
    // The same configuration, so the same transactional.id: its start fences the first
    // instance's producer, and the open transaction is aborted.
    let mut second = common::run_keyhole(&dir.join("keyhole.toml"));
    let second_started = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    let fenced = loop {
        if let Some(status) = first.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the first instance was never fenced");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!fenced.success(), "a fenced instance stops with an error");
    // Its pending sends fail at once rather than at their timeout (a minute): it stops within
    // the drain and commit bounds of a shutdown, however its sends stood when it was fenced.
    let took = second_started.elapsed();
    assert!(took < Duration::from_secs(20), "the fenced instance took {took:?} to stop");
    let log = std::fs::read_to_string(dir.join("keyhole.log")).unwrap();
    assert!(log.to_lowercase().contains("fenced"), "the log says it was fenced:\n{log}");
    Command::new("kill").args(["-TERM", &second.id().to_string()]).status().unwrap();
    second.wait().unwrap();
    run_to_the_end(&noida, &dir, &group).await;
    assert_exactly_once(&noida, &group, EVENTS, 10).await;
    let mut asks: HashMap<String, usize> = HashMap::new();
    for seen in owner.seen() {
        *asks.entry(seen.path.clone()).or_default() += 1;
    }
    assert!(asks.values().any(|n| *n > 1), "the aborted batch's data was not asked for again: {asks:?}");
}

/// The audit records on `topic` that a reader with `isolation` sees, read until `quiet` passes
/// with nothing new.
async fn audit_records(
    bootstrap: &str,
    topic: &str,
    isolation: &str,
    quiet: Duration,
) -> Vec<serde_json::Value> {
    use rdkafka::Message as _;
    use rdkafka::consumer::StreamConsumer;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", common::broker::unique("reader"))
        .set("isolation.level", isolation)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
    consumer.assign(&tpl).unwrap();
    let mut records = Vec::new();
    while let Ok(message) = tokio::time::timeout(quiet, consumer.recv()).await {
        records.push(serde_json::from_slice(message.unwrap().payload().unwrap()).unwrap());
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exactly_once_bindings_audit_records_are_committed_with_its_batch() {
    const EVENTS: usize = 80;
    let noida = Noida::start().await;
    let group = common::broker::unique("keyhole");
    let dlq = format!("{group}.acme.echo.dlq");
    noida
        .create_topics(&[("refs", PARTITIONS), ("replies", 1), ("receipts", 1), ("audit", 1), (&dlq, 1)])
        .await;
    let owner = Owner::start().await;
    owner.set_delay(Duration::from_millis(20));
    publish_events(&noida, &owner, EVENTS, 10).await;
    let dir = keyhole_dir(&noida, &group, &owner);
    let config = dir.join("keyhole.toml");
    TestConfig::from_toml(&std::fs::read_to_string(&config).unwrap())
        .remove("audit.path")
        .set("audit.sink", "kafka")
        .set("audit.topic", "audit")
        .write(&config);

    // Killed once a batch is open with audit records confirmed in it (the topic's end, as a
    // read_uncommitted reader sees it, is past its last stable offset): they are never committed.
    let mut keyhole = common::run_keyhole(&config);
    let end = |isolation: &str| {
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &noida.bootstrap)
            .set("isolation.level", isolation)
            .create()
            .unwrap();
        reader.fetch_watermarks("audit", 0, Duration::from_secs(10)).unwrap().1
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while owner.seen().len() < 20 || end("read_uncommitted") <= end("read_committed") {
        assert!(Instant::now() < deadline, "no batch open with audit records in it");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Command::new("kill").args(["-KILL", &keyhole.id().to_string()]).status().unwrap();
    keyhole.wait().unwrap();
    let (committed, end) = committed_and_end(&noida, &format!("{group}.acme.echo"));
    assert_ne!(committed, end, "the kill came after the end: nothing left to test");
    run_to_the_end(&noida, &dir, &group).await;
    assert_exactly_once(&noida, &group, EVENTS, 10).await;

    let quiet = Duration::from_secs(2);
    let committed = audit_records(&noida.bootstrap, "audit", "read_committed", quiet).await;
    let mut per_event: HashMap<String, Vec<&str>> = HashMap::new();
    for record in &committed {
        let id = record["event_id"].as_str().unwrap().to_string();
        per_event.entry(id).or_default().push(record["decision"].as_str().unwrap());
    }
    for i in 0..EVENTS {
        let id = format!("ev-{i}");
        let want = if i % 10 == 0 { "refused" } else { "delivered" };
        assert_eq!(per_event.get(&id).map(Vec::as_slice), Some(&[want][..]), "audit records of {id}");
    }
    assert_eq!(committed.len(), EVENTS, "one committed record per event");
    // The killed batch was handled again, each handling recorded; only the committed one counts.
    let all = audit_records(&noida.bootstrap, "audit", "read_uncommitted", quiet).await;
    let released = (0..EVENTS).filter(|i| i % 10 != 0).count();
    assert!(owner.seen().len() > released, "no batch was handled again");
    assert!(all.len() > committed.len(), "{} records in all, {} committed", all.len(), committed.len());
}
