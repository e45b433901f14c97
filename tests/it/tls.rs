//! keyhole speaks Kafka over TLS, and over SASL_SSL with SCRAM-SHA-512, with the librdkafka
//! properties an operator sets: a real `keyhole run` whose configuration names only the TLS
//! address of a broker of the test's own (tansu behind stunnel, with a CA made by the test; see
//! [`common::tls`]) serves an uploaded handler end to end. So every Kafka client keyhole has is
//! shown to pass the properties through: the registry's admin client (it creates the two
//! registry topics), producer, log reader and blob reader (the upload is written, read back and
//! run), the binding's consumer, the shared producer (the reply, the access receipts on their
//! topic, the broker check behind `/readyz`), and the command line's `keyhole request` (publish
//! and reply reader) and `keyhole receipts report --topic`. A CA that did not sign the broker's
//! certificate, or a wrong password, makes `keyhole run` stop with librdkafka's reason in its log.

use crate::common;

use common::admin::{Body, OPERATOR, call};
use common::broker::unique;
use common::cluster::{admin_with_kafka_registry, free_port};
use common::config::TestConfig;
use common::owner::{self, Answer, Owner};
use common::tls::{Pki, ScramUser, TlsBroker};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const HANDLER: &str = "/v1/tenants/acme/handlers/echo";

/// The environment variable `keyhole request` and `keyhole receipts` read the SASL password
/// from (`--property-env`), as an operator's shell would hold it.
const PASSWORD_ENV: &str = "KEYHOLE_TEST_KAFKA_PASSWORD";

/// How keyhole and the test's clients reach the broker.
struct Security {
    /// `[kafka] properties`, and the command line's `--property`.
    properties: Vec<(String, String)>,
    /// The SASL password: `[kafka] secret_properties` reads it from a file (as the Kubernetes
    /// manifests mount it), the command line from [`PASSWORD_ENV`].
    password: Option<String>,
}

impl Security {
    fn tls(ca: &Path) -> Security {
        let properties =
            [("security.protocol", "ssl".to_string()), ("ssl.ca.location", ca.display().to_string())];
        Security { properties: properties.map(|(n, v)| (n.to_string(), v)).to_vec(), password: None }
    }

    /// SASL_SSL with SCRAM-SHA-512 as `user`, trusting `ca`.
    fn sasl_ssl(ca: &Path, user: &ScramUser<'_>) -> Security {
        let properties = [
            ("security.protocol", "SASL_SSL".to_string()),
            ("ssl.ca.location", ca.display().to_string()),
            ("sasl.mechanism", "SCRAM-SHA-512".to_string()),
            ("sasl.username", user.name.to_string()),
        ];
        Security {
            properties: properties.map(|(n, v)| (n.to_string(), v)).to_vec(),
            password: Some(user.password.to_string()),
        }
    }

    /// The test's own clients' properties (the password included).
    fn client_properties(&self) -> Vec<(&str, &str)> {
        let mut all: Vec<(&str, &str)> =
            self.properties.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        if let Some(password) = &self.password {
            all.push(("sasl.password", password));
        }
        all
    }
}

/// `keyhole <args>` on the command line, over `security` (the password from the environment).
async fn keyhole_command(security: &Security, args: Vec<String>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keyhole"));
    command.args(args);
    for (name, value) in &security.properties {
        command.arg("--property").arg(format!("{name}={value}"));
    }
    if let Some(password) = &security.password {
        command
            .arg("--property-env")
            .arg(format!("sasl.password={PASSWORD_ENV}"))
            .env(PASSWORD_ENV, password);
    }
    tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// Creates topics (one partition each) through the TLS address.
async fn create_topics(broker: &TlsBroker, security: &Security, names: &[&str]) {
    let admin: AdminClient<DefaultClientContext> =
        broker.client(&security.client_properties()).create().unwrap();
    let topics: Vec<NewTopic<'_>> =
        names.iter().map(|n| NewTopic::new(n, 1, TopicReplication::Fixed(1))).collect();
    for result in admin.create_topics(&topics, &AdminOptions::new()).await.unwrap() {
        result.unwrap_or_else(|(topic, e)| panic!("create {topic}: {e}\n{}", broker.logs()));
    }
}

/// One `keyhole run` as operators deploy it (docs/deploy.md): the registry in Kafka, signed;
/// receipts on a topic; the admin API; every Kafka client on `broker`'s TLS address with
/// `security`.
struct Replica {
    dir: PathBuf,
    url: String,
    monitoring_url: String,
    receipts_topic: String,
    group: String,
    child: common::Keyhole,
}

impl Replica {
    fn start(broker: &TlsBroker, security: &Security, owner_base: &str, receipts_topic: &str) -> Replica {
        let dir = std::env::temp_dir().join(unique("keyhole-tls"));
        std::fs::create_dir_all(&dir).unwrap();
        let group = unique("keyhole");
        let (port, monitoring_port) = (free_port(), free_port());
        let identity = format!(r#"{{ bearer_token = {{ value = "{}" }} }}"#, owner::TOKEN);
        let mut config = TestConfig::kafka_and_owner(&group, owner_base, &identity);
        config.set("kafka.bootstrap_servers", broker.bootstrap.as_str());
        for (name, value) in &security.properties {
            config.kafka_property(name, value);
        }
        if let Some(password) = &security.password {
            let file = dir.join("kafka-password");
            std::fs::write(&file, format!("{password}\n")).unwrap();
            config.merge(&format!(
                "[kafka.secret_properties]\n\"sasl.password\" = {{ file = \"{}\" }}\n",
                file.display()
            ));
        }
        config.merge(&format!(
            r#"
            [audit]
            path = "{dir}/audit.jsonl"

            [receipts]
            sink = "kafka"
            topic = "{receipts_topic}"
            "#,
            dir = dir.display(),
        ));
        config.merge(&admin_with_kafka_registry(
            &dir,
            port,
            monitoring_port,
            &format!("{group}.registry"),
            &format!("{group}.registry-blobs"),
        ));
        let text = config.text();
        assert!(
            !text.contains(&broker.plaintext),
            "keyhole's configuration names only the TLS address, never tansu's own:\n{text}"
        );
        let path = dir.join("keyhole.toml");
        std::fs::write(&path, text).unwrap();
        let child = common::run_keyhole(&path);
        Replica {
            dir,
            url: format!("http://127.0.0.1:{port}"),
            monitoring_url: format!("http://127.0.0.1:{monitoring_port}"),
            receipts_topic: receipts_topic.to_string(),
            group,
            child,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("keyhole.log")).unwrap_or_default()
    }

    /// Waits until `/readyz` answers 200 (the registry replayed, the broker answering).
    async fn until_ready(&mut self, broker: &TlsBroker) {
        let http = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Ok(answer) = http.get(format!("{}/readyz", self.monitoring_url)).send().await
                && answer.status().is_success()
            {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("keyhole exited with {status}:\n{}\n{}", self.log(), broker.logs());
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "keyhole not ready within 60 s:\n{}\n{}",
                self.log(),
                broker.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for keyhole to exit, which it must within `within`; its status.
    async fn until_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(started.elapsed() < within, "keyhole still runs after {within:?}:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn ok(&self, status: u16, method: &str, path: &str, token: Option<&str>, body: Body) -> Value {
        let answer = call(&reqwest::Client::new(), &self.url, method, path, token, body).await;
        assert_eq!(answer.status, status, "{method} {path}: {answer:#?}\n{}", self.log());
        answer.body
    }

    /// SIGTERM: keyhole drains, commits and exits 0.
    async fn stop(mut self) {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        let status = self.until_exit(Duration::from_secs(30)).await;
        assert!(status.success(), "keyhole exited with {status}:\n{}", self.log());
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// The whole path over `security`: keyhole started on `broker`'s TLS address, a tenant and its
/// handler created, echo uploaded and activated through the admin API, a request published with
/// `keyhole request` and its reply read back, and the access receipt read back with
/// `keyhole receipts report`: every Kafka client keyhole has, on TLS only.
async fn round_trip(broker: &TlsBroker, security: &Security) {
    let owner = Owner::start().await;
    owner.set(
        "customers/42",
        Answer::Release("application/json", br#"{"name":"Ada","over_tls":true}"#.to_vec()),
    );
    let (references, replies, receipts) = (unique("refs"), unique("replies"), unique("receipts"));
    let mut keyhole = Replica::start(broker, security, &owner.base_url(), &receipts);
    let dead_letters = format!("{}.acme.echo.dlq", keyhole.group);
    create_topics(broker, security, &[&references, &replies, &receipts, &dead_letters]).await;
    // The registry's topics were created by keyhole itself (its admin client), and its log read
    // back, before it is ready.
    keyhole.until_ready(broker).await;

    let grant = json!({
        "topics": [references], "data_sources": ["owner"], "purposes": ["testing"],
        "reply_topics": [replies], "limits": {},
    });
    keyhole.ok(201, "PUT", "/v1/tenants/acme", Some(OPERATOR), Body::Json(grant)).await;
    let issued = keyhole.ok(201, "POST", "/v1/tenants/acme/tokens", Some(OPERATOR), Body::None).await;
    let token = issued["token"].as_str().unwrap().to_string();
    let spec = json!({ "topics": [references], "data_source": "owner", "purpose": "testing", "reply_topic": replies });
    keyhole.ok(201, "PUT", HANDLER, Some(&token), Body::Json(spec)).await;
    // The component goes through the blob topic and comes back from it before it runs.
    let uploaded = keyhole
        .ok(201, "POST", &format!("{HANDLER}/versions"), Some(&token), Body::Bytes(common::guest("echo")))
        .await;
    let version = uploaded["version"].as_str().unwrap().to_string();
    let activate = format!("{HANDLER}/versions/{version}/activate");
    let activated = keyhole.ok(200, "POST", &activate, Some(&token), Body::None).await;
    assert_eq!(activated["active"], version.as_str());
    assert_eq!(activated["state"], "running", "{activated:#}\n{}", keyhole.log());

    let request = keyhole_command(
        security,
        [
            "request",
            "--bootstrap-servers",
            &broker.bootstrap,
            "--topic",
            &references,
            "--dataref",
            "customers/42",
            "--id",
            "tls-1",
            "--reply-topic",
            &replies,
            "--timeout",
            "60s",
            "--json",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert!(request.status.success(), "{}\n{}\n{}", text(&request), keyhole.log(), broker.logs());
    let reply: Value = serde_json::from_slice(&request.stdout).unwrap();
    assert_eq!(reply["topic"], replies.as_str());
    assert_eq!(reply["attributes"]["causationid"], "tls-1");
    let echoed: Value = serde_json::from_str(reply["data"].as_str().unwrap()).unwrap();
    assert_eq!(
        echoed["data"], r#"{"name":"Ada","over_tls":true}"#,
        "the handler got what the owner released"
    );

    // The access receipt, on its topic, read back and verified from the command line.
    let report = keyhole_command(
        security,
        [
            "receipts",
            "report",
            "--topic",
            &keyhole.receipts_topic,
            "--bootstrap-servers",
            &broker.bootstrap,
            "--dataref",
            "customers/42",
            "--timeout",
            "60s",
            "--json",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert_eq!(report.status.code(), Some(0), "{}", text(&report));
    let report: Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(report["verified"], true, "{report:#}");
    let receipts = report["receipts"].as_array().unwrap();
    assert!(
        receipts
            .iter()
            .any(|r| r["receipt"]["event_id"] == "tls-1" && r["receipt"]["handler_version"] == version),
        "no receipt of tls-1: {report:#}"
    );
    keyhole.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyhole_serves_an_uploaded_handler_with_every_kafka_client_over_tls_only() {
    let pki = Pki::make();
    let broker = TlsBroker::start(&pki).await;
    let security = Security::tls(&pki.ca);
    // Through TLS, the broker advertises only its TLS address: no client is sent around it.
    let metadata = {
        let client: BaseConsumer = broker.client(&security.client_properties()).create().unwrap();
        tokio::task::spawn_blocking(move || client.fetch_metadata(None, Duration::from_secs(20)))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("no metadata over TLS: {e}\n{}", broker.logs()))
    };
    let advertised: Vec<String> =
        metadata.brokers().iter().map(|b| format!("{}:{}", b.host(), b.port())).collect();
    assert_eq!(advertised, std::slice::from_ref(&broker.bootstrap));
    // A client that does not speak TLS gets nothing from that address.
    let plaintext: BaseConsumer = broker.client(&[]).create().unwrap();
    let refused = tokio::task::spawn_blocking(move || plaintext.fetch_metadata(None, Duration::from_secs(3)))
        .await
        .unwrap();
    assert!(refused.is_err(), "a plaintext client got metadata from the TLS address");

    round_trip(&broker, &Security::tls(&pki.ca)).await;
}

/// Starts keyhole with `security` and asserts that it stops, not ready, within 60 s, with
/// `reason` (librdkafka's) in its log.
async fn refused(broker: &TlsBroker, security: &Security, reason: &str) {
    let owner = Owner::start().await;
    let mut keyhole = Replica::start(broker, security, &owner.base_url(), &unique("receipts"));
    let http = reqwest::Client::new();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = keyhole.child.try_wait().unwrap() {
            break status;
        }
        if let Ok(answer) = http.get(format!("{}/readyz", keyhole.monitoring_url)).send().await {
            assert_ne!(
                answer.status().as_u16(),
                200,
                "ready without reaching the broker:\n{}",
                keyhole.log()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "keyhole neither ready nor stopped:\n{}",
            keyhole.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let log = keyhole.log();
    assert!(!status.success(), "keyhole exited 0:\n{log}");
    assert!(log.contains(reason), "the log does not say {reason:?}:\n{log}");
    assert!(log.contains("the Kafka cluster did not answer"), "{log}");
    std::fs::remove_dir_all(&keyhole.dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_certificate_from_another_ca_stops_keyhole_with_the_reason() {
    let pki = Pki::make();
    let broker = TlsBroker::start(&pki).await;
    refused(&broker, &Security::tls(&pki.other_ca), "certificate verify failed").await;

    // The command line says it too, and exits rather than wait.
    let request = keyhole_command(
        &Security::tls(&pki.other_ca),
        ["request", "--bootstrap-servers", &broker.bootstrap, "--topic", "refs", "--dataref", "customers/1"]
            .into_iter()
            .chain(["--reply-topic", "replies", "--timeout", "5s"])
            .map(String::from)
            .collect(),
    )
    .await;
    assert_eq!(request.status.code(), Some(2), "{}", text(&request));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyhole_serves_an_uploaded_handler_over_sasl_ssl_with_scram_sha_512() {
    let pki = Pki::make();
    let user = ScramUser { name: "keyhole", password: "scram-password-for-the-tests" };
    let broker = TlsBroker::start_with(&pki, Some(&user)).await;
    // The broker asks for SASL: a client with TLS alone gets nothing.
    let tls_only: rdkafka::consumer::BaseConsumer =
        broker.client(&Security::tls(&pki.ca).client_properties()).create().unwrap();
    let refused_tls_only =
        tokio::task::spawn_blocking(move || tls_only.fetch_metadata(None, Duration::from_secs(5)))
            .await
            .unwrap();
    assert!(refused_tls_only.is_err(), "the broker answered a client that did not authenticate");

    round_trip(&broker, &Security::sasl_ssl(&pki.ca, &user)).await;

    let wrong = ScramUser { name: "keyhole", password: "not-the-password" };
    refused(&broker, &Security::sasl_ssl(&pki.ca, &wrong), "SASL SCRAM authentication failed").await;
}
