//! A running binding: what each of its events needs, shared by their tasks.

use super::pause::PauseGate;
use crate::config::BindingSettings;
use crate::records::audit::{Asker, Audit};
use crate::records::receipt::ReceiptWriter;
use crate::resolve::{Backoff, Resolver};
use crate::sandbox::Handler;
use crate::telemetry::{self, BindingMetrics};
use rdkafka::producer::FutureProducer;
use std::sync::{Arc, RwLock};

/// Everything a binding's events need, shared by their tasks, grouped by the step that uses it:
/// asking the owner ([`OwnerAccess`]), running the handler ([`HandlerSlot`]) and writing what an
/// event leaves ([`Outputs`]). Only the engine sees the fields.
pub struct Binding {
    /// The binding's configuration.
    pub(super) settings: BindingSettings,
    /// The active version of the handler component; replaced in place when another version is
    /// activated. Each event takes the version current when it starts and keeps it to the end.
    pub(super) handler: HandlerSlot,
    /// What asking the data owner needs.
    pub(super) owner: OwnerAccess,
    /// Where what an event leaves goes.
    pub(super) outputs: Outputs,
    /// Backoff between retries, of an attempt and of a send.
    pub(super) backoff: Backoff,
    /// The binding's metric handles, made once.
    pub(super) metrics: BindingMetrics,
}

/// What the resolve step uses: the only part of a binding that talks to the data owner.
pub struct OwnerAccess {
    /// The data source's resolver (shared with other bindings of the same source).
    pub(super) resolver: Arc<Resolver>,
    /// The data source's base URL, that references resolve against.
    pub(super) base_url: url::Url,
    /// Closed while the data source cannot answer (down, or refusing keyhole's credentials).
    pub(super) gate: PauseGate,
}

/// What the output step uses: the only part of a binding that writes records or publishes.
pub struct Outputs {
    /// Where outcomes go.
    pub(super) audit: Arc<Audit>,
    /// Where access receipts go, one per request to the data owner: the binding's own writer
    /// (on a receipts topic, its own chain).
    pub(super) receipts: ReceiptWriter,
    /// Publishes replies and dead letters: shared by the bindings that are not exactly-once;
    /// a binding's own transactional producer when it is.
    pub(super) producer: Arc<FutureProducer>,
}

impl Binding {
    /// The binding's configuration.
    pub fn settings(&self) -> &BindingSettings {
        &self.settings
    }

    /// Who asks, for records: the binding with the version `handler`.
    pub fn asker(&self, handler: &Handler) -> Asker {
        Asker {
            tenant: self.settings.tenant.clone(),
            handler: self.settings.handler.clone(),
            purpose: self.settings.purpose.clone(),
            version: handler.version().to_string(),
        }
    }

    /// Shows every failure counter of the binding at 0 before its first increment, so that an
    /// alert on them reads 0, not "no data", and the first increment is not lost to `rate()`.
    pub fn register_counters(&self) {
        let m = &self.metrics;
        for stage in crate::config::Stage::ALL {
            m.counter(telemetry::DEAD_LETTERS, Some(("stage", stage.as_str()))).absolute(0);
        }
        for kind in crate::cloudevents::EnvelopeError::KINDS {
            m.counter(telemetry::EVENTS_REFUSED, Some(("kind", kind))).absolute(0);
        }
        for kind in crate::sandbox::GuestError::KINDS {
            m.counter(telemetry::HANDLER_ERRORS, Some(("kind", kind))).absolute(0);
        }
        for cause in RETRY_CAUSES.iter().chain(crate::sandbox::GuestError::KINDS) {
            m.counter(telemetry::EVENT_RETRIES, Some(("cause", cause))).absolute(0);
        }
        m.counter(telemetry::RECEIPT_ERRORS, None).absolute(0);
        m.counter(telemetry::AUDIT_ERRORS, None).absolute(0);
    }
}

/// The causes of a retry besides the handler's own errors: the data owner's transient failures
/// and refusals of keyhole's credentials.
const RETRY_CAUSES: &[&str] = &["transient", "unauthorized"];

/// A binding's active handler version, swappable while events run (hot swap).
pub struct HandlerSlot(RwLock<Arc<Handler>>);

impl HandlerSlot {
    /// A slot holding `handler`.
    pub fn new(handler: Handler) -> Self {
        HandlerSlot(RwLock::new(Arc::new(handler)))
    }

    /// The version new events start on.
    pub fn current(&self) -> Arc<Handler> {
        self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Makes `handler` the version new events start on; events already started finish on
    /// theirs, which lives as long as they hold it.
    pub fn replace(&self, handler: Handler) {
        *self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(handler);
    }
}
