//! The binding an uploaded handler runs as: what its tenant chose (already checked by the
//! registry against the grant and limits), keyhole's defaults for the rest. The one place,
//! besides the configuration file's validation, where a [`BindingSettings`] is made.

use super::{BindingSettings, Delivery, FailurePolicies, FailurePolicy, GuestOutput, RetryConfig, Settings};
use crate::model::names;
use crate::sandbox::Limits;
use std::path::PathBuf;

/// What a tenant chose for an uploaded handler.
#[derive(Clone, Debug)]
pub struct UploadedBinding<'a> {
    /// The tenant.
    pub tenant: &'a str,
    /// The handler's name.
    pub handler: &'a str,
    /// The active version's component file.
    pub component: PathBuf,
    /// The topics it consumes.
    pub topics: Vec<String>,
    /// The data source's name.
    pub data_source: &'a str,
    /// The declared purpose.
    pub purpose: String,
    /// Its in-flight limit.
    pub max_in_flight: u32,
    /// Where its replies go.
    pub reply_topic: Option<String>,
    /// Its handler's deadline.
    pub deadline_ms: u64,
    /// Its handler's memory limit (capped by `sandbox.max_memory_bytes_ceiling`).
    pub max_memory_bytes: u64,
}

impl Settings {
    /// The settings of an uploaded handler's binding: at-least-once, the default dead-letter
    /// topic for every stage, default retries, the handler's output withheld. `Err` when its
    /// data source is not configured (any more).
    pub fn uploaded_binding(&self, b: UploadedBinding<'_>) -> Result<BindingSettings, String> {
        let data_source = self
            .data_sources
            .iter()
            .position(|s| s.name == b.data_source)
            .ok_or_else(|| format!("no data source named {:?} is configured", b.data_source))?;
        let group_id = names::group_id(&self.kafka.group_id, b.tenant, b.handler);
        let limits = Limits {
            deadline_ms: b.deadline_ms,
            max_memory_bytes: b.max_memory_bytes.min(self.sandbox.max_memory_bytes_ceiling),
            ..Limits::default()
        };
        Ok(BindingSettings {
            name: names::binding_name(b.tenant, b.handler),
            tenant: b.tenant.to_string(),
            handler: b.handler.to_string(),
            component: b.component,
            topics: b.topics,
            on_failure: FailurePolicies {
                dead_letter_topic: names::default_dead_letter_topic(&group_id),
                envelope: FailurePolicy::DeadLetter,
                resolve: FailurePolicy::DeadLetter,
                handler: FailurePolicy::DeadLetter,
                reply: FailurePolicy::DeadLetter,
            },
            group_id,
            data_source,
            purpose: b.purpose,
            max_in_flight: b.max_in_flight.max(1) as usize,
            reply_topic: b.reply_topic,
            reply_topics_allowed: Vec::new(),
            limits,
            retry: RetryConfig::default(),
            delivery: Delivery::AtLeastOnce,
            guest_output: GuestOutput::Withhold,
            key_path: format!("registry:{}", names::binding_name(b.tenant, b.handler)),
            // The registry's spec holds them; the pipeline does not need them.
            declared: Default::default(),
        })
    }
}
