//! Which cgroup, container and pod a process or a kernel cgroup id is in: the labels of the
//! per-container series. Looked up once per process or cgroup and kept a while, since
//! events arrive by the thousand per second from a few hundred processes.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use pgbpf_common::{
    cgroup::{CgroupNames, Placement},
    procs,
};

use crate::families::Labels;

/// How long a process's placement is trusted: a pid reused by a process in another container
/// is labelled right again after this.
const KEEP: Duration = Duration::from_secs(60);

/// Placements by pid and by cgroup id.
pub struct Placements {
    by_pid: HashMap<u32, Placement>,
    by_cgroup: HashMap<u64, Placement>,
    names: CgroupNames,
    since: Instant,
}

impl Default for Placements {
    fn default() -> Self {
        Placements {
            by_pid: HashMap::new(),
            by_cgroup: HashMap::new(),
            names: CgroupNames::new(),
            since: Instant::now(),
        }
    }
}

impl Placements {
    /// The placement of process `pid` (an empty one when it is gone or unreadable).
    pub fn of_pid(&mut self, pid: u32) -> &Placement {
        if self.since.elapsed() > KEEP {
            self.by_pid.clear();
            self.since = Instant::now();
        }
        self.by_pid.entry(pid).or_insert_with(|| {
            procs::cgroup_v2_of(pid)
                .map(|path| Placement::of_path(&path))
                .unwrap_or_default()
        })
    }

    /// The placement of the cgroup the kernel calls `id` ("cgroup#ID" when it is gone).
    /// Cgroup ids are never reused (they are inode numbers of kernfs, 64-bit), so this is
    /// kept as long as the table is not too big.
    pub fn of_cgroup(&mut self, id: u64) -> &Placement {
        if self.by_cgroup.len() > 16_384 {
            self.by_cgroup.clear();
        }
        let names = &mut self.names;
        self.by_cgroup
            .entry(id)
            .or_insert_with(|| match names.path(id) {
                Some(path) => Placement::of_path(&path),
                None => Placement {
                    cgroup: names.name(id),
                    ..Placement::default()
                },
            })
    }
}

/// A placement as labels: cgroup, container (12 hex digits or empty), pod (UID or empty).
pub fn labels(p: &Placement) -> Labels {
    vec![
        ("cgroup", p.cgroup.clone()),
        ("container", p.container.clone()),
        ("pod", p.pod.clone()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_placed_by_its_own_cgroup() {
        let mut p = Placements::default();
        let me = p.of_pid(std::process::id()).clone();
        let want = procs::cgroup_v2_of(std::process::id()).unwrap();
        assert_eq!(me.cgroup, want);
        assert_eq!(p.of_pid(u32::MAX), &Placement::default());
    }
}
