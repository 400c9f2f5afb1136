//! Test harness for pgbpf's privileged integration tests and benchmarks.
//!
//! - [`postgres`]: a throwaway PostgreSQL cluster (Debian's binaries) on the host or in a
//!   podman container, with psql, pgbench and the server log.
//! - [`container`]: podman containers run with runc on the host's own root filesystem.
//! - [`memcg`]: a hand-made memory cgroup with a limit, for pressure outside containers.
//! - [`tool`]: run a pgbpf tool until it has attached, stop it with Ctrl-C, collect output.
//! - [`exclusive`]: one privileged test at a time, so counters of the whole machine
//!   (/proc/vmstat, tracepoint hit counts) are not disturbed by another test.
//!
//! Everything started here is torn down on drop, also when a test fails.
#![allow(clippy::unwrap_used)]

pub mod container;
pub mod memcg;
pub mod postgres;
pub mod tool;

use std::{fs::File, path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

/// Holds the machine-wide test lock until dropped.
pub struct Exclusive(#[allow(dead_code)] nix::fcntl::Flock<File>);

/// Waits for the machine-wide lock that privileged tests take (across test binaries and
/// within one: flock locks belong to the open file, and each call opens its own).
pub fn exclusive() -> Exclusive {
    let f = File::create("/tmp/pgbpf-tests.lock").expect("creating /tmp/pgbpf-tests.lock");
    let lock = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("locking /tmp/pgbpf-tests.lock");
    Exclusive(lock)
}

/// Fails a test that needs root with the reason, instead of skipping it silently.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this integration test needs root (BPF, podman, cgroups); run scripts/test.sh as root"
    );
}

/// Runs a command, failing with its stderr when it exits non-zero. Returns stdout.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The repository root (for scripts/containers.conf and the like).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Sums the named counters of /proc/vmstat.
pub fn vmstat(names: &[&str]) -> u64 {
    let text = std::fs::read_to_string("/proc/vmstat").unwrap();
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(k, _)| names.contains(k))
        .map(|(_, v)| v.trim().parse::<u64>().unwrap())
        .sum()
}
