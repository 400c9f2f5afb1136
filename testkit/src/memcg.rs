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
