//! Unit tests of the configuration: parsing, validation and the problems it reports.

use super::bindings::parse_base_url;
use super::*;
use crate::resolve::Identity;
use std::path::Path;

fn parse(text: &str) -> Config {
    toml::from_str(text).unwrap()
}

const MINIMAL: &str = r#"
    [kafka]
    bootstrap_servers = "127.0.0.1:9092"
    group_id = "keyhole"

    [[data_source]]
    name = "crm"
    base_url = "http://127.0.0.1:8080/api"
    identity = { bearer_token = { value = "t0ken" } }

    [[handler]]
    name = "echo"
    tenant = "acme"
    component = "Cargo.toml"
    topics = ["refs"]
    data_source = "crm"
    purpose = "testing"
"#;

#[test]
fn a_minimal_config_validates_and_derives_the_group() {
    let settings = parse(MINIMAL).validate(Path::new(".")).unwrap();
    assert_eq!(settings.bindings[0].group_id, "keyhole.acme.echo");
    assert_eq!(settings.data_sources[0].base_url.as_str(), "http://127.0.0.1:8080/api/");
    assert!(matches!(settings.data_sources[0].identity, Identity::Bearer(ref t) if t == "t0ken"));
}

#[test]
fn every_problem_is_reported_with_its_key_path() {
    let text = MINIMAL
        .replace(r#"data_source = "crm""#, r#"data_source = "nope""#)
        .replace(r#"purpose = "testing""#, "purpose = \"\"\n        max_in_flight = 0")
        .replace(
            r#"group_id = "keyhole""#,
            "group_id = \"keyhole\"\n        properties = { \"enable.auto.offset.store\" = \"true\" }",
        );
    let problems = parse(&text).validate(Path::new(".")).unwrap_err();
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "kafka.properties.\"enable.auto.offset.store\"",
            "handler[0].data_source",
            "handler[0].purpose",
            "handler[0].max_in_flight"
        ]
    );
    assert!(problems[0].message.contains("never handled"), "{}", problems[0].message);
}

#[test]
fn a_missing_secret_is_found_at_validation() {
    let text = MINIMAL.replace(r#"{ value = "t0ken" }"#, r#"{ env = "KEYHOLE_TEST_SURELY_UNSET" }"#);
    let problems = parse(&text).validate(Path::new(".")).unwrap_err();
    assert_eq!(problems[0].path, "data_source[0].identity.bearer_token");
    assert!(problems[0].message.contains("KEYHOLE_TEST_SURELY_UNSET"));
}

#[test]
fn unknown_keys_are_refused() {
    let error = toml::from_str::<Config>(&MINIMAL.replace("purpose =", "purpos = \"x\"\n        purpose ="))
        .unwrap_err();
    assert!(error.to_string().contains("purpos"), "{error}");
}

#[test]
fn base_urls_must_be_plain_http() {
    assert!(parse_base_url("ftp://x/").is_err());
    assert!(parse_base_url("https://user:pw@x/").is_err());
    assert!(parse_base_url("https://x/api?token=1").is_err());
    assert_eq!(parse_base_url("https://x/api").unwrap().path(), "/api/");
}

#[test]
fn receipts_default_to_a_file_beside_the_configuration() {
    let settings = parse(MINIMAL).validate(Path::new(".")).unwrap();
    assert_eq!(settings.receipts, ReceiptSink::File(Path::new(".").join("keyhole-receipts.jsonl")));
}

#[test]
fn a_kafka_receipt_sink_needs_a_topic_no_handler_consumes() {
    let with = |receipts: &str| {
        let text = MINIMAL.replace("[[data_source]]", &format!("{receipts}\n        [[data_source]]"));
        parse(&text).validate(Path::new("."))
    };
    let ok = with("[receipts]\n        sink = \"kafka\"\n        topic = \"receipts\"").unwrap();
    assert_eq!(ok.receipts, ReceiptSink::Kafka { topic: "receipts".into() });
    for (receipts, paths) in [
        ("[receipts]\n        sink = \"kafka\"", &["receipts.topic"][..]),
        // Consumed by a handler: wrong from both sides (the handler may not read receipts).
        (
            "[receipts]\n        sink = \"kafka\"\n        topic = \"refs\"",
            &["receipts.topic", "handler[0].topics[0]"][..],
        ),
        ("[receipts]\n        sink = \"kafka\"\n        topic = \"a b\"", &["receipts.topic"][..]),
        (
            "[receipts]\n        sink = \"kafka\"\n        topic = \"r\"\n        path = \"x\"",
            &["receipts.path"][..],
        ),
        ("[receipts]\n        topic = \"r\"", &["receipts.topic"][..]),
        (
            "[audit]\n        path = \"same\"\n        [receipts]\n        path = \"same\"",
            &["receipts.path"][..],
        ),
    ] {
        let problems = with(receipts).unwrap_err();
        assert_eq!(problems.iter().map(|p| p.path.as_str()).collect::<Vec<_>>(), paths, "{receipts}");
    }
}

#[test]
fn audit_records_go_only_to_the_log_unless_a_file_or_topic_is_named() {
    let with = |audit: &str| {
        let text = MINIMAL.replace("[[data_source]]", &format!("{audit}\n        [[data_source]]"));
        parse(&text).validate(Path::new(".")).unwrap()
    };
    // As before the Kafka sink: no [audit], or a path, with the file sink the default.
    assert_eq!(parse(MINIMAL).validate(Path::new(".")).unwrap().audit, AuditSink::LogOnly);
    let file = with("[audit]\n        path = \"audit.jsonl\"");
    // Relative to the configuration file, as before.
    assert_eq!(file.audit, AuditSink::File(Path::new(".").join("audit.jsonl")));
    assert_eq!(file.own_topics.owner("audit.jsonl"), None);
    let kafka = with("[audit]\n        sink = \"kafka\"\n        topic = \"audit\"");
    assert_eq!(kafka.audit, AuditSink::Kafka { topic: "audit".into() });
    assert_eq!(kafka.audit.path(), None);
}

#[test]
fn a_kafka_audit_sink_needs_a_topic_of_its_own() {
    let with = |sections: &str| {
        let text = MINIMAL.replace("[[data_source]]", &format!("{sections}\n        [[data_source]]"));
        parse(&text).validate(Path::new("."))
    };
    let kafka = |topic: &str| format!("[audit]\n        sink = \"kafka\"\n        topic = \"{topic}\"");
    let receipts = "[receipts]\n        sink = \"kafka\"\n        topic = \"receipts\"";
    assert!(with(&format!("{}\n        {receipts}", kafka("audit"))).is_ok());
    for (sections, paths) in [
        ("[audit]\n        sink = \"kafka\"".to_string(), &["audit.topic"][..]),
        (kafka("a b"), &["audit.topic"][..]),
        (format!("{}\n        path = \"audit.jsonl\"", kafka("audit")), &["audit.path"][..]),
        ("[audit]\n        topic = \"audit\"".to_string(), &["audit.topic"][..]),
        // Receipts (one per request) and audit records (one per event) on one topic.
        (format!("{}\n        {receipts}", kafka("receipts")), &["audit.topic"][..]),
        // Consumed by a handler: wrong from both sides (the handler may not read the audit).
        (kafka("refs"), &["audit.topic", "handler[0].topics[0]"][..]),
        // A dead-letter topic holds events, not records.
        (kafka("keyhole.acme.echo.dlq"), &["audit.topic"][..]),
    ] {
        let problems = with(&sections).unwrap_err();
        assert_eq!(problems.iter().map(|p| p.path.as_str()).collect::<Vec<_>>(), paths, "{sections}");
    }
    let problems = with(&format!("{}\n        {receipts}", kafka("receipts"))).unwrap_err();
    assert!(problems[0].message.contains("the receipts topic"), "{}", problems[0].message);
}

#[test]
fn the_audit_topic_is_one_of_keyholes_own_which_no_grant_or_handler_may_name() {
    let text = format!(
        "{}\n    reply_topic = \"audit\"\n\n    [audit]\n    sink = \"kafka\"\n    topic = \"audit\"\n",
        MINIMAL
    );
    let problems = parse(&text).validate(Path::new(".")).unwrap_err();
    assert_eq!(problems.iter().map(|p| p.path.as_str()).collect::<Vec<_>>(), ["handler[0].reply_topic"]);
    assert!(problems[0].message.contains("the audit topic"), "{}", problems[0].message);

    let settings = parse(&text.replace("reply_topic = \"audit\"", "")).validate(Path::new(".")).unwrap();
    assert_eq!(settings.own_topics.owner("audit"), Some("the audit topic"));
    let catalog = crate::registry::Catalog::of(&settings);
    for (topics, replies) in
        [(vec!["audit".to_string()], vec![]), (vec!["refs".to_string()], vec!["audit".to_string()])]
    {
        let grant = crate::registry::Grant {
            topics,
            data_sources: vec!["crm".into()],
            purposes: vec!["testing".into()],
            reply_topics: replies,
            ..Default::default()
        };
        let put = crate::registry::Command::PutTenant { tenant: "mallory".into(), grant };
        let refused = put.validate(&catalog).unwrap_err().to_string();
        assert!(refused.contains("the audit topic"), "{refused}");
    }
}

#[test]
fn secrets_are_not_debug_printed() {
    let settings = parse(MINIMAL).validate(Path::new(".")).unwrap();
    assert!(!format!("{settings:?}").contains("t0ken"));
}

#[test]
fn the_kafka_registry_needs_signing_keys_of_32_bytes_with_unique_ids() {
    let admin = "\n    [admin]\n    operator_token = { value = \"an-operator-token\" }\n";
    let kafka_registry =
        |keys: &str| format!("{MINIMAL}{admin}\n    [registry]\n    store = \"kafka\"\n    {keys}\n");
    let paths = |text: &str| -> Vec<String> {
        parse(text).validate(Path::new(".")).unwrap_err().into_iter().map(|p| p.path).collect()
    };
    assert_eq!(paths(&kafka_registry("")), ["registry.signing_keys"]);
    let short = r#"signing_keys = [{ id = "k1", secret = { value = "too short" } }]"#;
    assert_eq!(paths(&kafka_registry(short)), ["registry.signing_keys[0].secret"]);
    let long = "x".repeat(32);
    let twice = format!(
        r#"signing_keys = [{{ id = "k1", secret = {{ value = "{long}" }} }}, {{ id = "k1", secret = {{ value = "{long}" }} }}, {{ id = "bad id", secret = {{ value = "{long}" }} }}]"#
    );
    assert_eq!(
        paths(&kafka_registry(&twice)),
        ["registry.signing_keys[1].id", "registry.signing_keys[2].id"]
    );
    let good = format!(r#"signing_keys = [{{ id = "2026-12.a_b", secret = {{ value = "{long}" }} }}]"#);
    let settings = parse(&kafka_registry(&good)).validate(Path::new(".")).unwrap();
    let Some(RegistryStore::Kafka(registry)) = settings.admin.map(|a| a.registry) else {
        panic!("not kafka")
    };
    assert_eq!(registry.signing_keys[0].id, "2026-12.a_b");
    assert!(!format!("{registry:?}").contains(&long), "the secret is not in the Debug output");
}

#[test]
fn a_configured_handler_may_not_consume_or_reply_to_keyholes_own_topics() {
    let text = format!(
        "{}\n    reply_topic = \"keyhole-registry\"\n    reply_topics_allowed = [\"keyhole.acme.other.dlq\"]\n\n    [receipts]\n    sink = \"kafka\"\n    topic = \"receipts\"\n\n    [admin]\n    operator_token = {{ value = \"an-operator-token\" }}\n\n    [registry]\n    store = \"kafka\"\n    signing_keys = [{{ id = \"k\", secret = {{ value = \"{}\" }} }}]\n",
        MINIMAL.replace(r#"topics = ["refs"]"#, r#"topics = ["refs", "keyhole-registry-blobs"]"#),
        "k".repeat(32)
    );
    let problems = parse(&text).validate(Path::new(".")).unwrap_err();
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        ["handler[0].topics[1]", "handler[0].reply_topic", "handler[0].reply_topics_allowed[0]"],
        "{problems:#?}"
    );
    assert!(problems[0].message.contains("blob topic"), "{}", problems[0].message);
    assert!(problems[2].message.contains("dead-letter topic"), "{}", problems[2].message);
}

#[test]
fn a_bearer_token_over_plain_http_to_another_host_is_refused_unless_allowed() {
    let remote = MINIMAL.replace("http://127.0.0.1:8080/api", "http://crm.internal:8080/api");
    let problems = parse(&remote).validate(Path::new(".")).unwrap_err();
    assert_eq!(problems.iter().map(|p| p.path.as_str()).collect::<Vec<_>>(), ["data_source[0].base_url"]);
    assert!(problems[0].message.contains("in clear"), "{}", problems[0].message);
    let allowed = remote.replace(
        r#"identity = { bearer_token = { value = "t0ken" } }"#,
        "identity = { bearer_token = { value = \"t0ken\" } }\n    allow_plaintext_credentials = true",
    );
    assert!(parse(&allowed).validate(Path::new(".")).is_ok());
    // https, loopback (the token never leaves the host) and no token at all are fine.
    for base in ["https://crm.internal/api", "http://localhost:8080/api", "http://[::1]:8080/api"] {
        let text = MINIMAL.replace("http://127.0.0.1:8080/api", base);
        assert!(parse(&text).validate(Path::new(".")).is_ok(), "{base}");
    }
    let tokenless = remote.replace(r#"identity = { bearer_token = { value = "t0ken" } }"#, "");
    assert!(parse(&tokenless).validate(Path::new(".")).is_ok());
}

#[test]
fn the_admin_listeners_and_their_bounds_are_checked() {
    let with_admin = |admin: &str| format!("{MINIMAL}\n    [admin]\n    {admin}\n");
    let settings = parse(&with_admin(r#"listen = "0.0.0.0:9090""#)).validate(Path::new(".")).unwrap();
    let admin = settings.admin.unwrap();
    assert_eq!(admin.monitoring_listen.to_string(), "127.0.0.1:9091");
    assert_eq!((admin.max_connections, admin.header_read_timeout.as_secs()), (512, 10));
    let problems = |admin: &str| -> Vec<String> {
        let refused = parse(&with_admin(admin)).validate(Path::new(".")).unwrap_err();
        refused.iter().map(|p| format!("{}: {}", p.path, p.message)).collect()
    };
    let same_port = problems("listen = \"0.0.0.0:9091\"\n    monitoring_listen = \"127.0.0.1:9091\"");
    assert!(
        same_port[0].starts_with("admin.monitoring_listen") && same_port[0].contains("of their own"),
        "{same_port:?}"
    );
    assert!(problems("max_connections = 0")[0].starts_with("admin.max_connections"));
    assert!(problems("header_read_timeout_ms = 5")[0].starts_with("admin.header_read_timeout_ms"));
    // Below the compile's wall-clock budget, an upload's answer would be cut off.
    let short_idle = problems("idle_timeout_ms = 60000");
    assert!(
        short_idle[0].starts_with("admin.idle_timeout_ms") && short_idle[0].contains("compile_wall_seconds")
    );
}

#[test]
fn the_memory_budgets_must_hold_the_largest_handler() {
    let with_sandbox = |sandbox: &str| format!("[sandbox]\n{sandbox}\n{MINIMAL}");
    let defaults = parse(MINIMAL).validate(Path::new(".")).unwrap().sandbox;
    assert_eq!(
        (
            defaults.memory_budget_bytes,
            defaults.tenant_memory_budget_bytes,
            defaults.max_memory_bytes_ceiling
        ),
        (512 << 20, 256 << 20, 256 << 20)
    );
    let paths = |sandbox: &str| -> Vec<String> {
        let refused = parse(&with_sandbox(sandbox)).validate(Path::new(".")).unwrap_err();
        refused.into_iter().map(|p| p.path).collect()
    };
    assert_eq!(paths("tenant_memory_budget_bytes = 1073741824"), ["sandbox.tenant_memory_budget_bytes"]);
    assert_eq!(paths("max_memory_bytes_ceiling = 536870912"), ["sandbox.max_memory_bytes_ceiling"]);
    assert_eq!(paths("compile_cpu_seconds = 0"), ["sandbox.compile_cpu_seconds"]);
    let tiny =
        paths("memory_budget_bytes = 1000\ntenant_memory_budget_bytes = 0\nmax_memory_bytes_ceiling = 0");
    assert!(tiny.iter().any(|p| p == "sandbox.memory_budget_bytes"), "{tiny:?}");
}

#[test]
fn batched_resolution_is_off_by_default_and_its_keys_are_checked() {
    let settings = parse(MINIMAL).validate(Path::new(".")).unwrap();
    assert_eq!(settings.data_sources[0].batch, None, "one request per reference unless asked");

    let with = |batch: &str| {
        let text = MINIMAL.replace(
            r#"identity = { bearer_token = { value = "t0ken" } }"#,
            &format!("identity = {{ bearer_token = {{ value = \"t0ken\" }} }}\n    batch = {batch}"),
        );
        parse(&text).validate(Path::new("."))
    };
    let settings = with(r#"{ path = "v1/batch" }"#).unwrap();
    assert_eq!(
        settings.data_sources[0].batch,
        Some(crate::resolve::BatchSettings {
            path: "v1/batch".into(),
            max_references: 16,
            max_wait: std::time::Duration::from_millis(2),
        })
    );
    for (batch, key) in [
        (r#"{ path = "" }"#, "data_source[0].batch.path"),
        (r#"{ path = "/batch" }"#, "data_source[0].batch.path"),
        (r#"{ path = "../batch" }"#, "data_source[0].batch.path"),
        (r#"{ path = "a/./b" }"#, "data_source[0].batch.path"),
        (r#"{ path = "batch?x=1" }"#, "data_source[0].batch.path"),
        (r#"{ path = "batch", max_references = 1 }"#, "data_source[0].batch.max_references"),
        (r#"{ path = "batch", max_references = 257 }"#, "data_source[0].batch.max_references"),
        (r#"{ path = "batch", max_wait_ms = 101 }"#, "data_source[0].batch.max_wait_ms"),
    ] {
        let problems = with(batch).unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, [key], "{batch}");
    }
    let text = MINIMAL.replace(
        r#"identity = { bearer_token = { value = "t0ken" } }"#,
        "identity = { bearer_token = { value = \"t0ken\" } }\n    batch = { path = \"b\", size = 3 }",
    );
    assert!(toml::from_str::<Config>(&text).is_err(), "unknown keys are refused");
}

#[test]
fn declarations_are_checked_with_their_key_paths_and_kept_for_the_record() {
    let valid = format!(
        "{MINIMAL}\n    [handler.declared]\n    data_subjects = [\"customers\"]\n    recipients = []\n    \
         transfers = [{{ country = \"US\", safeguard = \"SCC 2021/914\" }}]\n"
    );
    let settings = parse(&valid).validate(Path::new(".")).unwrap();
    let declared = &settings.bindings[0].declared;
    assert_eq!(declared.data_subjects.as_deref(), Some(&["customers".to_string()][..]));
    assert_eq!(declared.recipients.as_deref(), Some(&[][..]), "an empty list declares none");
    assert_eq!(declared.data_categories, None, "left out: not declared");

    let invalid = format!(
        "{MINIMAL}\n    [handler.declared]\n    data_categories = [\"name\\u0007\", \"name\\u0007\"]\n    \
         transfers = [{{ country = \"\", safeguard = \"SCC\" }}]\n"
    );
    let problems = parse(&invalid).validate(Path::new(".")).unwrap_err();
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "handler[0].declared.data_categories[0]",
            "handler[0].declared.data_categories[1]",
            "handler[0].declared.transfers[0].country"
        ]
    );
    let unknown = format!("{MINIMAL}\n    [handler.declared]\n    data_category = [\"x\"]\n");
    assert!(toml::from_str::<Config>(&unknown).is_err(), "a misspelt key is refused, not ignored");
}
