//! keyhole runs third parties' WebAssembly handlers on personal data that Kafka events only
//! refer to.
//!
//! The data flows through these modules, in this order:
//!
//! - [`sandbox`]: the handler contract's host side; validates components at load and runs each
//!   event in a fresh, limited instance.
//! - [`telemetry`]: logging set-up shared by the binary and tests.
//!
//! The pipeline around the sandbox (envelope, resolver, dispatcher, Kafka source and sink)
//! lands with the reference pipeline.

pub mod sandbox;
pub mod telemetry;
