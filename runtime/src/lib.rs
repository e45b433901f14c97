//! keyhole runs third parties' WebAssembly handlers on personal data that Kafka events only
//! refer to.
//!
//! The data flows through these modules, in this order:
//!
//! - [`config`]: the operator's configuration, validated as a whole before anything starts.
//! - [`envelope`]: a Kafka record to a CloudEvent carrying a reference (binary and structured
//!   modes); hostile references are refused here, before any request.
//! - [`resolve`]: asks the data owner for the referenced data as the consuming service; the
//!   owner's answer decides (released, consent denied, gone, or try again).
//! - [`receipt`]: an access receipt for every answer of a data owner (who asked, why, what was
//!   decided), written before the answer is acted on.
//! - [`sandbox`]: runs the handler on the released data in a fresh, limited instance.
//! - [`dispatch`]: one event through resolve and sandbox to its outcome, with retries; per-key
//!   ordering and bounded concurrency.
//! - [`audit`]: what was decided for each event, for the data owner's records.
//! - [`kafka`]: the consumer, rebalances, and offsets stored only once every earlier event of
//!   the partition is finished.
//! - [`pipeline`]: wires the above together for every configured binding and for every handler
//!   uploaded to the registry, and runs them until shutdown; activating a version swaps it in
//!   place.
//! - [`registry`]: tenants, their grants and tokens, their handlers' uploaded versions; kept in a
//!   local directory.
//! - [`admin`]: the HTTP admin API over the registry and the pipeline (uploads, grants, metrics,
//!   health), described by an OpenAPI document.
//! - [`deploy`]: the third party's client of the admin API (`keyhole deploy`).
//! - [`publish`]: the producer's side, for data owners and requesters (`keyhole publish`).
//! - [`simulate`]: the same pipeline on an in-process broker and sample data owner, for
//!   `keyhole dev` and `keyhole demo`.
//! - [`telemetry`]: logging set-up, the Prometheus metrics and their names, trace context.

pub mod admin;
pub mod audit;
pub mod config;
pub mod deploy;
pub mod dispatch;
pub mod envelope;
pub mod kafka;
pub mod pipeline;
pub mod publish;
pub mod receipt;
pub mod registry;
pub mod resolve;
pub mod sandbox;
pub mod simulate;
pub mod telemetry;
