//! pg_replay's benchmark, beside Debian's pgreplay on the same server log: the log parser's
//! speed (`pg_replay --check` against `pgreplay -f`, which parses and writes its replay
//! file, here to /dev/null) over a log of `--log-mb`, and both tools' peak RSS on it; replayer CPU per 10 000
//! statements at the original pace; replay capacity (statements per second with no pacing);
//! pg_replay's peak RSS replaying the whole big log. Statements are counted by the target's
//! pg_stat_statements, not by the replayers.

use std::{
    io::{BufRead as _, BufWriter, Write as _},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};
use pgbpf_testkit::postgres::{PgOptions, Postgres};

use crate::{Args, report};

/// The log line prefix pgreplay requires of a stderr log.
const PREFIX: &str = "%m|%u|%d|%c|";

pub fn run(args: &Args) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmark starts PostgreSQL clusters as the postgres user: run it as root");
    }
    let ours = args.bin_dir.join("pg_replay");
    if !ours.exists() {
        bail!(
            "{} not found: build it first (cargo build --release)",
            ours.display()
        );
    }
    for bin in ["pgreplay", "/usr/bin/time"] {
        which(bin)?;
    }
    let dir = tempfile::tempdir()?;
    eprintln!(
        "recording a log of pgbench -S ({} s simple, {} s extended)...",
        args.seconds, args.seconds
    );
    let base = dir.path().join("base.log");
    record_log(args, &base)?;
    let base_mb = mb(&base)?;
    let big = dir.path().join("big.log");
    let copies = make_big_log(&base, &big, args.log_mb)?;
    let big_mb = mb(&big)?;
    eprintln!("log: {base_mb:.1} MB recorded, {big_mb:.0} MB made of {copies} copies");

    // The parsers, alternating, on the big log.
    let mut parse_ours = vec![];
    let mut parse_theirs = vec![];
    for rep in 0..args.reps {
        let a = timed(
            Command::new(&ours)
                .args(["--check", "--log-line-prefix", PREFIX])
                .arg(&big),
        )?;
        // Its replay file to /dev/null: the parser is measured, not the disk.
        let b = timed(
            Command::new("pgreplay")
                .args(["-f", "-o", "/dev/null"])
                .arg(&big),
        )?;
        eprintln!(
            "parse {}/{}: pg_replay {:.2} s, pgreplay {:.2} s",
            rep + 1,
            args.reps,
            a.wall_s,
            b.wall_s
        );
        parse_ours.push(a);
        parse_theirs.push(b);
    }

    let target = Postgres::start_with_pgbench(
        &PgOptions {
            pg_stat_statements: true,
            ..Default::default()
        },
        10,
    )?;
    let conninfo = format!(
        "host={} port={} user=postgres dbname=postgres",
        target.socket_dir.display(),
        target.port
    );
    let replay_ours = |speed: &str, log: &Path| -> anyhow::Result<Replayed> {
        replayed(&target, || {
            timed(
                Command::new(&ours)
                    .args([
                        "--target",
                        &conninfo,
                        "--log-line-prefix",
                        PREFIX,
                        "--speed",
                        speed,
                    ])
                    .arg(log),
            )
        })
    };
    let replay_theirs = |extra: &[&str], log: &Path| -> anyhow::Result<Replayed> {
        replayed(&target, || {
            let mut cmd = Command::new("pgreplay");
            cmd.arg("-h")
                .arg(&target.socket_dir)
                .args(["-p", &target.port.to_string()])
                .args(extra)
                .arg(log);
            timed(&mut cmd)
        })
    };
    // At the original pace: the same statements over the same time, so CPU compares.
    let mut paced_ours = vec![];
    let mut paced_theirs = vec![];
    for rep in 0..args.reps.min(3) {
        paced_ours.push(replay_ours("1", &base)?);
        paced_theirs.push(replay_theirs(&[], &base)?);
        eprintln!(
            "paced {}: pg_replay {} statements, pgreplay {}",
            rep + 1,
            paced_ours[rep as usize].statements,
            paced_theirs[rep as usize].statements
        );
    }
    // As fast as the server answers (pgreplay: -j skips idle time, -s its largest factor).
    let mut fast_ours = vec![];
    let mut fast_theirs = vec![];
    for _ in 0..args.reps.min(3) {
        fast_ours.push(replay_ours("max", &base)?);
        fast_theirs.push(replay_theirs(&["-j", "-s", PGREPLAY_FASTEST], &base)?);
    }
    eprintln!("replaying the {big_mb:.0} MB log with no pacing...");
    let whole = replay_ours("max", &big)?;

    let section = section(&Results {
        args,
        base_mb,
        big_mb,
        copies,
        parse_ours,
        parse_theirs,
        paced_ours,
        paced_theirs,
        fast_ours,
        fast_theirs,
        whole,
    });
    print!("{section}");
    report::write_section(&args.out, "pg_replay", &section)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

/// pgreplay's speed factor for "as fast as it goes" (it has no unbounded mode).
const PGREPLAY_FASTEST: &str = "1000";

/// A log of pgbench -S, simple then extended protocol, from a cluster that logs every
/// statement with its duration and every connection.
fn record_log(args: &Args, to: &Path) -> anyhow::Result<()> {
    let setting = |k: &str, v: &str| (k.to_string(), v.to_string());
    let pg = Postgres::start_with_pgbench(
        &PgOptions {
            settings: vec![
                setting("logging_collector", "on"),
                setting("log_destination", "stderr"),
                setting("log_filename", "pg"),
                setting("log_line_prefix", PREFIX),
                setting("lc_messages", "C"),
            ],
            ..Default::default()
        },
        10,
    )?;
    // Only now: pgbench -i's COPY would be in the log (pgreplay cannot replay it).
    // pgreplay reads statements from log_statement's lines only; the durations are ours.
    for set in [
        "log_statement = 'all'",
        "log_min_duration_statement = 0",
        "log_connections = on",
        "log_disconnections = on",
    ] {
        pg.psql(&format!("alter system set {set}"))?;
    }
    pg.psql("select pg_reload_conf()")?;
    std::thread::sleep(Duration::from_millis(500));
    let c = args.clients.to_string();
    let t = args.seconds.to_string();
    for mode in ["simple", "extended"] {
        pg.pgbench(&["-n", "-S", "-M", mode, "-c", &c, "-j", &c, "-T", &t])?;
    }
    // The collector writes behind.
    std::thread::sleep(Duration::from_secs(1));
    std::fs::copy(pg.dir.path().join("data/log/pg"), to).context("copying the server log")?;
    Ok(())
}

/// A log of at least `target_mb` made of copies of `base`, entry by entry interleaved (so
/// the time order holds), each copy's sessions renamed: the same load, as many times over.
fn make_big_log(base: &Path, to: &Path, target_mb: u64) -> anyhow::Result<u64> {
    let text = std::fs::read(base)?;
    // Entries: a message's line and the lines that continue it, which PostgreSQL writes
    // together: lines with a tab first, and DETAIL, HINT, STATEMENT, ... lines.
    let mut entries: Vec<&[u8]> = vec![];
    let mut start = 0;
    let mut at = 0;
    for line in text.split_inclusive(|b| *b == b'\n') {
        if at > start && !continues(line) {
            entries.push(&text[start..at]);
            start = at;
        }
        at += line.len();
    }
    entries.push(&text[start..]);
    let copies = (target_mb * 1_000_000)
        .div_ceil(text.len().max(1) as u64)
        .max(1);
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(to)?);
    for e in &entries {
        for copy in 0..copies {
            for line in e.split_inclusive(|b| *b == b'\n') {
                write_renamed(&mut out, line, copy)?;
            }
        }
    }
    out.flush()?;
    Ok(copies)
}

/// A line that belongs to the message before it.
fn continues(line: &[u8]) -> bool {
    if line.first() == Some(&b'\t') {
        return true;
    }
    // After the prefix's four fields.
    let rest = line.splitn(5, |b| *b == b'|').nth(4).unwrap_or_default();
    [
        "DETAIL:",
        "HINT:",
        "CONTEXT:",
        "STATEMENT:",
        "QUERY:",
        "LOCATION:",
    ]
    .iter()
    .any(|k| rest.starts_with(k.as_bytes()))
}

/// An entry with its session id (the fourth `|` field, `%c`: start time and pid in hex)
/// made unique to `copy`: the pid part gets `copy` above the 22 bits of Linux's largest pid
/// (pgreplay reads the id as two hex numbers).
fn write_renamed(out: &mut impl std::io::Write, entry: &[u8], copy: u64) -> std::io::Result<()> {
    let bars: Vec<usize> = entry
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'|')
        .map(|(i, _)| i)
        .take(4)
        .collect();
    let session = bars.get(2..4).and_then(|b| {
        let id = std::str::from_utf8(&entry[b[0] + 1..b[1]]).ok()?;
        let (time, pid) = id.split_once('.')?;
        Some((b[0] + 1, b[1], time, u64::from_str_radix(pid, 16).ok()?))
    });
    match session {
        Some((from, to, time, pid)) if copy > 0 => {
            out.write_all(&entry[..from])?;
            write!(out, "{time}.{:x}", pid + (copy << 22))?;
            out.write_all(&entry[to..])
        }
        _ => out.write_all(entry),
    }
}

/// What `/usr/bin/time` said of a run.
#[derive(Debug, Clone, Copy)]
struct Timed {
    wall_s: f64,
    cpu_s: f64,
    max_rss_kib: u64,
}

fn timed(cmd: &mut Command) -> anyhow::Result<Timed> {
    let report = tempfile::NamedTempFile::new()?;
    let program = cmd.get_program().to_owned();
    let argv: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%e %U %S %M", "-o"])
        .arg(report.path())
        .arg(&program)
        .args(&argv)
        .output()?;
    if !out.status.success() {
        bail!(
            "{} failed: {}\n{}",
            program.to_string_lossy(),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let line = std::io::BufReader::new(std::fs::File::open(report.path())?)
        .lines()
        .map_while(Result::ok)
        .last()
        .unwrap_or_default();
    let f: Vec<f64> = line
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let [wall_s, user, sys, rss] = f[..] else {
        bail!("unexpected /usr/bin/time output {line:?}");
    };
    Ok(Timed {
        wall_s,
        cpu_s: user + sys,
        max_rss_kib: rss as u64,
    })
}

/// A replay run and the statements the target's pg_stat_statements counted.
struct Replayed {
    run: Timed,
    statements: u64,
}

fn replayed(
    target: &Postgres,
    f: impl FnOnce() -> anyhow::Result<Timed>,
) -> anyhow::Result<Replayed> {
    target.psql("select pg_stat_statements_reset()")?;
    let run = f()?;
    let calls = target.psql(
        "select coalesce(sum(calls), 0) from pg_stat_statements \
         where query not like '%pg_stat_statements%'",
    )?;
    Ok(Replayed {
        run,
        statements: calls.trim().parse().context("pg_stat_statements calls")?,
    })
}

struct Results<'a> {
    args: &'a Args,
    base_mb: f64,
    big_mb: f64,
    copies: u64,
    parse_ours: Vec<Timed>,
    parse_theirs: Vec<Timed>,
    paced_ours: Vec<Replayed>,
    paced_theirs: Vec<Replayed>,
    fast_ours: Vec<Replayed>,
    fast_theirs: Vec<Replayed>,
    whole: Replayed,
}

fn med(v: impl Iterator<Item = f64>) -> f64 {
    report::median(&v.collect::<Vec<_>>())
}

fn section(r: &Results) -> String {
    let a = r.args;
    let mut s = format!(
        "<!-- bench:pg_replay -->\n## pg_replay\n\nMeasured {} on {} with `pgbpf-bench pg_replay \
         --reps {} --seconds {} --clients {} --log-mb {}`.\n\n",
        report::today(),
        report::machine(),
        a.reps,
        a.seconds,
        a.clients,
        a.log_mb
    );
    s += &format!(
        "The input: a stderr log (log_line_prefix `{PREFIX}`, the one pgreplay reads; \
         log_statement = 'all' for pgreplay, log_min_duration_statement = 0 for the original times, connections and disconnections logged) of pgbench -S \
         with {} clients, {} s over the simple protocol and {} s over the extended one: \
         {:.1} MB. The big log is {} copies of it, entry by entry interleaved with their \
         sessions renamed: {:.0} MB. Statements replayed are counted by the target's \
         pg_stat_statements. Debian's pgreplay {} is the peer.\n\n",
        a.clients,
        a.seconds,
        a.seconds,
        r.base_mb,
        r.copies,
        r.big_mb,
        pgreplay_version()
    );
    let parse = |v: &[Timed]| {
        let wall = med(v.iter().map(|t| t.wall_s));
        (
            wall,
            r.big_mb / wall,
            med(v.iter().map(|t| t.cpu_s)),
            med(v.iter().map(|t| t.max_rss_kib as f64)) / 1024.0,
        )
    };
    let (ow, omb, ocpu, orss) = parse(&r.parse_ours);
    let (tw, tmb, tcpu, trss) = parse(&r.parse_theirs);
    s += "| parsing the big log | median wall (s) | MB/s | CPU (s) | peak RSS (MiB) | all runs (s) |\n|---|---:|---:|---:|---:|---|\n";
    let runs = |v: &[Timed]| {
        v.iter()
            .map(|t| format!("{:.2}", t.wall_s))
            .collect::<Vec<_>>()
            .join(", ")
    };
    s += &format!(
        "| pg_replay --check | {ow:.2} | {omb:.0} | {ocpu:.2} | {orss:.1} | {} |\n",
        runs(&r.parse_ours)
    );
    s += &format!(
        "| pgreplay -f | {tw:.2} | {tmb:.0} | {tcpu:.2} | {trss:.1} | {} |\n\n",
        runs(&r.parse_theirs)
    );
    s += &format!(
        "pg_replay parses {:.1}× as fast as pgreplay on the clock, with {:.1}× less CPU \
         (pgreplay reads its input with millions of small reads: most of its time is in the \
         kernel).\n\n",
        omb / tmb,
        tcpu / ocpu
    );
    s += "| replay of the recorded log | statements (pg_stat_statements) | median wall (s) | statements/s | CPU per 10k statements (ms) | peak RSS (MiB) |\n|---|---:|---:|---:|---:|---:|\n";
    let row = |name: &str, v: &[Replayed]| {
        let stmts = med(v.iter().map(|x| x.statements as f64));
        let wall = med(v.iter().map(|x| x.run.wall_s));
        let cpu = med(v
            .iter()
            .map(|x| 1e4 * 1e3 * x.run.cpu_s / (x.statements.max(1) as f64)));
        let rss = med(v.iter().map(|x| x.run.max_rss_kib as f64)) / 1024.0;
        format!(
            "| {name} | {stmts:.0} | {wall:.2} | {:.0} | {cpu:.1} | {rss:.1} |\n",
            stmts / wall
        )
    };
    s += &row("pg_replay, original pace", &r.paced_ours);
    s += &row("pgreplay, original pace", &r.paced_theirs);
    s += &row("pg_replay --speed max", &r.fast_ours);
    s += &row(
        &format!("pgreplay -j -s {PGREPLAY_FASTEST}"),
        &r.fast_theirs,
    );
    s += "\n";
    let w = &r.whole;
    s += &format!(
        "The whole {:.0} MB log replayed by pg_replay with --speed max: {} statements in \
         {:.1} s ({:.0}/s), peak RSS {:.1} MiB (the recorded {:.1} MB log: {:.1} MiB).\n",
        r.big_mb,
        w.statements,
        w.run.wall_s,
        w.statements as f64 / w.run.wall_s,
        w.run.max_rss_kib as f64 / 1024.0,
        r.base_mb,
        med(r.fast_ours.iter().map(|x| x.run.max_rss_kib as f64)) / 1024.0
    );
    s += "<!-- /bench:pg_replay -->\n";
    s
}

fn pgreplay_version() -> String {
    let out = Command::new("pgreplay").arg("-v").output();
    out.ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            text.split_whitespace()
                .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))
                .map(str::to_string)
        })
        .unwrap_or_default()
}

fn mb(p: &Path) -> anyhow::Result<f64> {
    Ok(std::fs::metadata(p)?.len() as f64 / 1e6)
}

fn which(bin: &str) -> anyhow::Result<PathBuf> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {bin}"))
        .output()?;
    if !out.status.success() {
        return Err(anyhow!(
            "{bin} is not installed (scripts/setup.sh installs it)"
        ));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}
