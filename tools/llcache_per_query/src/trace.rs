//! Loads the programs, sets up where statements come from (debug_query_string, or the query
//! probes with --usdt), attaches one perf event per chosen event on every CPU, and drains the
//! kernel's sample maps into the report.

use std::time::Duration;

use anyhow::Context as _;
use aya::{
    maps::{Array, HashMap, MapData},
    programs::perf_event::SamplePolicy,
};
use llcache_per_query_ebpf::{SampleCounts, SampleKey};
use pgbpf_common::{
    loader::{self, Loaded},
    output::Output,
    postgres, query, query_probes,
    query_string::QueryAddrs,
    records::Scope,
    runtime::{Attached, Trace},
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

/// Parses the events, resolves the target, loads and attaches.
pub fn start<'a>(args: &'a Args, _out: &mut Output) -> anyhow::Result<Option<Attached<'a>>> {
    let events = events::parse(&args.events, args.period)?;
    let no_target = args.target.is_empty();
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
    // Before anything is loaded (after what the user named is found and privileges are
    // there): no PMU is the common failure in VMs, and it deserves one line.
    events::check_counters(&events)?;
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
        if read_query_string == 0 {
            query::keep_context(l);
        }
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
    let maps = SampleMaps::take(&mut loaded)?;
    Ok(Some(Attached {
        what: format!("Sampling {} of {}", list.join(", "), target.describe()),
        details: vec![source],
        started: loaded.started,
        watch: target.watched(),
        trace: Box::new(SampleTrace {
            reporter: Reporter::new(args, events),
            loaded,
            maps,
            statements,
        }),
    }))
}

/// The kernel sums samples in a map: drained every second and at each report.
struct SampleTrace {
    loaded: Loaded,
    maps: SampleMaps,
    statements: Statements,
    reporter: Reporter,
}

impl Trace for SampleTrace {
    fn drain_every(&self) -> Duration {
        DRAIN_EVERY
    }

    fn drain(&mut self, _out: &mut Output) -> anyhow::Result<()> {
        self.reporter.add(&self.maps.drain()?);
        if let Statements::QueryString(addrs) = &mut self.statements {
            addrs.locate_wanted(&mut self.loaded)?;
        }
        Ok(())
    }

    fn interval(&mut self, out: &mut Output) -> anyhow::Result<()> {
        Ok(self
            .reporter
            .report(out, Scope::Interval, &self.loaded.counters()?)?)
    }

    fn finish(&mut self, out: &mut Output) -> anyhow::Result<()> {
        Ok(self
            .reporter
            .report(out, Scope::Total, &self.loaded.counters()?)?)
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
        let a = HashMap::try_from(loaded.take_map("SAMPLES_A")?)?;
        let b = HashMap::try_from(loaded.take_map("SAMPLES_B")?)?;
        let active_switch = Array::try_from(loaded.take_map("ACTIVE")?)?;
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
