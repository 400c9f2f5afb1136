//! Test harness for pgbpf's privileged integration tests and benchmarks.
//!
//! - [`postgres`]: a throwaway PostgreSQL cluster (Debian's binaries) on the host or in a
//!   podman container, with psql, pgbench and the server log.
//! - [`container`]: podman containers run with runc on the host's own root filesystem.
//! - [`dsm`]: a parallel query that runs a container's /dev/shm out of space, and its log.
//! - [`memcg`]: a hand-made memory cgroup with a limit, for pressure outside containers.
//! - [`tool`]: run a pgbpf tool until it has attached, stop it with Ctrl-C, collect output.
//! - [`schema`]: check a tool's real NDJSON output against its JSON Schema.
//! - [`skip`]: a test that cannot run on this machine says so, with the reason.
//! - [`exclusive`]: one privileged test at a time, so counters of the whole machine
//!   (/proc/vmstat, tracepoint hit counts) are not disturbed by another test.
//!
//! Everything started here is torn down on drop, also when a test fails.
#![allow(clippy::unwrap_used)]

pub mod bpf_objects;
pub mod container;
pub mod dsm;
pub mod memcg;
pub mod postgres;
pub mod redis;
pub mod schema;
pub mod stacks;
pub mod tool;

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::Command,
};

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

/// Reports that a test cannot run on this machine, and why: on stderr and in
/// target/test-logs/skipped.log, which scripts/test.sh prints after the tests (libtest shows
/// a passing test's stderr to nobody). The test then returns without asserting anything.
pub fn skip(test: &str, reason: &str) {
    use std::io::Write as _;
    let line = format!("skipped {test}: {reason}");
    eprintln!("{line}");
    let dir = repo_root().join("target/test-logs");
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("skipped.log"))
    {
        let _ = writeln!(f, "{line}");
    }
}

/// Statement text as a tool and pg_stat_statements can agree on it: trimmed, without the
/// final semicolon, whitespace runs as one space.
pub fn statement_key(sql: &str) -> String {
    sql.trim()
        .trim_end_matches(';')
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// A self-signed certificate for `localhost` made by `openssl req` in `dir`: (certificate,
/// key) paths.
pub fn self_signed_certificate(
    dir: &std::path::Path,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    use anyhow::Context as _;
    let (crt, key) = (dir.join("server.crt"), dir.join("server.key"));
    run(Command::new("openssl")
        .args([
            "req",
            "-new",
            "-x509",
            "-days",
            "2",
            "-nodes",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt))
    .context("openssl req (the openssl package)")?;
    Ok((crt, key))
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

/// /proc/PID/io's wchar: the bytes the process's write syscalls wrote (its reaped children's
/// included).
pub fn wchar(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("wchar: "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no wchar in /proc/{pid}/io"))
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

/// The 2-byte USDT semaphore at file offset `file_offset` of the binary whose path ends with
/// `binary_suffix`, as process `pid` sees it now (read from /proc/PID/mem).
pub fn read_semaphore(pid: u32, binary_suffix: &str, file_offset: u64) -> anyhow::Result<u16> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    for line in maps.lines().filter(|l| l.ends_with(binary_suffix)) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some((lo, hi)) = f.first().and_then(|r| r.split_once('-')) else {
            continue;
        };
        let (lo, hi) = (u64::from_str_radix(lo, 16)?, u64::from_str_radix(hi, 16)?);
        let off = u64::from_str_radix(f.get(2).copied().unwrap_or("0"), 16)?;
        if file_offset >= off && file_offset < off + (hi - lo) {
            let mut mem = File::open(format!("/proc/{pid}/mem"))?;
            mem.seek(SeekFrom::Start(lo + file_offset - off))?;
            let mut b = [0u8; 2];
            mem.read_exact(&mut b)?;
            return Ok(u16::from_ne_bytes(b));
        }
    }
    bail!("no mapping of {binary_suffix} at file offset {file_offset:#x} in process {pid}")
}

/// The file offsets of the USDT semaphores of the postgres binary in `bin_dir`.
pub fn postgres_semaphore_offsets(bin_dir: &Path) -> Vec<u64> {
    let offsets: Vec<u64> = pgbpf_common::usdt::probes(&bin_dir.join("postgres"))
        .unwrap()
        .iter()
        .filter_map(|p| p.semaphore_offset)
        .collect();
    assert!(
        !offsets.is_empty(),
        "the postgres binary has USDT semaphores"
    );
    offsets
}

/// Every semaphore of the postgres binary at `offsets` as backend `pid` sees it.
pub fn postgres_semaphores(pid: u32, offsets: &[u64]) -> Vec<u16> {
    offsets
        .iter()
        .map(|&off| read_semaphore(pid, "/bin/postgres", off).unwrap())
        .collect()
}

/// Waits up to 5 s for `pid`'s semaphore to read `want`. The kernel lowers semaphores when
/// the perf event is finally released, which happens asynchronously after the fd is closed.
pub fn wait_semaphore(
    pid: u32,
    binary_suffix: &str,
    file_offset: u64,
    want: u16,
) -> anyhow::Result<u16> {
    let start = std::time::Instant::now();
    loop {
        let v = read_semaphore(pid, binary_suffix, file_offset)?;
        if v == want || start.elapsed() > std::time::Duration::from_secs(5) {
            return Ok(v);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
