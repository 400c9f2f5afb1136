//! Which cgroup, container and pod a kernel cgroup id stands for: the labels of the
//! per-container series. Events carry the cgroup id the kernel saw (the task may be gone
//! when they are read); each id is looked up once, since events arrive by the thousand per
//! second.

use std::{collections::HashMap, path::PathBuf};

use pgbpf_common::cgroup::{self, CgroupNames, Placement};

use crate::families::Labels;

/// Placements by cgroup id.
pub struct Placements {
    by_cgroup: HashMap<u64, Placement>,
    names: CgroupNames,
    /// The cgroup v2 tree the paths are relative to.
    mount: Option<PathBuf>,
}

impl Default for Placements {
    fn default() -> Self {
        Placements {
            by_cgroup: HashMap::new(),
            names: CgroupNames::new(),
            mount: cgroup::v2_mount().ok(),
        }
    }
}

impl Placements {
    /// The placement of the cgroup the kernel calls `id` ("cgroup#ID" when it is gone).
    /// Cgroup ids are never reused (they are inode numbers of kernfs, 64-bit), so this is
    /// kept as long as the table is not too big.
    pub fn of_cgroup(&mut self, id: u64) -> &Placement {
        if self.by_cgroup.len() > 16_384 {
            self.by_cgroup.clear();
            self.names = CgroupNames::new();
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

impl Placements {
    /// Whether the placement's cgroup still exists (series of removed containers are
    /// dropped once nothing more can happen in them).
    pub fn exists(&self, p: &Placement) -> bool {
        match &self.mount {
            Some(mount) if p.cgroup.starts_with('/') => {
                mount.join(p.cgroup.trim_start_matches('/')).is_dir()
            }
            _ => false,
        }
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
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    #[test]
    fn this_process_is_placed_by_its_cgroups_id() {
        let mut p = Placements::default();
        let path = pgbpf_common::procs::cgroup_v2_of(std::process::id()).unwrap();
        let mount = cgroup::v2_mount().unwrap();
        // A cgroup's id is its directory's inode number.
        let id = std::fs::metadata(mount.join(path.trim_start_matches('/')))
            .unwrap()
            .ino();
        let me = p.of_cgroup(id).clone();
        assert_eq!(me.cgroup, path);
        assert!(p.exists(&me));
        let gone = p.of_cgroup(u64::MAX).clone();
        assert_eq!(gone.cgroup, format!("cgroup#{}", u64::MAX));
        assert!(!p.exists(&gone));
    }
}
