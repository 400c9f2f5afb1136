//! write_per_type: what PostgreSQL writes, by whom and where: bytes written per backend type
//! (client backend, checkpointer, background writer, walwriter, autovacuum, ...) and kind of
//! file (WAL, relation data, temp files, SLRU, server log, other), with fsync counts and
//! latency, from the syscall tracepoints (postgres-bcc's write_per_type, counting transferred
//! bytes and classifying files by path). Manual: docs/write_per_type.md.
//!
//! - [`trace`]: load, attach the syscall tracepoints, drain the open events.
//! - [`kind`]: a path's kind of file.
//! - [`files`]: the kernel's file table read per period.
//! - [`report`]: the tables per period.
//! - [`records`]: the NDJSON records (docs/schema/write_per_type.json).

pub mod files;
pub mod kind;
pub mod records;
pub mod report;
pub mod trace;

use clap::Parser;
use pgbpf_common::{cli::OutputArgs, target::TargetArgs};

const EXAMPLES: &str = "\
Examples:
  write_per_type                     # every postgres process, a table at Ctrl-C
  write_per_type -p 4242 10          # a postmaster and its children, a table every 10 seconds
  write_per_type --container 3f2a -d 60   # a containerized server for a minute
  write_per_type --json -d 60        # NDJSON rows";

/// Bytes PostgreSQL writes per backend type and kind of file (WAL, relation data, temp
/// files, SLRU, server log), with fsync counts and latency.
#[derive(Parser, Debug)]
#[command(name = "write_per_type", version, after_help = EXAMPLES)]
pub struct Args {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub out: OutputArgs,
    /// Show at most this many rows in each table
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,
}

pgbpf_common::tool!(Args, "write_per_type", trace::start);
