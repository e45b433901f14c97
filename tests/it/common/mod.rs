//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod admin;
pub mod broker;
pub mod cluster;
pub mod collector;
pub mod noida;
pub mod owner;
pub mod running;
pub mod served;

use keyhole::sandbox::{Event, Extension, Handler, HandlerIdentity, Limits, Sandbox, SandboxConfig};
use std::path::PathBuf;
use std::sync::LazyLock;

/// The repository's root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A guest component built by `scripts/build-guests.sh`, by its dist name (`echo`,
/// `hostile-panic`, ...).
pub fn guest_path(name: &str) -> PathBuf {
    repo_root().join("guest-examples/dist").join(format!("{name}.wasm"))
}

/// The bytes of a guest component.
pub fn guest(name: &str) -> Vec<u8> {
    let path = guest_path(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!("cannot read {} ({e}): run scripts/build-guests.sh (scripts/test.sh does)", path.display())
    })
}

/// One sandbox per test binary, as in production: every handler shares it.
pub fn sandbox() -> &'static Sandbox {
    static SANDBOX: LazyLock<Sandbox> =
        LazyLock::new(|| Sandbox::new(&SandboxConfig::default()).expect("sandbox"));
    &SANDBOX
}

/// Loads a guest into the shared sandbox under the given limits.
pub fn load(name: &str, limits: Limits) -> Handler {
    let identity = HandlerIdentity { tenant: "acme".into(), handler: name.into() };
    sandbox().load(identity, &guest(name), limits).unwrap_or_else(|e| panic!("load {name}: {e}"))
}

/// An event as the pipeline would build it, carrying `data`.
pub fn event(id: &str, data: &[u8]) -> Event {
    Event {
        id: id.into(),
        source: "https://crm.example.com/customers".into(),
        type_: "com.example.customer.registered".into(),
        subject: Some("customer/42".into()),
        time: Some("2026-11-23T10:00:00Z".into()),
        datacontenttype: Some("application/json".into()),
        extensions: vec![Extension { name: "correlationid".into(), value: "req-7".into() }],
        data: data.to_vec(),
    }
}

/// Proves the host still serves a normal event: echo answers with the event's data.
pub async fn assert_serves_normal_event() {
    let echo = load("echo", Limits::default());
    let reply = echo
        .handle(&event("after", br#"{"ok":true}"#))
        .await
        .expect("a normal event right after a violation")
        .expect("echo replies");
    let body: serde_json::Value = serde_json::from_slice(&reply.data).expect("echo replies JSON");
    assert_eq!(body["id"], "after");
    assert_eq!(body["data"], r#"{"ok":true}"#);
}

/// A keyhole configuration with one `echo` handler (tenant `acme`) consuming `topic` in consumer
/// group prefix `group`, resolving against the data owner at `owner_base` with `identity` (a TOML
/// inline table). `handler_extra` adds keys to the handler.
pub fn echo_config(
    group: &str,
    topic: &str,
    owner_base: &str,
    identity: &str,
    handler_extra: &str,
) -> String {
    format!(
        r#"
        {common}
        [[handler]]
        name = "echo"
        tenant = "acme"
        component = "{echo}"
        topics = ["{topic}"]
        data_source = "owner"
        purpose = "integration-test"
        {handler_extra}

        [handler.retry]
        initial_backoff_ms = 50
        max_backoff_ms = 500
        "#,
        common = kafka_and_owner_toml(group, owner_base, identity),
        echo = guest_path("echo").display(),
    )
}

/// The `[kafka]` (the test broker, consumer groups under `group`), `[shutdown]` and
/// `[[data_source]] owner` sections every test configuration starts with.
pub fn kafka_and_owner_toml(group: &str, owner_base: &str, identity: &str) -> String {
    format!(
        r#"
        [kafka]
        bootstrap_servers = "{bootstrap}"
        group_id = "{group}"
        # tansu holds every fetch for fetch.wait.max.ms even when data is ready; a member killed
        # with SIGKILL holds its partitions until its session times out.
        properties = {{ "fetch.wait.max.ms" = "10", "auto.commit.interval.ms" = "100", "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }}

        [shutdown]
        drain_timeout_ms = 10000

        [[data_source]]
        name = "owner"
        base_url = "{owner_base}"
        identity = {identity}
        timeout_ms = 2000

        "#,
        bootstrap = broker::bootstrap(),
    )
}

/// A running keyhole, killed if a failing assertion leaves it behind: the suite leaves nothing
/// running.
pub struct Keyhole(std::process::Child);

impl std::ops::Deref for Keyhole {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Keyhole {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Keyhole {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.0.kill().ok();
            self.0.wait().ok();
        }
    }
}

/// `keyhole run --config <config>` as a child process, the owner's token in its environment,
/// logging to `keyhole.log` beside the configuration.
pub fn run_keyhole(config: &std::path::Path) -> Keyhole {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(config.with_file_name("keyhole.log"))
        .unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_keyhole"))
        .args(["run", "--config"])
        .arg(config)
        .env("KEYHOLE_TEST_OWNER_TOKEN", owner::TOKEN)
        .env("RUST_LOG", "warn,keyhole=info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .map(Keyhole)
        .unwrap()
}
