//! Admission of handler instances against what the host can hold: an instance slot of the pool
//! and the most linear memory the handler may grow to (its `max_memory_bytes`), counted against a
//! budget for the whole process and a share per tenant.
//!
//! An event is admitted once its data owner released the data, and holds its admission until
//! the handler's instance is gone. Waiting to be admitted is backpressure: the event is not
//! failed, not retried, and the owner is asked once. One tenant's handlers cannot take more than
//! its share, so they cannot hold the others' events up beyond it, and all of them together
//! cannot make the process outgrow its container.

use crate::telemetry;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Budgets are counted in whole mebibytes: a handler's reservation is its `max_memory_bytes`
/// rounded up.
const UNIT: u64 = 1 << 20;

/// The budgets every handler is admitted against; one per [`super::Sandbox`].
pub struct Admission {
    /// Instance slots: the pool's size.
    instances: Arc<Semaphore>,
    /// Mebibytes of linear memory for every tenant together.
    memory: Arc<Semaphore>,
    memory_units: u32,
    /// Each tenant's share, in mebibytes.
    tenant_units: u32,
    tenants: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// What is in use, shown on `/metrics`; shared with every [`Admitted`].
    in_use: Arc<InUse>,
    /// The instance slots and memory budget this sandbox added to the process's gauges.
    budget_gauges: [(metrics::Gauge, f64); 2],
}

/// The gauges of what the admitted instances hold: handles made once, so that admitting an
/// instance is two atomic adds, not a look-up.
struct InUse {
    instances: metrics::Gauge,
    memory_bytes: metrics::Gauge,
}

/// What an admitted instance holds; released when dropped.
#[must_use = "the admission is released when dropped"]
pub struct Admitted {
    _instance: OwnedSemaphorePermit,
    _memory: OwnedSemaphorePermit,
    _tenant: OwnedSemaphorePermit,
    /// Counted in the in-use gauges until dropped, with its reservation in bytes.
    in_use: Arc<InUse>,
    bytes: f64,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.in_use.instances.decrement(1.0);
        self.in_use.memory_bytes.decrement(self.bytes);
    }
}

/// A handler that could never be admitted: its memory limit is above a budget.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "max_memory_bytes ({limit} bytes) is above the sandbox's {budget} ({allowed} bytes): no instance of it could ever run"
)]
pub struct TooLarge {
    /// The handler's limit.
    pub limit: u64,
    /// The budget's name.
    pub budget: &'static str,
    /// The budget.
    pub allowed: u64,
}

impl Admission {
    /// Budgets of `instances` slots, `memory_bytes` of linear memory in all, and
    /// `tenant_memory_bytes` per tenant.
    pub fn new(instances: u32, memory_bytes: u64, tenant_memory_bytes: u64) -> Self {
        let units =
            |bytes: u64| u32::try_from(bytes / UNIT).unwrap_or(u32::MAX).min(Semaphore::MAX_PERMITS as u32);
        // Added to, not set: the gauges are the process's, and a test process holds several
        // sandboxes (each takes its part back when dropped).
        let budget_gauges = [
            (metrics::gauge!(telemetry::SANDBOX_INSTANCES_MAX), f64::from(instances)),
            (metrics::gauge!(telemetry::SANDBOX_MEMORY_BUDGET), f64::from(units(memory_bytes)) * UNIT as f64),
        ];
        for (gauge, value) in &budget_gauges {
            gauge.increment(*value);
        }
        let in_use = InUse {
            instances: metrics::gauge!(telemetry::SANDBOX_INSTANCES_IN_USE),
            memory_bytes: metrics::gauge!(telemetry::SANDBOX_MEMORY_RESERVED),
        };
        // Shown at 0 before the first instance, not missing.
        in_use.instances.increment(0.0);
        in_use.memory_bytes.increment(0.0);
        Admission {
            instances: Arc::new(Semaphore::new(instances as usize)),
            memory: Arc::new(Semaphore::new(units(memory_bytes) as usize)),
            memory_units: units(memory_bytes),
            tenant_units: units(tenant_memory_bytes),
            tenants: Mutex::default(),
            in_use: Arc::new(in_use),
            budget_gauges,
        }
    }

    /// A handler whose memory may grow to `max_memory_bytes` could be admitted at all.
    pub fn check(&self, max_memory_bytes: u64) -> Result<(), TooLarge> {
        let units = reservation(max_memory_bytes);
        let too_large = |budget, allowed: u32| TooLarge {
            limit: max_memory_bytes,
            budget,
            allowed: u64::from(allowed) * UNIT,
        };
        if units > self.tenant_units {
            return Err(too_large("tenant_memory_budget_bytes", self.tenant_units));
        }
        if units > self.memory_units {
            return Err(too_large("memory_budget_bytes", self.memory_units));
        }
        Ok(())
    }

    /// Waits until `tenant` may run one more instance of up to `max_memory_bytes`: its share
    /// first (a tenant over its share waits without holding anyone else's memory), then the
    /// process's memory, then a slot. The caller has [`check`](Self::check)ed the handler:
    /// a reservation above a budget would wait for ever. `None` only if the semaphores were
    /// closed, which nothing does.
    pub async fn admit(&self, tenant: &str, max_memory_bytes: u64) -> Option<Admitted> {
        let units = reservation(max_memory_bytes);
        let share = self.share(tenant);
        let tenant = share.acquire_many_owned(units).await.ok()?;
        let memory = self.memory.clone().acquire_many_owned(units).await.ok()?;
        let instance = self.instances.clone().acquire_owned().await.ok()?;
        let bytes = f64::from(units) * UNIT as f64;
        self.in_use.instances.increment(1.0);
        self.in_use.memory_bytes.increment(bytes);
        Some(Admitted {
            _instance: instance,
            _memory: memory,
            _tenant: tenant,
            in_use: self.in_use.clone(),
            bytes,
        })
    }

    fn share(&self, tenant: &str) -> Arc<Semaphore> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // One small entry per tenant that ran a handler: bounded by the operator's tenants.
        tenants
            .entry(tenant.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.tenant_units as usize)))
            .clone()
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        for (gauge, value) in &self.budget_gauges {
            gauge.decrement(*value);
        }
    }
}

/// A handler's reservation: its memory limit in mebibytes, rounded up, at least one.
fn reservation(max_memory_bytes: u64) -> u32 {
    u32::try_from(max_memory_bytes.div_ceil(UNIT).max(1)).unwrap_or(u32::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MIB: u64 = 1 << 20;

    async fn admitted_within(admission: &Admission, tenant: &str, bytes: u64) -> Option<Admitted> {
        tokio::time::timeout(Duration::from_millis(50), admission.admit(tenant, bytes)).await.ok().flatten()
    }

    #[tokio::test]
    async fn a_tenant_waits_at_its_share_while_another_is_admitted() {
        let admission = Admission::new(16, 256 * MIB, 128 * MIB);
        let a1 = admitted_within(&admission, "a", 64 * MIB).await.unwrap();
        let _a2 = admitted_within(&admission, "a", 64 * MIB).await.unwrap();
        assert!(admitted_within(&admission, "a", 64 * MIB).await.is_none(), "a is over its share");
        let _b = admitted_within(&admission, "b", 64 * MIB).await.unwrap();
        drop(a1);
        assert!(admitted_within(&admission, "a", 64 * MIB).await.is_some(), "a's share freed");
    }

    #[tokio::test]
    async fn the_process_budget_and_the_slots_hold_for_every_tenant_together() {
        let admission = Admission::new(16, 128 * MIB, 128 * MIB);
        let _a = admitted_within(&admission, "a", 100 * MIB).await.unwrap();
        assert!(admitted_within(&admission, "b", 64 * MIB).await.is_none(), "over the process's budget");
        let slots = Admission::new(2, 1024 * MIB, 1024 * MIB);
        let _one = admitted_within(&slots, "a", MIB).await.unwrap();
        let _two = admitted_within(&slots, "b", MIB).await.unwrap();
        assert!(admitted_within(&slots, "c", MIB).await.is_none(), "no free slot");
    }

    #[tokio::test]
    async fn the_gauges_show_the_slots_and_memory_in_use_until_released() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let rendered = recorder.handle();
        let admission = metrics::with_local_recorder(&recorder, || Admission::new(16, 256 * MIB, 128 * MIB));
        let value = |name: &str| {
            let text = rendered.render();
            let prefix = format!("{name} ");
            text.lines().find_map(|line| line.strip_prefix(prefix.as_str())?.parse::<f64>().ok())
        };
        let shown = || {
            [
                telemetry::SANDBOX_INSTANCES_IN_USE,
                telemetry::SANDBOX_INSTANCES_MAX,
                telemetry::SANDBOX_MEMORY_RESERVED,
                telemetry::SANDBOX_MEMORY_BUDGET,
            ]
            .map(value)
        };
        let mib = MIB as f64;
        assert_eq!(shown(), [Some(0.0), Some(16.0), Some(0.0), Some(256.0 * mib)]);
        let one = admitted_within(&admission, "a", 64 * MIB).await.unwrap();
        // Rounded up to whole mebibytes.
        let two = admitted_within(&admission, "b", MIB + 1).await.unwrap();
        assert_eq!(shown(), [Some(2.0), Some(16.0), Some(66.0 * mib), Some(256.0 * mib)]);
        drop(one);
        assert_eq!(shown(), [Some(1.0), Some(16.0), Some(2.0 * mib), Some(256.0 * mib)]);
        drop(two);
        drop(admission);
        assert_eq!(shown(), [Some(0.0), Some(0.0), Some(0.0), Some(0.0)], "the sandbox took its budget back");
    }

    #[test]
    fn a_handler_above_a_budget_is_refused_rather_than_left_waiting() {
        let admission = Admission::new(16, 256 * MIB, 128 * MIB);
        assert_eq!(admission.check(128 * MIB), Ok(()));
        assert_eq!(admission.check(128 * MIB + 1).unwrap_err().budget, "tenant_memory_budget_bytes");
        let admission = Admission::new(16, 64 * MIB, 128 * MIB);
        assert_eq!(admission.check(65 * MIB).unwrap_err().budget, "memory_budget_bytes");
        assert_eq!(reservation(1), 1);
        assert_eq!(reservation(0), 1);
    }
}
