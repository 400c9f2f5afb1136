//! podman containers for tests: runc (crun fails on the hybrid cgroup layout), the project's
//! containers.conf (no rlimits can be set here), and `--rootfs /:O` so the host's own binaries
//! run in a throwaway overlay (no images can be pulled).

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::run;

/// What to run and with which limits.
#[derive(Clone, Debug, Default)]
pub struct ContainerSpec {
    /// e.g. "256m"
    pub memory: Option<String>,
    /// e.g. "64m" (podman's default /dev/shm is 64 MB already)
    pub shm_size: Option<String>,
    /// host directory → container path
    pub volumes: Vec<(String, String)>,
    /// user to run as inside
    pub user: Option<String>,
    /// share the host's network (for TCP clients on the host)
    pub host_network: bool,
    /// the command, run through `sh -c`
    pub command: String,
}

/// A running container, removed (forcibly) on drop.
pub struct Container {
    pub id: String,
}

/// A podman command with the project's containers.conf.
pub fn podman() -> Command {
    let mut c = Command::new("podman");
    c.env(
        "CONTAINERS_CONF",
        crate::repo_root().join("scripts/containers.conf"),
    );
    c
}

impl Container {
    pub fn run(spec: &ContainerSpec) -> anyhow::Result<Container> {
        let mut c = podman();
        c.args(["run", "-d", "--runtime", "runc"]);
        c.arg("--network")
            .arg(if spec.host_network { "host" } else { "none" });
        if let Some(m) = &spec.memory {
            // No swap here, but say so: the limit must hold for anon memory too.
            c.args(["--memory", m, "--memory-swap", m]);
        }
        if let Some(s) = &spec.shm_size {
            c.args(["--shm-size", s]);
        }
        for (host, inside) in &spec.volumes {
            c.arg("-v").arg(format!("{host}:{inside}"));
        }
        if let Some(u) = &spec.user {
            c.args(["--user", u]);
        }
        c.args(["--rootfs", "/:O", "sh", "-c", &spec.command]);
        let id = run(&mut c)
            .context("starting a podman container")?
            .trim()
            .to_string();
        if id.len() != 64 {
            bail!("podman run printed {id:?}, not a container id");
        }
        Ok(Container { id })
    }

    /// The container's cgroup v2 path, e.g. /libpod_parent/libpod-<id>.
    pub fn cgroup_path(&self) -> anyhow::Result<String> {
        pgbpf_common::cgroup::cgroup_of_pid(self.host_pid()?)
    }

    /// Host pid of the container's first process.
    pub fn host_pid(&self) -> anyhow::Result<u32> {
        let out = run(podman().args(["inspect", "--format", "{{.State.Pid}}", &self.id]))?;
        out.trim()
            .parse()
            .with_context(|| format!("podman inspect gave pid {out:?}"))
    }

    /// Host pids of every process in the container now.
    pub fn host_pids(&self) -> anyhow::Result<Vec<u32>> {
        let mount = pgbpf_common::cgroup::v2_mount()?;
        let path = self.cgroup_path()?;
        let procs = std::fs::read_to_string(
            mount
                .join(path.trim_start_matches('/'))
                .join("cgroup.procs"),
        )?;
        Ok(procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }

    /// Runs a command in the container.
    pub fn exec(&self, user: &str, command: &str) -> anyhow::Result<String> {
        run(podman().args(["exec", "--user", user, &self.id, "sh", "-c", command]))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman().args(["rm", "-f", "-t", "0", &self.id]).output();
    }
}
