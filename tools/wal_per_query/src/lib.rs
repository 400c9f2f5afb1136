//! wal_per_query: the WAL each PostgreSQL statement writes (records, full-page images, bytes,
//! as pg_stat_statements counts them) per statement, backend type and resource manager, from
//! PostgreSQL's USDT probes and each process's own `pgWalUsage` (postgres-bcc's wal_per_query,
//! without reading XLogRecData by hand). Manual: docs/wal_per_query.md.
//!
//! - [`trace`]: find the binary's probe sites, load, attach, drain the ring buffer.
//! - [`report`]: the tables per period.
//! - [`records`]: the NDJSON records (docs/schema/wal_per_query.json).
//! - [`rmgr`]: PostgreSQL's resource managers by id.
//! - [`system`]: `--system`, the WAL written to pg_wal and synced, by backend type.

pub mod records;
pub mod report;
pub mod rmgr;
pub mod system;
pub mod trace;

use std::path::PathBuf;

use clap::Parser;
use pgbpf_common::{cli::OutputArgs, target::TargetArgs};

const EXAMPLES: &str = "\
Examples:
  wal_per_query                      # every PostgreSQL of the installed binary, a table at Ctrl-C
  wal_per_query -p 4242 10           # a postmaster and its backends, a table every 10 seconds
  wal_per_query --container 3f2a -d 30   # a containerized server for 30 seconds
  wal_per_query --system 10          # and who wrote and synced pg_wal, how long it took
  wal_per_query --json -d 60         # NDJSON rows";

/// WAL written per PostgreSQL statement (records, full-page images and bytes, as
/// pg_stat_statements counts them), per backend type and per resource manager (heap, btree,
/// transaction, ...), with what was written outside statements (commits, vacuum).
#[derive(Parser, Debug)]
#[command(name = "wal_per_query", version, after_help = EXAMPLES)]
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
    /// Also the WAL written to pg_wal and synced, by backend type (walwriter, backends at
    /// commit, checkpointer), with write and fsync latency (syscall tracepoints)
    #[arg(long)]
    pub system: bool,
}

pgbpf_common::tool!(Args, "wal_per_query", trace::start);
