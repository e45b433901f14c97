//! Several `keyhole run` processes sharing one configuration and one registry in Kafka, as
//! operators run replicas: each with its own admin port, state directory and audit file.

use super::admin::{Answer, Body, OPERATOR};

/// The key every test replica signs and verifies registry records with.
pub const SIGNING_KEY: &str = "registry-signing-key-for-the-tests-0123456789";
use super::config::TestConfig;
use super::{broker, owner};
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// One replica: its directory (configuration, state, audit file, log), admin and monitoring
/// URLs and process.
pub struct Replica {
    pub dir: PathBuf,
    pub url: String,
    pub monitoring_url: String,
    child: Option<super::Keyhole>,
}

/// Replicas sharing a consumer group prefix and the registry's topics.
pub struct Cluster {
    /// The Kafka cluster (the shared test broker, or a test's own).
    bootstrap: String,
    pub group: String,
    pub registry_topic: String,
    pub blob_topic: String,
    owner_base: String,
    pub replicas: Vec<Replica>,
    http: reqwest::Client,
}

/// What one replica's audit file says it handled: `(event id, handler version)` of each event
/// delivered to the handler.
pub type Delivered = Vec<(String, String)>;

/// `[admin]` on these loopback ports with the tests' operator token and its state in
/// `dir/state`, and `[registry]` kept in Kafka on these topics (created if missing), signed
/// with [`SIGNING_KEY`]: what a replica of a test cluster is configured with.
pub fn admin_with_kafka_registry(
    dir: &std::path::Path,
    port: u16,
    monitoring_port: u16,
    registry_topic: &str,
    blob_topic: &str,
) -> String {
    format!(
        r#"
        [admin]
        listen = "127.0.0.1:{port}"
        monitoring_listen = "127.0.0.1:{monitoring_port}"
        operator_token = {{ value = "{OPERATOR}" }}
        state_dir = "{dir}/state"

        [registry]
        store = "kafka"
        topic = "{registry_topic}"
        blob_topic = "{blob_topic}"
        create_topics = true
        replication_factor = 1
        signing_keys = [{{ id = "test", secret = {{ value = "{SIGNING_KEY}" }} }}]
        "#,
        dir = dir.display(),
    )
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Cluster {
    /// `n` replicas on fresh state directories, ready (their admin API answers).
    pub async fn start(owner_base: &str, n: usize) -> Cluster {
        Cluster::start_on(&broker::bootstrap(), owner_base, n).await
    }

    /// [`Cluster::start`] on the Kafka cluster at `bootstrap`.
    pub async fn start_on(bootstrap: &str, owner_base: &str, n: usize) -> Cluster {
        let mut cluster = Cluster {
            bootstrap: bootstrap.to_string(),
            group: broker::unique("keyhole"),
            registry_topic: broker::unique("registry"),
            blob_topic: broker::unique("registry-blobs"),
            owner_base: owner_base.to_string(),
            replicas: Vec::new(),
            http: reqwest::Client::new(),
        };
        for _ in 0..n {
            cluster.add().await;
        }
        cluster
    }

    /// The configuration every replica shares, but for its ports and directory.
    pub fn config(&self, dir: &std::path::Path, port: u16, monitoring_port: u16) -> String {
        let name = dir.file_name().unwrap().to_string_lossy();
        let identity = format!(r#"{{ bearer_token = {{ value = "{}" }} }}"#, owner::TOKEN);
        let mut config = TestConfig::kafka_and_owner(&self.group, &self.owner_base, &identity);
        config
            .set("kafka.bootstrap_servers", self.bootstrap.as_str())
            // Replicas are told apart by their instance ids (HOSTNAME in production).
            .set("kafka.instance_id", name.as_ref())
            .merge(&format!(
                r#"
                [audit]
                path = "{dir}/audit.jsonl"

                [receipts]
                path = "{dir}/receipts.jsonl"
                "#,
                dir = dir.display(),
            ))
            .merge(&admin_with_kafka_registry(
                dir,
                port,
                monitoring_port,
                &self.registry_topic,
                &self.blob_topic,
            ))
            .set("registry.write_timeout_ms", 3000)
            .set("registry.max_staleness_ms", 3000);
        config.text()
    }

    /// Starts one more replica, from an empty disk; its index.
    pub async fn add(&mut self) -> usize {
        let dir = std::env::temp_dir().join(broker::unique("keyhole-replica"));
        std::fs::create_dir_all(&dir).unwrap();
        self.replicas.push(Replica { dir, url: String::new(), monitoring_url: String::new(), child: None });
        let index = self.replicas.len() - 1;
        self.restart(index).await;
        index
    }

    /// Starts replica `i` again on its directory (new ports), and waits until it answers.
    pub async fn restart(&mut self, i: usize) {
        let port = free_port();
        let monitoring_port = std::iter::repeat_with(free_port).find(|p| *p != port).unwrap();
        let dir = self.replicas[i].dir.clone();
        let config = dir.join("keyhole.toml");
        std::fs::write(&config, self.config(&dir, port, monitoring_port)).unwrap();
        let child = super::run_keyhole(&config);
        let replica = &mut self.replicas[i];
        replica.url = format!("http://127.0.0.1:{port}");
        replica.monitoring_url = format!("http://127.0.0.1:{monitoring_port}");
        replica.child = Some(child);
        self.wait_until_up(i).await;
    }

    async fn wait_until_up(&mut self, i: usize) {
        let started = Instant::now();
        loop {
            let url = format!("{}/healthz", self.replicas[i].monitoring_url);
            if let Ok(response) = self.http.get(&url).send().await
                && response.status().is_success()
            {
                return;
            }
            let child = self.replicas[i].child.as_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                panic!("replica {i} exited with {status}:\n{}", self.log(i));
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "replica {i} did not start:\n{}",
                self.log(i)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Replica `i`'s log.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.replicas[i].dir.join("keyhole.log")).unwrap_or_default()
    }

    /// `kill -9` replica `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.replicas[i].child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Stops replica `i` with SIGTERM (it drains, commits and leaves the group); asserts it
    /// exits 0.
    pub fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.replicas[i].child.take() {
            let pid = child.id().to_string();
            std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
            let status = child.wait().unwrap();
            assert!(status.success(), "replica {i} exited with {status}:\n{}", self.log(i));
        }
    }

    /// Sends SIGTERM to replica `i` and waits at most `within` for it to exit; its exit status.
    pub async fn terminate(&mut self, i: usize, within: Duration) -> std::process::ExitStatus {
        let mut child = self.replicas[i].child.take().unwrap();
        std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if started.elapsed() > within {
                child.kill().ok();
                panic!("replica {i} still ran {within:?} after SIGTERM:\n{}", self.log(i));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// GETs `path` on replica `i`'s monitoring listener (probes, metrics).
    pub async fn probe(&self, i: usize, path: &str) -> Answer {
        super::admin::call(&self.http, &self.replicas[i].monitoring_url, "GET", path, None, Body::None).await
    }

    /// Calls replica `i`'s admin API.
    pub async fn call(&self, i: usize, method: &str, path: &str, token: Option<&str>, body: Body) -> Answer {
        super::admin::call(&self.http, &self.replicas[i].url, method, path, token, body).await
    }

    /// A call to replica `i` that must answer `status`; its body.
    pub async fn ok(
        &self,
        i: usize,
        status: u16,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Body,
    ) -> Value {
        let answer = self.call(i, method, path, token, body).await;
        assert_eq!(answer.status, status, "replica {i}: {method} {path}: {answer:#?}");
        answer.body
    }

    /// Polls `path` on replica `i` until `done` holds for its answer; the answer.
    pub async fn eventually(
        &self,
        i: usize,
        path: &str,
        token: Option<&str>,
        within: Duration,
        done: impl Fn(&Answer) -> bool,
    ) -> Answer {
        let started = Instant::now();
        loop {
            let answer = self.call(i, "GET", path, token, Body::None).await;
            if done(&answer) {
                return answer;
            }
            assert!(
                started.elapsed() < within,
                "replica {i}: GET {path} is still {answer:#?}\n{}",
                self.log(i)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates tenant `tenant` through replica `i`, granted `topics`, the `owner` data source
    /// and the purpose `testing`; returns its token.
    pub async fn tenant(&self, i: usize, tenant: &str, topics: &[&str], limits: Value) -> String {
        let grant = serde_json::json!({
            "topics": topics, "data_sources": ["owner"], "purposes": ["testing"],
            "reply_topics": [], "limits": limits,
        });
        self.ok(i, 201, "PUT", &format!("/v1/tenants/{tenant}"), Some(OPERATOR), Body::Json(grant)).await;
        let issued = self
            .ok(i, 201, "POST", &format!("/v1/tenants/{tenant}/tokens"), Some(OPERATOR), Body::None)
            .await;
        issued["token"].as_str().unwrap().to_string()
    }

    /// What each replica's audit file says it delivered to a handler.
    pub fn delivered(&self) -> Vec<Delivered> {
        self.replicas
            .iter()
            .map(|replica| {
                let text = std::fs::read_to_string(replica.dir.join("audit.jsonl")).unwrap_or_default();
                text.lines()
                    .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                    .filter(|record| record["decision"] == "delivered")
                    .map(|record| {
                        (
                            record["event_id"].as_str().unwrap_or_default().to_string(),
                            record["handler_version"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.replicas.len() {
            self.kill(i);
        }
    }
}
