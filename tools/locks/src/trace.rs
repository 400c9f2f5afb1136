//! locks' probes: PostgreSQL's lock__wait__start/done and deadlock__found sites, attached and
//! drained by `pgbpf_common::pg_probes` into the report.

use locks_ebpf::probe;
use pgbpf_common::{
    output::Output,
    pg_probes::{self, Probes},
    runtime::Attached,
    stacks,
};

use crate::{Args, report::Reporter};
use pgbpf_pgclient::names::{RelationId, RelationNames};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/locks"));

/// Resolves the target, finds the probe sites, loads and attaches.
pub fn start<'a>(args: &'a Args, _out: &mut Output) -> anyhow::Result<Option<Attached<'a>>> {
    let probes = Probes {
        tool: "locks",
        object: OBJECT,
        program: "lock_probe",
        probes: &[
            ("lock__wait__start", probe::WAIT_START),
            ("lock__wait__done", probe::WAIT_DONE),
            ("deadlock__found", probe::DEADLOCK),
        ],
        what: "lock waits",
        stacks: if args.stack { stacks::mode::USER } else { 0 },
        map_sizes: &[],
        globals: &[],
        required_symbols: &[],
        attach_more: None,
    };
    let names = RelationNames::for_dsn(args.dsn.as_deref(), "locks", RelationId::Oid)?;
    pg_probes::start(
        &probes,
        &args.target,
        args.postgres.as_deref(),
        args.out.verbose,
        Reporter::new(args, names),
    )
}
