//! Third parties deploy while events flow: upload → activate → the new version handles events →
//! roll back, on the test broker, with no event lost or handled twice across the swaps; and
//! keyhole restarts with the same active version.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::admin::{Admin, Body};
use common::broker::{self, create_topic, publish, reference};
use common::owner::{Answer, Owner};
use keyhole::records::audit::{Decision, Outcome};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

const PARTITIONS: i32 = 2;

/// What handled an event: the version keyhole recorded, and which handler the reply shows
/// (echo replies with the event; age-band with an age band).
fn handled_by(outcome: &Outcome) -> (String, &'static str) {
    let Decision::Delivered { reply: Some(reply), .. } = &outcome.decision else {
        panic!("not delivered: {outcome:#?}");
    };
    let body: Value = serde_json::from_slice(&reply.data).unwrap();
    let kind = if body.get("age_band").is_some() { "age-band" } else { "echo" };
    (outcome.asker.version.clone(), kind)
}

async fn publish_events(topic: &str, ids: std::ops::Range<usize>, gap: Duration) {
    let producer = broker::producer();
    for i in ids {
        let headers = reference(&format!("e{i}"), &format!("customers/{}", i % 10));
        publish(&producer, topic, None, None, &headers, None).await;
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
    }
}

/// Takes `n` outcomes; asserts each event came once.
async fn take(
    admin: &mut Admin,
    n: usize,
    seen: &mut BTreeMap<String, (String, &'static str)>,
) -> Vec<String> {
    let outcomes = admin.running.take(n, Duration::from_secs(90)).await;
    let mut ids = Vec::new();
    for outcome in &outcomes {
        let id = outcome.event_id.clone().unwrap();
        let previous = seen.insert(id.clone(), handled_by(outcome));
        assert!(previous.is_none(), "{id} was handled twice");
        ids.push(id);
    }
    ids
}

/// `keyhole deploy` / `keyhole rollback` as a third party runs them.
async fn cli(args: &[&str], admin: &Admin, token: &str) -> String {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_keyhole"));
    command
        .args(args)
        .args(["--admin-url", &admin.url, "--tenant", "acme", "--handler", "scorer"])
        .env("KEYHOLE_TOKEN", token);
    let output = tokio::task::spawn_blocking(move || command.output()).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "{args:?}: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

fn versions_of(
    seen: &BTreeMap<String, (String, &'static str)>,
    ids: &[String],
) -> Vec<(String, &'static str)> {
    let mut versions: Vec<_> = ids.iter().map(|id| seen[id].clone()).collect();
    versions.sort();
    versions.dedup();
    versions
}

#[tokio::test(flavor = "multi_thread")]
async fn upload_activate_swap_and_roll_back_without_losing_an_event() {
    let owner = Owner::start().await;
    for i in 0..10 {
        let profile = format!(r#"{{"name":"Ada {i}","birthdate":"1990-05-01","country":"DE"}}"#);
        owner.set(&format!("customers/{i}"), Answer::Release("application/json", profile.into_bytes()));
    }
    let topic = create_topic(PARTITIONS).await;
    let mut admin = Admin::start(&owner.base_url()).await;
    let token = admin.tenant("acme", &[&topic], json!({})).await;
    let spec = json!({ "topics": [topic], "data_source": "owner", "purpose": "testing", "max_in_flight": 8 });
    admin.ok(201, "PUT", "/v1/tenants/acme/handlers/scorer", Some(&token), Body::Json(spec)).await;
    broker::create_named_topic(&format!("{}.acme.scorer.dlq", admin.group), 1).await;

    // Version 1 through the API.
    let path = "/v1/tenants/acme/handlers/scorer";
    let v1 = admin
        .ok(201, "POST", &format!("{path}/versions"), Some(&token), Body::Bytes(common::guest("echo")))
        .await["version"]
        .as_str()
        .unwrap()
        .to_string();
    let activated =
        admin.ok(200, "POST", &format!("{path}/versions/{v1}/activate"), Some(&token), Body::None).await;
    assert_eq!(activated["active"], v1.as_str());
    assert_eq!(activated["state"], "running");
    let ready = admin.probe("/readyz").await;
    assert_eq!(ready.status, 200, "ready once the broker answers and the binding runs: {ready:#?}");
    let mut seen = BTreeMap::new();
    publish_events(&topic, 0..40, Duration::ZERO).await;
    let first = take(&mut admin, 40, &mut seen).await;
    assert_eq!(versions_of(&seen, &first), [(v1.clone(), "echo")]);

    // Version 2 with `keyhole deploy`, while events flow.
    let publisher = tokio::spawn({
        let topic = topic.clone();
        async move { publish_events(&topic, 40..240, Duration::from_millis(3)).await }
    });
    let mut second = take(&mut admin, 30, &mut seen).await;
    let age_band = common::guest_path("age-band").display().to_string();
    let printed = cli(&["deploy", &age_band], &admin, &token).await;
    let v2 = keyhole::sandbox::version_of(&common::guest("age-band"));
    assert!(printed.contains(&format!("active: acme/scorer runs {v2}")), "{printed}");
    second.extend(take(&mut admin, 170, &mut seen).await);
    publisher.await.unwrap();
    // Every event once; each handled wholly by one version, the one recorded.
    let expected: Vec<String> = (0..240).map(|i| format!("e{i}")).collect();
    let mut all: Vec<String> = seen.keys().cloned().collect();
    all.sort();
    let mut sorted = expected.clone();
    sorted.sort();
    assert_eq!(all, sorted, "no event lost across the swap");
    let mut both = vec![(v1.clone(), "echo"), (v2.clone(), "age-band")];
    both.sort();
    assert_eq!(versions_of(&seen, &second), both, "events before the swap on version 1, after it on 2");

    // After the swap, new events run on version 2 only.
    publish_events(&topic, 240..260, Duration::ZERO).await;
    let third = take(&mut admin, 20, &mut seen).await;
    assert_eq!(versions_of(&seen, &third), [(v2.clone(), "age-band")]);

    // Roll back with `keyhole rollback`: version 1 again.
    let printed = cli(&["rollback"], &admin, &token).await;
    assert!(printed.contains(&v1), "{printed}");
    publish_events(&topic, 260..280, Duration::ZERO).await;
    let fourth = take(&mut admin, 20, &mut seen).await;
    assert_eq!(versions_of(&seen, &fourth), [(v1.clone(), "echo")]);
    let handler = admin.ok(200, "GET", path, Some(&token), Body::None).await;
    assert_eq!(handler["active"], v1.as_str());
    assert_eq!(handler["versions"].as_array().unwrap().len(), 2);

    // Each event's access receipt names the version that received its data.
    let receipts = std::fs::read_to_string(admin.state_dir.join("receipts.jsonl")).unwrap();
    let receipts: Vec<Value> = receipts.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    for receipt in &receipts {
        let id = receipt["event_id"].as_str().unwrap();
        assert_eq!(receipt["handler_version"], seen[id].0.as_str(), "{receipt}");
        assert_eq!(receipt["decision"], "released");
    }
    assert_eq!(receipts.len(), 280, "one receipt per event, none twice");

    // Each request told the owner which version the data would reach: the one the event ran
    // on, across both swaps (so an owner can release only to versions it approved).
    let requests = owner.seen();
    assert_eq!(requests.len(), 280, "one request per event");
    for request in &requests {
        let id = request.event_id.as_deref().unwrap();
        assert_eq!(request.handler_version.as_deref(), Some(seen[id].0.as_str()), "{id}");
    }

    // /metrics serves the binding's series over HTTP.
    let metrics =
        reqwest::get(format!("{}/metrics", admin.monitoring_url)).await.unwrap().text().await.unwrap();
    for series in [
        "keyhole_events_consumed_total",
        "keyhole_resolutions_total",
        "keyhole_handler_duration_seconds_bucket",
        "keyhole_events_in_flight",
        "keyhole_events_finished_total",
    ] {
        let line = metrics.lines().find(|l| l.starts_with(series) && l.contains(r#"binding="acme/scorer""#));
        assert!(line.is_some_and(|l| l.contains(r#"tenant="acme""#)), "{series} missing:\n{metrics}");
    }

    // Everything handled is committed: nothing is read again after a restart.
    let group = format!("{}.acme.scorer", admin.group);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while broker::committed(&group, &topic, PARTITIONS).iter().sum::<i64>() != 280 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "committed {:?}",
            broker::committed(&group, &topic, PARTITIONS)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (state_dir, prefix) = (admin.state_dir.clone(), admin.group.clone());
    admin.running.stop().await;

    // keyhole restarts with the same tenants, tokens and active version.
    let mut admin = Admin::start_in(&owner.base_url(), &state_dir, &prefix).await;
    let handler = admin.ok(200, "GET", path, Some(&token), Body::None).await;
    assert_eq!(handler["active"], v1.as_str());
    assert_eq!(handler["state"], "running");
    publish_events(&topic, 280..290, Duration::ZERO).await;
    let fifth = take(&mut admin, 10, &mut seen).await;
    assert_eq!(versions_of(&seen, &fifth), [(v1.clone(), "echo")]);
    admin.running.assert_quiet(Duration::from_secs(2)).await;
    admin.running.stop().await;
}
