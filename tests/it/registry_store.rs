//! The Kafka registry's topics and the migration between stores, on the test broker: a 40 MB
//! component through `keyhole registry import` into the blob topic and back out with
//! `keyhole registry export`, byte for byte, with the handler's declarations and activation
//! history; and keyhole refusing to start on registry topics that are missing or not compacted,
//! saying why.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::broker;
use common::cluster::SIGNING_KEY;
use keyhole::config::{AdminSettings, Config, RegistryStore};
use keyhole::model::declared::{Declared, Transfer};
use keyhole::registry::{Catalog, Grant, HandlerSpec, Registry, Snapshot, TenantLimits};
use keyhole::sandbox::ComponentReport;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

fn temp(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(broker::unique(prefix));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A configuration whose registry is in `registry`/`blobs`, caching in `dir/state`.
fn config(dir: &Path, registry: &str, blobs: &str, create_topics: bool) -> PathBuf {
    let toml = format!(
        r#"
        [kafka]
        bootstrap_servers = "{bootstrap}"
        group_id = "{group}"

        [[data_source]]
        name = "owner"
        base_url = "http://127.0.0.1:9/"

        [receipts]
        path = "{dir}/receipts.jsonl"

        [admin]
        listen = "127.0.0.1:0"
        monitoring_listen = "127.0.0.1:0"
        state_dir = "{dir}/state"

        [registry]
        store = "kafka"
        topic = "{registry}"
        blob_topic = "{blobs}"
        create_topics = {create_topics}
        replication_factor = 1
        signing_keys = [{{ id = "test", secret = {{ value = "{SIGNING_KEY}" }} }}]
        "#,
        bootstrap = broker::bootstrap(),
        group = broker::unique("keyhole"),
        dir = dir.display(),
    );
    let path = dir.join("keyhole.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

fn keyhole(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keyhole")).args(args).output().unwrap()
}

fn text(output: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_40_mb_component_moves_into_the_blob_topic_and_back_out_byte_for_byte() {
    // One instance's state_dir: a tenant, a handler, a 40 MB version, active.
    let source = temp("keyhole-source");
    let catalog = Catalog { data_sources: vec!["owner".into()], ..Catalog::default() };
    let local = Registry::open(&source, catalog).unwrap();
    let limits = TenantLimits { max_component_bytes: 64 << 20, ..TenantLimits::default() };
    let grant = Grant {
        topics: vec!["refs".into()],
        data_sources: vec!["owner".into()],
        purposes: vec!["testing".into()],
        reply_topics: Vec::new(),
        limits,
    };
    local.put_tenant("acme", grant).await.unwrap();
    local.issue_token("acme").await.unwrap();
    let spec = HandlerSpec {
        topics: vec!["refs".into()],
        data_source: "owner".into(),
        purpose: "testing".into(),
        reply_topic: None,
        max_in_flight: None,
        deadline_ms: None,
        max_memory_bytes: None,
        declared: Declared {
            data_subjects: Some(vec!["customers".into()]),
            data_categories: Some(vec!["date of birth".into()]),
            recipients: Some(Vec::new()),
            transfers: Some(vec![Transfer { country: "CH".into(), safeguard: "adequacy decision".into() }]),
        },
    };
    local.put_handler("acme", "scorer", spec).await.unwrap();
    let wasm: Vec<u8> = (0..40_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let report = ComponentReport { imports: vec!["wasi:cli/environment@0.2.3".into()], exports: Vec::new() };
    let small = Arc::new(b"another version".to_vec());
    let (other, _) = local.add_version("acme", "scorer", small, &report).await.unwrap();
    let (info, _) = local.add_version("acme", "scorer", Arc::new(wasm.clone()), &report).await.unwrap();
    // Two activations, a second apart, so that the history moved is not one timestamp twice.
    local.activate("acme", "scorer", &other.version).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    local.activate("acme", "scorer", &info.version).await.unwrap();
    drop(local);

    // Into Kafka through one configuration, out of it through another (an empty cache).
    let (registry, blobs) = (broker::unique("registry"), broker::unique("registry-blobs"));
    let first = temp("keyhole-import");
    let imported = keyhole(&[
        "registry",
        "import",
        "--config",
        config(&first, &registry, &blobs, true).to_str().unwrap(),
        "--from",
        source.to_str().unwrap(),
    ]);
    assert!(imported.status.success(), "{}", text(&imported));
    assert!(
        text(&imported).contains("imported 1 tenant(s), 1 handler(s), 2 version(s)"),
        "{}",
        text(&imported)
    );
    let second = temp("keyhole-export");
    let target = second.join("exported");
    let exported = keyhole(&[
        "registry",
        "export",
        "--config",
        config(&second, &registry, &blobs, false).to_str().unwrap(),
        "--to",
        target.to_str().unwrap(),
    ]);
    assert!(exported.status.success(), "{}", text(&exported));

    let hex = info.version.strip_prefix("sha256:").unwrap();
    let back = std::fs::read(target.join("components/sha256").join(format!("{hex}.wasm"))).unwrap();
    assert!(back == wasm, "the component came back different ({} bytes)", back.len());
    // The exported directory is a working state_dir holding the same registry.
    let catalog = Catalog { data_sources: vec!["owner".into()], ..Catalog::default() };
    let (before, after) =
        (Registry::open(&source, catalog.clone()).unwrap(), Registry::open(&target, catalog).unwrap());
    assert_eq!(
        serde_json::to_value(before.tenants()).unwrap(),
        serde_json::to_value(after.tenants()).unwrap()
    );
    assert_eq!(
        serde_json::to_value(before.handler("acme", "scorer").unwrap()).unwrap(),
        serde_json::to_value(after.handler("acme", "scorer").unwrap()).unwrap()
    );
    // The spec's declarations and the activation history came through Kafka too.
    let (before, after) = (snapshot(&source).await, snapshot(&target).await);
    assert_eq!(before.spec, after.spec);
    assert!(before.spec.declared.transfers.is_some(), "{:?}", before.spec);
    assert_eq!(before.activations.len(), 2, "{:?}", before.activations);
    assert_eq!(before.activations, after.activations);
    // Importing again into the same, no longer empty, registry is refused.
    let again = keyhole(&[
        "registry",
        "import",
        "--config",
        first.join("keyhole.toml").to_str().unwrap(),
        "--from",
        source.to_str().unwrap(),
    ]);
    assert!(!again.status.success() && text(&again).contains("not empty"), "{}", text(&again));
}

/// The one handler of the local registry in `dir`, read as `keyhole processing-record` reads it.
async fn snapshot(dir: &Path) -> keyhole::registry::HandlerEntry {
    let config = format!(
        "[kafka]\nbootstrap_servers = \"{}\"\ngroup_id = \"g\"\n\
         [[data_source]]\nname = \"owner\"\nbase_url = \"http://127.0.0.1:9/\"\n\
         [admin]\nstate_dir = \"{}\"\n",
        broker::bootstrap(),
        dir.display()
    );
    let settings = toml::from_str::<Config>(&config).unwrap().validate(Path::new(".")).unwrap();
    let admin: AdminSettings = settings.admin.clone().unwrap();
    assert_eq!(admin.registry, RegistryStore::Local);
    let snapshot = Snapshot::read(&admin, &settings.kafka, Catalog::of(&settings)).await.unwrap();
    let mut handlers = snapshot.handlers();
    assert_eq!(handlers.len(), 1);
    handlers.remove(0)
}

/// `keyhole run` on `config` must exit non-zero, saying `reason`.
fn refuses_to_start(config: &Path, reason: &str) {
    let mut child = crate::common::command_dying_with_the_test(env!("CARGO_BIN_EXE_keyhole"))
        .args(["run", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(30) {
            child.kill().unwrap();
            panic!("keyhole started on {config:?}; it should refuse: {reason}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success());
    assert!(text(&output).contains(reason), "{}", text(&output));
}

#[tokio::test(flavor = "multi_thread")]
async fn keyhole_refuses_to_start_on_registry_topics_that_are_missing_or_not_compacted() {
    let dir = temp("keyhole-topics");
    let (registry, blobs) = (broker::unique("registry"), broker::unique("registry-blobs"));
    refuses_to_start(&config(&dir, &registry, &blobs, false), &format!("topic {registry} does not exist"));
    // A topic as Kafka creates it by default: cleanup.policy=delete, its records would expire.
    broker::create_named_topic(&registry, 1).await;
    refuses_to_start(&config(&dir, &registry, &blobs, false), "cleanup.policy");
}
