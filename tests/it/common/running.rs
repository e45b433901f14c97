//! keyhole's pipeline running in-process against the test broker, with its outcomes tapped.

use super::broker::{self, create_topic};
use super::config::TestConfig;
use keyhole::app::{self, RunError};
use keyhole::config::{ReceiptSink, Settings};
use keyhole::records::audit::{Decision, Outcome};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The admin API's and the monitoring endpoints' listeners, bound on free loopback ports.
pub struct Listeners {
    pub api: tokio::net::TcpListener,
    pub monitoring: tokio::net::TcpListener,
}

impl Listeners {
    pub async fn bind() -> Listeners {
        let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let monitoring = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Listeners { api, monitoring }
    }

    /// `http://` URLs of the API and of the monitoring endpoints.
    pub fn urls(&self) -> (String, String) {
        let url = |l: &tokio::net::TcpListener| format!("http://{}", l.local_addr().unwrap());
        (url(&self.api), url(&self.monitoring))
    }
}

/// keyhole running in-process, with its outcomes tapped.
pub struct Running {
    pub outcomes: mpsc::Receiver<Outcome>,
    stop: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<Result<(), RunError>>,
}

impl Running {
    pub fn start(settings: Settings) -> Running {
        Running::start_with(settings, None)
    }

    /// [`Running::start`] with the admin API and the monitoring endpoints served on `listeners`.
    pub fn start_with(mut settings: Settings, listeners: Option<Listeners>) -> Running {
        // Uploads are compiled by `keyhole compile-component`; this process is the test binary.
        settings.sandbox.compiler.get_or_insert_with(|| env!("CARGO_BIN_EXE_keyhole").into());
        let (tap, outcomes) = mpsc::channel(1024);
        let (stop, stopped) = oneshot::channel::<()>();
        let (admin_listener, monitoring_listener) = listeners.map(|l| (l.api, l.monitoring)).unzip();
        let extras = app::Extras { tap: Some(tap), admin_listener, monitoring_listener };
        let task = tokio::spawn(app::run_with(settings, extras, async {
            let _ = stopped.await;
        }));
        Running { outcomes, stop: Some(stop), task }
    }

    /// The next `n` outcomes; fails the test if they take longer than `within`.
    pub async fn take(&mut self, n: usize, within: Duration) -> Vec<Outcome> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        while got.len() < n {
            match tokio::time::timeout_at(deadline, self.outcomes.recv()).await {
                Ok(Some(outcome)) => got.push(outcome),
                Ok(None) => panic!("the pipeline stopped after {} of {n} outcomes", got.len()),
                Err(_) => panic!("only {} of {n} outcomes within {within:?}: {got:#?}", got.len()),
            }
        }
        got
    }

    /// Asserts that nothing is decided for `quiet`.
    pub async fn assert_quiet(&mut self, quiet: Duration) {
        if let Ok(Some(outcome)) = tokio::time::timeout(quiet, self.outcomes.recv()).await {
            panic!("expected no outcome, got {outcome:#?}");
        }
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.unwrap().unwrap();
    }
}

pub struct Setup {
    pub topic: String,
    pub group: String,
    pub settings: Settings,
    /// The access receipts file, of this test alone.
    pub receipts: PathBuf,
}

/// A configuration for one echo binding on a fresh topic, against `owner`.
pub async fn setup(owner_base: &str, partitions: i32, extra_handler_toml: &str) -> Setup {
    setup_handler("echo", owner_base, partitions, extra_handler_toml).await
}

/// [`setup`] with another guest than echo (by its dist name).
pub async fn setup_handler(
    guest: &str,
    owner_base: &str,
    partitions: i32,
    extra_handler_toml: &str,
) -> Setup {
    let topic = create_topic(partitions).await;
    let group = broker::unique("keyhole");
    let identity = format!(r#"{{ bearer_token = {{ value = "{}" }} }}"#, super::owner::TOKEN);
    let mut settings =
        TestConfig::echo(&group, &topic, owner_base, &identity, extra_handler_toml).guest(guest).settings();
    broker::create_named_topic(&settings.bindings[0].on_failure.dead_letter_topic, 1).await;
    // Not the default beside the (here imaginary) configuration file: the working directory.
    let receipts = std::env::temp_dir().join(format!("{}.receipts.jsonl", broker::unique("keyhole")));
    settings.receipts = ReceiptSink::File(receipts.clone());
    Setup { group: settings.bindings[0].group_id.clone(), topic, settings, receipts }
}

/// What the echo handler was given, from its reply.
pub fn echoed(outcome: &Outcome) -> serde_json::Value {
    match &outcome.decision {
        Decision::Delivered { reply: Some(reply), .. } => serde_json::from_slice(&reply.data).unwrap(),
        other => panic!("not delivered: {other:?} ({:?})", outcome.event_id),
    }
}

pub fn by_id(outcomes: &[Outcome]) -> HashMap<String, &Outcome> {
    outcomes.iter().map(|o| (o.event_id.clone().unwrap_or_default(), o)).collect()
}
