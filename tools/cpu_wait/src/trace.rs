//! cpu_wait's hooks: the scheduler's raw tracepoints, attached for the whole machine and
//! filtered in the kernel by the target; task_struct's pid and tgid offsets from the kernel's
//! BTF; records drained by `pgbpf_common::pg_probes::record_trace` into the report.

use pgbpf_common::{
    kernel_btf::KernelTypes, loader, output::Output, pg_probes, query_string::QueryAddrs,
    runtime::Attached, stacks, target::Target,
};

use crate::{Args, report::Reporter};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cpu_wait"));

/// (program, raw tracepoint) pairs.
const HOOKS: [(&str, &str); 4] = [
    ("cpu_switch", "sched_switch"),
    ("cpu_wakeup", "sched_wakeup"),
    ("cpu_wakeup_new", "sched_wakeup_new"),
    ("cpu_migrate", "sched_migrate_task"),
];

/// Resolves the target (processes named postgres in it), loads and attaches.
pub fn start<'a>(args: &'a Args, _out: &mut Output) -> anyhow::Result<Option<Attached<'a>>> {
    // sched_switch's fourth argument, the state the task left in, came with Linux 5.18.
    if !loader::kernel_at_least(5, 18) {
        anyhow::bail!(
            "cpu_wait needs Linux 5.18 or later (the prev_state argument of sched_switch)"
        );
    }
    let mut target = Target::resolve(&args.target, Some("postgres"))?;
    // sched_switch gives the task that runs next as a pointer: its pid is read at an offset.
    let k = KernelTypes::running(&[("task_struct", "pid"), ("task_struct", "tgid")])?;
    let pid_offset = k.offset("task_struct", "pid")?;
    let tgid_offset = k.offset("task_struct", "tgid")?;
    loader::check_privileges()?;
    target.follow_descendants()?;
    let fork_child_offset = QueryAddrs::fork_child_offset()?;
    let mut loaded = loader::load("cpu_wait", OBJECT, args.out.verbose, |l| {
        target.set_globals(l);
        QueryAddrs::set_globals(l, &fork_child_offset);
        l.override_global("TASK_PID_OFFSET", &pid_offset, true)
            .override_global("TASK_TGID_OFFSET", &tgid_offset, true);
        stacks::configure(l, stack_mode(args));
    })?;
    let mut report = Reporter::new(args);
    pg_probes::hand_stacks(&mut report, &mut loaded, stack_mode(args))?;
    target.fill_maps(&mut loaded.ebpf)?;
    target.attach_fork_tracking(&mut loaded)?;
    let (query_addrs, located) = QueryAddrs::start(&mut loaded, &target.processes_now())?;
    for (program, tracepoint) in HOOKS {
        loaded.attach_raw_tracepoint(program, tracepoint)?;
    }
    let ring = loaded.take_ring_buffer("EVENTS")?;
    Ok(Some(Attached {
        what: format!("Tracing CPU waits of {}", target.describe()),
        details: vec![format!("{located} PostgreSQL processes located")],
        started: loaded.started,
        watch: target.watched(),
        trace: pg_probes::record_trace(loaded, ring, query_addrs, report),
    }))
}

/// The stacks `--stack` takes: the kernel's path into the scheduler and the user code.
fn stack_mode(args: &Args) -> u32 {
    if args.stack {
        stacks::mode::USER | stacks::mode::KERNEL
    } else {
        0
    }
}
