//! The `keyhole` command line: one file per command, each parsing nothing and printing what
//! its user needs; the library does the work.

mod check;
mod deploy;
mod dev;
mod health;
mod owner;
mod processing_record;
mod publish;
mod receipts;
mod registry;
mod run;

use clap::{Parser, Subcommand};
use keyhole::telemetry::{self, LogFormat};
use std::path::PathBuf;
use std::process::ExitCode;

/// Runs untrusted WebAssembly handlers on consent-checked personal data referenced from Kafka.
#[derive(Parser)]
#[command(name = "keyhole", version, about)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
    /// Asks a running keyhole whether it is ready (its `/readyz`); exits 0 when it is, 1 when
    /// it is not or does not answer. For container health checks.
    Health {
        /// The endpoint to ask (default: the `/readyz` of the monitoring listener that --config
        /// sets up).
        #[arg(long)]
        url: Option<String>,
        /// The configuration whose `admin.monitoring_listen` to ask, when --url is not given.
        #[arg(long, default_value = "keyhole.toml")]
        config: PathBuf,
        /// How long to wait for the answer.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Prints the record of processing activities (GDPR Art. 30(1)): per tenant and handler,
    /// its purpose, data source, topics, versions, delivery, retention and safeguards, from the
    /// configuration, its registry (read, never written) and the broker. No secret is shown.
    ProcessingRecord(ProcessingRecordArgs),
    /// Moves the admin API's registry between a directory and the store the configuration
    /// names: from one instance's `state_dir` into Kafka, and back (a backup).
    #[command(subcommand)]
    Registry(RegistryCommand),
    /// Tools for data owners: test your endpoint the way keyhole will ask it.
    #[command(subcommand)]
    Owner(OwnerCommand),
    /// Reads access receipts back: verifies their hash chains; a person's access report.
    #[command(subcommand)]
    Receipts(receipts::ReceiptsCommand),
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
    /// Compiles the component on stdin and writes it, serialized, on stdout: the child process
    /// keyhole compiles untrusted components in, within its budget (sandbox/compiler.rs).
    #[command(name = "compile-component", hide = true)]
    CompileComponent,
}

#[derive(clap::Args)]
pub struct ProcessingRecordArgs {
    /// The configuration file; its `[admin]` and `[registry]` name the registry to read.
    #[arg(long, default_value = "keyhole.toml")]
    config: PathBuf,
    /// `markdown` for a data protection officer's register, `json` for tools.
    #[arg(long, value_enum, default_value_t = RecordFormat::Markdown)]
    format: RecordFormat,
    /// Writes the record to this file instead of stdout.
    #[arg(long)]
    output: Option<PathBuf>,
}

/// The formats of `keyhole processing-record`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum RecordFormat {
    /// Markdown.
    Markdown,
    /// JSON (`keyhole-processing-record/1`).
    Json,
}

#[derive(Subcommand)]
pub enum RegistryCommand {
    /// Writes the configured registry (tenants, grants, token digests, handlers, versions with
    /// their components, activations) into a new directory, in the local store's format.
    Export {
        /// The configuration file whose `[admin]` and `[registry]` name the registry.
        #[arg(long, default_value = "keyhole.toml")]
        config: PathBuf,
        /// The directory to write (must not hold a registry).
        #[arg(long)]
        to: PathBuf,
    },
    /// Writes the registry in a directory (a `state_dir`, or an export) into the configured
    /// registry, which must be empty.
    Import {
        /// The configuration file whose `[admin]` and `[registry]` name the registry.
        #[arg(long, default_value = "keyhole.toml")]
        config: PathBuf,
        /// The directory to read.
        #[arg(long)]
        from: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum OwnerCommand {
    /// Checks your endpoint against fixtures, as keyhole would ask it; exits 1 on any violation.
    ///
    /// Asks as keyhole asks and classifies each answer as keyhole does: the expected decisions,
    /// no data in refusals, 404 for an unknown reference, 401 without the token, a decision for
    /// an unknown handler version, readable Retry-After values, and latency percentiles. Exits 0
    /// when every check passes, 1 on any violation, 2 on a usage or fixture error. See
    /// docs/data-owners.md.
    Check(OwnerCheckArgs),
}

#[derive(clap::Args)]
pub struct OwnerCheckArgs {
    /// The endpoint's base URL, as the operator configures it (`[[data_source]] base_url`);
    /// each fixture's `dataref` is resolved against it.
    #[arg(long)]
    base_url: String,
    /// The fixture file (TOML): `[asker]` and `[[reference]]` entries.
    #[arg(long)]
    fixtures: PathBuf,
    /// The environment variable that holds the bearer token keyhole sends (never given on the
    /// command line, never printed).
    #[arg(long, default_value = "KEYHOLE_OWNER_TOKEN")]
    token_env: String,
    /// Limit on one request, connecting to the last byte (default: a data source's default
    /// `timeout_ms`, 5000).
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Rounds of the released references for the latency percentiles (0 to 10000).
    #[arg(long, default_value_t = 20)]
    repeat: u32,
    /// The batch endpoint, relative to --base-url (`[data_source.batch] path`, e.g. `batch`):
    /// the references are also posted in a batch and must get the same decisions.
    #[arg(long)]
    batch_path: Option<String>,
}

#[derive(clap::Args)]
pub struct RequestArgs {
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
pub struct HandlerArgs {
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
pub struct DeployArgs {
    /// The component (`.wasm`); check it first with `keyhole check`.
    file: PathBuf,
    #[command(flatten)]
    target: HandlerArgs,
    /// Uploads without activating.
    #[arg(long)]
    no_activate: bool,
}

#[derive(clap::Args)]
pub struct DevArgs {
    /// The handler component (`.wasm`).
    #[arg(long)]
    handler: PathBuf,
    /// A directory holding `fixtures.toml` (see docs/writing-handlers.md).
    #[arg(long, required_unless_present = "conformance")]
    fixtures: Option<PathBuf>,
    /// Runs the conformance fixtures built into keyhole instead (the edge cases of
    /// examples/conformance: JSON escapes, non-ASCII text, empty data, data that is not UTF-8,
    /// absent attributes): exits 1 unless the handler comes through every one.
    #[arg(long, conflicts_with = "fixtures")]
    conformance: bool,
    /// Prints one JSON object per event instead of text.
    #[arg(long)]
    json: bool,
    /// Runs again whenever the handler file changes.
    #[arg(long)]
    watch: bool,
}

#[derive(clap::Args)]
pub struct PublishArgs {
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
    /// A librdkafka producer property, `name=value` (repeatable): `security.protocol`,
    /// `ssl.ca.location`, `sasl.mechanism`, `sasl.username`, ...
    #[arg(long = "property", value_parser = parse_property)]
    properties: Vec<(String, String)>,
    /// A librdkafka property whose value is a secret, `name=VARIABLE`: the value is read from
    /// that environment variable, so that it is never on the command line (repeatable; e.g.
    /// `sasl.password=KAFKA_PASSWORD`).
    #[arg(long = "property-env", value_parser = parse_property)]
    properties_from_env: Vec<(String, String)>,
}

impl PublishArgs {
    /// The librdkafka properties: `--property`, then `--property-env` read from the environment.
    fn kafka_properties(&self) -> anyhow::Result<Vec<(String, String)>> {
        kafka_properties(&self.properties, &self.properties_from_env)
    }
}

fn parse_property(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?} is not name=value"))
}

/// `properties` followed by each `(name, variable)` of `from_env` with the variable's value. The
/// error names the variable, never a value.
fn kafka_properties(
    properties: &[(String, String)],
    from_env: &[(String, String)],
) -> anyhow::Result<Vec<(String, String)>> {
    let mut all = properties.to_vec();
    for (name, variable) in from_env {
        let value = std::env::var(variable).map_err(|_| {
            anyhow::anyhow!(
                "--property-env {name}={variable}: the environment variable {variable} is not set"
            )
        })?;
        all.push((name.clone(), value));
    }
    Ok(all)
}

/// Runs the parsed command; its exit code. Errors print as `error: ...` and exit 2.
pub fn run(cli: Cli) -> ExitCode {
    // The simulator prints its own report; there, only errors and the handler's own logs show.
    let default_filter = match cli.command {
        Command::Dev(_) | Command::Demo { .. } => "error,keyhole::guest=debug",
        _ => "warn,keyhole=info",
    };
    if let Command::CompileComponent = cli.command {
        // No logging set up: stderr carries only the reason a component does not compile.
        return keyhole::sandbox::compile_child();
    }
    telemetry::init(cli.log_format, default_filter);
    let result = match cli.command {
        Command::CompileComponent => Ok(keyhole::sandbox::compile_child()),
        Command::Check { file, json } => check::check(&file, json),
        Command::Run { config } => run::run(&config),
        Command::Publish(args) => publish::publish(*args),
        Command::Request(args) => publish::request(*args),
        Command::MockCluster { topics } => run::mock_cluster(&topics),
        Command::Health { url, config, timeout } => {
            health::target(url, &config).and_then(|url| health::health(&url, timeout))
        }
        Command::ProcessingRecord(args) => processing_record::processing_record(&args),
        Command::Registry(RegistryCommand::Export { config, to }) => registry::export(&config, &to),
        Command::Registry(RegistryCommand::Import { config, from }) => registry::import(&config, &from),
        Command::Owner(OwnerCommand::Check(args)) => owner::check(&args),
        Command::Receipts(command) => receipts::run(&command),
        Command::Deploy(args) => deploy::deploy(&args),
        Command::Rollback(args) => deploy::rollback(&args),
        Command::Dev(args) => dev::dev(&args),
        Command::Demo { handler, fixtures } => dev::demo(&handler, &fixtures),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}
