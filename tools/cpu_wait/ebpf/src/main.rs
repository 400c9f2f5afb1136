//! cpu_wait's kernel programs, on the scheduler's raw tracepoints (no kprobes): a traced task
//! leaving the CPU (sched_switch, the task is current) is remembered with the statement and
//! wait event it had then; being woken (sched_wakeup, sched_wakeup_new) marks it runnable;
//! running again (sched_switch, as `next`) ends the stretch: one ring buffer event with the
//! time asleep and the time on a run queue. sched_migrate_task counts moves between CPUs.
//! Only tasks that left the CPU while they were the target have an entry, keyed by the task's
//! address (what every hook is given: no read of its pid), so the work on every context switch
//! of the machine is the target check and one hash miss.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::{map, raw_tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::RawTracePointContext,
};
use cpu_wait_ebpf::{HEAD_LEN, RunEvent, STATE_NEW, STATE_PREEMPTED, counter, statement};
use pgbpf_common_ebpf::{
    counters::bump,
    query_string::{read_statement, read_wait_event},
    ring, stacks,
    target::current_is_target,
};

// Every counter has a slot in the shared map.
const _: () = assert!(counter::COUNT <= pgbpf_common_ebpf::counters::SLOTS);

/// The kernel's TASK_DEAD: the task's last switch.
const TASK_DEAD: u32 = 0x80;

/// Offsets of `task_struct.pid` and `.tgid` (set by userspace from the kernel's BTF).
#[unsafe(no_mangle)]
static TASK_PID_OFFSET: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
#[unsafe(no_mangle)]
static TASK_TGID_OFFSET: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// A traced task: its event being built, and where it is in its stretch off the CPU.
#[repr(C)]
#[derive(Clone, Copy)]
struct Task {
    event: RunEvent,
    /// When it left the CPU; 0 while it runs (or before it first left under trace).
    out_ns: u64,
    /// When it became runnable again; 0 while it sleeps.
    ready_ns: u64,
}

/// Traced tasks by `task_struct` address, each deleted at its last switch (traced or not by then: the target
/// filter forgets a process at its exit, before that switch). A plain hash map: when it is
/// full a task is not remembered and that is counted (an LRU map would silently evict the
/// longest sleepers, idle backends, and lose their next wait).
#[map]
static TASKS: HashMap<u64, Task> = HashMap::with_max_entries(4096, 0);

/// A zeroed [`Task`] to insert from (too big for the stack); never written.
#[map]
static EMPTY: PerCpuArray<Task> = PerCpuArray::with_max_entries(1, 0);

/// sched_switch(preempt, prev, next, prev_state): prev (current) leaves, next runs.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn cpu_switch(ctx: RawTracePointContext) -> i32 {
    // SAFETY: sched_switch has four arguments (Linux 5.18 on), each widened to a u64.
    let (preempt, next, prev_state) = unsafe {
        let args = ctx.as_ptr().cast::<u64>();
        (*args as u8 != 0, *args.add(2), *args.add(3) as u32)
    };
    // SAFETY: helper without arguments.
    let prev = unsafe { bpf_get_current_task() };
    if prev_state & TASK_DEAD != 0 {
        // A task's last switch: whatever it was, its entry goes (a task_struct reused later
        // starts clean). Most tasks have none: the delete is a miss.
        let _ = TASKS.remove(&prev);
    } else if current_is_target() {
        left_cpu(&ctx, prev, preempt, prev_state);
    }
    runs_again(next);
    0
}

/// sched_wakeup(p): p is runnable again.
#[raw_tracepoint(tracepoint = "sched_wakeup")]
pub fn cpu_wakeup(ctx: RawTracePointContext) -> i32 {
    if let Some(t) = TASKS.get_ptr_mut(&first_arg(&ctx)) {
        // SAFETY: this task's entry. Its writers do not overlap: a wakeup runs after the task
        // left the CPU (the waker waits for that), its next switch-in after the wakeup.
        let t = unsafe { &mut *t };
        if t.out_ns != 0 && t.ready_ns == 0 {
            // SAFETY: helper without arguments.
            t.ready_ns = unsafe { bpf_ktime_get_ns() };
        }
    }
    0
}

/// sched_wakeup_new(p): a child of a traced process (a backend forked by its postmaster) waits
/// for its first CPU.
#[raw_tracepoint(tracepoint = "sched_wakeup_new")]
pub fn cpu_wakeup_new(ctx: RawTracePointContext) -> i32 {
    if !current_is_target() {
        return 0;
    }
    let p = first_arg(&ctx);
    let (Some(tid), Some(tgid)) = (
        task_field(p, TASK_PID_OFFSET.load()),
        task_field(p, TASK_TGID_OFFSET.load()),
    ) else {
        return 0;
    };
    let Some(t) = entry(p) else {
        return 0;
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    t.out_ns = now;
    t.ready_ns = now;
    let e = &mut t.event;
    e.tid = tid;
    e.tgid = tgid;
    e.state = STATE_NEW;
    e.wait_event = 0;
    // SAFETY: helper without arguments.
    e.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    (e.statement, e.query_len, e.truncated) = (statement::NONE, 0, 0);
    (e.user_stack, e.kernel_stack) = (stacks::NONE, stacks::NONE);
    0
}

/// sched_migrate_task(p, dest_cpu): p moves to another CPU.
#[raw_tracepoint(tracepoint = "sched_migrate_task")]
pub fn cpu_migrate(ctx: RawTracePointContext) -> i32 {
    if let Some(t) = TASKS.get_ptr_mut(&first_arg(&ctx)) {
        // SAFETY: this task's entry; a lost increment under a race costs one migration.
        unsafe { (*t).event.migrations += 1 };
    }
    0
}

/// The current task leaves the CPU: remember when, why, and what it was running.
#[inline(always)]
fn left_cpu(ctx: &RawTracePointContext, task: u64, preempt: bool, prev_state: u32) {
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    let Some(t) = entry(task) else {
        return;
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // Preempted: still runnable. (A sleep cut short by a pending signal also leaves the task
    // runnable; no wakeup follows, and that stretch is counted as WAKEUP_UNSEEN.)
    let state = if preempt { STATE_PREEMPTED } else { prev_state };
    t.out_ns = now;
    t.ready_ns = if state == STATE_PREEMPTED { now } else { 0 };
    let e = &mut t.event;
    e.tid = tid;
    e.tgid = tgid;
    e.state = state;
    // SAFETY: helper without arguments.
    e.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // Why it sleeps, as PostgreSQL tells it (a preempted task waits for a CPU, whatever it
    // had set).
    e.wait_event = if state == STATE_PREEMPTED {
        0
    } else {
        read_wait_event(tgid)
    };
    e.query[0] = 0;
    (e.statement, e.query_len, e.truncated) = read_statement(tgid, &mut e.query).fields();
    // Where it left the CPU: the kernel's path into the scheduler (the why) and the user
    // code that made the call.
    // A preempted task's user stack is wherever its code was (a CPU profile's sample, a new
    // stack nearly every time, which would fill the map): its kernel stack says enough.
    e.user_stack = if state == STATE_PREEMPTED {
        stacks::NONE
    } else {
        stacks::user_stack(ctx)
    };
    e.kernel_stack = stacks::kernel_stack(ctx);
}

/// Task `task` runs again: if it is traced and its stretch off the CPU was seen from the
/// start, send it.
#[inline(always)]
fn runs_again(task: u64) {
    let Some(t) = TASKS.get_ptr_mut(&task) else {
        return;
    };
    // SAFETY: this task's entry. Its writers do not overlap: a wakeup runs after the task
    // left the CPU (the waker waits for that), its next switch-in after the wakeup.
    let t = unsafe { &mut *t };
    if t.out_ns == 0 {
        return;
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let (out_ns, ready_ns) = (t.out_ns, t.ready_ns);
    t.out_ns = 0;
    t.ready_ns = 0;
    if ready_ns == 0 {
        bump(counter::WAKEUP_UNSEEN);
        return;
    }
    t.event.sleep_ns = ready_ns.saturating_sub(out_ns);
    t.event.runq_ns = now.saturating_sub(ready_ns);
    if t.event.query_len == 0 {
        send::<[u8; HEAD_LEN]>(&t.event);
    } else {
        send::<RunEvent>(&t.event);
    }
    t.event.migrations = 0;
}

/// Sends the first `size_of::<T>()` bytes of `e`, counting a full ring buffer.
#[inline(always)]
fn send<T: 'static>(e: &RunEvent) {
    if !ring::send_copy::<T, RunEvent>(&EVENTS, e) {
        bump(counter::RINGBUF_FULL);
    }
}

/// The entry of `task`, made (zeroed) if it has none.
#[inline(always)]
fn entry(task: u64) -> Option<&'static mut Task> {
    if let Some(t) = TASKS.get_ptr_mut(&task) {
        // SAFETY: a map value lives as long as the program runs.
        return Some(unsafe { &mut *t });
    }
    let empty = EMPTY.get_ptr(0)?;
    // SAFETY: the zeroed value of this CPU's slot, read by the helper.
    if TASKS.insert(&task, unsafe { &*empty }, 0).is_err() {
        bump(counter::WAITING_FULL);
        return None;
    }
    // SAFETY: as above.
    TASKS.get_ptr_mut(&task).map(|t| unsafe { &mut *t })
}

/// The first argument of a raw tracepoint (a `struct task_struct *` for these).
#[inline(always)]
fn first_arg(ctx: &RawTracePointContext) -> u64 {
    // SAFETY: every tracepoint here has at least one argument.
    unsafe { *ctx.as_ptr().cast::<u64>() }
}

/// A pid_t member of a task_struct.
#[inline(always)]
fn task_field(task: u64, offset: u32) -> Option<u32> {
    if task == 0 {
        return None;
    }
    // SAFETY: a checked kernel read; a bad address fails cleanly.
    unsafe { bpf_probe_read_kernel((task + u64::from(offset)) as *const u32) }.ok()
}

pgbpf_common_ebpf::program_support!();
