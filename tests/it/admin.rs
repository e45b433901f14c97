//! The admin API: tenants isolated from each other, grants and limits enforced, malformed
//! uploads refused with their reason, and the OpenAPI document in the repository matching the
//! server. keyhole runs in-process on the test broker with its admin API on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::admin::{Admin, Body, OPERATOR};
use common::owner::Owner;
use serde_json::{Value, json};

fn spec(topic: &str) -> Value {
    json!({ "topics": [topic], "data_source": "owner", "purpose": "testing" })
}

/// Two tenants, `a` and `b`, each with a handler `h` holding one uploaded (inactive) version.
async fn two_tenants(admin: &Admin) -> (String, String, String) {
    let a = admin.tenant("a", &["topic-a"], json!({})).await;
    let b = admin.tenant("b", &["topic-b"], json!({})).await;
    admin.ok(201, "PUT", "/v1/tenants/a/handlers/h", Some(&a), Body::Json(spec("topic-a"))).await;
    admin.ok(201, "PUT", "/v1/tenants/b/handlers/h", Some(&b), Body::Json(spec("topic-b"))).await;
    let uploaded = admin
        .ok(201, "POST", "/v1/tenants/a/handlers/h/versions", Some(&a), Body::Bytes(common::guest("echo")))
        .await;
    (a, b, uploaded["version"].as_str().unwrap().to_string())
}

/// A request: method, path, and how to make its body (afresh for each caller).
type Operation = (&'static str, String, fn() -> Body);

fn assert_problem(answer: &common::admin::Answer, status: u16, kind: &str, what: &str) {
    assert_eq!(answer.status, status, "{what}: {answer:#?}");
    assert_eq!(answer.content_type, "application/problem+json", "{what}");
    assert_eq!(answer.body["type"], format!("urn:keyhole:problem:{kind}"), "{what}: {answer:#?}");
    assert_eq!(answer.body["status"], status, "{what}");
    assert!(answer.body["detail"].as_str().is_some_and(|d| !d.is_empty()), "{what}: no detail");
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_cannot_touch_each_others_handlers_and_bad_tokens_are_refused() {
    let owner = Owner::start().await;
    let admin = Admin::start(&owner.base_url()).await;
    let (a, b, version) = two_tenants(&admin).await;
    let before = admin.ok(200, "GET", "/v1/tenants/a/handlers/h", Some(&a), Body::None).await;

    let h = "/v1/tenants/a/handlers/h";
    let operations: Vec<Operation> = vec![
        ("GET", "/v1/tenants/a".into(), || Body::None),
        ("GET", "/v1/tenants/a/handlers".into(), || Body::None),
        ("GET", h.into(), || Body::None),
        ("PUT", h.into(), || Body::Json(spec("topic-b"))),
        ("DELETE", h.into(), || Body::None),
        ("GET", format!("{h}/versions"), || Body::None),
        ("POST", format!("{h}/versions"), || Body::Bytes(common::guest("age-band"))),
        ("GET", format!("{h}/versions/{version}"), || Body::None),
        ("DELETE", format!("{h}/versions/{version}"), || Body::None),
        ("POST", format!("{h}/versions/{version}/activate"), || Body::None),
        ("POST", format!("{h}/rollback"), || Body::None),
    ];
    for (method, path, body) in &operations {
        let what = format!("{method} {path}");
        let missing = admin.call(method, path, None, body()).await;
        assert_problem(&missing, 401, "missing-token", &what);
        assert_eq!(missing.www_authenticate.as_deref(), Some("Bearer realm=\"keyhole\""), "{what}");
        let bad = admin.call(method, path, Some("kh_not-a-token"), body()).await;
        assert_problem(&bad, 401, "invalid-token", &what);
        assert!(bad.www_authenticate.as_deref().is_some_and(|c| c.contains("invalid_token")), "{what}");
        let other = admin.call(method, path, Some(&b), body()).await;
        assert_problem(&other, 403, "wrong-tenant", &what);
        assert!(other.body["detail"].as_str().unwrap().contains("\"b\""), "{what}: {other:#?}");
    }
    // Nothing of a's changed, and b's own handler is still b's.
    let after = admin.ok(200, "GET", "/v1/tenants/a/handlers/h", Some(&a), Body::None).await;
    assert_eq!(before, after);
    assert_eq!(after["versions"].as_array().unwrap().len(), 1);
    assert_eq!(after["active"], Value::Null);
    let theirs = admin.ok(200, "GET", "/v1/tenants/b/handlers/h", Some(&b), Body::None).await;
    assert_eq!(theirs["versions"], json!([]));
    // The operator may read every tenant's handlers.
    admin.ok(200, "GET", h, Some(OPERATOR), Body::None).await;
    admin.running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_operator_grants_and_issues_tokens() {
    let owner = Owner::start().await;
    let admin = Admin::start(&owner.base_url()).await;
    let a = admin.tenant("a", &["topic-a"], json!({ "max_in_flight": 8 })).await;
    let raise = json!({ "topics": ["topic-a", "secret"], "data_sources": ["owner"], "purposes": ["testing"],
        "limits": { "max_in_flight": 100000 } });
    for (method, path, body) in [
        ("GET", "/v1/tenants", Body::None),
        ("PUT", "/v1/tenants/a", Body::Json(raise.clone())),
        ("PUT", "/v1/tenants/c", Body::Json(raise)),
        ("DELETE", "/v1/tenants/a", Body::None),
        ("POST", "/v1/tenants/a/tokens", Body::None),
        ("DELETE", "/v1/tenants/a/tokens/0000", Body::None),
    ] {
        let answer = admin.call(method, path, Some(&a), body).await;
        assert_problem(&answer, 403, "operator-only", &format!("{method} {path}"));
    }
    let tenant = admin.ok(200, "GET", "/v1/tenants/a", Some(&a), Body::None).await;
    assert_eq!(tenant["grant"]["topics"], json!(["topic-a"]));
    assert_eq!(tenant["grant"]["limits"]["max_in_flight"], 8);
    // A revoked token stops working at once.
    let token_id = tenant["token_ids"][0].as_str().unwrap().to_string();
    admin.ok(204, "DELETE", &format!("/v1/tenants/a/tokens/{token_id}"), Some(OPERATOR), Body::None).await;
    assert_problem(
        &admin.call("GET", "/v1/tenants/a", Some(&a), Body::None).await,
        401,
        "invalid-token",
        "revoked",
    );
    admin.running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_binds_only_what_it_was_granted_within_its_limits() {
    let owner = Owner::start().await;
    let admin = Admin::start(&owner.base_url()).await;
    let echo_size = common::guest("echo").len() as u64;
    let limits = json!({ "max_handlers": 2, "max_in_flight": 8, "max_deadline_ms": 500,
        "max_memory_bytes": 33554432, "max_component_bytes": echo_size, "max_versions_per_handler": 1 });
    let a = admin.tenant("a", &["topic-a"], limits).await;
    admin.tenant("b", &["topic-b"], json!({})).await;
    let put = |handler: &str, spec: Value| {
        let path = format!("/v1/tenants/a/handlers/{handler}");
        let a = a.clone();
        let admin = &admin;
        async move { admin.call("PUT", &path, Some(&a), Body::Json(spec)).await }
    };
    let with = |key: &str, value: Value| {
        let mut spec = spec("topic-a");
        spec[key] = value;
        spec
    };
    assert_problem(&put("h", spec("topic-b")).await, 403, "not-granted", "b's topic");
    assert_problem(&put("h", with("data_source", json!("other"))).await, 403, "not-granted", "data source");
    assert_problem(&put("h", with("purpose", json!("marketing"))).await, 403, "not-granted", "purpose");
    assert_problem(&put("h", with("reply_topic", json!("topic-b"))).await, 403, "not-granted", "reply topic");
    assert_problem(&put("h", with("max_in_flight", json!(9))).await, 403, "over-limit", "in flight");
    assert_problem(&put("h", with("deadline_ms", json!(501))).await, 403, "over-limit", "deadline");
    assert_problem(&put("h", with("max_memory_bytes", json!(33554433))).await, 403, "over-limit", "memory");
    assert_problem(&put("BAD NAME", spec("topic-a")).await, 422, "invalid", "name");
    // Within the limits: accepted, up to max_handlers.
    assert_eq!(put("h1", with("max_in_flight", json!(8))).await.status, 201);
    assert_eq!(put("h2", spec("topic-a")).await.status, 201);
    assert_problem(&put("h3", spec("topic-a")).await, 403, "over-limit", "handlers");
    // Components within the size limit, one version per handler.
    let upload = |bytes: Vec<u8>| {
        admin.call("POST", "/v1/tenants/a/handlers/h1/versions", Some(&a), Body::Bytes(bytes))
    };
    assert_eq!(upload(common::guest("echo")).await.status, 201);
    assert_eq!(upload(common::guest("echo")).await.status, 200, "the same bytes again");
    let mut bigger = common::guest("echo");
    bigger.push(0);
    assert_problem(&upload(bigger).await, 413, "too-large", "over max_component_bytes");
    let small = common::guest("hostile-panic");
    assert!((small.len() as u64) < echo_size, "the test needs a component smaller than echo");
    assert_problem(&upload(small).await, 403, "over-limit", "versions per handler");
    admin.running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_uploads_are_refused_with_the_reason() {
    let owner = Owner::start().await;
    let admin = Admin::start(&owner.base_url()).await;
    let a = admin.tenant("a", &["topic-a"], json!({})).await;
    admin.ok(201, "PUT", "/v1/tenants/a/handlers/h", Some(&a), Body::Json(spec("topic-a"))).await;
    let echo = common::guest("echo");
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        ("not a component", b"#!/bin/sh\necho hello\n".to_vec(), "not-wasm", "not a WebAssembly file"),
        ("a core module", b"\0asm\x01\0\0\0".to_vec(), "core-module", "wasm32-wasip2"),
        ("truncated", echo[..echo.len() / 2].to_vec(), "invalid-component", "not a valid component"),
        ("the wrong world", b"\0asm\x0d\0\x01\0".to_vec(), "missing-export", "`handle`"),
        ("hostile imports", common::guest("hostile-filesystem"), "forbidden-imports", "wasi:filesystem"),
        ("sockets", common::guest("hostile-sockets"), "forbidden-imports", "wasi:sockets"),
    ];
    for (what, bytes, kind, reason) in cases {
        let answer =
            admin.call("POST", "/v1/tenants/a/handlers/h/versions", Some(&a), Body::Bytes(bytes)).await;
        assert_problem(&answer, 422, kind, what);
        assert!(answer.body["detail"].as_str().unwrap().contains(reason), "{what}: {answer:#?}");
    }
    let handler = admin.ok(200, "GET", "/v1/tenants/a/handlers/h", Some(&a), Body::None).await;
    assert_eq!(handler["versions"], json!([]), "nothing refused was stored");
    let stored = std::fs::read_dir(admin.state_dir.join("components/sha256")).unwrap().count();
    assert_eq!(stored, 0);
    admin.running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_bodies_are_refused_before_validation() {
    let owner = Owner::start().await;
    let admin = Admin::start(&owner.base_url()).await;
    let a = admin.tenant("a", &["topic-a"], json!({ "max_component_bytes": 1024 })).await;
    admin.ok(201, "PUT", "/v1/tenants/a/handlers/h", Some(&a), Body::Json(spec("topic-a"))).await;
    let answer = admin
        .call("POST", "/v1/tenants/a/handlers/h/versions", Some(&a), Body::Bytes(common::guest("echo")))
        .await;
    assert_problem(&answer, 413, "too-large", "over the tenant's 1 KiB");
    assert!(answer.body["detail"].as_str().unwrap().contains("1024"));
    admin.running.stop().await;
}

// --- the OpenAPI document ----------------------------------------------------------------------

fn repository_document() -> std::path::PathBuf {
    common::repo_root().join("docs/openapi.json")
}

#[test]
fn the_openapi_document_in_the_repository_is_the_servers() {
    let generated = keyhole::admin::openapi::document();
    if std::env::var_os("KEYHOLE_WRITE_OPENAPI").is_some() {
        std::fs::write(repository_document(), &generated).unwrap();
    }
    let kept = std::fs::read_to_string(repository_document()).unwrap_or_default();
    assert!(
        kept == generated,
        "docs/openapi.json differs from the server's document; regenerate it with \
         KEYHOLE_WRITE_OPENAPI=1 cargo test --test it admin::the_openapi_document"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_documented_operation_is_served_with_a_documented_status() {
    let owner = Owner::start().await;
    let admin = Admin::start(&owner.base_url()).await;
    let (a, _, version) = two_tenants(&admin).await;
    let served = admin.ok(200, "GET", "/openapi.json", None, Body::None).await;
    let kept: Value = serde_json::from_str(&std::fs::read_to_string(repository_document()).unwrap()).unwrap();
    assert!(served == kept, "/openapi.json does not serve the repository's document");
    let mut operations = 0;
    for (template, item) in kept["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let path = template
                .replace("{tenant}", "a")
                .replace("{handler}", "h")
                .replace("{version}", &version)
                .replace("{token_id}", "0000");
            let secured = operation.get("security").is_some();
            // The monitoring endpoints are served on their own listener, and only there.
            let answer = if operation["tags"][0] == "monitoring" {
                let elsewhere = admin.call(&method.to_uppercase(), &path, None, Body::None).await;
                assert_problem(
                    &elsewhere,
                    404,
                    "no-such-route",
                    "a monitoring endpoint on the API's listener",
                );
                admin.probe(&path).await
            } else {
                // Unauthenticated first: every secured operation answers 401 (documented),
                // which also proves the route exists for this method.
                admin.call(&method.to_uppercase(), &path, None, Body::None).await
            };
            let documented: Vec<&String> = operation["responses"].as_object().unwrap().keys().collect();
            let what = format!("{method} {template}");
            assert!(
                documented.contains(&&answer.status.to_string()),
                "{what} answered {} which is not documented ({documented:?}): {answer:#?}",
                answer.status
            );
            assert!(
                !["no-such-route", "method-not-allowed"]
                    .iter()
                    .any(|k| answer.body["type"] == format!("urn:keyhole:problem:{k}")),
                "{what} is not served"
            );
            assert_eq!(
                secured,
                answer.status == 401,
                "{what}: security documented {secured}, got {}",
                answer.status
            );
            operations += 1;
        }
    }
    assert_eq!(operations, 20, "every operation was checked");
    // A route that is not documented is not served either.
    let answer = admin.call("GET", "/v1/tenants/a/secrets", Some(&a), Body::None).await;
    assert_problem(&answer, 404, "no-such-route", "an undocumented path");
    let answer = admin.call("PATCH", "/v1/tenants/a", Some(OPERATOR), Body::None).await;
    assert_problem(&answer, 405, "method-not-allowed", "an undocumented method");
    admin.running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn keyhole_deploy_prints_the_reason_a_component_is_refused() {
    let owner = Owner::start().await;
    let admin = Admin::start(&owner.base_url()).await;
    let a = admin.tenant("a", &["topic-a"], json!({})).await;
    admin.ok(201, "PUT", "/v1/tenants/a/handlers/h", Some(&a), Body::Json(spec("topic-a"))).await;
    let deploy = |token: &str| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_keyhole"));
        command
            .arg("deploy")
            .arg(common::guest_path("hostile-sockets"))
            .args(["--admin-url", &admin.url, "--tenant", "a", "--handler", "h"])
            .env("KEYHOLE_TOKEN", token);
        tokio::task::spawn_blocking(move || command.output().unwrap())
    };
    let refused = deploy(&a).await.unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("422") && stderr.contains("wasi:sockets"), "{stderr}");
    let bad_token = deploy("kh_wrong").await.unwrap();
    let stderr = String::from_utf8_lossy(&bad_token.stderr);
    assert_eq!(bad_token.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("401"), "{stderr}");
    admin.running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_says_why_keyhole_is_not_ready() {
    let owner = Owner::start().await;
    let state_dir = std::env::temp_dir().join(common::broker::unique("keyhole-registry"));
    std::fs::create_dir_all(&state_dir).unwrap();
    let settings = common::config::TestConfig::admin("unready", &owner.base_url(), &state_dir)
        .set("kafka.bootstrap_servers", "127.0.0.1:9")
        .settings();
    let listeners = common::running::Listeners::bind().await;
    let (_, url) = listeners.urls();
    let running = common::running::Running::start_with(settings, Some(listeners));
    let get = |path: &str| reqwest::get(format!("{url}{path}"));
    // Alive, but not ready: no broker answers on port 9.
    let alive = get("/healthz").await.unwrap();
    assert_eq!(alive.status(), 200);
    // Not ready from the start; the reason is the broker once its first check (2 s at most)
    // has failed. The probe itself asks the broker nothing: it answers at once.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let asked = std::time::Instant::now();
        let ready = get("/readyz").await.unwrap();
        assert!(
            asked.elapsed() < std::time::Duration::from_millis(500),
            "a probe took {:?}",
            asked.elapsed()
        );
        assert_eq!(ready.status(), 503);
        assert_eq!(ready.headers()["content-type"], "application/problem+json");
        let problem: Value = serde_json::from_slice(&ready.bytes().await.unwrap()).unwrap();
        let detail = problem["detail"].as_str().unwrap().to_string();
        if detail.contains("not reachable") {
            break;
        }
        assert!(detail.contains("Kafka cluster"), "{problem}");
        assert!(std::time::Instant::now() < deadline, "the broker's check never failed: {problem}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    running.stop().await;
}

/// Issue 23, problem 4: the supervisor held one lock while it drained a binding, so every
/// admin write, whoever's, waited for that drain. Tenant A's binding restarts on a new spec
/// while its one event waits 8 s for a slow data owner (the drain waits for it); meanwhile
/// tenant B changes and activates its handler, answered at once, and A's handler reads
/// `stopping`. A's own write is answered once its binding runs again, never two at once.
#[tokio::test(flavor = "multi_thread")]
async fn one_tenants_write_is_answered_while_another_tenants_binding_drains() {
    use common::admin::Answer;
    use std::time::{Duration, Instant};
    let owner = Owner::start().await;
    let state_dir = std::env::temp_dir().join(common::broker::unique("keyhole-registry"));
    std::fs::create_dir_all(&state_dir).unwrap();
    let group = common::broker::unique("keyhole");
    // The owner may take 20 s to answer: the slow answer is waited for, not retried.
    let settings = common::config::TestConfig::admin(&group, &owner.base_url(), &state_dir)
        .set("data_source.0.timeout_ms", 20_000)
        .set("shutdown.drain_timeout_ms", 10_000)
        .settings();
    let listeners = common::running::Listeners::bind().await;
    let (url, monitoring_url) = listeners.urls();
    let running = common::running::Running::start_with(settings, Some(listeners));
    let admin = Admin::from_parts(url.clone(), monitoring_url, running, state_dir, group);

    let (topic_a, topic_b) = (common::broker::create_topic(1).await, common::broker::create_topic(1).await);
    let a = admin.tenant("draining-a", &[&topic_a], json!({})).await;
    let b = admin.tenant("waiting-b", &[&topic_b], json!({})).await;
    let (ha, hb) = ("/v1/tenants/draining-a/handlers/h", "/v1/tenants/waiting-b/handlers/h");
    let mut versions = Vec::new();
    for (h, token, topic) in [(ha, &a, &topic_a), (hb, &b, &topic_b)] {
        admin.ok(201, "PUT", h, Some(token), Body::Json(spec(topic))).await;
        let uploaded = admin
            .ok(201, "POST", &format!("{h}/versions"), Some(token), Body::Bytes(common::guest("echo")))
            .await;
        versions.push(uploaded["version"].as_str().unwrap().to_string());
    }
    let active =
        admin.ok(200, "POST", &format!("{ha}/versions/{}/activate", versions[0]), Some(&a), Body::None).await;
    assert_eq!(active["state"], "running");

    // A's one event waits 8 s at the owner.
    owner.set("r/slow", common::owner::Answer::Release("text/plain", b"slow".to_vec()));
    owner.set_delay(Duration::from_secs(8));
    let producer = common::broker::producer();
    let headers = common::broker::reference("slow-1", "r/slow");
    common::broker::publish(&producer, &topic_a, None, None, &headers, None).await;
    let asked = Instant::now() + Duration::from_secs(30);
    while owner.max_concurrent() == 0 {
        assert!(Instant::now() < asked, "A's event never reached the owner");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A's spec changes: its binding drains (the event in flight) before it restarts.
    let restarting = tokio::spawn({
        let (url, a, topic_a) = (url.clone(), a.clone(), topic_a.clone());
        async move {
            let started = Instant::now();
            let mut changed = spec(&topic_a);
            changed["max_in_flight"] = json!(2);
            let http = reqwest::Client::new();
            let answer = common::admin::call(&http, &url, "PUT", ha, Some(&a), Body::Json(changed)).await;
            (answer, started.elapsed())
        }
    });
    let stopping = Instant::now() + Duration::from_secs(5);
    loop {
        let state = admin.ok(200, "GET", ha, Some(&a), Body::None).await;
        if state["state"] == "stopping" {
            break;
        }
        assert_eq!(state["state"], "running", "{state:#}");
        assert!(Instant::now() < stopping, "A's binding never started to stop: {state:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // B's writes meanwhile: answered at once, and truthful.
    async fn timed(admin: &Admin, token: &str, method: &str, path: &str, body: Body) -> (Answer, Duration) {
        let started = Instant::now();
        let answer = admin.call(method, path, Some(token), body).await;
        (answer, started.elapsed())
    }
    let (put, put_took) = timed(&admin, &b, "PUT", hb, Body::Json(spec(&topic_b))).await;
    assert_eq!(put.status, 200, "{put:#?}");
    let activate = format!("{hb}/versions/{}/activate", versions[1]);
    let (activated, activate_took) = timed(&admin, &b, "POST", &activate, Body::None).await;
    assert_eq!(activated.status, 200, "{activated:#?}");
    assert_eq!(activated.body["state"], "running", "{activated:#?}");
    for (what, took) in [("B's PUT", put_took), ("B's activation", activate_took)] {
        assert!(took < Duration::from_secs(2), "{what} took {took:?}: it waited for A's drain");
    }
    let draining = admin.ok(200, "GET", ha, Some(&a), Body::None).await;
    assert_eq!(draining["state"], "stopping", "A's binding is still draining: {draining:#}");

    // A's own write waited for its own drain, then its binding runs again.
    let (restarted, restart_took) = restarting.await.unwrap();
    assert_eq!(restarted.status, 200, "{restarted:#?}");
    assert_eq!(restarted.body["state"], "running", "{restarted:#?}");
    assert!(restart_took > Duration::from_secs(5), "A's drain took {restart_took:?}: it proved nothing");
    // The event in flight was finished by the drain, not abandoned.
    assert!(owner.seen().iter().any(|seen| seen.path == "r/slow" && seen.status == 200));
    owner.set_delay(Duration::ZERO);
    admin.running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn narrowing_a_grant_stops_the_handlers_it_no_longer_covers() {
    let owner = Owner::start().await;
    let admin = Admin::start(&owner.base_url()).await;
    let topic = common::broker::create_topic(1).await;
    let a = admin.tenant("a", &[&topic], json!({})).await;
    let h = "/v1/tenants/a/handlers/h";
    admin.ok(201, "PUT", h, Some(&a), Body::Json(spec(&topic))).await;
    let uploaded =
        admin.ok(201, "POST", &format!("{h}/versions"), Some(&a), Body::Bytes(common::guest("echo"))).await;
    let version = uploaded["version"].as_str().unwrap();
    let active =
        admin.ok(200, "POST", &format!("{h}/versions/{version}/activate"), Some(&a), Body::None).await;
    assert_eq!(active["state"], "running");
    let grant = |topics: Vec<&str>| {
        Body::Json(json!({ "topics": topics, "data_sources": ["owner"], "purposes": ["testing"] }))
    };
    admin.ok(200, "PUT", "/v1/tenants/a", Some(OPERATOR), grant(vec!["elsewhere"])).await;
    let stopped = admin.ok(200, "GET", h, Some(&a), Body::None).await;
    assert_eq!(stopped["state"], "not_granted", "{stopped:#}");
    assert!(stopped["state_reason"].as_str().unwrap().contains(&topic), "{stopped:#}");
    assert_eq!(stopped["active"], version, "the activation is kept for when the grant covers it again");
    admin.ok(200, "PUT", "/v1/tenants/a", Some(OPERATOR), grant(vec![&topic])).await;
    let running = admin.ok(200, "GET", h, Some(&a), Body::None).await;
    assert_eq!(running["state"], "running", "{running:#}");
    admin.running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_handlers_series_leave_the_metrics() {
    let owner = Owner::start().await;
    let admin = Admin::start(&owner.base_url()).await;
    let topic = common::broker::create_topic(1).await;
    // Names no other test uses: the metrics recorder is the test process's.
    let token = admin.tenant("retiring", &[&topic], json!({})).await;
    let h = "/v1/tenants/retiring/handlers/short-lived";
    admin.ok(201, "PUT", h, Some(&token), Body::Json(spec(&topic))).await;
    let uploaded = admin
        .ok(201, "POST", &format!("{h}/versions"), Some(&token), Body::Bytes(common::guest("echo")))
        .await;
    let version = uploaded["version"].as_str().unwrap();
    admin.ok(200, "POST", &format!("{h}/versions/{version}/activate"), Some(&token), Body::None).await;
    let label = r#"binding="retiring/short-lived""#;
    let series = |metrics: &str| metrics.lines().filter(|l| l.contains(label)).count();
    let metrics =
        reqwest::get(format!("{}/metrics", admin.monitoring_url)).await.unwrap().text().await.unwrap();
    assert!(series(&metrics) > 0, "no series of the running binding:\n{metrics}");
    admin.ok(204, "DELETE", h, Some(&token), Body::None).await;
    let metrics =
        reqwest::get(format!("{}/metrics", admin.monitoring_url)).await.unwrap().text().await.unwrap();
    assert_eq!(series(&metrics), 0, "the deleted handler's series are still served:\n{metrics}");
    admin.running.stop().await;
}

/// Sends one request with a raw path, as a client that does not normalise dot segments would.
async fn raw_request(admin: &Admin, method: &str, path: &str, token: &str, body: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = admin.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer.split(' ').nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn names_with_dots_are_refused_so_no_two_handlers_share_a_consumer_group() {
    let owner = Owner::start().await;
    let admin = Admin::start(&owner.base_url()).await;
    let grant = json!({ "topics": ["t"], "data_sources": ["owner"], "purposes": ["testing"] }).to_string();
    // `dot.x` + `y` and `dot` + `x.y` would both consume as `<group_id>.dot.x.y`.
    for tenant in ["dot.x", ".", "..", "%2E", "%2e%2E"] {
        let status = raw_request(&admin, "PUT", &format!("/v1/tenants/{tenant}"), OPERATOR, &grant).await;
        assert_eq!(status, 422, "tenant {tenant:?}");
    }
    let dot = admin.tenant("dot", &["t"], json!({})).await;
    for handler in ["x.y", ".", "..", "%2E%2E"] {
        let path = format!("/v1/tenants/dot/handlers/{handler}");
        let status = raw_request(&admin, "PUT", &path, &dot, &spec("t").to_string()).await;
        assert_eq!(status, 422, "handler {handler:?}");
    }
    let answer = admin.call("PUT", "/v1/tenants/dot/handlers/x.y", Some(&dot), Body::Json(spec("t"))).await;
    assert_problem(&answer, 422, "invalid", "a dotted handler name");
    assert!(answer.body["detail"].as_str().unwrap().contains("'.'"), "{answer:#?}");
    let tenants = admin.ok(200, "GET", "/v1/tenants", Some(OPERATOR), Body::None).await;
    assert_eq!(tenants.as_array().unwrap().len(), 1, "only `dot` exists: {tenants}");
    admin.ok(201, "PUT", "/v1/tenants/dot/handlers/x-y", Some(&dot), Body::Json(spec("t"))).await;
    admin.running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_must_be_application_wasm() {
    let owner = Owner::start().await;
    let admin = Admin::start(&owner.base_url()).await;
    let a = admin.tenant("a", &["topic-a"], json!({})).await;
    admin.ok(201, "PUT", "/v1/tenants/a/handlers/h", Some(&a), Body::Json(spec("topic-a"))).await;
    let url = format!("{}/v1/tenants/a/handlers/h/versions", admin.url);
    let http = reqwest::Client::new();
    for content_type in ["text/plain", "application/json", "application/x-www-form-urlencoded"] {
        let answer = http
            .post(&url)
            .bearer_auth(&a)
            .header("content-type", content_type)
            .body(common::guest("echo"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 415, "{content_type}");
        assert_eq!(answer.headers()["content-type"], "application/problem+json");
        let problem: Value = serde_json::from_slice(&answer.bytes().await.unwrap()).unwrap();
        assert_eq!(problem["type"], "urn:keyhole:problem:unsupported-media-type", "{problem}");
    }
    let handler = admin.ok(200, "GET", "/v1/tenants/a/handlers/h", Some(&a), Body::None).await;
    assert_eq!(handler["versions"], json!([]), "nothing refused was stored");
    for content_type in ["application/wasm", "application/octet-stream", "Application/WASM; charset=binary"] {
        let answer =
            http.post(&url).bearer_auth(&a).header("content-type", content_type).body(common::guest("echo"));
        let status = answer.send().await.unwrap().status();
        assert!(status == 201 || status == 200, "{content_type}: {status}");
    }
    admin.running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_grant_may_name_keyholes_own_topics() {
    let owner = Owner::start().await;
    let admin = Admin::start(&owner.base_url()).await;
    // Every binding's default dead-letter topic, uploaded ones included: `<group_id>.<t>.<h>.dlq`.
    let dead_letters = format!("{}.globex.scorer.dlq", admin.group);
    for (topics, replies) in [(vec![dead_letters.as_str()], vec![]), (vec!["t"], vec![dead_letters.as_str()])]
    {
        let grant = json!({ "topics": topics, "data_sources": ["owner"], "purposes": ["testing"], "reply_topics": replies });
        let answer = admin.call("PUT", "/v1/tenants/mallory", Some(OPERATOR), Body::Json(grant)).await;
        assert_problem(&answer, 422, "invalid", "a dead-letter topic in a grant");
        assert!(answer.body["detail"].as_str().unwrap().contains("keyhole's own topics"), "{answer:#?}");
    }
    let tenants = admin.ok(200, "GET", "/v1/tenants", Some(OPERATOR), Body::None).await;
    assert_eq!(tenants.as_array().unwrap().len(), 0, "{tenants}");
    admin.running.stop().await;
}
