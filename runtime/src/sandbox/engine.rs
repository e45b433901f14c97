//! The one engine shared by every handler, its linker, and the epoch ticker behind deadlines.

use super::error::SandboxError;
use super::state::GuestState;
use serde::Deserialize;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances: the granularity of handler deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Linear memory kept resident (and zeroed) per pooled slot between instances.
const KEEP_RESIDENT_BYTES: usize = 1 << 20;

/// How instance memory is allocated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AllocationChoice {
    /// The pooling allocator, or on-demand allocation where the pool's address space cannot be
    /// reserved (for example under a low `ulimit -v`).
    #[default]
    Auto,
    /// The pooling allocator, or fail.
    Pooling,
    /// Allocate each instance's memory when it is created.
    OnDemand,
}

/// The allocator actually in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocation {
    /// Instances come from pre-reserved slots: fast, bounded in number.
    Pooling,
    /// Instances are allocated when created.
    OnDemand,
}

/// Engine-wide settings: the ceilings under which every handler's own limits must fit.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// The allocation strategy.
    pub allocation: AllocationChoice,
    /// Handler instances alive at once across all handlers (pool size). Events beyond it wait
    /// for a free instance (once their data owner released their data).
    pub max_concurrent_instances: u32,
    /// The largest linear memory any handler may be given, in bytes. At most
    /// `tenant_memory_budget_bytes`.
    pub max_memory_bytes_ceiling: u64,
    /// Linear memory every instance alive at once may grow to, together, in bytes: each
    /// instance is admitted against its handler's `max_memory_bytes`, and events wait while the
    /// budget is spent.
    pub memory_budget_bytes: u64,
    /// One tenant's share of `memory_budget_bytes`: what one tenant's instances alive at once may
    /// grow to, together.
    pub tenant_memory_budget_bytes: u64,
    /// CPU time one compile of an uploaded component may take, over all its threads, in seconds;
    /// a compile that takes more is stopped and the component refused.
    pub compile_cpu_seconds: u64,
    /// Time one compile may take from start to end, in seconds (waiting for a core included).
    pub compile_wall_seconds: u64,
    /// Address space of the compiler process, in bytes: a compile that needs more fails and the
    /// component is refused.
    pub compile_memory_bytes: u64,
    /// Compiles running at once across tenants. Each tenant compiles one component at a time,
    /// so this many tenants uploading at once are needed before another one waits.
    pub max_concurrent_compiles: u32,
    /// The program run as the compiler (`<program> compile-component`): by default this keyhole
    /// executable. Embedders and tests that run keyhole in another program name the `keyhole`
    /// binary here.
    pub compiler: Option<std::path::PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            allocation: AllocationChoice::Auto,
            max_concurrent_instances: 256,
            max_memory_bytes_ceiling: 256 << 20,
            memory_budget_bytes: 512 << 20,
            tenant_memory_budget_bytes: 256 << 20,
            compile_cpu_seconds: 60,
            compile_wall_seconds: 120,
            compile_memory_bytes: 4 << 30,
            max_concurrent_compiles: 4,
            compiler: None,
        }
    }
}

/// The shared engine and linker; handlers are loaded through it.
pub struct Sandbox {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<GuestState>,
    allocation: Allocation,
    /// Advances the engine's epoch. Shared with every loaded handler: deadlines must keep firing
    /// for as long as any handler can run, even after the sandbox itself is dropped.
    pub(crate) ticker: Arc<EpochTicker>,
    /// Components compiled lately, by digest.
    pub(crate) compiled: super::compiled::CompiledCache,
    /// How untrusted components are compiled: in a child process, within a budget.
    pub(crate) compiler: super::compiler::Compiler,
    /// The instance slots and memory budgets every handler's instances are admitted against.
    pub(crate) admission: Arc<super::admission::Admission>,
}

impl Sandbox {
    /// Creates the engine, links the host interfaces and starts the epoch ticker.
    pub fn new(config: &SandboxConfig) -> Result<Self, SandboxError> {
        let (engine, allocation) = match config.allocation {
            AllocationChoice::OnDemand => (engine(config, false)?, Allocation::OnDemand),
            AllocationChoice::Pooling => (engine(config, true)?, Allocation::Pooling),
            AllocationChoice::Auto => match engine(config, true) {
                Ok(engine) => (engine, Allocation::Pooling),
                Err(error) => {
                    tracing::warn!(%error, "Pooling allocator unavailable; allocating on demand.");
                    (engine(config, false)?, Allocation::OnDemand)
                }
            },
        };
        let compiler = super::compiler::Compiler::new(config)?;
        let linker = linker(&engine)?;
        let ticker = EpochTicker::start(engine.clone())
            .map_err(|e| SandboxError::Engine(format!("cannot start the epoch ticker: {e}")))?;
        let admission = super::admission::Admission::new(
            config.max_concurrent_instances,
            config.memory_budget_bytes,
            config.tenant_memory_budget_bytes,
        );
        Ok(Sandbox {
            admission: Arc::new(admission),
            engine,
            linker,
            allocation,
            ticker: Arc::new(ticker),
            compiled: Default::default(),
            compiler,
        })
    }

    /// The allocator in use.
    pub fn allocation(&self) -> Allocation {
        self.allocation
    }
}

/// The engine: with the pooling allocator for running handlers, without it in the compiler
/// process. Both compile alike, so what the compiler serializes the other loads.
pub(super) fn engine(config: &SandboxConfig, pooling: bool) -> Result<Engine, SandboxError> {
    let mut wasm = Config::new();
    wasm.epoch_interruption(true)
        // Handlers are plain components: no component-model async, so no per-store state for it.
        .concurrency_support(false)
        .max_wasm_stack(1 << 20);
    if pooling {
        let instances = config.max_concurrent_instances;
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(instances)
            // Components built by wit-bindgen, componentize-py or jco hold several core
            // instances, memories and tables each.
            .max_core_instances_per_component(64)
            .max_memories_per_component(8)
            .max_tables_per_component(64)
            .total_core_instances(instances.saturating_mul(16))
            .total_memories(instances.saturating_mul(2))
            .total_tables(instances.saturating_mul(16))
            .total_stacks(instances)
            .max_memory_size(usize::try_from(config.max_memory_bytes_ceiling).unwrap_or(usize::MAX))
            .table_elements(1 << 20)
            // Most of a fresh instance's cost is faulting its pages in. Reset the low pages of a
            // returned slot with memset (or, where the kernel has PAGEMAP_SCAN, only the dirty
            // ones) instead of discarding them: the next event finds them resident and zeroed, so
            // nothing one event left behind reaches the next.
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
            .table_keep_resident(KEEP_RESIDENT_BYTES / 16)
            .pagemap_scan(wasmtime::Enabled::Auto)
            .max_unused_warm_slots(instances.min(64));
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    Engine::new(&wasm).map_err(|e| SandboxError::Engine(super::error::describe(&e)))
}

/// Links exactly the interfaces a handler may import: clocks, random, the harmless parts of
/// `wasi:cli`, `wasi:io`, and keyhole's log. Filesystem and sockets are never linked, so even a
/// component that slipped past validation could not instantiate with them.
fn linker(engine: &Engine) -> Result<Linker<GuestState>, SandboxError> {
    use wasmtime_wasi::cli::{WasiCli, WasiCliView};
    use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
    use wasmtime_wasi::p2::bindings::{cli, clocks, io, random};
    use wasmtime_wasi::random::{WasiRandom, WasiRandomView};

    fn io_table(state: &mut GuestState) -> &mut wasmtime::component::ResourceTable {
        wasmtime_wasi::WasiView::ctx(state).table
    }

    let mut l = Linker::<GuestState>::new(engine);
    let link = |r: wasmtime::Result<()>| r.map_err(|e| SandboxError::Link(super::error::describe(&e)));
    link(clocks::wall_clock::add_to_linker::<_, WasiClocks>(&mut l, GuestState::clocks))?;
    link(clocks::monotonic_clock::add_to_linker::<_, WasiClocks>(&mut l, GuestState::clocks))?;
    link(random::random::add_to_linker::<_, WasiRandom>(&mut l, GuestState::random))?;
    link(random::insecure::add_to_linker::<_, WasiRandom>(&mut l, GuestState::random))?;
    link(random::insecure_seed::add_to_linker::<_, WasiRandom>(&mut l, GuestState::random))?;
    link(cli::exit::add_to_linker::<_, WasiCli>(&mut l, GuestState::cli))?;
    link(cli::environment::add_to_linker::<_, WasiCli>(&mut l, GuestState::cli))?;
    link(cli::stdin::add_to_linker::<_, WasiCli>(&mut l, GuestState::cli))?;
    link(cli::stdout::add_to_linker::<_, WasiCli>(&mut l, GuestState::cli))?;
    link(cli::stderr::add_to_linker::<_, WasiCli>(&mut l, GuestState::cli))?;
    link(cli::terminal_input::add_to_linker::<_, WasiCli>(&mut l, GuestState::cli))?;
    link(cli::terminal_output::add_to_linker::<_, WasiCli>(&mut l, GuestState::cli))?;
    link(cli::terminal_stdin::add_to_linker::<_, WasiCli>(&mut l, GuestState::cli))?;
    link(cli::terminal_stdout::add_to_linker::<_, WasiCli>(&mut l, GuestState::cli))?;
    link(cli::terminal_stderr::add_to_linker::<_, WasiCli>(&mut l, GuestState::cli))?;
    // The async flavour of wasi:io: handlers run on a fiber inside the executor, where the
    // blocking flavour would try to start a runtime within the runtime.
    link(io::error::add_to_linker::<_, HasIoTable>(&mut l, io_table))?;
    link(io::poll::add_to_linker::<_, HasIoTable>(&mut l, io_table))?;
    link(io::streams::add_to_linker::<_, HasIoTable>(&mut l, io_table))?;
    link(super::bindings::Handler::add_to_linker::<_, HasSelf<GuestState>>(&mut l, |s| s))?;
    Ok(l)
}

/// Lets the `wasi:io` bindings borrow the store's resource table.
struct HasIoTable;

impl wasmtime::component::HasData for HasIoTable {
    type Data<'a> = &'a mut wasmtime::component::ResourceTable;
}

/// Advances the engine's epoch every [`EPOCH_TICK`] on its own thread; stopped and joined when
/// dropped.
pub(crate) struct EpochTicker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> std::io::Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new().name("keyhole-epoch".into()).spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(EPOCH_TICK) {
                engine.increment_epoch();
            }
        })?;
        Ok(EpochTicker { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
