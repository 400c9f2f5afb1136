//! io_timeouts: how long processes (PostgreSQL backends with their statement) were put to
//! sleep by dirty-page throttling and reclaim throttling, block I/O latency per process, and
//! what the flusher threads wrote back and why (postgres-bcc's io_timeouts/io_throttle, on
//! tracepoints). Manual: docs/io_timeouts.md.
//!
//! - [`trace`]: the tracepoints' field offsets, load, attach, drain the ring buffer.
//! - [`report`]: throttling, writeback and block tables per period.
//! - [`records`]: the NDJSON records (docs/schema/io_timeouts.json).

pub mod records;
pub mod report;
pub mod trace;

use clap::Parser;
use pgbpf_common::{
    cli::OutputArgs,
    target::{CommArg, TargetArgs},
};

const EXAMPLES: &str = "\
Examples:
  io_timeouts                      # every process: throttling per process and statement, at Ctrl-C
  io_timeouts -p 4242 10           # a postmaster and its backends, a report every 10 seconds
  io_timeouts --container 3f2a --block   # plus block I/O latency histograms per process
  io_timeouts --each -T            # also print every pause as it happens";

/// Dirty-page throttling pauses and reclaim throttling per process and PostgreSQL statement
/// (count, total, max), pages written back by device and reason, and with --block the
/// latency of block requests per process.
#[derive(Parser, Debug)]
#[command(name = "io_timeouts", version, after_help = EXAMPLES)]
pub struct Args {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub comm: CommArg,
    #[command(flatten)]
    pub out: OutputArgs,
    #[command(flatten)]
    pub redact: pgbpf_common::cli::RedactArg,
    /// Also trace block requests of the target (block_rq_issue/complete): latency histograms
    #[arg(long)]
    pub block: bool,
    /// Print every pause and throttling wait as it happens
    #[arg(long)]
    pub each: bool,
    /// Show at most this many rows in each table
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,
}

pgbpf_common::tool!(Args, "io_timeouts", trace::start);
