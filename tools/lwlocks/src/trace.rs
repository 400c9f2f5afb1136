//! lwlocks' probes: PostgreSQL's lwlock__wait__start/done sites, attached and drained by
//! `pgbpf_common::pg_probes` into the report.

use lwlocks_ebpf::probe;
use pgbpf_common::{
    output::Output,
    pg_probes::{self, Probes},
    runtime::Attached,
    stacks,
};

use crate::{Args, hold, report::Reporter};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lwlocks"));

/// Resolves the target, finds the probe sites, loads and attaches.
pub fn start<'a>(args: &'a Args, _out: &mut Output) -> anyhow::Result<Option<Attached<'a>>> {
    let mut probes = vec![
        ("lwlock__wait__start", probe::WAIT_START),
        ("lwlock__wait__done", probe::WAIT_DONE),
    ];
    if args.hold {
        probes.extend([
            ("lwlock__acquire", probe::ACQUIRED),
            ("lwlock__condacquire", probe::ACQUIRED),
            ("lwlock__acquire__or__wait", probe::ACQUIRED),
            ("lwlock__release", probe::RELEASE),
        ]);
    }
    let unused: Vec<(&'static str, u32)> = if args.hold {
        vec![]
    } else {
        hold::MAPS.iter().map(|m| (*m, 1)).collect()
    };
    let probes = Probes {
        tool: "lwlocks",
        object: OBJECT,
        program: "lwlock_probe",
        probes: &probes,
        what: if args.hold {
            "LWLock waits and holds"
        } else {
            "LWLock waits"
        },
        stacks: if args.stack { stacks::mode::USER } else { 0 },
        map_sizes: &unused,
        globals: &[],
        required_symbols: &[],
        attach_more: None,
    };
    pg_probes::start(
        &probes,
        &args.target,
        args.postgres.as_deref(),
        args.out.verbose,
        Reporter::new(args),
    )
}
