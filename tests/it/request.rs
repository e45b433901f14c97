//! The round trip from the command line: `keyhole request` publishes a reference event, keyhole
//! resolves it and runs the handler, the handler's reply comes back correlated, and the command
//! prints it. Real broker (tansu), real owner, real sandbox.
// A test fails loudly on anything unexpected; unwrap is how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::broker::{self, create_topic};
use common::owner::{Answer, Owner};
use common::running::{Running, setup};
use std::process::{Command, Output};

/// Runs `keyhole request` against the test broker.
async fn request(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keyhole"));
    command.arg("request").args(["--bootstrap-servers", &broker::bootstrap()]).args(args);
    tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_from_the_command_line_gets_its_correlated_reply() {
    let owner = Owner::start().await;
    owner.set("customers/1", Answer::Release("application/json", br#"{"name":"Ada"}"#.to_vec()));
    owner.set("customers/2", Answer::Status(403));
    let replies = create_topic(1).await;
    let other = create_topic(1).await;
    let extra = format!("reply_topic = \"{replies}\"\n        reply_topics_allowed = [\"{other}\"]");
    let s = setup(&owner.base_url(), 1, &extra).await;
    let keyhole = Running::start(s.settings.clone());

    let output = request(&[
        "--topic",
        &s.topic,
        "--dataref",
        "customers/1",
        "--id",
        "req-1",
        "--correlation-id",
        "conv-7",
        "--key",
        "customer-1",
        "--reply-topic",
        &replies,
        "--timeout",
        "30s",
        "--json",
    ])
    .await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let reply: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(reply["topic"], replies.as_str());
    assert_eq!(reply["attributes"]["causationid"], "req-1");
    assert_eq!(reply["attributes"]["correlationid"], "conv-7");
    assert_eq!(reply["attributes"]["source"], "urn:keyhole:acme:echo");
    let echoed: serde_json::Value = serde_json::from_str(reply["data"].as_str().unwrap()).unwrap();
    assert_eq!(echoed["data"], r#"{"name":"Ada"}"#, "the handler got what the owner released");
    assert_eq!(echoed["id"], "req-1");

    // The request may ask for its reply on a topic the handler's allow-list has; text output.
    let output = request(&[
        "--topic",
        &s.topic,
        "--dataref",
        "customers/1",
        "--id",
        "req-2",
        "--reply-topic",
        &other,
        "--reply-to",
        "--timeout",
        "30s",
    ])
    .await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("causationid: req-2") && text.contains("correlationid: req-2"), "{text}");
    assert!(text.contains(r#"\"name\":\"Ada\""#), "{text}");

    // Consent refused: no reply; the command says so and exits 1 after its timeout.
    let output = request(&[
        "--topic",
        &s.topic,
        "--dataref",
        "customers/2",
        "--id",
        "req-3",
        "--reply-topic",
        &replies,
        "--timeout",
        "3s",
    ])
    .await;
    assert_eq!(output.status.code(), Some(1));
    let error = String::from_utf8(output.stderr).unwrap();
    assert!(error.contains("no reply to req-3") && error.contains("consent"), "{error}");
    keyhole.stop().await;
}
