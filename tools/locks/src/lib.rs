//! locks: heavyweight lock waits of PostgreSQL (row, relation, transaction, advisory locks):
//! per lock type, relation, mode, backend type and statement, every wait as it ends with
//! `--each`, and each deadlock with the finder's statement and the other waiters'. From
//! PostgreSQL's USDT probes lock__wait__start/done and deadlock__found. Manual: docs/locks.md.
//!
//! - [`trace`]: find the binary's probe sites, load, attach, drain the ring buffer.
//! - [`lock`]: a LOCKTAG as pg_locks names it.
//! - [`report`]: the waits table per period, waits and deadlocks as they happen.
//! - [`records`]: the NDJSON records (docs/schema/locks.json).

pub mod lock;
pub mod records;
pub mod report;
pub mod trace;

use std::path::PathBuf;

use clap::Parser;
use pgbpf_common::{cli::OutputArgs, target::TargetArgs};

const EXAMPLES: &str = "\
Examples:
  locks                            # every PostgreSQL of the installed binary, a table at Ctrl-C
  locks -p 4242 --each             # a postmaster's backends, every wait as it ends
  locks --container 3f2a 10        # a containerized server, a table every 10 seconds
  locks --json -d 60               # NDJSON rows, waits and deadlocks
  locks --stack -d 30              # and where in PostgreSQL the waits come from";

/// Heavyweight lock waits of PostgreSQL backends (lock__wait__start/done USDT probes): count,
/// total, max and a log2 histogram per lock type, relation, mode, backend type and statement;
/// every wait as it ends with --each; deadlocks with the statements involved.
#[derive(Parser, Debug)]
#[command(name = "locks", version, after_help = EXAMPLES)]
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
    /// Print every wait as it ends (the lock, its mode, how long, the statement)
    #[arg(long)]
    pub each: bool,
    /// Show at most this many rows in each table
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,
    /// Also the top stacks by wait time (user stacks of the waiters, symbolized)
    #[arg(long)]
    pub stack: bool,
    /// Name the relations of this connection's database (libpq conninfo or URI: "dbname=app",
    /// "postgresql://user@host/app"); without it relations are OIDs
    #[arg(long, value_name = "CONNINFO")]
    pub dsn: Option<String>,
}

pgbpf_common::tool!(Args, "locks", trace::start);
