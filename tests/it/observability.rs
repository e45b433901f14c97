//! What keyhole tells operators and data owners: access receipts (file and Kafka sinks), the
//! audit trail on a Kafka topic, trace context carried from a request onto its reply, and the
//! Prometheus series. Real broker (tansu),
//! real owner on loopback, real sandbox.
// A test fails loudly on anything unexpected; unwrap is how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::broker::{self, publish, reference, with_type};
use common::owner::{Answer, Owner, TOKEN};
use common::running::{Running, by_id, setup, setup_handler};
use keyhole::config::{AuditSink, Delivery, ReceiptSink, Settings};
use keyhole::records::audit::Decision;
use keyhole::telemetry;
use rdkafka::Message;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(30);

/// Reference-event headers with a `subject`.
fn about(mut headers: Vec<(String, Vec<u8>)>, subject: &str) -> Vec<(String, Vec<u8>)> {
    headers.push(("ce_subject".into(), subject.as_bytes().to_vec()));
    headers
}

/// The receipts in `path`, once there are at least `n` (fails after 30 s).
async fn receipts(path: &Path, n: usize) -> (String, Vec<Value>) {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= n {
            let lines = text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
            return (text, lines);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} receipts:\n{text}",
            text.lines().count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_are_written_for_released_denied_and_every_retried_attempt() {
    let owner = Owner::start().await;
    owner.set("customers/1", Answer::Release("application/json", b"{\"name\":\"Zoe-canary\"}".to_vec()));
    owner.set("customers/2", Answer::Status(403));
    owner.set("customers/3", Answer::Status(503));
    let mut s = setup(&owner.base_url(), 2, "").await;
    s.settings.bindings[0].retry.max_attempts = 3;
    let producer = broker::producer();
    // The owner answers others meanwhile: "down" is a poison reference, counted to its limits.
    let traffic = broker::healthy_traffic(&s.topic, 1, "customers/1");
    let events = [
        ("released", about(reference("released", "customers/1?email=query-canary"), "customer/1")),
        ("denied", about(reference("denied", "customers/2"), "customer/2")),
        ("down", reference("down", "customers/3")),
    ];
    for (key, headers) in &events {
        publish(&producer, &s.topic, Some(0), Some(key), headers, None).await;
    }
    let mut keyhole = Running::start(s.settings);
    let mut outcomes = Vec::new();
    while outcomes.len() < events.len() {
        outcomes.extend(keyhole.take(1, WITHIN).await.into_iter().filter(|o| !broker::is_background(o)));
    }
    traffic.abort();
    // Receipts come before the outcome: all of them are there by now.
    let (text, lines) = receipts(&s.receipts, 5).await;
    keyhole.stop().await;
    assert!(matches!(by_id(&outcomes)["down"].decision, Decision::Failed { .. }));
    let lines: Vec<Value> =
        lines.into_iter().filter(|r| !r["event_id"].as_str().unwrap().starts_with("bg-")).collect();

    let of = |id: &str| lines.iter().filter(|r| r["event_id"] == id).collect::<Vec<_>>();
    let released = of("released");
    assert_eq!(released.len(), 1);
    let released = released[0];
    assert_eq!(released["decision"], "released");
    assert_eq!(released["subject"], "customer/1");
    assert_eq!(released["dataref"], "customers/1");
    assert_eq!(released["tenant"], "acme");
    assert_eq!(released["handler"], "echo");
    assert!(released["handler_version"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(released["data_source"], "owner");
    assert_eq!(released["purpose"], "integration-test");
    assert_eq!(released["attempt"], 1);
    assert!(released["time"].as_str().unwrap().starts_with("20"));
    assert_eq!(released.get("status"), None);

    let denied = of("denied");
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["decision"], "consent_denied");
    assert_eq!(denied[0]["status"], 403);
    assert_eq!(denied[0]["subject"], "customer/2");

    // The owner was asked at least three times (attempts that met a pause are not counted, but
    // each has its receipt): receipts numbered from 1, without a subject (none given).
    let down = of("down");
    let attempts: Vec<u64> = down.iter().map(|r| r["attempt"].as_u64().unwrap()).collect();
    assert!(attempts.len() >= 3, "{attempts:?}");
    assert_eq!(attempts, (1..=attempts.len() as u64).collect::<Vec<_>>());
    assert!(down.iter().all(|r| r["decision"] == "transient" && r.get("subject").is_none()), "{down:?}");
    let asked =
        owner.seen().iter().filter(|s| !s.event_id.as_deref().unwrap_or_default().starts_with("bg-")).count();
    assert_eq!(asked, 2 + attempts.len());

    // Never data, a token or a query string.
    for canary in ["Zoe-canary", "query-canary", "email=", TOKEN] {
        assert!(!text.contains(canary), "{canary} in the receipts:\n{text}");
    }
    std::fs::remove_file(&s.receipts).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_go_to_a_kafka_topic_keyed_by_subject() {
    let owner = Owner::start().await;
    owner.set("customers/1", Answer::Release("text/plain", b"one".to_vec()));
    owner.set("customers/2", Answer::Status(451));
    let mut s = setup(&owner.base_url(), 1, "").await;
    let topic = broker::unique("receipts");
    broker::create_named_topic(&topic, 1).await;
    s.settings.receipts = ReceiptSink::Kafka { topic: topic.clone() };
    let producer = broker::producer();
    publish(&producer, &s.topic, Some(0), None, &about(reference("e1", "customers/1"), "customer/1"), None)
        .await;
    publish(&producer, &s.topic, Some(0), None, &reference("e2", "customers/2?x=query-canary"), None).await;
    let mut keyhole = Running::start(s.settings);
    keyhole.take(2, WITHIN).await;
    keyhole.stop().await;

    let records = broker::read(&topic, 2).await;
    let by_event = |id: &str| {
        records
            .iter()
            .find(|m| {
                let value: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
                value["event_id"] == id
            })
            .unwrap_or_else(|| panic!("no receipt for {id}"))
    };
    let released = by_event("e1");
    assert_eq!(released.key(), Some(&b"customer/1"[..]), "keyed by subject");
    let value: Value = serde_json::from_slice(released.payload().unwrap()).unwrap();
    assert_eq!(
        (value["decision"].as_str(), value["subject"].as_str()),
        (Some("released"), Some("customer/1"))
    );
    assert_eq!(broker::header(released, "content-type").as_deref(), Some("application/json"));
    let denied = by_event("e2");
    assert_eq!(denied.key(), Some(&b"e2"[..]), "keyed by event id without a subject");
    let payload = String::from_utf8(denied.payload().unwrap().to_vec()).unwrap();
    let value: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!((value["decision"].as_str(), value["status"].as_u64()), (Some("consent_denied"), Some(451)));
    assert_eq!(value["dataref"], "customers/2");
    assert!(!payload.contains("query-canary"), "{payload}");
    // The file sink was not used.
    assert!(!s.receipts.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_goes_to_a_kafka_topic_one_record_per_event_without_personal_data() {
    let owner = Owner::start().await;
    owner.set("customers/1", Answer::Release("application/json", b"{\"name\":\"Zoe-canary\"}".to_vec()));
    owner.set("customers/2", Answer::Status(403));
    let mut s = setup(&owner.base_url(), 1, "").await;
    let topic = broker::unique("audit");
    broker::create_named_topic(&topic, 1).await;
    s.settings.audit = AuditSink::Kafka { topic: topic.clone() };
    let producer = broker::producer();
    let events = [
        ("delivered", reference("delivered", "customers/1?email=query-canary")),
        ("denied", reference("denied", "customers/2")),
        // Refused before anyone is asked (a dot segment): dead lettered.
        ("refused", reference("refused", "../customers/1?email=query-canary")),
    ];
    for (_, headers) in &events {
        publish(&producer, &s.topic, Some(0), None, headers, None).await;
    }
    let mut keyhole = Running::start(s.settings);
    let outcomes = keyhole.take(events.len(), WITHIN).await;
    keyhole.stop().await;
    assert!(matches!(by_id(&outcomes)["refused"].decision, Decision::Refused { .. }), "{outcomes:#?}");

    // Each outcome was announced only after its record was confirmed: all are on the topic.
    let records = broker::read_all(&topic).await;
    assert_eq!(records.len(), events.len(), "one record per event, none twice");
    let mut decisions = std::collections::HashMap::new();
    for record in &records {
        let payload = String::from_utf8(record.payload().unwrap().to_vec()).unwrap();
        for canary in ["Zoe-canary", "query-canary", "email=", TOKEN] {
            assert!(!payload.contains(canary), "{canary} in an audit record: {payload}");
        }
        let value: Value = serde_json::from_str(&payload).unwrap();
        let key = format!("{}/0", s.topic);
        assert_eq!(record.key(), Some(key.as_bytes()), "keyed by the event's topic and partition");
        assert_eq!(broker::header(record, "content-type").as_deref(), Some("application/json"));
        assert_eq!((value["tenant"].as_str(), value["handler"].as_str()), (Some("acme"), Some("echo")));
        assert_eq!(value["topic"].as_str(), Some(s.topic.as_str()));
        decisions.insert(value["event_id"].as_str().unwrap().to_string(), value);
    }
    assert_eq!(decisions["delivered"]["decision"], "delivered");
    assert_eq!(decisions["delivered"]["dataref"], "customers/1", "the path, never the query");
    assert!(decisions["delivered"]["data_bytes"].as_u64().unwrap() > 0);
    assert_eq!(
        (decisions["denied"]["decision"].as_str(), decisions["denied"]["status"].as_u64()),
        (Some("consent_denied"), Some(403))
    );
    assert_eq!(decisions["refused"]["decision"], "refused");
    assert!(decisions["refused"]["dead_letter_topic"].is_string(), "{}", decisions["refused"]);
    std::fs::remove_file(&s.receipts).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_on_the_request_continues_onto_the_reply() {
    let owner = Owner::start().await;
    owner.set("customers/1", Answer::Release("text/plain", b"one".to_vec()));
    let replies = broker::unique("replies");
    broker::create_named_topic(&replies, 1).await;
    let s = setup(&owner.base_url(), 1, &format!(r#"reply_topic = "{replies}""#)).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let mut traced = reference("traced", "customers/1");
    traced.push(("ce_traceparent".into(), format!("00-{trace_id}-{parent}-01").into_bytes()));
    traced.push(("ce_tracestate".into(), b"rojo=00f067aa0ba902b7".to_vec()));
    let mut broken = reference("broken", "customers/1");
    broken.push(("ce_traceparent".into(), b"00-not-a-trace-01".to_vec()));
    let producer = broker::producer();
    publish(&producer, &s.topic, Some(0), None, &traced, None).await;
    publish(&producer, &s.topic, Some(0), None, &reference("untraced", "customers/1"), None).await;
    publish(&producer, &s.topic, Some(0), None, &broken, None).await;
    let mut keyhole = Running::start(s.settings);
    let outcomes = keyhole.take(3, WITHIN).await;
    keyhole.stop().await;
    // An invalid traceparent is ignored, never a reason to refuse the event.
    assert!(outcomes.iter().all(|o| matches!(o.decision, Decision::Delivered { .. })), "{outcomes:?}");

    let records = broker::read(&replies, 3).await;
    let reply_to = |id: &str| {
        records.iter().find(|m| broker::header(m, "ce_causationid").as_deref() == Some(id)).unwrap()
    };
    let traceparent = broker::header(reply_to("traced"), "ce_traceparent").expect("the reply's traceparent");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!((parts[0], parts[1], parts[3]), ("00", trace_id, "01"), "same trace, same flags");
    assert_eq!(parts[2].len(), 16);
    assert!(parts[2] != parent && parts[2] != "0000000000000000", "keyhole's own span: {traceparent}");
    assert_eq!(broker::header(reply_to("traced"), "ce_tracestate").as_deref(), Some("rojo=00f067aa0ba902b7"));
    for id in ["untraced", "broken"] {
        assert_eq!(broker::header(reply_to(id), "ce_traceparent"), None, "{id}");
        assert_eq!(broker::header(reply_to(id), "ce_tracestate"), None, "{id}");
    }
}

/// Gives the binding a tenant of this test alone, since the recorder is the process's, shared by
/// the tests running beside this one. Returns the binding's new name.
fn own_tenant(settings: &mut Settings, tenant: &str) -> String {
    let binding = &mut settings.bindings[0];
    binding.tenant = tenant.into();
    binding.name = format!("{tenant}/{}", binding.handler);
    binding.name.clone()
}

/// The lines of a rendered scrape that belong to series `name` (its `_bucket`, `_sum` and
/// `_count` lines too) of tenant `tenant`.
fn series<'a>(rendered: &'a str, name: &str, tenant: &str) -> Vec<&'a str> {
    rendered
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name}_")))
        .filter(|line| line.contains(&format!("tenant=\"{tenant}\"")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_labelled_by_binding_and_tenant_and_never_by_subject() {
    let owner = Owner::start().await;
    owner.set("customers/1", Answer::Release("text/plain", b"one".to_vec()));
    owner.set("customers/2", Answer::Status(403));
    let replies = broker::unique("replies");
    broker::create_named_topic(&replies, 1).await;
    let mut s =
        setup_handler("hostile-leaky", &owner.base_url(), 1, &format!(r#"reply_topic = "{replies}""#)).await;
    let tenant = "metrics-test";
    let binding = own_tenant(&mut s.settings, tenant);
    s.settings.bindings[0].retry.max_attempts = 2;
    // Statistics (and so the lag gauge) often, not every 5 s.
    s.settings.kafka.properties.insert("statistics.interval.ms".into(), "100".into());
    let producer = broker::producer();
    let subject = "person-subject-canary";
    let mut malformed = reference("x", "customers/1");
    malformed.retain(|(name, _)| name != "ce_id");
    let sent = [
        about(with_type(reference("replied", "customers/1"), "leak.reply"), subject),
        about(with_type(reference("denied", "customers/2"), "leak.reply"), subject),
        about(with_type(reference("rejected", "customers/1"), "leak.reject"), subject),
        about(with_type(reference("retried", "customers/1"), "leak.retry"), subject),
        malformed,
    ];
    for (i, headers) in sent.iter().enumerate() {
        publish(&producer, &s.topic, Some(0), Some(&format!("key-{i}")), headers, None).await;
    }
    let mut keyhole = Running::start(s.settings);
    keyhole.take(sent.len(), WITHIN).await;
    // Wait for a statistics report after the events were read and committed.
    let deadline = tokio::time::Instant::now() + WITHIN;
    while series(&telemetry::prometheus().render(), telemetry::CONSUMER_LAG, tenant).is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no consumer lag reported");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // After the drain, so that every event has left the in-flight gauge (an outcome is tapped
    // just before its event is let go).
    keyhole.stop().await;
    let rendered = telemetry::prometheus().render();

    let expect = |name: &str, with: &[&str]| {
        let lines = series(&rendered, name, tenant);
        assert!(!lines.is_empty(), "no {name} for {tenant}:\n{rendered}");
        for label in with {
            assert!(lines.iter().any(|l| l.contains(label)), "no {name} with {label}: {lines:#?}");
        }
        for line in &lines {
            assert!(line.contains(&format!("binding=\"{binding}\"")), "{line}");
        }
    };
    expect(telemetry::EVENTS_CONSUMED, &[]);
    expect(telemetry::EVENTS_FINISHED, &["decision=\"delivered\"", "decision=\"consent_denied\""]);
    expect(telemetry::EVENTS_REFUSED, &["kind=\"missing_attribute\""]);
    expect(
        telemetry::RESOLUTIONS,
        &["outcome=\"released\"", "outcome=\"consent_denied\"", "data_source=\"owner\""],
    );
    expect(telemetry::HANDLER_DURATION, &["_bucket{", "le=\"0.001\"", "_count{"]);
    expect(telemetry::HANDLER_ERRORS, &["kind=\"handler_rejected\"", "kind=\"handler_retryable\""]);
    expect(telemetry::EVENT_RETRIES, &["cause=\"handler_retryable\""]);
    expect(telemetry::DEAD_LETTERS, &["stage=\"handler\"", "stage=\"envelope\""]);
    expect(telemetry::REPLIES, &[]);
    expect(telemetry::RECEIPTS, &["decision=\"released\"", "decision=\"consent_denied\""]);
    expect(telemetry::CONSUMER_LAG, &[&format!("topic=\"{}\"", s.topic), "partition=\"0\""]);
    // Everything read is finished: the gauge came back down.
    let in_flight = series(&rendered, telemetry::EVENTS_IN_FLIGHT, tenant);
    assert_eq!(in_flight.len(), 1, "{in_flight:?}");
    assert!(in_flight[0].ends_with(" 0"), "{}", in_flight[0]);
    // Counts follow the events: one reply, two consent answers for the retried event.
    let value = |line: &str| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap();
    let replies = series(&rendered, telemetry::REPLIES, tenant);
    assert_eq!(value(replies[0]), 1.0, "{replies:?}");
    let consumed = series(&rendered, telemetry::EVENTS_CONSUMED, tenant);
    assert_eq!(value(consumed[0]), sent.len() as f64, "{consumed:?}");
    // Nothing per person, nothing per event.
    for canary in ["subject", subject, "replied", "retried"] {
        assert!(!rendered.contains(canary), "{canary} in /metrics:\n{rendered}");
    }
    std::fs::remove_file(&s.receipts).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_flight_gauge_comes_down_in_at_most_once_delivery() {
    let owner = Owner::start().await;
    owner.set("customers/1", Answer::Release("text/plain", b"one".to_vec()));
    owner.set("customers/2", Answer::Status(410));
    let mut s = setup(&owner.base_url(), 1, "").await;
    let tenant = "in-flight-test";
    own_tenant(&mut s.settings, tenant);
    s.settings.bindings[0].delivery = Delivery::AtMostOnce;
    let producer = broker::producer();
    for (id, path) in [("a", "customers/1"), ("b", "customers/2"), ("c", "customers/1")] {
        publish(&producer, &s.topic, Some(0), Some(id), &reference(id, path), None).await;
    }
    let mut keyhole = Running::start(s.settings);
    keyhole.take(3, WITHIN).await;
    keyhole.stop().await;
    let rendered = telemetry::prometheus().render();
    let in_flight = series(&rendered, telemetry::EVENTS_IN_FLIGHT, tenant);
    assert_eq!(in_flight.len(), 1, "{rendered}");
    assert!(in_flight[0].ends_with(" 0"), "{}", in_flight[0]);
    let consumed = series(&rendered, telemetry::EVENTS_CONSUMED, tenant);
    assert!(consumed[0].ends_with(" 3"), "{consumed:?}");
    std::fs::remove_file(&s.receipts).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_counters_are_exported_at_zero_before_their_first_increment() {
    let owner = Owner::start().await;
    let mut s = setup(&owner.base_url(), 1, "").await;
    let tenant = "zero-test";
    own_tenant(&mut s.settings, tenant);
    let keyhole = Running::start(s.settings);
    // No event at all: alerts on these counters must read 0, not "no data".
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let names = [
        telemetry::DEAD_LETTERS,
        telemetry::EVENT_RETRIES,
        telemetry::EVENTS_REFUSED,
        telemetry::HANDLER_ERRORS,
        telemetry::RECEIPT_ERRORS,
        telemetry::AUDIT_ERRORS,
    ];
    loop {
        let rendered = telemetry::prometheus().render();
        let missing: Vec<&str> =
            names.iter().copied().filter(|name| series(&rendered, name, tenant).is_empty()).collect();
        if missing.is_empty() {
            for name in names {
                for line in series(&rendered, name, tenant) {
                    assert!(line.ends_with(" 0"), "{line}");
                }
            }
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no series for {missing:?}:\n{rendered}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    keyhole.stop().await;
}
