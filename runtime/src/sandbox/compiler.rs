//! Compiling an untrusted component in a child process, within a budget.
//!
//! A compile inside keyhole's process cannot be interrupted: Cranelift has no cancellation, and
//! a thread cannot be killed. So a component from outside (an upload, a version another replica
//! announced, `keyhole check`) is compiled by `keyhole compile-component`, a child that reads the
//! component on stdin and writes wasmtime's serialized component on stdout. The child runs at a
//! lower priority, with no environment, under `RLIMIT_CPU` (`compile_cpu_seconds`), `RLIMIT_AS`
//! (`compile_memory_bytes`) and no core dumps, and is killed after `compile_wall_seconds` or as
//! soon as whoever waits for it goes away (an upload whose client disconnected): the future owns
//! the child, and dropping it kills the child. Nothing it compiled is kept unless it is accepted.

use super::engine::{Sandbox, SandboxConfig};
use super::error::{LoadError, SandboxError, describe};
use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use wasmtime::component::Component;

/// The hidden subcommand of the `keyhole` binary that compiles one component.
pub const COMPILE_SUBCOMMAND: &str = "compile-component";

/// The child's exit code for a component that does not compile (its reason on stderr).
const EXIT_INVALID: u8 = 65;

/// Niceness of the compiler: running handlers get the cores first.
const NICENESS: i32 = 10;

/// The most of the child's stderr kept for a refusal's reason.
const MAX_REASON_BYTES: u64 = 4096;

/// How untrusted components are compiled.
pub(crate) struct Compiler {
    /// The `keyhole` executable.
    program: PathBuf,
    cpu_seconds: u64,
    wall: Duration,
    memory_bytes: u64,
    /// Compiles at once across tenants, each child up to `memory_bytes`.
    slots: tokio::sync::Semaphore,
}

impl Compiler {
    pub(crate) fn new(config: &SandboxConfig) -> Result<Self, SandboxError> {
        let at_least_one = [
            ("compile_cpu_seconds", config.compile_cpu_seconds),
            ("compile_wall_seconds", config.compile_wall_seconds),
            ("compile_memory_bytes", config.compile_memory_bytes),
            ("max_concurrent_compiles", config.max_concurrent_compiles.into()),
        ];
        if let Some((key, _)) = at_least_one.iter().find(|(_, value)| *value == 0) {
            return Err(SandboxError::Engine(format!("sandbox.{key} must be at least 1")));
        }
        let program = match &config.compiler {
            Some(program) => program.clone(),
            None => std::env::current_exe()
                .map_err(|e| SandboxError::Engine(format!("cannot find keyhole's executable: {e}")))?,
        };
        Ok(Compiler {
            program,
            cpu_seconds: config.compile_cpu_seconds,
            wall: Duration::from_secs(config.compile_wall_seconds),
            memory_bytes: config.compile_memory_bytes,
            slots: tokio::sync::Semaphore::new(config.max_concurrent_compiles as usize),
        })
    }
}

impl Sandbox {
    /// Compiles `wasm` in a child process within the budget. Dropping the future kills the child.
    pub(crate) async fn compile_bounded(&self, wasm: &[u8]) -> Result<Component, LoadError> {
        let compiler = &self.compiler;
        let _slot =
            compiler.slots.acquire().await.map_err(|e| LoadError::CompilerUnavailable(e.to_string()))?;
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            LoadError::CompilerUnavailable(format!("{what} {}: {e}", compiler.program.display()))
        };
        let mut child = tokio::process::Command::new(&compiler.program)
            .arg(COMPILE_SUBCOMMAND)
            // Nothing of keyhole's environment (secrets named by `{ env = ... }`) reaches a process
            // that reads untrusted bytes.
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| unavailable("cannot start", &e))?;
        // The child waits for its input, so these hold before it compiles anything.
        let pid = child.id().and_then(|id| rustix::process::Pid::from_raw(id as i32));
        self.limit(pid).map_err(|e| unavailable("cannot limit", &e))?;
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(unavailable("no pipes to", &"spawned without them"));
        };
        let run = async {
            let feed = async {
                // A child that stops reading has failed; its exit status says why.
                let _ = stdin.write_all(wasm).await;
                drop(stdin);
            };
            let mut output = Vec::new();
            let mut reason = Vec::new();
            let (mut stdout, mut stderr) =
                (stdout.take(compiler.memory_bytes), stderr.take(MAX_REASON_BYTES));
            let read = stdout.read_to_end(&mut output);
            let explain = stderr.read_to_end(&mut reason);
            let ((), read, _) = tokio::join!(feed, read, explain);
            let status = child.wait().await;
            (status, read.map(|_| output), reason)
        };
        let started = std::time::Instant::now();
        let Ok((status, output, reason)) = tokio::time::timeout(compiler.wall, run).await else {
            // Dropping `run` dropped the child, which kills it.
            return Err(LoadError::CompileBudgetExceeded {
                budget: format!("{} s of time", compiler.wall.as_secs()),
            });
        };
        let status = status.map_err(|e| unavailable("lost", &e))?;
        tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, %status, "Compiler finished.");
        if let Some(signal) = std::os::unix::process::ExitStatusExt::signal(&status) {
            let budget = match signal {
                // RLIMIT_CPU: SIGXCPU at the soft limit, SIGKILL at the hard one.
                24 | 9 => format!("{} s of CPU time", compiler.cpu_seconds),
                // An allocation beyond RLIMIT_AS aborts.
                6 => format!("{} bytes of memory", compiler.memory_bytes),
                other => return Err(LoadError::Invalid(format!("the compiler died on it (signal {other})"))),
            };
            return Err(LoadError::CompileBudgetExceeded { budget });
        }
        match status.code() {
            Some(0) => {}
            Some(code) if code == i32::from(EXIT_INVALID) => {
                let reason = String::from_utf8_lossy(&reason).trim().to_string();
                return Err(LoadError::Invalid(reason));
            }
            _ => return Err(unavailable("failed:", &status)),
        }
        let output = output.map_err(|e| unavailable("no output from", &e))?;
        // Loading a large compiled component maps and relocates megabytes: a blocking thread's work.
        let engine = self.engine.clone();
        let loaded = tokio::task::spawn_blocking(move || deserialize(&engine, &output)).await;
        loaded
            .map_err(|e| unavailable("loading the output of", &e))?
            .map_err(|e| unavailable("unreadable output from", &e))
    }

    /// Sets the child's budget before it reads its input.
    fn limit(&self, pid: Option<rustix::process::Pid>) -> std::io::Result<()> {
        use rustix::process::{Resource, Rlimit, prlimit, setpriority_process};
        let pid = pid.ok_or_else(|| std::io::Error::other("the child has no process id"))?;
        let compiler = &self.compiler;
        let cpu = compiler.cpu_seconds;
        // SIGXCPU at the budget; SIGKILL a second later should the child catch it.
        prlimit(Some(pid), Resource::Cpu, Rlimit { current: Some(cpu), maximum: Some(cpu + 1) })?;
        let memory = Some(compiler.memory_bytes);
        prlimit(Some(pid), Resource::As, Rlimit { current: memory, maximum: memory })?;
        prlimit(Some(pid), Resource::Core, Rlimit { current: Some(0), maximum: Some(0) })?;
        setpriority_process(Some(pid), NICENESS)?;
        Ok(())
    }
}

/// Loads what the compiler child wrote.
#[allow(unsafe_code)]
fn deserialize(engine: &wasmtime::Engine, bytes: &[u8]) -> Result<Component, String> {
    // SAFETY: `Component::deserialize` trusts its input to be wasmtime's own output. These bytes
    // are: they come only from the pipe of the child this process started a moment ago, running
    // this same keyhole build (or the `keyhole` the operator names in `sandbox.compiler`), which
    // wrote `Component::serialize()` of an engine with the same settings; they are never read from
    // disk, the network or the registry, and wasmtime checks its version and the engine's settings
    // in their header before loading anything.
    unsafe { Component::deserialize(engine, bytes) }.map_err(|e| describe(&e))
}

/// `keyhole compile-component`: reads a component on stdin, compiles it with the engine settings
/// every keyhole uses, and writes the serialized component on stdout. Exits 65 with the reason on
/// stderr when the component does not compile. Its limits are set by the process that started it.
pub fn compile_child() -> ExitCode {
    let mut wasm = Vec::new();
    if let Err(error) = std::io::stdin().lock().read_to_end(&mut wasm) {
        eprintln!("cannot read the component: {error}");
        return ExitCode::FAILURE;
    }
    let engine = match super::engine::engine(&SandboxConfig::default(), false) {
        Ok(engine) => engine,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    let compiled = Component::new(&engine, &wasm).and_then(|component| component.serialize());
    match compiled {
        Ok(bytes) => {
            match std::io::stdout().lock().write_all(&bytes).and_then(|()| std::io::stdout().flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("cannot write the compiled component: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(error) => {
            eprintln!("{}", describe(&error));
            ExitCode::from(EXIT_INVALID)
        }
    }
}
