//! The example configuration in the repository loads, and every key it uses is documented.
// Setting an environment variable is `unsafe` since Rust 2024; this binary's other tests do not
// read it.
#![allow(unsafe_code)]
// A test fails loudly on anything unexpected; unwrap is how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use keyhole::config::{AuditSink, Config, ConfigError, ReceiptSink};

#[test]
fn the_example_config_loads() {
    let example = common::repo_root().join("keyhole.example.toml");
    // SAFETY: no other thread of this test binary reads or writes this variable.
    unsafe { std::env::set_var("KEYHOLE_CRM_TOKEN", "example-token") };
    unsafe { std::env::set_var("KEYHOLE_OPERATOR_TOKEN", "example-operator-token") };
    let settings = Config::load(&example).unwrap_or_else(|e| panic!("{e}"));
    let binding = &settings.bindings[0];
    assert_eq!(binding.group_id, "keyhole.acme.age-band");
    assert_eq!(binding.topics, ["customer-references"]);
    assert_eq!(settings.data_sources[binding.data_source].base_url.as_str(), "http://127.0.0.1:8080/api/");
    assert!(settings.audit.path().unwrap().ends_with("keyhole-audit.jsonl"));
    assert!(
        matches!(&settings.receipts, ReceiptSink::File(path) if path.ends_with("keyhole-receipts.jsonl")),
        "{:?}",
        settings.receipts
    );
}

#[test]
fn the_container_config_loads_with_its_secrets_from_a_file_and_the_environment() {
    let dir = std::env::temp_dir().join(common::broker::unique("keyhole-container-config"));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("keyhole-operator-token");
    std::fs::write(&token, "an-operator-token-from-a-file\n").unwrap();
    let text = std::fs::read_to_string(common::repo_root().join("deploy/container/keyhole.toml")).unwrap();
    let path = dir.join("keyhole.toml");
    std::fs::write(&path, text.replace("/run/secrets/keyhole-operator-token", token.to_str().unwrap()))
        .unwrap();
    // SAFETY: no other thread of this test binary reads or writes this variable.
    unsafe { std::env::set_var("KEYHOLE_CRM_TOKEN", "example-token") };
    // SAFETY: as above.
    unsafe {
        std::env::set_var("KEYHOLE_REGISTRY_SIGNING_KEY", "a-registry-signing-key-of-at-least-32-bytes")
    };
    // SAFETY: as above.
    unsafe { std::env::set_var("KEYHOLE_KAFKA_PASSWORD", "a-kafka-password") };
    let settings = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let admin = settings.admin.unwrap();
    assert_eq!(admin.listen.to_string(), "0.0.0.0:9090");
    assert!(admin.operator_token_sha256.is_some());
    assert!(matches!(admin.registry, keyhole::config::RegistryStore::Kafka(_)));
    assert!(admin.state_dir.starts_with("/var/lib/keyhole"));
    // The audit trail outlives the pod: on a topic, not in the emptyDir.
    assert_eq!(settings.audit, AuditSink::Kafka { topic: "keyhole-audit".into() });
}

#[test]
fn the_kubernetes_config_map_holds_a_valid_configuration_within_the_grace_period() {
    let root = common::repo_root();
    let manifest = std::fs::read_to_string(root.join("deploy/kubernetes/configmap.yaml")).unwrap();
    // The block scalar under `keyhole.toml: |`, indented four spaces.
    let toml: String = manifest
        .lines()
        .skip_while(|line| !line.trim_start().starts_with("keyhole.toml: |"))
        .skip(1)
        .map(|line| format!("{}\n", line.strip_prefix("    ").unwrap_or(line)))
        .collect();
    let dir = std::env::temp_dir().join(common::broker::unique("keyhole-configmap"));
    std::fs::create_dir_all(&dir).unwrap();
    for secret in ["operator-token", "crm-token", "registry-signing-key", "kafka-password"] {
        std::fs::write(dir.join(secret), "a-secret-from-a-mounted-file-of-at-least-32-bytes\n").unwrap();
    }
    let path = dir.join("keyhole.toml");
    std::fs::write(&path, toml.replace("/run/secrets/keyhole", dir.to_str().unwrap())).unwrap();
    let settings = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(settings.admin.unwrap().registry, keyhole::config::RegistryStore::Kafka(_)));
    // The audit trail outlives the pod: on a topic, not in the emptyDir.
    assert_eq!(settings.audit, AuditSink::Kafka { topic: "keyhole-audit".into() });
    let deployment = std::fs::read_to_string(root.join("deploy/kubernetes/deployment.yaml")).unwrap();
    let grace: u64 = deployment
        .lines()
        .find_map(|line| line.trim().strip_prefix("terminationGracePeriodSeconds:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let bound = settings.drain_timeout + settings.commit_timeout;
    assert!(
        grace > bound.as_secs(),
        "the pod's grace period ({grace} s) must exceed drain + commit ({bound:?})"
    );
}

#[test]
fn every_key_of_the_example_is_documented() {
    let root = common::repo_root();
    let example = std::fs::read_to_string(root.join("keyhole.example.toml")).unwrap();
    let docs = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    let mut keys = Vec::new();
    for line in example.lines().map(str::trim) {
        let line = line.trim_start_matches("# ");
        if let Some((key, _)) = line.split_once(" = ")
            && !key.contains(' ')
            && !key.starts_with('"')
        {
            keys.push(key.to_string());
        }
    }
    assert!(keys.len() > 20, "{keys:?}");
    for key in keys {
        assert!(docs.contains(&format!("`{key}`")), "docs/configuration.md does not document `{key}`");
    }
}

#[test]
fn a_broken_config_reports_every_problem_with_its_path() {
    let dir = std::env::temp_dir().join(common::broker::unique("keyhole-config"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        r#"
        [kafka]
        bootstrap_servers = ""
        group_id = "g"
        properties = { "enable.auto.commit" = "false" }

        [[data_source]]
        name = "crm"
        base_url = "ftp://crm.example.com/"

        [[handler]]
        name = "Bad Name"
        tenant = "acme"
        component = "missing.wasm"
        topics = []
        data_source = "crm"
        purpose = "p"

        [telemetry]
        otlp_endpoint = "otel-collector:4318"
        max_queue_spans = 0
        "#,
    )
    .unwrap();
    let error = Config::load(&path).unwrap_err();
    let ConfigError::Invalid { problems, .. } = &error else { panic!("{error}") };
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    for expected in [
        "kafka.bootstrap_servers",
        "kafka.properties.\"enable.auto.commit\"",
        "data_source[0].base_url",
        "handler[0].name",
        "handler[0].component",
        "handler[0].topics",
        "telemetry.otlp_endpoint",
        "telemetry.max_queue_spans",
    ] {
        assert!(paths.contains(&expected), "{expected} missing from {paths:?}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn tenant_and_handler_names_with_dots_are_refused() {
    let dir = std::env::temp_dir().join(format!("keyhole-config-names-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let component = common::guest_path("echo");
    let handler = |tenant: &str, name: &str| {
        format!(
            r#"
            [[handler]]
            name = "{name}"
            tenant = "{tenant}"
            component = "{component}"
            topics = ["refs"]
            data_source = "crm"
            purpose = "p"
            "#,
            component = component.display()
        )
    };
    let path = dir.join("keyhole.toml");
    let header = r#"
        [kafka]
        bootstrap_servers = "127.0.0.1:9092"
        group_id = "g"

        [[data_source]]
        name = "crm"
        base_url = "http://127.0.0.1:8080/"
    "#;
    // `dot` + `x.y` and `dot.x` + `y` would both consume as `g.dot.x.y`.
    let body = [handler("dot", "x.y"), handler("dot.x", "y"), handler("..", "z"), handler("w", ".")].concat();
    std::fs::write(&path, format!("{header}{body}")).unwrap();
    let error = Config::load(&path).unwrap_err();
    let ConfigError::Invalid { problems, .. } = &error else { panic!("{error}") };
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        ["handler[0].name", "handler[1].tenant", "handler[2].tenant", "handler[3].name"],
        "{error}"
    );
    assert!(problems.iter().all(|p| p.message.contains("'.'")), "{error}");
    std::fs::write(&path, format!("{header}{}", handler("dot", "x-y"))).unwrap();
    let settings = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(settings.bindings[0].group_id, "g.dot.x-y");
    std::fs::remove_dir_all(&dir).ok();
}
