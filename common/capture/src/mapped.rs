//! A capture file read through a memory mapping: `--read` parses records straight out of the
//! page cache instead of having the kernel copy every byte into a read buffer first (that
//! copy was a tenth of `--read`'s time). A file another process shortens while it is mapped
//! reads as cut there, as it would through `read`, instead of killing the process with
//! SIGBUS.
//!
//! Written here rather than with a mapping crate: memmap2, the well-kept one, leaves SIGBUS to
//! its users, and recovering from it is what this module is for.

use std::{
    fs::File,
    io::{self, BufRead, BufReader, Read},
    os::fd::AsRawFd,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

/// The mapping the SIGBUS handler may repair: its start and length (0: none). One at a time.
static MAPPED_AT: AtomicUsize = AtomicUsize::new(0);
static MAPPED_LEN: AtomicUsize = AtomicUsize::new(0);
/// Set by the handler: the file shrank under the mapping.
static SHRANK: AtomicBool = AtomicBool::new(false);
/// Read before the handler is installed (sysconf is not async-signal-safe).
static PAGE: AtomicUsize = AtomicUsize::new(4096);
/// Guards the one mapping slot and the handler's installation.
static SLOT: Mutex<bool> = Mutex::new(false);

/// Consumed bytes are dropped from the process's mappings in steps of this size, so that
/// reading a capture larger than memory keeps a bounded resident set (the page cache keeps
/// what the kernel can spare).
const DROP_STEP: usize = 8 << 20;

/// A capture file's bytes: mapped where it can be (a regular file, not empty, no other
/// mapping open), else through a buffered reader (pipes, special files).
pub enum Input {
    Mapped(Mapped),
    Buffered(BufReader<File>),
}

impl Input {
    pub fn new(file: File) -> Input {
        match Mapped::new(&file) {
            Some(m) => Input::Mapped(m),
            // Records are small: a large buffer saves a read call for every few of them.
            None => Input::Buffered(BufReader::with_capacity(1 << 20, file)),
        }
    }
}

/// The file shrank while it was mapped (another process truncated or rewrote it): from that
/// point on it read as zeros.
pub fn shrank() -> bool {
    SHRANK.load(Ordering::SeqCst)
}

/// A read-only private mapping of a whole file.
pub struct Mapped {
    at: *mut libc::c_void,
    len: usize,
}

// The mapping is owned by this value alone and only ever read (through views).
unsafe impl Send for Mapped {}
unsafe impl Sync for Mapped {}

impl Mapped {
    /// None where the file cannot be mapped (the caller reads it instead).
    fn new(file: &File) -> Option<Mapped> {
        let meta = file.metadata().ok()?;
        let len = usize::try_from(meta.len()).ok()?;
        if !meta.is_file() || len == 0 {
            return None;
        }
        let mut slot = SLOT.lock().ok()?;
        if MAPPED_LEN.load(Ordering::SeqCst) != 0 {
            return None;
        }
        if !*slot {
            install_handler()?;
            *slot = true;
        }
        // SAFETY: a new mapping of our own choosing (no address given), checked below.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if at == libc::MAP_FAILED {
            return None;
        }
        // Read ahead generously (a hint: its failure changes nothing).
        // SAFETY: the range is the mapping just made.
        unsafe { libc::madvise(at, len, libc::MADV_SEQUENTIAL) };
        SHRANK.store(false, Ordering::SeqCst);
        MAPPED_AT.store(at as usize, Ordering::SeqCst);
        MAPPED_LEN.store(len, Ordering::SeqCst);
        Some(Mapped { at, len })
    }

    /// A reader of the whole file from its start (each thread of a shared read has its own).
    pub fn view(&self) -> View<'_> {
        // SAFETY: the mapping is `len` bytes long and lives as long as `self`. Its bytes may
        // change if another process writes the file (a private mapping shares the page cache
        // until written); they are parsed as untrusted input either way, and a shrinking file
        // reads as zeros (the SIGBUS handler), never as a fault.
        let bytes = unsafe { std::slice::from_raw_parts(self.at as *const u8, self.len) };
        View {
            bytes,
            pos: 0,
            dropped: 0,
        }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        MAPPED_LEN.store(0, Ordering::SeqCst);
        MAPPED_AT.store(0, Ordering::SeqCst);
        // SAFETY: the mapping made in `new`; the views borrowing it are gone.
        unsafe { libc::munmap(self.at, self.len) };
    }
}

/// A mapped file read forward: the pages it has passed are dropped from the process's
/// mappings (the page cache keeps them), so that reading a capture larger than memory keeps a
/// bounded resident set. Another view behind it maps them in again from the page cache.
pub struct View<'m> {
    bytes: &'m [u8],
    /// Bytes consumed.
    pos: usize,
    /// Bytes before this were dropped (MADV_DONTNEED).
    dropped: usize,
}

impl Read for View<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.fill_buf()?.read(buf)?;
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for View<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        Ok(&self.bytes[self.pos..])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.bytes.len());
        let page = PAGE.load(Ordering::Relaxed);
        let behind = self.pos / page * page;
        if behind - self.dropped >= DROP_STEP {
            // SAFETY: a page-aligned range of the mapping that this view has passed and no
            // slice it handed out still borrows (they end with the next consume). Dropping
            // pages of a read-only private file mapping only unmaps them: a later access maps
            // the page cache's copy in again.
            unsafe {
                libc::madvise(
                    self.bytes.as_ptr().add(self.dropped) as *mut libc::c_void,
                    behind - self.dropped,
                    libc::MADV_DONTNEED,
                )
            };
            self.dropped = behind;
        }
    }
}

fn install_handler() -> Option<()> {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if page > 0 {
        PAGE.store(page as usize, Ordering::SeqCst);
    }
    // SAFETY: a zeroed sigaction with our handler, installed once under SLOT.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigbus as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        (libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) == 0).then_some(())
    }
}

/// A fault in the mapping means the file ended before the page touched: zeros are mapped over
/// the rest of it and the access resumes, reading them (a record of length 0, which the
/// reader reports as damage). Any other SIGBUS gets the default action.
extern "C" fn on_sigbus(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo with SA_SIGINFO; mmap and signal are plain
    // system calls, safe in a handler.
    unsafe {
        let addr = (*info).si_addr() as usize;
        let at = MAPPED_AT.load(Ordering::SeqCst);
        let len = MAPPED_LEN.load(Ordering::SeqCst);
        if at != 0 && (at..at + len).contains(&addr) {
            let page = addr & !(PAGE.load(Ordering::SeqCst) - 1);
            let zeros = libc::mmap(
                page as *mut libc::c_void,
                at + len - page,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            );
            if zeros != libc::MAP_FAILED {
                SHRANK.store(true, Ordering::SeqCst);
                return;
            }
        }
        // Not ours: returning re-runs the access, which now ends the process as SIGBUS does.
        libc::signal(libc::SIGBUS, libc::SIG_DFL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mapped(input: &Input) -> &Mapped {
        match input {
            Input::Mapped(m) => m,
            Input::Buffered(_) => panic!("not mapped"),
        }
    }

    #[test]
    fn a_mapped_file_reads_whole_and_shrinking_reads_as_zeros_not_a_fault() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let bytes: Vec<u8> = (0..(DROP_STEP as u32 + 3 * 65536))
            .map(|i| (i % 251) as u8 + 1)
            .collect();
        f.write_all(&bytes).unwrap();
        let input = Input::new(File::open(f.path()).unwrap());
        let map = mapped(&input);
        // A second file while the first is mapped: read through a buffer.
        assert!(matches!(
            Input::new(File::open(f.path()).unwrap()),
            Input::Buffered(_)
        ));
        // Two views read it whole, the second behind the pages the first dropped.
        let mut first = map.view();
        let mut head = vec![0u8; DROP_STEP + 65536];
        first.read_exact(&mut head).unwrap();
        assert_eq!(head, bytes[..head.len()]);
        let mut all = vec![];
        map.view().read_to_end(&mut all).unwrap();
        assert_eq!(all, bytes);
        // Another process truncates it: what follows reads as zeros, not as a fault.
        assert!(!shrank());
        f.as_file().set_len(head.len() as u64).unwrap();
        let rest = first.fill_buf().unwrap();
        assert_eq!(rest.len(), 2 * 65536);
        assert!(rest.iter().all(|&b| b == 0));
        assert!(shrank());
        drop(input);
        let input = Input::new(File::open(f.path()).unwrap());
        assert!(!shrank());
        let mut all = vec![];
        mapped(&input).view().read_to_end(&mut all).unwrap();
        assert_eq!(all, bytes[..head.len()]);
    }
}
