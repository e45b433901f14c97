//! `keyhole owner check`, as a data owner runs it in its CI: against a conforming owner on
//! loopback every check passes; against owners broken in one way each it exits 1 and names that
//! violation, and only that one; a fixture that needs a path keyhole would refuse is a fixture
//! error (exit 2) before any request. The token and the released data never reach the output.
//! Every owner here also serves the batch endpoint (`POST /api/batch`, docs/data-owners.md
//! "Batched resolution") from the same decisions, and is checked with `--batch-path batch`.
// A test fails loudly on anything unexpected; unwrap is how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::broker::unique;
use crate::common::served::{Served, serve};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::collections::BTreeSet;
use std::process::Output;
use std::sync::{Arc, Mutex};

const TOKEN: &str = "owner-check-tok-9f3k2q";
/// In the record the owner releases: it must never appear in the report.
const CANARY: &str = "canary-7c1d@example.com";
const APPROVED: &str = "sha256:1c7fade2ae61cef416657dc79e782f8cfd794371e13755138eab5ff84dd7b1ff";
const PURPOSE: &str = "Age statistics for product planning (contract ACME-17)";

/// The one way an owner is broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    /// `customers/43` (erased) is released instead of 410.
    WrongDecision,
    /// `customers/42` is released without a Content-Type.
    NoContentType,
    /// `customers/44` is refused with 403 and the record as `application/json`.
    DataInRefusal,
    /// Any path it does not know is answered 200.
    ReleasesUnknown,
    /// The token is not checked (on single requests; the batch endpoint still checks it).
    IgnoresToken,
    /// A handler version it has not approved gets 503 with this Retry-After.
    FailsOtherVersion(&'static str),
    /// In a batch, `customers/44` is released instead of 403.
    BatchDisagrees,
    /// The batch answer is malformed in this way (see `batch`).
    BatchMalformed(&'static str),
    /// The batch endpoint does not check the token.
    BatchIgnoresToken,
}

/// One request the owner got.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    authorization: Option<String>,
    tenant: Option<String>,
    handler: Option<String>,
    purpose: Option<String>,
    version: Option<String>,
    event_id: Option<String>,
    user_agent: Option<String>,
}

/// One batch request the owner got.
#[derive(Clone, Debug)]
struct BatchSeen {
    authorization: Option<String>,
    tenant: Option<String>,
    version: Option<String>,
    /// (event id, dataref) per reference, in order.
    references: Vec<(String, String)>,
}

struct Owner {
    fault: Fault,
    seen: Mutex<Vec<Seen>>,
    batches: Mutex<Vec<BatchSeen>>,
}

fn record() -> String {
    format!(r#"{{"birthdate":"1990-04-12","country":"DE","email":"{CANARY}"}}"#)
}

fn problem(status: u16, title: &str) -> Response {
    let body = serde_json::json!({ "type": "about:blank", "title": title, "status": status }).to_string();
    (StatusCode::from_u16(status).unwrap(), [(header::CONTENT_TYPE, "application/problem+json")], body)
        .into_response()
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A data owner as docs/data-owners.md describes it (token, then version, then the record, then
/// consent), with one fault.
async fn answer(State(owner): State<Arc<Owner>>, Path(path): Path<String>, headers: HeaderMap) -> Response {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let seen = Seen {
        path: path.clone(),
        authorization: text("authorization"),
        tenant: text("keyhole-tenant"),
        handler: text("keyhole-handler"),
        purpose: text("keyhole-purpose"),
        version: text("keyhole-handler-version"),
        event_id: text("keyhole-event-id"),
        user_agent: text("user-agent"),
    };
    owner.seen.lock().unwrap().push(seen.clone());
    let fault = owner.fault;
    if seen.authorization != Some(format!("Bearer {TOKEN}")) && fault != Fault::IgnoresToken {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    decide(fault, &path, seen.version.as_deref())
}

/// The decision on one reference, once the token is checked.
fn decide(fault: Fault, path: &str, version: Option<&str>) -> Response {
    if version != Some(APPROVED) {
        if let Fault::FailsOtherVersion(retry_after) = fault {
            let mut response = StatusCode::SERVICE_UNAVAILABLE.into_response();
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(retry_after));
            return response;
        }
        return problem(403, "handler version not approved");
    }
    match path {
        "customers/42" if fault == Fault::NoContentType => Response::new(Body::from(record())),
        "customers/42" => json(StatusCode::OK, record()),
        "customers/43" if fault == Fault::WrongDecision => json(StatusCode::OK, record()),
        "customers/43" => StatusCode::GONE.into_response(),
        "customers/44" if fault == Fault::DataInRefusal => json(StatusCode::FORBIDDEN, record()),
        "customers/44" => problem(403, "no consent for this purpose"),
        _ if fault == Fault::ReleasesUnknown => json(StatusCode::OK, "{}".into()),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The batch endpoint: 401 without the token, 400 for anything but a version 1 request, else one
/// result per reference made from the single answer (`decide`) to the same reference, with the
/// owner's batch fault.
async fn batch(State(owner): State<Arc<Owner>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    use base64::Engine as _;
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let references: Vec<(String, String)> = request["references"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| Some((r["event_id"].as_str()?.to_owned(), r["dataref"].as_str()?.to_owned())))
        .collect();
    owner.batches.lock().unwrap().push(BatchSeen {
        authorization: text("authorization"),
        tenant: text("keyhole-tenant"),
        version: text("keyhole-handler-version"),
        references: references.clone(),
    });
    let fault = owner.fault;
    if text("authorization") != Some(format!("Bearer {TOKEN}")) && fault != Fault::BatchIgnoresToken {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if request["version"] != 1 || references.is_empty() {
        return StatusCode::BAD_REQUEST.into_response();
    }
    if fault == Fault::BatchMalformed("status") {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let base64 = base64::engine::general_purpose::STANDARD;
    let mut results = Vec::new();
    for (_, dataref) in &references {
        let path = dataref.split('?').next().unwrap();
        let mut single = decide(fault, path, text("keyhole-handler-version").as_deref());
        if fault == Fault::BatchDisagrees && path == "customers/44" {
            single = json(StatusCode::OK, record());
        }
        let status = single.status();
        let content_type = single.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_owned());
        let data = axum::body::to_bytes(single.into_body(), usize::MAX).await.unwrap();
        let mut result = serde_json::json!({ "status": status.as_u16() });
        if status.is_success() {
            result["data_base64"] = base64.encode(&data).into();
            if let Some(content_type) = content_type {
                result["content_type"] = content_type.into();
            }
        }
        results.push(result);
    }
    let mut version = 1;
    match fault {
        Fault::BatchMalformed("version") => version = 2,
        Fault::BatchMalformed("count") => results.truncate(2),
        Fault::BatchMalformed("field") => results[0]["email"] = CANARY.into(),
        Fault::BatchMalformed("base64") => results[0]["data_base64"] = "not base64!".into(),
        Fault::BatchMalformed("string") => results[0]["status"] = CANARY.into(),
        _ => {}
    }
    axum::Json(serde_json::json!({ "version": version, "results": results })).into_response()
}

async fn start(fault: Fault) -> (Arc<Owner>, Served) {
    let owner = Arc::new(Owner { fault, seen: Mutex::new(Vec::new()), batches: Mutex::new(Vec::new()) });
    let app = axum::Router::new()
        .route("/api/batch", axum::routing::post(batch))
        .route("/api/{*path}", axum::routing::get(answer))
        .with_state(owner.clone());
    (owner, serve(app).await)
}

fn base_url(served: &Served) -> String {
    format!("http://{}/api/", served.addr)
}

const FIXTURES: &str = r#"
[asker]
tenant = "acme"
handler = "age-band"
purpose = "Age statistics for product planning (contract ACME-17)"
handler_version = "sha256:1c7fade2ae61cef416657dc79e782f8cfd794371e13755138eab5ff84dd7b1ff"

[[reference]]
dataref = "customers/42"
expect = "released"
content_type = "application/json"

[[reference]]
dataref = "customers/44"
expect = "denied"

[[reference]]
dataref = "customers/43"
expect = "gone"
"#;

/// What one run printed.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The checks with a `FAIL` line.
    fn failed(&self) -> BTreeSet<String> {
        self.stdout
            .lines()
            .filter_map(|line| line.strip_prefix("FAIL "))
            .filter_map(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
            .collect()
    }

    /// The check's lines, `ok` or `FAIL`.
    fn lines_of(&self, check: &str) -> Vec<&str> {
        self.stdout.lines().filter(|line| line.split_whitespace().nth(1) == Some(check)).collect()
    }
}

/// `keyhole owner check` with `fixtures` against `base_url`, the token in its environment.
async fn owner_check(base_url: &str, fixtures: &str, token: Option<&str>, extra: &[&str]) -> Run {
    let file = std::env::temp_dir().join(format!("{}.toml", unique("owner-check-fixtures")));
    std::fs::write(&file, fixtures).unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_keyhole"));
    command
        .args(["owner", "check", "--base-url", base_url, "--fixtures"])
        .arg(&file)
        .args(extra)
        .env_remove("KEYHOLE_OWNER_TOKEN");
    if let Some(token) = token {
        command.env("KEYHOLE_OWNER_TOKEN", token);
    }
    let output: Output = tokio::task::spawn_blocking(move || command.output()).await.unwrap().unwrap();
    std::fs::remove_file(&file).ok();
    let run = Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    for printed in [&run.stdout, &run.stderr] {
        assert!(!printed.contains(TOKEN), "the token was printed:\n{printed}");
        assert!(!printed.contains(CANARY), "released data was printed:\n{printed}");
    }
    run
}

/// Runs the check against an owner with `fault` and asserts it exits 1 failing exactly `checks`.
async fn fails_exactly(fault: Fault, checks: &[&str]) -> Run {
    let (_owner, served) = start(fault).await;
    let run =
        owner_check(&base_url(&served), FIXTURES, Some(TOKEN), &["--repeat", "3", "--batch-path", "batch"])
            .await;
    assert_eq!(run.code, Some(1), "{fault:?}:\n{}{}", run.stdout, run.stderr);
    let expected: BTreeSet<String> = checks.iter().map(|c| c.to_string()).collect();
    assert_eq!(run.failed(), expected, "{fault:?}:\n{}", run.stdout);
    assert!(run.stdout.trim_end().ends_with("violation") || run.stdout.trim_end().ends_with("violations"));
    run
}

#[tokio::test(flavor = "multi_thread")]
async fn a_conforming_owner_passes_every_check() {
    let (owner, served) = start(Fault::None).await;
    let run =
        owner_check(&base_url(&served), FIXTURES, Some(TOKEN), &["--repeat", "5", "--batch-path", "batch"])
            .await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(run.failed().is_empty(), "{}", run.stdout);
    for check in [
        "answer",
        "content-type",
        "unknown-reference",
        "without-token",
        "other-version",
        "repeat",
        "refusal-body",
        "retry-after",
        "batch-answer",
        "batch-without-token",
    ] {
        let lines = run.lines_of(check);
        assert!(!lines.is_empty() && lines.iter().all(|l| l.starts_with("ok ")), "{check}:\n{}", run.stdout);
    }
    assert_eq!(run.lines_of("answer").len(), 3, "{}", run.stdout);
    assert!(run.stdout.contains("customers/42: released (HTTP 200, "), "{}", run.stdout);
    assert!(run.stdout.contains("customers/44: consent_denied (HTTP 403), as expected"), "{}", run.stdout);
    assert!(run.stdout.contains("customers/43: gone (HTTP 410), as expected"), "{}", run.stdout);
    assert!(
        run.lines_of("batch-answer")[0].contains(
            "every reference (3) got the same decision in a batch (POST batch) as alone: consent_denied (HTTP \
             403), gone (HTTP 410), released (75 bytes, application/json)"
        ),
        "{}",
        run.stdout
    );
    assert!(
        run.lines_of("batch-without-token")[0].contains(
            "POST batch of customers/42, customers/44, customers/43 without the token: unauthorized"
        ),
        "{}",
        run.stdout
    );
    let latency =
        run.stdout.lines().find(|l| l.starts_with("latency")).unwrap_or_else(|| panic!("{}", run.stdout));
    assert!(latency.contains("5 requests (5 rounds of 1 released reference)"), "{latency}");
    for percentile in ["p50 ", "p90 ", "p99 ", "max "] {
        assert!(latency.contains(percentile), "{latency}");
    }
    assert!(run.stdout.ends_with("passed: every check\n"), "{}", run.stdout);

    // Asked as keyhole asks: every Keyhole-* header as the fixture says, a fresh event id each time.
    let seen = owner.seen.lock().unwrap().clone();
    let authorised = |s: &&Seen| s.authorization.as_deref() == Some(&format!("Bearer {TOKEN}"));
    let released: Vec<_> = seen
        .iter()
        .filter(|s| s.path == "customers/42" && authorised(s) && s.version.as_deref() == Some(APPROVED))
        .collect();
    assert_eq!(released.len(), 1 + 5, "the answer check and 5 rounds: {seen:#?}");
    for s in &seen {
        assert_eq!(s.tenant.as_deref(), Some("acme"), "{s:?}");
        assert_eq!(s.handler.as_deref(), Some("age-band"), "{s:?}");
        assert_eq!(s.purpose.as_deref(), Some(PURPOSE), "{s:?}");
        assert!(s.event_id.as_deref().is_some_and(|id| id.starts_with("keyhole-owner-check-")), "{s:?}");
        assert!(s.user_agent.as_deref().is_some_and(|ua| ua.starts_with("keyhole/")), "{s:?}");
        let version = s.version.as_deref().unwrap();
        assert!(version.len() == 71 && version.starts_with("sha256:"), "{s:?}");
    }
    let ids: BTreeSet<_> = seen.iter().map(|s| s.event_id.clone()).collect();
    assert_eq!(ids.len(), seen.len(), "event ids are unique");
    // Three references without the token, three for another version, one unknown path.
    assert_eq!(seen.iter().filter(|s| s.authorization.is_none()).count(), 3);
    let others: Vec<_> = seen.iter().filter(|s| s.version.as_deref() != Some(APPROVED)).collect();
    assert_eq!(others.len(), 3, "{others:#?}");
    assert!(others.iter().all(|s| authorised(s) && s.version == others[0].version));
    let unknown: Vec<_> = seen.iter().filter(|s| !s.path.starts_with("customers/")).collect();
    assert_eq!(unknown.len(), 1, "{unknown:#?}");
    assert!(unknown[0].path.starts_with("keyhole-owner-check/"), "{unknown:#?}");
    assert_eq!(seen.len(), 3 + 1 + 3 + 3 + 5);

    // Two batches of the three references, as keyhole batches them: with the token, then without.
    let batches = owner.batches.lock().unwrap().clone();
    assert_eq!(batches.len(), 2, "{batches:#?}");
    assert_eq!(batches[0].authorization, Some(format!("Bearer {TOKEN}")));
    assert_eq!(batches[1].authorization, None);
    for b in &batches {
        assert_eq!(b.tenant.as_deref(), Some("acme"), "{b:?}");
        assert_eq!(b.version.as_deref(), Some(APPROVED), "{b:?}");
        let datarefs: Vec<_> = b.references.iter().map(|(_, dataref)| dataref.as_str()).collect();
        assert_eq!(datarefs, ["customers/42", "customers/44", "customers/43"], "{b:?}");
        for (event_id, _) in &b.references {
            assert!(event_id.starts_with("keyhole-owner-check-") && !ids.contains(&Some(event_id.clone())));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_decision_is_named_with_what_was_expected_and_received() {
    let run = fails_exactly(Fault::WrongDecision, &["answer"]).await;
    let lines = run.lines_of("answer");
    assert!(
        lines.iter().any(|l| l.starts_with("FAIL")
            && l.contains("customers/43: expected gone (404 or 410), received released (HTTP 200")),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_release_without_a_content_type_is_a_violation() {
    let run = fails_exactly(Fault::NoContentType, &["content-type"]).await;
    assert!(run.stdout.contains("customers/42: released without a readable Content-Type"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_that_carries_the_data_is_a_violation() {
    let run = fails_exactly(Fault::DataInRefusal, &["refusal-body"]).await;
    let lines = run.lines_of("refusal-body");
    assert_eq!(lines.len(), 1, "{}", run.stdout);
    assert!(lines[0].contains("customers/44: HTTP 403 with 75 bytes of application/json"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_reference_must_be_404() {
    let run = fails_exactly(Fault::ReleasesUnknown, &["unknown-reference"]).await;
    let lines = run.lines_of("unknown-reference");
    assert!(
        lines[0].contains("expected gone (HTTP 404), received released (HTTP 200, 2 bytes)"),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_owner_that_does_not_ask_for_the_token_is_named() {
    let run = fails_exactly(Fault::IgnoresToken, &["without-token"]).await;
    let lines = run.lines_of("without-token");
    assert_eq!(lines.len(), 3, "one line per reference:\n{}", run.stdout);
    assert!(
        lines[0].contains(
            "customers/42 (without the token): expected unauthorized (HTTP 401), received released"
        ),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_5xx_for_another_handler_version_is_a_violation() {
    let run = fails_exactly(Fault::FailsOtherVersion("120"), &["other-version"]).await;
    let lines = run.lines_of("other-version");
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    assert!(lines.iter().all(|l| l.contains("received transient (HTTP 503)")), "{}", run.stdout);
    // Its Retry-After is well formed: that check passes, having seen them.
    let retry_after = run.lines_of("retry-after");
    assert!(retry_after[0].starts_with("ok") && retry_after[0].contains("(3)"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_retry_after_is_a_violation() {
    let run = fails_exactly(Fault::FailsOtherVersion("in a minute"), &["other-version", "retry-after"]).await;
    // The same value on three answers is one violation, counted.
    let lines = run.lines_of("retry-after");
    assert_eq!(lines.len(), 1, "{}", run.stdout);
    assert!(
        lines[0].contains("HTTP 503 with Retry-After \"in a minute\" is neither delta-seconds"),
        "{}",
        run.stdout
    );
    assert!(lines[0].ends_with("(and 2 more answers like it)"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_that_disagrees_with_the_single_answer_is_named() {
    let run = fails_exactly(Fault::BatchDisagrees, &["batch-answer"]).await;
    let lines = run.lines_of("batch-answer");
    assert_eq!(lines.len(), 1, "only the reference that disagrees:\n{}", run.stdout);
    assert!(
        lines[0].contains(
            "customers/44 (in a batch): expected the decision it got alone, consent_denied (HTTP 403), received \
             released (75 bytes, application/json)"
        ),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_batch_answer_is_named() {
    for (malformed, named) in [
        ("version", "the batch answer cannot be read: version 2 (keyhole speaks 1)"),
        ("count", "the batch answer cannot be read: 2 results for 3 references"),
        (
            "field",
            "the batch answer cannot be read: a field is missing, unknown or of the wrong type (line 1",
        ),
        ("status", "the batch endpoint answered HTTP 400 Bad Request, not 200"),
        // The value the owner sent is not printed: it could be the data.
        (
            "string",
            "the batch answer cannot be read: a field is missing, unknown or of the wrong type (line 1",
        ),
        (
            "base64",
            "customers/42 (in a batch): expected the decision it got alone, released (HTTP 200, 75 bytes), \
             received transient: ",
        ),
    ] {
        let run = fails_exactly(Fault::BatchMalformed(malformed), &["batch-answer"]).await;
        let lines = run.lines_of("batch-answer");
        assert_eq!(lines.len(), 1, "{malformed}:\n{}", run.stdout);
        assert!(lines[0].contains(named), "{malformed}:\n{}", run.stdout);
        if malformed != "base64" {
            assert!(
                lines[0].contains(
                    "POST batch of customers/42, customers/44, customers/43: expected 200 with version 1"
                ),
                "{malformed}:\n{}",
                run.stdout
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_endpoint_that_does_not_ask_for_the_token_is_named() {
    let run = fails_exactly(Fault::BatchIgnoresToken, &["batch-without-token"]).await;
    let lines = run.lines_of("batch-without-token");
    assert_eq!(lines.len(), 1, "{}", run.stdout);
    assert!(
        lines[0].contains(
            "without the token: expected unauthorized (HTTP 401) for the whole batch, received HTTP 200 with a \
             result per reference: consent_denied (HTTP 403), gone (HTTP 410), released (75 bytes, \
             application/json)"
        ),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_path_keyhole_would_refuse_is_an_error_before_any_request() {
    let (owner, served) = start(Fault::None).await;
    for path in ["../batch", "/batch", "batch?x=1", ""] {
        let run = owner_check(&base_url(&served), FIXTURES, Some(TOKEN), &["--batch-path", path]).await;
        assert_eq!(run.code, Some(2), "{path}: {}{}", run.stdout, run.stderr);
        assert!(
            run.stderr.contains("--batch-path: must be a relative path under base_url"),
            "{}",
            run.stderr
        );
    }
    assert!(owner.seen.lock().unwrap().is_empty() && owner.batches.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_that_does_not_answer_fails_each_check_once_per_reference() {
    // A port nothing listens on any more.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let extra = ["--repeat", "4", "--batch-path", "batch"];
    let run = owner_check(&format!("http://{closed}/api/"), FIXTURES, Some(TOKEN), &extra).await;
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    let expected: BTreeSet<String> = [
        "answer",
        "unknown-reference",
        "without-token",
        "other-version",
        "repeat",
        "batch-answer",
        "batch-without-token",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(run.failed(), expected, "{}", run.stdout);
    assert!(run.lines_of("answer").iter().all(|l| l.contains("cannot connect")), "{}", run.stdout);
    let repeat = run.lines_of("repeat");
    assert_eq!(repeat.len(), 1, "{}", run.stdout);
    assert!(
        repeat[0].contains("customers/42: expected released in every round, released in 0 of 4"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("latency  not measured"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fixture_that_needs_a_path_keyhole_refuses_is_an_error_before_any_request() {
    let (owner, served) = start(Fault::None).await;
    for (dataref, rule) in [("../x", "dot segment"), ("https://crm.example.com/api/x", "absolute URL")] {
        let fixtures = format!("{FIXTURES}\n[[reference]]\ndataref = {dataref:?}\nexpect = \"gone\"\n");
        let run = owner_check(&base_url(&served), &fixtures, Some(TOKEN), &[]).await;
        assert_eq!(run.code, Some(2), "{dataref}: {}{}", run.stdout, run.stderr);
        assert!(run.stderr.contains("reference[3].dataref") && run.stderr.contains(rule), "{}", run.stderr);
        assert!(run.stdout.is_empty(), "{}", run.stdout);
    }
    // Unknown keys and a version keyhole would not send are fixture errors too.
    for (broken, named) in [
        (FIXTURES.replace("expect = \"gone\"", "expect = \"gone\"\nstatus = 410"), "status"),
        (FIXTURES.replace(APPROVED, "latest"), "asker.handler_version"),
    ] {
        let run = owner_check(&base_url(&served), &broken, Some(TOKEN), &[]).await;
        assert_eq!(run.code, Some(2), "{}{}", run.stdout, run.stderr);
        assert!(run.stderr.contains(named), "{}", run.stderr);
    }
    assert!(owner.seen.lock().unwrap().is_empty(), "nothing is asked on a fixture error");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_token_variable_nothing_is_asked() {
    let (owner, served) = start(Fault::None).await;
    let run = owner_check(&base_url(&served), FIXTURES, None, &[]).await;
    assert_eq!(run.code, Some(2), "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("set KEYHOLE_OWNER_TOKEN"), "{}", run.stderr);
    // Another variable, named with --token-env.
    let run =
        owner_check(&base_url(&served), FIXTURES, None, &["--token-env", "NO_SUCH_VARIABLE_FOR_KEYHOLE"])
            .await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("set NO_SUCH_VARIABLE_FOR_KEYHOLE"), "{}", run.stderr);
    assert!(owner.seen.lock().unwrap().is_empty());
}

/// The reference owner (examples/data-owner/owner.py) on a free port, with `args`; killed with
/// the test.
fn start_reference_owner(args: &[String]) -> (std::process::Child, u16) {
    use std::io::BufRead as _;
    let mut owner = crate::common::command_dying_with_the_test("python3")
        .arg(crate::common::repo_root().join("examples/data-owner/owner.py"))
        .args(["--token", TOKEN, "--port", "0"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // With --port 0 it prints the port it listens on, alone, as its first line.
    let mut line = String::new();
    std::io::BufReader::new(owner.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port = line.trim().parse().unwrap_or_else(|_| panic!("owner.py printed {line:?}, not its port"));
    (owner, port)
}

/// The example owner that docs/data-owners.md walks through passes, as the guide says.
#[tokio::test(flavor = "multi_thread")]
async fn the_example_owner_of_the_guide_passes_every_check() {
    let version = keyhole::sandbox::version_of(&crate::common::guest("age-band"));
    let (mut owner, port) = start_reference_owner(&["--approve".into(), format!("acme/age-band={version}")]);
    let fixtures = format!(
        "[asker]\ntenant = \"acme\"\nhandler = \"age-band\"\npurpose = \"{PURPOSE}\"\nhandler_version = \"{version}\"\n\n\
         [[reference]]\ndataref = \"customers/42\"\nexpect = \"released\"\ncontent_type = \"application/json\"\n\n\
         [[reference]]\ndataref = \"customers/44\"\nexpect = \"denied\"\n\n\
         [[reference]]\ndataref = \"customers/43\"\nexpect = \"gone\"\n"
    );
    let extra = ["--repeat", "3", "--batch-path", "batch"];
    let run = owner_check(&format!("http://127.0.0.1:{port}/api/"), &fixtures, Some(TOKEN), &extra).await;
    owner.kill().ok();
    owner.wait().ok();
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(run.failed().is_empty(), "{}", run.stdout);
    // Its batch endpoint too: the same decisions, 401 for a batch without the token.
    for check in ["batch-answer", "batch-without-token"] {
        let lines = run.lines_of(check);
        assert!(lines.len() == 1 && lines[0].starts_with("ok "), "{check}:\n{}", run.stdout);
    }
}

/// Beyond `--max-concurrent` requests at once, the reference owner answers 503 with a
/// well-formed `Retry-After` and no data, so keyhole backs off for that long; once a slot is
/// free it decides again.
#[tokio::test(flavor = "multi_thread")]
async fn the_reference_owner_answers_503_with_retry_after_beyond_its_capacity() {
    use tokio::io::AsyncWriteExt as _;
    let version = keyhole::sandbox::version_of(&crate::common::guest("age-band"));
    let (mut owner, port) = start_reference_owner(&[
        "--max-concurrent".into(),
        "1".into(),
        "--approve".into(),
        format!("acme/age-band={version}"),
    ]);
    let client = reqwest::Client::new();
    let ask = || {
        client
            .get(format!("http://127.0.0.1:{port}/api/customers/42"))
            .bearer_auth(TOKEN)
            .header("Keyhole-Tenant", "acme")
            .header("Keyhole-Handler", "age-band")
            .header("Keyhole-Purpose", PURPOSE)
            .header("Keyhole-Handler-Version", &version)
            .send()
    };
    // A batch request whose body has not arrived holds the one slot while the owner reads it.
    let mut holding = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let head = format!(
        "POST /api/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 64\r\n\r\n"
    );
    holding.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let refused = loop {
        let answer = ask().await.unwrap();
        if answer.status() == 503 {
            break answer;
        }
        assert_eq!(answer.status(), 200, "before the slot is taken");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "never answered 503 while its slot was held"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let retry_after = refused.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(retry_after.as_deref(), Some("1"), "delay-seconds, as RFC 9110 has it");
    let content_type = refused.headers().get("content-type").unwrap().to_str().unwrap().to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body = refused.text().await.unwrap();
    assert!(!body.contains("1990") && !body.contains("DE"), "a refusal carries no data: {body}");

    drop(holding);
    let started = std::time::Instant::now();
    loop {
        let answer = ask().await.unwrap();
        if answer.status() == 200 {
            assert!(answer.text().await.unwrap().contains("1990-04-12"));
            break;
        }
        assert_eq!(answer.status(), 503);
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "the slot was never given back");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    owner.kill().ok();
    owner.wait().ok();
}

/// The data owner `keyhole demo` and `keyhole dev` run in-process (they need no Python) answers
/// the same protocol, and passes the same check.
#[tokio::test(flavor = "multi_thread")]
async fn the_in_process_owner_of_the_demo_and_keyhole_dev_passes_every_check() {
    use keyhole::simulate::owner::{Consent, Record, SAMPLE_TOKEN, SampleOwner};
    let record = |path: &str, consent| Record {
        path: path.into(),
        content_type: "application/json".into(),
        body: br#"{"name":"Ada"}"#.to_vec(),
        consent,
    };
    let owner = SampleOwner::start([
        record("customers/ada", Consent::Granted),
        record("customers/grace", Consent::Missing),
        record("customers/alan", Consent::Withdrawn),
        record("customers/kurt", Consent::LegallyUnavailable),
        record("customers/edsger", Consent::Erased),
    ])
    .await
    .unwrap();
    let fixtures = format!(
        "[asker]\ntenant = \"acme\"\nhandler = \"echo\"\npurpose = \"{PURPOSE}\"\nhandler_version = \"{APPROVED}\"\n\n\
         [[reference]]\ndataref = \"customers/ada\"\nexpect = \"released\"\ncontent_type = \"application/json\"\n\n\
         [[reference]]\ndataref = \"customers/grace\"\nexpect = \"denied\"\n\n\
         [[reference]]\ndataref = \"customers/alan\"\nexpect = \"denied\"\n\n\
         [[reference]]\ndataref = \"customers/kurt\"\nexpect = \"denied\"\n\n\
         [[reference]]\ndataref = \"customers/edsger\"\nexpect = \"gone\"\n"
    );
    let run = owner_check(owner.base_url().as_str(), &fixtures, Some(SAMPLE_TOKEN), &["--repeat", "3"]).await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(run.failed().is_empty(), "{}", run.stdout);
}
