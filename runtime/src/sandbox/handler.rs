//! A loaded handler, and the fresh instance each event runs in.

use super::admission::Admitted;
use super::bindings::{self, Event, HandlerError, HandlerPre, Reply};
use super::engine::Sandbox;
use super::error::{GuestError, LoadError, describe};
use super::limits::{LimitHit, Limits};
use super::state::{GuestOutput, GuestState, HandlerIdentity};
use std::sync::Arc;
use std::time::Instant;
use wasmtime::{Engine, Store, Trap, UpdateDeadline};

/// The longest handler error message kept; the rest is cut off.
const MAX_ERROR_MESSAGE_BYTES: usize = 1024;

/// A validated, compiled and pre-instantiated handler component. Cheap to share: each event
/// gets its own [`GuestInstance`].
pub struct Handler {
    identity: Arc<HandlerIdentity>,
    engine: Engine,
    /// Keeps the epoch advancing while this handler exists: without it no deadline fires.
    _ticker: Arc<super::engine::EpochTicker>,
    pre: HandlerPre<GuestState>,
    limits: Limits,
    /// `sha256:<hex>` of the component's bytes.
    version: String,
    output: GuestOutput,
    /// The budgets each instance is admitted against.
    admission: Arc<super::admission::Admission>,
}

impl Sandbox {
    /// Compiles, validates and pre-instantiates a handler component.
    pub fn load(&self, identity: HandlerIdentity, wasm: &[u8], limits: Limits) -> Result<Handler, LoadError> {
        self.admission.check(limits.max_memory_bytes)?;
        let inspection = self.inspect(wasm)?;
        let pre = self.validate(&inspection)?;
        Ok(Handler {
            admission: self.admission.clone(),
            identity: Arc::new(identity),
            engine: self.engine.clone(),
            _ticker: self.ticker.clone(),
            pre,
            limits,
            version: version_of(wasm),
            output: GuestOutput::default(),
        })
    }
}

/// A component's version: the SHA-256 of its bytes, as `sha256:<hex>`.
pub fn version_of(wasm: &[u8]) -> String {
    use sha2::Digest as _;
    use std::fmt::Write as _;
    // One buffer rather than a string per byte: receipts hash every line they write with this.
    let mut out = String::with_capacity("sha256:".len() + 64);
    out.push_str("sha256:");
    for byte in sha2::Sha256::digest(wasm) {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

impl Handler {
    /// Who this handler is.
    pub fn identity(&self) -> &HandlerIdentity {
        &self.identity
    }

    /// The component's version: `sha256:<hex>` of its bytes.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Sets what becomes of the handler's own text (default: withheld).
    pub fn with_output(mut self, output: GuestOutput) -> Self {
        self.output = output;
        self
    }

    /// Waits until one more instance of this handler fits the sandbox's instance slots and
    /// memory budgets (the handler's tenant's share included): backpressure, where running out
    /// of instances used to fail the call.
    pub async fn admit(&self) -> Option<Admitted> {
        self.admission.admit(&self.identity.tenant, self.limits.max_memory_bytes).await
    }

    /// Handles one event in a fresh instance that is dropped afterwards, so nothing one event
    /// leaves in memory reaches the next; admits it first.
    pub async fn handle(&self, event: &Event) -> Result<Option<Reply>, GuestError> {
        let admitted =
            self.admit().await.ok_or_else(|| GuestError::NoCapacity("the sandbox is closed".into()))?;
        self.handle_admitted(event, admitted).await
    }

    /// [`Handler::handle`], with an admission taken already; released when the instance is gone.
    pub async fn handle_admitted(
        &self,
        event: &Event,
        admitted: Admitted,
    ) -> Result<Option<Reply>, GuestError> {
        let _admitted = admitted;
        // The benchmark's native stand-in (see `native`): the reply without the sandbox.
        #[cfg(feature = "bench-native-handler")]
        return Ok(Some(super::native::echo(event)));
        #[cfg(not(feature = "bench-native-handler"))]
        {
            // Boxed: the timeout moves what it wraps, and a store and call in flight are large.
            let run = Box::pin(async {
                let mut instance = self.instantiate(&event.id).await?;
                instance.call(event).await
            });
            // Epoch interruption stops guest code; this stops a guest that waits inside a host
            // call (a clock subscription, say), where no epoch check runs.
            let backstop = self.limits.deadline() + 2 * super::engine::EPOCH_TICK;
            tokio::time::timeout(backstop, run)
                .await
                .unwrap_or(Err(GuestError::DeadlineExceeded { limit_ms: self.limits.deadline_ms }))
        }
    }

    /// Creates a fresh instance for one event. [`Handler::handle`] is what the pipeline uses;
    /// this is public so that benchmarks can separate instantiation from the call.
    pub async fn instantiate(&self, event_id: &str) -> Result<GuestInstance, GuestError> {
        let deadline = Instant::now() + self.limits.deadline();
        let state =
            GuestState::new(self.identity.clone(), event_id.to_owned(), &self.limits, deadline, self.output);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|store| {
            if Instant::now() >= store.data().deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                // Yield at every tick so the executor's other tasks, and the backstop timer,
                // keep running while a guest computes.
                Ok(UpdateDeadline::Yield(1))
            }
        });
        match self.pre.instantiate_async(&mut store).await {
            Ok(bindings) => {
                Ok(GuestInstance { store, bindings, limits: self.limits.clone(), output: self.output })
            }
            Err(error) => Err(classify(store.data(), &self.limits, &error, Stage::Instantiate, self.output)),
        }
    }
}

/// One live instance of a handler and its store.
pub struct GuestInstance {
    store: Store<GuestState>,
    bindings: bindings::Handler,
    limits: Limits,
    output: GuestOutput,
}

impl GuestInstance {
    /// Calls the handler's `handle` export under the handler's limits.
    pub async fn call(&mut self, event: &Event) -> Result<Option<Reply>, GuestError> {
        self.store.data_mut().deadline = Instant::now() + self.limits.deadline();
        self.store.set_epoch_deadline(1);
        let result = self.bindings.call_handle(&mut self.store, event).await;
        self.store.data().flush_output();
        match result {
            Ok(Ok(Some(reply))) => {
                let size = reply.data.len() as u64;
                if size > self.limits.max_reply_bytes {
                    let size = (self.output == GuestOutput::Forward).then_some(size);
                    return Err(GuestError::ReplyTooLarge { size, limit: self.limits.max_reply_bytes });
                }
                Ok(Some(reply))
            }
            Ok(Ok(None)) => Ok(None),
            Ok(Err(HandlerError::Retryable(message))) => {
                Err(GuestError::HandlerRetryable(self.own_text(message)))
            }
            Ok(Err(HandlerError::Permanent(message))) => {
                Err(GuestError::HandlerRejected(self.own_text(message)))
            }
            Err(error) => Err(classify(self.store.data(), &self.limits, &error, Stage::Call, self.output)),
        }
    }
}

impl GuestInstance {
    /// A message the handler wrote: it may be derived from personal data, so unless its output
    /// is forwarded only its size leaves the sandbox.
    fn own_text(&self, message: String) -> String {
        match self.output {
            GuestOutput::Forward => cut(message),
            // Not even its length: the guest chooses it, and a number can carry data.
            GuestOutput::Withhold => WITHHELD.to_string(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Instantiate,
    Call,
}

/// What stands for text the guest could choose when its output is withheld.
const WITHHELD: &str = "(withheld, see guest_output)";

/// Turns a wasmtime failure into what it means, using what the store saw happen. With the
/// output withheld, a failure is told by its category and keyhole's own limits only: the error
/// chain of a failed call can carry what the guest chose (an exit code, the length it asked a
/// host function for, symbol names in a backtrace), and any of it can encode personal data.
fn classify(
    state: &GuestState,
    limits: &Limits,
    error: &wasmtime::Error,
    stage: Stage,
    output: GuestOutput,
) -> GuestError {
    let forwarded = output == GuestOutput::Forward;
    let detail = || if forwarded { describe(error) } else { WITHHELD.to_string() };
    match state.limiter.hit {
        Some(LimitHit::Memory) => return GuestError::MemoryExceeded { limit_bytes: limits.max_memory_bytes },
        Some(LimitHit::TableElements) => {
            return GuestError::TableExceeded { limit: limits.max_table_elements };
        }
        None => {}
    }
    if state.log_budget_exceeded || state.output_exhausted(limits.max_log_bytes) {
        return GuestError::LogBudgetExceeded { limit_bytes: limits.max_log_bytes };
    }
    if let Some(trap) = error.downcast_ref::<Trap>() {
        return match trap {
            Trap::Interrupt => GuestError::DeadlineExceeded { limit_ms: limits.deadline_ms },
            // A trap code's text is wasmtime's own, one per code; the backtrace is left out.
            other => GuestError::Trapped(other.to_string()),
        };
    }
    if error.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some() {
        return GuestError::NoCapacity(describe(error));
    }
    if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return GuestError::Trapped(if forwarded {
            format!("the handler called exit({})", exit.0)
        } else {
            "the handler called exit".to_string()
        });
    }
    match stage {
        Stage::Instantiate => GuestError::InstantiationLimit(detail()),
        // Anything else that fails a call without a trap is the host refusing to lift what
        // the guest returned, or a host function refusing what the guest asked of it.
        Stage::Call => GuestError::MalformedReturn(detail()),
    }
}

/// Caps a guest-supplied message, on a character boundary.
fn cut(mut message: String) -> String {
    if message.len() > MAX_ERROR_MESSAGE_BYTES {
        let mut end = MAX_ERROR_MESSAGE_BYTES;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}
