//! The `keyhole` binary: parses its arguments and runs the command ([`cli`]).

mod cli;

use clap::Parser as _;
use std::process::ExitCode;

fn main() -> ExitCode {
    cli::run(cli::Cli::parse())
}
