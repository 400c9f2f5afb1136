//! cgroup v2: where the hierarchy is mounted, cgroup ids and paths, and finding a container's
//! cgroup from its id (docker, containerd/CRI, CRI-O, podman; a unique prefix is enough).
//!
//! `bpf_get_current_cgroup_id()` returns the v2 id of a task's cgroup, which is the inode
//! number of the cgroup's directory in the v2 mount. That mount is /sys/fs/cgroup on pure v2
//! nodes and /sys/fs/cgroup/unified on hybrid ones; /proc/self/mountinfo tells which.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};

/// Finds the cgroup2 mount point in the text of /proc/self/mountinfo (parsed by procfs).
pub fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    use procfs::FromBufRead as _;
    let mounts = procfs::process::MountInfos::from_buf_read(mountinfo.as_bytes()).ok()?;
    mounts
        .into_iter()
        .find(|m| m.fs_type == "cgroup2")
        .map(|m| unescape_mount_path(&m.mount_point.to_string_lossy()))
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`); procfs leaves
/// the escapes in its paths, so they are undone here.
fn unescape_mount_path(s: &str) -> PathBuf {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let Some(d) = octal {
            let value = d.iter().fold(0u16, |acc, c| acc * 8 + u16::from(c - b'0'));
            out.push(value as u8); // \377 at most: fits
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(String::from_utf8_lossy(&out).into_owned())
}

/// The cgroup v2 mount point of this machine: ours, or in a container with a cgroup namespace
/// of its own (`kubectl debug --profile=sysadmin`, podman's `--cgroupns=private`), whose
/// /sys/fs/cgroup shows only its own subtree, the host's, reached through the root of the
/// host's init (PID 1 of the host PID namespace the container shares), so that cgroup paths,
/// ids and levels are the node's.
pub fn v2_mount() -> anyhow::Result<PathBuf> {
    if let Some(host) = host_v2_mount() {
        return Ok(host);
    }
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    parse_cgroup2_mount(&text).ok_or_else(|| {
        anyhow!(
            "no cgroup v2 hierarchy is mounted (needed for cgroup and container filters); \
             mount one with `mount -t cgroup2 none /sys/fs/cgroup/unified`"
        )
    })
}

/// The host's cgroup v2 mount as seen through /proc/1/root, when PID 1 (the host's init in the
/// host PID namespace) is in another cgroup namespace than this process and its mount is the
/// whole hierarchy.
fn host_v2_mount() -> Option<PathBuf> {
    let ours = std::fs::read_link("/proc/self/ns/cgroup").ok()?;
    if std::fs::read_link("/proc/1/ns/cgroup").ok()? == ours {
        return None;
    }
    let text = std::fs::read_to_string("/proc/1/mountinfo").ok()?;
    let point = parse_cgroup2_mount(&text)?;
    let host = Path::new("/proc/1/root").join(point.strip_prefix("/").ok()?);
    // The hierarchy's root (cgroup id, the directory's inode, 1), not the view of another
    // cgroup namespace: PID 1 may be a pod's pause process sharing its PID namespace.
    std::fs::metadata(&host)
        .is_ok_and(|m| m.ino() == ROOT_CGROUP_ID)
        .then_some(host)
}

/// The cgroup id (inode) of a v2 hierarchy's root directory.
const ROOT_CGROUP_ID: u64 = 1;

/// One cgroup of the v2 hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    /// Path inside the hierarchy, "/" for the root, e.g. "/libpod_parent/libpod-3f2a…".
    pub path: String,
    /// Its directory on this machine.
    pub dir: PathBuf,
    /// cgroup id (the directory's inode), as `bpf_get_current_cgroup_id()` reports it.
    pub id: u64,
    /// Depth below the root (root = 0), for `bpf_get_current_ancestor_cgroup_id()`.
    pub level: u32,
}

impl Cgroup {
    /// `path` is either inside the hierarchy ("/kubepods/pod1") or a directory under `mount`
    /// (as this process or, for the host's mount seen from a container, the host names it).
    pub fn open(mount: &Path, path: &str) -> anyhow::Result<Cgroup> {
        let p = Path::new(path);
        // The mount as the host names it, when seen through the host init's root.
        let host_point = mount
            .strip_prefix("/proc/1/root")
            .map(|point| Path::new("/").join(point));
        let rel = p
            .strip_prefix(mount)
            .ok()
            .or_else(|| p.strip_prefix(host_point.as_ref().ok()?).ok())
            .unwrap_or(p);
        let rel = rel.strip_prefix("/").unwrap_or(rel);
        let dir = mount.join(rel);
        let meta = std::fs::metadata(&dir)
            .map_err(|e| anyhow!("no cgroup {path} (looked for {}): {e}", dir.display()))?;
        if !meta.is_dir() || !dir.join("cgroup.procs").exists() {
            bail!("{} is not a cgroup v2 directory", dir.display());
        }
        let parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .filter(|c| !c.is_empty() && c != ".")
            .collect();
        Ok(Cgroup {
            path: format!("/{}", parts.join("/")),
            dir,
            id: meta.ino(),
            level: parts.len() as u32,
        })
    }

    /// Processes (tgids) in this cgroup and every cgroup below it, now.
    pub fn processes(&self) -> Vec<u32> {
        let mut out = vec![];
        let mut dirs = vec![self.dir.clone()];
        while let Some(d) = dirs.pop() {
            if let Ok(t) = std::fs::read_to_string(d.join("cgroup.procs")) {
                out.extend(t.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
            if let Ok(entries) = std::fs::read_dir(&d) {
                dirs.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// The container runtimes whose cgroup names we recognise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Docker,
    Containerd,
    CriO,
    Podman,
    /// A bare 64-hex directory (cgroupfs drivers: /docker/ID, /kubepods/.../ID).
    Unknown,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Podman => "podman",
            Runtime::Unknown => "container",
        }
    }
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The container id in a cgroup directory name, if it is one a runtime creates:
/// `docker-ID.scope`, `cri-containerd-ID.scope`, `crio-ID.scope`, `libpod-ID[.scope]`, or a
/// bare ID (under /docker, /kubepods, ...). `parent` tells a docker cgroupfs id apart.
pub fn container_id<'a>(dir_name: &'a str, parent: &str) -> Option<(Runtime, &'a str)> {
    let strip_scope = |s: &'static str, rt: Runtime| {
        let rest = dir_name.strip_prefix(s)?;
        let id = rest.strip_suffix(".scope").unwrap_or(rest);
        is_container_id(id).then_some((rt, id))
    };
    strip_scope("docker-", Runtime::Docker)
        .or_else(|| strip_scope("cri-containerd-", Runtime::Containerd))
        .or_else(|| strip_scope("crio-", Runtime::CriO))
        .or_else(|| strip_scope("libpod-", Runtime::Podman))
        .or_else(|| {
            is_container_id(dir_name).then(|| {
                (
                    if parent == "docker" {
                        Runtime::Docker
                    } else {
                        Runtime::Unknown
                    },
                    dir_name,
                )
            })
        })
}

/// A container found in the cgroup tree.
#[derive(Clone, Debug)]
pub struct ContainerCgroup {
    pub id: String,
    pub runtime: Runtime,
    pub cgroup: Cgroup,
}

/// How a cgroup target was named, to find its cgroup again when it is replaced (a restarted
/// container gets a new cgroup, of the same path for docker and podman).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Named {
    /// `--cgroup PATH`.
    Path(String),
    /// `--container`: the container's whole id.
    Container(String),
    /// `--pod`: the pod's UID.
    Pod(String),
}

impl Named {
    /// The cgroup it names now.
    pub fn find(&self) -> anyhow::Result<Cgroup> {
        let mount = v2_mount()?;
        match self {
            Named::Path(path) => Cgroup::open(&mount, path),
            Named::Container(id) => Ok(find_container(&mount, id)?.cgroup),
            Named::Pod(uid) => Ok(find_pod(&mount, uid)?.1),
        }
    }
}

/// Every container cgroup under `mount` (the shallowest cgroup per container id).
pub fn list_containers(mount: &Path) -> Vec<ContainerCgroup> {
    let mut found: HashMap<String, ContainerCgroup> = HashMap::new();
    let mut stack = vec![(mount.to_path_buf(), String::new())];
    while let Some((dir, parent)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if let Some((runtime, id)) = container_id(&name, &parent) {
                let rel = path
                    .strip_prefix(mount)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned();
                if let Ok(cgroup) = Cgroup::open(mount, &rel) {
                    let keep = found.get(id).is_none_or(|c| c.cgroup.level > cgroup.level);
                    if keep {
                        found.insert(
                            id.to_string(),
                            ContainerCgroup {
                                id: id.to_string(),
                                runtime,
                                cgroup,
                            },
                        );
                    }
                }
            }
            stack.push((path, name));
        }
    }
    let mut v: Vec<_> = found.into_values().collect();
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}

/// Finds the container whose id starts with `query` (case-insensitive).
pub fn find_container(mount: &Path, query: &str) -> anyhow::Result<ContainerCgroup> {
    let q = query.trim().to_ascii_lowercase();
    if q.is_empty() || !q.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("container id {query:?} is not a hexadecimal id or prefix");
    }
    let all = list_containers(mount);
    let mut hits: Vec<_> = all
        .iter()
        .filter(|c| c.id.starts_with(&q))
        .cloned()
        .collect();
    match hits.len() {
        1 => Ok(hits.remove(0)),
        0 => {
            let known = if all.is_empty() {
                "none is running".to_string()
            } else {
                format!("running: {}", describe_list(&all))
            };
            bail!(
                "no container matches {query:?} (searched docker, containerd, CRI-O and podman \
                 cgroups under {}); {known}",
                mount.display()
            )
        }
        _ => bail!(
            "container id {query:?} is ambiguous, it matches {}: give more characters",
            describe_list(&hits)
        ),
    }
}

fn describe_list(list: &[ContainerCgroup]) -> String {
    list.iter()
        .map(|c| format!("{} ({})", &c.id[..12], c.runtime.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The Kubernetes pod UID a cgroup directory name stands for: the kubelet's systemd driver
/// names a pod `kubepods[-QOS]-pod<UID with _ for ->.slice`, its cgroupfs driver `pod<UID>`.
/// A UID is a UUID, or for a static pod (a manifest the kubelet reads from disk: etcd,
/// kube-apiserver) the 32 hex digits of the manifest's hash, which its mirror pod's
/// metadata.uid shows too.
pub fn pod_uid(dir_name: &str) -> Option<String> {
    let uid = match dir_name.strip_suffix(".slice") {
        Some(slice) if slice.starts_with("kubepods") => slice.rsplit_once("-pod")?.1,
        Some(_) => return None,
        None => dir_name.strip_prefix("pod")?,
    };
    let uid = uid.replace('_', "-").to_ascii_lowercase();
    // A UUID: 36 characters, hexadecimal digits and four dashes.
    let uuid = uid.len() == 36
        && uid.bytes().filter(|&b| b == b'-').count() == 4
        && uid.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit());
    let config_hash = uid.len() == 32 && uid.bytes().all(|b| b.is_ascii_hexdigit());
    (uuid || config_hash).then_some(uid)
}

/// Where a cgroup sits: the container and the Kubernetes pod it belongs to, read from the
/// names along its path (labels of the exporter's per-container metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Placement {
    /// The cgroup v2 path ("/system.slice/postgresql@15-main.service").
    pub cgroup: String,
    /// The first 12 hex digits of the innermost container's id, or empty.
    pub container: String,
    /// The pod's UID, or empty.
    pub pod: String,
}

impl Placement {
    pub fn of_path(path: &str) -> Placement {
        let mut placement = Placement {
            cgroup: path.to_string(),
            ..Placement::default()
        };
        let mut parent = "";
        for name in path.split('/').filter(|n| !n.is_empty()) {
            if let Some((_, id)) = container_id(name, parent) {
                placement.container = id[..12].to_string();
            }
            if let Some(uid) = pod_uid(name) {
                placement.pod = uid;
            }
            parent = name;
        }
        placement
    }
}

/// The cgroup of the Kubernetes pod whose UID starts with `query` (its containers are below
/// it), found anywhere under `mount`.
pub fn find_pod(mount: &Path, query: &str) -> anyhow::Result<(String, Cgroup)> {
    let q = query.trim().to_ascii_lowercase().replace('_', "-");
    if q.is_empty() || !q.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()) {
        bail!("pod UID {query:?} is not a UID or the start of one (as in metadata.uid)");
    }
    let mut hits: HashMap<String, PathBuf> = HashMap::new();
    let mut stack = vec![mount.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            match pod_uid(&name) {
                // A pod's own cgroups are its containers: no pod below a pod.
                Some(uid) if uid.starts_with(&q) => {
                    hits.entry(uid).or_insert(entry.path());
                }
                Some(_) => {}
                None => stack.push(entry.path()),
            }
        }
    }
    let mut hits: Vec<(String, PathBuf)> = hits.into_iter().collect();
    match hits.len() {
        1 => {
            let (uid, dir) = hits.remove(0);
            let rel = dir.strip_prefix(mount).unwrap_or(&dir);
            let cgroup = Cgroup::open(mount, &rel.to_string_lossy())?;
            Ok((uid, cgroup))
        }
        0 => bail!(
            "no Kubernetes pod cgroup matches {query:?} under {} (kubepods…-pod<UID>.slice or \
             pod<UID>)",
            mount.display()
        ),
        _ => {
            hits.sort();
            let uids: Vec<&str> = hits.iter().map(|(u, _)| u.as_str()).collect();
            bail!(
                "pod UID {query:?} is ambiguous, it matches {}: give more characters",
                uids.join(", ")
            )
        }
    }
}

/// The v2 cgroup path of a process ("0::/path" in /proc/PID/cgroup).
pub fn cgroup_of_pid(pid: u32) -> anyhow::Result<String> {
    crate::procs::cgroup_v2_of(pid).ok_or_else(|| {
        anyhow!("process {pid} has no cgroup v2 entry (or /proc/{pid}/cgroup is unreadable)")
    })
}

/// Maps cgroup ids (from the kernel) back to readable names, walking the tree on a miss.
#[derive(Default)]
pub struct CgroupNames {
    mount: Option<PathBuf>,
    names: HashMap<u64, String>,
    /// The path of every cgroup seen by a walk.
    paths: HashMap<u64, String>,
}

impl CgroupNames {
    pub fn new() -> Self {
        CgroupNames {
            mount: v2_mount().ok(),
            names: HashMap::new(),
            paths: HashMap::new(),
        }
    }

    /// The cgroup v2 path of `id`, or None for a cgroup that is gone (walks the tree once
    /// per unknown id, as [`CgroupNames::name`]).
    pub fn path(&mut self, id: u64) -> Option<String> {
        self.name(id);
        self.paths.get(&id).cloned()
    }

    /// A short readable name: "podman:3f2a1b2c3d4e" for a container, else the cgroup path,
    /// or "cgroup#ID" for a cgroup that is gone.
    pub fn name(&mut self, id: u64) -> String {
        if let Some(n) = self.names.get(&id) {
            return n.clone();
        }
        if let Some(mount) = &self.mount {
            self.rescan(&mount.clone());
        }
        self.names
            .entry(id)
            .or_insert_with(|| format!("cgroup#{id}"))
            .clone()
    }

    fn rescan(&mut self, mount: &Path) {
        let mut stack = vec![(mount.to_path_buf(), String::new())];
        while let Some((dir, parent)) = stack.pop() {
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue;
            };
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let rel = dir
                .strip_prefix(mount)
                .unwrap_or(&dir)
                .to_string_lossy()
                .into_owned();
            let path = format!("/{rel}");
            let label = match container_id(&name, &parent) {
                Some((rt, cid)) => format!("{}:{}", rt.name(), &cid[..12]),
                None => path.clone(),
            };
            self.names.insert(meta.ino(), label);
            self.paths.insert(meta.ino(), path);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push((e.path(), name.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a9c0d5b8e4f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192";

    #[test]
    fn a_placement_names_the_innermost_container_and_its_pod() {
        let pod = "kubepods-burstable-pod0f6a1c2e_93b4_4c1d_8e2f_5a6b7c8d9e0f.slice";
        let path =
            format!("/kubepods.slice/kubepods-burstable.slice/{pod}/cri-containerd-{ID}.scope");
        let p = Placement::of_path(&path);
        assert_eq!(p.container, &ID[..12]);
        assert_eq!(p.pod, "0f6a1c2e-93b4-4c1d-8e2f-5a6b7c8d9e0f");
        assert_eq!(p.cgroup, path);
        let host = Placement::of_path("/system.slice/postgresql@15-main.service");
        assert_eq!((host.container.as_str(), host.pod.as_str()), ("", ""));
        let docker = Placement::of_path(&format!("/docker/{ID}"));
        assert_eq!(docker.container, &ID[..12]);
    }

    #[test]
    fn kubernetes_pod_cgroups_are_told_by_name() {
        let uid = "0f6a1c2e-93b4-4c1d-8e2f-5a6b7c8d9e0f";
        for name in [
            "kubepods-burstable-pod0f6a1c2e_93b4_4c1d_8e2f_5a6b7c8d9e0f.slice",
            "kubepods-besteffort-pod0f6a1c2e_93b4_4c1d_8e2f_5a6b7c8d9e0f.slice",
            "kubepods-pod0f6a1c2e_93b4_4c1d_8e2f_5a6b7c8d9e0f.slice",
            "pod0f6a1c2e-93b4-4c1d-8e2f-5a6b7c8d9e0f",
        ] {
            assert_eq!(pod_uid(name).as_deref(), Some(uid), "{name}");
        }
        // A static pod (kube-apiserver's manifest on a control-plane node): its UID is the
        // manifest's hash, as its mirror pod's metadata.uid shows it.
        let hash = "6f2d3a7c4f5f8b41d7e1e2e5e9f1b3c4";
        for name in [
            "kubepods-burstable-pod6f2d3a7c4f5f8b41d7e1e2e5e9f1b3c4.slice",
            "pod6f2d3a7c4f5f8b41d7e1e2e5e9f1b3c4",
        ] {
            assert_eq!(pod_uid(name).as_deref(), Some(hash), "{name}");
        }
        let p = Placement::of_path(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{hash}.slice/\
             cri-containerd-{ID}.scope"
        ));
        assert_eq!((p.pod.as_str(), p.container.as_str()), (hash, &ID[..12]));
        for name in [
            "kubepods-burstable.slice",
            "kubepods.slice",
            "podman",
            "pod1234",
            "kubepods-burstable-pod6f2d3a7c4f5f8b41d7e1e2e5e9f1b3c.slice",
            "system-pod0f6a1c2e_93b4_4c1d_8e2f_5a6b7c8d9e0f.slice",
            "cri-containerd-0f6a1c2e93b44c1d8e2f5a6b7c8d9e0f0f6a1c2e93b44c1d8e2f5a6b7c8d9e0f.scope",
        ] {
            assert_eq!(pod_uid(name), None, "{name}");
        }
    }

    /// A kubelet-shaped tree (systemd driver) in a plain directory: the pod is found by a
    /// prefix of its UID, with dashes or underscores; a prefix two pods share is refused.
    #[test]
    fn pods_are_found_by_uid_prefix() {
        let root = tempfile::tempdir().unwrap();
        let qos = root.path().join("kubepods.slice/kubepods-burstable.slice");
        let pods = [
            "kubepods-burstable-pod0f6a1c2e_93b4_4c1d_8e2f_5a6b7c8d9e0f.slice",
            "kubepods-burstable-pod0f6a9999_93b4_4c1d_8e2f_5a6b7c8d9e0f.slice",
        ];
        for pod in pods {
            let ctr = qos.join(pod).join("cri-containerd-abc.scope");
            std::fs::create_dir_all(&ctr).unwrap();
            std::fs::write(qos.join(pod).join("cgroup.procs"), "").unwrap();
        }
        let (uid, cg) = find_pod(root.path(), "0f6a1c2e-93b4").unwrap();
        assert_eq!(uid, "0f6a1c2e-93b4-4c1d-8e2f-5a6b7c8d9e0f");
        assert_eq!(
            cg.path,
            format!("/kubepods.slice/kubepods-burstable.slice/{}", pods[0])
        );
        assert_eq!(cg.level, 3);
        assert!(find_pod(root.path(), "0f6a1c2e_93b4").is_ok());
        let e = find_pod(root.path(), "0f6a").unwrap_err().to_string();
        assert!(e.contains("ambiguous"), "{e}");
        let e = find_pod(root.path(), "ffff").unwrap_err().to_string();
        assert!(e.contains("no Kubernetes pod"), "{e}");
        assert!(find_pod(root.path(), "not-a-uid!").is_err());
    }

    #[test]
    fn mountinfo_hybrid_and_pure() {
        let hybrid = "25 30 0:23 / /sys/fs/cgroup ro - tmpfs tmpfs ro\n\
                      26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pure = "35 24 0:30 / /sys/fs/cgroup rw shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            parse_cgroup2_mount(pure),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let escaped = "35 24 0:30 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_mount(escaped),
            Some(PathBuf::from("/mnt/my cg"))
        );
        assert_eq!(parse_cgroup2_mount("garbage\n\n - \n"), None);
    }

    #[test]
    fn container_names_of_each_runtime() {
        assert_eq!(
            container_id(&format!("docker-{ID}.scope"), "system.slice"),
            Some((Runtime::Docker, ID))
        );
        assert_eq!(container_id(ID, "docker"), Some((Runtime::Docker, ID)));
        assert_eq!(
            container_id(&format!("cri-containerd-{ID}.scope"), "kubepods-pod1.slice"),
            Some((Runtime::Containerd, ID))
        );
        assert_eq!(
            container_id(&format!("crio-{ID}.scope"), "x"),
            Some((Runtime::CriO, ID))
        );
        assert_eq!(
            container_id(&format!("libpod-{ID}"), "libpod_parent"),
            Some((Runtime::Podman, ID))
        );
        assert_eq!(
            container_id(&format!("libpod-{ID}.scope"), "machine.slice"),
            Some((Runtime::Podman, ID))
        );
        assert_eq!(container_id(ID, "pod1234"), Some((Runtime::Unknown, ID)));
        assert_eq!(container_id("libpod-conmon-abc", "x"), None);
        assert_eq!(container_id("docker-short.scope", "x"), None);
        assert_eq!(container_id("system.slice", "/"), None);
    }

    fn fake_tree(ids: &[&str]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.procs"), "").unwrap();
        for (i, id) in ids.iter().enumerate() {
            let dir = if i % 2 == 0 {
                root.path()
                    .join("libpod_parent")
                    .join(format!("libpod-{id}"))
            } else {
                root.path()
                    .join("system.slice")
                    .join(format!("docker-{id}.scope"))
            };
            std::fs::create_dir_all(dir.join("inner")).unwrap();
            std::fs::write(dir.join("cgroup.procs"), "").unwrap();
            std::fs::write(dir.join("inner/cgroup.procs"), "").unwrap();
        }
        root
    }

    #[test]
    fn finds_a_container_by_unique_prefix() {
        let other = ID.replace("3f2a", "3fbb");
        let tree = fake_tree(&[ID, &other]);
        let c = find_container(tree.path(), "3F2A").unwrap();
        assert_eq!(c.id, ID);
        assert_eq!(c.runtime, Runtime::Podman);
        assert_eq!(c.cgroup.path, format!("/libpod_parent/libpod-{ID}"));
        assert_eq!(c.cgroup.level, 2);
        let d = find_container(tree.path(), "3fbb").unwrap();
        assert_eq!(d.runtime, Runtime::Docker);
    }

    #[test]
    fn unknown_and_ambiguous_containers_list_candidates() {
        let other = ID.replace("3f2a", "3fbb");
        let tree = fake_tree(&[ID, &other]);
        let e = find_container(tree.path(), "3f").unwrap_err().to_string();
        assert!(
            e.contains("ambiguous") && e.contains("3f2a9c0d5b8e") && e.contains("3fbb9c0d5b8e"),
            "{e}"
        );
        let e = find_container(tree.path(), "abcd").unwrap_err().to_string();
        assert!(
            e.contains("no container matches") && e.contains("3f2a9c0d5b8e (podman)"),
            "{e}"
        );
        let e = find_container(tree.path(), "zz!").unwrap_err().to_string();
        assert!(e.contains("not a hexadecimal"), "{e}");
    }

    #[test]
    fn cgroup_paths_inside_or_on_the_mount() {
        let tree = fake_tree(&[ID]);
        let rel = format!("/libpod_parent/libpod-{ID}");
        let a = Cgroup::open(tree.path(), &rel).unwrap();
        let b = Cgroup::open(tree.path(), tree.path().join(&rel[1..]).to_str().unwrap()).unwrap();
        assert_eq!(a, b);
        assert_eq!(Cgroup::open(tree.path(), "/").unwrap().level, 0);
        assert!(Cgroup::open(tree.path(), "/nope").is_err());
    }
}
