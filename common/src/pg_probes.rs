//! The life of a tool whose kernel programs are PostgreSQL's own USDT probes and whose events
//! come through one ring buffer (lwlocks, locks): the target resolved, the postgres binary's
//! probe sites found, the object loaded with the target filter and the statement reading
//! (`debug_query_string`), one program attached at every site, and a [`Trace`] handing each
//! record to the tool's report. A tool supplies its object, probes and a [`ProbeReport`].
//! A tool on other hooks (cpu_wait's scheduler tracepoints) loads and attaches itself and
//! hands its ring buffer to the same [`record_trace`].

use std::{io, path::Path, time::Duration};

use aya::maps::{MapData, RingBuf};

use crate::{
    loader::{self, Loaded},
    output::Output,
    postgres,
    query_string::QueryAddrs,
    records::Scope,
    runtime::{Attached, Trace},
    stacks::{self, Stacks},
    target::{Target, TargetArgs},
    usdt,
};

/// What a tool does with its ring buffer's records.
pub trait ProbeReport: Send + 'static {
    /// The kernel's record.
    type Event: aya::Pod;
    /// The shortest record the kernel sends (one without its text tail, read as zeros).
    const MIN_LEN: usize = std::mem::size_of::<Self::Event>();
    /// One record (printed at once with `--each`, or only counted).
    fn event(&mut self, out: &mut Output, e: &Self::Event) -> io::Result<()>;
    /// The report of an interval or of the whole run; `kernel`: the COUNTERS map.
    fn report(&mut self, out: &mut Output, scope: Scope, kernel: &[u64]) -> io::Result<()>;
    /// The stacks of the records' stack ids, given once after load when the tool asked for
    /// them ([`Probes::stacks`]).
    fn take_stacks(&mut self, _stacks: Stacks) {}
    /// Once after load: takes the maps the report reads itself (summed in the kernel).
    fn take_maps(&mut self, _loaded: &mut Loaded) -> anyhow::Result<()> {
        Ok(())
    }
    /// Once at attach: the target's processes at that moment.
    fn processes(&mut self, _pids: &[u32]) {}
    /// A restarted server among these processes is ready (see
    /// [`Trace::server_ready`](crate::runtime::Trace::server_ready)): for a report that
    /// learned something of the processes at attach to learn it of these too. Nothing by
    /// default.
    fn server_ready(&mut self, _pids: &[u32]) {}
}

/// A tool's probes: which, and with which program.
pub struct Probes<'a> {
    pub tool: &'static str,
    /// The eBPF object (`aya::include_bytes_aligned!`).
    pub object: &'static [u8],
    /// The uprobe program attached at every site.
    pub program: &'static str,
    /// USDT probe names with the id the program dispatches on.
    pub probes: &'a [(&'static str, u32)],
    /// "LWLock waits", "lock waits": what the attach line says is traced.
    pub what: &'static str,
    /// Which stacks the programs take (`pgbpf_common_ebpf::stacks::mode` bits; 0: none).
    pub stacks: u32,
    /// Maps sized at load (those of options not given: one entry).
    pub map_sizes: &'a [(&'static str, u32)],
    /// The tool's own globals set at load (working_set's sampling period).
    pub globals: &'a [(&'static str, u32)],
    /// Variables or functions the binary must export, with what is missing without them
    /// ("pgWalUsage", "PostgreSQL 13 or later is needed").
    pub required_symbols: &'a [(&'static str, &'static str)],
    /// Attaches the tool's hooks other than the USDT sites (net_per_query's socket
    /// tracepoints), after them; says what it attached, for the attach line. Such hooks fire
    /// in every process: with them and no pid or cgroup given, the target is the processes
    /// named after the binary (the USDT sites fire in the binary's processes only; without a
    /// target, the socket calls of every process of the machine were counted).
    pub attach_more: Option<fn(&mut Loaded) -> anyhow::Result<String>>,
}

/// Hands the stack map to `report` when stacks were asked for (`mode` bits, as given to
/// [`stacks::configure`] at load).
pub fn hand_stacks<R: ProbeReport>(
    report: &mut R,
    loaded: &mut Loaded,
    mode: u32,
) -> anyhow::Result<()> {
    if mode != 0 {
        report.take_stacks(Stacks::take(loaded)?);
    }
    Ok(())
}

/// Slots of the COUNTERS map read for the report: all of them.
const COUNTERS: usize = 32; // pgbpf_common_ebpf::counters::SLOTS (a kernel-only module)

/// What the kernel side of a probe tool could not count: its COUNTERS slots 0 (a record that
/// did not fit in the ring buffer) and 1 (a wait whose start could not be kept), the same in
/// every such tool.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct Lost {
    /// The ring buffer was full.
    pub ringbuf_full: u64,
    /// Too many waits in progress at once to remember their start.
    pub waiting_full: u64,
    /// Stacks the kernel could not store (`--stack`; null without it).
    pub stacks: Option<u64>,
}

impl Lost {
    /// From the COUNTERS map, and the stacks when the tool takes them.
    pub fn from_counters(kernel: &[u64], stacks: Option<&Stacks>) -> Lost {
        Lost {
            ringbuf_full: kernel.first().copied().unwrap_or(0),
            waiting_full: kernel.get(1).copied().unwrap_or(0),
            stacks: stacks.map(|s| s.lost),
        }
    }

    /// The report's last line.
    pub fn line(&self) -> String {
        let stacks = self
            .stacks
            .map(|n| format!(", {n} stacks (the kernel did not store them)"))
            .unwrap_or_default();
        format!(
            "lost: {} events (ring buffer full), {} waits (too many at once){stacks}\n\n",
            self.ringbuf_full, self.waiting_full
        )
    }
}

/// Resolves the target, finds the sites, loads and attaches; the tool's `report` gets every
/// record.
pub fn start<'a, R: ProbeReport>(
    p: &Probes<'_>,
    target_args: &TargetArgs,
    postgres_path: Option<&Path>,
    verbose: bool,
    mut report: R,
) -> anyhow::Result<Option<Attached<'a>>> {
    let mut target = Target::resolve(target_args, None)?;
    let (binary, root) = postgres::binary_for_target(&target, postgres_path)?;
    if p.attach_more.is_some() && target_args.is_empty() {
        // Processes named after the binary (postgres, postmaster, ...; the kernel keeps 15
        // bytes of it), as the target without pid or cgroup.
        let name = binary.file_name().map(|n| n.to_string_lossy().into_owned());
        let name: String = name.unwrap_or_default().chars().take(15).collect();
        target = Target::resolve(target_args, Some(&name))?;
    }
    if !p.required_symbols.is_empty() {
        let symbols = crate::elf::Symbols::open(&binary, &root)?;
        for (name, needed) in p.required_symbols {
            if symbols.address(name)?.is_none() {
                anyhow::bail!("{} has no {name} ({needed})", binary.display());
            }
        }
    }
    for &pid in &target.tgids {
        postgres::postgres_binary_of_pid(pid)?;
    }
    let sites = usdt::sites(&binary, p.probes, p.tool)?;
    loader::check_privileges()?;
    // A postmaster's backends are its children, also those forked later.
    target.follow_descendants()?;
    let fork_child_offset = QueryAddrs::fork_child_offset()?;
    let mut loaded = loader::load(p.tool, p.object, verbose, |l| {
        target.set_globals(l);
        QueryAddrs::set_globals(l, &fork_child_offset);
        stacks::configure(l, p.stacks);
        for (map, entries) in p.map_sizes {
            l.map_max_entries(map, *entries);
        }
        for (name, value) in p.globals {
            l.override_global(name, value, true);
        }
    })?;
    hand_stacks(&mut report, &mut loaded, p.stacks)?;
    report.take_maps(&mut loaded)?;
    target.fill_maps(&mut loaded.ebpf)?;
    target.attach_fork_tracking(&mut loaded)?;
    // Statements are read at each event from the process's debug_query_string.
    let processes = target.processes_now();
    let (query_addrs, located) = QueryAddrs::start(&mut loaded, &processes)?;
    report.processes(&processes);
    for (site, id) in &sites {
        loaded.attach_usdt(p.program, &binary, site, *id)?;
    }
    let more = p
        .attach_more
        .map(|attach| attach(&mut loaded))
        .transpose()?;
    let ring = loaded.take_ring_buffer("EVENTS")?;
    Ok(Some(Attached {
        what: format!(
            "Tracing {} of {} in {}",
            p.what,
            target.describe(),
            binary.display()
        ),
        details: [
            format!("{} USDT sites", sites.len()),
            format!("{located} PostgreSQL processes located"),
        ]
        .into_iter()
        .chain(more)
        .collect(),
        started: loaded.started,
        watch: target.watched(),
        trace: record_trace(loaded, ring, query_addrs, report),
    }))
}

/// The runtime's view of a tool whose events are records of one ring buffer, carrying
/// statements read by `pgbpf_common_ebpf::query_string` (hence `query_addrs`), handed to
/// `report`; interval and final reports get the tool's COUNTERS.
pub fn record_trace<R: ProbeReport>(
    loaded: Loaded,
    ring: RingBuf<MapData>,
    query_addrs: QueryAddrs,
    report: R,
) -> Box<dyn Trace + Send> {
    Box::new(ProbeTrace {
        loaded,
        ring,
        query_addrs,
        report,
    })
}

/// Every event is a ring buffer record.
struct ProbeTrace<R> {
    loaded: Loaded,
    ring: RingBuf<MapData>,
    query_addrs: QueryAddrs,
    report: R,
}

impl<R: ProbeReport> Trace for ProbeTrace<R> {
    fn wait(&mut self, timeout: Duration) {
        loader::wait_readable(&self.ring, timeout);
    }

    fn drain(&mut self, out: &mut Output) -> anyhow::Result<()> {
        let report = &mut self.report;
        loader::drain_prefixed_records(&mut self.ring, R::MIN_LEN, |e: &R::Event| {
            report.event(out, e)
        })?;
        // Processes met before they were located: their next events carry the statement.
        self.query_addrs.locate_wanted(&mut self.loaded)
    }

    fn interval(&mut self, out: &mut Output) -> anyhow::Result<()> {
        let kernel: [u64; COUNTERS] = self.loaded.counters()?;
        Ok(self.report.report(out, Scope::Interval, &kernel)?)
    }

    fn finish(&mut self, out: &mut Output) -> anyhow::Result<()> {
        let kernel: [u64; COUNTERS] = self.loaded.counters()?;
        Ok(self.report.report(out, Scope::Total, &kernel)?)
    }

    fn objects(&self) -> Vec<&Loaded> {
        vec![&self.loaded]
    }

    fn server_ready(&mut self, _out: &mut Output, pids: &[u32]) -> anyhow::Result<()> {
        self.report.server_ready(pids);
        Ok(())
    }
}
