//! `keyhole check`, as a third party runs it before uploading a handler.
// A test fails loudly on anything unexpected; unwrap is how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::guest_path;
use std::process::{Command, Output};

fn keyhole_check(file: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keyhole")).arg("check").arg(file).output().expect("run keyhole")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn check_accepts_both_examples_and_lists_imports_and_exports() {
    for name in ["echo", "age-band"] {
        let output = keyhole_check(&guest_path(name));
        let text = stdout(&output);
        assert_eq!(output.status.code(), Some(0), "{name}: {text}");
        assert!(text.contains("imports:\n") && text.contains("wasi:cli/stdout@"), "{text}");
        assert!(text.contains("exports:\n  handle (function)"), "{text}");
        assert!(text.contains("accepted:"), "{text}");
    }
}

#[test]
fn check_refuses_each_hostile_import_and_names_it() {
    for (name, import) in
        [("hostile-filesystem", "wasi:filesystem/types@"), ("hostile-sockets", "wasi:sockets/tcp@")]
    {
        let output = keyhole_check(&guest_path(name));
        let text = stdout(&output);
        assert_eq!(output.status.code(), Some(1), "{name}: {text}");
        let verdict = text.lines().find(|l| l.starts_with("refused:")).unwrap_or_else(|| panic!("{text}"));
        assert!(verdict.contains(import), "{verdict}");
    }
}

#[test]
fn check_json_gives_the_verdict_as_one_object() {
    let output = Command::new(env!("CARGO_BIN_EXE_keyhole"))
        .args(["check", "--json"])
        .arg(guest_path("hostile-sockets"))
        .output()
        .unwrap();
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(value["accepted"], false);
    assert!(value["reason"].as_str().unwrap().contains("wasi:sockets/"));
    assert!(value["imports"].as_array().unwrap().iter().any(|i| i == "wasi:sockets/udp@0.2.6"));
}

#[test]
fn check_refuses_a_file_that_is_not_wasm() {
    let file = std::env::temp_dir().join(format!("keyhole-not-wasm-{}.wasm", std::process::id()));
    std::fs::write(&file, b"#!/bin/sh\necho hi\n").unwrap();
    let output = keyhole_check(&file);
    std::fs::remove_file(&file).ok();
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).contains("not a WebAssembly file"));
}

#[test]
fn check_reports_a_missing_file_as_an_error() {
    let output = keyhole_check(std::path::Path::new("/nonexistent/handler.wasm"));
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read /nonexistent/handler.wasm"));
}

#[test]
fn pooling_falls_back_to_on_demand_when_address_space_is_short() {
    // 8 GiB of address space cannot hold the pool's reserved slots (hundreds of 4 GiB memory
    // reservations), so keyhole must fall back and still work.
    let script = format!(
        "ulimit -v 8388608 && exec '{}' check '{}'",
        env!("CARGO_BIN_EXE_keyhole"),
        guest_path("echo").display()
    );
    let output = Command::new("sh").arg("-c").arg(script).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{}{stderr}", stdout(&output));
    assert!(stderr.contains("Pooling allocator unavailable"), "{stderr}");
}
