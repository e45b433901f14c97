//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod admin;
pub mod broker;
pub mod cluster;
pub mod collector;
pub mod config;
pub mod noida;
pub mod owner;
pub mod running;
pub mod served;
pub mod tls;

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
    if !guest_path("echo").exists() {
        stop_for_prerequisites();
    }
    let path = guest_path(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!("cannot read {} ({e}): run scripts/build-guests.sh (scripts/test.sh does)", path.display())
    })
}

/// What the integration tests need from outside this crate, all provided by scripts/test.sh:
/// environment variables and what each names.
const PREREQUISITES: [(&str, &str); 5] = [
    ("KEYHOLE_TEST_BROKER", "host:port of a Kafka-protocol broker (tansu)"),
    ("KEYHOLE_TEST_TANSU", "the tansu binary, for tests that stop a broker of their own"),
    ("KEYHOLE_TEST_NOIDA", "the noida-db binary, for the tests of transactions"),
    ("KEYHOLE_TEST_PYTHON_KAFKA", "a python with confluent-kafka, for the examples of docs/data-owners.md"),
    ("KEYHOLE_TEST_PROMETHEUS", "the prometheus binary, for the live dashboard and alerts test"),
];

/// The value of `name`, one of [`PREREQUISITES`]. Without it the test binary stops at once with
/// one message saying what to run, rather than every test that needs it panicking with a trace.
pub fn prerequisite(name: &str) -> String {
    debug_assert!(PREREQUISITES.iter().any(|(known, _)| *known == name), "{name} is not listed");
    std::env::var(name).unwrap_or_else(|_| stop_for_prerequisites())
}

/// Prints what is missing of the suite's prerequisites and ends the test binary with status 2.
/// The first test to get here prints; any other blocks on the lock until the process is gone.
fn stop_for_prerequisites() -> ! {
    use std::io::Write as _;
    static STOPPING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _only_one = STOPPING.lock();
    let mut missing: Vec<String> = PREREQUISITES
        .iter()
        .filter(|(name, _)| std::env::var_os(name).is_none())
        .map(|(name, what)| format!("  {name:<27}{what}"))
        .collect();
    if !guest_path("echo").exists() {
        missing
            .push(format!("  {:<27}the guest components (scripts/build-guests.sh)", "guest-examples/dist/"));
    }
    let message = [
        "",
        "keyhole's integration tests need a Kafka-protocol broker and what scripts/test.sh provides;",
        "missing here:",
        &missing.join("\n"),
        "",
        "Run them with scripts/test.sh: it installs tansu, noida-db, confluent-kafka and prometheus,",
        "builds the guest components, starts a broker and stops it after. With arguments it runs only",
        "the cargo tests they select:",
        "    scripts/test.sh --test it -- crashes::",
        "Or provide the above yourself (scripts/lib.sh: ensure_noida, ensure_python_kafka, ensure_promtool,",
        "start_tansu).",
        "The unit tests need none of it: cargo test --lib",
        "",
    ]
    .join("\n");
    // Straight to the process's stderr: the harness captures what a test prints with eprintln!
    // and would drop it when the process exits.
    std::io::stderr().write_all(message.as_bytes()).ok();
    std::process::exit(2)
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
    let mut command = command_dying_with_the_test(env!("CARGO_BIN_EXE_keyhole"));
    command
        .args(["run", "--config"])
        .arg(config)
        .env("KEYHOLE_TEST_OWNER_TOKEN", owner::TOKEN)
        .env("RUST_LOG", "warn,keyhole=info")
        .stdout(std::process::Stdio::null())
        .stderr(log);
    command.spawn().map(Keyhole).unwrap()
}

/// A command that runs `program` under `setpriv --pdeathsig KILL`: the kernel kills it when the
/// thread that started it ends. A test binary that is killed (a timeout, Ctrl-C, SIGKILL) runs no
/// `Drop`, and a child in a process group of its own does not even get the terminal's Ctrl-C; so
/// that the suite leaves nothing running, the children that outlive a test step (brokers,
/// `keyhole run`) start this way. Start them from the test's thread or a runtime worker, which
/// live as long as the test, never from `spawn_blocking`, whose threads end when idle.
/// (`setpriv` rather than `prctl` in a `pre_exec`: no unsafe code in the tests.)
pub fn command_dying_with_the_test(program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    let mut command = std::process::Command::new("setpriv");
    command.args(["--pdeathsig", "KILL", "--"]).arg(program);
    command
}
