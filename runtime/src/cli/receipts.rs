//! `keyhole receipts verify` and `keyhole receipts report`: the receipts read back, their
//! chains verified; a person's access report.

use anyhow::Context as _;
use keyhole::proof::{
    self, AccessReport, Collector, Options, PublishedHead, Query, Source, TopicSource, Verifier,
};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum ReceiptsCommand {
    /// Verifies the receipts' hash chains and names every receipt changed, removed, inserted,
    /// reordered or cut off (before a published head).
    ///
    /// Reads every line of the files, or every record of the topic (each partition from its
    /// beginning to its end, aborted transactions included), and prints the violations, each at
    /// its line (file:line) or record (partition@offset), and a summary per stream with its head
    /// (STREAM:SEQ:sha256:HEX): publish it, and give it to the next verification with --head.
    /// Exits 0 when nothing is wrong, 1 on any violation, 2 when the sources cannot be read.
    /// See docs/data-protection.md.
    Verify(VerifyArgs),
    /// A person's access report (GDPR Art. 15): every receipt about them, in time order, from the
    /// files or the topic, verified as it is read.
    ///
    /// Lists who asked (tenant, handler, version), when, for what purpose, from which data
    /// source, what was decided (status, attempt), with each receipt's place and check. Exits 0
    /// when every source verified, 1 on any violation, 2 when the sources cannot be read.
    Report(ReportArgs),
}

#[derive(clap::Args)]
pub struct SourceArgs {
    /// A receipts file (`receipts.path`), JSON lines (repeatable: several replicas' files).
    #[arg(long = "file", required_unless_present = "topic", conflicts_with = "topic")]
    files: Vec<PathBuf>,
    /// The receipts topic (`receipts.topic`).
    #[arg(long)]
    topic: Option<String>,
    /// Kafka's bootstrap servers, with --topic.
    #[arg(long, default_value = "127.0.0.1:9092", requires = "topic")]
    bootstrap_servers: String,
    /// A librdkafka consumer property, `name=value` (repeatable), with --topic: security
    /// settings and the like.
    #[arg(long = "property", value_parser = super::parse_property, requires = "topic")]
    properties: Vec<(String, String)>,
    /// A librdkafka property whose value is a secret, `name=VARIABLE`, with --topic: read from
    /// that environment variable, never given on the command line (e.g.
    /// `sasl.password=KAFKA_PASSWORD`; repeatable).
    #[arg(long = "property-env", value_parser = super::parse_property, requires = "topic")]
    properties_from_env: Vec<(String, String)>,
    /// How long reading the whole topic may take.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
    /// A published head, STREAM:SEQ:sha256:HEX as keyhole logs it ("receipts chain head"): the
    /// stream must reach SEQ, and its receipt there hash to HEX (repeatable).
    #[arg(long = "head")]
    heads: Vec<PublishedHead>,
    /// The topic has kept every receipt since its first (no retention, nothing deleted): a
    /// stream that starts after seq 1 is a violation (removed), not a note.
    #[arg(long)]
    from_start: bool,
    /// The most chained receipts held in memory (about 100 bytes each).
    #[arg(long, default_value_t = proof::verify::DEFAULT_MAX_RECEIPTS)]
    max_receipts: usize,
    /// Prints one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    source: SourceArgs,
}

#[derive(clap::Args)]
pub struct ReportArgs {
    /// The person's subject, as the data owner names them in events (repeatable).
    #[arg(long = "subject", required_unless_present = "datarefs")]
    subjects: Vec<String>,
    /// A path of the person's records (`customers/42`), for events without a subject
    /// (repeatable).
    #[arg(long = "dataref")]
    datarefs: Vec<String>,
    #[command(flatten)]
    source: SourceArgs,
}

impl SourceArgs {
    fn source(&self) -> anyhow::Result<Source> {
        Ok(match &self.topic {
            Some(topic) => Source::Topic(TopicSource {
                bootstrap_servers: self.bootstrap_servers.clone(),
                topic: topic.clone(),
                properties: super::kafka_properties(&self.properties, &self.properties_from_env)?,
                timeout: self.timeout,
            }),
            None => Source::Files(self.files.clone()),
        })
    }

    fn options(&self) -> Options {
        Options { from_start: self.from_start, max_receipts: self.max_receipts }
    }
}

/// Runs a `receipts` command; exit 0 when verified, 1 on any violation.
pub fn run(command: &ReceiptsCommand) -> anyhow::Result<ExitCode> {
    match command {
        ReceiptsCommand::Verify(args) => verify(&args.source),
        ReceiptsCommand::Report(args) => report(args),
    }
}

fn verify(args: &SourceArgs) -> anyhow::Result<ExitCode> {
    let mut verifier = Verifier::new(args.options());
    proof::read(&args.source()?, &mut verifier, |_, _| Ok(())).context("receipts not verified")?;
    let verification = verifier.finish(&args.heads);
    if args.json {
        println!("{}", serde_json::to_string(&verification)?);
    } else {
        print!("{verification}");
    }
    Ok(exit(verification.verified))
}

fn report(args: &ReportArgs) -> anyhow::Result<ExitCode> {
    let query = Query { subjects: args.subjects.clone(), datarefs: args.datarefs.clone() };
    let mut verifier = Verifier::new(args.source.options());
    let mut collector = Collector::new(query, proof::access::MAX_REPORT_RECEIPTS);
    proof::read(&args.source.source()?, &mut verifier, |at, parsed| collector.add(at, parsed))
        .context("no report")?;
    let report: AccessReport = collector.finish(verifier.finish(&args.source.heads));
    if args.source.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{report}");
    }
    Ok(exit(report.verified))
}

fn exit(verified: bool) -> ExitCode {
    if verified { ExitCode::SUCCESS } else { ExitCode::from(1) }
}
