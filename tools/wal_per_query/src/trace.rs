//! wal_per_query's probes: PostgreSQL's query__execute__start/done, wal__insert and
//! transaction__abort sites, attached and drained by `pgbpf_common::pg_probes` into the
//! report.

use pgbpf_common::{
    output::Output,
    pg_probes::{self, Probes},
    runtime::Attached,
};
use wal_per_query_ebpf::probe;

use crate::{Args, report::Reporter};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/wal_per_query"));

/// Resolves the target, finds the probe sites, loads and attaches.
pub fn start<'a>(args: &'a Args, _out: &mut Output) -> anyhow::Result<Option<Attached<'a>>> {
    let probes = Probes {
        tool: "wal_per_query",
        object: OBJECT,
        program: "wal_probe",
        probes: &[
            ("query__execute__start", probe::EXECUTE_START),
            ("query__execute__done", probe::EXECUTE_DONE),
            ("wal__insert", probe::WAL_INSERT),
            ("transaction__abort", probe::ABORT),
        ],
        what: "WAL written per statement",
        stacks: 0,
        map_sizes: &[],
        globals: &[],
        // Before PostgreSQL 13 there is no pgWalUsage to read: say so rather than count nothing.
        required_symbols: &[("pgWalUsage", "PostgreSQL 13 or later is needed")],
        attach_more: args.system.then_some(crate::system::attach as _),
    };
    pg_probes::start(
        &probes,
        &args.target,
        args.postgres.as_deref(),
        args.out.verbose,
        Reporter::new(args),
    )
}
