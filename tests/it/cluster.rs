//! Replicas sharing one registry in Kafka (`[registry] store = "kafka"`), as `keyhole run`
//! processes on the test broker: what is uploaded through one runs on all, conflicting writes
//! converge, a killed replica loses nothing and catches up, a revocation reaches every replica,
//! and a component's bytes survive the blob topic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::admin::{Body, OPERATOR};
use common::broker::{self, create_topic, publish, reference};
use common::cluster::Cluster;
use common::owner::{Answer, Owner};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const HANDLER: &str = "/v1/tenants/acme/handlers/scorer";

async fn owner() -> Owner {
    let owner = Owner::start().await;
    for i in 0..10 {
        let profile = format!(r#"{{"name":"Ada {i}","birthdate":"1990-05-01","country":"DE"}}"#);
        owner.set(&format!("customers/{i}"), Answer::Release("application/json", profile.into_bytes()));
    }
    owner
}

/// Uploads `guest` through replica `i`; its version.
async fn upload(cluster: &Cluster, i: usize, token: &str, guest: &str) -> String {
    let uploaded = cluster
        .ok(i, 201, "POST", &format!("{HANDLER}/versions"), Some(token), Body::Bytes(common::guest(guest)))
        .await;
    uploaded["version"].as_str().unwrap().to_string()
}

/// A tenant `acme` with a handler `scorer` on `topic`, through replica 0; its token.
async fn acme(cluster: &Cluster, topic: &str) -> String {
    let token = cluster.tenant(0, "acme", &[topic], json!({})).await;
    let spec = json!({ "topics": [topic], "data_source": "owner", "purpose": "testing", "max_in_flight": 8 });
    cluster.ok(0, 201, "PUT", HANDLER, Some(&token), Body::Json(spec)).await;
    broker::create_named_topic(&format!("{}.acme.scorer.dlq", cluster.group), 1).await;
    token
}

/// `acme` with `scorer` on `topic` (see [`acme`]), the echo handler uploaded and activated
/// through replica 0; its token and the version.
async fn echo_deployed(cluster: &Cluster, topic: &str) -> (String, String) {
    let token = acme(cluster, topic).await;
    let version = upload(cluster, 0, &token, "echo").await;
    let activate = format!("{HANDLER}/versions/{version}/activate");
    let activated = cluster.ok(0, 200, "POST", &activate, Some(&token), Body::None).await;
    assert_eq!(activated["active"], version.as_str());
    (token, version)
}

/// Publishes events `ids` on `topic`, spread over its partitions by key.
async fn publish_events(topic: &str, ids: std::ops::Range<usize>, gap: Duration) {
    let producer = broker::producer();
    for i in ids {
        let headers = reference(&format!("e{i}"), &format!("customers/{}", i % 10));
        publish(&producer, topic, None, Some(&format!("k{i}")), &headers, None).await;
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
    }
}

/// Waits until every event in `ids` was delivered by some replica; what each replica
/// delivered, by event id.
async fn all_delivered(
    cluster: &Cluster,
    ids: &BTreeSet<String>,
    within: Duration,
) -> Vec<BTreeMap<String, String>> {
    let started = Instant::now();
    loop {
        let delivered: Vec<BTreeMap<String, String>> =
            cluster.delivered().into_iter().map(|d| d.into_iter().collect()).collect();
        let seen: BTreeSet<&String> = delivered.iter().flat_map(|d| d.keys()).collect();
        if ids.iter().all(|id| seen.contains(id)) {
            return delivered;
        }
        let missing: Vec<_> = ids.iter().filter(|id| !seen.contains(id)).take(10).collect();
        assert!(started.elapsed() < within, "never delivered: {missing:?}…\n{}", cluster.log(0));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The registry as replica `i` shows it to the operator and the tenant.
async fn registry_view(cluster: &Cluster, i: usize, token: &str) -> Value {
    let tenants = cluster.ok(i, 200, "GET", "/v1/tenants", Some(OPERATOR), Body::None).await;
    let mut handler = cluster.ok(i, 200, "GET", HANDLER, Some(token), Body::None).await;
    // The binding's state is the replica's own; everything else is the shared registry's.
    handler.as_object_mut().unwrap().remove("state");
    handler.as_object_mut().unwrap().remove("state_reason");
    json!({ "tenants": tenants, "handler": handler })
}

async fn running_everywhere(cluster: &Cluster, token: &str, version: &str) {
    for i in 0..cluster.replicas.len() {
        cluster
            .eventually(i, HANDLER, Some(token), Duration::from_secs(30), |a| {
                a.body["active"] == version && a.body["state"] == "running"
            })
            .await;
    }
}

/// Publishes events in rounds until every replica has handled some (the group spreads the
/// partitions over the replicas as they join); the events published, from `*next` on.
async fn until_every_replica_handles(cluster: &Cluster, topic: &str, next: &mut usize) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let started = Instant::now();
    loop {
        publish_events(topic, *next..*next + 30, Duration::ZERO).await;
        ids.extend((*next..*next + 30).map(|i| format!("e{i}")));
        *next += 30;
        let delivered = all_delivered(cluster, &ids, Duration::from_secs(60)).await;
        if delivered.iter().all(|d| !d.is_empty()) {
            return ids;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "not every replica handled events: {delivered:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_through_one_replica_runs_on_all_three() {
    let owner = owner().await;
    let topic = create_topic(6).await;
    let cluster = Cluster::start(&owner.base_url(), 3).await;
    let (token, version) = echo_deployed(&cluster, &topic).await;
    running_everywhere(&cluster, &token, &version).await;
    let shown = registry_view(&cluster, 0, &token).await;
    for i in 1..3 {
        assert_eq!(registry_view(&cluster, i, &token).await, shown, "replica {i} shows another registry");
    }
    let mut next = 0;
    until_every_replica_handles(&cluster, &topic, &mut next).await;
    for (i, handled) in cluster.delivered().iter().enumerate() {
        assert!(handled.iter().all(|(_, v)| *v == version), "replica {i} ran another version: {handled:?}");
    }

    // Hot swap across replicas: uploaded through replica 1, activated through replica 2, every
    // replica switches, each once and for good.
    let v2 = upload(&cluster, 1, &token, "age-band").await;
    cluster.ok(2, 200, "POST", &format!("{HANDLER}/versions/{v2}/activate"), Some(&token), Body::None).await;
    let started = Instant::now();
    loop {
        let before = next;
        until_every_replica_handles(&cluster, &topic, &mut next).await;
        let switched = cluster.delivered().iter().all(|handled| {
            handled.iter().any(|(id, v)| *v == v2 && id[1..].parse::<usize>().unwrap() >= before)
        });
        if switched {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "not every replica switched to {v2}");
    }
    // In the audit file's order (completion): after a replica's first v2 event, only events
    // already in flight at the swap (at most max_in_flight, 8) may still finish on v1.
    for (i, handled) in cluster.delivered().iter().enumerate() {
        let first_v2 = handled.iter().position(|(_, v)| *v == v2).unwrap();
        let late = handled[first_v2..].iter().filter(|(_, v)| *v != v2).count();
        assert!(late <= 8, "replica {i} ran {late} events on {version} after switching: {handled:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn conflicting_writes_on_two_replicas_end_in_the_same_state_everywhere() {
    let owner = owner().await;
    let (topic, other) = (create_topic(1).await, create_topic(1).await);
    let cluster = Cluster::start(&owner.base_url(), 3).await;
    let token = cluster.tenant(0, "acme", &[&topic, &other], json!({})).await;
    let spec = json!({ "topics": [topic], "data_source": "owner", "purpose": "testing" });
    cluster.ok(0, 201, "PUT", HANDLER, Some(&token), Body::Json(spec)).await;
    let v1 = upload(&cluster, 0, &token, "echo").await;
    let v2 = upload(&cluster, 0, &token, "age-band").await;

    // Two activations of different versions at once, on replicas 1 and 2.
    let activate = |i: usize, v: String| {
        let (cluster, token) = (&cluster, &token);
        async move {
            cluster
                .call(i, "POST", &format!("{HANDLER}/versions/{v}/activate"), Some(token), Body::None)
                .await
        }
    };
    let (first, second) = tokio::join!(activate(1, v1.clone()), activate(2, v2.clone()));
    assert_eq!((first.status, second.status), (200, 200), "{first:#?}\n{second:#?}");
    // Both were applied, in log order: the later one replaced the earlier, and says so.
    let (later, earlier) =
        if second.body["rollback_to"] == v1.as_str() { (&second, &first) } else { (&first, &second) };
    let brief = |a: &common::admin::Answer| {
        format!("{} active {} rollback_to {}", a.status, a.body["active"], a.body["rollback_to"])
    };
    assert_eq!(later.body["rollback_to"], earlier.body["active"], "{} / {}", brief(&first), brief(&second));
    let winner = later.body["active"].as_str().unwrap().to_string();
    for i in 0..3 {
        cluster
            .eventually(i, HANDLER, Some(&token), Duration::from_secs(10), |a| {
                a.body["active"] == winner.as_str()
            })
            .await;
    }

    // The grant narrowed on replica 1 while replica 2 puts a spec that needs what it takes away.
    let narrowed = json!({ "topics": [topic], "data_sources": ["owner"], "purposes": ["testing"] });
    let widened = json!({ "topics": [topic, other], "data_source": "owner", "purpose": "testing" });
    let (grant, spec) = tokio::join!(
        cluster.call(1, "PUT", "/v1/tenants/acme", Some(OPERATOR), Body::Json(narrowed)),
        cluster.call(2, "PUT", HANDLER, Some(&token), Body::Json(widened)),
    );
    assert_eq!(grant.status, 200, "{grant:#?}");
    let expected_topics = match spec.status {
        // The spec landed first: stored, then no longer granted, so it stops everywhere.
        200 => json!([topic, other]),
        // The narrowing landed first: the spec was refused, the old one stands.
        403 => json!([topic]),
        status => panic!("unexpected answer {status}: {spec:#?}"),
    };
    let shown = registry_view(&cluster, 0, &token).await;
    assert_eq!(shown["handler"]["spec"]["topics"], expected_topics, "{spec:#?}");
    for i in 1..3 {
        cluster
            .eventually(i, "/v1/tenants", Some(OPERATOR), Duration::from_secs(10), |a| {
                a.body == shown["tenants"]
            })
            .await;
        assert_eq!(registry_view(&cluster, i, &token).await, shown, "replica {i} differs");
    }
    if spec.status == 200 {
        for i in 0..3 {
            cluster
                .eventually(i, HANDLER, Some(&token), Duration::from_secs(10), |a| {
                    a.body["state"] == "not_granted"
                })
                .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_killed_mid_stream_loses_no_event_and_catches_up_on_the_registry() {
    let owner = owner().await;
    let topic = create_topic(6).await;
    let mut cluster = Cluster::start(&owner.base_url(), 3).await;
    let (token, version) = echo_deployed(&cluster, &topic).await;
    running_everywhere(&cluster, &token, &version).await;
    let mut next = 0;
    let mut ids = until_every_replica_handles(&cluster, &topic, &mut next).await;

    let publisher = tokio::spawn({
        let topic = topic.clone();
        async move { publish_events(&topic, next..next + 200, Duration::from_millis(20)).await }
    });
    let new: BTreeSet<String> = (next..next + 200).map(|i| format!("e{i}")).collect();
    ids.extend(new.iter().cloned());
    // Killed mid-stream: once it has handled one of the events being published.
    let started = Instant::now();
    while !cluster.delivered()[2].iter().any(|(id, _)| new.contains(id)) {
        assert!(started.elapsed() < Duration::from_secs(60), "replica 2 handled none of the new events");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.kill(2);
    // A change the killed replica misses.
    cluster.tenant(0, "globex", &[&topic], json!({})).await;
    publisher.await.unwrap();
    // Back on its directory, it reads what it missed before it serves, and rejoins the group.
    cluster.restart(2).await;
    let tenants = cluster.ok(0, 200, "GET", "/v1/tenants", Some(OPERATOR), Body::None).await;
    assert_eq!(cluster.ok(2, 200, "GET", "/v1/tenants", Some(OPERATOR), Body::None).await, tenants);
    // tansu 0.6.0 keeps a SIGKILLed member in the group, holding its partitions, for as long as
    // other members keep rebalancing; the survivors leave (SIGTERM) so that the group is
    // rebuilt around the restarted replica, which then handles every event left.
    cluster.stop(0);
    cluster.stop(1);
    // Every event handled at least once: those the killed replica had not committed, again.
    all_delivered(&cluster, &ids, Duration::from_secs(90)).await;
    cluster
        .eventually(2, HANDLER, Some(&token), Duration::from_secs(30), |a| a.body["state"] == "running")
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_token_stops_working_on_every_replica_and_a_new_replica_serves_the_same_handlers() {
    let owner = owner().await;
    let topic = create_topic(2).await;
    let mut cluster = Cluster::start(&owner.base_url(), 3).await;
    let (token, version) = echo_deployed(&cluster, &topic).await;
    for i in 0..3 {
        cluster.eventually(i, HANDLER, Some(&token), Duration::from_secs(10), |a| a.status == 200).await;
    }

    let tenant = cluster.ok(0, 200, "GET", "/v1/tenants/acme", Some(OPERATOR), Body::None).await;
    let id = tenant["token_ids"][0].as_str().unwrap().to_string();
    cluster.ok(1, 204, "DELETE", &format!("/v1/tenants/acme/tokens/{id}"), Some(OPERATOR), Body::None).await;
    // docs/cluster.md: effective on every replica reading the log within a second.
    for i in 0..3 {
        cluster.eventually(i, HANDLER, Some(&token), Duration::from_secs(1), |a| a.status == 401).await;
    }

    // A replica from an empty disk: the same handlers, fetched from the blob topic.
    let revoked = token;
    let fresh = cluster.add().await;
    let token =
        cluster.ok(0, 201, "POST", "/v1/tenants/acme/tokens", Some(OPERATOR), Body::None).await["token"]
            .as_str()
            .unwrap()
            .to_string();
    let shown = registry_view(&cluster, 0, &token).await;
    cluster.eventually(fresh, HANDLER, Some(&token), Duration::from_secs(10), |a| a.status == 200).await;
    assert_eq!(registry_view(&cluster, fresh, &token).await, shown);
    cluster
        .eventually(fresh, HANDLER, Some(&token), Duration::from_secs(30), |a| a.body["state"] == "running")
        .await;
    let cached = cluster.replicas[fresh]
        .dir
        .join("state/cache/components/sha256")
        .join(format!("{}.wasm", version.strip_prefix("sha256:").unwrap()));
    assert_eq!(std::fs::read(&cached).unwrap(), common::guest("echo"), "the cached component is the upload");
    // After a restart too, the revoked token never works again.
    cluster.kill(fresh);
    cluster.restart(fresh).await;
    assert_eq!(cluster.call(fresh, "GET", HANDLER, Some(&revoked), Body::None).await.status, 401);
    assert_eq!(cluster.call(fresh, "GET", HANDLER, Some(&token), Body::None).await.status, 200);

    // The registry log: tenant, token, handler, version, activation, revocation, token; digests
    // only, never a token.
    use rdkafka::message::Message as _;
    let log = broker::read(&cluster.registry_topic, 7).await;
    let text: String =
        log.iter().filter_map(|m| m.payload()).map(|p| String::from_utf8_lossy(p).to_string()).collect();
    assert!(text.contains("\"command\":\"revoke_token\""), "{text}");
    for secret in [&revoked, &token] {
        assert!(!text.contains(secret.as_str()), "a token is in the registry log");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_broker_gone_writes_are_refused_a_stale_replica_trusts_no_token_and_sigterm_still_stops() {
    let mut own = broker::OwnBroker::start().await;
    let owner = owner().await;
    let mut cluster = Cluster::start_on(&own.bootstrap, &owner.base_url(), 1).await;
    let token = cluster.tenant(0, "acme", &["refs"], json!({})).await;
    own.child.kill().unwrap();
    own.child.wait().unwrap();
    let gone = Instant::now();

    // A write cannot be confirmed: 503 within registry.write_timeout_ms (3 s here), and nothing
    // changed.
    let write = cluster.call(0, "PUT", "/v1/tenants/globex", Some(OPERATOR), Body::Json(json!({}))).await;
    assert_eq!(write.status, 503, "{write:#?}");
    assert_eq!(write.body["type"], "urn:keyhole:problem:registry-unavailable");
    // Past registry.max_staleness_ms (3 s), tenants' tokens are no longer trusted and the
    // replica is not ready.
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(gone.elapsed())).await;
    let read = cluster.call(0, "GET", "/v1/tenants/acme/handlers", Some(&token), Body::None).await;
    assert_eq!(read.status, 503, "{read:#?}");
    let ready = cluster.probe(0, "/readyz").await;
    assert_eq!(ready.status, 503, "{ready:#?}");
    assert!(ready.body["detail"].as_str().unwrap().contains("registry"), "{ready:#?}");
    // A request no token could authenticate is refused before any round trip to the broker:
    // 401, not the 503 of a registry sync that cannot reach it.
    for token in [None, Some("not-a-token"), Some("kh_too-short")] {
        let answer = cluster.call(0, "GET", "/v1/tenants", token, Body::None).await;
        assert_eq!(answer.status, 401, "{token:?}: {answer:#?}");
    }
    // And SIGTERM still stops it, within its drain and commit bounds.
    let status = cluster.terminate(0, Duration::from_secs(30)).await;
    assert!(status.success(), "exit {status}:\n{}", cluster.log(0));
}

/// Produces a registry record straight to the registry topic, as anyone with write access to it
/// could: `command` in the log's envelope, with the given `keyhole-signature` header (if any).
async fn forge(cluster: &Cluster, command: Value, signature: Option<String>) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::FutureRecord;
    let id = uuid::Uuid::new_v4().to_string();
    let key = format!("command/{id}");
    let value =
        serde_json::to_vec(&json!({ "id": id, "at": "2026-12-06T00:00:00Z", "command": command })).unwrap();
    let signature =
        signature.map(|s| s.replace("{record}", &hmac_hex(common::cluster::SIGNING_KEY, &key, &value)));
    let mut headers = OwnedHeaders::new();
    if let Some(signature) = &signature {
        headers = headers.insert(Header { key: "keyhole-signature", value: Some(signature.as_str()) });
    }
    let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&cluster.registry_topic)
        .partition(0)
        .key(key.as_str())
        .payload(value.as_slice())
        .headers(headers);
    broker::producer().send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
}

/// HMAC-SHA256 of a registry record as docs/cluster.md describes it: the key's length (8 bytes,
/// big-endian), the key, the value; hex.
fn hmac_hex(secret: &str, key: &str, value: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(&(key.len() as u64).to_be_bytes());
    mac.update(key.as_bytes());
    mac.update(value);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_written_to_the_registry_topic_without_a_replicas_key_change_nothing() {
    use sha2::Digest;
    let owner = owner().await;
    let topic = create_topic(1).await;
    let cluster = Cluster::start(&owner.base_url(), 1).await;
    let acme = cluster.tenant(0, "acme", &[&topic], json!({})).await;

    // What an attack review produced straight to the topic: a tenant the API refuses (a dot in
    // its name, huge limits, the registry topic as its reply topic), and a token of its own
    // for an existing tenant.
    let mallory = |name: &str, source: &str| {
        json!({ "command": "put_tenant", "tenant": name, "grant": {
            "topics": [topic], "data_sources": [source], "purposes": ["testing"],
            "reply_topics": [cluster.registry_topic],
            "limits": { "max_handlers": 1000, "max_memory_bytes": 1u64 << 40 } } })
    };
    let forged_token = "kh_a-token-the-attacker-made-up-for-acme";
    let digest: String = sha2::Sha256::digest(forged_token).iter().map(|b| format!("{b:02x}")).collect();
    let issue = json!({ "command": "issue_token", "tenant": "acme",
        "token": { "id": "f0f0f0f0f0f0", "sha256": digest, "created_at": "2026-12-06T00:00:00Z" } });
    forge(&cluster, mallory("mallory.x", "owner"), None).await;
    forge(&cluster, issue.clone(), None).await;
    forge(&cluster, issue.clone(), Some(format!("test:{}", "0".repeat(64)))).await;
    forge(&cluster, issue.clone(), Some("stolen-id:{record}".into())).await;
    forge(&cluster, issue.clone(), Some("test:nothex".into())).await;
    // Signed with the replicas' key, and still invalid as the API would judge it: refused.
    forge(&cluster, mallory("mallory.x", "owner"), Some("test:{record}".into())).await;
    forge(&cluster, mallory("mallory", "no-such-source"), Some("test:{record}".into())).await;

    // Through the API, the registry topic cannot be granted either (a reply's value is the
    // handler's bytes: it could write registry records).
    let grant = json!({ "topics": [topic], "data_sources": ["owner"], "purposes": ["testing"],
        "reply_topics": [cluster.registry_topic] });
    let answer = cluster.call(0, "PUT", "/v1/tenants/mallory", Some(OPERATOR), Body::Json(grant)).await;
    assert_eq!(answer.status, 422, "{answer:?}");
    assert!(answer.body["detail"].as_str().unwrap().contains("the registry log"), "{answer:?}");
    // A change through the API lands after them: the replica read past every forged record.
    cluster.tenant(0, "globex", &[&topic], json!({})).await;
    let tenants = cluster.ok(0, 200, "GET", "/v1/tenants", Some(OPERATOR), Body::None).await;
    let names: Vec<&str> =
        tenants.as_array().unwrap().iter().map(|t| t["tenant"].as_str().unwrap()).collect();
    assert_eq!(names, ["acme", "globex"], "{tenants}");
    assert_eq!(cluster.call(0, "GET", "/v1/tenants/acme", Some(forged_token), Body::None).await.status, 401);
    assert_eq!(cluster.call(0, "GET", "/v1/tenants/acme", Some(&acme), Body::None).await.status, 200);

    let metrics = reqwest::get(format!("{}/metrics", cluster.replicas[0].monitoring_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (reason, n) in [("unsigned", 2), ("mismatch", 1), ("unknown_key", 1), ("malformed", 1)] {
        let line = format!("keyhole_registry_records_rejected_total{{reason=\"{reason}\"}} {n}");
        assert!(metrics.contains(&line), "no `{line}` in /metrics:\n{metrics}");
    }
    let log = cluster.log(0);
    assert_eq!(
        log.matches("A registry record is not signed with any of registry.signing_keys").count(),
        5,
        "{log}"
    );
    assert_eq!(log.matches("A registry change was refused where it landed in the log").count(), 2, "{log}");
}
