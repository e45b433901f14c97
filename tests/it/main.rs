//! keyhole's integration tests, in one binary so that the suite links wasmtime and librdkafka
//! once. Each module covers one area; the helpers they share live in [`common`].
//!
//! Tests that need a broker read its address from `KEYHOLE_TEST_BROKER` (set by
//! `scripts/test.sh`, which starts tansu); each test uses its own topics and consumer groups.
// A test fails loudly on anything unexpected; unwrap is how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod admin;
mod architecture;
mod batch;
mod brokers;
mod budgets;
mod canary;
mod check_cli;
mod cluster;
mod compile_bombs;
mod config;
mod crashes;
mod data_owner_guide;
mod dev;
mod durability;
mod exactly_once;
mod failures;
mod hot_swap;
mod listeners;
mod monitoring;
mod observability;
mod outage;
mod owner_check;
mod pipeline;
mod processing_record;
mod receipts;
mod registry_store;
mod request;
mod resolve;
mod sandbox;
mod shutdown;
mod tls;
mod traces;
mod transactions;
