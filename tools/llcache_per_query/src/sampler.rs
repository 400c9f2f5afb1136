//! Loads the programs, sets up where statements come from (debug_query_string, or the query
//! probes with --usdt), attaches one perf event per chosen event on every CPU, and runs the
//! loop that drains the kernel's sample maps into the report.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use aya::{
    maps::{Array, HashMap, MapData},
    programs::perf_event::SamplePolicy,
};
use llcache_per_query_ebpf::{SampleCounts, SampleKey};
use pgbpf_common::{
    cli::{Tick, Ticker},
    loader::{self, Loaded},
    postgres, query_probes,
    query_string::QueryAddrs,
    target::Target,
};

use crate::{Args, events, report::Reporter};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/llcache_per_query"));

/// The kernel maps fill between drains: drain at least this often.
const DRAIN_EVERY: Duration = Duration::from_secs(1);

/// Where statements come from.
enum Statements {
    /// Each process's debug_query_string, read at the sample.
    QueryString(QueryAddrs),
    /// The query context kept by USDT probes (or PortalRun uprobes).
    Probes,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let events = events::parse(&args.events, args.period)?;
    // Before anything is loaded: no PMU is the common failure in VMs, and it deserves one line.
    events::check_counters(&events)?;
    let no_target = args.target.pids.is_empty()
        && args.target.container.is_none()
        && args.target.cgroup.is_none();
    // Without a target, postgres processes only: samples of anything else have no statement.
    let comm = args.comm.as_deref().or(no_target.then_some("postgres"));
    let mut target = Target::resolve(&args.target, comm)?;
    for &pid in &target.tgids {
        postgres::postgres_binary_of_pid(pid)?;
    }
    let probes = if args.usdt || args.uprobes {
        let (binary, root) = postgres::binary_for_target(&target, args.postgres.as_deref())?;
        let plan = if args.uprobes {
            query_probes::plan_uprobes(&binary, &root)?
        } else {
            query_probes::plan(&binary, &root, "llcache_per_query")?
        };
        Some((binary, plan))
    } else {
        None
    };
    loader::check_privileges()?;
    target.follow_descendants()?;
    let text_bytes = args.text_bytes;
    let read_query_string = u32::from(probes.is_none());
    let fork_child_offset = QueryAddrs::fork_child_offset()?;
    let mut loaded = loader::load("llcache_per_query", OBJECT, args.out.verbose, |l| {
        target.set_globals(l);
        l.override_global("PGBPF_QUERY_TEXT_MAX", &text_bytes, true)
            .override_global("TEXT_MAX", &text_bytes, true)
            .override_global("READ_QUERY_STRING", &read_query_string, true);
        QueryAddrs::set_globals(l, &fork_child_offset);
    })?;
    target.fill_maps(&mut loaded.ebpf)?;
    target.attach_fork_tracking(&mut loaded)?;
    let (statements, source) = match &probes {
        Some((binary, plan)) => {
            plan.attach(&mut loaded, "pg_probe", binary)?;
            let source = format!(
                "statements from {} {} sites in {}",
                plan.sites.len(),
                plan.source,
                binary.display()
            );
            (Statements::Probes, source)
        }
        None => {
            let (addrs, located) = QueryAddrs::start(&mut loaded, &target.processes_now())?;
            let source = format!("statements from debug_query_string, {located} processes located");
            (Statements::QueryString(addrs), source)
        }
    };
    for (slot, e) in events.iter().enumerate() {
        loaded.attach_perf_event_all_cpus(
            &format!("sample_{slot}"),
            e.kind.name,
            e.kind.perf_config(),
            SamplePolicy::Period(e.period),
        )?;
    }
    let list: Vec<String> = events
        .iter()
        .map(|e| format!("{} every {}", e.kind.name, e.period))
        .collect();
    eprintln!(
        "Sampling {} of {} ({source}, attached in {:.0} ms)... Hit Ctrl-C to end.",
        list.join(", "),
        target.describe(),
        loaded.startup_ms()
    );
    let mut reporter = Reporter::new(args, events);
    event_loop(args, &mut loaded, statements, &mut reporter)
}

fn event_loop(
    args: &Args,
    loaded: &mut Loaded,
    mut statements: Statements,
    reporter: &mut Reporter,
) -> anyhow::Result<()> {
    let mut maps = SampleMaps::take(loaded)?;
    let mut ticker = Ticker::start(&args.out)?;
    let mut last_drain = Instant::now();
    loop {
        let tick = ticker.next(Duration::from_millis(200));
        if tick != Tick::Idle || last_drain.elapsed() >= DRAIN_EVERY {
            reporter.add(&maps.drain()?);
            last_drain = Instant::now();
            if let Statements::QueryString(addrs) = &mut statements {
                addrs.locate_wanted(loaded)?;
            }
        }
        match tick {
            Tick::Idle => {}
            Tick::Interval => {
                if !reporter.interval(&loaded.counters()?) {
                    ticker.request_stop();
                }
            }
            Tick::Final => {
                reporter.summary(&loaded.counters()?);
                return Ok(());
            }
        }
    }
}

/// The two sample maps and the switch between them (see the kernel program's header).
struct SampleMaps {
    maps: [HashMap<MapData, SampleKey, SampleCounts>; 2],
    active_switch: Array<MapData, u32>,
    active: u32,
}

impl SampleMaps {
    fn take(loaded: &mut Loaded) -> anyhow::Result<SampleMaps> {
        let mut take = |name: &str| {
            loaded
                .ebpf
                .take_map(name)
                .with_context(|| format!("the eBPF object has no map {name}"))
        };
        let a = HashMap::try_from(take("SAMPLES_A")?)?;
        let b = HashMap::try_from(take("SAMPLES_B")?)?;
        let active_switch = Array::try_from(take("ACTIVE")?)?;
        Ok(SampleMaps {
            maps: [a, b],
            active_switch,
            active: 0,
        })
    }

    /// Points new samples at the other map, then empties the one that was in use and returns
    /// its contents.
    fn drain(&mut self) -> anyhow::Result<Vec<(SampleKey, SampleCounts)>> {
        let old = self.active as usize;
        self.active ^= 1;
        self.active_switch
            .set(0, &self.active, 0)
            .context("switching sample maps")?;
        // A perf_event program runs with interrupts off for a microsecond or so: one that read
        // the old switch value has long finished after this.
        std::thread::sleep(Duration::from_millis(2));
        let map = &mut self.maps[old];
        let entries: Vec<(SampleKey, SampleCounts)> = map.iter().filter_map(Result::ok).collect();
        for (key, _) in &entries {
            // Nothing writes this map now; a key that vanished is not an error worth stopping for.
            let _ = map.remove(key);
        }
        Ok(entries)
    }
}
