//! keyhole runs third parties' WebAssembly handlers on personal data that Kafka events only
//! refer to.
//!
//! An event flows through these modules, in this order (docs/architecture.md has the map):
//!
//! - [`kafka`]: the consumer, rebalances, offsets stored only once every earlier event of the
//!   partition is finished; the producer of replies and dead letters.
//! - [`cloudevents`]: a Kafka record to a CloudEvent carrying a reference (binary and
//!   structured modes); hostile references are refused here, before any request.
//! - [`resolve`]: asks the data owner for the referenced data as the consuming service; the
//!   owner's answer decides (released, consent denied, gone, or try again).
//! - [`sandbox`]: runs the handler on the released data in a fresh, limited instance.
//! - [`records`]: the access receipt of every answer and the audit record of every event.
//! - [`engine`]: one event through all of the above to its reply or dead letter and its
//!   acknowledgement, per binding and delivery mode; the supervisor of uploaded handlers.
//!
//! Around the flow:
//!
//! - [`model`]: names and how they are joined (consumer groups, topics, metric labels).
//! - [`config`]: the operator's configuration, validated as a whole before anything starts.
//! - [`registry`]: tenants, their grants and tokens, their handlers' uploaded versions.
//! - [`admin`]: the HTTP admin API over the registry and a narrow control of the engine.
//! - [`app`]: `keyhole run` — the engine, the registry and the admin API wired together.
//! - [`client`]: `keyhole publish`/`request` (data owners) and `deploy`/`rollback` (tenants).
//! - [`simulate`]: the same pipeline on an in-process broker and sample data owner, for
//!   `keyhole dev` and `keyhole demo`.
//! - [`owner_check`]: `keyhole owner check` — a data owner's endpoint held to what [`resolve`]
//!   does with its answers, from fixtures, in the owner's CI.
//! - [`proof`]: `keyhole receipts verify`/`report` — the receipts read back, their hash chains
//!   verified, and a person's access report drawn from them.
//! - [`processing_record`]: `keyhole processing-record` — the record of processing activities
//!   (GDPR Art. 30(1)) from the configuration, the registry (read only) and the broker.
//! - [`telemetry`]: logging set-up, the Prometheus metrics and their names, trace context.

pub mod admin;
pub mod app;
pub mod client;
pub mod cloudevents;
pub mod config;
pub mod engine;
pub mod kafka;
pub mod model;
pub mod owner_check;
pub mod processing_record;
pub mod proof;
pub mod records;
pub mod registry;
pub mod resolve;
pub mod sandbox;
pub mod simulate;
pub mod telemetry;
