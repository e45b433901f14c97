//! `keyhole processing-record` on a known configuration and registry, against the test broker:
//! the record, in Markdown and JSON, matches the reviewed expectation in `tests/it/expected/`
//! once the values that change per run (broker address, times, temporary paths, topic prefix,
//! the guests' digests and sizes) are placeholders; the same registry kept in Kafka gives the
//! same record; no secret of the configuration or the registry appears in it; and the registry is
//! only read (a local directory neither created nor changed, the Kafka topics neither written
//! nor created).
//!
//! `KEYHOLE_WRITE_EXPECTED=1` writes the expectation files from this run instead of comparing:
//! review every line of the difference before committing it (it is what a DPO reads).

use crate::common;

use common::broker;
use common::cluster::SIGNING_KEY;
use keyhole::config::{Config, Settings};
use keyhole::model::declared::{Declared, Transfer};
use keyhole::registry::{Catalog, Grant, HandlerSpec, Registry, TenantLimits};
use keyhole::sandbox::ComponentReport;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Values in the configuration that the record must never show.
const CANARIES: [&str; 4] = [
    "canary-bearer-token-5c1f",
    "canary-client-key-8e2d",
    "canary-operator-token-77aa",
    "canary-kafka-password-31b9",
];

/// One run's names: everything the test creates starts with `run`.
struct Scenario {
    run: String,
    dir: PathBuf,
    config: PathBuf,
}

impl Scenario {
    fn new() -> Scenario {
        let run = broker::unique("pr");
        let dir = std::env::temp_dir().join(&run);
        std::fs::create_dir_all(&dir).unwrap();
        // Any file serves: the record names the identity's kind and never reads the certificate.
        std::fs::write(dir.join("client.pem"), "not read by the record").unwrap();
        let config = dir.join("keyhole.toml");
        Scenario { run, dir, config }
    }

    fn topic(&self, name: &str) -> String {
        format!("{}-{name}", self.run)
    }

    /// The configuration: two data sources (a bearer token, mTLS with batches), receipts on a
    /// topic, one configured handler with every declaration, the admin API with `registry`
    /// (TOML) as its store.
    fn write_config(&self, registry: &str) {
        let toml = format!(
            r#"
            [kafka]
            bootstrap_servers = "{bootstrap}"
            group_id = "{run}"
            secret_properties = {{ "sasl.password" = {{ value = "{kafka_password}" }} }}

            [[data_source]]
            name = "crm"
            base_url = "http://127.0.0.1:9/api/"
            identity = {{ bearer_token = {{ value = "{bearer}" }} }}

            [[data_source]]
            name = "billing"
            base_url = "https://billing.example.com/v1/"
            identity = {{ client_certificate = "client.pem", client_key = {{ value = "{client_key}" }} }}
            batch = {{ path = "batch" }}

            [audit]
            path = "audit.jsonl"

            [receipts]
            sink = "kafka"
            topic = "{receipts}"

            [admin]
            listen = "127.0.0.1:0"
            monitoring_listen = "127.0.0.1:0"
            operator_token = {{ value = "{operator}" }}
            state_dir = "state"

            {registry}

            [[handler]]
            name = "age-band"
            tenant = "acme"
            component = "{age_band}"
            topics = ["{references}"]
            data_source = "crm"
            purpose = "Age statistics for product planning (contract ACME-17)"
            reply_topic = "{age_bands}"
            reply_topics_allowed = ["{marketing}"]
            delivery = "at-least-once"
            guest_output = "withhold"

            [handler.limits]
            deadline_ms = 500
            max_memory_bytes = 33554432

            [handler.on_failure]
            resolve = "retry"

            [handler.declared]
            data_subjects = ["customers of Acme's online shop"]
            data_categories = ["date of birth", "country of residence"]
            recipients = []
            transfers = []
            "#,
            bootstrap = broker::bootstrap(),
            run = self.run,
            kafka_password = CANARIES[3],
            bearer = CANARIES[0],
            client_key = CANARIES[1],
            operator = CANARIES[2],
            age_band = common::guest_path("age-band").display(),
            references = self.topic("references"),
            age_bands = self.topic("age-bands"),
            marketing = self.topic("marketing"),
            receipts = self.topic("receipts"),
        );
        std::fs::write(&self.config, toml).unwrap();
    }

    fn settings(&self) -> Settings {
        Config::load(&self.config).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The topics the record reports on, as a broker would have them: a reply topic kept 7
    /// days, a dead-letter topic kept 30 days or 1 GiB, the receipts kept without limit, two
    /// topics with no setting of their own (tansu reports none for those), and the rest missing.
    async fn create_topics(&self) {
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", broker::bootstrap()).create().unwrap();
        let (references, age_bands, acme_dlq, receipts, scores, scorer_dlq) = (
            self.topic("references"),
            self.topic("age-bands"),
            format!("{}.acme.age-band.dlq", self.run),
            self.topic("receipts"),
            self.topic("scores"),
            format!("{}.globex.scorer.dlq", self.run),
        );
        let topics = [
            NewTopic::new(&references, 1, TopicReplication::Fixed(1)),
            NewTopic::new(&age_bands, 1, TopicReplication::Fixed(1)).set("retention.ms", "604800000"),
            NewTopic::new(&acme_dlq, 1, TopicReplication::Fixed(1))
                .set("cleanup.policy", "delete")
                .set("retention.ms", "2592000000")
                .set("retention.bytes", "1073741824"),
            NewTopic::new(&receipts, 1, TopicReplication::Fixed(1)).set("retention.ms", "-1"),
            NewTopic::new(&scores, 1, TopicReplication::Fixed(1)),
            NewTopic::new(&scorer_dlq, 1, TopicReplication::Fixed(1)),
        ];
        for result in admin.create_topics(&topics, &AdminOptions::new()).await.unwrap() {
            result.unwrap_or_else(|(topic, e)| panic!("create {topic}: {e}"));
        }
    }

    /// The registry's content, the same in either store: `globex/scorer` with two versions, the
    /// second active after the first, and every declaration; `globex/draft`, uploaded but never
    /// activated; `initech/legacy`, active but no longer covered by its tenant's grant. Returns
    /// the tenant token it issued (a secret the record must not show).
    async fn populate(&self, registry: &Registry) -> String {
        let fraud = "Fraud scoring (contract GLOBEX-3)";
        let grant = |topics: Vec<String>, reply_topics: Vec<String>| Grant {
            topics,
            data_sources: vec!["crm".into(), "billing".into()],
            purposes: vec![fraud.into()],
            reply_topics,
            limits: TenantLimits::default(),
        };
        let references = self.topic("references");
        registry
            .put_tenant("globex", grant(vec![references.clone()], vec![self.topic("scores")]))
            .await
            .unwrap();
        let token = registry.issue_token("globex").await.unwrap().token;
        let spec = |data_source: &str, reply_topic: Option<String>, declared: Declared| HandlerSpec {
            topics: vec![references.clone()],
            data_source: data_source.into(),
            purpose: fraud.into(),
            reply_topic,
            max_in_flight: None,
            deadline_ms: Some(250),
            max_memory_bytes: None,
            declared,
        };
        let declared = Declared {
            data_subjects: Some(vec!["customers".into(), "payers of a customer's invoices".into()]),
            data_categories: Some(vec!["payment history".into(), "postal address".into()]),
            recipients: Some(vec!["Globex Insurance AG, claims department".into()]),
            transfers: Some(vec![Transfer {
                country: "US".into(),
                safeguard: "Standard contractual clauses (EU 2021/914), module 2".into(),
            }]),
        };
        registry
            .put_handler("globex", "scorer", spec("crm", Some(self.topic("scores")), declared))
            .await
            .unwrap();
        let echo = upload(registry, "globex", "scorer", "echo").await;
        let age_band = upload(registry, "globex", "scorer", "age-band").await;
        registry.activate("globex", "scorer", &echo).await.unwrap();
        registry.activate("globex", "scorer", &age_band).await.unwrap();
        registry.put_handler("globex", "draft", spec("billing", None, Declared::default())).await.unwrap();
        upload(registry, "globex", "draft", "echo").await;

        registry.put_tenant("initech", grant(vec![references.clone()], Vec::new())).await.unwrap();
        registry.put_handler("initech", "legacy", spec("crm", None, Declared::default())).await.unwrap();
        let legacy = upload(registry, "initech", "legacy", "echo").await;
        registry.activate("initech", "legacy", &legacy).await.unwrap();
        registry.put_tenant("initech", grant(Vec::new(), Vec::new())).await.unwrap();
        token
    }

    /// `keyhole processing-record` on this configuration: its stdout, after checking it
    /// succeeded and that no secret is in it.
    fn record(&self, format: &str, secrets: &[&str]) -> String {
        let output =
            keyhole(&["processing-record", "--config", self.config.to_str().unwrap(), "--format", format]);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let stdout = String::from_utf8(output.stdout).unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        for secret in CANARIES.iter().chain(secrets) {
            assert!(
                !stdout.contains(secret) && !stderr.contains(secret),
                "{secret} in the record:\n{stdout}"
            );
        }
        stdout
    }

    /// The record with what changes per run replaced by placeholders.
    fn normalised(&self, record: &str) -> String {
        let guests = common::repo_root().join("guest-examples/dist");
        let mut text = record
            .replace(&self.dir.display().to_string(), "<dir>")
            .replace(&guests.display().to_string(), "<guests>")
            .replace(&broker::bootstrap(), "<broker>");
        for guest in ["age-band", "echo"] {
            let wasm = common::guest(guest);
            let digest = keyhole::sandbox::version_of(&wasm);
            text = text.replace(&digest, &format!("sha256:<{guest}.wasm>")).replace(
                &format!("\"size_bytes\": {}", wasm.len()),
                &format!("\"size_bytes\": \"<{guest}.wasm>\""),
            );
        }
        text = text
            .replace(&self.run, "<run>")
            .replace(&format!("(keyhole {})", env!("CARGO_PKG_VERSION")), "(keyhole <version>)")
            .replace(
                &format!("\"keyhole_version\": \"{}\"", env!("CARGO_PKG_VERSION")),
                "\"keyhole_version\": \"<version>\"",
            );
        times_replaced(&text)
    }
}

/// Uploads a guest as a version of a handler; its version.
async fn upload(registry: &Registry, tenant: &str, handler: &str, guest: &str) -> String {
    let report = ComponentReport { imports: Vec::new(), exports: vec!["handle".into()] };
    let (info, _) =
        registry.add_version(tenant, handler, Arc::new(common::guest(guest)), &report).await.unwrap();
    info.version
}

/// Every RFC 3339 time (`2026-12-02T10:00:00Z`) as `<time>`.
fn times_replaced(text: &str) -> String {
    let shape = "dddd-dd-ddTdd:dd:ddZ";
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let candidate = bytes.get(i..i + shape.len());
        let is_time = candidate.is_some_and(|candidate| {
            candidate
                .iter()
                .zip(shape.bytes())
                .all(|(b, s)| if s == b'd' { b.is_ascii_digit() } else { *b == s })
        });
        if is_time {
            out.push_str("<time>");
            i += shape.len();
        } else {
            let c = text[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// Runs the keyhole binary to its end (at most 60 s; it dies with the test).
fn keyhole(args: &[&str]) -> std::process::Output {
    let child = common::command_dying_with_the_test(env!("CARGO_BIN_EXE_keyhole"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || sender.send(child.wait_with_output()));
    match receiver.recv_timeout(Duration::from_secs(60)) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("keyhole {args:?} did not end within 60 s");
        }
    }
}

fn expected_path(name: &str) -> PathBuf {
    common::repo_root().join("tests/it/expected").join(name)
}

/// Compares with the reviewed expectation (or writes it, with `KEYHOLE_WRITE_EXPECTED=1`).
fn matches_expectation(name: &str, actual: &str) {
    let path = expected_path(name);
    if std::env::var_os("KEYHOLE_WRITE_EXPECTED").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_same(&expected, actual, &path);
}

/// Equal texts, or a failure naming the first line that differs.
fn assert_same(expected: &str, actual: &str, what: &Path) {
    if expected == actual {
        return;
    }
    let line = expected
        .lines()
        .zip(actual.lines())
        .position(|(e, a)| e != a)
        .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
    panic!(
        "the record differs from {} at line {}:\n  expected: {:?}\n  actual:   {:?}\n\nthe whole record:\n{actual}",
        what.display(),
        line + 1,
        expected.lines().nth(line),
        actual.lines().nth(line),
    );
}

/// Every file under `dir` with its bytes.
fn contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                files.push((path, bytes));
            }
        }
    }
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread")]
async fn the_record_of_a_known_configuration_and_local_registry_is_the_reviewed_one() {
    let scenario = Scenario::new();
    scenario.write_config("");
    scenario.create_topics().await;
    let settings = scenario.settings();
    let state_dir = scenario.dir.join("state");
    let token = {
        let registry = Registry::open(&state_dir, Catalog::of(&settings)).unwrap();
        scenario.populate(&registry).await
    };
    let token_digest = {
        use sha2::Digest as _;
        sha2::Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let before = contents(&state_dir);

    let markdown = scenario.record("markdown", &[&token, &token_digest]);
    let json = scenario.record("json", &[&token, &token_digest]);
    matches_expectation("processing-record.md", &scenario.normalised(&markdown));
    matches_expectation("processing-record.json", &scenario.normalised(&json));
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed["format"], "keyhole-processing-record/1");
    assert!(contents(&state_dir) == before, "the registry's directory changed");

    // --output writes the same record into a file.
    let file = scenario.dir.join("record.md");
    let output = keyhole(&[
        "processing-record",
        "--config",
        scenario.config.to_str().unwrap(),
        "--output",
        file.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let written = std::fs::read_to_string(&file).unwrap();
    assert_eq!(scenario.normalised(&written), scenario.normalised(&markdown));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_directory_that_is_not_there_is_not_created() {
    let scenario = Scenario::new();
    scenario.write_config("");
    let markdown = scenario.record("markdown", &[]);
    assert!(!scenario.dir.join("state").exists(), "the record created the registry's directory");
    assert!(markdown.contains("### acme / age-band"), "{markdown}");
    assert!(!markdown.contains("### globex"), "{markdown}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_registry_kept_in_kafka_gives_the_same_record_and_is_not_written() {
    let scenario = Scenario::new();
    let (log, blobs) = (scenario.topic("registry"), scenario.topic("registry-blobs"));
    let signing_key = format!("canary-signing-key-{SIGNING_KEY}");
    let kafka_registry = |topic: &str, blob_topic: &str, create: bool| {
        format!(
            r#"
            [registry]
            store = "kafka"
            topic = "{topic}"
            blob_topic = "{blob_topic}"
            create_topics = {create}
            replication_factor = 1
            signing_keys = [{{ id = "test", secret = {{ value = "{signing_key}" }} }}]
            "#
        )
    };
    scenario.write_config(&kafka_registry(&log, &blobs, true));
    scenario.create_topics().await;
    let settings = scenario.settings();
    let admin = settings.admin.clone().unwrap();
    let token = {
        let (registry, _) =
            Registry::open_configured(&admin, &settings.kafka, Catalog::of(&settings)).await.unwrap();
        let token = scenario.populate(&registry).await;
        registry.close().await;
        token
    };
    let end_of_log = high_watermark(&log);

    let markdown = scenario.record("markdown", &[&token, &signing_key]);
    let json = scenario.record("json", &[&token, &signing_key]);
    assert_eq!(high_watermark(&log), end_of_log, "the record wrote to the registry log");

    // The local record, with the registry's location in Kafka.
    let expected = |name: &str, local: &str, kafka: &str| {
        let text = std::fs::read_to_string(expected_path(name)).unwrap();
        assert!(text.contains(local), "{name} no longer says {local:?}");
        text.replace(local, kafka)
    };
    let markdown_expected = expected(
        "processing-record.md",
        "| Registry of uploaded handlers | local directory `<dir>/state` |",
        "| Registry of uploaded handlers | Kafka topics `<run>-registry` (log) and `<run>-registry-blobs` (components) |",
    );
    let json_expected = expected(
        "processing-record.json",
        "\"store\": \"local\",\n      \"directory\": \"<dir>/state\"",
        "\"store\": \"kafka\",\n      \"topic\": \"<run>-registry\",\n      \"blob_topic\": \"<run>-registry-blobs\"",
    );
    assert_same(
        &markdown_expected,
        &scenario.normalised(&markdown),
        Path::new("processing-record.md (Kafka)"),
    );
    assert_same(&json_expected, &scenario.normalised(&json), Path::new("processing-record.json (Kafka)"));

    // Registry topics that are not there are not created, whatever `create_topics` says.
    let (missing_log, missing_blobs) = (scenario.topic("no-registry"), scenario.topic("no-registry-blobs"));
    scenario.write_config(&kafka_registry(&missing_log, &missing_blobs, true));
    let output = keyhole(&["processing-record", "--config", scenario.config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("topic {missing_log} does not exist")), "{stderr}");
    assert_eq!(high_watermark(&missing_log), -1, "the record created {missing_log}");
}

/// The end of partition 0 of `topic`; -1 when the topic does not exist.
fn high_watermark(topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", broker::bootstrap()).create().unwrap();
    // All topics: asking for one by name may create it on a broker that creates topics on use.
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    let exists = metadata
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
    if !exists {
        return -1;
    }
    consumer.fetch_watermarks(topic, 0, Duration::from_secs(10)).unwrap().1
}
