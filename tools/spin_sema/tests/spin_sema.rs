//! spin_sema against a real PostgreSQL: eight sessions updating the same row at once contend
//! for its page's buffer lock, the WAL insertion locks and the transaction tables, so
//! backends sleep on their semaphores; each of those sleeps is a futex(2) wait. ftrace
//! records the same processes' futex waits on its own (a tracefs instance with a filter),
//! which the tool's futex rows must match; the semaphore sleeps carry the UPDATE as statement.

// Helpers of a test binary: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use pgbpf_testkit::{
    exclusive,
    postgres::{PgOptions, Postgres},
    require_root, schema, stacks,
    tool::Traced,
};

const BIN: &str = env!("CARGO_BIN_EXE_spin_sema");
const UPDATE: &str = "update pgbench_branches set bbalance = bbalance + 1 where bid = 1";

/// An ftrace filter for the futex commands that wait (WAIT, LOCK_PI, WAIT_BITSET,
/// WAIT_REQUEUE_PI, LOCK_PI2), with and without the PRIVATE and CLOCK_REALTIME flags, of
/// the processes `pids`.
fn futex_wait_filter(pids: &[String]) -> String {
    let mut ops = vec![];
    for cmd in [0, 6, 9, 11, 13] {
        for flags in [0, 128, 256, 384] {
            ops.push(format!("op == {}", cmd | flags));
        }
    }
    let pids: Vec<String> = pids.iter().map(|p| format!("common_pid == {p}")).collect();
    format!("({}) && ({})", pids.join(" || "), ops.join(" || "))
}

/// A tracefs instance of its own (its own buffer, removed when dropped) recording the futex
/// waits of some processes: ftrace's count, independent of BPF. (perf stat is not: it counts
/// nothing on a syscall tracepoint while a BPF program is attached to it.)
struct FutexRecorder(std::path::PathBuf);

impl FutexRecorder {
    fn new(pids: &[String]) -> FutexRecorder {
        let dir = std::path::PathBuf::from("/sys/kernel/tracing/instances/pgbpf_spin_sema_test");
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).unwrap();
        let r = FutexRecorder(dir);
        std::fs::write(r.0.join("buffer_size_kb"), "16384").unwrap();
        std::fs::write(r.event("filter"), futex_wait_filter(pids)).unwrap();
        r
    }

    fn event(&self, file: &str) -> std::path::PathBuf {
        self.0.join("events/syscalls/sys_enter_futex").join(file)
    }

    fn enable(&self, on: bool) {
        std::fs::write(self.event("enable"), if on { "1" } else { "0" }).unwrap();
    }

    /// Events recorded, and whether the buffer lost any (its header says
    /// "# entries-in-buffer/entries-written: 7291/7291   #P:2").
    fn count(&self) -> (u64, bool) {
        let text = std::fs::read_to_string(self.0.join("trace")).unwrap();
        let header = text
            .lines()
            .find_map(|l| l.strip_prefix("# entries-in-buffer/entries-written:"))
            .unwrap_or_else(|| panic!("no entries line in the trace header:\n{text}"));
        let (kept, written) = header
            .split_whitespace()
            .next()
            .and_then(|f| f.split_once('/'))
            .unwrap();
        let n = text.lines().filter(|l| !l.starts_with('#')).count() as u64;
        (n, kept != written)
    }
}

impl Drop for FutexRecorder {
    fn drop(&mut self) {
        let _ = std::fs::write(self.event("enable"), "0");
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn semaphore_sleeps_and_futex_waits_of_contending_backends_match_ftrace() {
    require_root();
    let _lock = exclusive();
    let pg = Postgres::start_with_pgbench(&PgOptions::default(), 1).unwrap();
    let mut sessions: Vec<_> = (0..8).map(|_| pg.session().unwrap()).collect();
    let pids: Vec<String> = sessions.iter().map(|s| s.backend_pid.to_string()).collect();
    let mut args = vec!["--json".to_string(), "--stack".to_string()];
    for p in &pids {
        args.extend(["-p".to_string(), p.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let tool = Traced::start(BIN, &args).unwrap();
    let ftrace = FutexRecorder::new(&pids);
    ftrace.enable(true);
    std::thread::scope(|s| {
        for session in &mut sessions {
            s.spawn(|| {
                let began = Instant::now();
                while began.elapsed() < Duration::from_secs(4) {
                    session.run(UPDATE).unwrap();
                }
            });
        }
    });
    ftrace.enable(false);
    let (ftrace_waits, ftrace_lost) = ftrace.count();
    assert!(!ftrace_lost, "the ftrace buffer overflowed");
    let out = tool.stop().unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    let records = out.json();
    schema::validate("spin_sema", &records);
    let sum = |kind: &str| -> u64 {
        records
            .iter()
            .filter(|r| r["type"] == "wait" && r["kind"] == kind)
            .map(|r| r["waits"].as_u64().unwrap())
            .sum()
    };
    let (futex, semaphore) = (sum("futex"), sum("semaphore"));
    eprintln!("ours: {futex} futex waits, {semaphore} semaphore sleeps; ftrace: {ftrace_waits}");
    assert!(semaphore > 50, "{semaphore} semaphore sleeps");
    // Every futex wait ftrace saw began and ended while the tool was attached (it was
    // attached before ftrace was enabled and stopped after it was disabled); the sessions
    // were idle outside ftrace's window.
    assert!(
        futex >= ftrace_waits && futex <= ftrace_waits + ftrace_waits / 20 + 5,
        "{futex} futex waits, ftrace recorded {ftrace_waits}"
    );
    // The sleeps happen in the UPDATE.
    let in_update: u64 = records
        .iter()
        .filter(|r| {
            r["type"] == "wait"
                && r["kind"] == "semaphore"
                && r["query"]
                    .as_str()
                    .unwrap()
                    .starts_with("update pgbench_branches")
        })
        .map(|r| r["waits"].as_u64().unwrap())
        .sum();
    assert!(
        in_update * 2 > semaphore,
        "{in_update} of {semaphore} semaphore sleeps in the UPDATE"
    );
    // A contended spinlock, when the run met one, is named by the function, source file and
    // line that took it ("XLogInsertRecord xlog.c:1018").
    for r in records
        .iter()
        .filter(|r| r["type"] == "wait" && r["kind"] == "spinlock")
    {
        let site = r["site"].as_str().unwrap();
        let (func, place) = site.split_once(' ').unwrap_or_else(|| panic!("{site}"));
        let (file, line) = place.rsplit_once(':').unwrap_or_else(|| panic!("{site}"));
        assert!(
            !func.is_empty()
                && (file.ends_with(".c") || file.ends_with(".h"))
                && line.parse::<u32>().is_ok_and(|l| l > 0),
            "spinlock site {site}"
        );
    }
    let summary = records.iter().find(|r| r["type"] == "summary").unwrap();
    assert_eq!(summary["lost"]["ringbuf_full"], 0);
    // Where they slept: every wait under its stack; the row lock waits of the update among
    // the semaphore sleeps.
    stacks::assert_stacks_cover(&records, "kind", "kind", "waits", &[]);
    let heaviest = stacks::frames(stacks::heaviest(&records, "semaphore"), "user_stack");
    stacks::assert_in_order(&heaviest, &["PGSemaphoreLock", "PostgresMain"]);
    assert!(
        records.iter().any(|r| r["type"] == "stack"
            && r["what"] == "semaphore"
            && stacks::frames(r, "user_stack")
                .iter()
                .any(|f| f.starts_with("XactLockTableWait+"))),
        "no semaphore sleep under XactLockTableWait"
    );
}
