//! The `keyhole` command line: parses arguments, sets up logging, runs a command and maps its
//! result to an exit code. Everything else lives in the library.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use keyhole::config::Config;
use keyhole::pipeline;
use keyhole::sandbox::{Sandbox, SandboxConfig};
use keyhole::telemetry::{self, LogFormat};
use std::path::PathBuf;
use std::process::ExitCode;

/// Runs untrusted WebAssembly handlers on consent-checked personal data referenced from Kafka.
#[derive(Parser)]
#[command(name = "keyhole", version, about)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Checks that a handler component would be accepted: prints its imports and exports and
    /// the verdict; exits 1 when keyhole would refuse it.
    Check {
        /// The component file (`.wasm`).
        file: PathBuf,
        /// Prints the result as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Runs the pipeline described by a configuration file.
    Run {
        /// The configuration file.
        #[arg(long, default_value = "keyhole.toml")]
        config: PathBuf,
    },
    /// Runs a handler on fixtures through the real pipeline, with an in-process broker and data
    /// owner, and prints each outcome; exits 1 when the handler failed on any event.
    Dev(DevArgs),
    /// Shows keyhole at work with nothing else running: publishes a scenario (consent granted,
    /// missing, withdrawn after publishing, a record erased) and prints what the handler got.
    Demo {
        /// The handler.
        #[arg(long, default_value = "guest-examples/dist/echo.wasm")]
        handler: PathBuf,
        /// The scenario.
        #[arg(long, default_value = "examples/demo")]
        fixtures: PathBuf,
    },
    /// Publishes one reference event (a binary-mode CloudEvent with a `dataref` and no data),
    /// as a data owner or requester would, and prints where it landed.
    Publish(Box<PublishArgs>),
    /// Publishes a request (a reference event) and waits for the handler's correlated reply,
    /// then prints it; exits 1 when no reply came within the timeout.
    Request(Box<RequestArgs>),
    /// Uploads a handler component to a running keyhole and activates it: new events run on it
    /// at once, events in flight finish on the version they started on. The tenant's token is
    /// read from the KEYHOLE_TOKEN environment variable.
    Deploy(DeployArgs),
    /// Activates the version that was active before the current one. The tenant's token is
    /// read from KEYHOLE_TOKEN.
    Rollback(HandlerArgs),
    /// Runs librdkafka's in-process mock cluster until stdin closes or a signal comes, and prints
    /// its bootstrap servers. For tests that must kill keyhole while the broker lives on; not a
    /// broker for anything else (it keeps nothing on disk and does not filter aborted
    /// transactions).
    #[command(hide = true)]
    MockCluster {
        /// Topics to create, `name:partitions` (repeatable).
        #[arg(long = "topic")]
        topics: Vec<String>,
    },
}

#[derive(clap::Args)]
struct RequestArgs {
    #[command(flatten)]
    event: PublishArgs,
    /// The topic the reply comes on: the handler's `reply_topic`, or a topic its
    /// `reply_topics_allowed` has (then sent as the request's `replyto`, see --reply-to).
    #[arg(long)]
    reply_topic: String,
    /// Asks for the reply on --reply-topic through the request's `replyto` attribute.
    #[arg(long)]
    reply_to: bool,
    /// How long to wait for the reply.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
    /// Prints the reply as one JSON object (`data` when UTF-8, else `data_base64`).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct HandlerArgs {
    /// keyhole's admin API.
    #[arg(long, default_value = "http://127.0.0.1:9090")]
    admin_url: String,
    /// Your tenant name.
    #[arg(long)]
    tenant: String,
    /// The handler's name (create it first with its binding: see docs/admin-api.md).
    #[arg(long)]
    handler: String,
}

#[derive(clap::Args)]
struct DeployArgs {
    /// The component (`.wasm`); check it first with `keyhole check`.
    file: PathBuf,
    #[command(flatten)]
    target: HandlerArgs,
    /// Uploads without activating.
    #[arg(long)]
    no_activate: bool,
}

#[derive(clap::Args)]
struct DevArgs {
    /// The handler component (`.wasm`).
    #[arg(long)]
    handler: PathBuf,
    /// A directory holding `fixtures.toml` (see docs/writing-handlers.md).
    #[arg(long)]
    fixtures: PathBuf,
    /// Prints one JSON object per event instead of text.
    #[arg(long)]
    json: bool,
    /// Runs again whenever the handler file changes.
    #[arg(long)]
    watch: bool,
}

#[derive(clap::Args)]
struct PublishArgs {
    /// Kafka's bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap_servers: String,
    /// The topic of reference events.
    #[arg(long)]
    topic: String,
    /// The reference: a path relative to the data owner's base URL, e.g. `customers/42`.
    #[arg(long)]
    dataref: String,
    /// The CloudEvents id (default: a random UUID).
    #[arg(long)]
    id: Option<String>,
    /// The CloudEvents source.
    #[arg(long, default_value = "urn:keyhole:cli")]
    source: String,
    /// The CloudEvents type.
    #[arg(long = "type", default_value = "com.example.reference")]
    type_: String,
    /// The CloudEvents subject.
    #[arg(long)]
    subject: Option<String>,
    /// The partition key (also the message key): events with the same key stay in order.
    #[arg(long)]
    key: Option<String>,
    /// The correlation id.
    #[arg(long)]
    correlation_id: Option<String>,
    /// A librdkafka producer property, `name=value` (repeatable).
    #[arg(long = "property", value_parser = parse_property)]
    properties: Vec<(String, String)>,
}

fn parse_property(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?} is not name=value"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The simulator prints its own report; there, only errors and the handler's own logs show.
    let default_filter = match cli.command {
        Command::Dev(_) | Command::Demo { .. } => "error,keyhole::guest=debug",
        _ => "warn,keyhole=info",
    };
    telemetry::init(cli.log_format, default_filter);
    let result = match cli.command {
        Command::Check { file, json } => check(&file, json),
        Command::Run { config } => run(&config),
        Command::Publish(args) => publish(*args),
        Command::Request(args) => request(*args),
        Command::MockCluster { topics } => mock_cluster(&topics),
        Command::Deploy(args) => deploy(&args),
        Command::Rollback(args) => rollback(&args),
        Command::Dev(args) => dev(&args),
        Command::Demo { handler, fixtures } => demo(&handler, &fixtures),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn check(file: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    let wasm = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let sandbox = Sandbox::new(&SandboxConfig::default())?;
    let (report, verdict) = match sandbox.check(&wasm) {
        Ok(report) => (Some(report), Ok(())),
        Err((report, error)) => (report, Err(error)),
    };
    if json {
        let value = serde_json::json!({
            "file": file.display().to_string(),
            "accepted": verdict.is_ok(),
            "reason": verdict.as_ref().err().map(|e| e.to_string()),
            "imports": report.as_ref().map(|r| &r.imports),
            "exports": report.as_ref().map(|r| &r.exports),
        });
        println!("{value}");
    } else {
        if let Some(report) = &report {
            println!("imports:");
            for import in &report.imports {
                println!("  {import}");
            }
            println!("exports:");
            for export in &report.exports {
                println!("  {export}");
            }
        }
        match &verdict {
            Ok(()) => println!("accepted: {} implements keyhole:handler/handler@0.1.0", file.display()),
            Err(error) => println!("refused: {}: {error}", file.display()),
        }
    }
    Ok(if verdict.is_ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn run(config: &std::path::Path) -> anyhow::Result<ExitCode> {
    let settings = Config::load(config)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(pipeline::run(settings, None, shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

fn dev(args: &DevArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let mut last_change = modified(&args.handler);
    loop {
        let code = simulate_once(&runtime, &args.handler, &args.fixtures, args.json)?;
        if !args.watch {
            return Ok(code);
        }
        eprintln!("watching {} for changes (Ctrl-C stops)", args.handler.display());
        loop {
            std::thread::sleep(std::time::Duration::from_millis(300));
            let now = modified(&args.handler);
            if now != last_change {
                last_change = now;
                // Let the compiler finish writing the file.
                std::thread::sleep(std::time::Duration::from_millis(300));
                break;
            }
        }
    }
}

fn modified(path: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Runs the fixtures once; errors in the fixtures or the handler are reported and, in watch
/// mode, waited out.
fn simulate_once(
    runtime: &tokio::runtime::Runtime,
    handler: &std::path::Path,
    fixtures: &std::path::Path,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use keyhole::simulate::{self, fixtures::Fixtures, report};
    let fixtures = Fixtures::load(fixtures).map_err(anyhow::Error::msg)?;
    if !json {
        eprintln!("Starting an in-process Kafka cluster and data owner; running {}...", handler.display());
    }
    let results = match runtime.block_on(simulate::run(handler, &fixtures)) {
        Ok(results) => results,
        Err(error) => {
            eprintln!("error: {error}");
            return Ok(ExitCode::from(2));
        }
    };
    if json {
        print!("{}", report::json_lines(&results));
    } else {
        print!("{}", report::text(&handler.display().to_string(), &results));
    }
    Ok(if report::handler_failed(&results) { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn demo(handler: &std::path::Path, fixtures: &std::path::Path) -> anyhow::Result<ExitCode> {
    if !handler.is_file() {
        anyhow::bail!(
            "{} does not exist: build the example handlers first (scripts/build-guests.sh)",
            handler.display()
        );
    }
    println!("keyhole demo: a data owner published references to customer records; keyhole resolves each");
    println!("one with the owner at the moment of consumption, and the handler sees only what the owner");
    println!("released. Here the handler is `echo`, which replies with exactly what it received.\n");
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    simulate_once(&runtime, handler, fixtures, false)
}

/// The event `keyhole publish` and `keyhole request` send.
fn event_spec(args: &PublishArgs, reply_to: Option<String>) -> keyhole::publish::ReferenceEventSpec {
    keyhole::publish::ReferenceEventSpec {
        id: args.id.clone().unwrap_or_else(keyhole::publish::new_id),
        source: args.source.clone(),
        type_: args.type_.clone(),
        subject: args.subject.clone(),
        time: None,
        dataref: args.dataref.clone(),
        partition_key: args.key.clone(),
        correlation_id: args.correlation_id.clone(),
        reply_to,
    }
}

fn request(args: RequestArgs) -> anyhow::Result<ExitCode> {
    use base64::Engine as _;
    let event = event_spec(&args.event, args.reply_to.then(|| args.reply_topic.clone()));
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let reply = runtime.block_on(keyhole::publish::request(
        &args.event.bootstrap_servers,
        &args.event.properties,
        &args.event.topic,
        &event,
        &args.reply_topic,
        args.timeout,
    ));
    let reply = match reply {
        Ok(reply) => reply,
        Err(error @ keyhole::publish::RequestError::TimedOut { .. }) => {
            eprintln!("{error}");
            return Ok(ExitCode::from(1));
        }
        Err(error) => return Err(error.into()),
    };
    let text = std::str::from_utf8(&reply.data).ok();
    if args.json {
        let mut value = serde_json::to_value(&reply)?;
        match text {
            Some(text) => value["data"] = text.into(),
            None => {
                value["data_base64"] = base64::engine::general_purpose::STANDARD.encode(&reply.data).into()
            }
        }
        println!("{value}");
    } else {
        eprintln!(
            "request {} published to {}; reply at {}[{}]@{}:",
            event.id, args.event.topic, reply.topic, reply.partition, reply.offset
        );
        for (name, value) in &reply.attributes {
            println!("{name}: {value}");
        }
        println!();
        match text {
            Some(text) => println!("{text}"),
            None => println!("(base64) {}", base64::engine::general_purpose::STANDARD.encode(&reply.data)),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    use keyhole::publish;
    let event = event_spec(&args, None);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let producer = publish::producer(&args.bootstrap_servers, &args.properties)?;
    let (partition, offset) = runtime.block_on(publish::publish(
        &producer,
        &args.topic,
        &event,
        std::time::Duration::from_secs(30),
    ))?;
    println!("published {} to {}[{partition}]@{offset}", event.id, args.topic);
    Ok(ExitCode::SUCCESS)
}

/// The admin API client with the tenant's token from the environment (never from an argument,
/// which other users of the machine can see).
fn admin_client(args: &HandlerArgs) -> anyhow::Result<keyhole::deploy::Client> {
    let token = std::env::var("KEYHOLE_TOKEN")
        .context("set KEYHOLE_TOKEN to the token the operator issued to your tenant")?;
    Ok(keyhole::deploy::Client::new(&args.admin_url, &token)?)
}

fn deploy(args: &DeployArgs) -> anyhow::Result<ExitCode> {
    use keyhole::deploy::DeployError;
    let wasm = std::fs::read(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    let client = admin_client(&args.target)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let t = &args.target;
    match runtime.block_on(client.deploy(&t.tenant, &t.handler, wasm, !args.no_activate)) {
        Ok(deployed) => {
            let v = &deployed.version;
            let new = if deployed.created { "uploaded" } else { "already uploaded" };
            println!("{new}: {} ({} bytes, {})", v.version, v.size_bytes, v.contract);
            if let Some(handler) = &deployed.handler {
                println!("active: {}/{} runs {} (state: {})", t.tenant, t.handler, v.version, handler.state);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(error @ DeployError::Refused { .. }) => {
            eprintln!("refused: {error}");
            Ok(ExitCode::from(1))
        }
        Err(error) => Err(error.into()),
    }
}

fn rollback(args: &HandlerArgs) -> anyhow::Result<ExitCode> {
    let client = admin_client(args)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    match runtime.block_on(client.rollback(&args.tenant, &args.handler)) {
        Ok(handler) => {
            println!("active: {}/{} runs {}", args.tenant, args.handler, handler.active.unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
        Err(error @ keyhole::deploy::DeployError::Refused { .. }) => {
            eprintln!("refused: {error}");
            Ok(ExitCode::from(1))
        }
        Err(error) => Err(error.into()),
    }
}

fn mock_cluster(topics: &[String]) -> anyhow::Result<ExitCode> {
    let cluster = rdkafka::mocking::MockCluster::new(1)?;
    for topic in topics {
        let (name, partitions) = topic.split_once(':').unwrap_or((topic.as_str(), "1"));
        let partitions: i32 = partitions.parse().with_context(|| format!("{topic:?}: partitions"))?;
        cluster.create_topic(name, partitions, 1)?;
    }
    println!("{}", cluster.bootstrap_servers());
    // Lives until whoever started it closes stdin (or kills it).
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new())?;
    Ok(ExitCode::SUCCESS)
}

/// Completes on SIGTERM or SIGINT (Ctrl-C). If the handlers cannot be installed, keyhole runs
/// until killed, which loses nothing: offsets are stored only after events finish.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received."),
                _ = int.recv() => tracing::info!("SIGINT received."),
            }
        }
        _ => {
            tracing::error!("Cannot install signal handlers; stop keyhole with SIGKILL.");
            std::future::pending::<()>().await
        }
    }
}
