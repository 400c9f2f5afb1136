//! spin_sema's hooks: uprobes at the entry and return of `s_lock` and `PGSemaphoreLock` in
//! the target's postgres binary (both exported in `.dynsym`, also from stripped builds), the
//! futex(2) enter and exit tracepoints; records drained by
//! `pgbpf_common::pg_probes::record_trace` into the report.

use anyhow::Context as _;
use aya::programs::uprobe::UProbeAttachLocation;
use pgbpf_common::{
    elf::Symbols, loader, output::Output, pg_probes, postgres, query_string::QueryAddrs,
    runtime::Attached, stacks, target::Target,
};

use crate::{Args, report::Reporter};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/spin_sema"));

/// (entry program, return program, function).
const FUNCTIONS: [(&str, &str, &str); 2] = [
    ("spin_enter", "spin_return", "s_lock"),
    ("sema_enter", "sema_return", "PGSemaphoreLock"),
];

/// Resolves the target, finds the functions, loads and attaches.
pub fn start<'a>(args: &'a Args, _out: &mut Output) -> anyhow::Result<Option<Attached<'a>>> {
    let mut target = Target::resolve(&args.target, Some("postgres"))?;
    let (binary, root) = postgres::binary_for_target(&target, args.postgres.as_deref())?;
    // Where each function is in the file (its symbol may be in a debug file only).
    let symbols = Symbols::open(&binary, &root)?;
    let mut offsets = vec![];
    for (_, _, function) in FUNCTIONS {
        let Some(vaddr) = symbols.address(function)? else {
            anyhow::bail!(
                "{} has no function {function} in its symbols (.dynsym, .symtab or a debug file)",
                binary.display()
            );
        };
        offsets.push(symbols.binary.vaddr_to_offset(vaddr)?);
    }
    loader::check_privileges()?;
    target.follow_descendants()?;
    let fork_child_offset = QueryAddrs::fork_child_offset()?;
    let mut loaded = loader::load("spin_sema", OBJECT, args.out.verbose, |l| {
        target.set_globals(l);
        QueryAddrs::set_globals(l, &fork_child_offset);
        stacks::configure(l, stack_mode(args));
    })?;
    let mut report = Reporter::new(args);
    pg_probes::hand_stacks(&mut report, &mut loaded, stack_mode(args))?;
    target.fill_maps(&mut loaded.ebpf)?;
    target.attach_fork_tracking(&mut loaded)?;
    let (query_addrs, located) = QueryAddrs::start(&mut loaded, &target.processes_now())?;
    for ((enter, ret, function), offset) in FUNCTIONS.into_iter().zip(offsets) {
        for program in [enter, ret] {
            loaded
                .attach_uprobe(
                    program,
                    &binary,
                    UProbeAttachLocation::AbsoluteOffset(offset),
                )
                .with_context(|| format!("attaching to {function}"))?;
        }
    }
    loaded.attach_tracepoint("futex_enter", "syscalls", "sys_enter_futex")?;
    loaded.attach_tracepoint("futex_exit", "syscalls", "sys_exit_futex")?;
    let ring = loaded.take_ring_buffer("EVENTS")?;
    Ok(Some(Attached {
        what: format!(
            "Tracing spinlock delays, semaphore sleeps and futex waits of {} in {}",
            target.describe(),
            binary.display()
        ),
        details: vec![format!("{located} PostgreSQL processes located")],
        started: loaded.started,
        watch: target.watched(),
        trace: pg_probes::record_trace(loaded, ring, query_addrs, report),
    }))
}

/// The stacks `--stack` takes: the waiters' user stacks.
fn stack_mode(args: &Args) -> u32 {
    if args.stack { stacks::mode::USER } else { 0 }
}
