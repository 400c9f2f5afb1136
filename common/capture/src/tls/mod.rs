//! The TLS library of the traced processes: every distinct libssl they map (the file as
//! the process sees it, reached through /proc/PID/root so that a container's own libssl is
//! the one probed), with uprobes on its read, write and handshake functions (placed by
//! [`sites`]); and why a process's TLS cannot be decoded when it has none.

use std::{
    collections::HashSet,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use pgbpf_common::{
    loader::{Loaded, UprobeSite},
    procs,
};

pub mod sites;

/// One libssl file, probed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Libssl {
    /// Its path inside the process that maps it.
    pub path: String,
    /// The same file as this process reaches it.
    pub host_path: PathBuf,
    /// Processes of the target found mapping it.
    pub pids: Vec<u32>,
}

/// The libssl mapped by process `pid`: its path as the process sees it.
pub fn libssl_of(pid: u32) -> Option<String> {
    let maps = procs::memory_maps(pid, false)?;
    maps.iter().find_map(|m| match &m.pathname {
        procfs::process::MMapPath::Path(p) if is_libssl(p) => Some(p.display().to_string()),
        _ => None,
    })
}

/// `libssl.so.3`, `libssl.so.1.1`, `libssl.so` (not NSS's `libssl3.so`).
fn is_libssl(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("libssl.so"))
}

/// Where a system keeps its libssl: a process that is yet to load it (a shell about to run
/// psql) will take it from there.
const SYSTEM_LIBSSL: &[&str] = &[
    "usr/lib/x86_64-linux-gnu/libssl.so.3",
    "usr/lib/aarch64-linux-gnu/libssl.so.3",
    "usr/lib64/libssl.so.3",
    "usr/lib/libssl.so.3",
    "usr/lib/x86_64-linux-gnu/libssl.so.1.1",
    "usr/lib64/libssl.so.1.1",
];

/// The distinct libssl files mapped by `pids`, and the system's own in each of their roots
/// (one per device and inode).
pub fn find(pids: &[u32]) -> Vec<Libssl> {
    let mut seen: Vec<((u64, u64), Libssl)> = vec![];
    let add = |pid: u32, path: String, seen: &mut Vec<((u64, u64), Libssl)>| {
        let root = format!("/proc/{pid}/root");
        let host_path = Path::new(&root).join(path.trim_start_matches('/'));
        let Ok(meta) = std::fs::metadata(&host_path) else {
            return;
        };
        let id = (meta.dev(), meta.ino());
        match seen.iter_mut().find(|(i, _)| *i == id) {
            Some((_, lib)) => {
                if !lib.pids.contains(&pid) {
                    lib.pids.push(pid);
                }
            }
            None => seen.push((
                id,
                Libssl {
                    path,
                    host_path,
                    pids: vec![pid],
                },
            )),
        }
    };
    let mut roots = HashSet::new();
    for &pid in pids {
        if let Some(path) = libssl_of(pid) {
            add(pid, path, &mut seen);
        }
        let root = std::fs::metadata(format!("/proc/{pid}/root")).map(|m| (m.dev(), m.ino()));
        if let Ok(root) = root
            && roots.insert(root)
        {
            for p in SYSTEM_LIBSSL {
                add(pid, format!("/{p}"), &mut seen);
            }
        }
    }
    seen.into_iter().map(|(_, l)| l).collect()
}

/// The probes of the TLS programs on `lib` at `sites` (from [`plan`]), each with the return
/// program `ssl_return` at the same place, for every process that maps it (filtering is the
/// kernel program's job).
///
/// Why not for the traced processes only (a perf event per process, which the kernel honours
/// by putting the breakpoints in that process alone): closing such an event costs a grace
/// period of RCU tasks-trace, measured 87 ms on Linux 6.18, and closes serialize (200 took
/// 17 s, in parallel or not). A postmaster forks a backend per connection; its probes would
/// have to be opened at each fork and closed at each exit: the tool would fall behind from a
/// few connections a second on, and take seconds to exit.
pub fn uprobes(loaded: &Loaded, lib: &Libssl, sites: &[sites::Site]) -> Vec<UprobeSite> {
    let mut out = vec![];
    for site in sites {
        if loaded.verbose() {
            eprintln!(
                "{}: TLS probe on {} in {} ({:#x})",
                loaded.tool(),
                site.what,
                lib.path,
                site.vaddr
            );
        }
        for prog in [site.prog, "ssl_return"] {
            out.push(UprobeSite {
                prog,
                binary: lib.host_path.clone(),
                offset: site.offset,
            });
        }
    }
    out
}

/// Where [`uprobes`] puts the probes in `lib` ([`sites::plan`]); an error when it has none of
/// the functions.
pub fn plan(lib: &Libssl) -> anyhow::Result<Vec<sites::Site>> {
    let elf = pgbpf_common::elf::ElfFile::open(&lib.host_path)?;
    let sites = sites::plan(&elf)?;
    if sites.is_empty() {
        anyhow::bail!(
            "{} has none of the TLS functions ({})",
            lib.path,
            sites::FUNCTIONS.join(", ")
        );
    }
    Ok(sites)
}

/// [`plan`] for every library, in a thread of its own: disassembling libssl's wrappers
/// (about 20 ms) then overlaps the kernel's verification of the programs.
pub fn plan_in_background(
    libs: &[Libssl],
) -> std::thread::JoinHandle<Vec<anyhow::Result<Vec<sites::Site>>>> {
    let libs = libs.to_vec();
    std::thread::spawn(move || libs.iter().map(plan).collect())
}

/// What the live capture probes for TLS plaintext.
#[derive(Clone, Debug, Default)]
pub struct Probed {
    /// TLS plaintext is read (not `--no-tls`).
    pub enabled: bool,
    /// The libssl paths probed, as their processes see them.
    pub libssl: HashSet<String>,
}

/// Why the TLS of process `pid`'s connections cannot be decoded, said once per connection.
pub fn undecodable_reason(pid: u32, probed: &Probed) -> String {
    if !probed.enabled {
        return "TLS, and its plaintext is not read (--no-tls)".to_string();
    }
    if !Path::new(&format!("/proc/{pid}")).exists() {
        return format!("TLS, and no plaintext came from PID {pid}'s TLS library before it exited");
    }
    match libssl_of(pid) {
        None => format!(
            "PID {pid} maps no libssl: its TLS is not a dynamically linked OpenSSL \
             (Go crypto/tls, rustls, a static BoringSSL...), so its plaintext cannot be read"
        ),
        Some(path) if !probed.libssl.contains(&path) => {
            format!("PID {pid}'s {path} was not probed (it was mapped after the start)")
        }
        Some(path) => format!(
            "PID {pid}'s {path} is probed but no plaintext came through it (its TLS may be \
             linked in statically)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libssl_names_are_told_from_others() {
        for yes in [
            "/usr/lib/x86_64-linux-gnu/libssl.so.3",
            "/lib/libssl.so.1.1",
        ] {
            assert!(is_libssl(Path::new(yes)), "{yes}");
        }
        for no in [
            "/usr/lib/libssl3.so",
            "/usr/lib/libcrypto.so.3",
            "/usr/bin/ssl",
        ] {
            assert!(!is_libssl(Path::new(no)), "{no}");
        }
    }

    #[test]
    fn a_process_without_libssl_is_told_apart_and_says_why() {
        // Not this process: other tests here map libssl's file to read its symbols, and
        // a mapped file is what libssl_of looks for. `sleep` links no libssl.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        // spawn returns once exec has happened (std waits for it to report errors), so
        // the forked test binary's mappings are gone by now.
        assert_eq!(libssl_of(pid), None);
        let on = Probed {
            enabled: true,
            libssl: HashSet::new(),
        };
        assert!(undecodable_reason(pid, &on).contains("maps no libssl"));
        assert!(undecodable_reason(pid, &Probed::default()).contains("--no-tls"));
        assert!(undecodable_reason(u32::MAX, &on).contains("exited"));
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
