//! A committed decision is always on record: after keyhole is killed (SIGKILL, as a power loss
//! stops it, minus the page cache: the audit file is synced before offsets are stored), every
//! event below its partition's committed offset has its audit line.

use crate::common::broker::{self, create_topic, publish, reference};
use crate::common::owner::{Answer, Owner};
use std::collections::HashSet;
use std::time::{Duration, Instant};

const EVENTS: usize = 300;
const PARTITIONS: i32 = 2;

/// (partition, offset) of every audit line, whole lines only (a kill may tear the last one).
fn audited(audit: &std::path::Path) -> HashSet<(i32, i64)> {
    std::fs::read_to_string(audit)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .map(|r| (r["partition"].as_i64().unwrap() as i32, r["offset"].as_i64().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_committed_offset_has_its_audit_line_after_sigkill() {
    let owner = Owner::start().await;
    owner.set_delay(Duration::from_millis(20));
    let topic = create_topic(PARTITIONS).await;
    let group = broker::unique("keyhole");
    let dir = std::env::temp_dir().join(broker::unique("keyhole-durability"));
    std::fs::create_dir_all(&dir).unwrap();
    let identity = r#"{ bearer_token = { env = "KEYHOLE_TEST_OWNER_TOKEN" } }"#;
    let mut config =
        crate::common::echo_config(&group, &topic, &owner.base_url(), identity, "max_in_flight = 32");
    config.push_str("\n[audit]\npath = \"audit.jsonl\"\n");
    let path = dir.join("keyhole.toml");
    std::fs::write(&path, config).unwrap();
    let audit = dir.join("audit.jsonl");
    let producer = broker::producer();
    for i in 0..EVENTS {
        let id = format!("d-{i}");
        owner.set(&format!("r/{id}"), Answer::Release("text/plain", id.clone().into_bytes()));
        publish(
            &producer,
            &topic,
            None,
            Some(&format!("key-{}", i % 40)),
            &reference(&id, &format!("r/{id}")),
            None,
        )
        .await;
    }
    let binding_group = format!("{group}.acme.echo");
    let mut checked_commits = 0;
    for round in 1..=3 {
        let keyhole = crate::common::run_keyhole(&path);
        // Killed while events are in flight and commits run in the background.
        let target = EVENTS * round / 4;
        let deadline = Instant::now() + Duration::from_secs(60);
        while audited(&audit).len() < target {
            assert!(
                Instant::now() < deadline,
                "round {round}: only {} events recorded",
                audited(&audit).len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(keyhole); // SIGKILL
        let committed = broker::committed(&binding_group, &topic, PARTITIONS);
        let on_record = audited(&audit);
        for (partition, &end) in committed.iter().enumerate() {
            let missing: Vec<i64> =
                (0..end).filter(|offset| !on_record.contains(&(partition as i32, *offset))).collect();
            assert!(
                missing.is_empty(),
                "round {round}: partition {partition} committed up to {end}, but offsets {missing:?} have no audit line"
            );
        }
        checked_commits += committed.iter().map(|c| (*c).max(0)).sum::<i64>();
    }
    assert!(checked_commits > 0, "nothing was committed before the kills: the test proved nothing");
    let _ = std::fs::remove_dir_all(&dir);
}
