//! Reading and validating the configuration as a whole: every problem is collected with its key
//! path, secrets are resolved; the Kafka, audit, receipts, shutdown and admin sections are checked here,
//! data sources and handlers in [`super::bindings`].

use super::{
    AdminConfig, AdminSettings, AuditSink, AuditSinkKind, BindingSettings, Config, ConfigError,
    DEFAULT_RECEIPTS_PATH, KafkaRegistrySettings, KafkaSettings, Problem, ReceiptSink, ReceiptSinkKind,
    RegistryConfig, RegistryStore, RegistryStoreKind, Secret, Settings, SigningKey, SigningKeyConfig,
};
use crate::model::names::{OwnTopics, is_dotted_name, is_topic};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// librdkafka properties keyhole sets itself or that would break at-least-once delivery, with
/// the reason given to the operator.
const REFUSED_PROPERTIES: &[(&str, &str)] = &[
    (
        "enable.auto.offset.store",
        "keyhole stores an offset only once that event and every earlier one of its partition are \
         finished; automatic storing would commit events that were never handled",
    ),
    (
        "enable.auto.commit",
        "keyhole relies on librdkafka committing the offsets it stored; turning auto-commit off \
         would never commit them, and on would change nothing",
    ),
    ("group.id", "set kafka.group_id instead (each binding gets its own group under it)"),
    ("bootstrap.servers", "set kafka.bootstrap_servers instead"),
    ("enable.partition.eof", "keyhole consumes without end; partition EOF events are not handled"),
];

impl Config {
    /// Reads and validates a configuration file. Relative paths in it are relative to the file.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let config: Config = toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.validate(base).map_err(|problems| ConfigError::Invalid { path: path.to_path_buf(), problems })
    }

    /// Checks everything and resolves secrets; returns every problem found, not just the first.
    /// Relative component and certificate paths are resolved against `base`.
    pub fn validate(&self, base: &Path) -> Result<Settings, Vec<Problem>> {
        let mut problems = Problems::default();
        let kafka = self.validate_kafka(&mut problems);
        let sources = self.validate_data_sources(base, &mut problems);
        let bindings = self.validate_handlers(base, &mut problems);
        if self.shutdown.drain_timeout_ms == 0 {
            problems.add("shutdown.drain_timeout_ms", "must be greater than 0");
        }
        if self.shutdown.commit_timeout_ms == 0 {
            problems.add("shutdown.commit_timeout_ms", "must be greater than 0");
        }
        if self.sandbox.max_concurrent_instances == 0 {
            problems.add("sandbox.max_concurrent_instances", "must be greater than 0");
        }
        validate_memory_budgets(&self.sandbox, &mut problems);
        for (key, value) in [
            ("sandbox.compile_cpu_seconds", self.sandbox.compile_cpu_seconds),
            ("sandbox.compile_wall_seconds", self.sandbox.compile_wall_seconds),
            ("sandbox.compile_memory_bytes", self.sandbox.compile_memory_bytes),
            ("sandbox.max_concurrent_compiles", self.sandbox.max_concurrent_compiles.into()),
        ] {
            if value == 0 {
                problems.add(key, "must be at least 1");
            }
        }
        let registry = validate_registry(&self.registry, self.admin.is_some(), &mut problems);
        let admin =
            self.admin.as_ref().and_then(|admin| validate_admin(admin, base, registry, &mut problems));
        // An upload's client waits without a byte while its component compiles: the idle
        // timeout would cut it off before the compile's answer.
        if let Some(admin) = &self.admin
            && admin.idle_timeout_ms <= self.sandbox.compile_wall_seconds.saturating_mul(1000)
        {
            problems.add(
                "admin.idle_timeout_ms",
                format!(
                    "must be above sandbox.compile_wall_seconds ({} s): an upload waits that long for its answer",
                    self.sandbox.compile_wall_seconds
                ),
            );
        }
        let audit = self.validate_audit(base, &mut problems);
        let receipts = self.validate_receipts(base, audit.path(), &mut problems);
        let trace_export = super::telemetry::validate_telemetry(
            &self.telemetry,
            &kafka.instance_id,
            |name| std::env::var(name).ok(),
            &mut problems,
        );
        let own_topics = self.own_topics(&kafka, &bindings, &receipts, &audit, &mut problems);
        self.refuse_own_topics(&own_topics, &mut problems);
        problems.into_result(|| Settings {
            own_topics,
            trace_export,
            admin,
            kafka,
            sandbox: self.sandbox.clone(),
            audit,
            receipts,
            drain_timeout: Duration::from_millis(self.shutdown.drain_timeout_ms),
            commit_timeout: Duration::from_millis(self.shutdown.commit_timeout_ms),
            data_sources: sources.into_iter().flatten().collect(),
            bindings,
        })
    }

    /// keyhole's own topics under this configuration.
    fn own_topics(
        &self,
        kafka: &KafkaSettings,
        bindings: &[BindingSettings],
        receipts: &ReceiptSink,
        audit: &AuditSink,
        problems: &mut Problems,
    ) -> OwnTopics {
        let mut own = OwnTopics::new(&kafka.group_id);
        if self.registry.store == RegistryStoreKind::Kafka {
            own.add(&self.registry.topic, "the registry log");
            own.add(&self.registry.blob_topic, "the registry's blob topic");
        }
        if let ReceiptSink::Kafka { topic } = receipts {
            own.add(topic, "the receipts topic");
        }
        for binding in bindings {
            own.add(&binding.on_failure.dead_letter_topic, "a dead-letter topic");
        }
        if let AuditSink::Kafka { topic } = audit {
            // Receipts (one per request) and audit records (one per event) are told apart by
            // their topic; a dead-letter topic holds events, not records.
            match own.owner(topic) {
                Some(what) => problems.add(
                    "audit.topic",
                    format!("{topic:?} is {what}: the audit trail needs a topic of its own"),
                ),
                None => own.add(topic, "the audit topic"),
            }
        }
        own
    }

    /// A configured handler may not consume or reply to keyhole's own topics either.
    fn refuse_own_topics(&self, own: &OwnTopics, problems: &mut Problems) {
        for (i, h) in self.handlers.iter().enumerate() {
            let topics = h.topics.iter().enumerate().map(|(t, topic)| (format!("topics[{t}]"), topic));
            let replies = h.reply_topic.iter().map(|topic| ("reply_topic".to_string(), topic));
            let allowed = h
                .reply_topics_allowed
                .iter()
                .enumerate()
                .map(|(t, topic)| (format!("reply_topics_allowed[{t}]"), topic));
            for (key, topic) in topics.chain(replies).chain(allowed) {
                // Its own dead-letter topic among its inputs is refused with its own reason.
                let own_dead_letters =
                    key.starts_with("topics[") && h.on_failure.dead_letter_topic.as_ref() == Some(topic);
                if let Some(what) = own.owner(topic).filter(|_| !own_dead_letters) {
                    problems.add(
                        format!("handler[{i}].{key}"),
                        format!("{topic:?} is {what}, one of keyhole's own topics: a handler may not consume or reply to it"),
                    );
                }
            }
        }
    }

    fn validate_kafka(&self, problems: &mut Problems) -> KafkaSettings {
        let k = &self.kafka;
        if k.bootstrap_servers.trim().is_empty() {
            problems.add("kafka.bootstrap_servers", "must list at least one host:port");
        }
        if k.group_id.trim().is_empty() {
            problems.add("kafka.group_id", "must not be empty");
        }
        let mut properties = BTreeMap::new();
        let names = k
            .properties
            .keys()
            .map(|n| ("properties", n))
            .chain(k.secret_properties.keys().map(|n| ("secret_properties", n)));
        for (table, name) in names {
            if let Some((_, reason)) = REFUSED_PROPERTIES.iter().find(|(refused, _)| refused == name) {
                problems.add(format!("kafka.{table}.\"{name}\""), format!("not allowed: {reason}"));
            }
        }
        for (name, value) in &k.properties {
            properties.insert(name.clone(), value.clone());
        }
        for (name, secret) in &k.secret_properties {
            if k.properties.contains_key(name) {
                problems.add(
                    format!("kafka.secret_properties.\"{name}\""),
                    "also set in kafka.properties; set it once",
                );
            }
            match secret.resolve() {
                Ok(value) => {
                    properties.insert(name.clone(), value);
                }
                Err(e) => problems.add(format!("kafka.secret_properties.\"{name}\""), e),
            }
        }
        let instance_id = k.instance_id.clone().unwrap_or_else(host_name);
        if !is_dotted_name(&instance_id.to_ascii_lowercase()) {
            problems.add(
                "kafka.instance_id",
                format!("{instance_id:?} must be 1-64 characters of letters, digits, '-', '_' or '.'"),
            );
        }
        KafkaSettings {
            bootstrap_servers: k.bootstrap_servers.clone(),
            group_id: k.group_id.clone(),
            instance_id,
            properties,
            secret_keys: k.secret_properties.keys().cloned().collect(),
        }
    }

    fn validate_audit(&self, base: &Path, problems: &mut Problems) -> AuditSink {
        let a = &self.audit;
        match a.sink {
            AuditSinkKind::File => {
                if a.topic.is_some() {
                    problems.add("audit.topic", "is only used with sink = \"kafka\"");
                }
                a.path.as_ref().map_or(AuditSink::LogOnly, |path| AuditSink::File(base.join(path)))
            }
            AuditSinkKind::Kafka => {
                if a.path.is_some() {
                    problems.add("audit.path", "is only used with sink = \"file\"");
                }
                let topic = a.topic.clone().unwrap_or_default();
                if a.topic.is_none() {
                    problems.add("audit.topic", "is required with sink = \"kafka\"");
                } else if !is_topic(&topic) {
                    problems.add("audit.topic", format!("{topic:?} is not a valid topic name"));
                } else if self.handlers.iter().any(|h| h.topics.contains(&topic)) {
                    problems.add(
                        "audit.topic",
                        format!("{topic:?} is consumed by a handler: audit records are not reference events"),
                    );
                }
                AuditSink::Kafka { topic }
            }
        }
    }

    fn validate_receipts(
        &self,
        base: &Path,
        audit_path: Option<&Path>,
        problems: &mut Problems,
    ) -> ReceiptSink {
        let r = &self.receipts;
        match r.sink {
            ReceiptSinkKind::File => {
                if r.topic.is_some() {
                    problems.add("receipts.topic", "is only used with sink = \"kafka\"");
                }
                let path = base.join(r.path.as_deref().unwrap_or(Path::new(DEFAULT_RECEIPTS_PATH)));
                if audit_path == Some(path.as_path()) {
                    problems.add(
                        "receipts.path",
                        "is also audit.path: receipts (one per request) and audit records (one per event) need files of their own",
                    );
                }
                ReceiptSink::File(path)
            }
            ReceiptSinkKind::Kafka => {
                if r.path.is_some() {
                    problems.add("receipts.path", "is only used with sink = \"file\"");
                }
                let topic = r.topic.clone().unwrap_or_default();
                if r.topic.is_none() {
                    problems.add("receipts.topic", "is required with sink = \"kafka\"");
                } else if !is_topic(&topic) {
                    problems.add("receipts.topic", format!("{topic:?} is not a valid topic name"));
                } else if self.handlers.iter().any(|h| h.topics.contains(&topic)) {
                    problems.add(
                        "receipts.topic",
                        format!("{topic:?} is consumed by a handler: receipts are not reference events"),
                    );
                }
                ReceiptSink::Kafka { topic }
            }
        }
    }
}

fn validate_registry(
    registry: &RegistryConfig,
    with_admin: bool,
    problems: &mut Problems,
) -> Option<RegistryStore> {
    if registry.store == RegistryStoreKind::Local {
        return Some(RegistryStore::Local);
    }
    if !with_admin {
        problems.add("registry.store", "the registry is the admin API's: configure [admin] too");
    }
    let before = problems.len();
    for (key, topic) in [("registry.topic", &registry.topic), ("registry.blob_topic", &registry.blob_topic)] {
        if !is_topic(topic) {
            problems.add(key, format!("{topic:?} is not a valid topic name"));
        }
    }
    if registry.topic == registry.blob_topic {
        problems.add("registry.blob_topic", "must differ from registry.topic");
    }
    if registry.replication_factor < 1 {
        problems.add("registry.replication_factor", "must be at least 1");
    }
    for (key, value) in [
        ("registry.write_timeout_ms", registry.write_timeout_ms),
        ("registry.max_staleness_ms", registry.max_staleness_ms),
    ] {
        if value == 0 {
            problems.add(key, "must be greater than 0");
        }
    }
    let signing_keys = signing_keys(&registry.signing_keys, problems);
    (problems.len() == before).then(|| {
        RegistryStore::Kafka(KafkaRegistrySettings {
            topic: registry.topic.clone(),
            blob_topic: registry.blob_topic.clone(),
            create_topics: registry.create_topics,
            replication_factor: registry.replication_factor,
            write_timeout: Duration::from_millis(registry.write_timeout_ms),
            max_staleness: Duration::from_millis(registry.max_staleness_ms),
            signing_keys,
        })
    })
}

/// The fewest bytes a registry signing key may have: HMAC-SHA256's own output size.
const MIN_SIGNING_KEY_BYTES: usize = 32;

/// `registry.signing_keys`, resolved: at least one, unique ids, secrets of at least
/// [`MIN_SIGNING_KEY_BYTES`].
fn signing_keys(keys: &[SigningKeyConfig], problems: &mut Problems) -> Vec<SigningKey> {
    if keys.is_empty() {
        problems.add(
            "registry.signing_keys",
            "required with store = \"kafka\": every replica signs the records it writes and applies \
             only records signed with one of these keys (anyone who can write to the registry topic \
             could otherwise create tenants and tokens)",
        );
    }
    let mut resolved = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let at = |field: &str| format!("registry.signing_keys[{i}].{field}");
        let id_ok = !key.id.is_empty()
            && key.id.len() <= 64
            && key.id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !id_ok {
            problems.add(at("id"), "must be 1-64 ASCII letters, digits, '-', '_' or '.'");
        }
        if keys[..i].iter().any(|earlier| earlier.id == key.id) {
            problems.add(at("id"), format!("{:?} is used by an earlier key", key.id));
        }
        match key.secret.resolve() {
            Ok(secret) if secret.len() >= MIN_SIGNING_KEY_BYTES => {
                resolved.push(SigningKey { id: key.id.clone(), secret: secret.into_bytes() });
            }
            Ok(secret) => problems.add(
                at("secret"),
                format!("must be at least {MIN_SIGNING_KEY_BYTES} bytes (it has {})", secret.len()),
            ),
            Err(error) => problems.add(at("secret"), error),
        }
    }
    resolved
}

/// The memory budgets must hold the largest handler: `max_memory_bytes_ceiling` ≤
/// `tenant_memory_budget_bytes` ≤ `memory_budget_bytes`; else a handler could be granted a limit
/// no instance of it could ever be admitted with.
fn validate_memory_budgets(sandbox: &crate::sandbox::SandboxConfig, problems: &mut Problems) {
    const MIB: u64 = 1 << 20;
    if sandbox.memory_budget_bytes < MIB {
        problems.add("sandbox.memory_budget_bytes", "must be at least 1 MiB (1048576)");
    }
    if sandbox.tenant_memory_budget_bytes > sandbox.memory_budget_bytes {
        problems.add(
            "sandbox.tenant_memory_budget_bytes",
            format!("must be at most sandbox.memory_budget_bytes ({})", sandbox.memory_budget_bytes),
        );
    }
    if sandbox.max_memory_bytes_ceiling > sandbox.tenant_memory_budget_bytes {
        problems.add(
            "sandbox.max_memory_bytes_ceiling",
            format!(
                "must be at most sandbox.tenant_memory_budget_bytes ({}): one instance of the largest handler must fit a tenant's share",
                sandbox.tenant_memory_budget_bytes
            ),
        );
    }
}

/// The most connections `admin.max_connections` may allow: each costs a file descriptor and a
/// task, and a container's open-file limit is commonly 65,536 or less.
const MAX_CONNECTIONS: usize = 16_384;

fn validate_admin(
    admin: &AdminConfig,
    base: &Path,
    registry: Option<RegistryStore>,
    problems: &mut Problems,
) -> Option<AdminSettings> {
    use sha2::Digest as _;
    let listen: Option<std::net::SocketAddr> = admin
        .listen
        .parse()
        .map_err(|_| problems.add("admin.listen", format!("{:?} is not an ip:port address", admin.listen)))
        .ok();
    let operator_token = match admin.operator_token.as_ref().map(Secret::resolve) {
        None => None,
        Some(Ok(token)) if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) => {
            problems.add("admin.operator_token", "must be at least 16 printable ASCII characters, no spaces");
            None
        }
        Some(Ok(token)) => Some(sha2::Sha256::digest(token.as_bytes()).into()),
        Some(Err(e)) => {
            problems.add("admin.operator_token", e);
            None
        }
    };
    if admin.max_upload_bytes == 0 {
        problems.add("admin.max_upload_bytes", "must be greater than 0");
    }
    let monitoring_listen: Option<std::net::SocketAddr> = admin
        .monitoring_listen
        .parse()
        .map_err(|_| {
            problems.add(
                "admin.monitoring_listen",
                format!("{:?} is not an ip:port address", admin.monitoring_listen),
            )
        })
        .ok();
    if let (Some(api), Some(monitoring)) = (listen, monitoring_listen)
        && api.port() != 0
        && api.port() == monitoring.port()
        && (api.ip() == monitoring.ip() || api.ip().is_unspecified() || monitoring.ip().is_unspecified())
    {
        problems.add(
            "admin.monitoring_listen",
            format!("{monitoring} is also admin.listen: the probes and metrics need a listener of their own"),
        );
    }
    if !(1..=MAX_CONNECTIONS).contains(&admin.max_connections) {
        problems.add("admin.max_connections", format!("must be between 1 and {MAX_CONNECTIONS}"));
    }
    for (key, ms) in [
        ("admin.header_read_timeout_ms", admin.header_read_timeout_ms),
        ("admin.idle_timeout_ms", admin.idle_timeout_ms),
    ] {
        if !(100..=3_600_000).contains(&ms) {
            problems.add(key, "must be between 100 and 3600000 (an hour)");
        }
    }
    Some(AdminSettings {
        listen: listen?,
        monitoring_listen: monitoring_listen?,
        max_connections: admin.max_connections,
        header_read_timeout: std::time::Duration::from_millis(admin.header_read_timeout_ms),
        idle_timeout: std::time::Duration::from_millis(admin.idle_timeout_ms),
        operator_token_sha256: operator_token,
        state_dir: base.join(&admin.state_dir),
        max_upload_bytes: admin.max_upload_bytes,
        registry: registry?,
    })
}

/// The host's name: `HOSTNAME` (set by shells and container runtimes), else /etc/hostname.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "keyhole".to_string())
}

/// Collects problems; validation goes on after the first.
#[derive(Default)]
pub(super) struct Problems(Vec<Problem>);

impl Problems {
    pub(super) fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem { path: path.into(), message: message.into() });
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn into_result<T>(self, ok: impl FnOnce() -> T) -> Result<T, Vec<Problem>> {
        if self.0.is_empty() { Ok(ok()) } else { Err(self.0) }
    }
}
