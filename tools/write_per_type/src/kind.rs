//! Which kind of PostgreSQL file a path is: WAL, relation data, temp file, SLRU, server log,
//! other files, or not a file at all (a pipe or socket). Paths come from openat (relative to
//! the data directory, as PostgreSQL opens its files) or from /proc/PID/fd links (absolute),
//! so the names are matched by their components, nearest the file first.

use schemars::JsonSchema;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// pg_wal's segments.
    Wal,
    /// Tables' and indexes' files under base/, global/ and pg_tblspc/ (all forks).
    Relation,
    /// Sorts', hashes' and tuplestores' spill files (pgsql_tmp).
    Temp,
    /// The SLRU caches: pg_xact, pg_multixact, pg_subtrans, pg_commit_ts, pg_notify,
    /// pg_serial.
    Slru,
    /// The server log: stderr or the logging collector's files.
    Log,
    /// Any other file (pg_control, pg_stat, pg_logical, relation maps, ...).
    Other,
    /// A pipe, socket or other descriptor without a file (the logger's pipe).
    NotFile,
    /// A descriptor whose path could not be learned (closed before it was looked up).
    Unknown,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Wal => "WAL",
            Kind::Relation => "relation",
            Kind::Temp => "temp",
            Kind::Slru => "SLRU",
            Kind::Log => "log",
            Kind::Other => "other",
            Kind::NotFile => "not a file",
            Kind::Unknown => "unknown",
        }
    }
}

const SLRU_DIRS: [&str; 7] = [
    "pg_xact",
    "pg_clog",
    "pg_multixact",
    "pg_subtrans",
    "pg_commit_ts",
    "pg_notify",
    "pg_serial",
];

fn numeric_start(name: &str) -> bool {
    name.as_bytes().first().is_some_and(u8::is_ascii_digit)
}

/// A WAL segment's name (24 hex digits), also when pg_wal is a link to another volume and
/// the path is the link's target.
fn wal_segment(name: &str) -> bool {
    let base = name.split('.').next().unwrap_or("");
    base.len() == 24 && base.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The kind of the file at `path`; `fd` is the descriptor it was written through (1 and 2
/// are the server log when they are files).
pub fn classify(path: &str, fd: u32) -> Kind {
    if path.is_empty() {
        return Kind::Unknown;
    }
    if ["socket:", "pipe:", "anon_inode:"]
        .iter()
        .any(|p| path.starts_with(p))
    {
        return Kind::NotFile;
    }
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.iter().any(|p| p.starts_with("pgsql_tmp")) {
        return Kind::Temp;
    }
    let file = parts.last().copied().unwrap_or("");
    // The directory nearest the file decides (a data directory may itself be under a
    // directory named like one of PostgreSQL's).
    for (i, dir) in parts.iter().enumerate().rev().skip(1) {
        let below = &parts[i + 1..];
        match *dir {
            "pg_wal" | "pg_xlog" => return Kind::Wal,
            d if SLRU_DIRS.contains(&d) => return Kind::Slru,
            // base/DB/FILENODE[.N|_fsm|_vm|_init]
            "base" if below.len() == 2 && numeric_start(below[0]) && numeric_start(file) => {
                return Kind::Relation;
            }
            "global" if below.len() == 1 && numeric_start(file) => return Kind::Relation,
            // pg_tblspc/OID/PG_15_.../DB/FILENODE, or the link's target: .../PG_15_.../DB/FILENODE
            "pg_tblspc" if below.len() == 4 && numeric_start(file) => return Kind::Relation,
            d if d.starts_with("PG_") && below.len() == 2 && numeric_start(below[0]) => {
                if numeric_start(file) {
                    return Kind::Relation;
                }
            }
            "log" | "pg_log" => return Kind::Log,
            _ => {}
        }
    }
    if wal_segment(file) {
        return Kind::Wal;
    }
    if fd == 1 || fd == 2 || parts.first() == Some(&"var") && parts.get(1) == Some(&"log") {
        return Kind::Log;
    }
    Kind::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_paths_relative_and_absolute() {
        let cases = [
            ("pg_wal/000000010000000000000001", Kind::Wal),
            ("pg_wal/xlogtemp.4242", Kind::Wal),
            ("base/5/16384", Kind::Relation),
            ("base/5/16384.3", Kind::Relation),
            ("base/5/16384_fsm", Kind::Relation),
            ("global/1262", Kind::Relation),
            ("global/pg_control", Kind::Other),
            ("global/pg_filenode.map", Kind::Other),
            ("base/5/pg_filenode.map", Kind::Other),
            ("pg_tblspc/16385/PG_15_202209061/5/16390", Kind::Relation),
            ("base/pgsql_tmp/pgsql_tmp4242.0", Kind::Temp),
            (
                "pg_tblspc/16385/PG_15_202209061/pgsql_tmp/pgsql_tmp4242.1",
                Kind::Temp,
            ),
            (
                "base/pgsql_tmp/pgsql_tmp4242.0.fileset/i0of2.p0.0",
                Kind::Temp,
            ),
            ("pg_xact/0000", Kind::Slru),
            ("pg_multixact/offsets/0000", Kind::Slru),
            ("pg_subtrans/0000", Kind::Slru),
            ("log/postgresql-2026-12-04_120000.log", Kind::Log),
            ("pg_stat/pgstat.stat", Kind::Other),
            ("pg_logical/replorigin_checkpoint.tmp", Kind::Other),
            ("/tmp/pgbpf-pg-x/data/base/5/16384", Kind::Relation),
            (
                "/tmp/pgbpf-pg-x/data/pg_wal/000000010000000000000002",
                Kind::Wal,
            ),
            ("/srv/base/data/global/pg_control", Kind::Other),
            ("/srv/pg_wal/data/base/1/1259", Kind::Relation),
            ("/var/log/postgresql/postgresql-15-main.log", Kind::Log),
            // pg_wal and a tablespace on other volumes: /proc/PID/fd gives the targets.
            ("/waldisk/000000010000000000000003", Kind::Wal),
            ("/mnt/ts/PG_15_202209061/16384/16390", Kind::Relation),
            (
                "/mnt/ts/PG_15_202209061/pgsql_tmp/pgsql_tmp77.0",
                Kind::Temp,
            ),
            ("socket:[123456]", Kind::NotFile),
            ("pipe:[98765]", Kind::NotFile),
            ("", Kind::Unknown),
        ];
        for (path, kind) in cases {
            assert_eq!(classify(path, 9), kind, "{path}");
        }
        assert_eq!(classify("/tmp/pgbpf-pg-x/server.log", 2), Kind::Log);
        assert_eq!(classify("/tmp/pgbpf-pg-x/server.log", 9), Kind::Other);
        assert_eq!(classify("/tmp/d/base/5/16384 (deleted)", 9), Kind::Relation);
    }
}
