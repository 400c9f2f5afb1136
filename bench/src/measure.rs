//! Runs the interleaved repetitions and collects TPS, startup time and peak RSS per variant.

use std::{
    collections::HashSet,
    process::Command,
    time::{Duration, Instant},
};

use aya::programs::loaded_programs;

use anyhow::{Context as _, anyhow, bail};
use pgbpf_testkit::{postgres::Postgres, redis::Redis, tool::Traced};

use crate::{Args, report, scenario, server::Server};

/// What runs beside pgbench.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    NoTracing,
    Tool,
    Bpftrace,
    /// The tool from `--baseline DIR`.
    Baseline,
}

/// The variants of a run: always the first three, the baseline build with `--baseline`.
pub fn variants(args: &Args) -> Vec<Variant> {
    let mut v = vec![Variant::NoTracing, Variant::Tool, Variant::Bpftrace];
    if args.baseline.is_some() {
        v.push(Variant::Baseline);
    }
    v
}

/// The samples of one variant.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    pub tps: Vec<f64>,
    /// Server and load generator CPU per transaction, µs (see `Run`).
    pub cpu_us_per_txn: Vec<f64>,
    pub startup_ms: Vec<f64>,
    pub peak_rss_kib: Vec<u64>,
    /// Events per second the tool reported handling (its `--json` summary).
    pub events_per_s: Vec<f64>,
    /// Kernel-side cost of the tracer's BPF programs (kernel.bpf_stats): ns per program run.
    pub bpf_ns_per_run: Vec<f64>,
    /// ... and the share of one CPU they used over the run, in percent.
    pub bpf_cpu_pct: Vec<f64>,
    /// The tracer's own CPU time over each run, in percent of one core.
    pub tracer_cpu_pct: Vec<f64>,
    /// What the tool's summary counted as lost (its `lost` object, bytes left out).
    pub lost: Vec<f64>,
    /// Memory the kernel charges for the tracer's BPF maps while attached, KiB.
    pub bpf_map_kib: Vec<u64>,
}

/// Run time and run count of the BPF programs loaded since `before` was taken.
fn bpf_cost(before: &HashSet<u32>) -> (Duration, u64) {
    loaded_programs()
        .flatten()
        .filter(|p| !before.contains(&p.id()))
        .fold((Duration::ZERO, 0), |(t, n), p| {
            (t + p.run_time(), n + p.run_count())
        })
}

fn program_ids() -> HashSet<u32> {
    loaded_programs().flatten().map(|p| p.id()).collect()
}

pub fn run(args: &Args, name: &str) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmark attaches BPF programs and starts containers: run it as root");
    }
    let scenario = scenario::find(name).ok_or_else(|| anyhow!("no scenario for {name}"))?;
    let tool_bin = args.bin_dir.join(scenario.tool);
    let baseline_bin = args.baseline.as_ref().map(|d| d.join(scenario.tool));
    for bin in std::iter::once(&tool_bin).chain(&baseline_bin) {
        if !bin.exists() {
            bail!(
                "{} not found: build it first (cargo build --release)",
                bin.display()
            );
        }
    }
    let variants = variants(args);
    let bins = Bins {
        tool: &tool_bin,
        baseline: baseline_bin.as_deref(),
    };
    which("bpftrace")?;

    let pg = match scenario.server {
        scenario::Setup::Redis { tls } => {
            eprintln!("starting redis-server...");
            Server::Redis(if tls {
                Redis::start_tls()?
            } else {
                Redis::start()?
            })
        }
        scenario::Setup::Postgres { pg, scale } => {
            eprintln!("starting PostgreSQL and loading pgbench scale {scale}...");
            let pg = Postgres::start_with(&pg())?;
            pg.pgbench(&["-i", "-s", &scale.to_string(), "-q"])?;
            Server::Postgres(pg)
        }
    };
    let tool_args = (scenario.tool_args)(&pg)?;
    let script = tempfile_with((scenario.bpftrace)(&pg)?)?;
    eprintln!("warming up...");
    pg.load(args, scenario.workload, 5)?;

    let mut samples = vec![Samples::default(); variants.len()];
    for rep in 0..args.reps as usize {
        for i in 0..variants.len() {
            let v = (rep + i) % variants.len(); // rotate the order each repetition
            let run = run_variant(&pg, args, scenario, &bins, &tool_args, &script, variants[v])?;
            let s = &mut samples[v];
            s.tps.push(run.tps);
            s.cpu_us_per_txn.extend(run.cpu_us_per_txn);
            if let Some(t) = run.tracer {
                s.startup_ms.push(t.startup_ms);
                s.peak_rss_kib.extend(t.peak_rss_kib);
                s.tracer_cpu_pct.extend(t.cpu_pct);
                s.events_per_s.extend(t.events_per_s);
                s.lost.extend(t.lost);
                s.bpf_map_kib.extend(t.bpf_map_kib);
            }
            eprintln!(
                "rep {}/{} {:?}: {:.0} tps",
                rep + 1,
                args.reps,
                variants[v],
                run.tps
            );
        }
    }
    // The kernel's accounting of BPF run time costs time in every program run itself, so it
    // is on only for one more run of each tracer, after the TPS repetitions.
    {
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("enabling BPF run-time stats")?;
        for (&v, s) in variants.iter().zip(samples.iter_mut()) {
            if v == Variant::NoTracing {
                continue;
            }
            let run = run_variant(&pg, args, scenario, &bins, &tool_args, &script, v)?;
            // A BpfCost exists only with runs > 0.
            if let Some(bpf) = run.tracer.as_ref().and_then(|t| t.bpf) {
                s.bpf_ns_per_run
                    .push(bpf.time.as_nanos() as f64 / bpf.runs as f64);
                s.bpf_cpu_pct
                    .push(100.0 * bpf.time.as_secs_f64() / bpf.over.as_secs_f64());
            }
            eprintln!("BPF run-time stats {v:?}: {:.0} tps", run.tps);
        }
    }
    let extra = match scenario.extra {
        Some(f) => f(&pg, args, &tool_bin, scenario)?,
        None => String::new(),
    };
    let results = report::Results::new(scenario, args, variants, samples, extra);
    print!("{}", results.summary());
    results.write(&args.out)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

/// One pgbench run beside variant `v`, and what the tracer reported.
struct Run {
    tps: f64,
    /// CPU time of the server and the load generator per transaction (or request), µs:
    /// where a tracer's probes and programs run, and far steadier than TPS on a shared VM.
    cpu_us_per_txn: Option<f64>,
    tracer: Option<TracerRun>,
}

struct TracerRun {
    startup_ms: f64,
    peak_rss_kib: Option<u64>,
    /// The tracer process's own CPU time (user + system) over the pgbench run.
    cpu_pct: Option<f64>,
    events_per_s: Option<f64>,
    lost: Option<f64>,
    /// Run time and runs of the tracer's BPF programs, when kernel.bpf_stats is on.
    bpf: Option<BpfCost>,
    bpf_map_kib: Option<u64>,
}

#[derive(Clone, Copy)]
struct BpfCost {
    time: Duration,
    runs: u64,
    /// The wall-clock time they were counted over.
    over: Duration,
}

/// The tool binaries a run measures.
struct Bins<'a> {
    tool: &'a std::path::Path,
    baseline: Option<&'a std::path::Path>,
}

fn run_variant(
    pg: &Server,
    args: &Args,
    scenario: &scenario::Scenario,
    bins: &Bins,
    tool_args: &[String],
    script: &tempfile::NamedTempFile,
    v: Variant,
) -> anyhow::Result<Run> {
    let programs_before = program_ids();
    let tool = |bin: &std::path::Path| {
        let mut cmd = Command::new(bin);
        cmd.args(tool_args);
        if scenario.is_exporter() {
            Traced::start_until(&mut cmd, scenario::EXPORTER_READY)
        } else {
            Traced::start_until(cmd.arg("--json"), pgbpf_testkit::tool::ATTACHED)
        }
    };
    let tracer = match v {
        Variant::NoTracing => None,
        Variant::Tool => Some(tool(bins.tool)?),
        Variant::Baseline => Some(tool(bins.baseline.context("no baseline build")?)?),
        Variant::Bpftrace => Some(Traced::start_until(
            Command::new("bpftrace")
                .arg("--usdt-file-activation")
                .arg(script.path()),
            pgbpf_testkit::tool::ATTACHED,
        )?),
    };
    let cpu_before = tracer.as_ref().and_then(|t| cpu_seconds(t.pid()));
    // Backends of the run before (or of the warm-up) end after their clients: give the
    // postmaster time to reap them before the count starts, and again after the run.
    std::thread::sleep(Duration::from_millis(300));
    let (server_before, client_before) = (pg.cpu_seconds(), children_cpu_seconds());
    let ran_from = Instant::now();
    let tps = pg.load(args, scenario.workload, args.seconds)?;
    std::thread::sleep(Duration::from_millis(300));
    let cpu_us_per_txn = server_before
        .zip(pg.cpu_seconds())
        .map(|(a, b)| b - a + children_cpu_seconds() - client_before)
        .filter(|_| tps > 0.0)
        .map(|cpu| 1e6 * cpu / (tps * args.seconds as f64));
    let Some(t) = tracer else {
        return Ok(Run {
            tps,
            cpu_us_per_txn,
            tracer: None,
        });
    };
    let cpu_pct = cpu_before
        .zip(cpu_seconds(t.pid()))
        .map(|(a, b)| 100.0 * (b - a) / ran_from.elapsed().as_secs_f64());
    // Read before the tracer exits and its programs are unloaded (0 runs: stats are off).
    let (time, runs) = bpf_cost(&programs_before);
    let bpf = (runs > 0).then(|| BpfCost {
        time,
        runs,
        over: ran_from.elapsed(),
    });
    let startup_ms = t.startup.as_secs_f64() * 1e3;
    let peak_rss_kib = t.peak_rss_kib();
    let bpf_map_kib = bpf_map_bytes(t.pid()).map(|b| b / 1024);
    let out = t.stop()?;
    if !out.status.success() {
        bail!("{v:?} exited with {}: {}", out.status, out.stderr);
    }
    // The baseline build's records may be of another vocabulary: only TPS and costs count.
    let (mut events_per_s, mut lost) = (None, None);
    if v == Variant::Tool && !scenario.is_exporter() {
        let records = out.json();
        events_per_s = Some(events_per_second(&records, scenario.events_field)?);
        lost = Some(lost_in(summary_of(&records)?));
    }
    Ok(Run {
        tps,
        cpu_us_per_txn,
        tracer: Some(TracerRun {
            startup_ms,
            peak_rss_kib,
            cpu_pct,
            events_per_s,
            lost,
            bpf,
            bpf_map_kib,
        }),
    })
}

/// The memory the kernel charges for process `pid`'s BPF maps (the `memlock` of each map
/// descriptor it holds, /proc/PID/fdinfo): what its maps cost, used or not.
fn bpf_map_bytes(pid: u32) -> Option<u64> {
    let maps = pgbpf_common::map_memory::maps_of(pid)?;
    Some(maps.iter().map(|m| m.bytes).sum())
}

/// User + system CPU seconds of process `pid` so far (/proc/PID/stat utime and stime).
fn cpu_seconds(pid: u32) -> Option<f64> {
    stat_cpu_seconds(pid, false)
}

/// User + system CPU seconds of process `pid` so far, with `children` those of its children
/// that exited and were waited for (cutime, cstime: a postmaster's backends once they end).
pub fn stat_cpu_seconds(pid: u32, children: bool) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may itself hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime, stime, cutime and cstime are fields 14 to 17 of the line, 12 to 15 after the name.
    let last = if children { 14 } else { 12 };
    let mut ticks = 0.0;
    for f in fields.get(11..=last)? {
        ticks += f.parse::<f64>().ok()?;
    }
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    Some(ticks / hz as f64)
}

/// CPU seconds of this process's children that exited and were waited for (the load
/// generator, once its run is over).
fn children_cpu_seconds() -> f64 {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN);
    usage.map_or(0.0, |u| {
        let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
        t(u.user_time()) + t(u.system_time())
    })
}

/// The tool's final record, `"type": "summary"`.
fn summary_of(records: &[serde_json::Value]) -> anyhow::Result<&serde_json::Value> {
    records
        .iter()
        .rfind(|r| r["type"] == "summary")
        .ok_or_else(|| anyhow!("the tool printed no summary record"))
}

/// Everything the summary's `lost` object counts (events, records, samples; not bytes).
fn lost_in(summary: &serde_json::Value) -> f64 {
    summary["lost"].as_object().map_or(0.0, |lost| {
        lost.iter()
            .filter(|(cause, _)| !cause.ends_with("bytes"))
            .filter_map(|(_, n)| n.as_f64())
            .sum()
    })
}

fn events_per_second(records: &[serde_json::Value], field: &str) -> anyhow::Result<f64> {
    let summary = summary_of(records)?;
    let events = summary[field]
        .as_f64()
        .ok_or_else(|| anyhow!("summary has no {field}"))?;
    let secs = (summary["interval_ns"].as_f64().unwrap_or(1e9) / 1e9).max(0.001);
    Ok(events / secs)
}

fn which(bin: &str) -> anyhow::Result<()> {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {bin}"))
        .output()?
        .status
        .success();
    if !ok {
        bail!("{bin} is not installed (scripts/setup.sh installs it)");
    }
    Ok(())
}

fn tempfile_with(text: String) -> anyhow::Result<tempfile::NamedTempFile> {
    use std::io::Write as _;
    let mut f = tempfile::Builder::new()
        .suffix(".bt")
        .tempfile()
        .context("temp file")?;
    f.write_all(text.as_bytes())?;
    f.flush()?;
    Ok(f)
}

/// pgwire_trace only: records a capture under the same load, then times `--read` of it.
pub fn decoder_throughput(
    server: &Server,
    args: &Args,
    tool_bin: &std::path::Path,
    scenario: &scenario::Scenario,
) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("bench.pgw");
    let tracer = Traced::start_until(
        Command::new(tool_bin)
            .args((scenario.tool_args)(server)?)
            .arg("--record")
            .arg(&file),
        pgbpf_testkit::tool::ATTACHED,
    )?;
    server.load(args, scenario.workload, args.seconds)?;
    tracer.stop()?;
    let bytes = std::fs::metadata(&file)?.len();
    let mb = bytes as f64 / 1e6;
    // On every core (the tool shares a summary's connections among threads), then on one
    // (taskset): the wall-clock time of each, alternating, and the CPU time of the first.
    let (mut every, mut one, mut cpu) = (vec![], vec![], vec![]);
    for _ in 0..3 {
        for single in [false, true] {
            let mut c = if single {
                let mut c = Command::new("taskset");
                c.args(["-c", "0"]).arg(tool_bin);
                c
            } else {
                Command::new(tool_bin)
            };
            let t = Instant::now();
            let before = children_cpu_seconds();
            let out = c.args(["--summary", "--read"]).arg(&file).output()?;
            if !out.status.success() {
                bail!("--read failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let s = t.elapsed().as_secs_f64();
            if single {
                one.push(s);
            } else {
                every.push(s);
                cpu.push(children_cpu_seconds() - before);
            }
        }
    }
    let (every, one, cpu) = (
        report::median(&every),
        report::median(&one),
        report::median(&cpu),
    );
    eprintln!("decoder: {mb:.1} MB in {every:.3} s ({one:.3} s on one core)");
    Ok(format!(
        "Decoder throughput: `{} --read --summary` of a {mb:.1} MB capture recorded under the \
         same load (records, framing, decoding, pairing and aggregation), medians of 3 runs: \
         {:.0} MB/s in {:.0} ms on the {} cores it was given ({:.0} ms of CPU), {:.0} MB/s in \
         {:.0} ms on one (`taskset -c 0`).\n\n",
        scenario.tool,
        mb / every,
        every * 1e3,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu * 1e3,
        mb / one,
        one * 1e3,
    ))
}

/// pgbpf_exporter only: what each collector's programs cost, from the exporter's own
/// self-metrics (`pgbpf_bpf_program_run_seconds_total` by collector) over one more run.
pub fn exporter_collectors(
    server: &Server,
    args: &Args,
    tool_bin: &std::path::Path,
    scenario: &scenario::Scenario,
) -> anyhow::Result<String> {
    let tool_args = (scenario.tool_args)(server)?;
    let listen = tool_args
        .iter()
        .skip_while(|a| *a != "--listen")
        .nth(1)
        .context("the exporter scenario gives --listen")?
        .clone();
    let exporter = Traced::start_until(
        Command::new(tool_bin).args(&tool_args),
        scenario::EXPORTER_READY,
    )?;
    let ran_from = Instant::now();
    let tps = server.load(args, scenario.workload, args.seconds)?;
    let over = ran_from.elapsed().as_secs_f64();
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "10"])
        .arg(format!("http://{listen}/metrics"))
        .output()?;
    exporter.stop()?;
    if !out.status.success() {
        bail!("scraping the exporter failed");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut rows = String::new();
    // The collectors that ran, as the exporter lists them.
    let collectors = text
        .lines()
        .filter_map(|l| l.strip_prefix("pgbpf_collector_up{collector=\""))
        .filter_map(|l| l.split_once('"').map(|(name, _)| name));
    for collector in collectors {
        let label = format!("collector=\"{collector}\"");
        let sum = |name: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(name) && l.contains(&label))
                .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                .sum()
        };
        let seconds = sum("pgbpf_bpf_program_run_seconds_total");
        let runs = sum("pgbpf_bpf_program_runs_total");
        rows.push_str(&format!(
            "| {collector} | {runs:.0} | {} | {:.3} % |\n",
            if runs > 0.0 {
                format!("{:.0}", seconds * 1e9 / runs)
            } else {
                "-".into()
            },
            100.0 * seconds / over
        ));
    }
    Ok(format!(
        "Per collector, from the exporter's own pgbpf_bpf_program_run_seconds_total and \
         pgbpf_bpf_program_runs_total over one more {}-second run ({tps:.0} TPS):\n\n\
         | collector | program runs | ns per run | in-kernel CPU (% of one core) |\n\
         |---|---:|---:|---:|\n{rows}\n",
        args.seconds
    ))
}
