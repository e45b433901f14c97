//! The sandbox's per-event cost with the `echo` handler and 1 KiB of data: a fresh instance per
//! event (what the pipeline does) with the pooling allocator and on demand, instantiation alone,
//! and a call on a reused instance to show what instantiation costs.
//!
//! Run: `scripts/build-guests.sh && cargo bench --bench sandbox`
// A test fails loudly on anything unexpected; unwrap is how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use keyhole::sandbox::{
    AllocationChoice, Event, Extension, Handler, HandlerIdentity, Limits, Sandbox, SandboxConfig,
};
use std::hint::black_box;

fn echo(sandbox: &Sandbox) -> Handler {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../guest-examples/dist/echo.wasm");
    let wasm = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}; run scripts/build-guests.sh"));
    let identity = HandlerIdentity { tenant: "bench".into(), handler: "echo".into() };
    sandbox.load(identity, &wasm, Limits::default()).expect("load echo")
}

fn event() -> Event {
    let data = format!("{{\"note\":\"{}\"}}", "x".repeat(1024 - 11)).into_bytes();
    assert_eq!(data.len(), 1024);
    Event {
        id: "0b6f4a3c-bench".into(),
        source: "https://crm.example.com/customers".into(),
        type_: "com.example.customer.registered".into(),
        subject: Some("customer/42".into()),
        time: Some("2026-11-23T10:00:00Z".into()),
        datacontenttype: Some("application/json".into()),
        extensions: vec![Extension { name: "correlationid".into(), value: "req-7".into() }],
        data,
    }
}

fn per_event(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
    let event = event();
    let mut group = c.benchmark_group("sandbox");
    for (name, allocation) in
        [("pooling", AllocationChoice::Pooling), ("on_demand", AllocationChoice::OnDemand)]
    {
        let sandbox = Sandbox::new(&SandboxConfig { allocation, ..Default::default() }).expect("sandbox");
        let handler = echo(&sandbox);
        group.bench_function(format!("fresh_instance_per_event/{name}"), |b| {
            b.iter(|| rt.block_on(handler.handle(black_box(&event))).expect("echo"))
        });
        group.bench_function(format!("instantiate_only/{name}"), |b| {
            b.iter(|| rt.block_on(handler.instantiate(black_box("id"))).expect("instantiate"))
        });
        if name == "pooling" {
            let mut instance = rt.block_on(handler.instantiate("reused")).expect("instantiate");
            group.bench_function("call_only_reused_instance/pooling", |b| {
                b.iter(|| rt.block_on(instance.call(black_box(&event))).expect("echo"))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, per_event);
criterion_main!(benches);
