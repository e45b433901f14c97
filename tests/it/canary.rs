//! The canary test: personal data never leaves keyhole except in a reply a handler built from it.
//!
//! The data owner releases records holding a canary string to `hostile-leaky`, a handler that
//! logs the data at every level, prints it to stdout and stderr, and fails with it as its error
//! message or its panic message. keyhole runs as an operator runs it (`keyhole run`, logging
//! everything at trace level but the compiler's), against the real broker. Afterwards the canary must be nowhere in
//! keyhole's log, its audit file or any record it wrote — except in the payload of the reply the
//! handler built. A token in a reference's query string and the owner's bearer token must be
//! nowhere at all. Spans are exported to a collector on loopback meanwhile: none of it may be in
//! any byte the collector receives either.
// A test fails loudly on anything unexpected; unwrap is how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::broker::{self, create_topic, publish, reference, with_type};
use common::collector::Collector;
use common::owner::Owner;
use rdkafka::Message;
use rdkafka::message::{Headers, OwnedMessage};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DATA_CANARY: &str = "CANARY-d4t4-7f3a";
const QUERY_CANARY: &str = "QUERYCANARY-91b2";

/// Everything a record carries, as one string: key, every header name and value, payload.
fn everything(message: &OwnedMessage) -> String {
    let mut all = String::new();
    all.push_str(&String::from_utf8_lossy(message.key().unwrap_or_default()));
    for header in message.headers().map(|h| h.iter().collect::<Vec<_>>()).unwrap_or_default() {
        all.push_str(header.key);
        all.push_str(&String::from_utf8_lossy(header.value.unwrap_or_default()));
    }
    all.push_str(&String::from_utf8_lossy(message.payload().unwrap_or_default()));
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_data_reaches_nothing_keyhole_writes_except_the_handlers_reply() {
    let owner = Owner::releasing_canary(DATA_CANARY).await;
    let topic = create_topic(1).await;
    let replies = create_topic(1).await;
    let group = broker::unique("keyhole");
    let dead_letters = format!("{group}.acme.echo.dlq");
    broker::create_named_topic(&dead_letters, 1).await;

    let dir = std::env::temp_dir().join(broker::unique("keyhole-canary"));
    std::fs::create_dir_all(&dir).unwrap();
    let identity = r#"{ bearer_token = { env = "KEYHOLE_TEST_OWNER_TOKEN" } }"#;
    let collector = Collector::start().await;
    let toml = common::config::TestConfig::echo(
        &group,
        &topic,
        &owner.base_url(),
        identity,
        &format!("reply_topic = \"{replies}\""),
    )
    .guest("hostile-leaky")
    .set("handler.0.retry.max_attempts", 2)
    .set("audit.path", "audit.jsonl")
    .set("telemetry.otlp_endpoint", collector.base_url())
    .set("telemetry.batch_delay_ms", 100)
    .text();
    let config = dir.join("keyhole.toml");
    std::fs::write(&config, toml).unwrap();

    let producer = broker::producer();
    let events = [
        ("reply", "customers/1", "leak.reply"),
        ("reject", "customers/1", "leak.reject"),
        ("retry", "customers/1", "leak.retry"),
        ("panic", "customers/1", "leak.panic"),
        ("silent", "customers/1", "leak.none"),
        ("denied", "customers/2", "leak.reply"),
        ("query", &format!("customers/1?token={QUERY_CANARY}"), "leak.reject"),
    ];
    for (id, dataref, type_) in events {
        publish(&producer, &topic, Some(0), Some(id), &with_type(reference(id, dataref), type_), None).await;
    }

    let log_path = dir.join("keyhole.log");
    let mut keyhole = crate::common::command_dying_with_the_test(env!("CARGO_BIN_EXE_keyhole"))
        .args(["run", "--config"])
        .arg(&config)
        .env("KEYHOLE_TEST_OWNER_TOKEN", common::owner::TOKEN)
        // Everything, except the compiler's own trace of compiling the component (hundreds of
        // megabytes, and nothing of the event's in it).
        .env("RUST_LOG", "trace,cranelift_codegen=info,wasmtime_internal_cranelift=info,regalloc2=info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let audit_path = dir.join("audit.jsonl");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(&audit_path).unwrap_or_default().lines().count() < events.len() {
        assert!(Instant::now() < deadline, "not every event was decided; see {}", log_path.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Command::new("kill").args(["-TERM", &keyhole.id().to_string()]).status().unwrap();
    assert!(keyhole.wait().unwrap().success());

    let log = std::fs::read_to_string(&log_path).unwrap();
    let audit = std::fs::read_to_string(&audit_path).unwrap();
    // The spans were flushed at shutdown: one `process` span per event.
    let spans = collector.spans();
    assert_eq!(
        spans.iter().filter(|s| s.span.name.starts_with("process ")).count(),
        events.len(),
        "{spans:#?}"
    );
    let exported: Vec<u8> = collector.raw().iter().flat_map(|b| b.to_vec()).collect();
    let exported = String::from_utf8_lossy(&exported).into_owned();
    let dead = broker::read(&dead_letters, 4).await;
    let reply = broker::read(&replies, 1).await.remove(0);

    // The handler did try every channel, and keyhole saw it do so.
    assert!(log.contains("Handler log withheld"), "the leaky handler's logs never reached keyhole");
    assert!(log.contains("Handler output withheld"), "the leaky handler's prints never reached keyhole");
    // The one way out: the reply the handler built.
    assert!(String::from_utf8_lossy(reply.payload().unwrap()).contains(DATA_CANARY));
    let reply_headers =
        everything(&reply).replace(&String::from_utf8_lossy(reply.payload().unwrap()).to_string(), "");
    for secret in [DATA_CANARY, QUERY_CANARY, common::owner::TOKEN] {
        assert!(!log.contains(secret), "{secret} in keyhole's log ({})", log_path.display());
        assert!(!audit.contains(secret), "{secret} in the audit file");
        assert!(!exported.contains(secret), "{secret} in an exported span");
        for letter in &dead {
            assert!(!everything(letter).contains(secret), "{secret} in a dead letter");
        }
        assert!(!reply_headers.contains(secret), "{secret} in the reply's headers or key");
    }
    assert!(!String::from_utf8_lossy(reply.payload().unwrap()).contains(QUERY_CANARY));
    // Four events failed (the refusal of consent and the silent one did not) and were dead
    // lettered: the reference went there, the data did not.
    let mut failed: Vec<String> = dead.iter().filter_map(|l| broker::header(l, "ce_id")).collect();
    failed.sort();
    assert_eq!(failed, ["panic", "query", "reject", "retry"]);
    std::fs::remove_dir_all(&dir).unwrap();
}
