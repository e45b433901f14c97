//! A data owner that goes away: its outage is not the events' fault. With the default retry
//! settings, an owner answering 503 for 90 s pauses the binding instead of dead-lettering events
//! that would succeed a minute later; a reference that keeps failing while others on the same
//! data source succeed (a poison reference) is still dead-lettered within its limits.

use crate::common;

use common::broker::{self, create_topic, publish, reference};
use common::owner::{Answer, Owner};
use common::running::Running;
use keyhole::config::Config;
use keyhole::records::audit::Decision;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// One echo binding with keyhole's default retry settings (the shared test configuration
/// shortens the backoff; this one must not), its tenant of its own for the metrics.
fn default_retry_settings(topic: &str, owner: &Owner, tenant: &str) -> keyhole::config::Settings {
    let identity = format!(r#"{{ bearer_token = {{ value = "{}" }} }}"#, common::owner::TOKEN);
    let toml = format!(
        r#"
        {common}
        [[handler]]
        name = "echo"
        tenant = "{tenant}"
        component = "{echo}"
        topics = ["{topic}"]
        data_source = "owner"
        purpose = "integration-test"
        max_in_flight = 64
        "#,
        common = common::kafka_and_owner_toml(&broker::unique("keyhole"), &owner.base_url(), &identity),
        echo = common::guest_path("echo").display(),
    );
    let config: Config = toml::from_str(&toml).unwrap();
    let mut settings = config.validate(Path::new(".")).unwrap_or_else(|p| panic!("{p:#?}"));
    settings.receipts = keyhole::config::ReceiptSink::Discard;
    settings
}

/// The binding's paused gauge for an unavailable owner (the other reason's stays 0 here).
fn paused_gauge(tenant: &str) -> Option<f64> {
    let rendered = keyhole::telemetry::prometheus().render();
    rendered
        .lines()
        .filter(|line| line.starts_with("keyhole_binding_paused{"))
        .filter(|line| line.contains(&format!("tenant=\"{tenant}\"")))
        .filter(|line| line.contains("reason=\"owner_unavailable\""))
        .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .next()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_down_for_90_seconds_dead_letters_nothing() {
    let owner = Owner::start().await;
    let topic = create_topic(4).await;
    let tenant = "outage-test";
    let settings = default_retry_settings(&topic, &owner, tenant);
    broker::create_named_topic(&settings.bindings[0].on_failure.dead_letter_topic, 1).await;
    const EVENTS: usize = 200;
    for i in 0..EVENTS {
        owner.set(&format!("customers/{i}"), Answer::Release("text/plain", format!("c{i}").into_bytes()));
    }
    owner.go_down(503);
    let mut keyhole = Running::start(settings);
    let producer = broker::producer();
    // 200 events arrive over the outage's first 60 s.
    let started = tokio::time::Instant::now();
    for i in 0..EVENTS {
        let key = format!("key-{}", i % 50);
        publish(
            &producer,
            &topic,
            None,
            Some(&key),
            &reference(&format!("ev-{i}"), &format!("customers/{i}")),
            None,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Nothing is decided while the owner is down: not a dead letter, not a failure.
    keyhole.assert_quiet(Duration::from_secs(90).saturating_sub(started.elapsed())).await;
    assert_eq!(paused_gauge(tenant), Some(1.0), "the binding shows it is paused");
    owner.recover();
    let outcomes = keyhole.take(EVENTS, Duration::from_secs(120)).await;
    let mut delivered: HashMap<String, usize> = HashMap::new();
    for outcome in &outcomes {
        assert!(matches!(outcome.decision, Decision::Delivered { .. }), "{outcome:#?}");
        assert_eq!(outcome.disposal, None, "{outcome:#?}");
        *delivered.entry(outcome.event_id.clone().unwrap()).or_default() += 1;
    }
    assert_eq!(delivered.len(), EVENTS, "every event delivered once the owner is back");
    assert!(delivered.values().all(|n| *n == 1));
    assert_eq!(paused_gauge(tenant), Some(0.0), "resumed on the first success");
    keyhole.assert_quiet(Duration::from_millis(500)).await;
    keyhole.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_reference_among_healthy_ones_is_dead_lettered_within_its_limits() {
    let owner = Owner::start().await;
    owner.set("customers/poison", Answer::Status(503));
    owner.set("customers/fine", Answer::Release("text/plain", b"fine".to_vec()));
    let topic = create_topic(2).await;
    let mut settings = default_retry_settings(&topic, &owner, "poison-test");
    let binding = &mut settings.bindings[0];
    binding.retry.max_attempts = 3;
    binding.retry.initial_backoff_ms = 50;
    binding.retry.max_backoff_ms = 200;
    broker::create_named_topic(&binding.on_failure.dead_letter_topic, 1).await;
    let mut keyhole = Running::start(settings);
    let producer = broker::producer();
    publish(&producer, &topic, Some(0), Some("p"), &reference("poison", "customers/poison"), None).await;
    // Healthy traffic on the other partition shows the owner is up.
    let traffic = {
        let (producer, topic) = (producer.clone(), topic.clone());
        tokio::spawn(async move {
            for i in 0.. {
                publish(
                    &producer,
                    &topic,
                    Some(1),
                    Some("h"),
                    &reference(&format!("fine-{i}"), "customers/fine"),
                    None,
                )
                .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let poison = loop {
        let outcome = tokio::time::timeout_at(deadline, keyhole.outcomes.recv()).await.unwrap().unwrap();
        if outcome.event_id.as_deref() == Some("poison") {
            break outcome;
        }
        assert!(matches!(outcome.decision, Decision::Delivered { .. }), "{outcome:#?}");
    };
    traffic.abort();
    assert!(matches!(poison.decision, Decision::Failed { .. }), "{poison:#?}");
    assert!(
        matches!(poison.disposal, Some(keyhole::records::audit::Disposal::DeadLettered { .. })),
        "{poison:#?}"
    );
    keyhole.stop().await;
}
