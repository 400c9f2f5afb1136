//! llcache_per_query's kernel programs: one perf_event program per sampled event that adds
//! the sample to (process, CPU, statement). The statement is read at the sample from the
//! process's own `debug_query_string` (`pgbpf_common_ebpf::query_string`: nothing runs per
//! statement), or with `--usdt` taken from the query context that PostgreSQL's statement
//! probes keep (`pg_probe`).
//!
//! Samples go to one of two maps, chosen by `ACTIVE`: userspace flips it, lets programs in
//! flight finish, then drains the other map with no writer racing it (nothing is lost
//! between reading a count and deleting it).
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_smp_processor_id},
    macros::{map, perf_event, uprobe},
    maps::{Array, HashMap, PerCpuArray},
    programs::{PerfEventContext, ProbeContext},
};
use llcache_per_query_ebpf::{
    KEY_TEXT, MAX_EVENTS, PROTOCOL_NONE, PROTOCOL_UNKNOWN, PROTOCOL_UNREADABLE, SampleCounts,
    SampleKey, counter,
};
use pgbpf_common_ebpf::counters::bump;
use pgbpf_common_ebpf::{
    query::{PGBPF_QUERIES, Tracked, on_statement_probe},
    query_string::{StatementRead, read_statement},
    target::current_is_target,
};

// Every counter has a slot in the shared map.
const _: () = assert!(counter::COUNT <= pgbpf_common_ebpf::counters::SLOTS);

/// Capacity of each sample map (set by the loader from --max-keys).
const SAMPLE_KEYS: u32 = 16384;
const BPF_NOEXIST: u64 = 1;

#[map]
static SAMPLES_A: HashMap<SampleKey, SampleCounts> = HashMap::with_max_entries(SAMPLE_KEYS, 0);
#[map]
static SAMPLES_B: HashMap<SampleKey, SampleCounts> = HashMap::with_max_entries(SAMPLE_KEYS, 0);
/// Slot 0: 0 while samples go to SAMPLES_A, 1 for SAMPLES_B.
#[map]
static ACTIVE: Array<u32> = Array::with_max_entries(1, 0);
/// A key is built here: 272 bytes would take most of the 512-byte stack.
#[map]
static KEY_SCRATCH: PerCpuArray<SampleKey> = PerCpuArray::with_max_entries(1, 0);
/// 1: read the statement from debug_query_string at each sample; 0: the USDT query context.
#[unsafe(no_mangle)]
static READ_QUERY_STRING: aya_ebpf::Global<u32> = aya_ebpf::Global::new(1);
/// Bytes of statement text to read (at most KEY_TEXT).
#[unsafe(no_mangle)]
static TEXT_MAX: aya_ebpf::Global<u32> = aya_ebpf::Global::new(KEY_TEXT as u32);

/// PostgreSQL's statement probes: keep the query context of each backend.
#[uprobe]
pub fn pg_probe(ctx: ProbeContext) -> u32 {
    match on_statement_probe(&ctx, |_| {}) {
        Tracked::ContextFull => bump(counter::CONTEXT_FULL),
        Tracked::DoneWithoutStart => bump(counter::DONE_WITHOUT_START),
        Tracked::Done => {}
    }
    0
}

/// Fills `key` with the current task's process, CPU and statement.
#[inline(always)]
fn fill_key(key: &mut SampleKey) {
    let pid_tgid = bpf_get_current_pid_tgid();
    key.tgid = (pid_tgid >> 32) as u32;
    // SAFETY: helper without arguments.
    key.cpu = unsafe { bpf_get_smp_processor_id() };
    if READ_QUERY_STRING.load() != 0 {
        statement_from_query_string(key);
    } else {
        statement_from_context(key, pid_tgid as u32);
    }
}

/// The statement as the sampled process itself points at it now (its debug_query_string).
#[inline(always)]
fn statement_from_query_string(key: &mut SampleKey) {
    key.text = [0; KEY_TEXT];
    let max = (TEXT_MAX.load() as usize).clamp(1, KEY_TEXT);
    let (protocol, truncated) = match read_statement(key.tgid, &mut key.text[..max]) {
        StatementRead::Running { truncated, .. } => (PROTOCOL_UNKNOWN, truncated),
        StatementRead::Idle => (PROTOCOL_NONE, false),
        StatementRead::Unreadable => {
            bump(counter::UNREADABLE);
            (PROTOCOL_UNREADABLE, false)
        }
    };
    key.protocol = protocol;
    key.truncated = u8::from(truncated);
}

/// The statement of the query context kept by `pg_probe` (`--usdt`).
#[inline(always)]
fn statement_from_context(key: &mut SampleKey, tid: u32) {
    // SAFETY: a map value, read while this program runs. Its only writer is this task's own
    // uprobe, and the kernel does not run a perf_event program on a CPU where another BPF
    // program is running, so the text is never half-written here.
    let query = unsafe { PGBPF_QUERIES.get(&tid) }.filter(|q| q.protocol != PROTOCOL_NONE);
    let Some(q) = query else {
        key.protocol = PROTOCOL_NONE;
        key.truncated = 0;
        key.text = [0; KEY_TEXT];
        return;
    };
    key.protocol = q.protocol;
    let len = (q.text_len as usize).min(KEY_TEXT);
    key.truncated = u8::from(q.truncated != 0 || q.text_len as usize > KEY_TEXT);
    // Copy word by word and zero what lies past the text: the context's buffer keeps bytes of
    // longer earlier statements there, and they must not make equal statements differ.
    let src = q.text.as_ptr() as *const u64;
    let dst = key.text.as_mut_ptr() as *mut u64;
    for i in 0..KEY_TEXT / 8 {
        let off = i * 8;
        let word = if off >= len {
            0
        } else {
            // SAFETY: i < KEY_TEXT / 8 <= QUERY_TEXT_CAP / 8 words of the context's text;
            // unaligned reads are fine (both buffers sit at offset 16 of their structs anyway).
            let w = unsafe { src.add(i).read_unaligned() };
            let keep = len - off;
            if keep >= 8 {
                w
            } else {
                // Little-endian: the first `keep` bytes are the low ones.
                w & ((1u64 << (keep * 8)) - 1)
            }
        };
        // SAFETY: i < KEY_TEXT / 8 words of the key's text.
        unsafe { dst.add(i).write_unaligned(word) };
    }
}

/// Adds one sample of event `slot` for the current task, if it is a target.
#[inline(always)]
fn sample(slot: usize) {
    if slot >= MAX_EVENTS || !current_is_target() {
        return;
    }
    let Some(key) = KEY_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch slot; perf_event programs do not nest on a CPU.
    let key = unsafe { &mut *key };
    fill_key(key);
    let samples = match ACTIVE.get(0) {
        Some(1) => &SAMPLES_B,
        _ => &SAMPLES_A,
    };
    if let Some(counts) = samples.get_ptr_mut(key) {
        // SAFETY: a map value; the key holds this CPU, so no other CPU writes this entry.
        unsafe { (*counts).samples[slot] += 1 };
        return;
    }
    let mut counts = SampleCounts::default();
    counts.samples[slot] = 1;
    if samples.insert(key, &counts, BPF_NOEXIST).is_err() {
        bump(counter::MAP_FULL);
    }
}

/// One program per event slot: the slot tells the sample which event it is.
macro_rules! sample_programs {
    ($($name:ident = $slot:expr),*) => {$(
        #[perf_event]
        pub fn $name(_ctx: PerfEventContext) -> u32 {
            sample($slot);
            0
        }
    )*};
}
sample_programs!(
    sample_0 = 0,
    sample_1 = 1,
    sample_2 = 2,
    sample_3 = 3,
    sample_4 = 4,
    sample_5 = 5,
    sample_6 = 6,
    sample_7 = 7
);

pgbpf_common_ebpf::program_support!();
