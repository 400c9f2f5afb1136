//! Medians, ratios and the markdown section written to docs/PERFORMANCE.md.

use std::path::Path;

use crate::{
    Args,
    measure::{Samples, Variant},
    scenario::Scenario,
};

pub struct Results {
    /// The scenario: its section and command line.
    name: &'static str,
    /// The binary measured.
    tool: &'static str,
    /// A Redis scenario: rates are requests, and the added latency per request is told.
    redis: bool,
    description: &'static str,
    events: &'static str,
    reps: u32,
    seconds: u64,
    clients: u32,
    workload: &'static str,
    variants: Vec<Variant>,
    /// `--baseline DIR`, as the section names it.
    baseline: Option<String>,
    samples: Vec<Samples>,
    extra: String,
}

/// The median of `v` (mean of the middle two for an even count).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn label(v: Variant, tool: &str) -> String {
    match v {
        Variant::NoTracing => "no tracing".into(),
        Variant::Tool => tool.to_string(),
        Variant::Bpftrace => "bpftrace script".into(),
        Variant::Baseline => format!("{tool} (baseline)"),
    }
}

impl Results {
    pub fn new(
        s: &Scenario,
        args: &Args,
        variants: Vec<Variant>,
        samples: Vec<Samples>,
        extra: String,
    ) -> Results {
        Results {
            name: s.name,
            tool: s.tool,
            redis: matches!(s.server, crate::scenario::Setup::Redis { .. }),
            description: s.description,
            events: s.events_field,
            reps: args.reps,
            seconds: args.seconds,
            clients: args.clients,
            workload: s.workload,
            variants,
            baseline: args.baseline.as_ref().map(|d| d.display().to_string()),
            samples,
            extra,
        }
    }

    fn rows(&self) -> Vec<[String; 11]> {
        let base = median(&self.samples[0].tps);
        self.variants
            .iter()
            .zip(&self.samples)
            .map(|(&v, s)| {
                let tps = median(&s.tps);
                let rss: Vec<f64> = s.peak_rss_kib.iter().map(|&k| k as f64 / 1024.0).collect();
                let all: Vec<String> = s.tps.iter().map(|t| format!("{t:.0}")).collect();
                [
                    label(v, self.tool),
                    format!("{tps:.0}"),
                    format!("{:.3}", tps / base),
                    if s.cpu_us_per_txn.is_empty() {
                        "-".into()
                    } else {
                        format!("{:.1}", median(&s.cpu_us_per_txn))
                    },
                    if s.startup_ms.is_empty() {
                        "-".into()
                    } else {
                        format!("{:.0}", median(&s.startup_ms))
                    },
                    if rss.is_empty() {
                        "-".into()
                    } else {
                        format!("{:.1}", median(&rss))
                    },
                    if s.bpf_map_kib.is_empty() {
                        "-".into()
                    } else {
                        let maps: Vec<f64> =
                            s.bpf_map_kib.iter().map(|&k| k as f64 / 1024.0).collect();
                        format!("{:.1}", median(&maps))
                    },
                    if s.tracer_cpu_pct.is_empty() {
                        "-".into()
                    } else {
                        format!("{:.1}", median(&s.tracer_cpu_pct))
                    },
                    if s.bpf_ns_per_run.is_empty() {
                        "-".into()
                    } else {
                        format!("{:.0}", median(&s.bpf_ns_per_run))
                    },
                    if s.bpf_cpu_pct.is_empty() {
                        "-".into()
                    } else {
                        format!("{:.3}", median(&s.bpf_cpu_pct))
                    },
                    all.join(", "),
                ]
            })
            .collect()
    }

    /// For a Redis scenario: how much longer each client waited per request with the tool.
    fn added_latency_us(&self) -> Option<f64> {
        let (untraced, traced) = (median(&self.samples[0].tps), median(&self.samples[1].tps));
        (self.redis && untraced > 0.0 && traced > 0.0)
            .then(|| f64::from(self.clients) * (1.0 / traced - 1.0 / untraced) * 1e6)
    }

    /// The table printed at the end of a run.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "\n{}: load {}, {} clients, {} x {} s each\n",
            self.name, self.workload, self.clients, self.reps, self.seconds
        );
        for r in self.rows() {
            out.push_str(&format!(
                "  {:<16} median {:>8} tps  ratio {}  CPU {:>6} µs/txn  startup {:>5} ms  peak RSS {:>6} MiB  maps {:>6} MiB  tracer {:>5}% CPU  BPF {:>5} ns/run, {:>6}% CPU\n",
                r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9]
            ));
        }
        // The exporter prints no summary to count its events from.
        if !self.events.is_empty() {
            out.push_str(&format!(
                "  {} handled {:.0} {} per second\n",
                self.tool,
                median(&self.samples[1].events_per_s),
                self.events
            ));
        }
        if let Some(added) = self.added_latency_us() {
            out.push_str(&format!("  added latency per request {added:.2} µs\n"));
        }
        out
    }

    fn section(&self) -> String {
        let machine = machine();
        let mut s = format!("<!-- bench:{t} -->\n## {t}\n\n", t = self.name);
        s.push_str(&format!(
            "Measured {} on {machine} with `pgbpf-bench {} --reps {} --seconds {} --clients {}{}`.\n\n{}\n\n",
            today(),
            self.name,
            self.reps,
            self.seconds,
            self.clients,
            self.baseline
                .as_ref()
                .map(|d| format!(" --baseline {d}"))
                .unwrap_or_default(),
            self.description
        ));
        if !self.events.is_empty() {
            let rate = median(&self.samples[1].events_per_s);
            s.push_str(&format!(
                "While attached, {} handled a median of {rate:.0} {} per second",
                self.tool, self.events
            ));
            let lost = &self.samples[1].lost;
            if !lost.is_empty() {
                s.push_str(&format!(
                    " and lost {:.0} events in all runs together",
                    lost.iter().sum::<f64>()
                ));
            }
            s.push_str(".\n\n");
        }
        if let Some(dir) = &self.baseline {
            s.push_str(&format!(
                "**{} (baseline)** is the same tool from `{dir}` (`--baseline`, an earlier build), \
                 in the same interleaved repetitions.\n\n",
                self.tool
            ));
        }
        if let Some(added) = self.added_latency_us() {
            s.push_str(&format!(
                "Added latency per request: {added:.2} µs (clients × (1 / traced rate − 1 / \
                 untraced rate), medians: the time each client waited longer per request; the seed's \
                 article puts its tracer's at about 17 µs).\n\n"
            ));
        }
        s.push_str(&self.extra);
        s.push_str("| variant | median TPS | ratio to no tracing | CPU per transaction (µs) | startup to attached (ms) | peak RSS (MiB) | BPF map memory (MiB) | tracer CPU (% of one core) | BPF ns per run | BPF CPU (% of one core) | all runs (TPS) |\n");
        s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
        for r in self.rows() {
            s.push_str(&format!("| {} |\n", r.join(" | ")));
        }
        s.push_str(&format!("<!-- /bench:{} -->\n", self.name));
        s
    }

    /// Replaces this tool's section of `path` (creating the file with the method if needed).
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        write_section(path, self.name, &self.section())
    }
}

/// Replaces the section `name` of `path` (between its `<!-- bench:NAME -->` markers) with
/// `section`, or appends it; the file is created with the method if needed.
pub fn write_section(path: &Path, name: &str, section: &str) -> anyhow::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| METHOD.to_string());
    let start = format!("<!-- bench:{name} -->");
    let end = format!("<!-- /bench:{name} -->\n");
    let new = match (old.find(&start), old.find(&end)) {
        (Some(a), Some(b)) if b > a => {
            format!("{}{}{}", &old[..a], section, &old[b + end.len()..])
        }
        _ => format!("{}\n{}", old.trim_end(), "\n") + section,
    };
    std::fs::write(path, new)?;
    Ok(())
}

const METHOD: &str = "# Performance

Written by `bench/` (`pgbpf-bench TOOL`); not part of the test suite. These machines are
noisy, so every number comes from one run in which the variants alternate: each repetition
runs pgbench (-S unless the section says otherwise) once with no tracing, once with the
pgbpf tool attached and once with the equivalent bpftrace script attached, rotating the
order from one repetition to the next. The tables give the median over the repetitions and
every run's TPS, so the spread is visible.

- **ratio to no tracing**: median TPS of the variant / median TPS with no tracing.
- **startup to attached**: from spawning the tracer to its line saying it is attached (the
  pgbpf tools print it after the last hook is attached; the bpftrace scripts print it from
  `BEGIN`, which runs after bpftrace has attached its probes).
- **peak RSS**: VmHWM of the tracer process at the end of its run.
- **tracer CPU**: user and system time of the tracer process itself (decoding, aggregating,
  printing) over the pgbench run, as a share of one CPU (/proc/PID/stat).
- **BPF ns per run** and **BPF CPU**: the kernel's own accounting of the tracer's BPF
  programs (`kernel.bpf_stats_enabled`, run time and run count of every program the tracer
  loaded): the in-kernel cost per hook invocation, and that time as a share of one CPU over
  the run. Unlike TPS, these do not drown in the machine's noise. The accounting itself
  costs time in every program run, so it is off during the repetitions above and on for one
  extra run of each tracer after them: those runs give these two columns and no TPS.
";

pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{cores} cores, Linux {kernel}")
}

pub fn today() -> String {
    let out = std::process::Command::new("date").arg("+%Y-%m-%d").output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
