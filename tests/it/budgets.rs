//! The sandbox's instance slots and memory budgets: events wait for them (before the owner is
//! asked) instead of failing, and the process's memory stays within the budget.

use crate::common::broker::{self, publish, reference};
use crate::common::config::TestConfig;
use crate::common::owner::{Answer, Owner};
use crate::common::running::{Running, setup_handler};
use keyhole::records::audit::Decision;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_beyond_the_instance_pool_wait_and_ask_the_owner_once() {
    const EVENTS: usize = 24;
    let owner = Owner::start().await;
    owner.set("probe/work", Answer::Release("application/json", br#"{"spin_ms": 100}"#.to_vec()));
    let mut s = setup_handler("probe", &owner.base_url(), 1, "max_in_flight = 16").await;
    // A pool of two instances for 16 events in flight at once.
    s.settings.sandbox.max_concurrent_instances = 2;
    let dead_letters = s.settings.bindings[0].on_failure.dead_letter_topic.clone();
    let producer = broker::producer();
    for i in 0..EVENTS {
        let (id, key) = (format!("e-{i}"), format!("key-{i}"));
        publish(&producer, &s.topic, Some(0), Some(&key), &reference(&id, "probe/work"), None).await;
    }
    let mut keyhole = Running::start(s.settings);
    let outcomes = keyhole.take(EVENTS, Duration::from_secs(60)).await;
    keyhole.stop().await;

    let failed: Vec<_> =
        outcomes.iter().filter(|o| !matches!(o.decision, Decision::Delivered { .. })).collect();
    assert!(failed.is_empty(), "not every event was delivered: {failed:#?}");
    assert!(outcomes.iter().all(|o| o.attempts == 1), "an event was attempted again");
    let asked = owner.seen().iter().filter(|seen| seen.path.ends_with("probe/work")).count();
    assert_eq!(asked, EVENTS, "the owner was asked {asked} times for {EVENTS} events");
    assert!(outcomes.iter().all(|o| o.disposal.is_none()), "an event was dead-lettered to {dead_letters}");
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_that_hold_their_memory_keep_the_process_within_its_budget() {
    const EVENTS: usize = 24;
    /// The budget in this test, and what keyhole may add to it (documented in
    /// docs/configuration.md: pool slots' resident pages, buffers).
    const BUDGET: u64 = 192 * MIB;
    const OVERHEAD: u64 = 64 * MIB;
    let owner = Owner::start().await;
    // Each event's instance touches 56 MiB of its 64 MiB and holds it for 300 ms.
    let ask = format!(r#"{{"alloc_bytes": {}, "spin_ms": 300}}"#, 56 * MIB);
    owner.set("probe/hoard", Answer::Release("application/json", ask.into_bytes()));
    let topic = broker::create_topic(1).await;
    let dir = std::env::temp_dir().join(broker::unique("keyhole-budget"));
    std::fs::create_dir_all(&dir).unwrap();
    let identity = r#"{ bearer_token = { env = "KEYHOLE_TEST_OWNER_TOKEN" } }"#;
    let config = TestConfig::echo(
        &broker::unique("keyhole"),
        &topic,
        &owner.base_url(),
        identity,
        "max_in_flight = 32\n[handler.limits]\nmax_memory_bytes = 67108864\ndeadline_ms = 5000",
    )
    .guest("probe")
    .set("sandbox.memory_budget_bytes", BUDGET as i64)
    .set("sandbox.tenant_memory_budget_bytes", BUDGET as i64)
    .set("sandbox.max_memory_bytes_ceiling", (64 * MIB) as i64)
    .set("audit.path", dir.join("audit.jsonl").display().to_string())
    .set("receipts.path", dir.join("receipts.jsonl").display().to_string())
    .clone();
    let path = dir.join("keyhole.toml");
    config.write(&path);
    let keyhole = crate::common::run_keyhole(&path);
    // Started (its consumer joined) once a first event is decided; its resident memory then is
    // the baseline the budget comes on top of.
    let producer = broker::producer();
    publish(&producer, &topic, Some(0), Some("warm-up"), &reference("warm-up", "probe/other"), None).await;
    let audit = dir.join("audit.jsonl");
    let decided = || std::fs::read_to_string(&audit).map(|t| t.lines().count()).unwrap_or(0);
    let started = Instant::now();
    while decided() < 1 {
        assert!(started.elapsed() < Duration::from_secs(60), "keyhole decided nothing:\n{}", log(&dir));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let baseline = status_kib(keyhole.id(), "VmRSS:") * 1024;
    for i in 0..EVENTS {
        let (id, key) = (format!("h-{i}"), format!("key-{i}"));
        publish(&producer, &topic, Some(0), Some(&key), &reference(&id, "probe/hoard"), None).await;
    }
    while decided() < 1 + EVENTS {
        assert!(started.elapsed() < Duration::from_secs(120), "not every event was decided:\n{}", log(&dir));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let peak = status_kib(keyhole.id(), "VmHWM:") * 1024;
    drop(keyhole);
    let delivered = std::fs::read_to_string(&audit).unwrap().matches(r#""decision":"delivered""#).count();
    eprintln!(
        "resident: {} MiB before the events, {} MiB at the peak (budget {} MiB)",
        baseline / MIB,
        peak / MIB,
        BUDGET / MIB
    );
    assert_eq!(delivered, EVENTS, "{}", std::fs::read_to_string(&audit).unwrap());
    assert!(
        peak <= baseline + BUDGET + OVERHEAD,
        "peak resident memory {} MiB, above {} MiB before the events + the {} MiB budget + {} MiB",
        peak / MIB,
        baseline / MIB,
        BUDGET / MIB,
        OVERHEAD / MIB
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn log(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("keyhole.log")).unwrap_or_default()
}
