//! Span export over OTLP/HTTP: `keyhole run` as an operator runs it, pointed at a collector on
//! loopback (by `OTEL_*` variables or by `[telemetry]`), against the real broker and a real data
//! owner. The spans must arrive with the messaging conventions and the right parent links, carry
//! nothing of a person, and a collector that is dead or never answers must hold no event back.
// A test fails loudly on anything unexpected; unwrap is how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::{self, broker, collector, owner};
use broker::{create_topic, publish, reference};
use collector::{Collector, Exported, hung_collector};
use owner::{Answer, Owner};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DATA_CANARY: &str = "CANARY-sp4n-data";
const SUBJECT_CANARY: &str = "CANARY-sp4n-subject";
const QUERY_CANARY: &str = "CANARY-sp4n-query";

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const UNSAMPLED_TRACE_ID: &str = "5bf92f3577b34da6a3ce929d0e0e4737";

/// An event's id, its reference and its extra headers.
type Event<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

/// OTLP span kinds and status codes.
const CONSUMER: i32 = 5;
const PRODUCER: i32 = 4;
const CLIENT: i32 = 3;
const STATUS_ERROR: i32 = 2;

fn about(mut headers: Vec<(String, Vec<u8>)>, extra: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    headers.push(("ce_subject".into(), SUBJECT_CANARY.as_bytes().to_vec()));
    headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())));
    headers
}

/// A directory with a configuration: echo on `topic`, replies to `replies`, an audit file, and
/// `telemetry` appended.
fn configure(name: &str, group: &str, topic: &str, replies: &str, owner: &Owner, telemetry: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(broker::unique(name));
    std::fs::create_dir_all(&dir).unwrap();
    let identity = r#"{ bearer_token = { env = "KEYHOLE_TEST_OWNER_TOKEN" } }"#;
    let mut toml = common::echo_config(
        group,
        topic,
        &owner.base_url(),
        identity,
        &format!("reply_topic = \"{replies}\""),
    );
    toml.push_str(&format!("max_attempts = 2\n\n[audit]\npath = \"audit.jsonl\"\n\n{telemetry}\n"));
    std::fs::write(dir.join("keyhole.toml"), toml).unwrap();
    dir
}

fn start(dir: &Path, env: &[(&str, String)]) -> Child {
    let mut command = crate::common::command_dying_with_the_test(env!("CARGO_BIN_EXE_keyhole"));
    command
        .args(["run", "--config"])
        .arg(dir.join("keyhole.toml"))
        .env("KEYHOLE_TEST_OWNER_TOKEN", owner::TOKEN)
        .env("RUST_LOG", "warn,keyhole=info,opentelemetry_sdk=warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("keyhole.log")).unwrap());
    // Only what the test sets: none of the OTEL_* variables of whoever runs it.
    for (var, _) in std::env::vars().filter(|(name, _)| name.starts_with("OTEL_")) {
        command.env_remove(var);
    }
    command.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    command.spawn().unwrap()
}

/// Waits until the audit file has `n` decisions.
async fn decided(dir: &Path, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while std::fs::read_to_string(dir.join("audit.jsonl")).unwrap_or_default().lines().count() < n {
        assert!(
            Instant::now() < deadline,
            "not every event was decided; see {}",
            dir.join("keyhole.log").display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM; the exit status and how long the exit took.
fn terminate(mut keyhole: Child) -> (std::process::ExitStatus, Duration) {
    let started = Instant::now();
    Command::new("kill").args(["-TERM", &keyhole.id().to_string()]).status().unwrap();
    let status = keyhole.wait().unwrap();
    (status, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_a_collector_with_the_messaging_conventions_parent_links_and_nothing_of_a_person() {
    let owner = Owner::releasing_canary(DATA_CANARY).await;
    let collector = Collector::start().await;
    let (topic, replies) = (create_topic(1).await, create_topic(1).await);
    let group = broker::unique("keyhole");
    let dead_letters = format!("{group}.acme.echo.dlq");
    broker::create_named_topic(&dead_letters, 1).await;

    let traced =
        [("ce_traceparent", format!("00-{TRACE_ID}-{PARENT}-01")), ("ce_tracestate", "rojo=1".into())];
    let unsampled = [("ce_traceparent", format!("00-{UNSAMPLED_TRACE_ID}-{PARENT}-00"))];
    let traced: Vec<(&str, &str)> = traced.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let unsampled: Vec<(&str, &str)> = unsampled.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let query = format!("customers/1?token={QUERY_CANARY}");
    // In offset order.
    let events: [Event<'_>; 5] = [
        ("traced", "customers/1", &traced),
        ("untraced", &query, &[]),
        ("denied", "customers/2", &[]),
        ("hostile", "http://169.254.169.254/latest/meta-data", &[]),
        ("unsampled", "customers/1", &unsampled),
    ];
    let producer = broker::producer();
    for (id, dataref, extra) in events {
        publish(
            &producer,
            &topic,
            Some(0),
            Some(SUBJECT_CANARY),
            &about(reference(id, dataref), extra),
            None,
        )
        .await;
    }

    // The collector named the standard way, the batching tuned in the file.
    let dir =
        configure("keyhole-traces", &group, &topic, &replies, &owner, "[telemetry]\nbatch_delay_ms = 100");
    let keyhole = start(
        &dir,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", collector.base_url()), ("OTEL_SERVICE_NAME", "keyhole-eu".into())],
    );
    decided(&dir, events.len(), Duration::from_secs(60)).await;
    let processed = |spans: &[Exported]| spans.iter().filter(|s| s.span.name.starts_with("process ")).count();
    let deadline = Instant::now() + Duration::from_secs(30);
    while processed(&collector.spans()) < 4 {
        assert!(Instant::now() < deadline, "spans never reached the collector: {:?}", collector.spans());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _) = terminate(keyhole);
    assert!(status.success(), "{status}");
    let spans = collector.spans();
    let log = std::fs::read_to_string(dir.join("keyhole.log")).unwrap();

    // One event span per sampled event, with the messaging conventions.
    let by_event: HashMap<String, &Exported> = spans
        .iter()
        .filter(|s| s.span.name.starts_with("process "))
        .map(|s| (s.attr("messaging.message.id").unwrap(), s))
        .collect();
    assert_eq!(processed(&spans), 4, "{spans:#?}");
    let group_name = format!("{group}.acme.echo");
    for (offset, (id, _, _)) in events.iter().enumerate().take(4) {
        let span = by_event.get(*id).unwrap_or_else(|| panic!("no span for {id}: {spans:#?}"));
        assert_eq!(span.span.name, format!("process {topic}"));
        assert_eq!(span.span.kind, CONSUMER, "{id}");
        for (key, value) in [
            ("messaging.system", "kafka"),
            ("messaging.operation.type", "process"),
            ("messaging.destination.name", topic.as_str()),
            ("messaging.consumer.group.name", group_name.as_str()),
            ("messaging.destination.partition.id", "0"),
            ("messaging.kafka.offset", &offset.to_string()),
            ("keyhole.tenant", "acme"),
            ("keyhole.handler", "echo"),
        ] {
            assert_eq!(span.attr(key).as_deref(), Some(value), "{id}: {key}");
        }
        assert_eq!(span.resource_attr("service.name").as_deref(), Some("keyhole-eu"));
        assert!(span.resource_attr("service.instance.id").is_some());
    }
    // The unsampled trace is not exported, and its reply still carries the trace on.
    assert!(spans.iter().all(|s| s.trace_id() != UNSAMPLED_TRACE_ID), "an unsampled trace was exported");

    // The traced event continues the caller's trace; its stages are children of its span.
    let traced = by_event["traced"];
    assert_eq!((traced.trace_id().as_str(), traced.parent_span_id().as_str()), (TRACE_ID, PARENT));
    assert_eq!(traced.attr("keyhole.decision").as_deref(), Some("delivered"));
    let children = |parent: &Exported| -> Vec<&Exported> {
        spans
            .iter()
            .filter(|s| s.parent_span_id() == parent.span_id() && s.trace_id() == parent.trace_id())
            .collect()
    };
    let names = |parent: &Exported| {
        let mut names: Vec<String> = children(parent).iter().map(|s| s.span.name.clone()).collect();
        names.sort();
        names
    };
    let send_replies = format!("send {replies}");
    assert_eq!(names(traced), ["resolve", "sandbox", send_replies.as_str()]);
    for child in children(traced) {
        assert!(child.span.start_time_unix_nano >= traced.span.start_time_unix_nano);
        assert!(child.span.end_time_unix_nano <= traced.span.end_time_unix_nano);
        match child.span.name.as_str() {
            "resolve" => {
                assert_eq!(child.span.kind, CLIENT);
                assert_eq!(child.attr("keyhole.outcome").as_deref(), Some("released"));
                assert_eq!(child.attr("keyhole.attempt").as_deref(), Some("1"));
            }
            "sandbox" => assert!(child.attr("keyhole.handler.version").is_some()),
            _ => {
                assert_eq!(child.span.kind, PRODUCER);
                assert_eq!(child.attr("messaging.operation.type").as_deref(), Some("send"));
                assert_eq!(child.attr("messaging.destination.name").as_deref(), Some(replies.as_str()));
            }
        }
    }
    // The untraced event starts a trace at keyhole: a root span.
    let untraced = by_event["untraced"];
    assert_eq!(untraced.parent_span_id(), "", "a root span");
    assert_eq!(names(untraced), ["resolve", "sandbox", send_replies.as_str()]);
    // Consent refused: the owner was asked, the handler never ran.
    let denied = by_event["denied"];
    assert_eq!(names(denied), ["resolve"]);
    let resolve = children(denied)[0];
    assert_eq!(resolve.attr("keyhole.outcome").as_deref(), Some("consent_denied"));
    assert_eq!(resolve.attr("http.response.status_code").as_deref(), Some("403"));
    assert_eq!(denied.attr("keyhole.decision").as_deref(), Some("consent_denied"));
    // A hostile reference: refused unrequested, dead lettered, the span an error.
    let hostile = by_event["hostile"];
    assert_eq!(names(hostile), [format!("send {dead_letters}")]);
    assert_eq!(hostile.attr("keyhole.decision").as_deref(), Some("refused"));
    assert_eq!(hostile.span.status.as_ref().map(|s| s.code), Some(STATUS_ERROR));

    // The replies name keyhole's exported span as their parent.
    let records = broker::read(&replies, 3).await;
    let traceparent = |id: &str| {
        let reply =
            records.iter().find(|m| broker::header(m, "ce_causationid").as_deref() == Some(id)).unwrap();
        broker::header(reply, "ce_traceparent").unwrap()
    };
    assert_eq!(traceparent("traced"), format!("00-{TRACE_ID}-{}-01", traced.span_id()));
    assert_eq!(traceparent("untraced"), format!("00-{}-{}-01", untraced.trace_id(), untraced.span_id()));
    assert!(traceparent("unsampled").starts_with(&format!("00-{UNSAMPLED_TRACE_ID}-")));
    assert!(traceparent("unsampled").ends_with("-00"));

    // Nothing of a person, a reference or a credential in any byte exported.
    let exported: Vec<u8> = collector.raw().iter().flat_map(|b| b.to_vec()).collect();
    let exported = String::from_utf8_lossy(&exported);
    for secret in [DATA_CANARY, SUBJECT_CANARY, QUERY_CANARY, "customers/", "169.254.169.254", owner::TOKEN] {
        assert!(!exported.contains(secret), "{secret} was exported");
    }
    assert!(log.contains("Exporting spans over OTLP"), "{log}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_dead_or_never_answers_holds_no_event_back() {
    const EVENTS: usize = 200;
    let owner = Owner::start().await;
    owner.set("customers/1", Answer::Release("application/json", b"{}".to_vec()));
    let hung = hung_collector().await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    for (what, endpoint) in [("never answers", hung.addr), ("is gone", closed)] {
        let (topic, replies) = (create_topic(2).await, create_topic(1).await);
        let group = broker::unique("keyhole");
        let producer = broker::producer();
        for i in 0..EVENTS {
            let id = format!("e{i}");
            publish(&producer, &topic, Some((i % 2) as i32), Some(&id), &reference(&id, "customers/1"), None)
                .await;
        }
        // A small queue, filled within the first events: the rest of the spans are dropped.
        let (admin, monitoring) = (common::cluster::free_port(), common::cluster::free_port());
        let telemetry = format!(
            "[telemetry]\notlp_endpoint = \"http://{endpoint}\"\nexport_timeout_ms = 1000\n\
             max_queue_spans = 64\nmax_batch_spans = 32\nbatch_delay_ms = 100\n\n\
             [admin]\nlisten = \"127.0.0.1:{admin}\"\nmonitoring_listen = \"127.0.0.1:{monitoring}\""
        );
        let dir = configure("keyhole-dead-collector", &group, &topic, &replies, &owner, &telemetry);
        let keyhole = start(&dir, &[]);
        decided(&dir, EVENTS, Duration::from_secs(60)).await;
        assert_eq!(broker::read(&replies, EVENTS).await.len(), EVENTS, "the collector {what}");
        // The failed exports are counted.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let metrics = reqwest::get(format!("http://127.0.0.1:{monitoring}/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let failed = metrics
                .lines()
                .find_map(|l| l.strip_prefix(r#"keyhole_trace_exports_total{outcome="failed"} "#))
                .map(|n| n.parse::<f64>().unwrap());
            if failed.is_some_and(|n| n >= 1.0) {
                assert!(metrics.contains(r#"keyhole_trace_exports_total{outcome="ok"} 0"#), "{metrics}");
                break;
            }
            assert!(Instant::now() < deadline, "the collector {what}: failed exports not counted\n{metrics}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (status, took) = terminate(keyhole);
        let log = std::fs::read_to_string(dir.join("keyhole.log")).unwrap();
        assert!(status.success(), "the collector {what}: {status}\n{log}");
        // The drain has nothing left; the queued spans get the flush's 3 s at most.
        assert!(took < Duration::from_secs(10), "the collector {what}: shutdown took {took:?}\n{log}");
        // Logged once a minute, not once a batch.
        assert_eq!(log.matches("Spans not exported").count(), 1, "the collector {what}\n{log}");
        assert!(!log.contains("ExportError"), "the collector {what}: the SDK logs every failed batch\n{log}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
