//! What to trace: `--pid` / `--container` / `--cgroup` (and `--comm`), resolved to the
//! in-kernel filter of `pgbpf_common_ebpf::target` (tgid set, cgroup subtree, comm).
//!
//! Filtering happens in the kernel so untargeted events cost a few instructions and never
//! reach userspace.

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData},
};

use crate::{
    cgroup::{self, Cgroup, ContainerCgroup},
    procs,
    server::Server,
};

/// The kernel's `PGBPF_TARGET_TGIDS`, shared with the live loop's watch (which adds the
/// processes of a server found again after a restart).
pub type TgidMap = std::sync::Arc<std::sync::Mutex<HashMap<MapData, u32, u8>>>;

/// The kernel's `PGBPF_TARGET_CGROUP`, shared with the live loop's watch (which writes a
/// restarted container's new cgroup there).
#[derive(Clone)]
pub struct CgroupMap(std::sync::Arc<std::sync::Mutex<Array<MapData, u64>>>);

impl CgroupMap {
    /// Makes the kernel's filter match the cgroup `id` (and those below it).
    pub fn set(&self, id: u64) -> anyhow::Result<()> {
        let mut map = self
            .0
            .lock()
            .map_err(|_| anyhow!("the cgroup filter's lock is poisoned"))?;
        map.set(0, &id, 0).context("setting the cgroup filter")
    }
}

impl std::fmt::Debug for CgroupMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CgroupMap")
    }
}

/// Target selection arguments shared by every tool.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TargetArgs {
    /// Trace only this process, all its threads (repeatable)
    #[arg(short = 'p', long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Trace only this container: a docker, containerd, CRI-O or podman id, or a unique prefix
    #[arg(long, value_name = "ID", conflicts_with = "pids")]
    pub container: Option<String>,
    /// Trace only this cgroup (a cgroup v2 path such as /kubepods.slice/x) and those below it
    #[arg(long, value_name = "PATH", conflicts_with_all = ["pids", "container"])]
    pub cgroup: Option<String>,
    /// Trace only the containers of this Kubernetes pod: its UID (metadata.uid) or a unique
    /// prefix
    #[arg(long, value_name = "UID", conflicts_with_all = ["pids", "container", "cgroup"])]
    pub pod: Option<String>,
    /// Trace only the PostgreSQL server of this data directory (its postmaster and
    /// backends), and the new postmaster when the server restarts or recovers from a crash
    #[arg(short = 'D', long, value_name = "DIR",
          conflicts_with_all = ["pids", "container", "cgroup", "pod"])]
    pub pgdata: Option<std::path::PathBuf>,
    /// Trace only the server listening on this port (PostgreSQL's TCP port or Unix socket,
    /// Redis'), also after it restarts; the wire tools trace the port's traffic, whoever
    /// serves it (repeatable)
    #[arg(long, value_name = "PORT")]
    pub port: Vec<u16>,
}

impl TargetArgs {
    /// No target given: every process.
    pub fn is_empty(&self) -> bool {
        self.pids.is_empty()
            && self.container.is_none()
            && self.cgroup.is_none()
            && self.pod.is_none()
            && self.pgdata.is_none()
            && self.port.is_empty()
    }
}

/// The comm filter, for tools where a process name is a natural selector.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CommArg {
    /// Trace only tasks with this name (as in /proc/PID/comm, e.g. postgres)
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,
}

/// A resolved target.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// Thread-group ids to trace; empty means no pid filter.
    pub tgids: Vec<u32>,
    /// The processes named with `--pid` (without the descendants followed since).
    roots: Vec<u32>,
    /// cgroup subtree to trace.
    pub cgroup: Option<Cgroup>,
    /// Set when the cgroup came from `--container`.
    pub container: Option<ContainerCgroup>,
    /// The pod's UID when the cgroup came from `--pod`.
    pub pod: Option<String>,
    /// Task name filter, NUL padded as the kernel keeps it.
    pub comm: Option<[u8; 16]>,
    /// The servers named by `--pgdata` or `--port`, with their main process now (a root).
    servers: Vec<(u32, Server)>,
    /// The kernel's tgid filter map once loaded, kept to add a restarted server's processes.
    tgid_map: Option<TgidMap>,
    /// How the cgroup was named, and the kernel's map of its id once loaded.
    cgroup_named: Option<cgroup::Named>,
    cgroup_map: Option<CgroupMap>,
    // Globals handed to the loader by reference, so they must live here.
    tgid_filter_on: u32,
    cgroup_on: u32,
    cgroup_level: u32,
    comm_on: u32,
    comm_bytes: [u8; 16],
    follow_forks: u32,
    fork_child_offset: u32,
}

impl Target {
    pub fn resolve(args: &TargetArgs, comm: Option<&str>) -> anyhow::Result<Target> {
        let mut t = Target::default();
        for &pid in &args.pids {
            let tgid = tgid_of(pid)?;
            if !t.tgids.contains(&tgid) {
                t.tgids.push(tgid);
            }
        }
        let servers = args
            .pgdata
            .iter()
            .map(|dir| Server::DataDir(dir.clone()))
            .chain(args.port.iter().map(|&p| Server::Port(p)));
        for server in servers {
            if args.container.is_some() || args.cgroup.is_some() || args.pod.is_some() {
                bail!("--port names a server: give it or --container/--cgroup/--pod, not both");
            }
            let pid = server.main_process()?;
            let tgid = tgid_of(pid)?;
            // The same server named twice (-D and --port) is followed once.
            if t.servers.iter().any(|(p, _)| *p == tgid) {
                continue;
            }
            if !t.tgids.contains(&tgid) {
                t.tgids.push(tgid);
            }
            t.servers.push((tgid, server));
        }
        if let Some(query) = &args.container {
            let mount = cgroup::v2_mount()?;
            let c = cgroup::find_container(&mount, query)?;
            t.cgroup = Some(c.cgroup.clone());
            t.cgroup_named = Some(cgroup::Named::Container(c.id.clone()));
            t.container = Some(c);
        } else if let Some(path) = &args.cgroup {
            let mount = cgroup::v2_mount()?;
            t.cgroup = Some(Cgroup::open(&mount, path)?);
            t.cgroup_named = Some(cgroup::Named::Path(path.clone()));
        } else if let Some(query) = &args.pod {
            let mount = cgroup::v2_mount()?;
            let (uid, cg) = cgroup::find_pod(&mount, query)?;
            t.cgroup = Some(cg);
            t.cgroup_named = Some(cgroup::Named::Pod(uid.clone()));
            t.pod = Some(uid);
        }
        if let Some(name) = comm {
            if name.is_empty() {
                bail!("--comm needs a name");
            }
            let mut bytes = [0u8; 16];
            // The kernel keeps 15 bytes of a task name plus the NUL.
            let n = name.len().min(15);
            bytes[..n].copy_from_slice(&name.as_bytes()[..n]);
            t.comm = Some(bytes);
        }
        t.roots = t.tgids.clone();
        t.tgid_filter_on = u32::from(!t.tgids.is_empty());
        t.cgroup_on = u32::from(t.cgroup.is_some());
        t.cgroup_level = t.cgroup.as_ref().map_or(0, |c| c.level);
        t.comm_on = u32::from(t.comm.is_some());
        t.comm_bytes = t.comm.unwrap_or([0; 16]);
        Ok(t)
    }

    /// "PID 4242", "container 3f2a1b2c3d4e (podman)", "cgroup /x", or "all processes",
    /// with ", comm postgres" when a comm filter is set.
    pub fn describe(&self) -> String {
        let mut s = if let Some(c) = &self.container {
            format!(
                "container {} ({}, cgroup {})",
                &c.id[..12],
                c.runtime.name(),
                c.cgroup.path
            )
        } else if let (Some(uid), Some(c)) = (&self.pod, &self.cgroup) {
            format!("pod {uid} (cgroup {})", c.path)
        } else if let Some(c) = &self.cgroup {
            format!("cgroup {}", c.path)
        } else if !self.tgids.is_empty() {
            let pids: Vec<String> = self
                .roots
                .iter()
                .map(|pid| match self.servers.iter().find(|(p, _)| p == pid) {
                    Some((_, server)) => format!("{pid} (the server of {server})"),
                    None => pid.to_string(),
                })
                .collect();
            format!("PID {}", pids.join(", "))
        } else {
            "all processes".to_string()
        };
        if let Some(c) = &self.comm {
            let n = c.iter().position(|&b| b == 0).unwrap_or(16);
            s.push_str(&format!(", comm {}", String::from_utf8_lossy(&c[..n])));
        }
        s
    }

    /// True when the target names servers (`--pgdata`, `--port`) to follow across restarts.
    pub fn follows_servers(&self) -> bool {
        !self.servers.is_empty()
    }

    /// The processes named with `--pid`: once all have exited, nothing is left to trace.
    pub fn roots(&self) -> Vec<u32> {
        self.roots.clone()
    }

    /// What ends a trace of this target when it is gone: the pids given, the cgroup.
    pub fn watched(&self) -> crate::watch::Watched {
        crate::watch::Watched {
            pids: self
                .roots
                .iter()
                .copied()
                .filter(|pid| !self.servers.iter().any(|(p, _)| p == pid))
                .collect(),
            servers: self.servers.clone(),
            tgid_map: self.tgid_map.clone(),
            cgroup: self.cgroup.as_ref().map(|c| crate::watch::WatchedCgroup {
                dir: c.dir.clone(),
                id: c.id,
                level: c.level,
                what: match &self.container {
                    Some(container) => format!("container {}'s cgroup", &container.id[..12]),
                    None => format!("cgroup {}", c.path),
                },
                named: self.cgroup_named.clone(),
                map: self.cgroup_map.clone(),
            }),
        }
    }

    /// The processes the target covers now: the pids, the cgroup's processes, or those whose
    /// name is the comm filter's (every process without any filter).
    pub fn processes_now(&self) -> Vec<u32> {
        if !self.tgids.is_empty() {
            return self.tgids.clone();
        }
        if let Some(cg) = &self.cgroup {
            return crate::postgres::procs_below(&cg.dir);
        }
        let pids = procs::all_pids().into_iter();
        match self.comm {
            Some(comm) => {
                let n = comm.iter().position(|&b| b == 0).unwrap_or(16);
                pids.filter(|&pid| procs::comm_of(pid).is_some_and(|c| c.as_bytes() == &comm[..n]))
                    .collect()
            }
            None => pids.collect(),
        }
    }

    /// Makes `--pid` cover descendants too (a postmaster's backends, also those started
    /// later): the current ones from /proc now, new ones in the kernel as they fork. The tool
    /// must then call [`Target::attach_fork_tracking`] after load.
    pub fn follow_descendants(&mut self) -> anyhow::Result<()> {
        if self.tgids.is_empty() {
            return Ok(());
        }
        self.fork_child_offset =
            crate::tracefs::field("sched", "sched_process_fork", "child_pid")?.offset;
        self.follow_forks = 1;
        for d in procs::descendants(&self.tgids) {
            if !self.tgids.contains(&d) {
                self.tgids.push(d);
            }
        }
        Ok(())
    }

    /// Attaches the exit tracking program (it also forgets exited backends' query context,
    /// whatever the target) and, when [`Target::follow_descendants`] asked for it, the fork one.
    pub fn attach_fork_tracking(&self, loaded: &mut crate::loader::Loaded) -> anyhow::Result<()> {
        if self.follow_forks != 0 {
            loaded.attach_tracepoint("pgbpf_follow_fork", "sched", "sched_process_fork")?;
        }
        loaded.attach_tracepoint("pgbpf_forget_exit", "sched", "sched_process_exit")
    }

    /// The programs [`Self::attach_fork_tracking`] attaches, for a tool that loads its
    /// programs ahead ([`crate::loader::Loaded::preload`]).
    pub fn fork_tracking_programs(&self) -> &'static [&'static str] {
        if self.follow_forks != 0 {
            &["pgbpf_follow_fork", "pgbpf_forget_exit"]
        } else {
            &["pgbpf_forget_exit"]
        }
    }

    /// Sets the filter globals of `pgbpf_common_ebpf::target` before the object is loaded.
    pub fn set_globals<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        loader
            .override_global("PGBPF_FILTER_TGID", &self.tgid_filter_on, true)
            .override_global("PGBPF_FILTER_CGROUP_ON", &self.cgroup_on, true)
            .override_global("PGBPF_FILTER_CGROUP_LEVEL", &self.cgroup_level, true)
            .override_global("PGBPF_FILTER_COMM_ON", &self.comm_on, true)
            .override_global("PGBPF_FILTER_COMM", &self.comm_bytes, true)
            .override_global("PGBPF_FOLLOW_FORKS", &self.follow_forks, true)
            .override_global("PGBPF_FORK_CHILD_OFFSET", &self.fork_child_offset, true);
    }

    /// Fills the filter's maps after load: the cgroup's id, the tgids. The cgroup map is kept
    /// (taken out of `ebpf`: nothing else reads it from userspace) for the live loop to
    /// follow a restarted container; so is the tgid map with a server target, to add a
    /// restarted server's processes.
    pub fn fill_maps(&mut self, ebpf: &mut Ebpf) -> anyhow::Result<()> {
        if let Some(cg) = &self.cgroup {
            const NAME: &str = "PGBPF_TARGET_CGROUP";
            let map = ebpf
                .take_map(NAME)
                .ok_or_else(|| anyhow!("the eBPF object has no {NAME} map"))?;
            let map = CgroupMap(std::sync::Arc::new(std::sync::Mutex::new(Array::try_from(
                map,
            )?)));
            map.set(cg.id)?;
            self.cgroup_map = Some(map);
        }
        if self.tgids.is_empty() {
            return Ok(());
        }
        const NAME: &str = "PGBPF_TARGET_TGIDS";
        let missing = || anyhow!("the eBPF object has no {NAME} map");
        if self.servers.is_empty() {
            let mut map: HashMap<_, u32, u8> =
                HashMap::try_from(ebpf.map_mut(NAME).ok_or_else(missing)?)?;
            return add_tgids(&mut map, &self.tgids);
        }
        let mut map: HashMap<MapData, u32, u8> =
            HashMap::try_from(ebpf.take_map(NAME).ok_or_else(missing)?)?;
        add_tgids(&mut map, &self.tgids)?;
        self.tgid_map = Some(std::sync::Arc::new(std::sync::Mutex::new(map)));
        Ok(())
    }
}

/// Adds processes to the kernel's tgid filter.
pub fn add_tgids<T: std::borrow::BorrowMut<MapData>>(
    map: &mut HashMap<T, u32, u8>,
    tgids: &[u32],
) -> anyhow::Result<()> {
    for &tgid in tgids {
        map.insert(&tgid, &1, 0)
            .with_context(|| format!("adding PID {tgid} to the filter"))?;
    }
    Ok(())
}

/// The thread-group id of `pid` (itself for a process, its process for a thread).
pub fn tgid_of(pid: u32) -> anyhow::Result<u32> {
    if pid == 0 {
        bail!("cannot attach to PID 0: not a process");
    }
    let tgid = procs::tgid_of(pid)
        .ok_or_else(|| anyhow!("cannot attach to PID {pid}: no such process"))?;
    if let Some(what) = procs::untraceable(pid) {
        let name = procs::comm_of(pid).unwrap_or_default();
        bail!("cannot attach to PID {pid} ({name}): it is {what}");
    }
    Ok(tgid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_pid_resolves_and_missing_pid_is_a_clear_error() {
        let me = std::process::id();
        let t = Target::resolve(
            &TargetArgs {
                pids: vec![me, me],
                ..Default::default()
            },
            None,
        )
        .unwrap();
        assert_eq!(t.tgids, vec![me]);
        assert_eq!(t.describe(), format!("PID {me}"));
        let e = Target::resolve(
            &TargetArgs {
                pids: vec![999_999_999],
                ..Default::default()
            },
            None,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(e, "cannot attach to PID 999999999: no such process");
    }

    #[test]
    fn comm_is_truncated_like_the_kernel_does() {
        let t = Target::resolve(&TargetArgs::default(), Some("a-very-long-process-name")).unwrap();
        assert_eq!(&t.comm.unwrap()[..16], b"a-very-long-pro\0");
        assert_eq!(t.describe(), "all processes, comm a-very-long-pro");
    }
}
