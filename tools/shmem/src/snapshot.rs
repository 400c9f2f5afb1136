//! What shared memory there is now, from /proc: per PostgreSQL instance the main segment,
//! the SysV header segment, DSM segments in /dev/shm, /dev/shm's size and use as the instance
//! sees it (its own mount namespace), huge pages, and per process the resident shared memory
//! (RSS, PSS) from smaps with its backend type. Other processes get the same view without
//! PostgreSQL's meaning.

use std::{
    io,
    path::{Path, PathBuf},
};

use pgbpf_common::{
    output::{self, Output},
    postgres::{backend_type, is_postgres_binary},
    procs,
};
use procfs::{
    Current as _, FromBufRead as _,
    process::{MMPermissions, MMapPath, MemoryMaps},
};

use crate::records::{
    self, DsmSegment, InstanceSnapshot, MainSegment, ProcessSnapshot, Record, Sysv,
};

/// One shared mapping of a process (smaps entry with the `s` permission).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub path: String,
    pub size: u64,
    pub rss: u64,
    pub pss: u64,
    pub page_size: u64,
}

/// What a shared mapping is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// mmap(MAP_SHARED|MAP_ANONYMOUS): PostgreSQL's main segment.
    Anonymous,
    /// A SysV segment, with its key.
    SysV(u32),
    /// A PostgreSQL DSM segment in /dev/shm (the name as PostgreSQL prints it: /PostgreSQL.N).
    Dsm(String),
    /// Any other shared file mapping (other /dev/shm files, memfd, regular files).
    File(String),
}

pub fn classify(path: &str) -> Segment {
    let p = path.strip_suffix(" (deleted)").unwrap_or(path);
    if p == "/dev/zero" || p == "/anon_hugepage" || p.is_empty() || p == "[anon_shmem]" {
        return Segment::Anonymous;
    }
    if let Some(hex) = p.strip_prefix("/SYSV")
        && let Ok(key) = u32::from_str_radix(hex, 16)
    {
        return Segment::SysV(key);
    }
    if let Some(name) = p.strip_prefix("/dev/shm/")
        && name.starts_with("PostgreSQL.")
    {
        return Segment::Dsm(format!("/{name}"));
    }
    Segment::File(p.to_string())
}

/// A mapping's path as /proc/PID/smaps prints it ("" for an anonymous mapping).
fn path_text(path: &MMapPath) -> String {
    match path {
        MMapPath::Path(p) => p.to_string_lossy().into_owned(),
        MMapPath::Anonymous => String::new(),
        MMapPath::Vsys(key) => format!("/SYSV{:08x}", *key as u32),
        MMapPath::Heap => "[heap]".into(),
        MMapPath::Stack | MMapPath::TStack(_) => "[stack]".into(),
        MMapPath::Vdso => "[vdso]".into(),
        MMapPath::Vvar => "[vvar]".into(),
        MMapPath::Vsyscall => "[vsyscall]".into(),
        MMapPath::Rollup => "[rollup]".into(),
        MMapPath::Other(name) => format!("[{name}]"),
    }
}

/// The shared mappings (the `s` permission) of a process's smaps, as procfs parsed them.
pub fn shared_mappings(maps: &MemoryMaps) -> Vec<Mapping> {
    maps.iter()
        .filter(|m| m.perms.contains(MMPermissions::SHARED))
        .map(|m| {
            let stat = |key: &str| m.extension.map.get(key).copied().unwrap_or(0);
            Mapping {
                path: path_text(&m.pathname),
                size: m.address.1.saturating_sub(m.address.0),
                // Huge pages of hugetlbfs are not in Rss.
                rss: stat("Rss") + stat("Shared_Hugetlb") + stat("Private_Hugetlb"),
                pss: stat("Pss"),
                page_size: Some(stat("KernelPageSize"))
                    .filter(|&p| p > 0)
                    .unwrap_or(4096),
            }
        })
        .collect()
}

/// The shared mappings in the text of /proc/PID/smaps; none when it does not parse.
pub fn parse_smaps(text: &str) -> Vec<Mapping> {
    MemoryMaps::from_buf_read(text.as_bytes())
        .map(|maps| shared_mappings(&maps))
        .unwrap_or_default()
}

/// A process's shared memory by kind.
#[derive(Clone, Debug, Default)]
pub struct ProcessShared {
    pub pid: u32,
    pub backend: String,
    pub rss: u64,
    pub pss: u64,
    pub main_rss: u64,
    pub dsm_rss: u64,
    pub sysv_rss: u64,
    pub mappings: Vec<Mapping>,
}

/// Reads one process; None when it is gone or unreadable.
pub fn process_shared(pid: u32) -> Option<ProcessShared> {
    let mappings = shared_mappings(&procs::memory_maps(pid, true)?);
    let title = procs::title_of(pid);
    let backend = backend_type(&title)
        .map(str::to_string)
        .unwrap_or_else(|| procs::comm_of(pid).unwrap_or_default());
    let mut p = ProcessShared {
        pid,
        backend,
        ..Default::default()
    };
    for m in &mappings {
        p.rss += m.rss;
        p.pss += m.pss;
        match classify(&m.path) {
            Segment::Anonymous => p.main_rss += m.rss,
            Segment::Dsm(_) => p.dsm_rss += m.rss,
            Segment::SysV(_) => p.sysv_rss += m.rss,
            Segment::File(_) => {}
        }
    }
    p.mappings = mappings;
    Some(p)
}

/// Size and use of a filesystem, from statvfs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Space {
    pub total: u64,
    pub used: u64,
    pub free: u64,
}

pub fn space_of(path: &Path) -> Option<Space> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let frsize = s.fragment_size() as u64;
    let total = s.blocks() as u64 * frsize;
    let free_all = s.blocks_free() as u64 * frsize;
    Some(Space {
        total,
        used: total.saturating_sub(free_all),
        free: s.blocks_available() as u64 * frsize,
    })
}

/// A file in /dev/shm.
#[derive(Clone, Debug)]
pub struct ShmFile {
    pub name: String,
    pub size: u64,
    pub allocated: u64,
}

/// PostgreSQL's DSM segments in the /dev/shm that `root` sees.
pub fn dsm_files(root: &Path) -> Vec<ShmFile> {
    use std::os::unix::fs::MetadataExt as _;
    let mut out: Vec<ShmFile> = std::fs::read_dir(root.join("dev/shm"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("PostgreSQL.") {
                return None;
            }
            let md = e.metadata().ok()?;
            Some(ShmFile {
                name: format!("/{name}"),
                size: md.len(),
                allocated: md.blocks() * 512,
            })
        })
        .collect();
    out.sort_by(|a, b| b.allocated.cmp(&a.allocated).then(a.name.cmp(&b.name)));
    out
}

/// Huge pages of the machine, from /proc/meminfo (bytes; counts for HugePages_*).
#[derive(Clone, Debug, Default)]
pub struct HugePages {
    pub total: u64,
    pub free: u64,
    pub reserved: u64,
    pub page_size: u64,
    pub shmem_huge_bytes: u64,
}

/// The machine's huge pages, from /proc/meminfo (procfs gives sizes in bytes).
pub fn huge_pages() -> HugePages {
    let Ok(m) = procfs::Meminfo::current() else {
        return HugePages::default();
    };
    HugePages {
        total: m.hugepages_total.unwrap_or(0),
        free: m.hugepages_free.unwrap_or(0),
        reserved: m.hugepages_rsvd.unwrap_or(0),
        page_size: m.hugepagesize.unwrap_or(0),
        shmem_huge_bytes: m.shmem_hugepages.unwrap_or(0),
    }
}

/// The SysV segment as /proc/sysvipc/shm has it (only when in our IPC namespace).
#[derive(Clone, Debug, Default)]
pub struct SysvSegment {
    pub key: u32,
    pub id: Option<u64>,
    pub size: u64,
    pub attached: Option<u64>,
}

/// /proc/sysvipc/shm, when `pid` is in shmem's own IPC namespace (the file shows the
/// reader's namespace).
fn sysv_table(pid: u32) -> Option<String> {
    let ours = std::fs::read_link("/proc/self/ns/ipc").ok()?;
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/ipc")).ok()?;
    if ours != theirs {
        return None;
    }
    std::fs::read_to_string("/proc/sysvipc/shm").ok()
}

/// Finds `key` in the text of /proc/sysvipc/shm: (shmid, size, nattch). Parsed by hand,
/// line by line: procfs reads the owners as 16-bit ids and rejects the whole table for one
/// segment of a user above 65535, where a bad line should only lose itself.
pub fn parse_sysvipc(text: &str, key: u32) -> Option<(u64, u64, u64)> {
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let k: i64 = f.first()?.parse().ok()?;
        (k as u32 == key).then_some(())?;
        Some((
            f.get(1)?.parse().ok()?,
            f.get(3)?.parse().ok()?,
            f.get(6)?.parse().ok()?,
        ))
    })
}

/// One PostgreSQL instance: its postmaster and the processes below it.
#[derive(Clone, Debug)]
pub struct Instance {
    pub postmaster: u32,
    pub data_dir: String,
    pub main_size: u64,
    pub main_page_size: u64,
    pub sysv: Option<SysvSegment>,
    pub dsm: Vec<ShmFile>,
    pub dev_shm: Option<Space>,
    pub processes: Vec<ProcessShared>,
}

/// Everything the snapshot shows.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub instances: Vec<Instance>,
    /// Processes that are not part of a PostgreSQL instance, with their /dev/shm.
    pub others: Vec<(ProcessShared, Option<Space>)>,
    pub huge: HugePages,
}

fn root_of(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root"))
}

/// A process running a postgres binary.
pub fn is_postgres(pid: u32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| is_postgres_binary(&e))
}

/// Takes the snapshot of `pids` (processes that vanish meanwhile are left out).
pub fn take(pids: &[u32]) -> Snapshot {
    let mut snap = Snapshot {
        huge: huge_pages(),
        ..Default::default()
    };
    let mut shared: Vec<ProcessShared> = pids.iter().filter_map(|&p| process_shared(p)).collect();
    shared.sort_by_key(|p| p.pid);
    // Each process's parent, read once.
    let parents: std::collections::HashMap<u32, Option<u32>> = shared
        .iter()
        .map(|p| (p.pid, procs::parent_of(p.pid)))
        .collect();
    let parent = |pid: u32| parents.get(&pid).copied().flatten();
    // Postmasters first: a postgres process whose parent is not a postgres process.
    let postmasters: Vec<u32> = shared
        .iter()
        .filter(|p| is_postgres(p.pid) && !parent(p.pid).is_some_and(is_postgres))
        .map(|p| p.pid)
        .collect();
    for pm in postmasters {
        let members: Vec<ProcessShared> = shared
            .iter()
            .filter(|p| p.pid == pm || parent(p.pid) == Some(pm))
            .cloned()
            .collect();
        shared.retain(|p| !members.iter().any(|m| m.pid == p.pid));
        snap.instances.push(instance(pm, members));
    }
    snap.others = shared
        .into_iter()
        .map(|p| {
            let space = space_of(&root_of(p.pid).join("dev/shm"));
            (p, space)
        })
        .collect();
    snap
}

fn instance(pm: u32, mut processes: Vec<ProcessShared>) -> Instance {
    let root = root_of(pm);
    let mut main_size = 0;
    let mut main_page_size = 0;
    let mut sysv = None;
    if let Some(p) = processes.iter().find(|p| p.pid == pm) {
        for m in &p.mappings {
            match classify(&m.path) {
                Segment::Anonymous if m.size > main_size => {
                    main_size = m.size;
                    main_page_size = m.page_size;
                }
                Segment::SysV(key) => {
                    let mut s = SysvSegment {
                        key,
                        size: m.size,
                        ..Default::default()
                    };
                    if let Some((id, size, natt)) =
                        sysv_table(pm).and_then(|t| parse_sysvipc(&t, key))
                    {
                        s.id = Some(id);
                        s.size = size;
                        s.attached = Some(natt);
                    }
                    sysv = Some(s);
                }
                _ => {}
            }
        }
    }
    processes.sort_by_key(|p| (p.pid != pm, p.pid));
    Instance {
        postmaster: pm,
        data_dir: std::fs::read_link(format!("/proc/{pm}/cwd"))
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        main_size,
        main_page_size,
        sysv,
        dsm: dsm_files(&root),
        dev_shm: space_of(&root.join("dev/shm")),
        processes,
    }
}

fn space_record(s: &Option<Space>) -> Option<records::Space> {
    s.map(|s| records::Space {
        size_bytes: s.total,
        used_bytes: s.used,
        free_bytes: s.free,
    })
}

fn process_record(p: &ProcessShared) -> records::ProcessShared<'_> {
    records::ProcessShared {
        pid: p.pid,
        backend_type: &p.backend,
        shared_rss_bytes: p.rss,
        shared_pss_bytes: p.pss,
        main_rss_bytes: p.main_rss,
        dsm_rss_bytes: p.dsm_rss,
        sysv_rss_bytes: p.sysv_rss,
    }
}

impl Snapshot {
    /// One `snapshot` record per instance and per other process.
    pub fn write_json(&self, out: &mut Output) -> io::Result<()> {
        let ts_ns = output::unix_ns();
        let huge = || records::HugePages {
            total: self.huge.total,
            free: self.huge.free,
            reserved: self.huge.reserved,
            page_size_bytes: self.huge.page_size,
            shmem_huge_bytes: self.huge.shmem_huge_bytes,
        };
        for i in &self.instances {
            out.record(&Record::Snapshot(records::Snapshot::Instance(
                InstanceSnapshot {
                    ts_ns,
                    postgres: true,
                    pid: i.postmaster,
                    data_dir: &i.data_dir,
                    main_segment: MainSegment {
                        size_bytes: i.main_size,
                        page_size_bytes: i.main_page_size,
                    },
                    sysv: i.sysv.as_ref().map(|s| Sysv {
                        key: format!("{:#010x}", s.key),
                        id: s.id,
                        size_bytes: s.size,
                        attached: s.attached,
                    }),
                    dsm: i
                        .dsm
                        .iter()
                        .map(|f| DsmSegment {
                            name: &f.name,
                            size_bytes: f.size,
                            allocated_bytes: f.allocated,
                        })
                        .collect(),
                    dev_shm: space_record(&i.dev_shm),
                    huge_pages: huge(),
                    processes: i.processes.iter().map(process_record).collect(),
                },
            )))?;
        }
        for (p, space) in &self.others {
            out.record(&Record::Snapshot(records::Snapshot::Process(
                ProcessSnapshot {
                    ts_ns,
                    postgres: false,
                    pid: p.pid,
                    note: note_for(p),
                    process: process_record(p),
                    mappings: p
                        .mappings
                        .iter()
                        .map(|m| records::Mapping {
                            path: &m.path,
                            size_bytes: m.size,
                            rss_bytes: m.rss,
                            pss_bytes: m.pss,
                            page_size_bytes: m.page_size,
                        })
                        .collect(),
                    dev_shm: space_record(space),
                },
            )))?;
        }
        Ok(())
    }

    /// The human-readable view.
    pub fn render(&self, width: Option<usize>) -> String {
        use pgbpf_common::output::{human_bytes as hb, table};
        let mut out = String::new();
        for i in &self.instances {
            out.push_str(&format!(
                "PostgreSQL {} (data {})\n",
                i.postmaster, i.data_dir
            ));
            out.push_str(&format!(
                "  main segment  {} anonymous shared mapping ({} pages)\n",
                hb(i.main_size),
                hb(i.main_page_size)
            ));
            if let Some(s) = &i.sysv {
                out.push_str(&format!(
                    "  SysV segment  key {:#010x}{}, {}{}\n",
                    s.key,
                    s.id.map(|id| format!(" id {id}")).unwrap_or_default(),
                    hb(s.size),
                    s.attached
                        .map(|n| format!(", {n} attached"))
                        .unwrap_or_default()
                ));
            }
            let dsm_total: u64 = i.dsm.iter().map(|f| f.allocated).sum();
            out.push_str(&format!(
                "  DSM segments  {} in /dev/shm, {} allocated{}\n",
                i.dsm.len(),
                hb(dsm_total),
                if i.dsm.is_empty() { "" } else { ":" }
            ));
            for f in i.dsm.iter().take(10) {
                out.push_str(&format!(
                    "                {:<24} {:>7} (size {})\n",
                    f.name,
                    hb(f.allocated),
                    hb(f.size)
                ));
            }
            out.push_str(&format!("  /dev/shm      {}\n", space_line(&i.dev_shm)));
            out.push_str(&format!("  huge pages    {}\n", self.huge_line(i)));
            let rows: Vec<Vec<String>> = i
                .processes
                .iter()
                .map(|p| {
                    vec![
                        p.pid.to_string(),
                        p.backend.clone(),
                        hb(p.rss),
                        hb(p.pss),
                        hb(p.main_rss),
                        hb(p.dsm_rss),
                    ]
                })
                .collect();
            out.push_str(&indent(&table(
                &[
                    "PID",
                    "BACKEND",
                    "SHARED RSS",
                    "SHARED PSS",
                    "MAIN RSS",
                    "DSM RSS",
                ],
                &rows,
                width.map(|w| w.saturating_sub(2)),
            )));
            out.push('\n');
        }
        for (p, space) in &self.others {
            out.push_str(&format!("PID {} ({}): {}\n", p.pid, p.backend, note_for(p)));
            let rows: Vec<Vec<String>> = p
                .mappings
                .iter()
                .map(|m| vec![hb(m.size), hb(m.rss), hb(m.pss), m.path.clone()])
                .collect();
            if !rows.is_empty() {
                out.push_str(&indent(&table(
                    &["SIZE", "RSS", "PSS", "MAPPING"],
                    &rows,
                    width.map(|w| w.saturating_sub(2)),
                )));
            }
            out.push_str(&format!("  /dev/shm      {}\n", space_line(space)));
            out.push('\n');
        }
        out
    }

    fn huge_line(&self, i: &Instance) -> String {
        use pgbpf_common::output::human_bytes as hb;
        let h = &self.huge;
        if i.main_page_size > 4096 {
            format!(
                "in use: the main segment has {} pages (HugePages_Total {}, Free {}, Rsvd {})",
                hb(i.main_page_size),
                h.total,
                h.free,
                h.reserved
            )
        } else {
            format!(
                "not used by the main segment (HugePages_Total {}, Free {}; ShmemHugePages {})",
                h.total,
                h.free,
                hb(h.shmem_huge_bytes)
            )
        }
    }
}

fn note_for(p: &ProcessShared) -> String {
    format!(
        "not a PostgreSQL process ({}): its shared mappings, without PostgreSQL's meaning",
        p.backend
    )
}

fn space_line(s: &Option<Space>) -> String {
    use pgbpf_common::output::human_bytes as hb;
    match s {
        Some(s) => format!(
            "{} tmpfs, {} used, {} free (the target's own mount namespace)",
            hb(s.total),
            hb(s.used),
            hb(s.free)
        ),
        None => "not mounted or not readable".to_string(),
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0a00000-55d0c0b00000 r-xp 00000000 08:01 123   /usr/lib/postgresql/15/bin/postgres
Rss:                 100 kB
Pss:                 100 kB
7f2416027000-7f241eebf000 rw-s 00000000 00:01 5310   /dev/zero (deleted)
Size:             146016 kB
KernelPageSize:        4 kB
Rss:               23456 kB
Pss:                3000 kB
Shared_Hugetlb:        0 kB
7f2421230000-7f2421237000 rw-s 00000000 00:1b 5573   /dev/shm/PostgreSQL.2702238638
Rss:                  28 kB
Pss:                  14 kB
7f2421237000-7f2421238000 rw-s 00000000 00:01 1310780   /SYSV0005d4a2 (deleted)
Rss:                   4 kB
Pss:                   1 kB
7f0000000000-7f0000200000 rw-s 00000000 00:10 42   /anon_hugepage (deleted)
KernelPageSize:     2048 kB
Rss:                   0 kB
Shared_Hugetlb:     2048 kB
";

    #[test]
    fn shared_mappings_from_smaps() {
        let m = parse_smaps(SMAPS);
        assert_eq!(m.len(), 4, "{m:?}");
        assert_eq!(m[0].path, "/dev/zero (deleted)");
        assert_eq!(m[0].size, 0x7f241eebf000 - 0x7f2416027000);
        assert_eq!((m[0].rss, m[0].pss), (23456 * 1024, 3000 * 1024));
        assert_eq!(classify(&m[0].path), Segment::Anonymous);
        assert_eq!(
            classify(&m[1].path),
            Segment::Dsm("/PostgreSQL.2702238638".into())
        );
        assert_eq!(classify(&m[2].path), Segment::SysV(0x0005d4a2));
        assert_eq!((m[3].page_size, m[3].rss), (2 << 20, 2 << 20));
        assert_eq!(
            classify("/dev/shm/other"),
            Segment::File("/dev/shm/other".into())
        );
        // Garbage never panics.
        assert!(parse_smaps("x-y rw-s\n-\nRss: kB\n\u{0}").is_empty());
        assert!(parse_smaps(&format!("{SMAPS}garbage line\n")).is_empty());
    }

    #[test]
    fn huge_pages_and_sysvipc() {
        // Kernels without hugetlb have no huge page lines: all zero then.
        let h = huge_pages();
        assert!(h.free <= h.total, "{h:?}");
        let t = "       key      shmid perms   size  cpid  lpid nattch   uid\n    382114    1310780   600     56 19625 19625      7   101\n";
        assert_eq!(parse_sysvipc(t, 382114), Some((1310780, 56, 7)));
        assert_eq!(parse_sysvipc(t, 1), None);
        assert_eq!(parse_sysvipc("junk\n-1 x", 0xffff_ffff), None);
    }
}
