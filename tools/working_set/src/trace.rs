//! working_set's probe: PostgreSQL's buffer__read__done sites, attached by
//! `pgbpf_common::pg_probes`; the report reads the kernel's tables.

use pgbpf_common::{
    output::Output,
    pg_probes::{self, Probes},
    runtime::Attached,
};
use pgbpf_pgclient::names::{RelationId, RelationNames};
use working_set_ebpf::probe;

use crate::{Args, report::Reporter};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/working_set"));

/// Resolves the target, finds the probe sites, loads and attaches.
pub fn start<'a>(args: &'a Args, _out: &mut Output) -> anyhow::Result<Option<Attached<'a>>> {
    let names = RelationNames::for_dsn(args.dsn.as_deref(), "working_set", RelationId::FileNode)?;
    let sizes = [("BLOCKS", args.max_blocks)];
    let globals = [(working_set_ebpf::SAMPLE_GLOBAL, args.sample)];
    let probes = Probes {
        tool: "working_set",
        object: OBJECT,
        program: "buffer_probe",
        probes: &[("buffer__read__done", probe::READ_DONE)],
        what: "shared-buffer accesses",
        stacks: 0,
        map_sizes: &sizes,
        globals: &globals,
        required_symbols: &[],
        attach_more: None,
    };
    pg_probes::start(
        &probes,
        &args.target,
        args.postgres.as_deref(),
        args.out.verbose,
        Reporter::new(args, names),
    )
}
