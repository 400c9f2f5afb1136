//! cpu_wait: where PostgreSQL backends wait for a CPU: run-queue latency (woken or preempted
//! until running again) as log2 histograms per backend, statement and container; moves
//! between CPUs and involuntary context switches per statement; time off the CPU split by why
//! (the wait event PostgreSQL set, preemption, the kernel's sleep state). From the scheduler's
//! tracepoints; the seed's runqlat/cpu-migration experiments per statement. Manual:
//! docs/cpu_wait.md.
//!
//! - [`trace`]: load, attach the scheduler's raw tracepoints, drain the ring buffer.
//! - [`report`]: the tables per period.
//! - [`reasons`]: why a task was off the CPU (PostgreSQL's wait event classes).
//! - [`records`]: the NDJSON records (docs/schema/cpu_wait.json).

pub mod reasons;
pub mod records;
pub mod report;
pub mod trace;

use clap::Parser;
use pgbpf_common::{cli::OutputArgs, target::TargetArgs};

const EXAMPLES: &str = "\
Examples:
  cpu_wait                          # every postgres process, a table at Ctrl-C
  cpu_wait -p 4242 10               # a postmaster and its backends, a table every 10 seconds
  cpu_wait --container 3f2a -d 30   # a containerized server for 30 seconds
  cpu_wait --json -d 60             # NDJSON rows with log2 histograms
  cpu_wait --stack -d 30            # and the stacks the time off the CPU comes from";

/// Run-queue latency of PostgreSQL processes (from being woken or preempted to running
/// again): log2 histograms per backend, statement and container, CPU migrations and
/// involuntary context switches per statement, and time off the CPU by why.
#[derive(Parser, Debug)]
#[command(name = "cpu_wait", version, after_help = EXAMPLES)]
pub struct Args {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub out: OutputArgs,
    #[command(flatten)]
    pub redact: pgbpf_common::cli::RedactArg,
    /// Show at most this many rows in each table
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,
    /// Also the top stacks by time off the CPU (kernel and user stacks of each task as it
    /// left the CPU, symbolized)
    #[arg(long)]
    pub stack: bool,
}

pgbpf_common::tool!(Args, "cpu_wait", trace::start);
