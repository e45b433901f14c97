//! `keyhole run` as an operator runs it: stopped with SIGTERM mid-stream, or killed with
//! SIGKILL, then restarted, in each delivery mode, counting deliveries per event.
//!
//! - at-least-once: every event is handled at least once; SIGTERM redelivers nothing. The audit
//!   file, written before an offset is stored, is the record of what was handled.
//! - at-most-once: no event is released by its owner, or handled, twice; a SIGKILL loses at most
//!   the events in flight.
//! - exactly-once: on librdkafka's mock cluster, because tansu does not implement transaction
//!   commit (EndTxn). See `kill_9_mid_stream_exactly_once_on_the_mock_cluster` for what the mock
//!   can and cannot show.
// A test fails loudly on anything unexpected; unwrap is how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::broker::{self, create_topic, publish, reference};
use common::owner::{Answer, Owner};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const EVENTS: usize = 300;

const MAX_IN_FLIGHT: usize = 16;

fn write_config(dir: &Path, owner: &Owner, topic: &str, group: &str, extra: &str) -> PathBuf {
    let config = dir.join("keyhole.toml");
    let identity = r#"{ bearer_token = { env = "KEYHOLE_TEST_OWNER_TOKEN" } }"#;
    let extra = format!("max_in_flight = {MAX_IN_FLIGHT}\n{extra}");
    let mut toml = common::echo_config(group, topic, &owner.base_url(), identity, &extra);
    toml.push_str("\n[audit]\npath = \"audit.jsonl\"\n");
    std::fs::write(&config, toml).unwrap();
    config
}

/// Handled count per event id, from the audit file. SIGKILL may tear the line being written (the
/// kernel may stop a write between pages); at most one torn line per kill is tolerated, and its
/// event was not acknowledged, so it is handled again.
fn handled(audit: &Path) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    let mut torn = 0;
    for line in std::fs::read_to_string(audit).unwrap_or_default().lines() {
        let Ok(record) = serde_json::from_str::<serde_json::Value>(line) else {
            torn += 1;
            assert!(torn <= 1, "more than one torn audit line: {line}");
            continue;
        };
        assert_eq!(record["decision"], "delivered", "{record}");
        *counts.entry(record["event_id"].as_str().unwrap().to_string()).or_default() += 1;
    }
    counts
}

async fn wait_for(audit: &Path, at_least: usize, within: Duration) -> HashMap<String, usize> {
    let deadline = Instant::now() + within;
    loop {
        let counts = handled(audit);
        if counts.len() >= at_least || Instant::now() > deadline {
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Owner fetches per event id: each one released the data to keyhole for its handler.
fn released(owner: &Owner) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for seen in owner.seen() {
        *counts.entry(seen.event_id.unwrap_or_default()).or_default() += 1;
    }
    counts
}

async fn stop_mid_stream_then_restart(signal: &str) {
    let owner = Owner::start().await;
    owner.set_delay(Duration::from_millis(50));
    let topic = create_topic(2).await;
    let group = broker::unique("keyhole");
    let dir = std::env::temp_dir().join(broker::unique("keyhole-shutdown"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = write_config(&dir, &owner, &topic, &group, "");
    let audit = dir.join("audit.jsonl");
    let producer = broker::producer();
    for i in 0..EVENTS {
        let id = format!("ev-{i}");
        owner.set(&format!("r/{id}"), Answer::Release("text/plain", id.clone().into_bytes()));
        publish(
            &producer,
            &topic,
            None,
            Some(&format!("key-{}", i % 20)),
            &reference(&id, &format!("r/{id}")),
            None,
        )
        .await;
    }

    let mut first = common::run_keyhole(&config);
    let before = wait_for(&audit, EVENTS / 4, Duration::from_secs(60)).await;
    assert!(before.len() >= EVENTS / 4, "keyhole handled only {} events", before.len());
    let status = Command::new("kill").args([signal, &first.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = first.wait().unwrap();
    if signal == "-TERM" {
        assert_eq!(exit.code(), Some(0), "SIGTERM must drain, commit and exit 0");
    }
    let stopped_at = handled(&audit).len();
    assert!(stopped_at < EVENTS, "stopped too late to test anything ({stopped_at} handled)");

    let mut second = common::run_keyhole(&config);
    let after = wait_for(&audit, EVENTS, Duration::from_secs(90)).await;
    Command::new("kill").args(["-TERM", &second.id().to_string()]).status().unwrap();
    assert_eq!(second.wait().unwrap().code(), Some(0));
    let missing: Vec<String> =
        (0..EVENTS).map(|i| format!("ev-{i}")).filter(|id| !after.contains_key(id)).collect();
    assert!(missing.is_empty(), "never handled after {signal} and restart: {missing:?}");
    let redelivered = after.values().filter(|n| **n > 1).count();
    eprintln!("{signal}: {stopped_at} handled before the stop, {redelivered} handled twice");
    if signal == "-TERM" {
        // Drained and committed: the restart starts exactly where the first run stopped.
        assert_eq!(redelivered, 0, "SIGTERM drained and committed, yet events were redelivered");
    }
    if std::env::var_os("KEYHOLE_KEEP_TEST_DIRS").is_none() {
        std::fs::remove_dir_all(&dir).ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_then_restart_handles_every_event_at_least_once() {
    stop_mid_stream_then_restart("-TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_then_restart_handles_every_event_at_least_once() {
    stop_mid_stream_then_restart("-KILL").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_at_most_once_delivers_no_event_twice() {
    let owner = Owner::start().await;
    owner.set_delay(Duration::from_millis(50));
    let topic = create_topic(2).await;
    let group = broker::unique("keyhole");
    let dir = std::env::temp_dir().join(broker::unique("keyhole-at-most-once"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = write_config(&dir, &owner, &topic, &group, r#"delivery = "at-most-once""#);
    let audit = dir.join("audit.jsonl");
    let producer = broker::producer();
    for i in 0..EVENTS {
        let id = format!("ev-{i}");
        owner.set(&format!("r/{id}"), Answer::Release("text/plain", id.clone().into_bytes()));
        let key = format!("key-{}", i % 20);
        publish(&producer, &topic, None, Some(&key), &reference(&id, &format!("r/{id}")), None).await;
    }

    let mut first = common::run_keyhole(&config);
    let before = wait_for(&audit, EVENTS / 4, Duration::from_secs(60)).await;
    assert!(before.len() >= EVENTS / 4, "keyhole handled only {} events", before.len());
    Command::new("kill").args(["-KILL", &first.id().to_string()]).status().unwrap();
    first.wait().unwrap();
    let stopped_at = handled(&audit).len();
    assert!(stopped_at < EVENTS, "stopped too late to test anything ({stopped_at} handled)");

    let mut second = common::run_keyhole(&config);
    // Every offset committed (each before its event was handled), and then the last ones done.
    let deadline = Instant::now() + Duration::from_secs(90);
    while broker::committed(&format!("{group}.acme.echo"), &topic, 2).iter().sum::<i64>() < EVENTS as i64 {
        assert!(Instant::now() < deadline, "the second run never reached the end");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // SIGTERM drains what is in flight and exits 0 once it is done: then the audit file is final
    // (no waiting for it to stop growing).
    Command::new("kill").args(["-TERM", &second.id().to_string()]).status().unwrap();
    assert_eq!(second.wait().unwrap().code(), Some(0));

    let audited = handled(&audit);
    let twice: Vec<_> = audited.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "handled twice at-most-once: {twice:?}");
    let fetched_twice: Vec<_> = released(&owner).into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(fetched_twice.is_empty(), "released twice at-most-once: {fetched_twice:?}");
    // What a crash loses: the events committed but not finished, at most the in-flight limit.
    let lost = EVENTS - audited.len();
    eprintln!("at-most-once, SIGKILL: {stopped_at} handled before the kill, {lost} lost, none twice");
    assert!(lost <= MAX_IN_FLIGHT, "{lost} events lost; at most {MAX_IN_FLIGHT} were in flight");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_broker_down_exits_within_the_drain_and_commit_timeouts() {
    use rdkafka::ClientConfig;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let mut own = broker::OwnBroker::start().await;
    let owner = Owner::start().await;
    let topic = broker::unique("refs");
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &own.bootstrap).create().unwrap();
    let new = NewTopic::new(&topic, 1, TopicReplication::Fixed(1));
    for result in admin.create_topics([&new], &AdminOptions::new()).await.unwrap() {
        result.unwrap();
    }
    let dir = std::env::temp_dir().join(broker::unique("keyhole-broker-down"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = write_config(&dir, &owner, &topic, &broker::unique("keyhole"), "");
    common::config::TestConfig::from_toml(&std::fs::read_to_string(&config).unwrap())
        .set("kafka.bootstrap_servers", own.bootstrap.as_str())
        .set("shutdown.drain_timeout_ms", 2000)
        .set("shutdown.commit_timeout_ms", 2000)
        .write(&config);
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", &own.bootstrap).create().unwrap();
    for i in 0..5 {
        let id = format!("ev-{i}");
        owner.set(&format!("r/{id}"), Answer::Release("text/plain", id.clone().into_bytes()));
        let mut headers = rdkafka::message::OwnedHeaders::new();
        for (name, value) in reference(&id, &format!("r/{id}")) {
            headers = headers.insert(rdkafka::message::Header { key: &name, value: Some(&value) });
        }
        let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&topic).key("k").headers(headers);
        producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
    }
    let mut keyhole = common::run_keyhole(&config);
    let audit = dir.join("audit.jsonl");
    let handled = wait_for(&audit, 5, Duration::from_secs(60)).await;
    assert_eq!(handled.len(), 5, "keyhole handled {handled:?}");
    // The broker goes away; then the operator stops keyhole.
    own.child.kill().unwrap();
    own.child.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopping = Instant::now();
    Command::new("kill").args(["-TERM", &keyhole.id().to_string()]).status().unwrap();
    let bound = Duration::from_secs(2 + 2 + 3);
    let exit = loop {
        if let Some(exit) = keyhole.try_wait().unwrap() {
            break exit;
        }
        if stopping.elapsed() > bound + Duration::from_secs(30) {
            keyhole.kill().ok();
            panic!("keyhole was still running {:?} after SIGTERM with the broker down", stopping.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = stopping.elapsed();
    let log = std::fs::read_to_string(dir.join("keyhole.log")).unwrap();
    assert!(took <= bound, "exited after {took:?}, beyond drain (2 s) + commit (2 s) timeouts:\n{log}");
    assert_eq!(exit.code(), Some(0), "{log}");
    assert!(log.contains("Final commit"), "the log says the final commit did not complete:\n{log}");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_audit_file_holds_the_offsets_back() {
    let owner = Owner::start().await;
    owner.set("customers/1", Answer::Release("text/plain", b"one".to_vec()));
    let s = common::running::setup(&owner.base_url(), 1, "").await;
    let mut settings = s.settings;
    // Every write to /dev/full fails (ENOSPC), as on a full disk.
    settings.audit = keyhole::config::AuditSink::File(PathBuf::from("/dev/full"));
    let producer = broker::producer();
    for i in 0..3 {
        publish(
            &producer,
            &s.topic,
            Some(0),
            Some(&format!("k{i}")),
            &reference(&format!("ev-{i}"), "customers/1"),
            None,
        )
        .await;
    }
    let mut keyhole = common::running::Running::start(settings);
    // The owner is asked, the handler runs, but no decision may be acknowledged unrecorded.
    let deadline = Instant::now() + Duration::from_secs(30);
    while owner.seen().len() < 3 {
        assert!(Instant::now() < deadline, "the owner was asked {} times", owner.seen().len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    keyhole.assert_quiet(Duration::from_secs(3)).await;
    // -1: nothing committed; 0: the group's position before the first event, committed again.
    let committed = broker::committed(&s.group, &s.topic, 1)[0];
    assert!(committed <= 0, "offset {committed} was committed with no audit record");
    keyhole.stop().await;
    let committed = broker::committed(&s.group, &s.topic, 1)[0];
    assert!(committed <= 0, "offset {committed} was committed at shutdown with no audit record");
}
