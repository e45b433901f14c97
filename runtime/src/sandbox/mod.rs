//! The sandbox: runs an untrusted handler component on one event at a time.
//!
//! One [`Sandbox`] (engine, linker, epoch ticker) serves every handler. [`Sandbox::load`]
//! validates a component against the contract in `wit/handler.wit` and pre-instantiates it;
//! [`Handler::handle`] runs one event in a fresh store and instance under the handler's
//! [`Limits`], and maps every way a guest can fail to a [`GuestError`].

// Generated code: its public items carry the WIT doc comments where the WIT has them.
mod admission;
#[allow(missing_docs)]
mod bindings;
pub mod code_limits;
mod compiled;
mod compiler;
mod engine;
mod error;
mod handler;
mod inspect;
mod limits;
#[cfg(feature = "bench-native-handler")]
mod native;
mod state;

pub use admission::Admitted;
pub use bindings::{Event, Extension, Reply};
pub use compiler::{COMPILE_SUBCOMMAND, compile_child};
pub use engine::{Allocation, AllocationChoice, EPOCH_TICK, Sandbox, SandboxConfig};
pub use error::{GuestError, LoadError, SandboxError};
pub use handler::{GuestInstance, Handler, version_of};
pub use inspect::{CONTRACT, ComponentReport, HANDLER_EXPORT, Inspection};
pub use limits::Limits;
pub use state::{GuestOutput, HandlerIdentity};
