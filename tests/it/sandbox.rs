//! The sandbox against real components: what reaches a handler, how every guest failure is
//! reported, and each limit as a pair, obeyed and violated.
// A test fails loudly on anything unexpected; unwrap is how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use base64::Engine as _;
use common::{assert_serves_normal_event, event, guest, load, sandbox};
use keyhole::sandbox::{
    Allocation, AllocationChoice, GuestError, HandlerIdentity, Limits, LoadError, Sandbox, SandboxConfig,
};
use serde_json::{Value, json};

fn limits() -> Limits {
    Limits::default()
}

async fn echo(data: &[u8]) -> Value {
    let reply = load("echo", limits()).handle(&event("ev-1", data)).await.unwrap().unwrap();
    assert_eq!(reply.type_, "keyhole.example.echo");
    assert_eq!(reply.datacontenttype, "application/json");
    serde_json::from_slice(&reply.data).unwrap()
}

fn probe(ask: Value) -> Vec<u8> {
    ask.to_string().into_bytes()
}

#[tokio::test]
async fn echo_receives_exactly_the_attributes_and_utf8_data() {
    let body = echo("{\"name\":\"Zoë\"}".as_bytes()).await;
    assert_eq!(
        body,
        json!({
            "id": "ev-1",
            "source": "https://crm.example.com/customers",
            "type": "com.example.customer.registered",
            "subject": "customer/42",
            "time": "2026-11-23T10:00:00Z",
            "datacontenttype": "application/json",
            "extensions": {"correlationid": "req-7"},
            "data": "{\"name\":\"Zoë\"}",
        })
    );
}

#[tokio::test]
async fn echo_returns_binary_data_as_base64() {
    let bytes = [0u8, 0xff, 0xfe, 7];
    let body = echo(&bytes).await;
    assert_eq!(body["data_base64"], base64::engine::general_purpose::STANDARD.encode(bytes));
    assert!(body.get("data").is_none());
}

#[tokio::test]
async fn age_band_replies_with_less_than_it_was_given() {
    let profile = br#"{"name":"Ada","email":"ada@example.com","birthdate":"1990-12-01","country":"DE"}"#;
    let reply = load("age-band", limits()).handle(&event("ev-2", profile)).await.unwrap().unwrap();
    let body: Value = serde_json::from_slice(&reply.data).unwrap();
    // Born 1990-12-01, event time 2026-11-23: 35, the birthday is a week away.
    assert_eq!(body, json!({"age_band": "30-39", "country": "DE"}));
    let text = String::from_utf8(reply.data).unwrap();
    assert!(!text.contains("Ada") && !text.contains("ada@example.com"));
}

#[tokio::test]
async fn handler_errors_keep_their_classification() {
    let probe_handler = load("probe", limits());
    let retry = probe_handler.handle(&event("r", &probe(json!({"fail": "retryable"})))).await.unwrap_err();
    assert!(matches!(retry, GuestError::HandlerRetryable(_)), "{retry:?}");
    assert!(retry.is_retryable());
    let reject = probe_handler.handle(&event("p", &probe(json!({"fail": "permanent"})))).await.unwrap_err();
    assert!(matches!(reject, GuestError::HandlerRejected(_)), "{reject:?}");
    assert!(!reject.is_retryable());
    let age_band = load("age-band", limits());
    let bad = age_band.handle(&event("b", b"not json")).await.unwrap_err();
    // The handler's own words may be derived from personal data: withheld unless forwarded.
    assert!(
        matches!(bad, GuestError::HandlerRejected(ref m) if m.contains("withheld") && !m.contains("JSON")),
        "{bad:?}"
    );
    let age_band = age_band.with_output(keyhole::sandbox::GuestOutput::Forward);
    let bad = age_band.handle(&event("b", b"not json")).await.unwrap_err();
    assert!(matches!(bad, GuestError::HandlerRejected(ref m) if m.contains("JSON")), "{bad:?}");
}

#[tokio::test]
async fn every_event_gets_a_fresh_instance() {
    let handler = load("probe", limits());
    let ask = probe(json!({"count_calls": true}));
    for id in ["a", "b", "c"] {
        let reply = handler.handle(&event(id, &ask)).await.unwrap().unwrap();
        assert_eq!(reply.data, b"1", "state from an earlier event leaked into {id}");
    }
    // The counter does count: a reused instance (never done by the pipeline) sees 1, then 2.
    let mut reused = handler.instantiate("x").await.unwrap();
    assert_eq!(reused.call(&event("x", &ask)).await.unwrap().unwrap().data, b"1");
    assert_eq!(reused.call(&event("y", &ask)).await.unwrap().unwrap().data, b"2");
}

#[tokio::test]
async fn a_panic_is_a_trap() {
    let error = load("hostile-panic", limits()).handle(&event("p", b"{}")).await.unwrap_err();
    assert!(matches!(error, GuestError::Trapped(_)), "{error:?}");
    assert!(!error.is_retryable());
    assert_serves_normal_event().await;
}

#[tokio::test]
async fn a_malformed_return_is_refused() {
    // Forwarded output: the host's own words on what was wrong.
    let forwarded =
        load("hostile-malformed-reply", limits()).with_output(keyhole::sandbox::GuestOutput::Forward);
    let error = forwarded.handle(&event("m", b"{}")).await.unwrap_err();
    assert!(
        matches!(error, GuestError::MalformedReturn(ref m) if m.contains("utf-8") || m.contains("UTF-8")),
        "{error:?}"
    );
    // Withheld (the default): only the category, since the error chain can carry what the
    // guest chose.
    let error = load("hostile-malformed-reply", limits()).handle(&event("m", b"{}")).await.unwrap_err();
    assert!(
        matches!(error, GuestError::MalformedReturn(ref m) if m == "(withheld, see guest_output)"),
        "{error:?}"
    );
    assert_serves_normal_event().await;
}

// --- deadline ---------------------------------------------------------------------------------

#[tokio::test]
async fn deadline_obeyed() {
    let limits = Limits { deadline_ms: 1_000, ..limits() };
    let reply = load("probe", limits).handle(&event("d", &probe(json!({"spin_ms": 600})))).await;
    assert!(reply.unwrap().is_some());
}

#[tokio::test]
async fn deadline_violated() {
    let limits = Limits { deadline_ms: 200, ..limits() };
    let started = std::time::Instant::now();
    let error = load("hostile-endless-loop", limits).handle(&event("d", b"{}")).await.unwrap_err();
    assert!(matches!(error, GuestError::DeadlineExceeded { limit_ms: 200 }), "{error:?}");
    // Stopped, not left running: far sooner than "never".
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert_serves_normal_event().await;
}

// --- memory -----------------------------------------------------------------------------------

#[tokio::test]
async fn memory_obeyed() {
    let limits = Limits { max_memory_bytes: 32 << 20, ..limits() };
    let ask = probe(json!({"alloc_bytes": 24 << 20}));
    assert!(load("probe", limits).handle(&event("m", &ask)).await.unwrap().is_some());
}

#[tokio::test]
async fn memory_violated() {
    let limits = Limits { max_memory_bytes: 32 << 20, ..limits() };
    let error = load("hostile-memory-bomb", limits).handle(&event("m", b"{}")).await.unwrap_err();
    assert!(
        matches!(error, GuestError::MemoryExceeded { limit_bytes } if limit_bytes == 32 << 20),
        "{error:?}"
    );
    assert!(!error.is_retryable());
    assert_serves_normal_event().await;
}

// --- instances, tables, table elements --------------------------------------------------------

/// The smallest value of a limit with which echo still runs, found by trying; the pair is then
/// that value (obeyed) and one less (violated).
async fn smallest_passing(set: impl Fn(u32) -> Limits, max: u32) -> u32 {
    for n in 1..=max {
        let handler = sandbox()
            .load(HandlerIdentity { tenant: "t".into(), handler: "echo".into() }, &guest("echo"), set(n))
            .unwrap();
        if handler.handle(&event("i", b"x")).await.is_ok() {
            return n;
        }
    }
    panic!("echo never ran with a limit up to {max}");
}

#[tokio::test]
async fn instance_limit_obeyed_and_violated() {
    let set = |n| Limits { max_instances: n, ..limits() };
    let needed = smallest_passing(set, 64).await;
    assert!(needed > 1, "a component is several instances");
    let obeyed = load("echo", set(needed)).handle(&event("i", b"x")).await;
    assert!(obeyed.is_ok());
    let violated = load("echo", set(needed - 1)).handle(&event("i", b"x")).await.unwrap_err();
    assert!(matches!(violated, GuestError::InstantiationLimit(_)), "{violated:?}");
    assert_serves_normal_event().await;
}

#[tokio::test]
async fn table_limit_obeyed_and_violated() {
    let set = |n| Limits { max_tables: n, ..limits() };
    let needed = smallest_passing(set, 64).await;
    assert!(needed >= 1);
    assert!(load("echo", set(needed)).handle(&event("t", b"x")).await.is_ok());
    let violated = load("echo", set(needed - 1)).handle(&event("t", b"x")).await.unwrap_err();
    assert!(matches!(violated, GuestError::InstantiationLimit(_)), "{violated:?}");
    assert_serves_normal_event().await;
}

#[tokio::test]
async fn table_element_limit_obeyed_and_violated() {
    // Table sizes are fixed at instantiation; find echo's largest table by bisection.
    let set = |n| Limits { max_table_elements: n, ..limits() };
    let (mut low, mut high) = (0u32, 100_000u32); // low fails, high passes
    assert!(load("echo", set(high)).handle(&event("e", b"x")).await.is_ok());
    while high - low > 1 {
        let mid = low + (high - low) / 2;
        if load("echo", set(mid)).handle(&event("e", b"x")).await.is_ok() {
            high = mid;
        } else {
            low = mid;
        }
    }
    assert!(load("echo", set(high)).handle(&event("e", b"x")).await.is_ok());
    let violated = load("echo", set(high - 1)).handle(&event("e", b"x")).await.unwrap_err();
    assert!(matches!(violated, GuestError::TableExceeded { .. }), "{violated:?}");
    assert_serves_normal_event().await;
}

// --- reply size -------------------------------------------------------------------------------

#[tokio::test]
async fn reply_size_obeyed() {
    let limits = Limits { max_reply_bytes: 1 << 20, ..limits() };
    let ask = probe(json!({"reply_bytes": 1 << 20}));
    let reply = load("probe", limits).handle(&event("r", &ask)).await.unwrap().unwrap();
    assert_eq!(reply.data.len(), 1 << 20);
}

#[tokio::test]
async fn reply_size_violated() {
    let limits = Limits { max_reply_bytes: 1 << 20, ..limits() };
    let error = load("hostile-oversized-reply", limits).handle(&event("r", b"{}")).await.unwrap_err();
    assert!(
        matches!(error, GuestError::ReplyTooLarge { size, limit } if size.is_none() && limit == 1 << 20),
        "{error:?}"
    );
    assert_serves_normal_event().await;
}

// --- log and output budget --------------------------------------------------------------------

#[tokio::test]
async fn log_budget_obeyed() {
    let limits = Limits { max_log_bytes: 16 << 10, ..limits() };
    let ask = probe(json!({"log_bytes": 16 << 10}));
    assert!(load("probe", limits).handle(&event("l", &ask)).await.unwrap().is_some());
}

#[tokio::test]
async fn log_budget_violated() {
    let limits = Limits { max_log_bytes: 16 << 10, ..limits() };
    let error = load("hostile-log-flood", limits).handle(&event("l", b"{}")).await.unwrap_err();
    assert!(
        matches!(error, GuestError::LogBudgetExceeded { limit_bytes } if limit_bytes == 16 << 10),
        "{error:?}"
    );
    assert_serves_normal_event().await;
}

#[tokio::test]
async fn stdout_budget_obeyed() {
    let limits = Limits { max_log_bytes: 16 << 10, ..limits() };
    let ask = probe(json!({"stdout_bytes": 16 << 10}));
    assert!(load("probe", limits).handle(&event("o", &ask)).await.unwrap().is_some());
}

#[tokio::test]
async fn stdout_budget_violated() {
    let limits = Limits { max_log_bytes: 16 << 10, ..limits() };
    let error = load("hostile-stdout-flood", limits).handle(&event("o", b"{}")).await.unwrap_err();
    assert!(matches!(error, GuestError::LogBudgetExceeded { .. }), "{error:?}");
    assert_serves_normal_event().await;
}

// --- load-time validation ---------------------------------------------------------------------

fn refusal(wasm: &[u8]) -> LoadError {
    match sandbox().check(wasm) {
        Ok(report) => panic!("accepted: {report:?}"),
        Err((_, error)) => error,
    }
}

#[test]
fn both_examples_are_accepted() {
    for name in ["echo", "age-band"] {
        let report = sandbox().check(&guest(name)).unwrap_or_else(|(_, e)| panic!("{name}: {e}"));
        assert!(report.exports.contains(&"handle (function)".to_string()));
    }
}

#[test]
fn filesystem_import_is_refused_by_name() {
    let error = refusal(&guest("hostile-filesystem"));
    assert!(
        matches!(&error, LoadError::ForbiddenImports { imports } if imports.iter().all(|i| i.starts_with("wasi:filesystem/"))),
        "{error:?}"
    );
    assert!(error.to_string().contains("wasi:filesystem/preopens"), "{error}");
}

#[test]
fn sockets_import_is_refused_by_name() {
    let error = refusal(&guest("hostile-sockets"));
    assert!(
        matches!(&error, LoadError::ForbiddenImports { imports } if imports.iter().all(|i| i.starts_with("wasi:sockets/"))),
        "{error:?}"
    );
    assert!(error.to_string().contains("wasi:sockets/tcp@"), "{error}");
}

#[test]
fn a_core_module_is_refused() {
    assert!(matches!(refusal(b"\0asm\x01\0\0\0"), LoadError::CoreModule));
}

#[test]
fn garbage_is_refused() {
    assert!(matches!(refusal(b"MZ\x90\0 not wasm"), LoadError::NotWasm));
    assert!(matches!(refusal(b"\0asm\x0d\0\x01\0\xff\xff"), LoadError::Invalid(_)));
}

#[test]
fn a_component_without_the_handler_export_is_refused() {
    // The empty component: a valid preamble and nothing else.
    let error = refusal(b"\0asm\x0d\0\x01\0");
    assert!(matches!(error, LoadError::MissingExport { export: "handle" }), "{error:?}");
    assert!(error.to_string().contains("`handle`"));
}

// --- allocation -------------------------------------------------------------------------------

#[tokio::test]
async fn on_demand_allocation_runs_the_same_handler() {
    let on_demand =
        Sandbox::new(&SandboxConfig { allocation: AllocationChoice::OnDemand, ..Default::default() })
            .unwrap();
    assert_eq!(on_demand.allocation(), Allocation::OnDemand);
    assert_eq!(sandbox().allocation(), Allocation::Pooling);
    let identity = HandlerIdentity { tenant: "t".into(), handler: "echo".into() };
    let handler = on_demand.load(identity, &guest("echo"), limits()).unwrap();
    let reply = handler.handle(&event("a", b"hi")).await.unwrap().unwrap();
    let body: Value = serde_json::from_slice(&reply.data).unwrap();
    assert_eq!(body["data"], "hi");
}

#[tokio::test]
async fn a_full_pool_is_a_retryable_error() {
    let small = Sandbox::new(&SandboxConfig {
        allocation: AllocationChoice::Pooling,
        max_concurrent_instances: 1,
        ..Default::default()
    })
    .unwrap();
    let identity = HandlerIdentity { tenant: "t".into(), handler: "probe".into() };
    let handler = small.load(identity, &guest("probe"), limits()).unwrap();
    let _held = handler.instantiate("first").await.unwrap();
    let error = handler.handle(&event("second", b"{}")).await.unwrap_err();
    assert!(matches!(error, GuestError::NoCapacity(_)), "{error:?}");
    assert!(error.is_retryable());
    drop(_held);
    assert!(handler.handle(&event("third", b"{}")).await.is_ok());
}

#[tokio::test]
async fn deadline_violated_while_waiting_in_a_host_call() {
    let limits = Limits { deadline_ms: 200, ..limits() };
    let started = std::time::Instant::now();
    let error = load("hostile-sleep", limits).handle(&event("s", b"{}")).await.unwrap_err();
    assert!(matches!(error, GuestError::DeadlineExceeded { limit_ms: 200 }), "{error:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert_serves_normal_event().await;
}

#[tokio::test]
async fn deadlines_fire_after_the_sandbox_that_loaded_the_handler_is_dropped() {
    let sandbox = Sandbox::new(&SandboxConfig::default()).unwrap();
    let identity = HandlerIdentity { tenant: "t".into(), handler: "loop".into() };
    let handler = sandbox
        .load(identity, &guest("hostile-endless-loop"), Limits { deadline_ms: 200, ..limits() })
        .unwrap();
    drop(sandbox);
    let error = handler.handle(&event("d", b"{}")).await.unwrap_err();
    assert!(matches!(error, GuestError::DeadlineExceeded { .. }), "{error:?}");
}

/// A handler that turns the data it was given into a number the host might report (an exit
/// code, the length of its error message, the size of its reply): with its output withheld, no
/// such number leaves the sandbox; forwarded, each does (so the test can fail).
#[tokio::test]
async fn numbers_a_guest_chooses_reach_no_error_when_its_output_is_withheld() {
    use keyhole::sandbox::GuestOutput;
    let leaky = load("hostile-leaky", limits());
    let forwarded = load("hostile-leaky", limits()).with_output(GuestOutput::Forward);
    // Each channel with a number the data encodes (the reply one above the 1 MiB reply limit).
    let smuggling = |type_: &str, secret: &str| {
        let mut smuggling = event("n", secret.as_bytes());
        smuggling.type_ = type_.into();
        smuggling
    };
    // The length of its error message (reported as "(N bytes withheld)" before).
    let withheld = leaky.handle(&smuggling("leak.length", "73106")).await.unwrap_err().to_string();
    assert_eq!(withheld, "the handler rejected the event: (withheld, see guest_output)");
    // The size of its reply.
    let withheld = leaky.handle(&smuggling("leak.size", "1073107")).await.unwrap_err().to_string();
    assert!(!withheld.contains("1073107"), "{withheld:?}");
    let shown = forwarded.handle(&smuggling("leak.size", "1073107")).await.unwrap_err().to_string();
    assert!(shown.contains("1073107"), "the channel exists when forwarded: {shown:?}");
    // WASI preview 2 narrows an exit code to success or failure; withheld, not even that bit.
    let mut exiting = event("e", b"73105");
    exiting.type_ = "leak.exit".into();
    let withheld = leaky.handle(&exiting).await.unwrap_err().to_string();
    assert_eq!(withheld, "the handler trapped: the handler called exit");
    assert_serves_normal_event().await;
}
