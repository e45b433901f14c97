//! `keyhole processing-record`: the record of processing activities, in Markdown or JSON, on
//! stdout or into a file.

use super::{ProcessingRecordArgs, RecordFormat};
use anyhow::Context as _;
use keyhole::config::{Config, Settings};
use keyhole::processing_record;
use std::process::ExitCode;

/// Makes the record; exit 0 when it was written, an `Err` (exit 2) when the configuration or the
/// registry cannot be read. A broker that does not describe a topic does not fail the record:
/// the record says so.
pub fn processing_record(args: &ProcessingRecordArgs) -> anyhow::Result<ExitCode> {
    // Absolute, so that the paths the record shows (the audit file, the registry's directory)
    // say where they are wherever the record is read.
    let config = std::path::absolute(&args.config)
        .with_context(|| format!("cannot resolve {}", args.config.display()))?;
    let settings: Settings = Config::load(&config)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let record = runtime.block_on(processing_record::gather(&settings, &config.display().to_string()))?;
    let text = match args.format {
        RecordFormat::Markdown => processing_record::markdown(&record),
        RecordFormat::Json => processing_record::json(&record),
    };
    match &args.output {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!(
                "record of {} processing activities written to {}",
                record.activities.len(),
                path.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}
