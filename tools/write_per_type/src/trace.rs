//! write_per_type's hooks: the openat, close, write, pwrite64, writev, pwritev, pwritev2,
//! fsync and fdatasync syscall tracepoints, attached for the whole machine and filtered in
//! the kernel by the target; open events drained by `pgbpf_common::pg_probes::record_trace`
//! into the report, which reads the file table itself.

use pgbpf_common::{
    loader, output::Output, pg_probes, pg_probes::ProbeReport as _, query_string::QueryAddrs,
    runtime::Attached, target::Target,
};

use crate::{Args, report::Reporter};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/write_per_type"));

/// (program, syscall) pairs: each program at sys_enter_SYSCALL, or sys_exit_ for exit_*.
const HOOKS: [(&str, &str); 17] = [
    ("enter_openat", "sys_enter_openat"),
    ("exit_openat", "sys_exit_openat"),
    ("enter_close", "sys_enter_close"),
    ("enter_write", "sys_enter_write"),
    ("enter_write", "sys_enter_pwrite64"),
    ("enter_write", "sys_enter_writev"),
    ("enter_write", "sys_enter_pwritev"),
    ("enter_write", "sys_enter_pwritev2"),
    ("enter_sync", "sys_enter_fsync"),
    ("enter_sync", "sys_enter_fdatasync"),
    ("exit_write", "sys_exit_write"),
    ("exit_write", "sys_exit_pwrite64"),
    ("exit_write", "sys_exit_writev"),
    ("exit_write", "sys_exit_pwritev"),
    ("exit_write", "sys_exit_pwritev2"),
    ("exit_write", "sys_exit_fsync"),
    ("exit_write", "sys_exit_fdatasync"),
];

/// Resolves the target (processes named postgres in it), loads and attaches.
pub fn start<'a>(args: &'a Args, _out: &mut Output) -> anyhow::Result<Option<Attached<'a>>> {
    let mut target = Target::resolve(&args.target, Some("postgres"))?;
    loader::check_privileges()?;
    target.follow_descendants()?;
    let fork_child_offset = QueryAddrs::fork_child_offset()?;
    let mut loaded = loader::load("write_per_type", OBJECT, args.out.verbose, |l| {
        target.set_globals(l);
        QueryAddrs::set_globals(l, &fork_child_offset);
    })?;
    let mut report = Reporter::new(args);
    report.take_maps(&mut loaded)?;
    target.fill_maps(&mut loaded.ebpf)?;
    target.attach_fork_tracking(&mut loaded)?;
    let (query_addrs, _) = QueryAddrs::start(&mut loaded, &[])?;
    // Descriptors open now (the files PostgreSQL keeps open) are classified while open.
    report.processes(&target.processes_now());
    for (program, tracepoint) in HOOKS {
        loaded.attach_tracepoint(program, "syscalls", tracepoint)?;
    }
    let ring = loaded.take_ring_buffer("EVENTS")?;
    Ok(Some(Attached {
        what: format!("Tracing writes of {}", target.describe()),
        details: vec![],
        started: loaded.started,
        watch: target.watched(),
        trace: pg_probes::record_trace(loaded, ring, query_addrs, report),
    }))
}
