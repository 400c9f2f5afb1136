//! Finds the postgres binary's lwlock__wait__start/done sites, loads and attaches the probes,
//! and hands the ring buffer's waits to the report.

use std::time::Duration;

use anyhow::bail;
use aya::maps::{MapData, RingBuf};
use lwlocks_ebpf::{WaitEvent, counter, probe};
use pgbpf_common::{
    loader::{self, Loaded},
    output::Output,
    postgres,
    query_string::QueryAddrs,
    records::Scope,
    runtime::{Attached, Trace},
    target::Target,
    usdt,
};

use crate::{Args, report::Reporter};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lwlocks"));

/// The USDT probes attached, with the id the kernel program dispatches on.
const PROBES: [(&str, u32); 2] = [
    ("lwlock__wait__start", probe::WAIT_START),
    ("lwlock__wait__done", probe::WAIT_DONE),
];

/// Resolves the target, finds the probe sites, loads and attaches.
pub fn start<'a>(args: &'a Args, _out: &mut Output) -> anyhow::Result<Option<Attached<'a>>> {
    let mut target = Target::resolve(&args.target, None)?;
    let (binary, _root) = postgres::binary_for_target(&target, args.postgres.as_deref())?;
    for &pid in &target.tgids {
        postgres::postgres_binary_of_pid(pid)?;
    }
    let all = usdt::probes(&binary)?;
    let sites: Vec<(&usdt::UsdtProbe, u32)> = all
        .iter()
        .filter_map(|p| {
            let (_, id) = PROBES.iter().find(|(name, _)| p.name == *name)?;
            Some((p, *id))
        })
        .collect();
    if !PROBES
        .iter()
        .all(|(name, _)| sites.iter().any(|(p, _)| p.name == *name))
    {
        bail!(
            "{} has no USDT probes lwlock__wait__start/done (searched its .note.stapsdt: {} \
             probes); lwlocks needs a PostgreSQL built with --enable-dtrace, as Debian's and \
             Ubuntu's packages are",
            binary.display(),
            all.len()
        );
    }
    loader::check_privileges()?;
    // A postmaster's backends are its children, also those forked later.
    target.follow_descendants()?;
    let fork_child_offset = QueryAddrs::fork_child_offset()?;
    let mut loaded = loader::load("lwlocks", OBJECT, args.out.verbose, |l| {
        target.set_globals(l);
        QueryAddrs::set_globals(l, &fork_child_offset);
    })?;
    target.fill_maps(&mut loaded.ebpf)?;
    target.attach_fork_tracking(&mut loaded)?;
    // Statements are read at each wait from the process's debug_query_string.
    let (query_addrs, located) = QueryAddrs::start(&mut loaded, &target.processes_now())?;
    for (site, id) in &sites {
        loaded.attach_usdt("lwlock_probe", &binary, site, *id)?;
    }
    let ring = loaded.take_ring_buffer("EVENTS")?;
    Ok(Some(Attached {
        what: format!(
            "Tracing LWLock waits of {} in {}",
            target.describe(),
            binary.display()
        ),
        details: vec![
            format!("{} USDT sites", sites.len()),
            format!("{located} PostgreSQL processes located"),
        ],
        started: loaded.started,
        watch: target.roots(),
        trace: Box::new(WaitTrace {
            reporter: Reporter::new(args),
            loaded,
            ring,
            query_addrs,
        }),
    }))
}

/// Every wait is a ring buffer record.
struct WaitTrace {
    loaded: Loaded,
    ring: RingBuf<MapData>,
    reporter: Reporter,
    query_addrs: QueryAddrs,
}

impl WaitTrace {
    fn lost(&self) -> anyhow::Result<[u64; counter::COUNT as usize]> {
        self.loaded.counters()
    }
}

impl Trace for WaitTrace {
    fn wait(&mut self, timeout: Duration) {
        loader::wait_readable(&self.ring, timeout);
    }

    fn drain(&mut self, _out: &mut Output) -> anyhow::Result<()> {
        let reporter = &mut self.reporter;
        loader::drain_records(&mut self.ring, |ev: &WaitEvent| {
            reporter.event(ev);
            Ok::<(), std::convert::Infallible>(())
        })
        .unwrap_or_else(|never| match never {});
        // Processes met before they were located: their next waits carry the statement.
        self.query_addrs.locate_wanted(&mut self.loaded)
    }

    fn interval(&mut self, out: &mut Output) -> anyhow::Result<()> {
        let lost = self.lost()?;
        Ok(self.reporter.report(out, Scope::Interval, &lost)?)
    }

    fn finish(&mut self, out: &mut Output) -> anyhow::Result<()> {
        let lost = self.lost()?;
        Ok(self.reporter.report(out, Scope::Total, &lost)?)
    }

    fn objects(&self) -> Vec<&Loaded> {
        vec![&self.loaded]
    }
}
