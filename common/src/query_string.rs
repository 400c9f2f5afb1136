//! Where each PostgreSQL process keeps `debug_query_string`, the pointer to the statement it is
//! running (NULL between statements), and `my_wait_event_info`, the pointer to the wait event
//! it reports: absolute addresses per process, for kernel programs that read them at the
//! moment of an event instead of following statement probes.
//!
//! The variables are in .bss and .data (exported in .dynsym even from stripped builds), so an
//! address is the binary's load bias in that process plus the symbol's vaddr. Binaries are
//! told apart by (device, inode) of /proc/PID/exe, so servers of different versions each get
//! their own.

use std::{collections::HashMap, os::unix::fs::MetadataExt as _, path::Path};

use anyhow::Context as _;
pub use pgbpf_common_ebpf::query_string::{NO_QUERY_STRING, QueryAddr};

use crate::{elf::Symbols, loader::Loaded, tracefs};

/// Of one binary: the vaddrs of debug_query_string, my_wait_event_info (0: none, before
/// PostgreSQL 14) and pgWalUsage (0: none, before 13), and of the first loadable segment;
/// None: no debug_query_string.
type BinaryFacts = Option<(u64, u64, u64, u64)>;

#[derive(Default)]
pub struct QueryStringLocator {
    by_binary: HashMap<(u64, u64), BinaryFacts>,
}

impl QueryStringLocator {
    pub fn new() -> QueryStringLocator {
        QueryStringLocator::default()
    }

    /// The addresses of the variables in process `pid`, if it runs a binary that has
    /// debug_query_string and the process is still there.
    pub fn address(&mut self, pid: u32) -> Option<QueryAddr> {
        let exe = format!("/proc/{pid}/exe");
        let md = std::fs::metadata(&exe).ok()?;
        let (dev, ino) = (md.dev(), md.ino());
        let facts = *self
            .by_binary
            .entry((dev, ino))
            .or_insert_with(|| binary_facts(Path::new(&exe), &format!("/proc/{pid}/root")));
        let (statement, wait_event, wal_usage, first_vaddr) = facts?;
        let maps = crate::procs::memory_maps(pid, false)?;
        let bias = load_bias(&maps, ino, first_vaddr)?;
        let at = |vaddr: u64| if vaddr == 0 { 0 } else { bias + vaddr };
        Some(QueryAddr {
            statement: bias + statement,
            wait_event: at(wait_event),
            wal_usage: at(wal_usage),
        })
    }
}

/// The kernel's map of the variables' addresses per process, and its size in the object.
pub const ADDR_MAP: &str = "PGBPF_QUERY_ADDR";
const ADDR_ENTRIES: u32 = 16384;
/// The processes whose address is still to be found, and its size in the object.
pub const WANTED_MAP: &str = "PGBPF_ADDR_WANTED";
const WANTED_ENTRIES: u32 = 1024;

/// The userspace half of `pgbpf_common_ebpf::query_string`: keeps the kernel's map of
/// addresses filled.
pub struct QueryAddrs {
    locator: QueryStringLocator,
}

impl QueryAddrs {
    /// Sets the loader globals the kernel half needs (call in `loader::load`'s closure).
    /// Its maps get their full size here: the loader creates them with one entry for the
    /// tools that do not read statement text this way (an LRU map is preallocated: 1.3 MiB).
    pub fn set_globals<'a>(loader: &mut aya::EbpfLoader<'a>, fork_child_offset: &'a u32) {
        loader
            .override_global("PGBPF_QS_FORK_CHILD_OFFSET", fork_child_offset, true)
            .map_max_entries(ADDR_MAP, ADDR_ENTRIES)
            .map_max_entries(WANTED_MAP, WANTED_ENTRIES);
    }

    /// The value for [`QueryAddrs::set_globals`], from the fork tracepoint's format.
    pub fn fork_child_offset() -> anyhow::Result<u32> {
        Ok(tracefs::field("sched", "sched_process_fork", "child_pid")?.offset)
    }

    /// The programs [`Self::start`] attaches, for a tool that loads its programs ahead
    /// ([`crate::loader::Loaded::preload`]).
    pub const PROGRAMS: [&str; 2] = ["pgbpf_inherit_query_addr", "pgbpf_forget_query_addr"];

    /// After load: locates `pids` (those that may have events now) and attaches the fork and
    /// exec programs. Returns the tracker and how many of `pids` run PostgreSQL.
    pub fn start(loaded: &mut Loaded, pids: &[u32]) -> anyhow::Result<(QueryAddrs, usize)> {
        let mut addrs = QueryAddrs {
            locator: QueryStringLocator::new(),
        };
        let located = addrs.locate(loaded, pids)?;
        let [inherit, forget] = Self::PROGRAMS;
        loaded.attach_tracepoint(inherit, "sched", "sched_process_fork")?;
        loaded.attach_tracepoint(forget, "sched", "sched_process_exec")?;
        Ok((addrs, located))
    }

    /// Records where each of `pids` keeps debug_query_string (or that it has none). Returns
    /// how many have one.
    fn locate(&mut self, loaded: &mut Loaded, pids: &[u32]) -> anyhow::Result<usize> {
        let mut map: aya::maps::HashMap<_, u32, QueryAddr> =
            aya::maps::HashMap::try_from(loaded.map_mut(ADDR_MAP)?)?;
        let mut found = 0;
        for &pid in pids {
            let addr = self.locator.address(pid);
            found += usize::from(addr.is_some());
            let none = QueryAddr {
                statement: NO_QUERY_STRING,
                wait_event: 0,
                wal_usage: 0,
            };
            map.insert(&pid, &addr.unwrap_or(none), 0)
                .with_context(|| format!("remembering where PID {pid} keeps its statement"))?;
        }
        Ok(found)
    }

    /// Locates the processes the kernel met without knowing where their statement is.
    pub fn locate_wanted(&mut self, loaded: &mut Loaded) -> anyhow::Result<()> {
        let mut wanted: aya::maps::HashMap<_, u32, u8> =
            aya::maps::HashMap::try_from(loaded.map_mut(WANTED_MAP)?)?;
        let pids: Vec<u32> = wanted.keys().filter_map(Result::ok).collect();
        for pid in &pids {
            let _ = wanted.remove(pid);
        }
        if !pids.is_empty() {
            self.locate(loaded, &pids)?;
        }
        Ok(())
    }
}

/// Names for events of processes that run no statement: "[no statement: checkpointer]"
/// (the backend type from the process title) or "[no statement: dd]" (its comm), read from
/// /proc once per process. A process gone before its first lookup is "[no statement]".
#[derive(Default)]
pub struct IdleLabels {
    by_pid: HashMap<u32, (String, bool)>,
    shown: crate::sql::Shown,
}

impl IdleLabels {
    /// Labels, and statements shown `shown` (a tool's `--redact`).
    pub fn new(shown: crate::sql::Shown) -> IdleLabels {
        IdleLabels {
            by_pid: HashMap::new(),
            shown,
        }
    }

    /// How statements are shown (the tool's `--redact`).
    pub fn shown(&self) -> crate::sql::Shown {
        self.shown
    }

    /// The label of `pid`'s time without a statement.
    pub fn label(&mut self, pid: u32) -> String {
        self.lookup(pid).0
    }

    /// What an event's process was running, from its `statement` code and text
    /// (`pgbpf_common_ebpf::query_string::statement`): the normalized statement,
    /// "[statement not read]" for a PostgreSQL process not located yet, else its label.
    pub fn statement(&mut self, pid: u32, code: u8, text: &[u8], len: u32) -> String {
        use pgbpf_common_ebpf::query_string::statement;
        match code {
            statement::RUNNING => self.shown.text(&crate::query::text_of(text, len)),
            // Not located yet: only a PostgreSQL process has a statement to miss.
            statement::UNREADABLE if self.is_postgres(pid) => "[statement not read]".to_string(),
            _ => self.label(pid),
        }
    }

    /// Whether `pid` is a PostgreSQL process (false when it is gone).
    pub fn is_postgres(&mut self, pid: u32) -> bool {
        self.lookup(pid).1
    }

    fn lookup(&mut self, pid: u32) -> (String, bool) {
        // Pids are reused: beyond this many processes the table starts over.
        if self.by_pid.len() >= 65_536 {
            self.by_pid.clear();
        }
        self.by_pid
            .entry(pid)
            .or_insert_with(|| match crate::postgres::process_kind(pid) {
                Some((kind, postgres)) => (format!("[no statement: {kind}]"), postgres),
                None => ("[no statement]".to_string(), false),
            })
            .clone()
    }
}

fn binary_facts(exe: &Path, root: &str) -> BinaryFacts {
    let symbols = Symbols::open(exe, Path::new(root)).ok()?;
    let vaddr = symbols.address("debug_query_string").ok()??;
    let optional = |name: &str| symbols.address(name).ok().flatten().unwrap_or(0);
    let wait_event = optional("my_wait_event_info");
    let wal_usage = optional("pgWalUsage");
    let first = symbols
        .binary
        .segments()
        .ok()?
        .iter()
        .map(|s| s.vaddr)
        .min()
        .unwrap_or(0);
    Some((vaddr, wait_event, wal_usage, first))
}

/// Load bias of the binary with inode `ino` in a process's memory maps: where its mapping
/// at file offset 0 starts, minus the page-aligned vaddr of its first loadable segment (0 for
/// a PIE).
pub fn load_bias(maps: &procfs::process::MemoryMaps, ino: u64, first_vaddr: u64) -> Option<u64> {
    let m = maps.iter().find(|m| m.inode == ino && m.offset == 0)?;
    m.address.0.checked_sub(first_vaddr & !0xfff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bias_is_the_offset_zero_mapping_of_that_inode() {
        let maps = "\
55d0c0a00000-55d0c0b00000 r--p 00000000 08:01 999 /usr/lib/postgresql/16/bin/postgres
55d0c1000000-55d0c1200000 r--p 00000000 08:01 1234 /usr/lib/postgresql/15/bin/postgres
55d0c1200000-55d0c1800000 r-xp 00200000 08:01 1234 /usr/lib/postgresql/15/bin/postgres
7f0000000000-7f0000001000 rw-s 00000000 00:01 77 /dev/zero (deleted)
";
        use procfs::{FromBufRead as _, process::MemoryMaps};
        let maps = MemoryMaps::from_buf_read(maps.as_bytes()).unwrap();
        assert_eq!(load_bias(&maps, 1234, 0), Some(0x55d0c1000000));
        assert_eq!(
            load_bias(&maps, 1234, 0x400123),
            Some(0x55d0c1000000 - 0x400000)
        );
        assert_eq!(load_bias(&maps, 4321, 0), None);
        assert!(MemoryMaps::from_buf_read(&b"garbage\n\n1-2 r"[..]).is_err());
    }

    #[test]
    fn this_process_has_no_query_string_and_a_dead_pid_none() {
        let mut l = QueryStringLocator::new();
        assert!(l.address(std::process::id()).is_none());
        assert!(l.address(u32::MAX).is_none());
    }
}
