//! What the receipt chain costs per receipt: a receipt as keyhole serializes it, without and
//! with its link (the three fields appended and the SHA-256 of the line), on one core. The
//! end-to-end figure is `scripts/bench.sh instant --baseline <a keyhole without the chain>`
//! (docs/performance.md, "What the receipt chain costs").
//!
//! Run: `cargo bench --bench receipts`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use keyhole::records::chain::{Head, append_link};
use keyhole::records::receipt::{Receipt, now};
use std::hint::black_box;

fn receipt() -> Receipt<'static> {
    Receipt {
        time: now(),
        event_id: "0b6f4a3c-5b1e-4d0a-9f1e-2b7c8d9e0f11",
        tenant: "acme",
        handler: "age-band",
        handler_version: "sha256:cd600bbe07589a3eb1f3de31c127ff2385d692f312d95b867c7a980722b7b8a3",
        data_source: "crm",
        purpose: "Age statistics for product planning (contract ACME-17)",
        subject: Some("customer-42"),
        dataref: "customers/42",
        decision: "released",
        status: None,
        attempt: 1,
    }
}

fn receipts(c: &mut Criterion) {
    let receipt = receipt();
    c.bench_function("receipt/serialize", |b| {
        b.iter(|| black_box(serde_json::to_vec(black_box(&receipt)).unwrap()))
    });
    let mut head = Head::new("6f0c2a4e-8b1d-4c3e-9a5f-0d1e2f3a4b5c".into());
    c.bench_function("receipt/serialize_and_link", |b| {
        b.iter(|| {
            let mut line = serde_json::to_vec(black_box(&receipt)).unwrap();
            let link = head.next();
            append_link(&mut line, &link).unwrap();
            head.advance(&link, &line);
            black_box(line)
        })
    });
}

criterion_group!(benches, receipts);
criterion_main!(benches);
