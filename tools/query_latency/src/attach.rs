//! Finds the postgres binary and its probes, attaches them, and runs the event loop.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, bail};
use pgbpf_common::{
    cli::{Tick, Ticker},
    elf::Symbols,
    loader::{self, Loaded},
    postgres, query,
    target::Target,
    usdt::{self, ArgLocation, UsdtArg, UsdtProbe},
};
use query_latency_ebpf::{
    PROBE_EXECUTE_DONE, PROBE_EXECUTE_START, PROBE_PORTAL_DONE, PROBE_PORTAL_START,
    PROBE_QUERY_DONE, PROBE_QUERY_START, QueryEvent, counter,
};

use crate::{Args, report::Reporter};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/query_latency"));

/// The probe sites to attach, with the probe id the kernel program dispatches on and
/// whether the site is a function return (uretprobe).
pub struct Plan {
    pub sites: Vec<(UsdtProbe, u32)>,
    /// "USDT" or "uprobes".
    pub source: &'static str,
    pub returns: Vec<bool>,
}

/// Without USDT probes: uprobes on the exported PortalRun, entry and return, which every
/// statement of either protocol runs through; the text from debug_query_string.
pub fn plan_uprobes(binary: &Path, root: &Path) -> anyhow::Result<Plan> {
    let symbols = Symbols::open(binary, root)?;
    let dqs = symbols
        .require("debug_query_string")
        .context("the statement text")?;
    let portal_run = symbols.require("PortalRun")?;
    let offset = symbols.binary.vaddr_to_offset(portal_run)?;
    let site = |args: Vec<UsdtArg>| UsdtProbe {
        provider: "uprobe".into(),
        name: "PortalRun".into(),
        address: portal_run,
        offset,
        semaphore_offset: None,
        args,
    };
    let text = UsdtArg {
        size: 8,
        signed: false,
        location: ArgLocation::Global { vaddr: dqs },
    };
    Ok(Plan {
        sites: vec![
            (site(vec![text]), PROBE_PORTAL_START),
            (site(vec![]), PROBE_PORTAL_DONE),
        ],
        source: "uprobes",
        returns: vec![false, true],
    })
}

/// Chooses the USDT sites of `binary` and prepares their arguments.
pub fn plan(binary: &Path, root: &Path) -> anyhow::Result<Plan> {
    let probes = usdt::probes(binary)?;
    let wanted = [
        ("query__start", PROBE_QUERY_START),
        ("query__done", PROBE_QUERY_DONE),
        ("query__execute__start", PROBE_EXECUTE_START),
        ("query__execute__done", PROBE_EXECUTE_DONE),
    ];
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(n, _)| !probes.iter().any(|p| p.name == *n))
        .map(|(n, _)| *n)
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} has no USDT probe {} (searched its .note.stapsdt: {} probes) and no symbols PortalRun \
             and debug_query_string for uprobes (searched .symtab, .dynsym and debug files); \
             query_latency needs a PostgreSQL built with --enable-dtrace, as Debian's and Ubuntu's \
             packages are, or one with symbols (install its -dbgsym package)",
            binary.display(),
            missing.join(", "),
            probes.len()
        );
    }
    // The extended protocol has no text argument on its probes: the text is in the exported
    // global debug_query_string, given to the program as an extra argument.
    let symbols = Symbols::open(binary, root)?;
    let dqs = symbols
        .require("debug_query_string")
        .context("the extended protocol's statement text")?;
    // query__execute__start/done also sit in ProcessQuery, nested inside PortalRun for every
    // DML statement: only PortalRun's own sites give one span per Execute message.
    let portal_run = symbols.range("PortalRun")?;
    let in_portal_run = |p: &UsdtProbe| match portal_run {
        Some((start, size)) if size > 0 => p.address >= start && p.address < start + size,
        _ => true,
    };
    let mut sites = vec![];
    for (name, id) in wanted {
        let execute = id == PROBE_EXECUTE_START || id == PROBE_EXECUTE_DONE;
        for p in probes
            .iter()
            .filter(|p| p.name == name && (!execute || in_portal_run(p)))
        {
            let mut p = p.clone();
            if id == PROBE_EXECUTE_START {
                p.args = vec![UsdtArg {
                    size: 8,
                    signed: false,
                    location: ArgLocation::Global { vaddr: dqs },
                }];
            }
            sites.push((p, id));
        }
    }
    let returns = vec![false; sites.len()];
    Ok(Plan {
        sites,
        source: "USDT",
        returns,
    })
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let mut target = Target::resolve(&args.target, None)?;
    let (binary, root) = postgres::binary_for_target(&target, args.postgres.as_deref())?;
    for &pid in &target.tgids {
        postgres::postgres_binary_of_pid(pid)?;
    }
    let plan = if args.uprobes {
        plan_uprobes(&binary, &root)?
    } else {
        plan(&binary, &root)?
    };
    loader::check_privileges()?;
    // A postmaster's backends are its children, also those forked later.
    target.follow_descendants()?;
    let text_bytes = args.text_bytes;
    let mut loaded = loader::load("query_latency", OBJECT, args.out.verbose, |l| {
        target.set_globals(l);
        l.override_global("PGBPF_QUERY_TEXT_MAX", &text_bytes, true);
    })?;
    target.fill_maps(&mut loaded.ebpf)?;
    target.attach_fork_tracking(&mut loaded)?;
    for ((site, id), &ret) in plan.sites.iter().zip(&plan.returns) {
        if plan.source == "USDT" {
            loaded.attach_usdt("pg_probe", &binary, site, *id)?;
        } else {
            loaded.attach_function("pg_probe", &binary, site, *id, ret)?;
        }
    }
    eprintln!(
        "Tracing statements of {} in {} ({} {} sites, attached in {:.0} ms)... Hit Ctrl-C to end.",
        target.describe(),
        binary.display(),
        plan.sites.len(),
        plan.source,
        loaded.startup_ms()
    );
    event_loop(args, &mut loaded)
}

fn event_loop(args: &Args, loaded: &mut Loaded) -> anyhow::Result<()> {
    let mut ring = loaded.take_ring_buffer("EVENTS")?;
    let mut reporter = Reporter::new(args);
    let mut ticker = Ticker::start(&args.out)?;
    loop {
        // 8 MiB of buffer holds far more than 50 ms of statements.
        loader::wait_readable(&ring, 50);
        while let Some(item) = ring.next() {
            if item.len() < std::mem::size_of::<QueryEvent>() {
                continue;
            }
            // SAFETY: the kernel wrote a whole QueryEvent (checked length), read unaligned.
            let ev: QueryEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            if !reporter.event(&ev) {
                ticker.request_stop();
            }
        }
        match ticker.next(Duration::ZERO) {
            Tick::Idle => {}
            Tick::Interval => {
                if args.active && !reporter.active(&query::active_queries(&loaded.ebpf)?) {
                    ticker.request_stop();
                }
                if !reporter.interval(&counters(loaded)?) {
                    ticker.request_stop();
                }
            }
            Tick::Final => {
                if args.active {
                    reporter.active(&query::active_queries(&loaded.ebpf)?);
                }
                reporter.summary(&counters(loaded)?);
                return Ok(());
            }
        }
    }
}

fn counters(loaded: &Loaded) -> anyhow::Result<[u64; counter::COUNT as usize]> {
    let sums = loaded.counter_sums("COUNTERS", counter::COUNT)?;
    let mut out = [0u64; counter::COUNT as usize];
    out.copy_from_slice(&sums);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_postgres_has_every_probe_needed() {
        let bin = postgres::installed_bin_dir().unwrap().join("postgres");
        let p = plan(&bin, Path::new("/")).unwrap();
        let count = |id| p.sites.iter().filter(|(_, i)| *i == id).count();
        assert_eq!(count(PROBE_QUERY_START), 1);
        assert_eq!(count(PROBE_QUERY_DONE), 1);
        // Only PortalRun's sites, not the nested ones in ProcessQuery.
        assert_eq!(count(PROBE_EXECUTE_START), 1);
        assert_eq!(count(PROBE_EXECUTE_DONE), 1);
        assert!(p.sites.iter().all(|(s, _)| s.semaphore_offset.is_some()));
    }

    #[test]
    fn a_binary_without_probes_is_explained() {
        let e = plan(Path::new("/bin/ls"), Path::new("/"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("has no USDT probe query__start") && e.contains("--enable-dtrace"),
            "{e}"
        );
    }
}
