//! Per-handler resource limits and the store limiter that enforces them.

use serde::Deserialize;
use std::time::Duration;

/// What one call of a handler may use. Set per handler by the operator; every field has a safe
/// default so that an unconfigured handler is still bounded.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Wall-clock time for instantiating the component and handling one event.
    pub deadline_ms: u64,
    /// Linear memory, in bytes, summed over every memory of the instance.
    pub max_memory_bytes: u64,
    /// Core and component instances created for one event (a component is several instances).
    pub max_instances: u32,
    /// Tables created for one event.
    pub max_tables: u32,
    /// Elements of any one table.
    pub max_table_elements: u32,
    /// Size of the reply's data.
    pub max_reply_bytes: u64,
    /// Bytes a handler may log per event, through the `log` import and on stdout and stderr
    /// (each stream has this budget). A handler that writes more is stopped.
    pub max_log_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline_ms: 1_000,
            max_memory_bytes: 64 << 20,
            max_instances: 32,
            max_tables: 32,
            max_table_elements: 100_000,
            max_reply_bytes: 1 << 20,
            max_log_bytes: 64 << 10,
        }
    }
}

impl Limits {
    /// The deadline as a duration.
    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms)
    }
}

/// Which limit a guest ran into while growing memory or tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LimitHit {
    Memory,
    TableElements,
}

/// Enforces [`Limits`] on one store and remembers which limit refused a growth, so that the
/// resulting trap can be reported as what it is rather than as a generic failure.
pub(crate) struct GuestLimiter {
    max_memory_bytes: usize,
    max_table_elements: usize,
    max_instances: usize,
    max_tables: usize,
    /// Memory currently granted, summed over the instance's memories.
    memory_in_use: usize,
    /// The first limit that refused a growth, if any.
    pub(crate) hit: Option<LimitHit>,
}

impl GuestLimiter {
    pub(crate) fn new(limits: &Limits) -> Self {
        GuestLimiter {
            max_memory_bytes: usize::try_from(limits.max_memory_bytes).unwrap_or(usize::MAX),
            max_table_elements: limits.max_table_elements as usize,
            max_instances: limits.max_instances as usize,
            max_tables: limits.max_tables as usize,
            memory_in_use: 0,
            hit: None,
        }
    }
}

impl wasmtime::ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let after = self.memory_in_use - current.min(self.memory_in_use) + desired;
        if after > self.max_memory_bytes {
            self.hit.get_or_insert(LimitHit::Memory);
            // Trapping (rather than failing `memory.grow`) stops the guest at once: a guest that
            // ignores a failed growth would otherwise spin until its deadline.
            wasmtime::bail!("memory limit of {} bytes reached", self.max_memory_bytes);
        }
        self.memory_in_use = after;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_table_elements {
            self.hit.get_or_insert(LimitHit::TableElements);
            wasmtime::bail!("table limit of {} elements reached", self.max_table_elements);
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        self.max_instances
    }

    fn tables(&self) -> usize {
        self.max_tables
    }

    fn memories(&self) -> usize {
        // Memory is bounded by bytes; the count only needs to allow every instance one memory.
        self.max_instances
    }
}
