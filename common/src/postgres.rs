//! Finding PostgreSQL: the binary a process runs (through /proc/PID/root for a process in a
//! container), the installed server, and whether a process is a postgres process at all.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};

/// The newest server installed by Debian's packages, e.g. /usr/lib/postgresql/15/bin.
pub fn installed_bin_dir() -> anyhow::Result<PathBuf> {
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed here (/usr/lib/postgresql)")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort_unstable();
    let v = versions
        .last()
        .ok_or_else(|| anyhow!("no server under /usr/lib/postgresql"))?;
    Ok(PathBuf::from(format!("/usr/lib/postgresql/{v}/bin")))
}

/// The executable of `pid` as a path this process can open, and the root it lives under
/// ("/" on the host, /proc/PID/root for a process in another mount namespace).
pub fn binary_of_pid(pid: u32) -> anyhow::Result<(PathBuf, PathBuf)> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).map_err(|e| {
        anyhow!("cannot read /proc/{pid}/exe: {e} (no such process, or not permitted)")
    })?;
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let same_ns = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()
        == std::fs::read_link("/proc/self/ns/mnt").ok();
    if same_ns {
        return Ok((exe, PathBuf::from("/")));
    }
    let rel = exe.strip_prefix("/").unwrap_or(&exe);
    Ok((root.join(rel), root))
}

/// The postgres binary of `pid`, or an error saying why it is not a postgres process.
pub fn postgres_binary_of_pid(pid: u32) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (exe, root) = binary_of_pid(pid)?;
    if !is_postgres_binary(&exe) {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        bail!(
            "PID {pid} ({}) is not a PostgreSQL process: it runs {}; give the postmaster's PID or \
             --postgres PATH",
            comm.trim(),
            exe.display()
        );
    }
    Ok((exe, root))
}

/// A postgres server binary is an ELF file named `postgres` (or `postmaster`).
pub fn is_postgres_binary(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let name = name.strip_suffix(" (deleted)").unwrap_or(name);
    matches!(name, "postgres" | "postmaster")
}

/// The postgres binary to probe for a target: `--postgres PATH` if given; else the binary of
/// the first `--pid`; else of a postgres process in the container or cgroup; else the one
/// installed on this machine. Returns the path to open and the root it lives under.
pub fn binary_for_target(
    target: &crate::target::Target,
    override_path: Option<&Path>,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    if let Some(p) = override_path {
        if !p.is_file() {
            bail!("--postgres {}: no such file", p.display());
        }
        return Ok((p.to_path_buf(), PathBuf::from("/")));
    }
    if let Some(&pid) = target.tgids.first() {
        return postgres_binary_of_pid(pid);
    }
    if let Some(cg) = &target.cgroup {
        let what = match &target.container {
            Some(c) => format!("container {}", &c.id[..12]),
            None => format!("cgroup {}", cg.path),
        };
        for pid in procs_below(&cg.dir) {
            if let Ok((exe, root)) = binary_of_pid(pid)
                && is_postgres_binary(&exe)
            {
                return Ok((exe, root));
            }
        }
        bail!(
            "{what} runs no PostgreSQL server process (looked for a process whose executable is named postgres)"
        );
    }
    Ok((installed_bin_dir()?.join("postgres"), PathBuf::from("/")))
}

/// Pids in a cgroup directory and the cgroups below it.
fn procs_below(dir: &Path) -> Vec<u32> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(text) = std::fs::read_to_string(d.join("cgroup.procs")) {
            out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(entries) = std::fs::read_dir(&d) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.path()),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shell_is_not_postgres() {
        let me = std::process::id();
        let e = postgres_binary_of_pid(me).unwrap_err().to_string();
        assert!(
            e.contains(&format!("PID {me}")) && e.contains("is not a PostgreSQL process"),
            "{e}"
        );
        assert!(binary_of_pid(999_999_999).is_err());
        assert!(is_postgres_binary(Path::new(
            "/usr/lib/postgresql/15/bin/postgres"
        )));
        assert!(!is_postgres_binary(Path::new("/usr/bin/psql")));
    }
}
