//! `--system`: the WAL actually written to pg_wal and synced, by whom. The kernel sums the
//! writes and syncs on pg_wal descriptors per process (WAL_IO); the descriptors a process
//! had open before attach (the walwriter's current segment) are found in /proc and added to
//! the kernel's table. Each report adds what every process did since the previous reading to
//! its backend type, then drops the processes gone.

use std::collections::HashMap;

use aya::maps::{HashMap as BpfHashMap, MapData};
use pgbpf_common::{loader::Loaded, postgres::BackendTypes, procs::alive};
use wal_per_query_ebpf::{FdKey, WalIo};

/// Writes and syncs of pg_wal files per backend type.
pub type WalIoTable = HashMap<String, WalIo>;

pub struct SystemWal {
    fds: BpfHashMap<MapData, FdKey, u8>,
    io: BpfHashMap<MapData, u32, WalIo>,
    /// Each process's counts already added to the periods.
    counted: HashMap<u32, WalIo>,
}

/// The WAL io programs and the tracepoints they attach to.
const HOOKS: [(&str, &str); 17] = [
    ("wal_enter_openat", "sys_enter_openat"),
    ("wal_exit_openat", "sys_exit_openat"),
    ("wal_enter_close", "sys_enter_close"),
    ("wal_enter_write", "sys_enter_write"),
    ("wal_enter_write", "sys_enter_pwrite64"),
    ("wal_enter_write", "sys_enter_writev"),
    ("wal_enter_write", "sys_enter_pwritev"),
    ("wal_enter_write", "sys_enter_pwritev2"),
    ("wal_enter_sync", "sys_enter_fsync"),
    ("wal_enter_sync", "sys_enter_fdatasync"),
    ("wal_exit", "sys_exit_write"),
    ("wal_exit", "sys_exit_pwrite64"),
    ("wal_exit", "sys_exit_writev"),
    ("wal_exit", "sys_exit_pwritev"),
    ("wal_exit", "sys_exit_pwritev2"),
    ("wal_exit", "sys_exit_fsync"),
    ("wal_exit", "sys_exit_fdatasync"),
];

/// Attaches the syscall tracepoints (pg_probes' `attach_more`).
pub fn attach(loaded: &mut Loaded) -> anyhow::Result<String> {
    for (program, tracepoint) in HOOKS {
        loaded.attach_tracepoint(program, "syscalls", tracepoint)?;
    }
    Ok("pg_wal writes and syncs (syscall tracepoints)".into())
}

fn add(sum: &mut WalIo, d: &WalIo) {
    sum.writes += d.writes;
    sum.bytes += d.bytes;
    sum.write_ns += d.write_ns;
    sum.write_max_ns = sum.write_max_ns.max(d.write_max_ns);
    sum.syncs += d.syncs;
    sum.sync_ns += d.sync_ns;
    sum.sync_max_ns = sum.sync_max_ns.max(d.sync_max_ns);
}

/// `now - before` of one process (its longest write or sync if it rose, else none new).
fn since(now: &WalIo, before: Option<&WalIo>) -> WalIo {
    let b = before.copied().unwrap_or_default();
    WalIo {
        writes: now.writes.saturating_sub(b.writes),
        bytes: now.bytes.saturating_sub(b.bytes),
        write_ns: now.write_ns.saturating_sub(b.write_ns),
        write_max_ns: if now.writes > b.writes {
            now.write_max_ns
        } else {
            0
        },
        syncs: now.syncs.saturating_sub(b.syncs),
        sync_ns: now.sync_ns.saturating_sub(b.sync_ns),
        sync_max_ns: if now.syncs > b.syncs {
            now.sync_max_ns
        } else {
            0
        },
    }
}

impl SystemWal {
    pub fn take(loaded: &mut Loaded) -> anyhow::Result<SystemWal> {
        Ok(SystemWal {
            fds: BpfHashMap::try_from(loaded.take_map("WAL_FDS")?)?,
            io: BpfHashMap::try_from(loaded.take_map("WAL_IO")?)?,
            counted: HashMap::new(),
        })
    }

    /// Adds the pg_wal descriptors `pids` have open now (opened before attach).
    pub fn seed(&mut self, pids: &[u32]) {
        for &tgid in pids {
            for (fd, path) in pgbpf_common::procs::file_fds(tgid) {
                if path.to_string_lossy().contains("/pg_wal/") {
                    let _ = self.fds.insert(&FdKey { tgid, fd }, &1, 0);
                }
            }
        }
    }

    /// Adds what every process wrote and synced since the previous reading to its backend
    /// type in both periods; forgets the processes gone.
    pub fn read_into(&mut self, backends: &mut BackendTypes, periods: [&mut WalIoTable; 2]) {
        let now: Vec<(u32, WalIo)> = self.io.iter().flatten().collect();
        let [interval, total] = periods;
        for (tgid, io) in &now {
            let d = since(io, self.counted.get(tgid));
            if d != WalIo::default() {
                let backend = backends.of(*tgid);
                add(interval.entry(backend.clone()).or_default(), &d);
                add(total.entry(backend).or_default(), &d);
            }
            if alive(*tgid) {
                self.counted.insert(*tgid, *io);
            } else {
                let _ = self.io.remove(tgid);
                self.counted.remove(tgid);
            }
        }
        // A process that exits closes its descriptors without close(2).
        let gone: Vec<FdKey> = self
            .fds
            .keys()
            .flatten()
            .filter(|k| !alive(k.tgid))
            .collect();
        for k in gone {
            let _ = self.fds.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_periods_io_is_what_changed_with_a_new_maximum_only() {
        let before = WalIo {
            writes: 2,
            bytes: 16384,
            write_ns: 100,
            write_max_ns: 60,
            syncs: 2,
            sync_ns: 1000,
            sync_max_ns: 700,
        };
        let now = WalIo {
            writes: 3,
            bytes: 24576,
            write_ns: 150,
            ..before
        };
        let d = since(&now, Some(&before));
        assert_eq!((d.writes, d.bytes, d.write_ns), (1, 8192, 50));
        assert_eq!((d.syncs, d.sync_max_ns, d.write_max_ns), (0, 0, 60));
        let mut sum = WalIo::default();
        add(&mut sum, &d);
        add(&mut sum, &since(&before, None));
        assert_eq!((sum.writes, sum.sync_max_ns), (3, 700));
    }
}
