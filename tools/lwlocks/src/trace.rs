//! lwlocks' probes: PostgreSQL's lwlock__wait__start/done sites, attached and drained by
//! `pgbpf_common::pg_probes` into the report.

use lwlocks_ebpf::probe;
use pgbpf_common::{
    output::Output,
    pg_probes::{self, Probes},
    runtime::Attached,
    stacks,
};

use crate::{Args, report::Reporter};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lwlocks"));

/// Resolves the target, finds the probe sites, loads and attaches.
pub fn start<'a>(args: &'a Args, _out: &mut Output) -> anyhow::Result<Option<Attached<'a>>> {
    let probes = Probes {
        tool: "lwlocks",
        object: OBJECT,
        program: "lwlock_probe",
        probes: &[
            ("lwlock__wait__start", probe::WAIT_START),
            ("lwlock__wait__done", probe::WAIT_DONE),
        ],
        what: "LWLock waits",
        stacks: if args.stack { stacks::mode::USER } else { 0 },
    };
    pg_probes::start(
        &probes,
        &args.target,
        args.postgres.as_deref(),
        args.out.verbose,
        Reporter::new(args),
    )
}
