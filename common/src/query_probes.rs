//! Where PostgreSQL tells us which statement a backend runs: its USDT probes query__start /
//! query__done (simple protocol) and query__execute__start / __done (PortalRun: the extended
//! protocol), or uprobes on PortalRun where there is no USDT. Tools attach these to keep the
//! query context (`pgbpf_common_ebpf::query::track_probe`).

use std::path::Path;

use anyhow::{Context as _, bail};
pub use pgbpf_common_ebpf::query::{
    PROBE_EXECUTE_DONE, PROBE_EXECUTE_START, PROBE_PORTAL_DONE, PROBE_PORTAL_START,
    PROBE_QUERY_DONE, PROBE_QUERY_START,
};

use crate::{
    elf::Symbols,
    loader::Loaded,
    usdt::{self, ArgLocation, UsdtArg, UsdtProbe},
};

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
pub fn plan(binary: &Path, root: &Path, tool: &str) -> anyhow::Result<Plan> {
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
             {tool} needs a PostgreSQL built with --enable-dtrace, as Debian's and Ubuntu's \
             packages are, or one with symbols (install its -dbgsym package)",
            binary.display(),
            missing.join(", "),
            probes.len(),
        );
    }
    let portal = PortalRun::find(binary, root, "the extended protocol's statement text")?;
    let mut sites = vec![];
    for (name, id) in wanted {
        let execute = id == PROBE_EXECUTE_START || id == PROBE_EXECUTE_DONE;
        for p in probes
            .iter()
            .filter(|p| p.name == name && (!execute || portal.holds(p)))
        {
            let mut p = p.clone();
            if id == PROBE_EXECUTE_START {
                p.args = vec![portal.text_arg()];
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

/// Where PortalRun is, and debug_query_string: the extended protocol's probes have no text
/// argument, so the text is read from that exported global, given to the program as an extra
/// argument.
struct PortalRun {
    range: Option<(u64, u64)>,
    debug_query_string: u64,
}

impl PortalRun {
    fn find(binary: &Path, root: &Path, why: &'static str) -> anyhow::Result<PortalRun> {
        let symbols = Symbols::open(binary, root)?;
        Ok(PortalRun {
            debug_query_string: symbols.require("debug_query_string").context(why)?,
            range: symbols.range("PortalRun")?,
        })
    }

    /// query__execute__start/done also sit in ProcessQuery, nested inside PortalRun for every
    /// DML statement: only PortalRun's own sites give one span per statement.
    fn holds(&self, p: &UsdtProbe) -> bool {
        match self.range {
            Some((start, size)) if size > 0 => p.address >= start && p.address < start + size,
            _ => true,
        }
    }

    fn text_arg(&self) -> UsdtArg {
        UsdtArg {
            size: 8,
            signed: false,
            location: ArgLocation::Global {
                vaddr: self.debug_query_string,
            },
        }
    }
}

/// The sites where PortalRun finishes a statement (its own query__execute__done, for either
/// protocol), each with debug_query_string as argument 0: where query_latency's default
/// mechanism reads a request's text.
pub fn plan_statement_ends(binary: &Path, root: &Path, tool: &str) -> anyhow::Result<Plan> {
    let probes = usdt::probes(binary)?;
    let ends: Vec<&UsdtProbe> = probes
        .iter()
        .filter(|p| p.name == "query__execute__done")
        .collect();
    if ends.is_empty() {
        bail!(
            "{} has no USDT probe query__execute__done (searched its .note.stapsdt: {} probes); \
             {tool} needs a PostgreSQL built with --enable-dtrace, as Debian's and Ubuntu's \
             packages are, or --uprobes with one that has symbols",
            binary.display(),
            probes.len(),
        );
    }
    let portal = PortalRun::find(binary, root, "the statement text")?;
    let sites: Vec<(UsdtProbe, u32)> = ends
        .into_iter()
        .filter(|p| portal.holds(p))
        .map(|p| {
            let mut p = p.clone();
            p.args = vec![portal.text_arg()];
            (p, PROBE_EXECUTE_DONE)
        })
        .collect();
    let returns = vec![false; sites.len()];
    Ok(Plan {
        sites,
        source: "USDT",
        returns,
    })
}

impl Plan {
    /// Attaches uprobe program `prog` (which calls `track_probe`) at every site of the plan.
    pub fn attach(&self, loaded: &mut Loaded, prog: &str, binary: &Path) -> anyhow::Result<()> {
        for ((site, id), &ret) in self.sites.iter().zip(&self.returns) {
            if self.source == "USDT" {
                loaded.attach_usdt(prog, binary, site, *id)?;
            } else {
                loaded.attach_function(prog, binary, site, *id, ret)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres;

    #[test]
    fn debian_postgres_has_every_probe_needed() {
        let bin = postgres::installed_bin_dir().unwrap().join("postgres");
        let p = plan(&bin, Path::new("/"), "tool").unwrap();
        let count = |id| p.sites.iter().filter(|(_, i)| *i == id).count();
        assert_eq!(count(PROBE_QUERY_START), 1);
        assert_eq!(count(PROBE_QUERY_DONE), 1);
        // Only PortalRun's sites, not the nested ones in ProcessQuery.
        assert_eq!(count(PROBE_EXECUTE_START), 1);
        assert_eq!(count(PROBE_EXECUTE_DONE), 1);
        assert!(p.sites.iter().all(|(s, _)| s.semaphore_offset.is_some()));
    }

    #[test]
    fn statement_ends_are_portal_runs_done_with_the_text() {
        let bin = postgres::installed_bin_dir().unwrap().join("postgres");
        let p = plan_statement_ends(&bin, Path::new("/"), "tool").unwrap();
        assert_eq!(p.sites.len(), 1, "PortalRun's own site only");
        let (site, id) = &p.sites[0];
        assert_eq!(
            (site.name.as_str(), *id),
            ("query__execute__done", PROBE_EXECUTE_DONE)
        );
        assert!(matches!(site.args[0].location, ArgLocation::Global { .. }));
        let e = plan_statement_ends(Path::new("/bin/ls"), Path::new("/"), "mytool");
        assert!(e.is_err());
    }

    #[test]
    fn a_binary_without_probes_is_explained() {
        let e = plan(Path::new("/bin/ls"), Path::new("/"), "mytool")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("has no USDT probe query__start")
                && e.contains("mytool needs a PostgreSQL built with --enable-dtrace"),
            "{e}"
        );
    }
}
