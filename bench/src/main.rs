//! pgbpf-bench: measures a tool's cost side by side in one run, with interleaved repetitions
//! (these machines are noisy): pgbench -S TPS with no tracing, with the tool attached and with
//! the equivalent bpftrace script; time from start to attached; peak RSS. Prints the ratios
//! and writes the tool's section of docs/PERFORMANCE.md. pg_replay, which traces nothing, is
//! measured against pgreplay instead ([`replay`]). Not part of the test suite.

mod measure;
mod replay;
mod report;
mod scenario;
mod server;

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;

/// Overhead of a pgbpf tool against no tracing and against bpftrace, measured side by side.
#[derive(Parser, Debug)]
#[command(
    name = "pgbpf-bench",
    after_help = "Examples:\n  sudo target/release/pgbpf-bench page_reclaim --reps 5 --seconds 15\n  \
                  sudo target/release/pgbpf-bench --all --reps 3 --seconds 10"
)]
pub struct Args {
    /// The scenario to measure (a tool's name, or a tool's name and what sets it apart)
    #[arg(value_parser = scenario::names(), required_unless_present = "all")]
    pub tool: Option<String>,
    /// Measure every scenario, one after another, and rewrite each one's section
    #[arg(long, conflicts_with_all = ["tool", "baseline"])]
    pub all: bool,
    /// Repetitions of each variant (interleaved: none, tool, bpftrace, then rotated)
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub reps: u32,
    /// Length of each pgbench run, seconds
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    pub seconds: u64,
    /// pgbench clients (and threads)
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub clients: u32,
    /// Directory of the tool binaries
    #[arg(long, default_value = "target/release")]
    pub bin_dir: PathBuf,
    /// Also run the tool from this directory (a build of an earlier commit, say) as a fourth
    /// variant, so a change is measured against its baseline in the same run
    #[arg(long, value_name = "DIR")]
    pub baseline: Option<PathBuf>,
    /// pg_replay: the size of the big log the parsers and the memory bound are measured on
    #[arg(long, value_name = "MB", default_value_t = 1024)]
    pub log_mb: u64,
    /// Where to write the results (the tool's section is replaced, the rest kept)
    #[arg(long, default_value = "docs/PERFORMANCE.md")]
    pub out: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let names = match &args.tool {
        Some(name) => vec![name.clone()],
        None => scenario::names().into_iter().map(String::from).collect(),
    };
    // With --all a failed scenario is reported and the others still run.
    let mut failed = vec![];
    for name in names {
        let result = if name == "pg_replay" {
            replay::run(&args)
        } else {
            measure::run(&args, &name)
        };
        if let Err(e) = result {
            eprintln!("pgbpf-bench: error: {name}: {e:#}");
            failed.push(name);
        }
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("pgbpf-bench: failed: {}", failed.join(", "));
        ExitCode::FAILURE
    }
}
