//! page_reclaim: memory reclaim per process and container (postgres-bcc's page_reclaim,
//! built on the vmscan tracepoints instead of kprobes). Manual: docs/page_reclaim.md.
//!
//! - [`trace`]: load, attach, and read the kernel's per-CPU maps.
//! - [`report`]: cumulative counters → interval and final reports.
//! - [`records`]: the NDJSON records (docs/schema/page_reclaim.json).

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
  page_reclaim                         # all reclaim on the machine, summary at Ctrl-C
  page_reclaim --container 3f2a 5      # a container, a report every 5 seconds
  page_reclaim --comm postgres -d 60   # postgres processes for one minute
  page_reclaim -p 4242 -p 4243 --json  # two processes, NDJSON
  page_reclaim --cgroup /kubepods.slice/kubepods-burstable.slice 10 6";

/// Memory reclaim per process and container: bytes reclaimed, reclaim episodes and the time
/// tasks stalled in memory-cgroup and direct reclaim (vmscan tracepoints).
#[derive(Parser, Debug)]
#[command(name = "page_reclaim", version, after_help = EXAMPLES)]
pub struct Args {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub comm: CommArg,
    #[command(flatten)]
    pub out: OutputArgs,
    /// Show at most this many processes in each table
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,
}

pgbpf_common::tool!(Args, "page_reclaim", trace::start);
