//! The kernel's file table read at each report: each open file's writes and syncs since
//! attach, its kind (from the path its open event carried, or from /proc/PID/fd for files
//! opened before attach), its process's backend type; what changed since the previous
//! reading is added to the report's periods. Files closed since, and descriptors of
//! processes gone, are then dropped from the kernel's tables so they do not fill up.

use std::collections::{HashMap, HashSet};

use aya::maps::{HashMap as BpfHashMap, MapData};
use pgbpf_common::{loader::Loaded, postgres::BackendTypes, procs::alive};
use write_per_type_ebpf::{FdKey, FileKey, FileStats};

use crate::kind::{Kind, classify};

/// Writes and syncs of a set of files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub writes: u64,
    pub bytes: u64,
    pub syncs: u64,
    pub sync_ns: u64,
    pub sync_max_ns: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.writes += o.writes;
        self.bytes += o.bytes;
        self.syncs += o.syncs;
        self.sync_ns += o.sync_ns;
        self.sync_max_ns = self.sync_max_ns.max(o.sync_max_ns);
    }
}

/// `now - before` of one file (its longest sync if it rose, else none new).
fn since(now: &FileStats, before: Option<&FileStats>) -> Stats {
    let b = before.copied().unwrap_or_default();
    Stats {
        writes: now.writes.saturating_sub(b.writes),
        bytes: now.bytes.saturating_sub(b.bytes),
        syncs: now.syncs.saturating_sub(b.syncs),
        sync_ns: now.sync_ns.saturating_sub(b.sync_ns),
        sync_max_ns: if now.syncs > b.syncs {
            now.sync_max_ns
        } else {
            0
        },
    }
}

/// Counts per (backend type, kind of file).
pub type Table = HashMap<(String, Kind), Stats>;

pub struct Files {
    files: BpfHashMap<MapData, FileKey, FileStats>,
    fds: BpfHashMap<MapData, FdKey, u64>,
    /// The kind of each open the kernel sent, while its descriptor or counts live.
    opens: HashMap<FileKey, Kind>,
    /// Kinds of files not opened under trace, from their descriptor's /proc/PID/fd link.
    inherited: HashMap<FileKey, Kind>,
    /// Each file's counts already added to the periods.
    counted: HashMap<FileKey, FileStats>,
    backends: BackendTypes,
}

impl Files {
    pub fn take(loaded: &mut Loaded) -> anyhow::Result<Files> {
        Ok(Files {
            files: BpfHashMap::try_from(loaded.take_map("FILES")?)?,
            fds: BpfHashMap::try_from(loaded.take_map("FDS")?)?,
            opens: HashMap::new(),
            inherited: HashMap::new(),
            counted: HashMap::new(),
            backends: BackendTypes::default(),
        })
    }

    /// The kinds of the descriptors `pids` have open now, opened before attach: found while
    /// they are open (a file closed before the first report could not be looked up).
    pub fn seed(&mut self, pids: &[u32]) {
        // Without a target the pids are the machine's: the traced ones are named postgres.
        for &tgid in pids {
            if pgbpf_common::procs::comm_of(tgid).as_deref() != Some("postgres") {
                continue;
            }
            for (fd, path) in pgbpf_common::procs::file_fds(tgid) {
                let key = FileKey {
                    fd: FdKey { tgid, fd },
                    id: 0,
                };
                self.inherited
                    .insert(key, classify(&path.to_string_lossy(), fd));
            }
        }
    }

    /// An open the kernel sent: its path classified now, its process's type learned while
    /// it lives.
    pub fn opened(&mut self, key: FileKey, path: &str) {
        self.backends.of(key.fd.tgid);
        self.opens.insert(key, classify(path, key.fd.fd));
    }

    fn kind_of(&mut self, key: &FileKey) -> Kind {
        if let Some(k) = self.opens.get(key) {
            return *k;
        }
        *self.inherited.entry(*key).or_insert_with(|| {
            let link = format!("/proc/{}/fd/{}", key.fd.tgid, key.fd.fd);
            match std::fs::read_link(&link) {
                Ok(path) => classify(&path.to_string_lossy(), key.fd.fd),
                Err(_) => Kind::Unknown,
            }
        })
    }

    /// Adds what every file did since the previous reading to `periods`, then forgets the
    /// files closed since and the descriptors of processes gone.
    pub fn read_into(&mut self, periods: [&mut Table; 2]) {
        let now: Vec<(FileKey, FileStats)> = self.files.iter().flatten().collect();
        let open: HashMap<FdKey, u64> = self.fds.iter().flatten().collect();
        let [interval, total] = periods;
        let mut closed = Vec::new();
        for (key, stats) in &now {
            self.count(key, stats, [&mut *interval, &mut *total]);
            let gone = if key.id != 0 {
                open.get(&key.fd) != Some(&key.id)
            } else {
                !alive(key.fd.tgid)
            };
            if gone {
                closed.push(*key);
            }
        }
        // A file closed after its entry was read may have been written or synced in
        // between: read it again before dropping it.
        for key in &closed {
            if let Ok(latest) = self.files.get(key, 0) {
                self.count(key, &latest, [&mut *interval, &mut *total]);
            }
            let _ = self.files.remove(key);
            self.counted.remove(key);
        }
        // A process that exits closes its descriptors without close(2).
        let mut dead = HashSet::new();
        for fd in open.keys() {
            if dead.contains(&fd.tgid) || !alive(fd.tgid) {
                dead.insert(fd.tgid);
                let _ = self.fds.remove(fd);
            }
        }
        let live: HashSet<FileKey> = self.counted.keys().copied().collect();
        self.opens.retain(|k, _| {
            live.contains(k) || (!dead.contains(&k.fd.tgid) && open.get(&k.fd) == Some(&k.id))
        });
        // Descriptors open before attach stay known while their process lives.
        self.inherited.retain(|k, _| !dead.contains(&k.fd.tgid));
    }

    /// Adds what file `key` did since it was last counted (its counts now `stats`).
    fn count(&mut self, key: &FileKey, stats: &FileStats, periods: [&mut Table; 2]) {
        let d = since(stats, self.counted.get(key));
        if d != Stats::default() {
            let kind = self.kind_of(key);
            let backend = self.backends.of(key.fd.tgid);
            for t in periods {
                t.entry((backend.clone(), kind)).or_default().add(&d);
            }
        }
        self.counted.insert(*key, *stats);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_files_period_counts_what_changed_and_a_new_maximum() {
        let before = FileStats {
            writes: 2,
            bytes: 100,
            syncs: 1,
            sync_ns: 50,
            sync_max_ns: 50,
        };
        let now = FileStats {
            writes: 5,
            bytes: 400,
            syncs: 1,
            sync_ns: 50,
            sync_max_ns: 50,
        };
        let d = since(&now, Some(&before));
        assert_eq!((d.writes, d.bytes, d.syncs, d.sync_max_ns), (3, 300, 0, 0));
        let synced = FileStats {
            syncs: 2,
            sync_ns: 80,
            sync_max_ns: 50,
            ..now
        };
        let d = since(&synced, Some(&now));
        assert_eq!((d.syncs, d.sync_ns, d.sync_max_ns), (1, 30, 50));
        assert_eq!(since(&now, None).bytes, 400);
    }
}
