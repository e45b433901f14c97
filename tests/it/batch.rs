//! Batched resolution (`[data_source.batch]`, docs/data-owners.md "Batched resolution"): the
//! references in flight together go to the owner in one request, and every guarantee of the
//! single request holds per reference.

use crate::common;
use common::broker::{self, publish, reference};
use common::owner::{Answer, Owner};
use common::running::{Running, Setup, by_id, setup};
use keyhole::records::audit::Decision;
use keyhole::resolve::BatchSettings;
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(60);

/// One echo binding on one partition whose data source batches up to `max_references`.
async fn batched(owner: &Owner, max_references: usize) -> Setup {
    let mut s = setup(&owner.base_url(), 1, "max_in_flight = 64").await;
    s.settings.data_sources[0].batch =
        Some(BatchSettings { path: "batch".into(), max_references, max_wait: Duration::from_millis(20) });
    s
}

fn answers(owner: &Owner) {
    owner.set("customers/1", Answer::Release("application/json", b"{\"name\":\"Ada\"}".to_vec()));
    owner.set("customers/2", Answer::Status(403));
    owner.set("customers/3", Answer::Status(410));
    // Bytes that are not UTF-8 travel as base64 and arrive exactly.
    owner.set("customers/4", Answer::Release("application/octet-stream", vec![0, 159, 255, 10]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_in_flight_together_share_a_request_and_each_gets_its_own_decision_and_receipt() {
    let owner = Owner::start().await;
    answers(&owner);
    let s = batched(&owner, 16).await;
    let producer = broker::producer();
    let events = 48;
    for i in 0..events {
        let dataref = format!("customers/{}?campaign=c{i}", i % 4 + 1);
        publish(
            &producer,
            &s.topic,
            Some(0),
            // Eight keys: a key's events are decided one after another, batched or not.
            Some(&format!("k{}", i % 8)),
            &reference(&format!("e{i}"), &dataref),
            None,
        )
        .await;
    }
    let receipts = s.receipts.clone();
    let mut keyhole = Running::start(s.settings);
    let outcomes = keyhole.take(events, WITHIN).await;
    keyhole.stop().await;
    // Per-key order: each key's outcomes came in offset order.
    let mut last = std::collections::HashMap::new();
    for outcome in &outcomes {
        let i: usize = outcome.event_id.as_deref().unwrap()[1..].parse().unwrap();
        let previous = last.insert(i % 8, outcome.origin.offset);
        assert!(previous < Some(outcome.origin.offset), "key k{} out of order at e{i}", i % 8);
    }

    let by_id = by_id(&outcomes);
    for i in 0..events {
        let outcome = &by_id[format!("e{i}").as_str()];
        match (i % 4 + 1, &outcome.decision) {
            (1 | 4, Decision::Delivered { data_bytes, .. }) => {
                assert_eq!(*data_bytes, if i % 4 == 0 { 14 } else { 4 }, "e{i}: the bytes as released");
            }
            (2, Decision::ConsentDenied { status: 403 }) | (3, Decision::Gone { status: 410 }) => {}
            (n, other) => panic!("e{i} (customers/{n}) was {other:?}"),
        }
    }
    let echoed = common::running::echoed(by_id["e3"]);
    assert_eq!(echoed["data_base64"], "AJ//Cg==", "{echoed}");
    // One request served many references, none more than the limit; every reference once.
    let batches = owner.batches();
    assert_eq!(batches.iter().sum::<usize>(), events, "{batches:?}");
    assert!(batches.len() < events / 2, "references were not batched: {batches:?}");
    assert!(batches.iter().all(|&n| n <= 16), "{batches:?}");
    // The owner learnt who asks for each reference, and the version its data would reach.
    let seen = owner.seen();
    assert_eq!(seen.len(), events);
    for request in &seen {
        let id = request.event_id.as_deref().unwrap();
        assert_eq!(request.tenant.as_deref(), Some("acme"));
        assert_eq!(request.handler_version.as_deref(), Some(by_id[id].asker.version.as_str()), "{id}");
    }
    // One receipt per reference, with its own decision, and never the query.
    let text = std::fs::read_to_string(&receipts).unwrap();
    assert_eq!(text.lines().count(), events, "{text}");
    assert!(!text.contains("campaign"), "a query string in a receipt");
    let denied = text.lines().filter(|line| line.contains(r#""decision":"consent_denied""#)).count();
    assert_eq!(denied, events / 4);
    std::fs::remove_file(&receipts).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_fails_is_tried_again_per_reference_and_nothing_is_lost_or_doubled() {
    let owner = Owner::start().await;
    answers(&owner);
    owner.go_down(503);
    let s = batched(&owner, 4).await;
    let producer = broker::producer();
    for i in 0..10 {
        publish(
            &producer,
            &s.topic,
            Some(0),
            Some(&format!("k{i}")),
            &reference(&format!("e{i}"), "customers/1"),
            None,
        )
        .await;
    }
    let receipts = s.receipts.clone();
    let mut keyhole = Running::start(s.settings);
    let started = tokio::time::Instant::now();
    while owner.batches().len() < 2 {
        assert!(started.elapsed() < WITHIN, "no batch reached the owner");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    owner.recover();
    let outcomes = keyhole.take(10, WITHIN).await;
    keyhole.stop().await;
    assert!(outcomes.iter().all(|o| matches!(o.decision, Decision::Delivered { .. })), "{outcomes:#?}");
    assert!(outcomes.iter().any(|o| o.attempts > 1), "the failed batch was tried again: {outcomes:#?}");
    let ids: std::collections::BTreeSet<_> = outcomes.iter().map(|o| o.event_id.clone().unwrap()).collect();
    assert_eq!(ids.len(), 10, "each event decided once");
    // Every attempt has its receipt: the failed ones as unavailable, then one released each.
    let text = std::fs::read_to_string(&receipts).unwrap();
    let released = text.lines().filter(|line| line.contains(r#""decision":"released""#)).count();
    assert_eq!(released, 10, "{text}");
    std::fs::remove_file(&receipts).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_reference_is_refused_before_any_batch_is_sent() {
    let owner = Owner::start().await;
    answers(&owner);
    let s = batched(&owner, 16).await;
    let producer = broker::producer();
    publish(&producer, &s.topic, Some(0), None, &reference("hostile", "../admin/customers/1"), None).await;
    publish(&producer, &s.topic, Some(0), None, &reference("fine", "customers/1"), None).await;
    let mut keyhole = Running::start(s.settings);
    let outcomes = keyhole.take(2, WITHIN).await;
    keyhole.stop().await;
    let by_id = by_id(&outcomes);
    assert!(matches!(by_id["hostile"].decision, Decision::Refused { .. }), "{outcomes:#?}");
    assert!(matches!(by_id["fine"].decision, Decision::Delivered { .. }), "{outcomes:#?}");
    assert_eq!(owner.batches(), [1], "only the sound reference was asked for");
    std::fs::remove_file(&s.receipts).ok();
}
