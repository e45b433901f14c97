//! The rules the registry applies, as free functions: a handler's spec against its tenant's grant
//! and limits, finding a handler's record, version names and digests, purposes, timestamps.

use super::model::{HandlerRecord, State};
use super::{Catalog, Grant, HandlerSpec, RegistryError};
use crate::model::names::is_topic;
use crate::model::purpose::is_purpose;
use crate::sandbox::ComponentReport;

/// Checks a grant as the admin API does: topic names, configured data sources, purposes, limits.
pub(super) fn check_grant(catalog: &Catalog, grant: &Grant) -> Result<(), RegistryError> {
    for topic in grant.topics.iter().chain(&grant.reply_topics) {
        if !is_topic(topic) {
            return Err(RegistryError::Invalid(format!("{topic:?} is not a valid topic name")));
        }
        own_topic(catalog, topic)?;
    }
    for source in &grant.data_sources {
        if !catalog.data_sources.contains(source) {
            return Err(RegistryError::Invalid(format!(
                "no data source named {source:?} is configured (configured: {})",
                catalog.data_sources.join(", ")
            )));
        }
    }
    for purpose in &grant.purposes {
        if !is_purpose(purpose) {
            return Err(RegistryError::Invalid(format!(
                "purpose {purpose:?} must be 1-512 printable ASCII characters (it travels in an HTTP header)"
            )));
        }
    }
    let l = &grant.limits;
    if l.max_component_bytes == 0 || l.max_in_flight == 0 || l.max_memory_bytes == 0 || l.max_deadline_ms == 0
    {
        return Err(RegistryError::Invalid("limits must be greater than 0".into()));
    }
    Ok(())
}

/// Refuses keyhole's own topics (the registry's, receipts, dead letters) to tenants.
fn own_topic(catalog: &Catalog, topic: &str) -> Result<(), RegistryError> {
    match catalog.own_topics.owner(topic) {
        Some(what) => Err(RegistryError::Invalid(format!(
            "{topic:?} is {what}, one of keyhole's own topics: no tenant may consume or reply to it"
        ))),
        None => Ok(()),
    }
}

/// Checks a spec against the tenant's grant and limits.
pub(super) fn check_spec(
    tenant: &str,
    grant: &Grant,
    catalog: &Catalog,
    spec: &HandlerSpec,
) -> Result<(), RegistryError> {
    let not_granted =
        |what, value: &str| RegistryError::NotGranted { tenant: tenant.into(), what, value: value.into() };
    if spec.topics.is_empty() {
        return Err(RegistryError::Invalid("topics must name at least one topic".into()));
    }
    // Also here: a grant stored before the rule existed may still name one.
    for topic in spec.topics.iter().chain(&spec.reply_topic) {
        own_topic(catalog, topic)?;
    }
    for topic in &spec.topics {
        if !grant.topics.contains(topic) {
            return Err(not_granted("topic", topic));
        }
    }
    if !grant.data_sources.contains(&spec.data_source) || !catalog.data_sources.contains(&spec.data_source) {
        return Err(not_granted("data source", &spec.data_source));
    }
    if !grant.purposes.contains(&spec.purpose) {
        return Err(not_granted("purpose", &spec.purpose));
    }
    if let Some(reply) = &spec.reply_topic {
        if !grant.reply_topics.contains(reply) {
            return Err(not_granted("reply topic", reply));
        }
        if spec.topics.contains(reply) {
            return Err(RegistryError::Invalid(format!("{reply:?} is also consumed: replies would loop")));
        }
    }
    let l = &grant.limits;
    let over = |limit, value: u64, max: u64| {
        (value > max || value == 0).then(|| RegistryError::OverLimit {
            tenant: tenant.into(),
            limit,
            value,
            max,
        })
    };
    let checks = [
        spec.max_in_flight.and_then(|v| over("max_in_flight", v.into(), l.max_in_flight.into())),
        spec.deadline_ms.and_then(|v| over("deadline_ms", v, l.max_deadline_ms)),
        spec.max_memory_bytes.and_then(|v| over("max_memory_bytes", v, l.max_memory_bytes)),
    ];
    match checks.into_iter().flatten().next() {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

pub(super) fn handler_record<'a>(
    state: &'a State,
    tenant: &str,
    handler: &str,
) -> Result<&'a HandlerRecord, RegistryError> {
    let record = state.tenants.get(tenant).ok_or_else(|| RegistryError::UnknownTenant(tenant.into()))?;
    record
        .handlers
        .get(handler)
        .ok_or_else(|| RegistryError::UnknownHandler { tenant: tenant.into(), handler: handler.into() })
}

pub(super) fn handler_record_mut<'a>(
    state: &'a mut State,
    tenant: &str,
    handler: &str,
) -> Result<&'a mut HandlerRecord, RegistryError> {
    let record = state.tenants.get_mut(tenant).ok_or_else(|| RegistryError::UnknownTenant(tenant.into()))?;
    record
        .handlers
        .get_mut(handler)
        .ok_or_else(|| RegistryError::UnknownHandler { tenant: tenant.into(), handler: handler.into() })
}

/// Accepts a version as `sha256:<hex>` or as the bare hex digest.
pub(super) fn normalise(version: &str) -> String {
    if version.starts_with("sha256:") { version.to_string() } else { format!("sha256:{version}") }
}

/// The hex digest of a `sha256:<hex>` version, checked so that it is safe as a file name.
pub(super) fn hex_of(version: &str) -> Result<&str, RegistryError> {
    version
        .strip_prefix("sha256:")
        .filter(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| RegistryError::Invalid(format!("{version:?} is not a sha256:<hex> version")))
}

/// The handler contract a component targets, from its `keyhole:handler/...@version` imports;
/// the host's own when it imports none (it validated against the host's).
pub(super) fn contract_of(report: &ComponentReport) -> String {
    report
        .imports
        .iter()
        .find_map(|import| {
            let rest = import.strip_prefix("keyhole:handler/")?;
            let (_, version) = rest.split_once('@')?;
            Some(format!("keyhole:handler@{version}"))
        })
        .unwrap_or_else(|| crate::sandbox::CONTRACT.to_string())
}

pub(super) fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
