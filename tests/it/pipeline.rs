//! The reference pipeline end to end: a real broker (tansu), a real data owner on loopback, the
//! real sandbox running the echo handler. Each test uses its own topic and consumer group.
// A test fails loudly on anything unexpected; unwrap is how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::broker::{self, create_topic, publish, reference};
use common::owner::{Answer, Owner};
use common::running::{Running, by_id, echoed, setup};
use keyhole::records::audit::Decision;
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_granted_delivers_exactly_the_owners_bytes() {
    let owner = Owner::start().await;
    let bytes = "{\"name\":\"Zoë\",\"email\":\"zoe@example.com\"}".as_bytes().to_vec();
    owner.set("customers/1", Answer::Release("application/json", bytes.clone()));
    owner.set("blobs/2", Answer::Release("application/octet-stream", vec![0, 159, 146, 150]));
    let s = setup(&owner.base_url(), 1, "").await;
    let producer = broker::producer();
    let mut ce = reference("ev-1", "customers/1?fields=name");
    ce.push(("ce_correlationid".into(), b"req-9".to_vec()));
    publish(&producer, &s.topic, Some(0), Some("customer-1"), &ce, None).await;
    publish(&producer, &s.topic, Some(0), Some("blob-2"), &reference("ev-2", "blobs/2"), None).await;

    let mut keyhole = Running::start(s.settings);
    let outcomes = keyhole.take(2, WITHIN).await;
    let outcomes = by_id(&outcomes);
    let first = echoed(outcomes["ev-1"]);
    assert_eq!(first["data"], String::from_utf8(bytes).unwrap());
    assert_eq!(first["datacontenttype"], "application/json");
    assert_eq!(first["extensions"], serde_json::json!({"correlationid": "req-9"}));
    assert_eq!(first["id"], "ev-1");
    let second = echoed(outcomes["ev-2"]);
    assert_eq!(second["data_base64"], "AJ+Slg==");
    // The handler saw no reference, topic, key or offset: only these keys.
    let keys: Vec<&str> = first.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["data", "datacontenttype", "extensions", "id", "source", "subject", "time", "type"]);
    // The owner was told who asked and why.
    let seen = owner.seen();
    let ev1 = seen.iter().find(|r| r.event_id.as_deref() == Some("ev-1")).unwrap();
    assert_eq!((ev1.tenant.as_deref(), ev1.handler.as_deref()), (Some("acme"), Some("echo")));
    assert_eq!(ev1.purpose.as_deref(), Some("integration-test"));
    keyhole.stop().await;
    assert_eq!(broker::committed(&s.group, &s.topic, 1), [2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_withdrawn_after_produce_is_never_delivered() {
    let owner = Owner::start().await;
    owner.set("customers/7", Answer::Release("application/json", b"{\"secret\":1}".to_vec()));
    let s = setup(&owner.base_url(), 1, "").await;
    let producer = broker::producer();
    publish(&producer, &s.topic, Some(0), Some("c7"), &reference("ev-7", "customers/7"), None).await;
    // The user withdraws consent after the event was produced, before keyhole consumes it.
    owner.set("customers/7", Answer::Status(403));
    owner.set("customers/8", Answer::Status(451));
    publish(&producer, &s.topic, Some(0), Some("c8"), &reference("ev-8", "customers/8"), None).await;

    let mut keyhole = Running::start(s.settings);
    let outcomes = keyhole.take(2, WITHIN).await;
    let outcomes = by_id(&outcomes);
    assert!(
        matches!(outcomes["ev-7"].decision, Decision::ConsentDenied { status: 403 }),
        "{:?}",
        outcomes["ev-7"]
    );
    assert!(matches!(outcomes["ev-8"].decision, Decision::ConsentDenied { status: 451 }));
    keyhole.stop().await;
    // Acknowledged: the group moved past both.
    assert_eq!(broker::committed(&s.group, &s.topic, 1), [2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_erased_records_are_skipped_and_acknowledged() {
    let owner = Owner::start().await;
    owner.set("customers/gone", Answer::Status(410));
    owner.set("customers/ok", Answer::Release("text/plain", b"ok".to_vec()));
    let s = setup(&owner.base_url(), 1, "").await;
    let producer = broker::producer();
    publish(&producer, &s.topic, Some(0), None, &reference("ev-404", "customers/unknown"), None).await;
    publish(&producer, &s.topic, Some(0), None, &reference("ev-410", "customers/gone"), None).await;
    publish(&producer, &s.topic, Some(0), None, &reference("ev-ok", "customers/ok"), None).await;

    let mut keyhole = Running::start(s.settings);
    let outcomes = keyhole.take(3, WITHIN).await;
    let outcomes = by_id(&outcomes);
    assert!(matches!(outcomes["ev-404"].decision, Decision::Gone { status: 404 }));
    assert!(matches!(outcomes["ev-410"].decision, Decision::Gone { status: 410 }));
    assert_eq!(echoed(outcomes["ev-ok"])["data"], "ok");
    keyhole.stop().await;
    assert_eq!(broker::committed(&s.group, &s.topic, 1), [3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_pause_the_binding_and_skip_nothing() {
    let owner = Owner::start().await;
    owner.set("customers/1", Answer::Release("text/plain", b"one".to_vec()));
    owner.set("customers/2", Answer::Release("text/plain", b"two".to_vec()));
    owner.set_token("rotated"); // keyhole's token is now refused: 401
    let s = setup(&owner.base_url(), 1, "").await;
    let producer = broker::producer();
    publish(&producer, &s.topic, Some(0), Some("a"), &reference("ev-1", "customers/1"), None).await;
    publish(&producer, &s.topic, Some(0), Some("b"), &reference("ev-2", "customers/2"), None).await;

    let mut keyhole = Running::start(s.settings);
    // Refused (the signal that it asked), then paused: nothing decided meanwhile.
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !owner.seen().iter().any(|r| r.status == 401) {
        assert!(tokio::time::Instant::now() < deadline, "keyhole never asked the owner");
        keyhole.assert_quiet(Duration::from_millis(50)).await;
    }
    keyhole.assert_quiet(Duration::from_secs(1)).await;
    assert_eq!(broker::committed(&s.group, &s.topic, 1), [-1], "nothing acknowledged while paused");
    owner.set_token(common::owner::TOKEN); // credentials work again
    let outcomes = keyhole.take(2, WITHIN).await;
    let outcomes = by_id(&outcomes);
    assert_eq!(echoed(outcomes["ev-1"])["data"], "one");
    assert_eq!(echoed(outcomes["ev-2"])["data"], "two");
    keyhole.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_is_down_loses_nothing_and_processing_resumes() {
    // Reserve a port, then leave it closed: the owner is down.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut s = setup(&format!("http://{addr}/api/"), 1, "").await;
    // The owner comes back within the retry limits (past them, tests/failures.rs).
    s.settings.bindings[0].retry.max_attempts = 1000;
    let producer = broker::producer();
    for i in 0..5 {
        let key = format!("k{}", i % 2);
        publish(
            &producer,
            &s.topic,
            Some(0),
            Some(&key),
            &reference(&format!("ev-{i}"), &format!("customers/{i}")),
            None,
        )
        .await;
    }
    let mut keyhole = Running::start(s.settings);
    keyhole.assert_quiet(Duration::from_secs(2)).await;
    assert_eq!(broker::committed(&s.group, &s.topic, 1), [-1]);

    let owner = Owner::start_on(addr).await;
    for i in 0..5 {
        owner.set(
            &format!("customers/{i}"),
            Answer::Release("text/plain", format!("record {i}").into_bytes()),
        );
    }
    let outcomes = keyhole.take(5, WITHIN).await;
    let outcomes = by_id(&outcomes);
    for i in 0..5 {
        assert_eq!(echoed(outcomes[&format!("ev-{i}")])["data"], format!("record {i}"));
    }
    keyhole.stop().await;
    assert_eq!(broker::committed(&s.group, &s.topic, 1), [5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_references_never_reach_anyone() {
    let owner = Owner::start().await;
    let canary = Owner::start().await;
    let s = setup(&owner.base_url(), 1, "").await;
    let producer = broker::producer();
    let c = canary.addr;
    let hostile = [
        format!("http://{c}/api/steal"),
        format!("//{c}/api/steal"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "//169.254.169.254/latest/meta-data/".to_string(),
        "../../api/admin".to_string(),
        "customers/../../admin".to_string(),
        "customers/%2e%2e/%2e%2e/admin".to_string(),
        "customers/%2E%2E%2Fadmin".to_string(),
        "customers/%252e%252e/admin".to_string(),
        "/etc/passwd".to_string(),
        "file:///etc/passwd".to_string(),
        // Dots to owners that decode overlong UTF-8 or full-width dots, or trim dots and spaces.
        "%c0%ae%c0%ae/secret".to_string(),
        "%ef%bc%8e%ef%bc%8e/secret".to_string(),
        "a/..%20/secret".to_string(),
        ".../secret".to_string(),
    ];
    for (i, dataref) in hostile.iter().enumerate() {
        publish(&producer, &s.topic, Some(0), None, &reference(&format!("ev-{i}"), dataref), None).await;
    }
    // Personal data inline on a reference topic is refused too.
    publish(
        &producer,
        &s.topic,
        Some(0),
        None,
        &reference("ev-inline", "customers/1"),
        Some(b"{\"name\":\"x\"}"),
    )
    .await;
    let mut keyhole = Running::start(s.settings);
    let outcomes = keyhole.take(hostile.len() + 1, WITHIN).await;
    for outcome in &outcomes {
        assert!(matches!(outcome.decision, Decision::Refused { .. }), "{outcome:?}");
    }
    assert!(canary.seen().is_empty(), "the canary was reached: {:?}", canary.seen());
    assert!(owner.seen().is_empty(), "the owner was asked: {:?}", owner.seen());
    keyhole.stop().await;
    assert_eq!(broker::committed(&s.group, &s.topic, 1), [hostile.len() as i64 + 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_holds_with_many_keys_in_flight() {
    let owner = Owner::start().await;
    owner.set_delay(Duration::from_millis(20));
    let (keys, per_key) = (16, 8);
    let s = setup(&owner.base_url(), 2, "max_in_flight = 32").await;
    let producer = broker::producer();
    for n in 0..per_key {
        for k in 0..keys {
            let id = format!("k{k}-{n}");
            owner.set(&format!("r/{id}"), Answer::Release("text/plain", id.clone().into_bytes()));
            publish(
                &producer,
                &s.topic,
                None,
                Some(&format!("key-{k}")),
                &reference(&id, &format!("r/{id}")),
                None,
            )
            .await;
        }
    }
    let mut keyhole = Running::start(s.settings);
    let outcomes = keyhole.take(keys * per_key, Duration::from_secs(60)).await;
    // Order per key, as the owner saw the requests and as the outcomes were decided.
    for k in 0..keys {
        let prefix = format!("k{k}-");
        let expected: Vec<String> = (0..per_key).map(|n| format!("k{k}-{n}")).collect();
        let requested: Vec<String> = owner
            .seen()
            .into_iter()
            .filter_map(|r| r.event_id)
            .filter(|id| id.starts_with(&prefix))
            .collect();
        assert_eq!(requested, expected, "requests out of order for key {k}");
        let decided: Vec<String> =
            outcomes.iter().filter_map(|o| o.event_id.clone()).filter(|id| id.starts_with(&prefix)).collect();
        assert_eq!(decided, expected, "outcomes out of order for key {k}");
    }
    assert!(owner.max_concurrent() > 1, "different keys should run concurrently");
    keyhole.stop().await;
    let committed: i64 = broker::committed(&s.group, &s.topic, 2).iter().sum();
    assert_eq!(committed, (keys * per_key) as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_drains_revoked_partitions_before_handing_them_over() {
    let owner = Owner::start().await;
    owner.set_delay(Duration::from_millis(100));
    let events = 300;
    let s = setup(&owner.base_url(), 4, "max_in_flight = 16").await;
    let producer = broker::producer();
    for i in 0..events {
        let id = format!("ev-{i}");
        owner.set(&format!("r/{id}"), Answer::Release("text/plain", id.clone().into_bytes()));
        publish(
            &producer,
            &s.topic,
            None,
            Some(&format!("key-{}", i % 20)),
            &reference(&id, &format!("r/{id}")),
            None,
        )
        .await;
    }
    let mut first = Running::start(s.settings.clone());
    let mut outcomes = first.take(20, WITHIN).await;
    // A second instance joins the group: the first must drain what it revokes, then share.
    let mut second = Running::start(s.settings);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (mut from_first, mut from_second) = (outcomes.len(), 0);
    while by_id(&outcomes).len() < events && tokio::time::Instant::now() < deadline {
        tokio::select! {
            Some(o) = first.outcomes.recv() => { from_first += 1; outcomes.push(o) }
            Some(o) = second.outcomes.recv() => { from_second += 1; outcomes.push(o) }
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    let handled = by_id(&outcomes);
    let missing: Vec<String> =
        (0..events).map(|i| format!("ev-{i}")).filter(|id| !handled.contains_key(id)).collect();
    assert!(missing.is_empty(), "never handled: {missing:?}");
    assert!(from_second > 0, "the second instance got no partitions");
    let twice = outcomes.len() - handled.len();
    assert_eq!(twice, 0, "revoked partitions were handed over before their events were finished");
    eprintln!("first handled {from_first}, second {from_second}");
    first.stop().await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_from_keyhole_publish_are_consumed_as_published() {
    use keyhole::client::publish::{self, ReferenceEventSpec};
    let owner = Owner::start().await;
    owner.set("customers/42", Answer::Release("application/json", b"{\"country\":\"DE\"}".to_vec()));
    let s = setup(&owner.base_url(), 2, "").await;
    let producer = publish::producer(&broker::bootstrap(), &[]).unwrap();
    let event = ReferenceEventSpec {
        id: publish::new_id(),
        source: "urn:example:crm".into(),
        type_: "com.example.customer.updated".into(),
        subject: Some("customer/42".into()),
        time: None,
        dataref: "customers/42".into(),
        partition_key: Some("customer-42".into()),
        correlation_id: Some("req-1".into()),
        reply_to: None,
    };
    publish::publish(&producer, &s.topic, &event, Duration::from_secs(10)).await.unwrap();
    let hostile = ReferenceEventSpec { dataref: "../admin".into(), ..event.clone() };
    assert!(publish::publish(&producer, &s.topic, &hostile, Duration::from_secs(10)).await.is_err());

    let mut keyhole = Running::start(s.settings);
    let outcome = keyhole.take(1, WITHIN).await.remove(0);
    let seen = echoed(&outcome);
    assert_eq!(seen["id"], event.id.as_str());
    assert_eq!(seen["subject"], "customer/42");
    assert_eq!(seen["data"], "{\"country\":\"DE\"}");
    // partitionkey is routing, not handler input; correlationid is passed on.
    assert_eq!(seen["extensions"], serde_json::json!({"correlationid": "req-1"}));
    keyhole.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_are_published_correlated_to_their_requests() {
    use rdkafka::Message;
    let owner = Owner::start().await;
    owner.set("customers/1", Answer::Release("text/plain", b"one".to_vec()));
    let replies = create_topic(1).await;
    let other = create_topic(1).await;
    let extra = format!("reply_topic = \"{replies}\"\n        reply_topics_allowed = [\"{other}\"]");
    let s = setup(&owner.base_url(), 1, &extra).await;
    let producer = broker::producer();
    let mut first = reference("req-1", "customers/1");
    first.push(("ce_correlationid".into(), b"conversation-9".to_vec()));
    publish(&producer, &s.topic, Some(0), Some("customer-1"), &first, None).await;
    let mut second = reference("req-2", "customers/1");
    second.push(("ce_replyto".into(), other.as_bytes().to_vec()));
    publish(&producer, &s.topic, Some(0), Some("customer-1"), &second, None).await;
    let mut third = reference("req-3", "customers/1");
    third.push(("ce_replyto".into(), b"somebody-elses-topic".to_vec()));
    publish(&producer, &s.topic, Some(0), Some("customer-1"), &third, None).await;

    let mut keyhole = Running::start(s.settings);
    let outcomes = keyhole.take(3, WITHIN).await;
    let outcomes = by_id(&outcomes);
    assert!(
        matches!(&outcomes["req-3"].decision, Decision::Failed { kind: "reply_topic_not_allowed", .. }),
        "{:?}",
        outcomes["req-3"]
    );
    let reply = broker::read(&replies, 1).await.remove(0);
    assert_eq!(broker::header(&reply, "ce_correlationid").as_deref(), Some("conversation-9"));
    assert_eq!(broker::header(&reply, "ce_causationid").as_deref(), Some("req-1"));
    assert_eq!(broker::header(&reply, "ce_source").as_deref(), Some("urn:keyhole:acme:echo"));
    assert_eq!(broker::header(&reply, "ce_type").as_deref(), Some("keyhole.example.echo"));
    assert_eq!(broker::header(&reply, "content-type").as_deref(), Some("application/json"));
    assert_eq!(reply.key(), Some(b"customer-1".as_slice()), "keyed like the request");
    let body: serde_json::Value = serde_json::from_slice(reply.payload().unwrap()).unwrap();
    assert_eq!(body["data"], "one");
    let reply_id = broker::header(&reply, "ce_id").unwrap();
    assert_ne!(reply_id, "req-1", "a reply has an id of its own");
    match &outcomes["req-1"].decision {
        Decision::Delivered { published: Some((topic, id)), .. } => {
            assert_eq!((topic, id), (&replies, &reply_id))
        }
        other => panic!("{other:?}"),
    }
    // A request may name another reply topic when the handler's allow-list has it; the
    // correlation id is then the request's id.
    let redirected = broker::read(&other, 1).await.remove(0);
    assert_eq!(broker::header(&redirected, "ce_correlationid").as_deref(), Some("req-2"));
    assert_eq!(broker::header(&redirected, "ce_causationid").as_deref(), Some("req-2"));
    keyhole.stop().await;
}
