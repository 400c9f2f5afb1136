//! cpu_wait against a real PostgreSQL on a machine made busy: backends running CPU-heavy
//! statements beside spinning neighbours wait on run queues, are preempted and moved between
//! CPUs; the kernel keeps its own count of each per process (/proc/PID/schedstat's run delay,
//! /proc/PID/sched's nr_migrations, /proc/PID/status' nonvoluntary_ctxt_switches), which the
//! tool's per-backend rows must match. Then the seed's experiment: pgbench alone, and beside
//! CPU-heavy statements of other sessions: the run-queue histogram moves right.

// Helpers of a test binary: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeMap,
    process::Command,
    time::{Duration, Instant},
};

use pgbpf_testkit::{
    exclusive,
    postgres::{PgOptions, Postgres},
    require_root, schema, stacks,
    tool::Traced,
};

const BIN: &str = env!("CARGO_BIN_EXE_cpu_wait");

/// A statement that keeps a backend on the CPU for about 0.2 s.
const HEAVY: &str = "select sum(i) from generate_series(1, 2000000) i";
/// One that would keep it there for half a minute (cancelled sooner).
const LONG_HEAVY: &str = "select sum(i) from generate_series(1, 300000000) i";

/// What the kernel counted for one process so far.
#[derive(Debug, Clone, Copy)]
struct KernelCounts {
    run_delay_ns: u64,
    migrations: u64,
    involuntary: u64,
}

fn field_after(text: &str, name: &str, sep: char) -> u64 {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(sep)?;
            (k.trim() == name).then(|| v.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

fn kernel_counts(pid: u32) -> KernelCounts {
    let schedstat = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap();
    let sched = std::fs::read_to_string(format!("/proc/{pid}/sched")).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    KernelCounts {
        // Time on the CPU, time waiting on a run queue, time slices.
        run_delay_ns: schedstat
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap(),
        migrations: field_after(&sched, "se.nr_migrations", ':'),
        involuntary: field_after(&status, "nonvoluntary_ctxt_switches", ':'),
    }
}

/// Busy shell loops on `cpus`, killed when dropped: a CPU-heavy neighbour.
struct Spinners(Vec<std::process::Child>);

impl Spinners {
    fn start(n: usize, cpus: &str) -> Spinners {
        Spinners(
            (0..n)
                .map(|_| {
                    Command::new("taskset")
                        .args(["-c", cpus, "sh", "-c", "while :; do :; done"])
                        .spawn()
                        .unwrap()
                })
                .collect(),
        )
    }
}

impl Drop for Spinners {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Pins the postmaster (and so the backends it forks from now on) to `cpus`.
fn pin_server(pg: &Postgres, cpus: &str) {
    let pm = pg.postmaster_pid().unwrap().to_string();
    pgbpf_testkit::run(Command::new("taskset").args(["-p", "-c", cpus, &pm])).unwrap();
}

fn within(ours: u64, theirs: u64, share: f64, slack: u64) -> bool {
    ours.abs_diff(theirs) as f64 <= theirs as f64 * share + slack as f64
}

#[test]
fn busy_backends_waits_match_the_kernels_own_accounting() {
    require_root();
    if !std::path::Path::new("/proc/self/sched").exists() {
        pgbpf_testkit::skip(
            "busy_backends_waits_match_the_kernels_own_accounting",
            "no /proc/PID/sched (a kernel without CONFIG_SCHED_DEBUG)",
        );
        return;
    }
    let _lock = exclusive();
    let pg = Postgres::start().unwrap();
    // Three backends and two busy loops on two CPUs, however many the machine has.
    pin_server(&pg, "0,1");
    let mut sessions: Vec<_> = (0..3).map(|_| pg.session().unwrap()).collect();
    let pids: Vec<u32> = sessions.iter().map(|s| s.backend_pid).collect();
    let pm = pg.postmaster_pid().unwrap().to_string();
    let tool = Traced::start(BIN, &["-p", &pm, "--json"]).unwrap();
    let with_stacks = Traced::start(BIN, &["-p", &pm, "--json", "--stack"]).unwrap();
    let before: Vec<_> = pids.iter().map(|&p| kernel_counts(p)).collect();
    let spinners = Spinners::start(2, "0,1");
    std::thread::scope(|s| {
        let running: Vec<_> = sessions
            .iter_mut()
            .map(|session| {
                s.spawn(|| {
                    let began = Instant::now();
                    while began.elapsed() < Duration::from_secs(4) {
                        session.run(HEAVY).unwrap();
                    }
                })
            })
            .collect();
        for r in running {
            r.join().unwrap();
        }
    });
    drop(spinners);
    let after: Vec<_> = pids.iter().map(|&p| kernel_counts(p)).collect();
    let out = tool.stop().unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    let records = out.json();
    let kinds = schema::validate("cpu_wait", &records);
    for kind in ["backend", "statement", "reason", "cgroup", "summary"] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "no {kind} record: {kinds:?}"
        );
    }
    let backends: BTreeMap<u64, &serde_json::Value> = records
        .iter()
        .filter(|r| r["type"] == "backend")
        .map(|r| (r["pid"].as_u64().unwrap(), r))
        .collect();
    for ((pid, b), a) in pids.iter().zip(&before).zip(&after) {
        let row = backends
            .get(&u64::from(*pid))
            .unwrap_or_else(|| panic!("no row for backend {pid}: {backends:?}"));
        assert_eq!(row["backend_type"], "client backend");
        let (runq, migrations, involuntary) = (
            row["runq_ns"].as_u64().unwrap(),
            row["migrations"].as_u64().unwrap(),
            row["involuntary"].as_u64().unwrap(),
        );
        let kernel = (
            a.run_delay_ns - b.run_delay_ns,
            a.migrations - b.migrations,
            a.involuntary - b.involuntary,
        );
        eprintln!(
            "backend {pid}: ours runq {runq} ns, {migrations} migrations, {involuntary} \
             involuntary; kernel {kernel:?}"
        );
        // Busy enough to mean something: at least 100 ms on run queues.
        assert!(
            kernel.0 > 100_000_000,
            "backend {pid} hardly waited: {kernel:?}"
        );
        assert!(
            within(runq, kernel.0, 0.10, 0),
            "backend {pid}: run-queue {runq} ns vs schedstat {} ns",
            kernel.0
        );
        assert!(
            within(migrations, kernel.1, 0.10, 3),
            "backend {pid}: {migrations} migrations vs nr_migrations {}",
            kernel.1
        );
        assert!(
            within(involuntary, kernel.2, 0.10, 3),
            "backend {pid}: {involuntary} involuntary vs nonvoluntary_ctxt_switches {}",
            kernel.2
        );
    }
    // The heavy statement is where the waiting was, mostly after preemption.
    let top = records
        .iter()
        .filter(|r| r["type"] == "statement")
        .max_by_key(|r| r["runq_ns"].as_u64().unwrap())
        .unwrap();
    assert!(
        top["query"].as_str().unwrap().contains("generate_series"),
        "{top}"
    );
    let top_reason = records
        .iter()
        .filter(|r| r["type"] == "reason")
        .max_by_key(|r| r["runq_ns"].as_u64().unwrap())
        .unwrap();
    assert_eq!(top_reason["reason"], "preempted", "{top_reason}");
    // Idle sessions sleep waiting for their client.
    assert!(
        records
            .iter()
            .any(|r| r["type"] == "reason" && r["reason"] == "Client"),
        "no Client sleeps"
    );
    // Nothing lost, no task left unremembered.
    let summary = records.iter().find(|r| r["type"] == "summary").unwrap();
    assert_eq!(summary["lost"]["ringbuf_full"], 0);
    assert_eq!(summary["lost"]["waiting_full"], 0);
    check_stacks(&with_stacks.stop().unwrap().json());
}

/// `--stack`: every stretch off the CPU under its stacks; an idle session's wait for its
/// client is PostgreSQL reading the socket, asleep in epoll in the kernel.
fn check_stacks(records: &[serde_json::Value]) {
    schema::validate("cpu_wait", records);
    // A new process's first wait for a CPU has no stack (it never ran).
    stacks::assert_stacks_cover(records, "reason", "reason", "times", &["new process"]);
    // The heaviest with both stacks (a stack the kernel did not keep leaves a row without it).
    let client = records
        .iter()
        .filter(|r| {
            r["type"] == "stack"
                && r["what"] == "Client"
                && !stacks::frames(r, "user_stack").is_empty()
        })
        .max_by_key(|r| r["total_ns"].as_u64().unwrap())
        .expect("a Client stack with its user stack");
    stacks::assert_in_order(
        &stacks::frames(client, "user_stack"),
        &["secure_read", "PostgresMain"],
    );
    let kernel = stacks::frames(client, "kernel_stack");
    assert!(
        kernel[0].starts_with("__schedule+") && kernel.iter().any(|f| f.contains("epoll_wait")),
        "{kernel:#?}"
    );
}

/// Run-queue waits of pgbench's backends, as counts per log2 slot of microseconds, while
/// `heavy` other sessions run CPU-heavy statements (analytics beside the OLTP load, as the
/// seed's pg_dump beside pgbench).
fn pgbench_waits(pg: &Postgres, heavy: usize) -> Waits {
    let mut sessions: Vec<_> = (0..heavy).map(|_| pg.session().unwrap()).collect();
    let heavy_pids: Vec<u64> = sessions.iter().map(|s| u64::from(s.backend_pid)).collect();
    let pm = pg.postmaster_pid().unwrap().to_string();
    let tool = Traced::start(BIN, &["-p", &pm, "--json"]).unwrap();
    std::thread::scope(|s| {
        for session in &mut sessions {
            // Runs until cancelled below (a statement of half a minute alone).
            s.spawn(|| session.run(LONG_HEAVY));
        }
        // pgbench on the one CPU too.
        let out = pgbpf_testkit::run(
            Command::new("taskset")
                .args(["-c", "0", "pgbench"])
                .args(pg.conn_args())
                .args(["-S", "-n", "-c", "2", "-j", "1", "-T", "4", "postgres"]),
        )
        .unwrap();
        let tps = out.lines().find(|l| l.starts_with("tps")).unwrap_or("");
        eprintln!("{heavy} heavy: {tps}");
        let cancelled = pg
            .psql(&format!(
                "select count(pg_cancel_backend(pid)) from pg_stat_activity \
                 where query like '{LONG_HEAVY}%' and pid <> pg_backend_pid()"
            ))
            .unwrap();
        assert_eq!(
            cancelled.trim(),
            heavy.to_string(),
            "heavy statements running"
        );
    });
    let out = tool.stop().unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    let mut waits = Waits::default();
    for r in out.json().iter().filter(|r| {
        r["type"] == "backend"
            && r["backend_type"] == "client backend"
            && !heavy_pids.contains(&r["pid"].as_u64().unwrap())
    }) {
        waits.count += r["runq_waits"].as_u64().unwrap();
        waits.total_ns += r["runq_ns"].as_u64().unwrap();
        let h: Vec<u64> = serde_json::from_value(r["hist_log2_us"].clone()).unwrap();
        // Slot 10 starts at 1024 us.
        waits.over_1ms += h.iter().skip(10).sum::<u64>();
    }
    waits
}

#[derive(Debug, Default)]
struct Waits {
    count: u64,
    total_ns: u64,
    over_1ms: u64,
}

impl Waits {
    fn mean_ns(&self) -> f64 {
        self.total_ns as f64 / self.count.max(1) as f64
    }

    fn share_over_1ms(&self) -> f64 {
        self.over_1ms as f64 / self.count.max(1) as f64
    }
}

#[test]
fn cpu_heavy_statements_beside_pgbench_move_its_run_queue_latency_right() {
    require_root();
    let _lock = exclusive();
    let pg = Postgres::start_with_pgbench(&PgOptions::default(), 1).unwrap();
    // Everything on one CPU (backends inherit the postmaster's affinity): the contention is
    // then the same however busy the machine's other CPUs are (a VM's are noisy).
    pin_server(&pg, "0");
    let alone = pgbench_waits(&pg, 0);
    let crowded = pgbench_waits(&pg, 3);
    eprintln!(
        "alone: {alone:?}, mean {:.0} ns\ncrowded: {crowded:?}, mean {:.0} ns",
        alone.mean_ns(),
        crowded.mean_ns()
    );
    assert!(alone.count > 1000 && crowded.count > 1000, "too few waits");
    // Measured here: the mean 6 to 7 times higher, waits over 1 ms from a few in 100 000 to
    // one in 40.
    assert!(
        crowded.mean_ns() > 3.0 * alone.mean_ns(),
        "mean run-queue latency {:.0} ns beside the heavy statements vs {:.0} ns alone",
        crowded.mean_ns(),
        alone.mean_ns()
    );
    assert!(
        crowded.share_over_1ms() > 10.0 * alone.share_over_1ms(),
        "waits over 1 ms: {:.4} of them beside the heavy statements vs {:.4} alone",
        crowded.share_over_1ms(),
        alone.share_over_1ms()
    );
}
