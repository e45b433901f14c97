//! Compile bombs (issue 22, finding 2): a valid handler padded with code that is small to upload
//! and costly to compile. Its compile is stopped at the budget, another tenant's upload is
//! answered meanwhile, and an upload whose client goes away stops compiling.

use crate::common::admin::{Admin, Body, admin_config};
use crate::common::owner::Owner;
use crate::common::running::{Listeners, Running};
use crate::common::{self, broker};
use keyhole::config::Config;
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};
use wasm_encoder::{
    BlockType, CodeSection, ExportKind, ExportSection, Function, FunctionSection, Instruction, Module,
    TypeSection, ValType,
};

/// The echo handler with one more core module, instantiated, whose `functions` functions each
/// have `locals` locals, `depth` nested `if`s and `width` updates of locals inside each: every
/// local is live across every branch. Within keyhole's code limits; 2 × 200 × 200 × 200 is
/// 0.8 MB and takes about 20 s of CPU to compile (debug build).
fn bomb(functions: u32, locals: u32, depth: u32, width: u32) -> Vec<u8> {
    let mut types = TypeSection::new();
    types.ty().function([ValType::I64, ValType::I64], [ValType::I64]);
    let mut declared = FunctionSection::new();
    let mut exports = ExportSection::new();
    let mut code = CodeSection::new();
    let all = locals + 2;
    for index in 0..functions {
        declared.function(0);
        exports.export(&format!("f{index}"), ExportKind::Func, index);
        let mut f = Function::new([(locals, ValType::I64)]);
        // Every local depends on the parameters, so nothing folds away.
        for local in 2..all {
            f.instruction(&Instruction::LocalGet(local % 2))
                .instruction(&Instruction::I64Const(i64::from(local) * 7919))
                .instruction(&Instruction::I64Xor)
                .instruction(&Instruction::LocalSet(local));
        }
        for level in 0..depth {
            f.instruction(&Instruction::LocalGet(level % all))
                .instruction(&Instruction::I64Const(i64::from(level) + 1))
                .instruction(&Instruction::I64And)
                .instruction(&Instruction::I32WrapI64)
                .instruction(&Instruction::If(BlockType::Empty));
            for step in 0..width {
                let (a, b, to) = (
                    (level * 7 + step * 13) % all,
                    (level * 11 + step * 5 + 1) % all,
                    (level * 3 + step) % all,
                );
                f.instruction(&Instruction::LocalGet(a))
                    .instruction(&Instruction::LocalGet(b))
                    .instruction(&Instruction::I64Add)
                    .instruction(&Instruction::LocalSet(to));
            }
        }
        for _ in 0..depth {
            f.instruction(&Instruction::End);
        }
        f.instruction(&Instruction::LocalGet(2));
        for local in 3..all {
            f.instruction(&Instruction::LocalGet(local)).instruction(&Instruction::I64Add);
        }
        f.instruction(&Instruction::End);
        code.function(&f);
    }
    let mut module = Module::new();
    module.section(&types).section(&declared).section(&exports).section(&code);
    let module = module.finish();

    let mut wasm = common::guest("echo");
    let modules = core_modules(&wasm);
    section(1, &module, &mut wasm);
    // A core instance section: instantiate the new module (no imports), so that it is compiled.
    let mut instance = vec![1, 0];
    leb128(modules, &mut instance);
    instance.push(0);
    section(2, &instance, &mut wasm);
    wasm
}

/// Appends a component section: its id, then its bytes as a vector.
fn section(id: u8, data: &[u8], wasm: &mut Vec<u8>) {
    wasm.push(id);
    wasm_encoder::Encode::encode(data, wasm);
}

/// How many core modules a component defines at its top level.
fn core_modules(wasm: &[u8]) -> u32 {
    let mut depth = 0;
    let mut modules = 0;
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        match payload.unwrap() {
            wasmparser::Payload::Version { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth -= 1,
            wasmparser::Payload::ModuleSection { .. } if depth == 1 => modules += 1,
            _ => {}
        }
    }
    modules
}

fn leb128(mut value: u32, out: &mut Vec<u8>) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// keyhole with the admin API and the given `[sandbox]` compile settings.
async fn admin_with(owner_base: &str, sandbox_toml: &str) -> Admin {
    let state_dir = std::env::temp_dir().join(broker::unique("keyhole-registry"));
    std::fs::create_dir_all(&state_dir).unwrap();
    let group = broker::unique("keyhole");
    let toml = format!("{}\n[sandbox]\n{sandbox_toml}\n", admin_config(&group, owner_base, &state_dir));
    let config: Config = toml::from_str(&toml).unwrap();
    let settings = config.validate(Path::new(".")).unwrap_or_else(|p| panic!("{p:#?}"));
    let listeners = Listeners::bind().await;
    let (url, monitoring_url) = listeners.urls();
    let running = Running::start_with(settings, Some(listeners));
    Admin::from_parts(url, monitoring_url, running, state_dir, group)
}

async fn tenant_with_handler(admin: &Admin, tenant: &str) -> String {
    let topic = format!("topic-{tenant}");
    let token = admin.tenant(tenant, &[&topic], json!({ "max_component_bytes": 8 << 20 })).await;
    let spec = json!({ "topics": [topic], "data_source": "owner", "purpose": "testing" });
    admin.ok(201, "PUT", &format!("/v1/tenants/{tenant}/handlers/h"), Some(&token), Body::Json(spec)).await;
    token
}

/// The compiler children of this process: pid and whether still running (not a zombie).
fn compile_children() -> Vec<u32> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // After the command name's closing parenthesis: state, then the parent's pid.
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let compiling = String::from_utf8_lossy(&cmdline).contains("compile-component");
        if fields.get(1) == Some(&me.as_str()) && fields.first() != Some(&"Z") && compiling {
            found.push(pid);
        }
    }
    found
}

/// CPU time this process's own threads used, in seconds (a compile inside keyhole's process, as
/// before compiles moved to a child, shows here; a child's shows in [`compile_children`]).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let (_, rest) = stat.rsplit_once(')').unwrap();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; here counted from the state (3).
    let ticks: u64 = fields[11..13].iter().map(|f| f.parse::<u64>().unwrap()).sum();
    ticks as f64 / 100.0
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compile_bomb_is_stopped_at_its_budget_and_delays_no_other_tenant() {
    let owner = Owner::start().await;
    let admin = admin_with(&owner.base_url(), "compile_cpu_seconds = 3\ncompile_wall_seconds = 20").await;
    let a = tenant_with_handler(&admin, "a").await;
    let b = tenant_with_handler(&admin, "b").await;
    let bomb = bomb(2, 200, 200, 200);
    keyhole::sandbox::code_limits::read(&bomb).expect("the bomb is within the code limits");

    let started = Instant::now();
    let bombing = admin.call("POST", "/v1/tenants/a/handlers/h/versions", Some(&a), Body::Bytes(bomb));
    let other = async {
        // Once A's compile is under way.
        while compile_children().is_empty() && started.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!compile_children().is_empty(), "no compiler child for A's upload");
        let asked = Instant::now();
        let answer = admin
            .call("POST", "/v1/tenants/b/handlers/h/versions", Some(&b), Body::Bytes(common::guest("echo")))
            .await;
        (answer, asked.elapsed())
    };
    let (bombed, (other, waited)) = tokio::join!(
        async {
            let answer = bombing.await;
            (answer, started.elapsed())
        },
        other
    );
    assert_eq!(other.status, 201, "{other:#?}");
    assert!(waited < Duration::from_secs(5), "B waited {waited:?} behind A's compile");
    let (answer, took) = bombed;
    assert_eq!(answer.status, 422, "{answer:#?}");
    assert_eq!(answer.body["type"], "urn:keyhole:problem:compile-budget-exceeded", "{answer:#?}");
    assert!(answer.body["detail"].as_str().unwrap().contains("3 s of CPU time"), "{answer:#?}");
    assert!(took < Duration::from_secs(15), "A was answered after {took:?}");
    let handler = admin.ok(200, "GET", "/v1/tenants/a/handlers/h", Some(&a), Body::None).await;
    assert_eq!(handler["versions"], json!([]), "nothing refused was stored");
    assert!(compile_children().is_empty(), "a compiler outlived its upload");
    println!("bomb refused after {took:?}; the other tenant's upload took {waited:?}");
    admin.running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_abandoned_upload_stops_compiling() {
    let owner = Owner::start().await;
    let admin = admin_with(&owner.base_url(), "compile_cpu_seconds = 120\ncompile_wall_seconds = 120").await;
    let a = tenant_with_handler(&admin, "a").await;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    let upload = client
        .post(format!("{}/v1/tenants/a/handlers/h/versions", admin.url))
        .bearer_auth(&a)
        .header("content-type", "application/wasm")
        .body(bomb(2, 200, 200, 200))
        .send();
    let watch = async {
        let mut seen = Vec::new();
        for _ in 0..100 {
            seen = compile_children();
            if !seen.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seen
    };
    let (sent, compiling) = tokio::join!(upload, watch);
    assert!(sent.is_err(), "the upload was answered within 2 s: {sent:?}");
    assert!(!compiling.is_empty(), "no compiler child was running for the upload");
    // The client is gone: its compile must stop, and with it the CPU it burns.
    let deadline = Instant::now() + Duration::from_secs(3);
    while !compile_children().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(compile_children().is_empty(), "the compiler still runs after its client left: {compiling:?}");
    let before = cpu_seconds();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let burnt = cpu_seconds() - before;
    assert!(burnt < 1.5, "{burnt} s of CPU in 3 s after the upload was abandoned");
    let handler = admin.ok(200, "GET", "/v1/tenants/a/handlers/h", Some(&a), Body::None).await;
    assert_eq!(handler["versions"], json!([]));
    admin.running.stop().await;
}
