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
