//! The state of one store: one event's WASI context, its budgets and who the guest is.

use super::bindings::{self, Level};
use super::limits::{GuestLimiter, Limits};
use std::sync::Arc;
use std::time::Instant;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{ResourceTable, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// Who a handler is, for logs and for the data owner's records.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HandlerIdentity {
    /// The third party that owns the handler.
    pub tenant: String,
    /// The handler's name, unique within its tenant.
    pub handler: String,
}

/// What becomes of the text a handler writes: its `log` calls, its stdout and stderr, and the
/// messages of the errors it returns. A handler writes that text while holding personal data, so
/// by default none of it leaves the sandbox: keyhole records only how much was written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestOutput {
    /// Only sizes and levels reach keyhole's logs; error messages are replaced by their size.
    #[default]
    Withhold,
    /// The text reaches keyhole's logs (target `keyhole::guest`), audit records and dead-letter
    /// headers. For `keyhole dev`, and for operators who accept that a handler may log personal
    /// data.
    Forward,
}

/// Everything a store holds for one event. Dropped with the store after the event, so nothing
/// outlives it.
pub(crate) struct GuestState {
    /// The WASI context: no preopened directories, no environment, no arguments, no sockets,
    /// an empty stdin and captured stdout/stderr.
    wasi: WasiCtx,
    /// Resources the guest holds through WASI (streams, pollables).
    table: ResourceTable,
    /// Enforces memory, table and instance limits.
    pub(crate) limiter: GuestLimiter,
    /// Captured stdout, capped at the log budget.
    pub(crate) stdout: MemoryOutputPipe,
    /// Captured stderr, capped at the log budget.
    pub(crate) stderr: MemoryOutputPipe,
    /// Bytes the guest may still log through the `log` import.
    log_budget: u64,
    /// Set once the guest tried to log past its budget.
    pub(crate) log_budget_exceeded: bool,
    /// When the epoch callback stops the guest.
    pub(crate) deadline: Instant,
    /// Tags the guest's log lines.
    identity: Arc<HandlerIdentity>,
    /// Tags the guest's log lines; the CloudEvents id of the event being handled.
    event_id: String,
    /// Whether the guest's text may be logged.
    output: GuestOutput,
}

impl GuestState {
    pub(crate) fn new(
        identity: Arc<HandlerIdentity>,
        event_id: String,
        limits: &Limits,
        deadline: Instant,
        output: GuestOutput,
    ) -> Self {
        let capture = usize::try_from(limits.max_log_bytes).unwrap_or(usize::MAX);
        let stdout = MemoryOutputPipe::new(capture);
        let stderr = MemoryOutputPipe::new(capture);
        // A bare builder grants nothing: no preopens, no environment, no arguments, no network
        // (and the sockets interfaces are not even linked).
        let wasi = WasiCtxBuilder::new().stdout(stdout.clone()).stderr(stderr.clone()).build();
        GuestState {
            wasi,
            table: ResourceTable::new(),
            limiter: GuestLimiter::new(limits),
            stdout,
            stderr,
            log_budget: limits.max_log_bytes,
            log_budget_exceeded: false,
            deadline,
            identity,
            event_id,
            output,
        }
    }

    /// Whether stdout or stderr ran out of budget (the pipe refuses writes once full).
    pub(crate) fn output_exhausted(&self, limit: u64) -> bool {
        let full = |pipe: &MemoryOutputPipe| pipe.contents().len() as u64 >= limit;
        limit > 0 && (full(&self.stdout) || full(&self.stderr))
    }

    /// Writes what the guest printed to the host's log, at debug level (only its size when the
    /// output is withheld).
    pub(crate) fn flush_output(&self) {
        for (stream, pipe) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let bytes = pipe.contents();
            if bytes.is_empty() {
                continue;
            }
            // Withheld: not even the size, which the guest chooses (a number can carry data).
            let shown = (self.output == GuestOutput::Forward).then(|| String::from_utf8_lossy(&bytes));
            tracing::debug!(
                target: "keyhole::guest",
                tenant = %self.identity.tenant,
                handler = %self.identity.handler,
                event_id = %self.event_id,
                stream,
                bytes = shown.as_ref().map(|_| bytes.len()),
                output = shown.as_deref().map(tracing::field::debug),
                "{}",
                if shown.is_some() { "Handler output." } else { "Handler output withheld." }
            );
        }
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl bindings::keyhole::handler::types::Host for GuestState {}

impl bindings::keyhole::handler::log::Host for GuestState {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let size = message.len() as u64;
        if size > self.log_budget {
            self.log_budget_exceeded = true;
            wasmtime::bail!("log budget exhausted");
        }
        self.log_budget -= size;
        let (tenant, handler, event_id) = (&self.identity.tenant, &self.identity.handler, &self.event_id);
        if self.output == GuestOutput::Withhold {
            tracing::debug!(target: "keyhole::guest", %tenant, %handler, %event_id, level = ?level, "Handler log withheld.");
            return Ok(());
        }
        // `?message` escapes control characters, so a guest cannot forge log lines.
        macro_rules! emit {
            ($level:expr) => {
                tracing::event!(target: "keyhole::guest", $level, %tenant, %handler, %event_id, message = ?message)
            };
        }
        match level {
            Level::Trace => emit!(tracing::Level::TRACE),
            Level::Debug => emit!(tracing::Level::DEBUG),
            Level::Info => emit!(tracing::Level::INFO),
            Level::Warn => emit!(tracing::Level::WARN),
            Level::Error => emit!(tracing::Level::ERROR),
        }
        Ok(())
    }
}
