//! The events llcache_per_query can sample: names as `perf list` spells them, their perf
//! configuration, default sample periods, report columns, and the check that the machine has
//! the counters at all.

use anyhow::bail;
use aya::programs::perf_event::PerfEventConfig;
use llcache_per_query_ebpf::MAX_EVENTS;

/// perf_event_attr types and configs (include/uapi/linux/perf_event.h).
const PERF_TYPE_HARDWARE: u32 = 0;
const PERF_TYPE_SOFTWARE: u32 = 1;
const PERF_TYPE_HW_CACHE: u32 = 3;
const HW_CACHE_REFERENCES: u64 = 2;
const HW_CACHE_MISSES: u64 = 3;
/// PERF_TYPE_HW_CACHE config: cache id (DTLB 3) | op (read 0, write 1) << 8 | result (miss 1) << 16.
const DTLB_READ_MISS: u64 = 3 | 1 << 16;
const DTLB_WRITE_MISS: u64 = 3 | 1 << 8 | 1 << 16;
const SW_CPU_CLOCK: u64 = 0;
const SW_PAGE_FAULTS: u64 = 2;
const SW_CONTEXT_SWITCHES: u64 = 3;
const SW_CPU_MIGRATIONS: u64 = 4;

/// One event as the tool knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventKind {
    /// As `perf list` names it.
    pub name: &'static str,
    /// Column header in the report.
    pub column: &'static str,
    /// Title in the totals line.
    pub total_title: &'static str,
    /// Counted by the CPU's PMU (absent in most VMs).
    pub hardware: bool,
    /// Sample period when neither `-c` nor `NAME:N` gives one.
    pub default_period: u64,
    type_: u32,
    config: u64,
}

/// Every event, the default pair first. Hardware periods follow bcc's llcstat (one sample per
/// 100 events); software events other than cpu-clock are rare enough to count each one;
/// cpu-clock's period is nanoseconds of CPU time (1 ms).
pub const KNOWN: &[EventKind] = &[
    hw(
        "cache-references",
        "REFERENCE",
        "References",
        PERF_TYPE_HARDWARE,
        HW_CACHE_REFERENCES,
    ),
    hw(
        "cache-misses",
        "MISS",
        "Misses",
        PERF_TYPE_HARDWARE,
        HW_CACHE_MISSES,
    ),
    hw(
        "dTLB-load-misses",
        "DTLB_LOAD_MISS",
        "dTLB load misses",
        PERF_TYPE_HW_CACHE,
        DTLB_READ_MISS,
    ),
    hw(
        "dTLB-store-misses",
        "DTLB_STORE_MISS",
        "dTLB store misses",
        PERF_TYPE_HW_CACHE,
        DTLB_WRITE_MISS,
    ),
    sw(
        "cpu-migrations",
        "MIGRATIONS",
        "CPU migrations",
        SW_CPU_MIGRATIONS,
        1,
    ),
    sw(
        "context-switches",
        "CTX_SWITCHES",
        "Context switches",
        SW_CONTEXT_SWITCHES,
        1,
    ),
    sw(
        "page-faults",
        "PAGE_FAULTS",
        "Page faults",
        SW_PAGE_FAULTS,
        1,
    ),
    sw(
        "cpu-clock",
        "CPU_MS",
        "CPU ms",
        SW_CPU_CLOCK,
        CPU_CLOCK_DEFAULT_NS,
    ),
];

const CPU_CLOCK_DEFAULT_NS: u64 = 1_000_000;
/// The kernel raises shorter cpu-clock periods to 10 us (perf_swevent_init_hrtimer).
const CPU_CLOCK_MIN_NS: u64 = 10_000;

const fn hw(
    name: &'static str,
    column: &'static str,
    total_title: &'static str,
    type_: u32,
    config: u64,
) -> EventKind {
    EventKind {
        name,
        column,
        total_title,
        hardware: true,
        default_period: 100,
        type_,
        config,
    }
}

const fn sw(
    name: &'static str,
    column: &'static str,
    total_title: &'static str,
    config: u64,
    default_period: u64,
) -> EventKind {
    EventKind {
        name,
        column,
        total_title,
        hardware: false,
        default_period,
        type_: PERF_TYPE_SOFTWARE,
        config,
    }
}

impl EventKind {
    /// The event for aya: type and config as perf_event_open takes them.
    pub fn perf_config(&self) -> PerfEventConfig {
        PerfEventConfig::Pmu {
            pmu_type: self.type_,
            config: self.config,
        }
    }

    /// cpu-clock counts nanoseconds: its samples are shown as milliseconds of CPU time.
    pub fn is_cpu_clock(&self) -> bool {
        self.type_ == PERF_TYPE_SOFTWARE && self.config == SW_CPU_CLOCK
    }
}

/// An event chosen on the command line, with its sample period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub period: u64,
}

impl Event {
    /// What `samples` samples stand for: events, or for cpu-clock milliseconds of CPU.
    pub fn estimate(&self, samples: u64) -> f64 {
        let n = samples as f64 * self.period as f64;
        if self.kind.is_cpu_clock() { n / 1e6 } else { n }
    }
}

fn names() -> String {
    KNOWN.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
}

/// The events of `--event NAME[:PERIOD]` (default cache-references and cache-misses), with
/// `-c` as the period of those without their own.
pub fn parse(specs: &[String], period: Option<u64>) -> anyhow::Result<Vec<Event>> {
    let specs: Vec<&str> = if specs.is_empty() {
        vec!["cache-references", "cache-misses"]
    } else {
        specs.iter().map(String::as_str).collect()
    };
    let mut out: Vec<Event> = vec![];
    for spec in specs {
        let (name, own) = match spec.split_once(':') {
            Some((n, p)) => match p.parse::<u64>() {
                Ok(v) if v > 0 => (n, Some(v)),
                _ => bail!("--event {spec}: the period after ':' must be a positive number"),
            },
            None => (spec, None),
        };
        let Some(kind) = KNOWN.iter().find(|k| k.name.eq_ignore_ascii_case(name)) else {
            bail!("--event {name}: unknown event (known: {})", names());
        };
        if out.iter().any(|e| e.kind == *kind) {
            bail!("--event {}: given twice", kind.name);
        }
        let period = own.or(period).unwrap_or(kind.default_period);
        if kind.is_cpu_clock() && period < CPU_CLOCK_MIN_NS {
            bail!(
                "cpu-clock's sample period is in nanoseconds and the kernel's minimum is \
                 {CPU_CLOCK_MIN_NS}: use --event cpu-clock:N with N >= {CPU_CLOCK_MIN_NS} \
                 (default {CPU_CLOCK_DEFAULT_NS}, one sample per ms of CPU)"
            );
        }
        out.push(Event {
            kind: *kind,
            period,
        });
    }
    if out.len() > MAX_EVENTS {
        bail!("at most {MAX_EVENTS} events at once ({} given)", out.len());
    }
    Ok(out)
}

/// Fails with one line naming the cause when a hardware event cannot be counted here.
pub fn check_counters(events: &[Event]) -> anyhow::Result<()> {
    for e in events.iter().filter(|e| e.kind.hardware) {
        let Err(err) = pgbpf_common::perf::try_open_counter(e.kind.type_, e.kind.config) else {
            continue;
        };
        let no_counter = matches!(
            err.raw_os_error(),
            Some(libc::ENOENT | libc::EOPNOTSUPP | libc::ENODEV | libc::EINVAL)
        );
        if !no_counter {
            bail!("{}: perf_event_open failed: {err}", e.kind.name);
        }
        let why = if has_cpu_pmu() {
            "this CPU's PMU does not offer it"
        } else {
            "this machine has no hardware PMU, as most VMs"
        };
        bail!(
            "{} needs a hardware performance counter and {why} (perf_event_open: {err}): \
             try --event cpu-clock for CPU time per statement",
            e.kind.name
        );
    }
    Ok(())
}

/// A CPU PMU is registered ("cpu" on x86, "cpu_core"/"cpu_atom" on hybrid x86, "armv8_..."
/// and others on arm64: anything with a "cpus" or "type" besides the software ones).
fn has_cpu_pmu() -> bool {
    const NOT_CPU: &[&str] = &[
        "software",
        "tracepoint",
        "breakpoint",
        "uprobe",
        "kprobe",
        "msr",
    ];
    std::fs::read_dir("/sys/bus/event_source/devices")
        .map(|dir| {
            dir.flatten().any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                !NOT_CPU.contains(&name.as_str())
                    && (name.starts_with("cpu") || name.starts_with("armv") || name.contains("pmu"))
            })
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_of(events: &[Event]) -> Vec<(&str, u64)> {
        events.iter().map(|e| (e.kind.name, e.period)).collect()
    }

    #[test]
    fn defaults_are_llcstats_pair_every_100_events() {
        let e = parse(&[], None).unwrap();
        assert_eq!(
            names_of(&e),
            [("cache-references", 100), ("cache-misses", 100)]
        );
        let e = parse(&[], Some(5000)).unwrap();
        assert_eq!(
            names_of(&e),
            [("cache-references", 5000), ("cache-misses", 5000)]
        );
    }

    #[test]
    fn own_periods_and_defaults_per_event() {
        let specs: Vec<String> = [
            "cpu-clock",
            "page-faults",
            "dTLB-load-misses:50",
            "context-switches:2",
        ]
        .map(String::from)
        .into();
        let e = parse(&specs, None).unwrap();
        assert_eq!(
            names_of(&e),
            [
                ("cpu-clock", 1_000_000),
                ("page-faults", 1),
                ("dTLB-load-misses", 50),
                ("context-switches", 2)
            ]
        );
        assert!(!e[0].kind.hardware && e[2].kind.hardware);
        assert_eq!(e[0].estimate(250), 250.0, "250 samples of 1 ms = 250 ms");
        assert_eq!(e[2].estimate(3), 150.0);
    }

    #[test]
    fn bad_events_are_explained() {
        let err = |specs: &[&str], c: Option<u64>| {
            let specs: Vec<String> = specs.iter().map(|s| s.to_string()).collect();
            parse(&specs, c).unwrap_err().to_string()
        };
        assert!(
            err(&["l1-misses"], None)
                .contains("unknown event (known: cache-references, cache-misses")
        );
        assert!(err(&["cpu-clock:0"], None).contains("positive number"));
        assert!(err(&["cpu-clock:x"], None).contains("positive number"));
        assert!(err(&["cpu-clock"], Some(100)).contains("minimum is 10000"));
        assert!(err(&["page-faults", "page-faults:3"], None).contains("given twice"));
        let all: Vec<&str> = KNOWN.iter().map(|k| k.name).collect();
        assert!(parse(&all.iter().map(|s| s.to_string()).collect::<Vec<_>>(), None).is_ok());
    }

    #[test]
    fn dtlb_configs_match_perf() {
        // perf list: dTLB-load-misses = cache 3 (DTLB), op 0 (read), result 1 (miss).
        let load = KNOWN.iter().find(|k| k.name == "dTLB-load-misses").unwrap();
        assert_eq!((load.type_, load.config), (PERF_TYPE_HW_CACHE, 0x10003));
        let store = KNOWN
            .iter()
            .find(|k| k.name == "dTLB-store-misses")
            .unwrap();
        assert_eq!((store.type_, store.config), (PERF_TYPE_HW_CACHE, 0x10103));
        let refs = KNOWN.iter().find(|k| k.name == "cache-references").unwrap();
        assert_eq!((refs.type_, refs.config), (PERF_TYPE_HARDWARE, 2));
    }
}
