//! working_set's kernel program: PostgreSQL's buffer__read__done USDT probe, which fires once
//! per buffer lookup (ReadBuffer: the accesses pg_statio counts), hit or read. Each access
//! adds one to its block's hits or reads in a hash map the report reads (a relation's counts
//! are its blocks' sums): one map update per access, no event crosses to userspace. A second
//! table per relation fork takes the rare rest: accesses that added a block or used local
//! buffers, and those of blocks the full block table had no room for.
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{map, uprobe},
    maps::{HashMap, PerCpuArray},
    programs::ProbeContext,
};
use pgbpf_common_ebpf::{
    atomic_add,
    counters::bump,
    target::current_is_target,
    usdt::{usdt_arg, usdt_args_u32, usdt_spec},
};
use working_set_ebpf::{
    Accesses, Block, BlockAccesses, DEFAULT_MAX_BLOCKS, MAX_RELATIONS, RelFork, counter,
};

// Every counter has a slot in the shared map.
const _: () = assert!(counter::COUNT <= pgbpf_common_ebpf::counters::SLOTS);

/// Unused (nothing is sent per access); `pgbpf_common::pg_probes` drains a ring named so.
#[map]
static EVENTS: aya_ebpf::maps::RingBuf = aya_ebpf::maps::RingBuf::with_byte_size(4096, 0);

/// Accesses per block since attach (at most `--max-blocks`, set at load). Not preallocated
/// (BPF_F_NO_PREALLOC): its memory follows the blocks met, not the most it may hold.
#[map]
static BLOCKS: HashMap<Block, BlockAccesses> =
    HashMap::with_max_entries(DEFAULT_MAX_BLOCKS, NO_PREALLOC);

/// One access in this many is counted (`--sample`, set at load; 1: every access).
#[unsafe(no_mangle)]
static WORKING_SET_SAMPLE_EVERY: aya_ebpf::Global<u32> = aya_ebpf::Global::new(1);

/// Accesses since the last one counted, per CPU (with `--sample`).
#[map]
static SAMPLE_TICK: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// BPF_F_NO_PREALLOC.
const NO_PREALLOC: u32 = 1;

/// Per relation fork since attach: extends, local accesses, accesses past the block table.
#[map]
static RELATIONS: HashMap<RelFork, Accesses> =
    HashMap::with_max_entries(MAX_RELATIONS, NO_PREALLOC);

#[uprobe]
pub fn buffer_probe(ctx: ProbeContext) -> u32 {
    // Sampling first: an access passed over costs the trap and this, nothing more.
    let every = WORKING_SET_SAMPLE_EVERY.load();
    if every > 1
        && let Some(tick) = SAMPLE_TICK.get_ptr_mut(0)
    {
        // SAFETY: this CPU's slot; nothing else writes it while the program runs.
        unsafe {
            *tick += 1;
            if *tick < every {
                return 0;
            }
            *tick = 0;
        }
    }
    let Some(spec) = usdt_spec(&ctx) else {
        return 0;
    };
    if !current_is_target() {
        return 0;
    }
    // (fork, block) are locals side by side, (spc, db, rel, backend) the smgr's RelFileNode
    // and backend: two reads, not six.
    let [fork, block] = usdt_args_u32::<2>(&ctx, spec, 0);
    let [spc, db, rel, backend] = usdt_args_u32::<4>(&ctx, spec, 2);
    let rel = RelFork { spc, db, rel, fork };
    let block = Block { rel, block };
    // backend: -1 for shared buffers, the backend's number for its local ones.
    let local = backend as i32 != -1;
    let arg = |n: usize| usdt_arg(&ctx, spec, n).unwrap_or(0);
    // PostgreSQL 17 dropped is_extend (extension has probes of its own since 16): seven
    // arguments, `found` the last.
    let (extend, found) = if spec.arg_count >= 8 {
        (arg(6) != 0, arg(7) != 0)
    } else {
        (false, arg(6) != 0)
    };
    let in_blocks = match counted(&BLOCKS, &block, &BlockAccesses::default()) {
        // SAFETY: a map value; other CPUs add to it too, hence the atomic add.
        Some(b) => unsafe {
            atomic_add(
                if found {
                    &raw mut (*b).hits
                } else {
                    &raw mut (*b).reads
                },
                1,
            );
            true
        },
        None => {
            bump(counter::BLOCKS_FULL);
            false
        }
    };
    if in_blocks && !extend && !local {
        return 0;
    }
    match counted(&RELATIONS, &rel, &Accesses::default()) {
        // SAFETY: as above.
        Some(a) => unsafe {
            if !in_blocks {
                atomic_add(
                    if found {
                        &raw mut (*a).hits
                    } else {
                        &raw mut (*a).reads
                    },
                    1,
                );
            }
            if extend {
                atomic_add(&raw mut (*a).extends, 1);
            }
            if local {
                atomic_add(&raw mut (*a).local, 1);
            }
        },
        None => bump(counter::RELATIONS_FULL),
    }
    0
}

/// The value of `key`, made from `zero` if it has none; None when the table is full.
#[inline(always)]
fn counted<K, V>(map: &HashMap<K, V>, key: &K, zero: &V) -> Option<*mut V> {
    if let Some(v) = map.get_ptr_mut(key) {
        return Some(v);
    }
    // BPF_NOEXIST: another CPU may have made it in between; then its entry is used.
    let _ = map.insert(key, zero, 1);
    map.get_ptr_mut(key)
}

pgbpf_common_ebpf::program_support!();
