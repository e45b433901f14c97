//! Validation of what bindings are built from: the data sources (base URL, identity, limits) and
//! the handlers (names, topics, data source, purpose, declarations, limits, retries, failure
//! policies).

use super::validate::Problems;
use super::{BindingSettings, Config, FailurePolicies, FailurePolicy, HandlerConfig, IdentityConfig};
use crate::model::names::{self, NAME_RULE, is_dotted_name, is_name, is_topic};
use crate::model::purpose::is_purpose;
use crate::resolve::{DataSourceSettings, Identity};
use crate::sandbox::{Limits, SandboxConfig};
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

impl Config {
    /// One entry per configured source (None where it is invalid), so indices line up.
    pub(super) fn validate_data_sources(
        &self,
        base: &Path,
        problems: &mut Problems,
    ) -> Vec<Option<DataSourceSettings>> {
        let mut seen = HashSet::new();
        self.data_sources
            .iter()
            .enumerate()
            .map(|(i, source)| {
                let at = |key: &str| format!("data_source[{i}].{key}");
                let before = problems.len();
                if !is_dotted_name(&source.name) {
                    problems.add(at("name"), "must be 1-64 characters of a-z, 0-9, '-', '_' or '.'");
                } else if !seen.insert(source.name.as_str()) {
                    problems
                        .add(at("name"), format!("another data source is already named {:?}", source.name));
                }
                let base_url = match parse_base_url(&source.base_url) {
                    Ok(url) => Some(url),
                    Err(e) => {
                        problems.add(at("base_url"), e);
                        None
                    }
                };
                if source.timeout_ms == 0 {
                    problems.add(at("timeout_ms"), "must be greater than 0");
                }
                if source.max_response_bytes == 0 {
                    problems.add(at("max_response_bytes"), "must be greater than 0");
                }
                if source.max_concurrent_requests == 0 {
                    problems.add(at("max_concurrent_requests"), "must be greater than 0");
                }
                let batch = source.batch.as_ref().and_then(|batch| {
                    validate_batch(batch, base_url.as_ref(), &|k| at(&format!("batch.{k}")), problems)
                });
                let identity =
                    validate_identity(&source.identity, base, &|k| at(&format!("identity.{k}")), problems);
                let in_clear =
                    base_url.as_ref().is_some_and(|url| url.scheme() == "http" && !is_loopback(url));
                if in_clear
                    && matches!(identity, Some(Identity::Bearer(_)))
                    && !source.allow_plaintext_credentials
                {
                    problems.add(
                        at("base_url"),
                        "a bearer token would cross the network in clear over http: use https, or set \
                         allow_plaintext_credentials = true if the network itself is trusted",
                    );
                }
                match (base_url, problems.len() == before) {
                    (Some(base_url), true) => Some(DataSourceSettings {
                        name: source.name.clone(),
                        base_url,
                        identity: identity.unwrap_or(Identity::None),
                        timeout: Duration::from_millis(source.timeout_ms),
                        max_response_bytes: source.max_response_bytes,
                        max_concurrent_requests: source.max_concurrent_requests,
                        batch,
                    }),
                    _ => None,
                }
            })
            .collect()
    }

    pub(super) fn validate_handlers(&self, base: &Path, problems: &mut Problems) -> Vec<BindingSettings> {
        if self.handlers.is_empty() && self.admin.is_none() {
            problems.add(
                "handler",
                "no [[handler]] is configured and no [admin] API to upload one; there is nothing to run",
            );
        }
        let mut seen = HashSet::new();
        let mut bindings = Vec::new();
        for (i, h) in self.handlers.iter().enumerate() {
            let at = |key: &str| format!("handler[{i}].{key}");
            let before = problems.len();
            check_names(h, &at, problems);
            if is_name(&h.name) && !seen.insert((h.tenant.as_str(), h.name.as_str())) {
                problems.add(
                    at("name"),
                    format!("tenant {:?} already has a handler named {:?}", h.tenant, h.name),
                );
            }
            let component = base.join(&h.component);
            if !component.is_file() {
                problems.add(at("component"), format!("{} is not a file", component.display()));
            }
            check_topics(h, &at, problems);
            let data_source = self.check_data_source(h, &at, problems);
            check_purpose(h, &at, problems);
            for (key, problem) in h.declared.problems() {
                problems.add(at(&format!("declared.{key}")), problem);
            }
            if h.max_in_flight == 0 || h.max_in_flight > 100_000 {
                problems.add(at("max_in_flight"), "must be between 1 and 100000");
            }
            validate_limits(&h.limits, &self.sandbox, &|k| at(&format!("limits.{k}")), problems);
            check_retry(h, &at, problems);
            let group_id = names::group_id(&self.kafka.group_id, &h.tenant, &h.name);
            let dead_letter_topic = check_failure_policies(h, &group_id, &at, problems);
            if let (true, Some(data_source)) = (problems.len() == before, data_source) {
                bindings.push(BindingSettings {
                    name: names::binding_name(&h.tenant, &h.name),
                    tenant: h.tenant.clone(),
                    handler: h.name.clone(),
                    component,
                    topics: h.topics.clone(),
                    group_id,
                    data_source,
                    purpose: h.purpose.clone(),
                    max_in_flight: h.max_in_flight,
                    reply_topic: h.reply_topic.clone(),
                    reply_topics_allowed: h.reply_topics_allowed.clone(),
                    limits: h.limits.clone(),
                    retry: h.retry.clone(),
                    on_failure: FailurePolicies {
                        dead_letter_topic,
                        envelope: h.on_failure.envelope,
                        resolve: h.on_failure.resolve,
                        handler: h.on_failure.handler,
                        reply: h.on_failure.reply,
                    },
                    delivery: h.delivery,
                    guest_output: h.guest_output,
                    key_path: format!("handler[{i}]"),
                    declared: h.declared.clone(),
                });
            }
        }
        bindings
    }

    /// The index of the handler's data source, if it is configured. (A source's own problems
    /// are reported under `data_source[..]`.)
    fn check_data_source(
        &self,
        h: &HandlerConfig,
        at: &dyn Fn(&str) -> String,
        problems: &mut Problems,
    ) -> Option<usize> {
        let index = self.data_sources.iter().position(|s| s.name == h.data_source);
        if index.is_none() {
            let known: Vec<&str> = self.data_sources.iter().map(|s| s.name.as_str()).collect();
            problems.add(
                at("data_source"),
                format!("no data source named {:?} (configured: {})", h.data_source, known.join(", ")),
            );
        }
        index
    }
}

/// The tenant's and the handler's names follow the naming rule.
fn check_names(h: &HandlerConfig, at: &dyn Fn(&str) -> String, problems: &mut Problems) {
    if !is_name(&h.tenant) {
        problems.add(at("tenant"), format!("{:?} must be {NAME_RULE}", h.tenant));
    }
    if !is_name(&h.name) {
        problems.add(at("name"), format!("{:?} must be {NAME_RULE}", h.name));
    }
}

/// Consumed topics are valid names; reply topics are valid and not consumed (a loop).
fn check_topics(h: &HandlerConfig, at: &dyn Fn(&str) -> String, problems: &mut Problems) {
    if h.topics.is_empty() {
        problems.add(at("topics"), "must name at least one topic");
    }
    for (t, topic) in h.topics.iter().enumerate() {
        if !is_topic(topic) {
            problems.add(
                at(&format!("topics[{t}]")),
                format!(
                    "{topic:?} is not a valid topic name (1-249 characters of a-z, A-Z, 0-9, '.', '_', '-')"
                ),
            );
        }
    }
    let replies = h.reply_topic.iter().map(|t| ("reply_topic".to_string(), t)).chain(
        h.reply_topics_allowed
            .iter()
            .enumerate()
            .map(|(t, topic)| (format!("reply_topics_allowed[{t}]"), topic)),
    );
    for (key, topic) in replies {
        if !is_topic(topic) {
            problems.add(at(&key), format!("{topic:?} is not a valid topic name"));
        } else if h.topics.contains(topic) {
            problems
                .add(at(&key), format!("{topic:?} is also consumed by this handler: its replies would loop"));
        }
    }
}

/// The purpose is declared and fits an HTTP header.
fn check_purpose(h: &HandlerConfig, at: &dyn Fn(&str) -> String, problems: &mut Problems) {
    if h.purpose.trim().is_empty() {
        problems.add(at("purpose"), "must declare the purpose of processing; it is sent to the data owner");
    } else if !is_purpose(&h.purpose) {
        problems.add(
            at("purpose"),
            "must be at most 512 printable ASCII characters (it travels in an HTTP header)",
        );
    }
}

/// The retry limits can be reached.
fn check_retry(h: &HandlerConfig, at: &dyn Fn(&str) -> String, problems: &mut Problems) {
    if h.retry.initial_backoff_ms == 0 || h.retry.max_backoff_ms < h.retry.initial_backoff_ms {
        problems.add(at("retry"), "needs 0 < initial_backoff_ms <= max_backoff_ms");
    }
    if h.retry.max_attempts == 0 {
        problems.add(at("retry.max_attempts"), "must be at least 1");
    }
    if h.retry.max_elapsed_ms == 0 {
        problems.add(at("retry.max_elapsed_ms"), "must be greater than 0");
    }
}

/// The failure policies make sense; the dead-letter topic (the configured one, else the
/// binding's default), which must be valid and not consumed.
fn check_failure_policies(
    h: &HandlerConfig,
    group_id: &str,
    at: &dyn Fn(&str) -> String,
    problems: &mut Problems,
) -> String {
    if h.on_failure.envelope == FailurePolicy::Retry {
        problems.add(
            at("on_failure.envelope"),
            "must be \"dead-letter\" or \"stop\": the same bytes are refused again on every retry",
        );
    }
    let dead_letter_topic =
        h.on_failure.dead_letter_topic.clone().unwrap_or_else(|| names::default_dead_letter_topic(group_id));
    if !is_topic(&dead_letter_topic) {
        problems.add(
            at("on_failure.dead_letter_topic"),
            format!("{dead_letter_topic:?} is not a valid topic name"),
        );
    } else if h.topics.contains(&dead_letter_topic) {
        problems.add(
            at("on_failure.dead_letter_topic"),
            format!("{dead_letter_topic:?} is also consumed by this handler: dead letters would loop"),
        );
    }
    dead_letter_topic
}

fn validate_identity(
    identity: &IdentityConfig,
    base: &Path,
    at: &dyn Fn(&str) -> String,
    problems: &mut Problems,
) -> Option<Identity> {
    match (&identity.bearer_token, &identity.client_certificate, &identity.client_key) {
        (None, None, None) => Some(Identity::None),
        (Some(token), None, None) => match token.resolve() {
            Ok(token) if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) => {
                problems.add(at("bearer_token"), "is empty or has characters a header cannot carry");
                None
            }
            Ok(token) => Some(Identity::Bearer(token)),
            Err(e) => {
                problems.add(at("bearer_token"), e);
                None
            }
        },
        (None, Some(certificate), Some(key)) => {
            let certificate = base.join(certificate);
            let certificate_pem = std::fs::read(&certificate)
                .map_err(|e| {
                    problems
                        .add(at("client_certificate"), format!("cannot read {}: {e}", certificate.display()))
                })
                .ok();
            let key_pem = key.resolve().map_err(|e| problems.add(at("client_key"), e)).ok();
            Some(Identity::ClientCertificate {
                certificate_pem: certificate_pem?,
                key_pem: key_pem?.into_bytes(),
            })
        }
        (None, Some(_), None) | (None, None, Some(_)) => {
            problems.add(at("client_certificate"), "mTLS needs both client_certificate and client_key");
            None
        }
        (Some(_), _, _) => {
            problems.add(
                at("bearer_token"),
                "choose one identity: a bearer token, or a client certificate and key",
            );
            None
        }
    }
}

fn validate_limits(
    limits: &Limits,
    sandbox: &SandboxConfig,
    at: &dyn Fn(&str) -> String,
    problems: &mut Problems,
) {
    if limits.deadline_ms == 0 {
        problems.add(at("deadline_ms"), "must be greater than 0");
    }
    if limits.max_memory_bytes == 0 || limits.max_memory_bytes > sandbox.max_memory_bytes_ceiling {
        problems.add(
            at("max_memory_bytes"),
            format!(
                "must be between 1 and sandbox.max_memory_bytes_ceiling ({})",
                sandbox.max_memory_bytes_ceiling
            ),
        );
    }
    for (key, value) in [
        ("max_instances", u64::from(limits.max_instances)),
        ("max_tables", u64::from(limits.max_tables)),
        ("max_table_elements", u64::from(limits.max_table_elements)),
        ("max_reply_bytes", limits.max_reply_bytes),
    ] {
        if value == 0 {
            problems.add(at(key), "must be greater than 0");
        }
    }
}

/// Checks `[data_source.batch]`: a path that stays under the base URL, and bounds.
fn validate_batch(
    batch: &super::BatchConfig,
    base_url: Option<&url::Url>,
    at: &dyn Fn(&str) -> String,
    problems: &mut Problems,
) -> Option<crate::resolve::BatchSettings> {
    let before = problems.len();
    let path = batch.path.as_str();
    if let Err(problem) = check_batch_path(path, base_url) {
        problems.add(at("path"), problem);
    }
    if !(2..=256).contains(&batch.max_references) {
        problems.add(at("max_references"), "must be 2 to 256");
    }
    if batch.max_wait_ms > 100 {
        problems.add(at("max_wait_ms"), "must be at most 100 (it delays the first reference of each batch)");
    }
    (problems.len() == before).then(|| crate::resolve::BatchSettings {
        path: path.to_string(),
        max_references: batch.max_references,
        max_wait: Duration::from_millis(batch.max_wait_ms),
    })
}

/// Checks a batch endpoint's path (`[data_source.batch] path`, `keyhole owner check
/// --batch-path`): a plain relative path that, joined onto `base_url` when known, stays under it.
pub(crate) fn check_batch_path(path: &str, base_url: Option<&url::Url>) -> Result<(), &'static str> {
    let plain = !path.is_empty()
        && !path.starts_with('/')
        && !path.contains(['?', '#', '\\'])
        && path.split('/').all(|segment| !segment.is_empty() && segment != "." && segment != "..");
    if !plain {
        return Err(
            "must be a relative path under base_url (segments without '.', '..', '?', '#' or '\\'), e.g. \"batch\"",
        );
    }
    if let Some(base) = base_url
        && base.join(path).map_or(true, |url| !url.as_str().starts_with(base.as_str()))
    {
        return Err("must stay under base_url");
    }
    Ok(())
}

/// Parses a data source's base URL: http(s), no credentials, query or fragment; the path is
/// made to end with '/' so that references resolve under it, never beside it.
pub(crate) fn parse_base_url(text: &str) -> Result<url::Url, String> {
    let mut url = url::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("must be an http or https URL, not {}:", url.scheme()));
    }
    if url.host().is_none() {
        return Err("must name a host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials (keyhole sends its own: the data source's identity)".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// Whether a data source is on this host (`localhost`, `127.0.0.0/8`, `::1`): a token sent
/// there does not cross a network.
fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}
