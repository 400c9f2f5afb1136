//! ELF facts the probes need: symbol addresses (.symtab, .dynsym, or a separate debug file
//! found by build-id or .gnu_debuglink), virtual address → file offset, build-id.
//!
//! Addresses to names (stacks) are blazesym's (`crate::stacks`). Names to addresses stay here,
//! on the object crate's tables: blazesym's `Inspector` gives the same answers for postgres
//! (checked: six names, the same address and size each) and is quicker for a batch (1.7 ms
//! against 2.5 ms for six names), but it is not `Send` and builds its name index per instance,
//! where the tools look names up one at a time, from more than one thread, during start-up.
//! Also here because blazesym does not do them: the debug file's place under a container's
//! root (`/proc/PID/root/usr/lib/debug/...`; blazesym searches the host's), file offsets of
//! arbitrary addresses (USDT sites and semaphores), section bytes (the TLS wrappers'
//! disassembly) and the build-id.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use object::{Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _};

/// An ELF file, mapped into memory.
pub struct ElfFile {
    pub path: PathBuf,
    data: Mapped,
}

/// A file mapped read-only: only the pages parsed are read in, where reading a 10 MB postgres
/// binary whole for its symbol tables and notes made it most of a tool's memory. (Written
/// with nix rather than a mapping crate: a dozen lines.) Packages replace binaries by
/// renaming a new file into place, so the mapped file does not shrink under us.
struct Mapped {
    ptr: std::ptr::NonNull<std::ffi::c_void>,
    len: usize,
}

impl Mapped {
    fn open(path: &Path) -> anyhow::Result<Mapped> {
        let file = std::fs::File::open(path)?;
        let len = usize::try_from(file.metadata()?.len())?;
        let len = std::num::NonZeroUsize::new(len).ok_or_else(|| anyhow!("empty file"))?;
        // SAFETY: a private read-only mapping of a whole regular file, unmapped on drop; the
        // bytes are only ever read as a slice.
        let ptr = unsafe {
            nix::sys::mman::mmap(
                None,
                len,
                nix::sys::mman::ProtFlags::PROT_READ,
                nix::sys::mman::MapFlags::MAP_PRIVATE,
                &file,
                0,
            )
        }?;
        Ok(Mapped {
            ptr,
            len: len.get(),
        })
    }
}

// SAFETY: read-only memory, never written through: as shareable as a `&[u8]`.
unsafe impl Send for Mapped {}
// SAFETY: as above.
unsafe impl Sync for Mapped {}

impl std::ops::Deref for Mapped {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `len` readable bytes mapped at `ptr` until drop.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast(), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, not used after this.
        let _ = unsafe { nix::sys::mman::munmap(self.ptr, self.len) };
    }
}

/// A loadable segment: where it sits in the file and in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub vaddr: u64,
    pub memsz: u64,
    pub offset: u64,
    pub filesz: u64,
}

impl ElfFile {
    pub fn open(path: &Path) -> anyhow::Result<ElfFile> {
        let data = Mapped::open(path).with_context(|| format!("reading {}", path.display()))?;
        let f = ElfFile {
            path: path.to_path_buf(),
            data,
        };
        f.parse()?;
        Ok(f)
    }

    pub fn parse(&self) -> anyhow::Result<object::File<'_>> {
        object::File::parse(&*self.data)
            .map_err(|e| anyhow!("{} is not a readable ELF file: {e}", self.path.display()))
    }

    /// Loadable segments.
    pub fn segments(&self) -> anyhow::Result<Vec<Segment>> {
        let f = self.parse()?;
        Ok(f.segments()
            .map(|s| {
                let (offset, filesz) = s.file_range();
                Segment {
                    vaddr: s.address(),
                    memsz: s.size(),
                    offset,
                    filesz,
                }
            })
            .collect())
    }

    /// The file offset of a virtual address (what uprobes and USDT semaphores are given).
    pub fn vaddr_to_offset(&self, vaddr: u64) -> anyhow::Result<u64> {
        vaddr_to_offset(&self.segments()?, vaddr).ok_or_else(|| {
            anyhow!(
                "address {vaddr:#x} is in no loadable segment of {}",
                self.path.display()
            )
        })
    }

    /// Up to `len` bytes of the file at virtual address `vaddr` (fewer where its segment's
    /// file contents end); None when no segment holds it in the file.
    pub fn bytes_at(&self, vaddr: u64, len: u64) -> Option<&[u8]> {
        let segment = self
            .segments()
            .ok()?
            .into_iter()
            .find(|s| vaddr >= s.vaddr && vaddr - s.vaddr < s.filesz)?;
        let start = segment.offset.checked_add(vaddr - segment.vaddr)?;
        let end = start
            .checked_add(len.min(segment.filesz - (vaddr - segment.vaddr)))?
            .min(self.data.len() as u64);
        self.data
            .get(usize::try_from(start).ok()?..usize::try_from(end).ok()?)
    }

    /// The name of the section holding virtual address `vaddr`.
    pub fn section_name_at(&self, vaddr: u64) -> Option<String> {
        let f = self.parse().ok()?;
        let s = f
            .sections()
            .find(|s| vaddr >= s.address() && vaddr - s.address() < s.size())?;
        s.name().ok().map(str::to_string)
    }

    /// Address of a named symbol in this file: .symtab first, then .dynsym.
    pub fn symbol(&self, name: &str) -> anyhow::Result<Option<u64>> {
        let f = self.parse()?;
        let found = f
            .symbols()
            .chain(f.dynamic_symbols())
            .find(|s| s.name() == Ok(name) && s.address() != 0)
            .map(|s| s.address());
        Ok(found)
    }

    /// Address and size of a named function or object: .symtab first, then .dynsym.
    pub fn symbol_range(&self, name: &str) -> anyhow::Result<Option<(u64, u64)>> {
        let f = self.parse()?;
        let found = f
            .symbols()
            .chain(f.dynamic_symbols())
            .find(|s| s.name() == Ok(name) && s.address() != 0)
            .map(|s| (s.address(), s.size()));
        Ok(found)
    }

    /// True when the file has a full symbol table (not stripped).
    pub fn has_symtab(&self) -> bool {
        self.parse()
            .map(|f| f.section_by_name(".symtab").is_some())
            .unwrap_or(false)
    }

    pub fn build_id(&self) -> Option<Vec<u8>> {
        self.parse()
            .ok()?
            .build_id()
            .ok()
            .flatten()
            .map(<[u8]>::to_vec)
    }

    pub fn debuglink(&self) -> Option<String> {
        let f = self.parse().ok()?;
        let (name, _crc) = f.gnu_debuglink().ok().flatten()?;
        Some(String::from_utf8_lossy(name).into_owned())
    }

    /// Section contents by name.
    pub fn section(&self, name: &str) -> anyhow::Result<Option<(u64, Vec<u8>)>> {
        let f = self.parse()?;
        let Some(s) = f.section_by_name(name) else {
            return Ok(None);
        };
        let data = s
            .data()
            .map_err(|e| anyhow!("section {name} of {}: {e}", self.path.display()))?;
        Ok(Some((s.address(), data.to_vec())))
    }

    /// Where a separate debug file for this binary would be, if one is installed:
    /// /usr/lib/debug/.build-id/ab/cdef….debug, then the .gnu_debuglink name next to the
    /// binary, in its .debug/ directory and under /usr/lib/debug/<dir>/.
    pub fn debug_file(&self, root: &Path) -> Option<PathBuf> {
        let mut candidates = vec![];
        if let Some(id) = self.build_id().filter(|id| id.len() > 1) {
            let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
            candidates.push(root.join(format!(
                "usr/lib/debug/.build-id/{}/{}.debug",
                &hex[..2],
                &hex[2..]
            )));
        }
        if let (Some(link), Some(dir)) = (self.debuglink(), self.path.parent()) {
            let rel_dir = dir.strip_prefix(root).unwrap_or(dir);
            let rel_dir = rel_dir.strip_prefix("/").unwrap_or(rel_dir);
            candidates.push(dir.join(&link));
            candidates.push(dir.join(".debug").join(&link));
            candidates.push(root.join("usr/lib/debug").join(rel_dir).join(&link));
        }
        candidates
            .into_iter()
            .find(|p| p.is_file() && p != &self.path)
    }
}

/// Pure: the file offset of `vaddr` given the loadable segments.
pub fn vaddr_to_offset(segments: &[Segment], vaddr: u64) -> Option<u64> {
    segments
        .iter()
        // Only bytes backed by the file have a file offset (not .bss).
        .find(|s| vaddr >= s.vaddr && vaddr < s.vaddr + s.filesz)
        .map(|s| vaddr - s.vaddr + s.offset)
}

/// Symbols of a binary and, when installed, of its separate debug file.
pub struct Symbols {
    pub binary: ElfFile,
    pub debug: Option<ElfFile>,
}

impl Symbols {
    /// `root` is "/" on the host, or /proc/PID/root for a process in a container.
    pub fn open(binary: &Path, root: &Path) -> anyhow::Result<Symbols> {
        let binary = ElfFile::open(binary)?;
        let debug = binary.debug_file(root).and_then(|p| ElfFile::open(&p).ok());
        Ok(Symbols { binary, debug })
    }

    /// Virtual address of `name`: the binary's own tables, then the debug file's.
    pub fn address(&self, name: &str) -> anyhow::Result<Option<u64>> {
        if let Some(a) = self.binary.symbol(name)? {
            return Ok(Some(a));
        }
        match &self.debug {
            Some(d) => d.symbol(name),
            None => Ok(None),
        }
    }

    /// Address and size of `name`: the binary's own tables, then the debug file's.
    pub fn range(&self, name: &str) -> anyhow::Result<Option<(u64, u64)>> {
        if let Some(r) = self.binary.symbol_range(name)? {
            return Ok(Some(r));
        }
        match &self.debug {
            Some(d) => d.symbol_range(name),
            None => Ok(None),
        }
    }

    /// Like [`Symbols::address`], but an error naming what was searched when it is missing.
    pub fn require(&self, name: &str) -> anyhow::Result<u64> {
        if let Some(a) = self.address(name)? {
            return Ok(a);
        }
        let searched = match &self.debug {
            Some(d) => format!(
                "{} and its debug file {}",
                self.binary.path.display(),
                d.path.display()
            ),
            None => format!("{} (no debug file installed)", self.binary.path.display()),
        };
        bail!("symbol {name} not found in {searched}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_follow_the_segment_that_holds_the_address() {
        let segs = [
            Segment {
                vaddr: 0,
                memsz: 0x1000,
                offset: 0,
                filesz: 0x1000,
            },
            Segment {
                vaddr: 0x8508b0,
                memsz: 0x67050,
                offset: 0x8508b0,
                filesz: 0x350da,
            },
            Segment {
                vaddr: 0x401000,
                memsz: 0x2000,
                offset: 0x1000,
                filesz: 0x2000,
            },
        ];
        assert_eq!(vaddr_to_offset(&segs, 0x401234), Some(0x1234));
        assert_eq!(vaddr_to_offset(&segs, 0x885936), Some(0x885936));
        assert_eq!(vaddr_to_offset(&segs, 0x9000000), None);
    }

    #[test]
    fn debian_postgres_exports_what_the_probes_use() {
        let Ok(dir) = crate::postgres::installed_bin_dir() else {
            panic!("PostgreSQL is not installed; run scripts/setup.sh");
        };
        let s = Symbols::open(&dir.join("postgres"), Path::new("/")).unwrap();
        assert!(
            !s.binary.has_symtab(),
            "Debian's postgres is expected to be stripped"
        );
        assert!(s.address("PortalRun").unwrap().is_some());
        assert!(s.address("debug_query_string").unwrap().is_some());
        assert!(
            s.address("exec_simple_query").unwrap().is_none(),
            "a static function"
        );
        let e = s.require("exec_simple_query").unwrap_err().to_string();
        assert!(
            e.contains("symbol exec_simple_query not found in") && e.contains("postgres"),
            "{e}"
        );
        assert_eq!(s.binary.build_id().map(|b| b.len()), Some(20));
        assert_eq!(
            s.binary
                .debuglink()
                .as_deref()
                .map(|l| l.ends_with(".debug")),
            Some(true)
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("junk");
        std::fs::write(&p, b"\x7fELF\x02\x01\x01garbage").unwrap();
        assert!(ElfFile::open(&p).is_err());
        assert!(ElfFile::open(&dir.path().join("missing")).is_err());
    }
}
