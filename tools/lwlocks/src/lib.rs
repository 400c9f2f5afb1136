//! lwlocks: where PostgreSQL backends sleep on LWLocks: waits per tranche (WALWrite,
//! BufferContent, LockManager, ...), mode, backend type and statement, from PostgreSQL's own
//! USDT probes (postgres-bcc's lwlocks, counting real sleeps only and reading the tranche).
//! Manual: docs/lwlocks.md.
//!
//! - [`trace`]: find the binary's probe sites, load, attach, drain the ring buffer.
//! - [`report`]: the waits table per period.
//! - [`hold`]: `--hold`: hold times per tranche and mode, summed in the kernel.
//! - [`records`]: the NDJSON records (docs/schema/lwlocks.json).

pub mod hold;
pub mod records;
pub mod report;
pub mod trace;

use std::path::PathBuf;

use clap::Parser;
use pgbpf_common::{cli::OutputArgs, target::TargetArgs};

const EXAMPLES: &str = "\
Examples:
  lwlocks                          # every PostgreSQL of the installed binary, a table at Ctrl-C
  lwlocks -p 4242 10               # a postmaster and its backends, a table every 10 seconds
  lwlocks --container 3f2a -d 30   # a containerized server for 30 seconds
  lwlocks --json -d 60             # NDJSON rows with log2 histograms
  lwlocks --stack -d 30            # and where in PostgreSQL the waits come from
  lwlocks --hold -d 10             # and how long locks are held (costly: every acquisition)";

/// LWLock waits of PostgreSQL backends (only real sleeps, from the lwlock__wait__start/done
/// USDT probes): count, total, mean, max and a log2 histogram per tranche, mode, backend type
/// and statement.
#[derive(Parser, Debug)]
#[command(name = "lwlocks", version, after_help = EXAMPLES)]
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
    /// Also the top stacks by wait time (user stacks of the waiters, symbolized)
    #[arg(long)]
    pub stack: bool,
    /// Also hold times per tranche and mode (every acquisition and release is a probe hit:
    /// a cost on every LWLock, see the manual's OVERHEAD)
    #[arg(long)]
    pub hold: bool,
}

pgbpf_common::tool!(Args, "lwlocks", trace::start);
