//! noida-db (PyPI, installed by scripts/test.sh): a Kafka-protocol broker with transactions,
//! in a process of the test's own on a free port. It hides aborted and open transactions from
//! `read_committed` readers, stores `TxnOffsetCommit` offsets only on commit and fences an old
//! producer; tansu 0.6.0 has no EndTxn.

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A running noida-db. Dropping it stops it and removes its data.
pub struct Noida {
    child: std::process::Child,
    pub bootstrap: String,
    data: PathBuf,
}

impl Noida {
    /// Starts it on a free loopback port and waits until it accepts connections.
    pub async fn start() -> Noida {
        use std::os::unix::process::CommandExt as _;
        let binary = super::prerequisite("KEYHOLE_TEST_NOIDA");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let data = std::env::temp_dir().join(super::broker::unique("noida"));
        let child = super::command_dying_with_the_test(binary)
            .args(["start", "--only", "kafka", "--host", "127.0.0.1", "--kafka-port", &port.to_string()])
            .arg("--data-dir")
            .arg(&data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            // PyPI's `noida-db` script starts the broker as a child of its own, which outlives a
            // signal to the script alone (scripts/lib.sh names the broker itself, but another
            // KEYHOLE_TEST_NOIDA may be the script): a process group of their own, stopped as one.
            .process_group(0)
            .spawn()
            .unwrap();
        // Owned before the wait, so that a broker that never answers is still stopped.
        let noida = Noida { child, bootstrap: format!("127.0.0.1:{port}"), data };
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(&noida.bootstrap).await.is_err() {
            assert!(Instant::now() < deadline, "noida-db did not start on {}", noida.bootstrap);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        noida
    }

    /// Creates topics of the given names and partition counts.
    pub async fn create_topics(&self, topics: &[(&str, i32)]) {
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", &self.bootstrap).create().unwrap();
        let new: Vec<NewTopic<'_>> =
            topics.iter().map(|(name, n)| NewTopic::new(name, *n, TopicReplication::Fixed(1))).collect();
        for result in admin.create_topics(&new, &AdminOptions::new()).await.unwrap() {
            result.unwrap_or_else(|(topic, e)| panic!("create {topic}: {e}"));
        }
    }
}

impl Drop for Noida {
    fn drop(&mut self) {
        // The whole group: the broker and anything it started.
        if let Some(pid) = i32::try_from(self.child.id()).ok().and_then(rustix::process::Pid::from_raw) {
            rustix::process::kill_process_group(pid, rustix::process::Signal::KILL).ok();
        }
        self.child.wait().ok();
        std::fs::remove_dir_all(&self.data).ok();
    }
}
