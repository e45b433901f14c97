//! What can go wrong when loading or running a handler, typed so that callers can decide.

/// A component was refused at load. Each variant names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes are not WebAssembly at all.
    #[error("not a WebAssembly file (no `\\0asm` header)")]
    NotWasm,
    /// A core module was given where a component is needed.
    #[error(
        "a core WebAssembly module, not a component: build the handler for `wasm32-wasip2` (or \
         wrap the module with `wasm-tools component new`)"
    )]
    CoreModule,
    /// The component does not validate or compile.
    #[error("not a valid component: {0}")]
    Invalid(String),
    /// The component imports interfaces a handler may not use.
    #[error(
        "imports {} which a handler may not use; a handler may import only keyhole:handler/log, \
         wasi:clocks, wasi:random, wasi:io and wasi:cli's environment, exit, stdin, stdout, \
         stderr and terminal interfaces",
        quoted(.imports)
    )]
    ForbiddenImports {
        /// Every offending import, by full name.
        imports: Vec<String>,
    },
    /// The component does not export the handler world's function.
    #[error(
        "does not export `{export}`: a handler must implement the world `keyhole:handler/handler` \
         (wit/handler.wit)"
    )]
    MissingExport {
        /// The missing export's name.
        export: &'static str,
    },
    /// The component's imports or exports exist but have the wrong types.
    #[error("does not match the handler contract keyhole:handler@0.1.0: {0}")]
    ContractMismatch(String),
    /// The component's code is beyond what keyhole compiles (see docs/writing-handlers.md);
    /// found by reading it, before any compile.
    #[error("has {value} {what}; at most {max} are accepted")]
    OverCodeLimit {
        /// What was counted.
        what: &'static str,
        /// How many the component has.
        value: u64,
        /// The limit.
        max: u64,
    },
    /// Compiling the component took more than its budget (`[sandbox]`
    /// `compile_cpu_seconds`, `compile_wall_seconds`, `compile_memory_bytes`).
    #[error("compiling it took more than {budget}; it was stopped and refused")]
    CompileBudgetExceeded {
        /// Which budget, e.g. `30 s of CPU time`.
        budget: String,
    },
    /// keyhole could not run its compiler: a problem of this keyhole, not of the component.
    #[error("keyhole cannot compile components now: {0}")]
    CompilerUnavailable(String),
    /// The handler's memory limit is above a memory budget of the sandbox: no instance of it
    /// could ever be admitted.
    #[error(transparent)]
    OverMemoryBudget(#[from] super::admission::TooLarge),
}

impl LoadError {
    /// A short, stable name for API problems and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            LoadError::NotWasm => "not_wasm",
            LoadError::CoreModule => "core_module",
            LoadError::Invalid(_) => "invalid_component",
            LoadError::ForbiddenImports { .. } => "forbidden_imports",
            LoadError::MissingExport { .. } => "missing_export",
            LoadError::ContractMismatch(_) => "contract_mismatch",
            LoadError::OverCodeLimit { .. } => "over_code_limit",
            LoadError::CompileBudgetExceeded { .. } => "compile_budget_exceeded",
            LoadError::CompilerUnavailable(_) => "compiler_unavailable",
            LoadError::OverMemoryBudget(_) => "over_memory_budget",
        }
    }
}

fn quoted(names: &[String]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

/// A call of a handler failed. [`GuestError::is_retryable`] says whether handling the same event
/// again may succeed.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The handler classified its failure as temporary.
    #[error("the handler failed and asked to retry: {0}")]
    HandlerRetryable(String),
    /// The handler rejected the event for good.
    #[error("the handler rejected the event: {0}")]
    HandlerRejected(String),
    /// Instantiation and the call together ran past the handler's deadline.
    #[error("the handler ran past its deadline of {limit_ms} ms")]
    DeadlineExceeded {
        /// The deadline, in milliseconds.
        limit_ms: u64,
    },
    /// The handler asked for more linear memory than its limit.
    #[error("the handler exceeded its memory limit of {limit_bytes} bytes")]
    MemoryExceeded {
        /// The limit, in bytes.
        limit_bytes: u64,
    },
    /// The handler grew a table past its limit.
    #[error("the handler exceeded its limit of {limit} table elements")]
    TableExceeded {
        /// The limit, in elements.
        limit: u32,
    },
    /// The component needs more instances, tables or memories than its limits allow.
    #[error("the handler could not be instantiated within its limits: {0}")]
    InstantiationLimit(String),
    /// The handler's reply is larger than its limit.
    #[error("the handler's reply{} exceeds its limit of {limit} bytes", .size.map(|s| format!(" of {s} bytes")).unwrap_or_default())]
    ReplyTooLarge {
        /// The reply's size, in bytes; `None` when the handler's output is withheld (the guest
        /// chooses it, and a number can carry data).
        size: Option<u64>,
        /// The limit, in bytes.
        limit: u64,
    },
    /// The handler logged or printed more than its budget.
    #[error("the handler wrote more than its log budget of {limit_bytes} bytes")]
    LogBudgetExceeded {
        /// The budget, in bytes.
        limit_bytes: u64,
    },
    /// The handler trapped: a panic, `unreachable`, a bad memory access, a call to exit.
    #[error("the handler trapped: {0}")]
    Trapped(String),
    /// The handler returned a value that breaks the component model's rules (for example a
    /// string that is not UTF-8).
    #[error("the handler returned a malformed result: {0}")]
    MalformedReturn(String),
    /// Every sandbox slot is in use; the event can be tried again when one frees up.
    #[error("no sandbox slot is free: {0}")]
    NoCapacity(String),
}

impl GuestError {
    /// Every [`GuestError::kind`], so that metrics can show each at 0 before it first happens.
    pub const KINDS: &'static [&'static str] = &[
        "handler_retryable",
        "handler_rejected",
        "deadline_exceeded",
        "memory_exceeded",
        "table_exceeded",
        "instantiation_limit",
        "reply_too_large",
        "log_budget_exceeded",
        "trapped",
        "malformed_return",
        "no_capacity",
    ];

    /// Whether handling the same event again may succeed. Resource exhaustion by the guest is
    /// not retryable: the same code on the same data exceeds the same limit again.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            GuestError::HandlerRetryable(_) | GuestError::DeadlineExceeded { .. } | GuestError::NoCapacity(_)
        )
    }

    /// A short, stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            GuestError::HandlerRetryable(_) => "handler_retryable",
            GuestError::HandlerRejected(_) => "handler_rejected",
            GuestError::DeadlineExceeded { .. } => "deadline_exceeded",
            GuestError::MemoryExceeded { .. } => "memory_exceeded",
            GuestError::TableExceeded { .. } => "table_exceeded",
            GuestError::InstantiationLimit(_) => "instantiation_limit",
            GuestError::ReplyTooLarge { .. } => "reply_too_large",
            GuestError::LogBudgetExceeded { .. } => "log_budget_exceeded",
            GuestError::Trapped(_) => "trapped",
            GuestError::MalformedReturn(_) => "malformed_return",
            GuestError::NoCapacity(_) => "no_capacity",
        }
    }
}

/// The sandbox itself could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The engine could not be created with the requested settings.
    #[error("cannot create the WebAssembly engine: {0}")]
    Engine(String),
    /// The host interfaces could not be linked.
    #[error("cannot link the host interfaces: {0}")]
    Link(String),
}

/// Formats a wasmtime error with its whole chain of causes on one line.
pub(crate) fn describe(error: &wasmtime::Error) -> String {
    error.chain().map(|e| e.to_string()).collect::<Vec<_>>().join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of each variant. The match below has no wildcard: a new variant does not compile
    /// until it is added here, and then the assertion asks for its kind in `KINDS`.
    fn one_of_each() -> Vec<GuestError> {
        let all = vec![
            GuestError::HandlerRetryable(String::new()),
            GuestError::HandlerRejected(String::new()),
            GuestError::DeadlineExceeded { limit_ms: 1 },
            GuestError::MemoryExceeded { limit_bytes: 1 },
            GuestError::TableExceeded { limit: 1 },
            GuestError::InstantiationLimit(String::new()),
            GuestError::ReplyTooLarge { size: None, limit: 1 },
            GuestError::LogBudgetExceeded { limit_bytes: 1 },
            GuestError::Trapped(String::new()),
            GuestError::MalformedReturn(String::new()),
            GuestError::NoCapacity(String::new()),
        ];
        for error in &all {
            match error {
                GuestError::HandlerRetryable(_)
                | GuestError::HandlerRejected(_)
                | GuestError::DeadlineExceeded { .. }
                | GuestError::MemoryExceeded { .. }
                | GuestError::TableExceeded { .. }
                | GuestError::InstantiationLimit(_)
                | GuestError::ReplyTooLarge { .. }
                | GuestError::LogBudgetExceeded { .. }
                | GuestError::Trapped(_)
                | GuestError::MalformedReturn(_)
                | GuestError::NoCapacity(_) => {}
            }
        }
        all
    }

    #[test]
    fn kinds_lists_the_kind_of_every_variant_and_nothing_else() {
        let kinds: std::collections::BTreeSet<&str> = one_of_each().iter().map(GuestError::kind).collect();
        let listed: std::collections::BTreeSet<&str> = GuestError::KINDS.iter().copied().collect();
        assert_eq!(kinds, listed);
        assert_eq!(listed.len(), GuestError::KINDS.len(), "KINDS lists a kind twice");
    }
}
