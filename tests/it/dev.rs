//! `keyhole demo` and `keyhole dev`, as a newcomer and a handler author run them: the real
//! pipeline on an in-process broker and sample data owner.
// A test fails loudly on anything unexpected; unwrap is how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::{guest_path, repo_root};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn keyhole(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keyhole")).args(args).current_dir(repo_root()).output().unwrap()
}

fn dev_json(handler: &Path, fixtures: &Path) -> Vec<serde_json::Value> {
    let output = keyhole(&[
        "dev",
        "--json",
        "--handler",
        handler.to_str().unwrap(),
        "--fixtures",
        fixtures.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn the_demo_shows_denied_and_withdrawn_events_never_reach_the_handler() {
    let output = keyhole(&["demo"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&output.stderr));
    let line = |id: &str| {
        text.lines().find(|l| l.contains(id)).unwrap_or_else(|| panic!("no {id} in {text}")).to_string()
    };
    assert!(line("evt-001").trim_start().starts_with("delivered"), "{text}");
    assert!(line("evt-003").trim_start().starts_with("denied"), "{text}");
    assert!(
        line("evt-004").contains("withdrawn after the event was published")
            && line("evt-004").trim_start().starts_with("denied")
    );
    assert!(line("evt-005").trim_start().starts_with("gone"));
    assert!(line("evt-006").trim_start().starts_with("refused"));
    // What the owner holds for the denied, withdrawn and erased users never shows up.
    for secret in ["Grace Hopper", "Alan Turing", "Edsger Dijkstra"] {
        assert!(!text.contains(secret), "{secret} reached the output:\n{text}");
    }
    assert!(text.contains("Ada Lovelace"), "the delivered record is echoed:\n{text}");
    assert!(text.contains("totals: 2 delivered, 2 denied, 1 gone, 1 refused, 0 handler error"), "{text}");
}

#[test]
fn rust_python_javascript_and_c_echo_give_identical_replies() {
    let fixtures = repo_root().join("examples/demo");
    let rust = dev_json(&guest_path("echo"), &fixtures);
    let python = dev_json(&guest_path("echo-py"), &fixtures);
    let javascript = dev_json(&guest_path("echo-js"), &fixtures);
    let c = dev_json(&guest_path("echo-c"), &fixtures);
    let delivered = rust.iter().filter(|r| r["outcome"] == "delivered").count();
    assert_eq!(delivered, 2, "{rust:#?}");
    assert_eq!(python, rust, "Python's replies differ from Rust's");
    assert_eq!(javascript, rust, "JavaScript's replies differ from Rust's");
    assert_eq!(c, rust, "C's replies differ from Rust's");
    // One event carries binary data: the echo says so in base64, in all four languages.
    let avatar: serde_json::Value = serde_json::from_str(rust[1]["reply"]["data"].as_str().unwrap()).unwrap();
    assert_eq!(avatar["data_base64"], "iVBORw0KGgoAAAANSUhEUg==");
}

#[test]
fn every_echo_handler_passes_dev_conformance_byte_for_byte_like_rust() {
    let conformance = |handler: &str| -> Vec<serde_json::Value> {
        let output =
            keyhole(&["dev", "--conformance", "--json", "--handler", guest_path(handler).to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(0), "{handler}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let rust = conformance("echo");
    let delivered = rust.iter().filter(|r| r["outcome"] == "delivered").count();
    assert_eq!(delivered, 8, "{rust:#?}");
    let reply = |id: &str| -> serde_json::Value {
        let result = rust.iter().find(|r| r["event_id"] == id).unwrap();
        serde_json::from_str(result["reply"]["data"].as_str().unwrap()).unwrap()
    };
    // The Rust echo's own reading of the edge cases: text stays text, anything that is not UTF-8
    // is base64.
    assert_eq!(reply("empty")["data"], "");
    for id in ["overlong", "surrogate", "truncated", "beyond-unicode", "binary"] {
        assert!(reply(id)["data_base64"].is_string(), "{id}: {}", reply(id));
    }
    for other in ["echo-py", "echo-js", "echo-c"] {
        assert_eq!(conformance(other), rust, "{other}'s replies differ from Rust's");
    }
    // The built-in set is the documented one, examples/conformance.
    assert_eq!(dev_json(&guest_path("echo"), &repo_root().join("examples/conformance")), rust);
}

fn fixtures_with(dir_name: &str, limits: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(common::broker::unique(dir_name));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("fixtures.toml"),
        format!(
            r#"
            [[record]]
            path = "r/1"
            body = '{{"x":1}}'
            consent = "granted"

            [[event]]
            id = "one"
            dataref = "r/1"

            [limits]
            {limits}
            "#
        ),
    )
    .unwrap();
    dir
}

#[test]
fn dev_exits_non_zero_and_says_why_when_the_handler_fails() {
    let fixtures = fixtures_with("keyhole-dev-panic", "");
    let output = keyhole(&[
        "dev",
        "--handler",
        guest_path("hostile-panic").to_str().unwrap(),
        "--fixtures",
        fixtures.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("handler error") && text.contains("trapped"), "{text}");

    let fixtures = fixtures_with("keyhole-dev-loop", "deadline_ms = 200");
    let output = keyhole(&[
        "dev",
        "--handler",
        guest_path("hostile-endless-loop").to_str().unwrap(),
        "--fixtures",
        fixtures.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("deadline exceeded"), "{text}");
}

#[test]
fn dev_names_a_refused_handler_and_a_broken_fixture_file() {
    let fixtures = fixtures_with("keyhole-dev-refused", "");
    let output = keyhole(&[
        "dev",
        "--handler",
        guest_path("hostile-sockets").to_str().unwrap(),
        "--fixtures",
        fixtures.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("hostile-sockets.wasm refused") && stderr.contains("wasi:sockets/"), "{stderr}");

    std::fs::write(fixtures.join("fixtures.toml"), "[[event]]\nid = 1\n").unwrap();
    let output = keyhole(&[
        "dev",
        "--handler",
        guest_path("echo").to_str().unwrap(),
        "--fixtures",
        fixtures.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("fixtures.toml"), "{stderr}");
}

#[test]
fn dev_watch_runs_again_when_the_handler_changes() {
    let dir = fixtures_with("keyhole-dev-watch", "");
    let handler = dir.join("handler.wasm");
    std::fs::copy(guest_path("echo"), &handler).unwrap();
    let out = std::fs::File::create(dir.join("out.jsonl")).unwrap();
    let mut child = crate::common::command_dying_with_the_test(env!("CARGO_BIN_EXE_keyhole"))
        .args(["dev", "--json", "--watch", "--handler"])
        .arg(&handler)
        .arg("--fixtures")
        .arg(&dir)
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let replies = |want: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(dir.join("out.jsonl")).unwrap();
            let lines: Vec<serde_json::Value> =
                text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
            if lines.len() >= want || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let first = replies(1);
    assert_eq!(first[0]["reply"]["type"], "keyhole.example.echo");
    let watched = std::fs::metadata(&handler).unwrap().modified().unwrap();
    std::fs::copy(guest_path("hostile-panic"), &handler).unwrap();
    // A visibly newer modification time even where timestamps are coarse (no waiting a second).
    let file = std::fs::File::options().write(true).open(&handler).unwrap();
    file.set_modified(watched + Duration::from_secs(2)).unwrap();
    drop(file);
    let second = replies(2);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(second.len(), 2, "no second run after the handler changed");
    // The new handler (one that panics) really ran.
    assert_eq!(second[1]["outcome"], "handler error", "{:?}", second[1]);
    std::fs::remove_dir_all(&dir).ok();
}
