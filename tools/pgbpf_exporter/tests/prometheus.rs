//! pgbpf_exporter scraped by a real Prometheus (Debian's package) while pgbench runs on a
//! real PostgreSQL: the statement latency histogram's count, read back through Prometheus'
//! query API, matches pg_stat_statements' calls; the self-metrics are there; a server in a
//! container (its root an overlay of the host's) is counted once, under its container's
//! label; a memory cgroup (a static Kubernetes pod's container, as the kubelet makes it)
//! pushed into reclaim shows in the reclaim series, with its container and pod labels, as the
//! kernel's /proc/vmstat counts it; a container's /dev/shm running out shows as the failed
//! calls the server log reports.

// Helpers of a test binary: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use pgbpf_testkit::{
    container::ContainerSpec,
    dsm::{BIG_JOIN, resize_errors, server_short_of_shm},
    exclusive,
    memcg::{KubeletSlices, MemoryCgroup, kubelet_container},
    postgres::{PgOptions, Postgres, free_port},
    redis::Redis,
    repo_root, require_root, run,
    tool::Traced,
    vmstat,
};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_pgbpf_exporter");

/// The exporter, started and serving on a free port.
fn exporter(extra: &[&str]) -> (Traced, u16) {
    let port = free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(BIN);
    cmd.args(["--listen", &listen]).args(extra);
    let t = Traced::start_until(&mut cmd, "serving http").unwrap();
    (t, port)
}

/// GET over HTTP with curl (as a user would), the body; None on any failure.
fn get(url: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "10", url])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A Prometheus server scraping `target` every second, killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: pgbpf\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port().unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (apt-get install prometheus; scripts/setup.sh does)");
        let p = Prometheus {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while get(&p.url("/-/ready")).is_none() {
            assert!(Instant::now() < deadline, "prometheus did not get ready");
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// An instant query's result vector.
    fn query(&self, promql: &str) -> Vec<Value> {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "10", &self.url("/api/v1/query")])
            .args(["--data-urlencode", &format!("query={promql}")])
            .output()
            .unwrap();
        assert!(out.status.success(), "query {promql} failed");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["status"], "success", "{v}");
        v["data"]["result"].as_array().unwrap().clone()
    }

    /// The single value of a query that sums to one series (0 when there is none).
    fn value(&self, promql: &str) -> f64 {
        match self.query(promql).first() {
            Some(s) => s["value"][1].as_str().unwrap().parse().unwrap(),
            None => 0.0,
        }
    }

    /// Waits until Prometheus has scraped the exporter twice after now.
    fn wait_for_scrapes(&self) {
        let since = self.value("max(timestamp(up{job=\"pgbpf\"}))");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let last = self.value("max(timestamp(up{job=\"pgbpf\"}))");
            if last >= since + 2.0 && self.value("max(up{job=\"pgbpf\"})") == 1.0 {
                return;
            }
            assert!(Instant::now() < deadline, "no scrape of the exporter");
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A cluster with pg_stat_statements and pgbench's tables (scale 1).
fn cluster() -> Postgres {
    Postgres::with_pgss_and_pgbench().unwrap()
}

/// pg_stat_statements' calls of the statements whose text starts with `prefix`.
fn pgss_calls(pg: &Postgres, prefix: &str) -> f64 {
    pg.psql(&format!(
        "select coalesce(sum(calls), 0) from pg_stat_statements where query ilike '{prefix}%'"
    ))
    .unwrap()
    .trim()
    .parse()
    .unwrap()
}

#[test]
fn prometheus_scrapes_statement_latency_that_matches_pg_stat_statements() {
    require_root();
    let _lock = exclusive();
    let pg = cluster();
    let (exporter, port) = exporter(&["--collect", "query_latency,page_reclaim,io_timeouts,shmem"]);
    let prometheus = Prometheus::start(&format!("127.0.0.1:{port}"));
    prometheus.wait_for_scrapes();
    let selects = "sum(pgbpf_statement_duration_seconds_count{statement=~\"(?i)select abalance from pgbench_accounts.*\"})";
    let before = prometheus.value(selects);
    pg.psql("select pg_stat_statements_reset()").unwrap();
    // Simple and extended protocol, four clients.
    pg.pgbench(&["-S", "-c", "4", "-j", "2", "-t", "1500"])
        .unwrap();
    pg.pgbench(&["-S", "-M", "extended", "-c", "2", "-t", "1000"])
        .unwrap();
    let want = pgss_calls(&pg, "select abalance from pgbench_accounts");
    assert_eq!(want, 8000.0, "pgbench ran what it was asked");
    prometheus.wait_for_scrapes();
    let got = prometheus.value(selects) - before;
    assert!(
        (got - want).abs() <= 0.02 * want,
        "Prometheus has {got} calls of the pgbench select, pg_stat_statements {want}"
    );
    // The histogram's buckets hold every call (le="+Inf" is the count), and the self-metrics
    // say what ran.
    let inf = prometheus.value(
        "sum(pgbpf_statement_duration_seconds_bucket{le=\"+Inf\",statement=~\"(?i)select abalance from pgbench_accounts.*\"})",
    );
    assert_eq!(inf, prometheus.value(selects));
    let p99 = prometheus.value(
        "histogram_quantile(0.99, sum by (le) (pgbpf_statement_duration_seconds_bucket{statement=~\"(?i)select abalance.*\"}))",
    );
    assert!(p99 > 0.0 && p99 < 1.0, "p99 of an index lookup: {p99} s");
    for collector in ["query_latency", "page_reclaim", "io_timeouts"] {
        assert_eq!(
            prometheus.value(&format!("pgbpf_collector_up{{collector=\"{collector}\"}}")),
            1.0,
            "{collector} is up"
        );
        assert!(
            prometheus.value(&format!("pgbpf_bpf_programs{{collector=\"{collector}\"}}")) > 0.0,
            "{collector} has programs loaded"
        );
    }
    let runs = prometheus.value(
        "sum(pgbpf_bpf_program_runs_total{collector=\"query_latency\",program=\"pg_probe\"})",
    );
    // Four USDT hits per simple-protocol statement (query__start/done and PortalRun's
    // execute start/done), two per extended one (PortalRun's only): 6000 and 2000 of them.
    assert!(
        runs >= 4.0 * 6000.0 + 2.0 * 2000.0,
        "USDT hits: {runs} runs for {want} statements"
    );
    assert_eq!(
        prometheus.value("sum(pgbpf_lost_events_total{collector=\"query_latency\"})"),
        0.0
    );
    assert_documented(&get(&format!("http://127.0.0.1:{port}/metrics")).unwrap());
    let done = exporter.stop().unwrap();
    assert!(done.status.success(), "{}", done.stderr);
    assert!(done.stderr.contains("detaching"), "{}", done.stderr);
    drop(pg);
}

/// Every metric family of a `/metrics` text is in the manual's METRICS table.
fn assert_documented(text: &str) {
    let manual = std::fs::read_to_string(repo_root().join("docs/pgbpf_exporter.md")).unwrap();
    let undocumented: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| !manual.contains(&format!("| `{name}` |")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "metrics missing from docs/pgbpf_exporter.md: {undocumented:?}"
    );
}

/// A number of `/metrics` text: the sum of the series of `name` whose labels contain all of
/// `with`.
fn metric_sum(text: &str, name: &str, with: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| with.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[test]
fn reclaim_in_a_memory_cgroup_is_counted_as_the_kernel_counts_it() {
    require_root();
    let _lock = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data.bin");
    run(Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", file.display()))
        .args(["bs=1M", "count=200", "status=none", "conv=fsync"]))
    .unwrap();
    let (exporter, port) = exporter(&["--collect", "page_reclaim"]);
    // The reader in a container of a static Kubernetes pod (its UID a manifest's hash), made
    // as the kubelet's systemd driver and containerd make it.
    let uid = "6f2d3a7c4f5f8b41d7e1e2e5e9f1b3c4";
    let id = "5b8e4f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081923f2a9c0d";
    let _slices = KubeletSlices::new(&[uid]).unwrap();
    let cg = MemoryCgroup::create(&kubelet_container(uid, id), 48 << 20).unwrap();
    run(Command::new("sh")
        .arg("-c")
        .arg("sync; echo 1 > /proc/sys/vm/drop_caches"))
    .unwrap();
    let pgsteal = ["pgsteal_anon", "pgsteal_file"];
    let before = vmstat(&pgsteal);
    // 400 MiB of page cache read through a 48 MiB limit: the reader reclaims in its cgroup.
    let f = file.display();
    let mut reader = cg.spawn(&format!("exec cat {f} {f} > /dev/null")).unwrap();
    assert!(reader.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(300));
    let stolen = (vmstat(&pgsteal) - before) * pgbpf_common::system::page_size();
    let metrics = get(&format!("http://127.0.0.1:{port}/metrics")).unwrap();
    let placed = format!(
        "cgroup=\"{}\",container=\"{}\",pod=\"{uid}\"",
        cg.path,
        &id[..12]
    );
    let reclaimed = metric_sum(&metrics, "pgbpf_reclaim_bytes_total", &[&placed]);
    eprintln!(
        "exporter: {reclaimed} bytes reclaimed in {}; vmstat: {stolen}",
        cg.path
    );
    assert!(
        stolen > 0 && (reclaimed - stolen as f64).abs() <= 0.10 * stolen as f64,
        "exporter: {reclaimed} bytes reclaimed in {}; /proc/vmstat: {stolen} stolen\n{metrics}",
        cg.path
    );
    let stall = metric_sum(&metrics, "pgbpf_reclaim_stall_seconds_total", &[&placed]);
    assert!(stall > 0.0, "stall time of the reclaiming reader");
    let done = exporter.stop().unwrap();
    assert!(done.status.success(), "{}", done.stderr);
}

#[test]
fn a_server_in_a_container_is_counted_once_under_its_container() {
    require_root();
    let _lock = exclusive();
    let (exporter, port) = exporter(&["--collect", "query_latency"]);
    // Started after the exporter, from the host's binary seen through the container's
    // overlay root: another device number, the same file underneath, which the exporter
    // already traces (attaching it again would count every statement twice).
    let pg = Postgres::start_with_pgbench(
        &PgOptions {
            pg_stat_statements: true,
            container: Some(ContainerSpec::default()),
            ..Default::default()
        },
        1,
    )
    .unwrap();
    let id = pg.container.as_ref().unwrap().id[..12].to_string();
    // initdb's hundreds of one-off statements took the exporter's 100 places: pgbench's
    // select, busier, takes one at the next maintenance pass (every 10 s), which also
    // rescans for postgres binaries and sees the container's.
    pg.pgbench(&["-S", "-c", "2", "-t", "200"]).unwrap();
    std::thread::sleep(Duration::from_secs(11));
    pg.psql("select pg_stat_statements_reset()").unwrap();
    pg.pgbench(&["-S", "-c", "2", "-t", "500"]).unwrap();
    let want = pgss_calls(&pg, "select abalance from pgbench_accounts");
    std::thread::sleep(Duration::from_millis(500));
    let text = get(&format!("http://127.0.0.1:{port}/metrics")).unwrap();
    let got = metric_sum(
        &text,
        "pgbpf_statement_duration_seconds_count",
        &[
            "SELECT abalance FROM pgbench_accounts",
            &format!("container=\"{id}\""),
        ],
    );
    assert_eq!(got, want, "the container's selects\n{text}");
    let binaries = text
        .lines()
        .filter(|l| l.starts_with("pgbpf_postgres_binaries_traced{"))
        .count();
    assert_eq!(binaries, 1, "one file traced\n{text}");
    let done = exporter.stop().unwrap();
    assert!(done.status.success(), "{}", done.stderr);
}

#[test]
fn shared_memory_failures_in_a_container_are_the_server_logs_errors() {
    require_root();
    let _lock = exclusive();
    let pg = server_short_of_shm().unwrap();
    let id = pg.container.as_ref().unwrap().id[..12].to_string();
    let (exporter, port) = exporter(&["--collect", "shmem"]);
    // Twice: the container's 64 MB /dev/shm cannot hold the hash table's DSM segment.
    for _ in 0..2 {
        let err = pg.psql(BIG_JOIN).expect_err("the join must fail");
        assert!(format!("{err:#}").contains("No space left"), "{err:#}");
    }
    std::thread::sleep(Duration::from_millis(300));
    let text = get(&format!("http://127.0.0.1:{port}/metrics")).unwrap();
    // One failed call per segment: a leader repeats its worker's error in its own log line.
    let mut errors = resize_errors(&pg.server_log());
    errors.sort_by(|a, b| a.segment.cmp(&b.segment));
    errors.dedup_by(|a, b| a.segment == b.segment);
    let in_container = format!("container=\"{id}\"");
    let enospc = [
        in_container.as_str(),
        "call=\"fallocate\"",
        "result=\"ENOSPC\"",
    ];
    let failures = metric_sum(&text, "pgbpf_shm_calls_total", &enospc);
    assert_eq!(
        failures,
        errors.len() as f64,
        "failed fallocates vs the server log's resize errors {errors:?}\n{text}"
    );
    let asked: u64 = errors.iter().map(|e| e.bytes).sum();
    assert_eq!(
        metric_sum(&text, "pgbpf_shm_requested_bytes_total", &enospc),
        asked as f64,
        "bytes the failed calls asked for, as the server log says"
    );
    // The segments were created and sized before one grew too big.
    assert!(
        metric_sum(
            &text,
            "pgbpf_shm_calls_total",
            &[&in_container, "call=\"open\"", "result=\"ok\""]
        ) >= 2.0,
        "{text}"
    );
    // Kept for the manual's example.
    let _ = std::fs::write(
        repo_root().join("target/exporter-shmem-example.txt"),
        text.lines()
            .filter(|l| l.starts_with("pgbpf_shm_") || l.contains("collector=\"shmem\""))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    assert_documented(&text);
    let done = exporter.stop().unwrap();
    assert!(done.status.success(), "{}", done.stderr);
}

#[test]
fn a_collector_that_cannot_attach_says_why_and_the_others_run() {
    require_root();
    let _lock = exclusive();
    // A real postgres binary without its USDT notes (objcopy), as a build without
    // --enable-dtrace would be.
    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("postgres");
    let installed = pgbpf_common::postgres::installed_bin_dir()
        .unwrap()
        .join("postgres");
    run(Command::new("objcopy")
        .args(["--remove-section", ".note.stapsdt"])
        .arg(&installed)
        .arg(&bare))
    .unwrap();
    let bare_arg = bare.display().to_string();
    let (mut exporter, port) = exporter(&[
        "--collect",
        "query_latency,page_reclaim",
        "--postgres",
        &bare_arg,
    ]);
    let log = exporter.stderr_so_far();
    assert!(
        log.contains("query_latency: not collecting") && log.contains("no USDT probe"),
        "{log}"
    );
    let text = get(&format!("http://127.0.0.1:{port}/metrics")).unwrap();
    assert!(
        text.contains("pgbpf_collector_up{collector=\"query_latency\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("pgbpf_collector_up{collector=\"page_reclaim\"} 1"),
        "{text}"
    );
    let error = text
        .lines()
        .find(|l| l.starts_with("pgbpf_collector_error{collector=\"query_latency\""))
        .unwrap_or_else(|| panic!("no pgbpf_collector_error for query_latency:\n{text}"));
    assert!(
        error.contains(&bare_arg) && error.ends_with(" 1.0"),
        "{error}"
    );
    let done = exporter.stop().unwrap();
    assert!(done.status.success(), "{}", done.stderr);
}

#[test]
fn wire_requests_and_errors_match_the_servers_own_counts() {
    require_root();
    let _lock = exclusive();
    let pg = cluster();
    let (exporter, port) = exporter(&["--collect", "pgwire_trace"]);
    pg.psql("select pg_stat_statements_reset()").unwrap();
    pg.pgbench(&["-S", "-n", "-c", "2", "-t", "500"]).unwrap();
    // A connection per transaction: backends gone before the exporter reads their records.
    pg.pgbench(&["-S", "-n", "-C", "-c", "2", "-t", "100"])
        .unwrap();
    for _ in 0..3 {
        // Each fails: SQLSTATE 22012, class 22.
        assert!(pg.psql("select 1/0").is_err());
    }
    std::thread::sleep(Duration::from_millis(500));
    let text = get(&format!("http://127.0.0.1:{port}/metrics")).unwrap();
    // pg_stat_statements counts every statement that completed (the reset included, the
    // one reading the sum not yet), the failed ones not; the server log has each error.
    let completed: f64 = pg
        .psql("select sum(calls) from pg_stat_statements")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let logged = pg.server_log().matches("ERROR:  division by zero").count() as f64;
    assert_eq!(logged, 3.0, "{}", pg.server_log());
    let database = "database=\"postgres\"";
    let requests = metric_sum(&text, "pgbpf_wire_requests_total", &[database]);
    let errors = metric_sum(
        &text,
        "pgbpf_wire_errors_total",
        &[database, "sqlstate_class=\"22\""],
    );
    assert_eq!(errors, logged, "errors of class 22\n{text}");
    assert_eq!(
        requests,
        completed + logged,
        "requests: pg_stat_statements' calls (the query reading them not yet among them) and \
         the errors\n{text}"
    );
    // Every request placed in the server's cgroup, short sessions' too (by the postmaster
    // that accepted them).
    let cgroup = pgbpf_common::procs::cgroup_v2_of(pg.postmaster_pid().unwrap()).unwrap();
    let placed = metric_sum(
        &text,
        "pgbpf_wire_requests_total",
        &[database, &format!("cgroup=\"{cgroup}\"")],
    );
    assert_eq!(placed, requests, "requests in {cgroup}\n{text}");
    let done = exporter.stop().unwrap();
    assert!(done.status.success(), "{}", done.stderr);
}

#[test]
fn redis_commands_and_errors_match_info_commandstats_and_errorstats() {
    require_root();
    let _lock = exclusive();
    let redis = Redis::start().unwrap();
    let (exporter, port) = exporter(&["--collect", "redis_trace"]);
    redis
        .benchmark(&["-t", "set,get", "-n", "2000", "-c", "2", "-q"])
        .unwrap();
    redis.cli(&["LPUSH", "mylist", "a"]).unwrap();
    // WRONGTYPE twice, ERR (unknown command) once: error replies, not failures of redis-cli.
    for args in [
        &["GET", "mylist"][..],
        &["GET", "mylist"],
        &["NOSUCHCOMMAND"],
    ] {
        let _ = redis.cli(args);
    }
    std::thread::sleep(Duration::from_millis(500));
    let text = get(&format!("http://127.0.0.1:{port}/metrics")).unwrap();
    let calls = redis.command_calls().unwrap();
    for command in ["set", "get", "lpush"] {
        let ours = metric_sum(
            &text,
            "pgbpf_redis_commands_total",
            &[&format!("command=\"{}\"", command.to_uppercase())],
        );
        assert_eq!(
            ours, calls[command] as f64,
            "{command}: INFO commandstats {calls:?}\n{text}"
        );
    }
    let errors = redis.error_counts().unwrap();
    for code in ["WRONGTYPE", "ERR"] {
        let ours = metric_sum(
            &text,
            "pgbpf_redis_errors_total",
            &[&format!("code=\"{code}\"")],
        );
        assert_eq!(
            ours, errors[code] as f64,
            "{code}: INFO errorstats {errors:?}\n{text}"
        );
    }
    let done = exporter.stop().unwrap();
    assert!(done.status.success(), "{}", done.stderr);
}

#[test]
fn redact_drops_comments_from_statement_labels() {
    require_root();
    let _lock = exclusive();
    let pg = cluster();
    let (plain, plain_port) = exporter(&["--collect", "query_latency"]);
    let (redacted, redacted_port) = exporter(&["--collect", "query_latency", "--redact"]);
    let answer = |port: u16| {
        get(&format!("http://127.0.0.1:{port}/metrics"))
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.starts_with("pgbpf_statement_duration_seconds_count") && l.contains("as answer")
            })
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let start = Instant::now();
    let (mut with, mut without) = (vec![], vec![]);
    while (with.is_empty() || without.is_empty()) && start.elapsed() < Duration::from_secs(20) {
        pg.psql("select 42 as answer /* token=hunter2 */").unwrap();
        std::thread::sleep(Duration::from_millis(500));
        with = answer(plain_port);
        without = answer(redacted_port);
    }
    // Without --redact the comment is in the label (the check below is not vacuous); with it,
    // the statement is there, normalized, and the comment is not.
    assert!(
        with.iter().any(|l| l.contains("hunter2")),
        "the label keeps comments by default: {with:?}"
    );
    assert!(
        !without.is_empty()
            && without
                .iter()
                .all(|l| !l.contains("hunter2") && l.contains("select $1 as answer")),
        "--redact: {without:?}"
    );
    for e in [plain, redacted] {
        assert!(e.stop().unwrap().status.success());
    }
    drop(pg);
}
