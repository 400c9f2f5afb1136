//! A server named by what outlives its processes: a PostgreSQL data directory (`--pgdata`) or
//! the port it listens on (`--port`). Found at start like a `--pid`, and found again after a
//! restart or a crash, so that a trace follows the new postmaster instead of ending.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail};

use crate::procs;

/// How the server was named on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Server {
    /// A PostgreSQL data directory: its `postmaster.pid` names the postmaster.
    DataDir(PathBuf),
    /// A port: a PostgreSQL Unix socket `.s.PGSQL.PORT` (its lock file names the postmaster)
    /// or a listening TCP socket (whoever holds it: a postmaster, a redis-server).
    Port(u16),
}

impl std::fmt::Display for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Server::DataDir(dir) => write!(f, "data directory {}", dir.display()),
            Server::Port(port) => write!(f, "port {port}"),
        }
    }
}

impl Server {
    /// The server's main process now (the postmaster), or why there is none.
    pub fn main_process(&self) -> anyhow::Result<u32> {
        match self {
            Server::DataDir(dir) => postmaster_of_data_dir(dir),
            Server::Port(port) => {
                if let Some(pid) = postmaster_of_unix_port(*port) {
                    return Ok(pid);
                }
                tcp_listener(*port).ok_or_else(|| {
                    anyhow!("no process listens on port {port} (TCP or a PostgreSQL Unix socket)")
                })
            }
        }
    }
}

/// The postmaster of a data directory: the pid in its `postmaster.pid`, if that process runs
/// with the directory as its working directory (after a crash the file stays behind, and its
/// pid may belong to anything by now). A server in a container wrote its own namespace's
/// pid there: it is then the process working in the directory whose parent is not.
fn postmaster_of_data_dir(dir: &Path) -> anyhow::Result<u32> {
    let lock = dir.join("postmaster.pid");
    let text = match std::fs::read_to_string(&lock) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !dir.join("PG_VERSION").is_file() {
                bail!(
                    "--pgdata {}: not a PostgreSQL data directory (no PG_VERSION)",
                    dir.display()
                );
            }
            bail!(
                "--pgdata {}: the server is not running (no postmaster.pid)",
                dir.display()
            );
        }
        Err(e) => bail!("--pgdata {}: reading postmaster.pid: {e}", dir.display()),
    };
    let pid = lock_file_pid(&text)
        .ok_or_else(|| anyhow!("--pgdata {}: postmaster.pid holds no pid", dir.display()))?;
    if runs_in(pid, dir) {
        return Ok(pid);
    }
    if let Some(pid) = process_working_in(dir) {
        return Ok(pid);
    }
    bail!(
        "--pgdata {}: the server is not running (postmaster.pid names PID {pid}, and no \
         process works in that directory)",
        dir.display()
    )
}

/// The topmost live postgres process whose working directory is `dir` (compared by device
/// and inode, which hold across mount namespaces where paths do not).
fn process_working_in(dir: &Path) -> Option<u32> {
    let want = same_file_key(dir)?;
    let working: Vec<u32> = procs::all_pids()
        .into_iter()
        .filter(|&pid| same_file_key(Path::new(&format!("/proc/{pid}/cwd"))) == Some(want))
        .filter(|&pid| procs::alive(pid))
        // Not a shell that happens to be there.
        .filter(|&pid| procs::comm_of(pid).is_some_and(|c| c == "postgres" || c == "postmaster"))
        .collect();
    working
        .iter()
        .copied()
        .find(|&pid| procs::parent_of(pid).is_none_or(|parent| !working.contains(&parent)))
}

/// A file's (device, inode), following links (/proc/PID/cwd leads to the directory itself).
fn same_file_key(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Whether server process `pid` is ready for connections: a PostgreSQL postmaster says so on
/// the status line of its data directory's `postmaster.pid` (its working directory), written
/// `starting` and then `ready` (or `standby`, a standby without hot standby) once its shared
/// memory is set up and its sockets listen; only a file naming `pid` itself counts (a killed
/// server's stays behind, saying `ready`, until the new one rewrites it). A process working
/// outside a data directory (not PostgreSQL) is ready at once; one whose file cannot be read
/// is not (the caller's wait has a limit).
pub fn ready(pid: u32) -> bool {
    let cwd = PathBuf::from(format!("/proc/{pid}/cwd"));
    match std::fs::read_to_string(cwd.join("postmaster.pid")) {
        Ok(text) => {
            lock_file_pid(&text).is_some_and(|p| Some(p) == procs::pid_in_own_namespace(pid))
                && matches!(lock_file_status(&text), Some("ready" | "standby"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => !cwd.join("PG_VERSION").exists(),
        Err(_) => false,
    }
}

/// The status word of a `postmaster.pid` (its eighth line, PostgreSQL 10 and later):
/// `starting`, `ready`, `stopping`; None in a file without it.
pub fn lock_file_status(text: &str) -> Option<&str> {
    text.lines().nth(7).map(str::trim).filter(|s| !s.is_empty())
}

/// The pid on the first line of a PostgreSQL lock file (`postmaster.pid`, `.s.PGSQL.N.lock`).
pub fn lock_file_pid(text: &str) -> Option<u32> {
    text.lines().next()?.trim().parse().ok().filter(|&p| p > 0)
}

/// True when `pid` is alive with `dir` as its working directory (a postmaster's is its data
/// directory).
fn runs_in(pid: u32, dir: &Path) -> bool {
    let cwd = same_file_key(Path::new(&format!("/proc/{pid}/cwd")));
    procs::alive(pid) && cwd.is_some() && cwd == same_file_key(dir)
}

/// The postmaster serving a PostgreSQL Unix socket of `port` in this network namespace: the
/// socket's lock file (`.s.PGSQL.PORT.lock` beside it) names it.
fn postmaster_of_unix_port(port: u16) -> Option<u32> {
    let name = format!(".s.PGSQL.{port}");
    procfs::net::unix()
        .ok()?
        .into_iter()
        .filter_map(|e| e.path)
        .filter(|p| p.file_name().is_some_and(|n| n == name.as_str()))
        .find_map(|p| {
            let lock = std::fs::read_to_string(format!("{}.lock", p.display())).ok()?;
            lock_file_pid(&lock).filter(|&pid| procs::alive(pid))
        })
}

/// The process listening on TCP `port` in this network namespace. Forked children share the
/// listening socket (a Redis background save): the one whose parent does not hold it.
fn tcp_listener(port: u16) -> Option<u32> {
    let inodes: Vec<u64> = [procfs::net::tcp(), procfs::net::tcp6()]
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.state == procfs::net::TcpState::Listen && e.local_address.port() == port)
        .map(|e| e.inode)
        .collect();
    if inodes.is_empty() {
        return None;
    }
    let holders: Vec<u32> = procs::all_pids()
        .into_iter()
        .filter(|&pid| {
            procs::socket_fds(pid)
                .iter()
                .any(|(_, inode)| inodes.contains(inode))
        })
        .collect();
    holders
        .iter()
        .copied()
        .find(|&pid| procs::parent_of(pid).is_none_or(|parent| !holders.contains(&parent)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_files_eighth_line_is_the_status() {
        // As PostgreSQL 15 writes it: the status padded to eight characters.
        let file = |status: &str| {
            format!(
                "4242\n/var/lib/pg\n1700000000\n5432\n/run/postgresql\n*\n  5432001    32769\n{status}\n"
            )
        };
        assert_eq!(lock_file_status(&file("ready   ")), Some("ready"));
        assert_eq!(lock_file_status(&file("starting")), Some("starting"));
        // Written before the status line is (or by PostgreSQL 9.6 and older).
        assert_eq!(
            lock_file_status("4242\n/var/lib/pg\n1700000000\n5432\n"),
            None
        );
        assert_eq!(lock_file_status(&file("        ")), None);
    }

    #[test]
    fn lock_files_first_line_is_the_pid() {
        assert_eq!(
            lock_file_pid("4242\n/var/lib/pg\n1700000000\n5432\n"),
            Some(4242)
        );
        assert_eq!(lock_file_pid(" 17 \n"), Some(17));
        assert_eq!(lock_file_pid(""), None);
        assert_eq!(lock_file_pid("0\n"), None);
        assert_eq!(lock_file_pid("-3\n"), None);
        assert_eq!(lock_file_pid("garbage\n"), None);
    }

    #[test]
    fn a_directory_that_is_no_cluster_or_not_running_is_said_so() {
        let dir = tempfile::tempdir().unwrap();
        let e = Server::DataDir(dir.path().into())
            .main_process()
            .unwrap_err();
        assert!(
            e.to_string().contains("not a PostgreSQL data directory"),
            "{e}"
        );
        std::fs::write(dir.path().join("PG_VERSION"), "15\n").unwrap();
        let e = Server::DataDir(dir.path().into())
            .main_process()
            .unwrap_err();
        assert!(
            e.to_string().contains("not running (no postmaster.pid)"),
            "{e}"
        );
        // A stale file naming a process that does not work there (ourselves).
        std::fs::write(
            dir.path().join("postmaster.pid"),
            format!("{}\n", std::process::id()),
        )
        .unwrap();
        let e = Server::DataDir(dir.path().into())
            .main_process()
            .unwrap_err();
        assert!(
            e.to_string().contains("no process works in that directory"),
            "{e}"
        );
    }

    #[test]
    fn a_tcp_listener_of_ours_is_found_by_its_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(
            Server::Port(port).main_process().unwrap(),
            std::process::id()
        );
        drop(l);
        let e = Server::Port(port).main_process().unwrap_err();
        assert!(e.to_string().contains("no process listens on port"), "{e}");
    }
}
