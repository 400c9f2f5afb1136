//! The README's demo: a throwaway PostgreSQL under pgbench load (and a redis-server under
//! redis-benchmark) with pgbpf's tools attached, printing their real output. Run by scripts/demo.sh after the tools are installed on PATH.

use std::{
    process::{Command, ExitCode},
    time::Duration,
};

use pgbpf_testkit::{
    container::ContainerSpec,
    postgres::{PgOptions, Postgres},
    redis::Redis,
};

fn say(text: &str) {
    eprintln!("\n== {text}");
}

fn demo() -> anyhow::Result<()> {
    say("starting a throwaway PostgreSQL in a podman container limited to 160 MB of memory");
    let pg = Postgres::start_with(&PgOptions {
        container: Some(ContainerSpec {
            memory: Some("160m".into()),
            ..Default::default()
        }),
        ..Default::default()
    })?;
    let container = pg
        .container
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no container"))?;
    let short = &container.id[..12];
    eprintln!("container {short}, postmaster pid {}", pg.postmaster_pid()?);

    say(&format!(
        "page_reclaim --container {short} 5 5   (a report every 5 s while pgbench runs)"
    ));
    let mut tool = Command::new("page_reclaim")
        .args(["--container", short, "5", "5"])
        .spawn()?;
    std::thread::sleep(Duration::from_secs(1));
    eprintln!("pgbench -i -s 20 (300 MB of data, more than the container may keep in memory)");
    pg.pgbench(&["-i", "-s", "20", "-q"])?;
    eprintln!("pgbench -S -c 4 -T 12 (random reads: the kernel must keep reclaiming page cache)");
    let out = pg.pgbench(&["-S", "-c", "4", "-j", "2", "-T", "12"])?;
    if let Some(tps) = out.lines().find(|l| l.starts_with("tps")) {
        eprintln!("pgbench: {tps}");
    }
    let status = tool.wait()?;
    anyhow::ensure!(status.success(), "page_reclaim exited with {status}");

    let postmaster = pg.postmaster_pid()?.to_string();
    say(&format!(
        "query_latency -p {postmaster} -d 12   (the postmaster: every backend, also those started later)"
    ));
    let mut tool = Command::new("query_latency")
        .args(["-p", &postmaster, "-d", "12"])
        .spawn()?;
    std::thread::sleep(Duration::from_secs(1));
    eprintln!(
        "pgbench -M extended -c 2 -T 8 (TPC-B: three UPDATEs, a SELECT, an INSERT per transaction)"
    );
    pg.pgbench(&["-M", "extended", "-c", "2", "-j", "2", "-T", "8", "-n"])?;
    pg.psql("select pg_sleep(0.05)")?;
    let status = tool.wait()?;
    anyhow::ensure!(status.success(), "query_latency exited with {status}");

    say(&format!(
        "lwlocks -p {postmaster} -d 8 --top 4 --stack   (where backends sleep on LWLocks, per \
         tranche and statement, and from where in PostgreSQL)"
    ));
    let mut tool = Command::new("lwlocks")
        .args(["-p", &postmaster, "-d", "8", "--top", "4", "--stack"])
        .spawn()?;
    std::thread::sleep(Duration::from_secs(1));
    eprintln!("pgbench -c 8 -T 5 (TPC-B: eight clients updating ten tellers and one branch)");
    pg.pgbench(&["-c", "8", "-j", "2", "-T", "5", "-n"])?;
    let status = tool.wait()?;
    anyhow::ensure!(status.success(), "lwlocks exited with {status}");

    say(&format!(
        "wal_per_query -p {postmaster} -d 6 --top 5 --system   (WAL written per statement, \
         backend type and resource manager; who wrote it to pg_wal)"
    ));
    let mut tool = Command::new("wal_per_query")
        .args(["-p", &postmaster, "-d", "6", "--top", "5", "--system"])
        .spawn()?;
    std::thread::sleep(Duration::from_secs(1));
    pg.psql("checkpoint")?;
    eprintln!("checkpoint, then pgbench -N -c 2 -T 4 (an UPDATE and an INSERT per transaction)");
    pg.pgbench(&["-N", "-c", "2", "-j", "2", "-T", "4", "-n"])?;
    let status = tool.wait()?;
    anyhow::ensure!(status.success(), "wal_per_query exited with {status}");

    let conn = pg.conn_args();
    let dsn = format!(
        "host={} port={} user=postgres dbname=postgres",
        conn[1], conn[3]
    );
    say(&format!(
        "working_set -p {postmaster} --dsn '{dsn}' -d 6 --top 6   (how much of the buffer pool \
         the workload touches, how often, per relation)"
    ));
    let mut tool = Command::new("working_set")
        .args(["-p", &postmaster, "--dsn", &dsn, "-d", "6", "--top", "6"])
        .spawn()?;
    std::thread::sleep(Duration::from_secs(1));
    eprintln!("pgbench -S -c 2 -T 4 (an account looked up by its key per transaction)");
    pg.pgbench(&["-S", "-c", "2", "-j", "2", "-T", "4", "-n"])?;
    let status = tool.wait()?;
    anyhow::ensure!(status.success(), "working_set exited with {status}");

    say(&format!(
        "write_per_type -p {postmaster} -d 6   (bytes written per backend type and kind of file, \
         fsyncs and their latency)"
    ));
    let mut tool = Command::new("write_per_type")
        .args(["-p", &postmaster, "-d", "6"])
        .spawn()?;
    std::thread::sleep(Duration::from_secs(1));
    eprintln!("pgbench -N -c 2 -T 3, a checkpoint, a sort spilling to temp files");
    pg.pgbench(&["-N", "-c", "2", "-j", "2", "-T", "3", "-n"])?;
    pg.psql("checkpoint")?;
    pg.psql(
        "set work_mem = '1MB'; select count(*) from (select * from pgbench_accounts \
         order by filler desc) s",
    )?;
    let status = tool.wait()?;
    anyhow::ensure!(status.success(), "write_per_type exited with {status}");

    say(&format!(
        "net_per_query -p {postmaster} -d 6 --top 5   (bytes received and sent per statement, \
         backend type and client)"
    ));
    let mut tool = Command::new("net_per_query")
        .args(["-p", &postmaster, "-d", "6", "--top", "5"])
        .spawn()?;
    std::thread::sleep(Duration::from_secs(1));
    eprintln!("a 10 MB value, a COPY TO STDOUT, then pgbench -S -c 2 -T 3");
    pg.psql("select repeat('x', 10000000)")?;
    pg.psql("copy pgbench_branches to stdout")?;
    pg.pgbench(&["-S", "-c", "2", "-j", "2", "-T", "3", "-n"])?;
    let status = tool.wait()?;
    anyhow::ensure!(status.success(), "net_per_query exited with {status}");

    say(&format!(
        "spin_sema -p {postmaster} -d 6 --top 6   (semaphore sleeps, spinlock delays and futex \
         waits, per site and statement)"
    ));
    let mut tool = Command::new("spin_sema")
        .args(["-p", &postmaster, "-d", "6", "--top", "6"])
        .spawn()?;
    std::thread::sleep(Duration::from_secs(1));
    eprintln!("pgbench -c 8 -T 4 (TPC-B: eight clients updating one branch row)");
    pg.pgbench(&["-c", "8", "-j", "2", "-T", "4", "-n"])?;
    let status = tool.wait()?;
    anyhow::ensure!(status.success(), "spin_sema exited with {status}");

    say(&format!(
        "locks -p {postmaster} --each --dsn '{dsn}' -d 6   (heavyweight lock waits as they \
         end, relations by name, and a deadlock)"
    ));
    let mut tool = Command::new("locks")
        .args(["-p", &postmaster, "--each", "--dsn", &dsn, "-d", "6"])
        .spawn()?;
    std::thread::sleep(Duration::from_secs(1));
    eprintln!("two sessions updating tellers 1 and 2 in opposite orders");
    let update =
        |tid: u32| format!("update pgbench_tellers set tbalance = tbalance + 1 where tid = {tid}");
    let (mut a, mut b) = (pg.session()?, pg.session()?);
    for (s, tid) in [(&mut a, 1), (&mut b, 2)] {
        s.run("begin")?;
        s.run(&update(tid))?;
    }
    // One of the two is cancelled by the deadlock check after deadlock_timeout (1 s).
    let _ = std::thread::scope(|s| {
        let first = s.spawn(|| a.run(&update(2)));
        std::thread::sleep(Duration::from_millis(200));
        let second = b.run(&update(1));
        (first.join().is_ok(), second.is_ok())
    });
    drop((a, b));
    let status = tool.wait()?;
    anyhow::ensure!(status.success(), "locks exited with {status}");

    say(&format!(
        "cpu_wait -p {postmaster} -d 8 --top 6   (run-queue waits per backend and statement, \
         with a CPU-heavy neighbour)"
    ));
    let mut tool = Command::new("cpu_wait")
        .args(["-p", &postmaster, "-d", "8", "--top", "6"])
        .spawn()?;
    std::thread::sleep(Duration::from_secs(1));
    eprintln!("pgbench -S -c 4 -T 5 beside two busy loops (sh -c 'while :; do :; done')");
    let mut neighbours = (0..2)
        .map(|_| {
            Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bench = pg.pgbench(&["-S", "-c", "4", "-j", "2", "-T", "5", "-n"]);
    for n in &mut neighbours {
        let _ = n.kill();
        let _ = n.wait();
    }
    bench?;
    let status = tool.wait()?;
    anyhow::ensure!(status.success(), "cpu_wait exited with {status}");

    let port = pgbpf_testkit::postgres::free_port()?;
    say(&format!(
        "pgbpf_exporter --listen 127.0.0.1:{port}   (the same probes, for Prometheus: /metrics, \
         read here with curl)"
    ));
    let mut exporter = Command::new("pgbpf_exporter")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .spawn()?;
    std::thread::sleep(Duration::from_secs(2));
    eprintln!("pgbench -S -c 2 -T 5");
    pg.pgbench(&["-S", "-c", "2", "-j", "2", "-T", "5", "-n"])?;
    std::thread::sleep(Duration::from_millis(500));
    let metrics = Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{port}/metrics")])
        .output()?;
    let text = String::from_utf8_lossy(&metrics.stdout);
    eprintln!("curl -s 127.0.0.1:{port}/metrics | grep -E '_count|reclaim_bytes|collector_up'");
    for line in text.lines().filter(|l| {
        !l.starts_with('#')
            && (l.contains("_count{") || l.contains("reclaim_bytes") || l.contains("collector_up"))
    }) {
        println!("{line}");
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(exporter.id())?),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let status = exporter.wait()?;
    anyhow::ensure!(status.success(), "pgbpf_exporter exited with {status}");

    say(&format!(
        "llcache_per_query --container {short} -e cpu-clock -d 8   (CPU time per statement; \
         without -e: last-level cache references and misses, where the CPU has counters)"
    ));
    let mut tool = Command::new("llcache_per_query")
        .args(["--container", short, "-e", "cpu-clock", "-d", "8"])
        .spawn()?;
    std::thread::sleep(Duration::from_secs(1));
    eprintln!("pgbench -S -M extended -c 2 -T 5, and an aggregate over 5 million rows beside it");
    let aggregate = std::thread::scope(|s| {
        let heavy = s.spawn(|| pg.psql("select sum(i) from generate_series(1, 5000000) i"));
        let light = pg.pgbench(&[
            "-S", "-M", "extended", "-c", "2", "-j", "2", "-T", "5", "-n",
        ]);
        light.and(
            heavy
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("psql thread panicked"))),
        )
    });
    aggregate?;
    let status = tool.wait()?;
    anyhow::ensure!(status.success(), "llcache_per_query exited with {status}");

    say(&format!(
        "pgwire_trace --container {short} -T -d 4   (every request and response, from the kernel)"
    ));
    let mut tool = Command::new("pgwire_trace")
        .args(["--container", short, "-T", "-d", "4"])
        .spawn()?;
    std::thread::sleep(Duration::from_secs(1));
    for sql in [
        "select count(*) from pgbench_branches",
        "select 1/0",
        "update pgbench_tellers set tbalance = tbalance where tid < 4",
    ] {
        // The error is the point of the second one.
        let _ = pg.psql(sql);
    }
    let status = tool.wait()?;
    anyhow::ensure!(status.success(), "pgwire_trace exited with {status}");

    say(&format!(
        "pgwire_trace --container {short} --summary -d 8   (per statement, pgbench -M prepared)"
    ));
    let mut tool = Command::new("pgwire_trace")
        .args(["--container", short, "--summary", "-d", "8"])
        .spawn()?;
    std::thread::sleep(Duration::from_secs(1));
    pg.pgbench(&["-M", "prepared", "-c", "2", "-j", "2", "-T", "5", "-n"])?;
    let status = tool.wait()?;
    anyhow::ensure!(status.success(), "pgwire_trace exited with {status}");

    say(&format!(
        "pgwire_trace --container {short} --record /tmp/pgbpf-demo.pgw -d 12   (a capture of pgbench -S at 50 tps)"
    ));
    let capture = std::env::temp_dir().join("pgbpf-demo.pgw");
    let capture_s = capture.display().to_string();
    let mut tool = Command::new("pgwire_trace")
        .args([
            "--container",
            short,
            "--summary",
            "--force",
            "--record",
            &capture_s,
            "-d",
            "12",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(1));
    pg.pgbench(&[
        "-S", "-M", "extended", "-c", "2", "-j", "2", "-R", "50", "-T", "10", "-n",
    ])?;
    let status = tool.wait()?;
    anyhow::ensure!(status.success(), "pgwire_trace exited with {status}");
    say(
        "a second cluster (scale 1) where index scans are off: enable_indexscan = enable_bitmapscan = off",
    );
    let second = Postgres::start_with_pgbench(
        &PgOptions {
            settings: vec![
                ("enable_indexscan".into(), "off".into()),
                ("enable_bitmapscan".into(), "off".into()),
            ],
            ..Default::default()
        },
        1,
    )?;
    let target = format!(
        "host={} port={} user=postgres dbname=postgres",
        second.socket_dir.display(),
        second.port
    );
    say(&format!(
        "pg_replay --target '{target}' --top 5 {capture_s}   (each session at its own pace: the regression per statement)"
    ));
    let status = Command::new("pg_replay")
        .args(["--target", &target, "--top", "5", &capture_s])
        .status()?;
    anyhow::ensure!(status.success(), "pg_replay exited with {status}");
    let _ = std::fs::remove_file(&capture);
    let second_pm = second.postmaster_pid()?.to_string();
    say(&format!(
        "net_per_query -p {second_pm} --dev -d 6 --top 3   (with the network devices: the \
         second cluster over TCP on the loopback device)"
    ));
    let mut tool = Command::new("net_per_query")
        .args(["-p", &second_pm, "--dev", "-d", "6", "--top", "3"])
        .spawn()?;
    std::thread::sleep(Duration::from_secs(1));
    eprintln!("pgbench -h 127.0.0.1 -S -c 2 -T 3");
    second.pgbench(&[
        "-h",
        "127.0.0.1",
        "-S",
        "-c",
        "2",
        "-j",
        "2",
        "-T",
        "3",
        "-n",
    ])?;
    let status = tool.wait()?;
    anyhow::ensure!(status.success(), "net_per_query --dev exited with {status}");
    drop(second);

    say("starting a throwaway redis-server on a free port");
    let redis = Redis::start()?;
    let pid = redis.pid().to_string();
    say(&format!(
        "redis_trace -p {pid} --summary --keys --top 5 -d 8   (per command, under redis-benchmark -P 4)"
    ));
    let mut tool = Command::new("redis_trace")
        .args(["-p", &pid, "--summary", "--keys", "--top", "5", "-d", "8"])
        .spawn()?;
    std::thread::sleep(Duration::from_secs(1));
    redis.benchmark(&[
        "-t",
        "set,get,lpush,incr",
        "-n",
        "20000",
        "-c",
        "4",
        "-r",
        "1000",
        "-P",
        "4",
        "-q",
    ])?;
    // An error, a transaction: they show in the table too.
    let _ = redis.cli(&["GET", "mylist"]);
    redis.cli_stdin(&[], "MULTI\nINCR visits\nEXEC\n")?;
    let status = tool.wait()?;
    anyhow::ensure!(status.success(), "redis_trace exited with {status}");
    say("done; the container, the redis-server and their data are removed");
    Ok(())
}

fn main() -> ExitCode {
    match demo() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgbpf-demo: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
