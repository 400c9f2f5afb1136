//! working_set: which shared buffers PostgreSQL touches and how often. Accesses per relation
//! and fork (hits and reads, as pg_statio counts them) and the working set: distinct blocks by
//! how many times each was accessed, its size against shared_buffers. From the
//! buffer__read__done USDT probe, summed in the kernel (postgres-bcc's working_set, without
//! its gaps between buckets). Manual: docs/working_set.md.
//!
//! - [`trace`]: find the binary's probe sites, load, attach.
//! - [`blocks`]: the kernel's block and relation tables read per period; the histogram.
//! - [`report`]: the tables per period.
//! - [`records`]: the NDJSON records (docs/schema/working_set.json).

pub mod blocks;
pub mod records;
pub mod report;
pub mod trace;

use std::path::PathBuf;

use clap::Parser;
use pgbpf_common::{cli::OutputArgs, target::TargetArgs};

const EXAMPLES: &str = "\
Examples:
  working_set                        # every PostgreSQL of the installed binary, a table at Ctrl-C
  working_set -p 4242 10             # a postmaster and its backends, a table every 10 seconds
  working_set --dsn dbname=app -d 60 # relation names of database app, for a minute
  working_set --sample 10            # one access in ten: a tenth of the probe's cost
  working_set --json -d 60           # NDJSON rows";

/// Shared-buffer accesses per relation and fork (hits and reads), and the working set: how
/// many distinct blocks were accessed 1, 2-4, 5-49, 50-599 and 600+ times, and how much
/// memory that is against shared_buffers.
#[derive(Parser, Debug)]
#[command(name = "working_set", version, after_help = EXAMPLES)]
pub struct Args {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub out: OutputArgs,
    /// The postgres binary to probe (default: the target's, or the installed one)
    #[arg(long, value_name = "PATH")]
    pub postgres: Option<PathBuf>,
    /// Show at most this many relations
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,
    /// Name the relations of this connection's database (libpq conninfo or URI: "dbname=app",
    /// "postgresql://user@host/app"); without it relations are tablespace/database/filenode
    #[arg(long, value_name = "CONNINFO")]
    pub dsn: Option<String>,
    /// Count at most this many distinct blocks (kernel memory grows with the blocks met,
    /// about 80 bytes each); accesses past it are counted per relation and said lost
    #[arg(long, value_name = "N", default_value_t = working_set_ebpf::DEFAULT_MAX_BLOCKS,
          value_parser = clap::value_parser!(u32).range(1..=1 << 26))]
    pub max_blocks: u32,
    /// Count one access in N (per CPU) and multiply the counts by N: less overhead, but
    /// blocks accessed fewer than N times are mostly missed from the working set
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub sample: u32,
}

pgbpf_common::tool!(Args, "working_set", trace::start);
