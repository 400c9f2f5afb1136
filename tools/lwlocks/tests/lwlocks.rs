//! lwlocks against a real PostgreSQL: pgbench -N at 8 clients with fsync, synchronous commits
//! and tiny WAL buffers makes backends sleep on WALWrite and WALInsert; the waits per tranche are
//! cross-checked with PostgreSQL's own view of them, pg_stat_activity's wait_event sampled at
//! 100 Hz while the load runs (a sample lands on a tranche in proportion to the time backends
//! sleep on it).

// Helpers of a test binary: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::{collections::BTreeMap, time::Duration};

use pgbpf_testkit::{
    exclusive,
    postgres::{PgOptions, Postgres},
    require_root, schema, stacks,
    tool::{Traced, run_tool},
};

const BIN: &str = env!("CARGO_BIN_EXE_lwlocks");

/// Shares of the whole that each key has.
fn shares(counts: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    let sum: f64 = counts.values().sum();
    counts
        .iter()
        .map(|(k, v)| (k.clone(), v / sum.max(1.0)))
        .collect()
}

fn busiest(counts: &BTreeMap<String, f64>) -> &str {
    counts
        .iter()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(k, _)| k.as_str())
        .unwrap()
}

#[test]
fn wal_waits_of_pgbench_rank_as_pg_stat_activity_samples_them() {
    require_root();
    let _lock = exclusive();
    // Commits flushed to the disk for real (the test clusters run without fsync otherwise).
    let settings = [
        ("fsync", "on"),
        ("wal_buffers", "64kB"),
        ("synchronous_commit", "on"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let pg = Postgres::start_with_pgbench(
        &PgOptions {
            settings,
            ..Default::default()
        },
        1,
    )
    .unwrap();
    let pm = pg.postmaster_pid().unwrap().to_string();
    let tool = Traced::start(BIN, &["-p", &pm, "--json"]).unwrap();
    // The same waits with their stacks, beside it.
    let with_stacks = Traced::start(BIN, &["-p", &pm, "--json", "--stack"]).unwrap();
    let mut session = pg.session().unwrap();
    let mut sampled: BTreeMap<String, f64> = BTreeMap::new();
    let mut samples = 0;
    let began = std::time::Instant::now();
    std::thread::scope(|s| {
        let bench = s.spawn(|| pg.pgbench(&["-N", "-n", "-c", "8", "-j", "2", "-T", "6"]));
        while !bench.is_finished() {
            let now = session
                .run(
                    "select string_agg(wait_event, ',') from pg_stat_activity \
                     where wait_event_type = 'LWLock' and backend_type = 'client backend'",
                )
                .unwrap();
            for tranche in now.trim().split(',').filter(|t| !t.is_empty()) {
                *sampled.entry(tranche.to_string()).or_default() += 1.0;
            }
            samples += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
        bench.join().unwrap().unwrap();
    });
    let ran = began.elapsed().as_secs_f64();
    let out = tool.stop().unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    let records = out.json();
    let kinds = schema::validate("lwlocks", &records);
    assert_eq!(kinds, ["wait", "tranche", "summary"], "record kinds");
    // Our time asleep per tranche, client backends only (as sampled).
    let mut ours: BTreeMap<String, f64> = BTreeMap::new();
    for r in records.iter().filter(|r| r["type"] == "wait") {
        assert_eq!(r["scope"], "total");
        if r["backend_type"] == "client backend" {
            *ours
                .entry(r["tranche"].as_str().unwrap().to_string())
                .or_default() += r["total_ns"].as_f64().unwrap();
        }
    }
    eprintln!("{samples} samples: {sampled:?}\nours (ns): {ours:?}");
    assert!(
        ours.contains_key("WALWrite") && ours.contains_key("WALInsert"),
        "WAL waits: {ours:?}"
    );
    assert!(samples > 200, "{samples} samples");
    // The tranche backends sleep on most is the same seen both ways, and every tranche
    // sampled often enough to estimate has a share of our time within a factor of 2 of its
    // share of the samples.
    assert_eq!(busiest(&ours), busiest(&sampled), "{ours:?} vs {sampled:?}");
    let (ours_share, sampled_share) = (shares(&ours), shares(&sampled));
    for (tranche, n) in &sampled {
        if *n < 30.0 {
            continue;
        }
        let (a, b) = (
            ours_share.get(tranche).copied().unwrap_or(0.0),
            sampled_share[tranche],
        );
        assert!(
            a >= b / 2.0 && a <= b * 2.0,
            "{tranche}: {a:.3} of our wait time, {b:.3} of the samples\n{ours:?}\n{sampled:?}"
        );
    }
    // Samples taken evenly over the run see on average as many backends asleep on a tranche
    // as its wait time divided by the run's length.
    let busiest_tranche = busiest(&sampled);
    let asleep_sampled = sampled[busiest_tranche] / f64::from(samples);
    let asleep_ours = ours[busiest_tranche] / 1e9 / ran;
    assert!(
        asleep_ours >= asleep_sampled / 2.0 && asleep_ours <= asleep_sampled * 2.0,
        "{busiest_tranche}: {asleep_ours:.2} backends asleep on average by our times, \
         {asleep_sampled:.2} by the samples"
    );
    // The summary adds up the rows, and nothing was lost.
    let summary = records.iter().find(|r| r["type"] == "summary").unwrap();
    let rows: u64 = records
        .iter()
        .filter(|r| r["type"] == "wait")
        .map(|r| r["waits"].as_u64().unwrap())
        .sum();
    assert_eq!(summary["waits"].as_u64(), Some(rows));
    assert_eq!(summary["lost"]["ringbuf_full"], 0);
    assert_eq!(summary["lost"]["waiting_full"], 0);
    check_stacks(&with_stacks.stop().unwrap().json());
    // pgbench's statements are named.
    assert!(
        records
            .iter()
            .any(|r| r["type"] == "wait"
                && r["query"].as_str().unwrap().starts_with("UPDATE pgbench")),
        "no pgbench statement among the waits"
    );
}

/// `--stack`: every wait has its stack (none lost), the stack rows of a tranche add up to its
/// waits, and a commit's WALWrite waits come from XLogFlush at the transaction's commit.
fn check_stacks(records: &[serde_json::Value]) {
    let kinds = schema::validate("lwlocks", records);
    assert_eq!(
        kinds,
        ["wait", "tranche", "stack", "summary"],
        "record kinds"
    );
    stacks::assert_stacks_cover(records, "tranche", "tranche", "waits", &[]);
    let wal_write = stacks::frames(stacks::heaviest(records, "WALWrite"), "user_stack");
    stacks::assert_in_order(
        &wal_write,
        &["XLogFlush", "CommitTransactionCommand", "PostgresMain"],
    );
}

/// `--hold` under pgbench -S: every buffer access of a backend locks the page's content (the
/// index descent's pages and the heap page, share mode), so the BufferContent holds equal the
/// buffer accesses pg_stat_statements counts for the statements (shared_blks_hit + read),
/// give or take the background processes' own.
#[test]
fn buffer_content_holds_follow_the_buffer_accesses_pg_stat_statements_counts() {
    require_root();
    let _lock = exclusive();
    let pg = Postgres::with_pgss_and_pgbench().unwrap();
    let pm = pg.postmaster_pid().unwrap().to_string();
    pg.psql("select pg_stat_statements_reset()").unwrap();
    let tool = Traced::start(BIN, &["-p", &pm, "--json", "--hold"]).unwrap();
    pg.pgbench(&["-S", "-n", "-c", "2", "-j", "2", "-T", "3"])
        .unwrap();
    let records = tool.stop().unwrap().json();
    let kinds = schema::validate("lwlocks", &records);
    assert!(kinds.iter().any(|k| k == "hold"), "{kinds:?}");
    let blocks: u64 = pg
        .psql(
            "select sum(shared_blks_hit + shared_blks_read) from pg_stat_statements \
             where query not like '%pg_stat_statements%'",
        )
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let held = |tranche: &str, mode: &str| -> u64 {
        records
            .iter()
            .filter(|r| r["type"] == "hold" && r["tranche"] == tranche && r["mode"] == mode)
            .map(|r| r["holds"].as_u64().unwrap())
            .sum()
    };
    let content = held("BufferContent", "shared") + held("BufferContent", "exclusive");
    eprintln!("BufferContent holds {content}, buffer accesses {blocks}");
    assert!(blocks > 10_000, "{blocks} buffer accesses");
    assert!(
        content as f64 >= blocks as f64 * 0.95 && content as f64 <= blocks as f64 * 1.1,
        "{content} BufferContent holds for {blocks} buffer accesses"
    );
    // Every hold paired with its release, none past the capacity.
    let summary = records.iter().find(|r| r["type"] == "summary").unwrap();
    assert_eq!(summary["holds_not_timed"]["held_full"], 0, "{summary}");
    assert_eq!(summary["holds_not_timed"]["holders_full"], 0, "{summary}");
}

#[test]
fn a_binary_without_the_probes_is_a_clear_error() {
    require_root();
    let out = run_tool(BIN, &["--postgres", "/bin/true"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("has no USDT probes lwlock__wait__start, lwlock__wait__done")
            && out.stderr.lines().count() == 1,
        "{}",
        out.stderr
    );
}
