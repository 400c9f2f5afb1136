//! A hand-made memory cgroup with a limit, for real memory pressure outside containers.
//! On hybrid hosts the limit lives in the v1 memory controller and the cgroup id (what BPF
//! filters on) in the v2 hierarchy, so the cgroup is made in both; on pure v2 hosts, once.

use std::{
    path::PathBuf,
    process::{Child, Command},
};

use anyhow::Context as _;

/// Removed on drop (after killing what still runs in it).
pub struct MemoryCgroup {
    /// Path inside the v2 hierarchy, e.g. "/pgbpf-noise-1234".
    pub path: String,
    v2_dir: PathBuf,
    v1_dir: Option<PathBuf>,
}

impl MemoryCgroup {
    pub fn create(name: &str, limit_bytes: u64) -> anyhow::Result<MemoryCgroup> {
        let mount = pgbpf_common::cgroup::v2_mount()?;
        let v2_dir = mount.join(name);
        std::fs::create_dir_all(&v2_dir).with_context(|| format!("mkdir {}", v2_dir.display()))?;
        let v1_root = PathBuf::from("/sys/fs/cgroup/memory");
        let v1_dir = if v1_root.join("memory.limit_in_bytes").exists() {
            let d = v1_root.join(name);
            std::fs::create_dir_all(&d)?;
            std::fs::write(d.join("memory.limit_in_bytes"), limit_bytes.to_string())?;
            Some(d)
        } else {
            // Pure v2: enable the memory controller for the children of the root and of every
            // cgroup down to this one's parent (a nested name), then set the limit.
            let mut dir = mount.clone();
            for part in std::path::Path::new(name).components() {
                let _ = std::fs::write(dir.join("cgroup.subtree_control"), "+memory");
                dir.push(part);
            }
            std::fs::write(v2_dir.join("memory.max"), limit_bytes.to_string())?;
            None
        };
        Ok(MemoryCgroup {
            path: format!("/{name}"),
            v2_dir,
            v1_dir,
        })
    }

    /// Starts `sh -c script` inside the cgroup.
    pub fn spawn(&self, script: &str) -> anyhow::Result<Child> {
        let mut join = format!("echo $$ > {}/cgroup.procs", self.v2_dir.display());
        if let Some(v1) = &self.v1_dir {
            join.push_str(&format!(" && echo $$ > {}/cgroup.procs", v1.display()));
        }
        Ok(Command::new("sh")
            .arg("-c")
            .arg(format!("{join} && {script}"))
            .spawn()?)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        for dir in std::iter::once(&self.v2_dir).chain(self.v1_dir.as_ref()) {
            if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        for dir in std::iter::once(&self.v2_dir).chain(self.v1_dir.as_ref()) {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The kubelet's QoS slice (systemd driver) the test pods are made in.
const KUBELET_QOS: &str = "kubepods.slice/kubepods-burstable.slice";

/// The cgroup name (for [`MemoryCgroup::create`]) of a container of a Kubernetes pod as the
/// kubelet's systemd driver and containerd make it: `kubepods.slice/kubepods-burstable.slice/
/// kubepods-burstable-pod<UID, _ for ->.slice/cri-containerd-<64-hex ID>.scope`.
pub fn kubelet_container(uid: &str, id: &str) -> String {
    format!(
        "{KUBELET_QOS}/{}/cri-containerd-{id}.scope",
        kubelet_pod_slice(uid)
    )
}

fn kubelet_pod_slice(uid: &str) -> String {
    format!("kubepods-burstable-pod{}.slice", uid.replace('-', "_"))
}

/// The pods' and QoS slices a container's [`MemoryCgroup`] left behind (its removal removes
/// only its own directory), removed on drop however the test ends, innermost first, in both
/// hierarchies. Made before the containers, dropped after them.
pub struct KubeletSlices(Vec<PathBuf>);

impl KubeletSlices {
    pub fn new(uids: &[&str]) -> anyhow::Result<KubeletSlices> {
        let mount = pgbpf_common::cgroup::v2_mount()?;
        let rels = uids
            .iter()
            .map(|uid| format!("{KUBELET_QOS}/{}", kubelet_pod_slice(uid)))
            .chain([KUBELET_QOS.to_string(), "kubepods.slice".to_string()]);
        let mut dirs = vec![];
        for rel in rels {
            for root in [mount.clone(), "/sys/fs/cgroup/memory".into()] {
                dirs.push(root.join(&rel));
            }
        }
        Ok(KubeletSlices(dirs))
    }
}

impl Drop for KubeletSlices {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::fs::remove_dir(dir);
        }
    }
}
