//! Types shared by working_set's kernel program and its userspace (feature `user`).
#![no_std]

/// Distinct blocks counted by default (1 GiB of 8 KiB pages); `--max-blocks` changes it.
pub const DEFAULT_MAX_BLOCKS: u32 = 131_072;
/// Relation forks counted apart.
pub const MAX_RELATIONS: u32 = 16_384;

/// The sampling period's global: one access in this many is counted (`--sample`; 1: all).
pub const SAMPLE_GLOBAL: &str = "WORKING_SET_SAMPLE_EVERY";

/// What the USDT site that fired means (the probe id of its attachment).
pub mod probe {
    /// buffer__read__done(fork, block, spc, db, relfilenode, backend, is_extend, found): a
    /// shared or local buffer was looked up, found or read in.
    pub const READ_DONE: u32 = 1;
}

/// A relation fork: PostgreSQL's buffer tag without the block.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelFork {
    /// Tablespace OID.
    pub spc: u32,
    /// Database OID (0: shared catalogs).
    pub db: u32,
    /// The relation's file node (not its OID once rewritten by TRUNCATE or VACUUM FULL).
    pub rel: u32,
    /// 0 main, 1 free space map, 2 visibility map, 3 init.
    pub fork: u32,
}

/// One block of a relation fork: the key of the block table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Block {
    pub rel: RelFork,
    pub block: u32,
}

/// Accesses of one block since attach.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockAccesses {
    pub hits: u64,
    pub reads: u64,
}

/// What the block table does not say of one relation fork, since attach: its accesses while
/// the block table was full, and how many of all its accesses added blocks or went through
/// local buffers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Accesses {
    /// Found in the buffer pool (pg_statio's *_blks_hit), while the block table was full.
    pub hits: u64,
    /// Not found: read in, or a new block added (pg_statio's *_blks_read counts both), while
    /// the block table was full.
    pub reads: u64,
    /// New blocks among the reads (the relation grew).
    pub extends: u64,
    /// Accesses through a backend's local buffers (temporary tables).
    pub local: u64,
}

/// Indexes of the COUNTERS per-CPU array (0 and 1 as `pgbpf_common::pg_probes::Lost` reads
/// them).
pub mod counter {
    /// Not used: working_set sends no events (the slot `pg_probes` reads as ring buffer full).
    pub const RINGBUF_FULL: u32 = 0;
    /// An access to a block not in the full block table: counted in its relation's
    /// [`super::Accesses`], not in the histogram.
    pub const BLOCKS_FULL: u32 = 1;
    /// An access to a relation fork not in the full relation table: counted nowhere else.
    pub const RELATIONS_FULL: u32 = 2;
    pub const COUNT: u32 = 3;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)] plain data without implicit padding, every bit pattern valid.
    unsafe impl aya::Pod for super::RelFork {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Block {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Accesses {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BlockAccesses {}
}
