//! The server a scenario loads: a PostgreSQL cluster under pgbench, or a redis-server under
//! redis-benchmark; the load's rate (transactions or requests per second) is what the
//! variants are compared by.

use std::time::Instant;

use anyhow::{Context as _, anyhow, bail};
use pgbpf_testkit::{postgres::Postgres, redis::Redis};

use crate::Args;

pub enum Server {
    Postgres(Postgres),
    Redis(Redis),
}

impl Server {
    pub fn pg(&self) -> anyhow::Result<&Postgres> {
        match self {
            Server::Postgres(pg) => Ok(pg),
            Server::Redis(_) => bail!("this scenario has no PostgreSQL"),
        }
    }

    pub fn redis(&self) -> anyhow::Result<&Redis> {
        match self {
            Server::Redis(r) => Ok(r),
            Server::Postgres(_) => bail!("this scenario has no Redis"),
        }
    }

    /// Runs the scenario's load (`workload`: pgbench's script option, or redis-benchmark's
    /// arguments) for about `seconds`: transactions or requests per second.
    /// CPU seconds the server has used so far: a postmaster with its backends that ended, or
    /// redis-server.
    pub fn cpu_seconds(&self) -> Option<f64> {
        match self {
            Server::Postgres(pg) => {
                crate::measure::stat_cpu_seconds(pg.postmaster_pid().ok()?, true)
            }
            Server::Redis(r) => crate::measure::stat_cpu_seconds(r.pid(), false),
        }
    }

    pub fn load(&self, args: &Args, workload: &str, seconds: u64) -> anyhow::Result<f64> {
        match self {
            Server::Postgres(pg) => pgbench_tps(pg, args, workload, seconds),
            Server::Redis(r) => redis_rps(r, args, workload, seconds),
        }
    }
}

fn pgbench_tps(pg: &Postgres, args: &Args, workload: &str, seconds: u64) -> anyhow::Result<f64> {
    let c = args.clients.to_string();
    let t = seconds.to_string();
    let mut load: Vec<&str> = workload.split_whitespace().collect();
    load.extend(["-n", "-c", &c, "-j", &c, "-T", &t]);
    let out = if pg.tls {
        // Over TCP with TLS required: what the TLS scenario measures.
        pgbpf_testkit::run(
            std::process::Command::new("pgbench")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &pg.port.to_string(),
                    "-U",
                    "postgres",
                ])
                .args(load)
                .arg("postgres")
                .env("PGSSLMODE", "require"),
        )?
    } else {
        pg.pgbench(&load)?
    };
    out.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no tps line in pgbench output:\n{out}"))
}

/// redis-benchmark runs a request count, not a time: the count is sized for `seconds` at
/// about 40 000 requests a second per pipelined request (this VM's untraced rate), and the
/// rate is every test's requests over the wall time of the whole run.
fn redis_rps(r: &Redis, args: &Args, workload: &str, seconds: u64) -> anyhow::Result<f64> {
    let words: Vec<&str> = workload.split_whitespace().collect();
    let pipeline: u64 = words
        .iter()
        .position(|w| *w == "-P")
        .and_then(|i| words.get(i + 1)?.parse().ok())
        .unwrap_or(1);
    let tests = words
        .iter()
        .position(|w| *w == "-t")
        .and_then(|i| words.get(i + 1))
        .map_or(1, |t| t.split(',').count()) as u64;
    let requests = (seconds * 40_000 * pipeline.min(10) / tests).max(1000);
    let n = requests.to_string();
    let c = args.clients.to_string();
    let mut all = words.clone();
    all.extend(["-n", &n, "-c", &c, "-q"]);
    let started = Instant::now();
    if r.tls_port.is_some() {
        // A server with a TLS port is there for the TLS scenario: load that port.
        r.benchmark_tls(&all).context("redis-benchmark --tls")?;
    } else {
        r.benchmark(&all).context("redis-benchmark")?;
    }
    Ok((requests * tests) as f64 / started.elapsed().as_secs_f64())
}
