//! spin_sema: the lowest layers of PostgreSQL's waiting: spinlock delays (`s_lock`, the slow
//! path once the test-and-set failed: where in the source, how long, how many sleeps),
//! semaphore sleeps (`PGSemaphoreLock`: an LWLock or a group update waiting) and the futex
//! waits they and the rest are made of, per site, backend type and statement
//! (postgres-bcc's `spin`, `sema` and `futex`, without kprobes). Manual: docs/spin_sema.md.
//!
//! - [`trace`]: find the functions, load, attach, drain the ring buffer.
//! - [`report`]: the tables per period.
//! - [`records`]: the NDJSON records (docs/schema/spin_sema.json).

pub mod records;
pub mod report;
pub mod trace;

use std::path::PathBuf;

use clap::Parser;
use pgbpf_common::{cli::OutputArgs, target::TargetArgs};

const EXAMPLES: &str = "\
Examples:
  spin_sema                          # every PostgreSQL of the installed binary, a table at Ctrl-C
  spin_sema -p 4242 10               # a postmaster and its backends, a table every 10 seconds
  spin_sema --container 3f2a -d 30   # a containerized server for 30 seconds
  spin_sema --json -d 60             # NDJSON rows with log2 histograms
  spin_sema --stack -d 30            # and where in PostgreSQL the waits come from";

/// Spinlock delays (s_lock), semaphore sleeps (PGSemaphoreLock) and futex waits of
/// PostgreSQL processes: count, total, max and a log2 histogram per site, backend type and
/// statement.
#[derive(Parser, Debug)]
#[command(name = "spin_sema", version, after_help = EXAMPLES)]
pub struct Args {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub out: OutputArgs,
    #[command(flatten)]
    pub redact: pgbpf_common::cli::RedactArg,
    /// The postgres binary to probe (default: the target's, or the installed one)
    #[arg(long, value_name = "PATH")]
    pub postgres: Option<PathBuf>,
    /// Show at most this many rows in each table
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,
    /// Also the top stacks by wait time (user stacks of the waiters when the wait began,
    /// symbolized)
    #[arg(long)]
    pub stack: bool,
}

pgbpf_common::tool!(Args, "spin_sema", trace::start);
