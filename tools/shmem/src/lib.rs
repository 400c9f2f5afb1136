//! shmem: shared memory of a PostgreSQL instance: what there is (main segment, SysV header,
//! DSM segments, /dev/shm as the instance sees it, per-process RSS/PSS) and, live, every
//! creation, resize, mapping and removal with its failures. Manual: docs/shmem.md.
//!
//! - [`snapshot`]: what shared memory there is now, from /proc.
//! - [`trace`]: the kernel layout, load, attach, drain the ring buffer.
//! - [`event`]: a kernel record as a user reads it.
//! - [`report`]: event lines and the mmap / anon shm / shm summaries.
//! - [`records`]: the NDJSON records (docs/schema/shmem.json).

pub mod event;
pub mod records;
pub mod report;
pub mod snapshot;
pub mod trace;

use std::path::PathBuf;

use clap::Parser;
use pgbpf_common::{cli::OutputArgs, target::TargetArgs};

const EXAMPLES: &str = "\
Examples:
  shmem -p 4242                  # snapshot, then every shared-memory call until Ctrl-C
  shmem --container 3f2a -T      # a containerized PostgreSQL: its own /dev/shm, its pids
  shmem -p 4242 --snapshot       # only what is there now (no tracing)
  shmem -p 4242 --failures 10    # only failed calls, and a summary every 10 s
  shmem -p 4242 --failures --stack  # and where in PostgreSQL each failed call was made
  shmem -p 4242 --json -d 60     # NDJSON: snapshot, events, summaries";

/// Shared memory of PostgreSQL: a snapshot of the main segment, SysV and DSM segments,
/// /dev/shm and per-process RSS/PSS; then every shm_open, ftruncate, fallocate, mmap,
/// unlink, memfd and SysV call with backend type, statement, size and result (failures with
/// the size asked for and the space left), and summaries (mmap / anon shm / shm).
#[derive(Parser, Debug)]
#[command(name = "shmem", version, after_help = EXAMPLES)]
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
    /// Print the snapshot and exit (no tracing)
    #[arg(long)]
    pub snapshot: bool,
    /// Print only failed calls as they happen (summaries still count everything)
    #[arg(long)]
    pub failures: bool,
    /// Show the user stack of each call printed (with --failures: of each failed call), as
    /// strace -k does, symbolized from the process's binaries and libraries
    #[arg(long)]
    pub stack: bool,
}

pgbpf_common::tool!(Args, "shmem", trace::start);
