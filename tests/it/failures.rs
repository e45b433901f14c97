//! Events that fail: retried within the binding's limits, then dead lettered as they were received
//! (with Kafka Connect-style error headers), retried without end, or the binding stopped, as the
//! binding's failure policy says. Real broker (tansu), real owner on loopback, real sandbox.
// A test fails loudly on anything unexpected; unwrap is how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::broker::{self, publish, reference, with_type};
use common::owner::{Answer, Owner};
use common::running::{Running, by_id, setup, setup_handler};
use keyhole::app::RunError;
use keyhole::config::{FailurePolicy, Stage};
use keyhole::records::audit::{Decision, Disposal};
use rdkafka::Message;
use rdkafka::message::Headers;
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(30);

/// The record's headers, in order, as (name, value) pairs.
fn headers_of(message: &rdkafka::message::OwnedMessage) -> Vec<(String, Option<Vec<u8>>)> {
    message
        .headers()
        .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec))).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_events_are_dead_lettered_as_received_with_error_headers() {
    let owner = Owner::start().await;
    owner.set("customers/1", Answer::Release("text/plain", b"one".to_vec()));
    owner.set("customers/down", Answer::Status(503));
    owner.set("customers/denied", Answer::Status(403));
    let mut s = setup_handler("hostile-leaky", &owner.base_url(), 2, "").await;
    s.settings.bindings[0].retry.max_attempts = 3;
    let dead_letters = s.settings.bindings[0].on_failure.dead_letter_topic.clone();
    let producer = broker::producer();
    // The owner answers others on partition 1 meanwhile: the reference that gets 503 is a
    // poison reference, not an outage (which would pause the binding instead).
    let traffic = broker::healthy_traffic(&s.topic, 1, "customers/1");
    // In this order on partition 0: a malformed envelope (data inline, no ce_id), an owner that stays down
    // (with a token in the reference's query), a handler that rejects, one that keeps asking to
    // retry, a refusal of consent, and an event that is handled.
    let mut malformed = reference("x", "customers/1");
    malformed.retain(|(name, _)| name != "ce_id");
    let sent = [
        (malformed, Some(&b"{\"email\":\"inline-canary@example.com\"}"[..])),
        (reference("down", "customers/down?token=s3cret"), None),
        (with_type(reference("reject", "customers/1"), "leak.reject"), None),
        (with_type(reference("retry", "customers/1"), "leak.retry"), None),
        (with_type(reference("denied", "customers/denied"), "leak.reject"), None),
        (with_type(reference("fine", "customers/1"), "leak.reply"), None),
    ];
    for (i, (headers, value)) in sent.iter().enumerate() {
        publish(&producer, &s.topic, Some(0), Some(&format!("key-{i}")), headers, *value).await;
    }

    let mut keyhole = Running::start(s.settings);
    let mut outcomes = Vec::new();
    while outcomes.len() < sent.len() {
        outcomes.extend(keyhole.take(1, WITHIN).await.into_iter().filter(|o| !broker::is_background(o)));
    }
    traffic.abort();
    keyhole.stop().await;
    let dead = broker::read(&dead_letters, 4).await;

    // Every decision was acknowledged: failures did not hold the partition back.
    assert_eq!(broker::committed(&s.group, &s.topic, 1), [sent.len() as i64]);
    let by_offset = |offset: i64| outcomes.iter().find(|o| o.origin.offset == offset).unwrap();
    // The poison reference's attempts that met a pause (before healthy traffic showed the owner
    // up) are not counted: at least 3 were made, 3 counted (see the message below).
    let expected = [
        (0, "envelope", "inline_data", Some("1")),
        (1, "resolve", "transient", None),
        (2, "handler", "handler_rejected", Some("1")),
        (3, "handler", "handler_retryable", Some("3")),
    ];
    // Events of different keys run concurrently: dead letters are in the order they failed.
    let letter_of = |offset: i64| {
        let at = offset.to_string();
        dead.iter().find(|l| broker::header(l, "__keyhole.errors.offset").as_deref() == Some(&at)).unwrap()
    };
    for (offset, stage, class, attempts) in expected {
        let letter = letter_of(offset);
        let error = |name: &str| broker::header(letter, &format!("__keyhole.errors.{name}"));
        assert_eq!(error("topic").as_deref(), Some(s.topic.as_str()));
        assert_eq!(error("partition").as_deref(), Some("0"));
        assert_eq!(error("consumer.group").as_deref(), Some(s.group.as_str()));
        assert_eq!(error("stage").as_deref(), Some(stage), "offset {offset}");
        assert_eq!(error("class.name").as_deref(), Some(class), "offset {offset}");
        let made: u32 = error("attempts").unwrap().parse().unwrap();
        match attempts {
            Some(attempts) => assert_eq!(made.to_string(), attempts, "offset {offset}"),
            None => assert!(made >= 3, "offset {offset}: {made} attempts"),
        }
        assert_eq!(error("tenant").as_deref(), Some("acme"));
        assert!(error("handler.version").unwrap().starts_with("sha256:"));
        assert!(error("time").unwrap().starts_with("20"));
        assert!(!error("exception.message").unwrap().is_empty());
        // The original record, as received: key, value and headers in order (the error headers
        // follow them), except a dataref's query string and data written inline (the value of
        // a binary-mode event).
        let (original, value) = &sent[offset as usize];
        assert_eq!(letter.key(), Some(format!("key-{offset}").as_bytes()));
        let value = if offset == 0 { None } else { *value };
        assert_eq!(letter.payload(), value);
        let headers = headers_of(letter);
        for (i, (name, value)) in original.iter().enumerate() {
            let expected =
                if offset == 1 && name == "ce_dataref" { b"customers/down".to_vec() } else { value.clone() };
            assert_eq!(headers[i], (name.clone(), Some(expected)), "offset {offset}");
        }
        // Where the audit says it went.
        match &by_offset(offset).disposal {
            Some(Disposal::DeadLettered { topic, partition: 0, offset: at }) => {
                assert_eq!((topic, *at), (&dead_letters, letter.offset()))
            }
            other => panic!("offset {offset}: {other:?}"),
        }
    }
    let redacted = broker::header(letter_of(1), "__keyhole.errors.redacted");
    assert_eq!(redacted.as_deref(), Some("dataref query string"));
    let redacted = broker::header(letter_of(0), "__keyhole.errors.redacted");
    assert_eq!(redacted.as_deref(), Some("inline data"));
    let retried = broker::header(letter_of(3), "__keyhole.errors.exception.message").unwrap();
    assert!(retried.contains("gave up after 3 attempts"), "{retried}");
    let poisoned = broker::header(letter_of(1), "__keyhole.errors.exception.message").unwrap();
    assert!(poisoned.contains("gave up after 3 attempts"), "{poisoned}");
    // A refusal of consent is a decision, not a failure; a handled event is not a failure.
    assert!(matches!(by_offset(4).decision, Decision::ConsentDenied { status: 403 }));
    assert!(matches!(by_offset(5).decision, Decision::Delivered { .. }));
    assert_eq!(by_offset(4).disposal, None);
    // The owner was asked (at least) three times for the poison reference.
    let asked = owner.seen().iter().filter(|s| s.event_id.as_deref() == Some("down")).count();
    assert!(asked >= 3, "asked {asked} times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stop_policy_stops_the_binding_and_leaves_the_event_to_be_read_again() {
    let owner = Owner::start().await;
    owner.set("customers/1", Answer::Release("text/plain", b"one".to_vec()));
    let mut s = setup_handler("hostile-leaky", &owner.base_url(), 1, "").await;
    s.settings.bindings[0].on_failure.handler = FailurePolicy::Stop;
    let producer = broker::producer();
    let events = [("a", "leak.reply"), ("b", "leak.reject"), ("c", "leak.reply")];
    for (id, type_) in events {
        // One key: strictly in order, so nothing after the failed event starts.
        publish(
            &producer,
            &s.topic,
            Some(0),
            Some("k"),
            &with_type(reference(id, "customers/1"), type_),
            None,
        )
        .await;
    }
    let mut keyhole = Running::start(s.settings.clone());
    let outcomes = keyhole.take(2, WITHIN).await;
    let outcomes = by_id(&outcomes);
    assert!(matches!(outcomes["a"].decision, Decision::Delivered { .. }));
    assert!(matches!(outcomes["b"].decision, Decision::Failed { stage: Stage::Handler, .. }));
    assert_eq!(outcomes["b"].disposal, Some(Disposal::BindingStopped));
    // The only binding stopped, so keyhole stops, with the reason.
    let ended = tokio::time::timeout(WITHIN, keyhole.task).await.unwrap().unwrap();
    assert!(matches!(ended, Err(RunError::Stopped)), "{ended:?}");
    assert_eq!(broker::committed(&s.group, &s.topic, 1), [1], "b is read again after a restart");
    assert!(keyhole.outcomes.recv().await.is_none(), "c never ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_policy_retries_past_the_limits_until_the_owner_answers() {
    let owner = Owner::start().await;
    owner.set("customers/1", Answer::Status(503));
    let mut s = setup(&owner.base_url(), 1, "").await;
    s.settings.bindings[0].retry.max_attempts = 2;
    s.settings.bindings[0].on_failure.resolve = FailurePolicy::Retry;
    let producer = broker::producer();
    publish(&producer, &s.topic, Some(0), None, &reference("ev", "customers/1"), None).await;
    let mut keyhole = Running::start(s.settings);
    // Well past two attempts, nothing is decided.
    let deadline = tokio::time::Instant::now() + WITHIN;
    while owner.seen().len() < 5 {
        assert!(tokio::time::Instant::now() < deadline, "the owner was asked {} times", owner.seen().len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    keyhole.assert_quiet(Duration::from_millis(200)).await;
    owner.set("customers/1", Answer::Release("text/plain", b"at last".to_vec()));
    let outcome = keyhole.take(1, WITHIN).await.remove(0);
    assert!(matches!(outcome.decision, Decision::Delivered { .. }), "{outcome:?}");
    assert!(outcome.attempts >= 5, "{}", outcome.attempts);
    keyhole.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_event_keeps_its_id_and_an_overlong_dataref_is_refused_unrequested() {
    let owner = Owner::start().await;
    owner.set("customers/1", Answer::Release("text/plain", b"one".to_vec()));
    let s = setup(&owner.base_url(), 1, "").await;
    let dead_letters = s.settings.bindings[0].on_failure.dead_letter_topic.clone();
    let audit = std::env::temp_dir().join(format!("{}.audit.jsonl", broker::unique("keyhole")));
    let mut settings = s.settings;
    settings.audit = keyhole::config::AuditSink::File(audit.clone());
    let producer = broker::producer();
    let long = format!("customers/{}", "a".repeat(100 * 1024));
    let structured_hostile = vec![("content-type".to_string(), b"application/cloudevents+json".to_vec())];
    let structured_value = serde_json::to_vec(&serde_json::json!({
        "specversion": "1.0", "id": "structured-hostile", "source": "s", "type": "t",
        "dataref": "https://evil.example/x",
    }))
    .unwrap();
    type Record<'a> = (&'a str, Vec<(String, Vec<u8>)>, Option<&'a [u8]>);
    let sent: [Record<'_>; 4] = [
        ("hostile", reference("hostile", "../../admin/users"), None),
        ("inline", reference("inline", "customers/1"), Some(&b"personal data inline"[..])),
        ("too-long", reference("too-long", &long), None),
        ("structured-hostile", structured_hostile, Some(&structured_value)),
    ];
    for (i, (_, headers, value)) in sent.iter().enumerate() {
        publish(&producer, &s.topic, Some(0), Some(&format!("key-{i}")), headers, *value).await;
    }
    let mut keyhole = Running::start(settings);
    let outcomes = keyhole.take(sent.len(), WITHIN).await;
    keyhole.stop().await;
    let outcomes = by_id(&outcomes);
    let dead = broker::read(&dead_letters, sent.len()).await;
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    for (id, _, _) in &sent {
        let outcome =
            outcomes.get(*id).unwrap_or_else(|| panic!("{id}: no outcome with its id: {outcomes:#?}"));
        assert!(matches!(outcome.decision, Decision::Refused { .. }), "{id}: {outcome:#?}");
        let record = records.iter().find(|r| r["event_id"] == *id);
        assert!(record.is_some(), "{id}: no audit record with its id: {records:#?}");
        let letter =
            dead.iter().find(|l| broker::header(l, "__keyhole.errors.event.id").as_deref() == Some(*id));
        assert!(letter.is_some(), "{id}: no dead letter with its id");
    }
    match &outcomes["too-long"].decision {
        Decision::Refused { kind, reason } => {
            assert_eq!(*kind, "forbidden_dataref");
            assert!(reason.contains("2048"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // Nothing refused was requested, and the long reference was copied nowhere.
    assert!(owner.seen().is_empty(), "{:?}", owner.seen());
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(!text.contains(&"a".repeat(1024)), "the overlong reference reached the audit file");
    std::fs::remove_file(&audit).ok();
}

/// `keyhole run --log-format <format>` on `config`, logging to `keyhole.log` beside it.
fn run_with_log_format(config: &std::path::Path, format: &str) -> std::process::Child {
    let log = std::fs::File::create(config.with_file_name("keyhole.log")).unwrap();
    crate::common::command_dying_with_the_test(env!("CARGO_BIN_EXE_keyhole"))
        .args(["--log-format", format, "run", "--config"])
        .arg(config)
        .env("KEYHOLE_TEST_OWNER_TOKEN", common::owner::TOKEN)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_with_a_newline_is_refused_and_forges_no_log_line_in_either_format() {
    const FORGED: &str = "1999-01-01T00:00:00.000000Z  INFO keyhole::app: forged by a producer";
    let owner = Owner::start().await;
    owner.set("customers/1", Answer::Release("text/plain", b"one".to_vec()));
    for format in ["text", "json"] {
        let topic = broker::create_topic(1).await;
        let group = broker::unique("keyhole");
        let dir = std::env::temp_dir().join(broker::unique("keyhole-injection"));
        std::fs::create_dir_all(&dir).unwrap();
        let identity = r#"{ bearer_token = { env = "KEYHOLE_TEST_OWNER_TOKEN" } }"#;
        let mut toml = common::echo_config(&group, &topic, &owner.base_url(), identity, "");
        toml.push_str("\n[audit]\npath = \"audit.jsonl\"\n");
        let config = dir.join("keyhole.toml");
        std::fs::write(&config, toml).unwrap();
        let dead_letters = format!("{group}.acme.echo.dlq");
        broker::create_named_topic(&dead_letters, 1).await;

        let producer = broker::producer();
        let forged_id = format!("evt-1\n{FORGED}\r\n{FORGED}");
        publish(&producer, &topic, Some(0), Some("k1"), &reference(&forged_id, "customers/1"), None).await;
        let structured = serde_json::to_vec(&serde_json::json!({
            "specversion": "1.0", "id": format!("evt-2\n{FORGED}"), "source": "s", "type": "t",
            "dataref": "customers/1", "subject": format!("x\u{85}{FORGED}"),
        }))
        .unwrap();
        let content_type = vec![("content-type".to_string(), b"application/cloudevents+json".to_vec())];
        publish(&producer, &topic, Some(0), Some("k2"), &content_type, Some(&structured)).await;
        publish(&producer, &topic, Some(0), Some("k3"), &reference("evt-3", "customers/1"), None).await;

        let mut keyhole = run_with_log_format(&config, format);
        let audit = dir.join("audit.jsonl");
        let deadline = std::time::Instant::now() + WITHIN;
        while std::fs::read_to_string(&audit).unwrap_or_default().lines().count() < 3 {
            assert!(std::time::Instant::now() < deadline, "three decisions were not made");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        std::process::Command::new("kill").args(["-TERM", &keyhole.id().to_string()]).status().unwrap();
        assert_eq!(keyhole.wait().unwrap().code(), Some(0));

        let log = std::fs::read_to_string(dir.join("keyhole.log")).unwrap();
        for line in log.lines() {
            assert!(!line.starts_with("1999-01-01"), "{format}: a forged line in the log:\n{log}");
            if format == "json" {
                serde_json::from_str::<serde_json::Value>(line)
                    .unwrap_or_else(|e| panic!("{format}: not one JSON object per line ({e}): {line}"));
            }
        }
        let records: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let refused: Vec<&serde_json::Value> =
            records.iter().filter(|r| r["decision"] == "refused").collect();
        assert_eq!(refused.len(), 2, "{format}: {records:#?}");
        for record in &refused {
            assert!(record.to_string().contains("control_character"), "{format}: {record}");
            assert!(record["event_id"].is_null(), "{format}: the forged id was recorded: {record}");
        }
        assert!(records.iter().any(|r| r["event_id"] == "evt-3" && r["decision"] == "delivered"));
        // Refused, not lost: both are dead lettered, as received.
        assert_eq!(broker::read(&dead_letters, 2).await.len(), 2);
        std::fs::remove_dir_all(&dir).ok();
    }
}
