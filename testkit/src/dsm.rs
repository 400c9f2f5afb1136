//! A parallel hash join whose DSM segment outgrows a container's 64 MB /dev/shm: the classic
//! `could not resize shared memory segment ... No space left on device`, made on purpose,
//! and the server log's account of it.

use crate::{
    container::ContainerSpec,
    postgres::{PgOptions, Postgres},
};

/// A PostgreSQL in a podman container (podman's default 64 MB /dev/shm) with
/// [`parallel_hash_settings`] and pgbench's tables at scale 20: [`BIG_JOIN`] fails there.
pub fn server_short_of_shm() -> anyhow::Result<Postgres> {
    let pg = Postgres::start_with(&PgOptions {
        settings: parallel_hash_settings(),
        container: Some(ContainerSpec::default()),
        ..Default::default()
    })?;
    pg.pgbench(&["-i", "-s", "20", "-q"])?;
    Ok(pg)
}

/// Server settings that make any join parallel and let its hash table grow past 64 MB (set
/// for the server, so the statement text is the join alone); the log line prefix is
/// "PID BACKEND_TYPE ".
pub fn parallel_hash_settings() -> Vec<(String, String)> {
    [
        ("work_mem", "1GB"),
        ("parallel_setup_cost", "0"),
        ("parallel_tuple_cost", "0"),
        ("min_parallel_table_scan_size", "0"),
        ("max_parallel_workers_per_gather", "2"),
        ("enable_mergejoin", "off"),
        ("enable_nestloop", "off"),
        ("log_line_prefix", "%p %b "),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The join (pgbench's accounts with themselves, scale 20) that fails in 64 MB.
pub const BIG_JOIN: &str =
    "select count(*) from pgbench_accounts a join pgbench_accounts b on a.aid = b.aid";

/// A resize failure as the server log tells it.
#[derive(Debug, PartialEq, Eq)]
pub struct ResizeError {
    pub pid: u32,
    pub backend_type: String,
    /// "/PostgreSQL.N"
    pub segment: String,
    pub bytes: u64,
}

/// Every "PID BACKEND ERROR:  could not resize shared memory segment "/PostgreSQL.N" to B
/// bytes: No space left on device" line of a log written with [`parallel_hash_settings`].
pub fn resize_errors(log: &str) -> Vec<ResizeError> {
    log.lines()
        .filter_map(|l| {
            let (head, msg) = l.split_once(" ERROR:  could not resize shared memory segment \"")?;
            let (pid, backend) = head.split_once(' ')?;
            let (segment, rest) = msg.split_once("\" to ")?;
            let bytes = rest.split_once(" bytes")?.0.parse().ok()?;
            Some(ResizeError {
                pid: pid.parse().ok()?,
                backend_type: backend.to_string(),
                segment: segment.to_string(),
                bytes,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resize_error_is_read_from_its_log_line() {
        let log = "12 client backend LOG:  statement: select 1\n\
                   4242 parallel worker ERROR:  could not resize shared memory segment \
                   \"/PostgreSQL.699663942\" to 50438144 bytes: No space left on device\n";
        assert_eq!(
            resize_errors(log),
            [ResizeError {
                pid: 4242,
                backend_type: "parallel worker".into(),
                segment: "/PostgreSQL.699663942".into(),
                bytes: 50438144,
            }]
        );
    }
}
