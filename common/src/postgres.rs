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
        let comm = crate::procs::comm_of(pid).unwrap_or_default();
        bail!(
            "PID {pid} ({comm}) is not a PostgreSQL process: it runs {}; give the postmaster's \
             PID or --postgres PATH",
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
pub fn procs_below(dir: &Path) -> Vec<u32> {
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

/// Background process types as PostgreSQL names them in its process titles (15 and later).
const BACKGROUND_TYPES: &[&str] = &[
    "autovacuum launcher",
    "autovacuum worker",
    "logical replication launcher",
    "logical replication worker",
    "parallel worker",
    "background writer",
    "checkpointer",
    "walwriter",
    "walreceiver",
    "walsender",
    "archiver",
    "startup",
    "logger",
    "stats collector",
];

/// What a PostgreSQL process is, from its title (/proc/PID/cmdline, which PostgreSQL rewrites
/// as "postgres: [cluster_name: ]what"): "postmaster", "checkpointer", "parallel worker",
/// "client backend", ... A title that is not PostgreSQL's gives None.
pub fn backend_type(title: &str) -> Option<&'static str> {
    let title = title.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    let Some(rest) = title.strip_prefix("postgres: ") else {
        // The postmaster keeps its command line: ".../postgres -D ..." or "postgres".
        let exe = title.split(['\0', ' ']).next().unwrap_or("");
        return is_postgres_binary(Path::new(exe)).then_some("postmaster");
    };
    let known = |s: &str| BACKGROUND_TYPES.iter().copied().find(|t| s.starts_with(t));
    if let Some(t) = known(rest) {
        return Some(t);
    }
    // With cluster_name set, the title is "postgres: 15/main: checkpointer".
    if let Some((_, after)) = rest.split_once(": ")
        && let Some(t) = known(after)
    {
        return Some(t);
    }
    Some("client backend")
}

/// What process `pid` is: its PostgreSQL backend type from the title (true), else its comm
/// (false); None when it is gone.
pub fn process_kind(pid: u32) -> Option<(String, bool)> {
    if let Some(kind) = backend_type(&crate::procs::title_of(pid)) {
        return Some((kind.to_string(), true));
    }
    let comm = crate::procs::comm_of(pid)?;
    Some((comm, false)).filter(|c| !c.0.is_empty())
}

/// Backend types of processes (their titles read once each): what the tools show per event
/// when the event itself does not carry it. A process gone before its first lookup is
/// "unknown"; the table starts over beyond 65 536 processes (pids are reused).
#[derive(Default)]
pub struct BackendTypes {
    by_pid: std::collections::HashMap<u32, String>,
}

impl BackendTypes {
    pub fn of(&mut self, pid: u32) -> String {
        if self.by_pid.len() >= 65_536 {
            self.by_pid.clear();
        }
        self.by_pid
            .entry(pid)
            .or_insert_with(|| process_kind(pid).map_or_else(|| "unknown".into(), |(kind, _)| kind))
            .clone()
    }
}

/// The leader's pid in a parallel worker's title ("... parallel worker for PID 4242").
pub fn parallel_leader(title: &str) -> Option<u32> {
    let rest = &title[title.find("parallel worker for PID ")? + 24..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_types_from_titles() {
        let cases = [
            (
                "/usr/lib/postgresql/15/bin/postgres -D /var/lib/x -c config_file=y",
                Some("postmaster"),
            ),
            ("postgres: 15/main: checkpointer ", Some("checkpointer")),
            ("postgres: background writer", Some("background writer")),
            (
                "postgres: 15/main: parallel worker for PID 4242",
                Some("parallel worker"),
            ),
            (
                "postgres: parallel worker for PID 7 ",
                Some("parallel worker"),
            ),
            (
                "postgres: 15/main: postgres bench [local] SELECT",
                Some("client backend"),
            ),
            (
                "postgres: app db 10.0.0.1(5432) idle",
                Some("client backend"),
            ),
            (
                "postgres: 15/main: autovacuum launcher",
                Some("autovacuum launcher"),
            ),
            ("python3 -c x", None),
            ("", None),
        ];
        for (title, want) in cases {
            assert_eq!(backend_type(title), want, "{title:?}");
        }
        assert_eq!(
            parallel_leader("postgres: 15/main: parallel worker for PID 4242"),
            Some(4242)
        );
        assert_eq!(parallel_leader("postgres: checkpointer"), None);
        assert_eq!(parallel_leader("parallel worker for PID "), None);
    }

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
