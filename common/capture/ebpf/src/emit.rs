//! Records to userspace: headers written field by field, DATA records copied from user
//! memory straight into ring buffer reservations of a few size classes (or assembled in a
//! per-CPU scratch buffer for vectored calls), OPEN and CLOSE records.

use aya_ebpf::{
    helpers::{bpf_probe_read_user, generated::bpf_probe_read_user as probe_read_user_raw},
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use pgbpf_capture_ebpf::{
    ADDR_BYTES, CAPTURE_MAX, CAPTURE_MAX_BUF, CAPTURE_MAX_VECTORED, HEADER_BYTES, KIND_DATA,
    KIND_OPEN, MAX_IOVECS, RecordHeader, Scratch, SockInfo, SockKey, counter,
};
use pgbpf_common_ebpf::{counters::bump, ring};

use crate::{RING_BYTES, now};

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 << 20, 0);
#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Writes a record header field by field (a whole-struct assignment compiles to a memset
/// call, which showed in profiles).
#[inline(always)]
fn fill_header(h: *mut RecordHeader, kind: u8, key: &SockKey, tid: u32, info: &SockInfo, ts: u64) {
    // SAFETY: `h` points at a header in this CPU's scratch value or in a ring reservation.
    unsafe {
        (*h).ts_ns = ts;
        (*h).conn_id = info.conn_id;
        (*h).len = 0;
        (*h).lost = [0, 0];
        (*h).tgid = key.tgid;
        (*h).tid = tid;
        (*h).fd = key.fd;
        (*h).captured = 0;
        (*h).port = info.port;
        (*h).kind = kind;
        (*h).role = info.role;
        (*h).dir = 0;
        (*h).flags = 0;
    }
}

/// Fills the scratch header for a record of `kind` on `key`.
#[inline(always)]
pub fn header(s: *mut Scratch, kind: u8, key: &SockKey, tid: u32, info: &SockInfo, ts: u64) {
    // SAFETY: `s` is this CPU's scratch value.
    fill_header(unsafe { &mut (*s).header }, kind, key, tid, info, ts);
}

/// No wakeup per record (that costs more than the capture): userspace drains the ring every
/// 50 ms, or sooner once it is a quarter full.
#[inline(always)]
fn wakeup_flags() -> u64 {
    if EVENTS.query(ring::AVAIL_DATA) > RING_BYTES.load() / 4 {
        ring::FORCE_WAKEUP
    } else {
        ring::NO_WAKEUP
    }
}

/// Sends the scratch record with `captured` payload bytes; false when the ring is full.
#[inline(always)]
pub fn send(s: *mut Scratch, captured: u32) -> bool {
    let mut n = captured as usize;
    if n > CAPTURE_MAX {
        n = CAPTURE_MAX;
    }
    // SAFETY: HEADER_BYTES + n <= size_of::<Scratch>(), all inside this CPU's scratch value.
    let bytes = unsafe { core::slice::from_raw_parts(s as *const u8, HEADER_BYTES + n) };
    EVENTS.output(bytes, wakeup_flags()).is_ok()
}

/// Copies `len` bytes of user memory at `src` to the payload at `off`.
#[inline(always)]
fn copy_user(s: *mut Scratch, off: usize, src: u64, len: usize) -> bool {
    // Masks bound both numbers for the verifier: off < 8192 and len <= 8192 keep the copy
    // inside the 16 KiB payload.
    let off = off & (CAPTURE_MAX_VECTORED - 1);
    if len > CAPTURE_MAX_VECTORED || len == 0 {
        return len == 0;
    }
    // SAFETY: destination inside the scratch payload (bounds above); source is user memory.
    unsafe {
        let dst = (*s).data.as_mut_ptr().add(off);
        probe_read_user_raw(dst.cast(), len as u32, src as *const _) == 0
    }
}

/// A DATA record with room for N payload bytes, reserved in the ring buffer itself.
#[repr(C)]
struct Sized<const N: usize> {
    header: RecordHeader,
    data: [u8; N],
}

/// What one read or write moved, on which connection.
pub struct Moved<'a> {
    pub key: SockKey,
    pub tid: u32,
    pub info: &'a SockInfo,
    pub dir: u8,
    pub ts: u64,
    /// Bytes the syscall (or the TLS call) moved.
    pub len: u64,
    /// RecordHeader::flags.
    pub flags: u8,
}

/// Sends a DATA record with the first `n` (<= CAPTURE_MAX_BUF) bytes at `buf` (user memory), read
/// straight into a ring buffer reservation of the smallest size class that holds them: no
/// per-CPU scratch copy, no second copy into the ring. Returns the bytes captured, or None
/// when the ring is full.
#[inline(always)]
pub fn send_buffer(m: &Moved, buf: u64, n: u64) -> Option<u64> {
    // The reservation's size must be a constant for the verifier: a few classes keep the
    // wasted ring space small for the short messages of OLTP traffic.
    if n <= 128 {
        send_sized::<128>(m, buf, n)
    } else if n <= 1024 {
        send_sized::<1024>(m, buf, n)
    } else if n <= 4096 {
        send_sized::<4096>(m, buf, n)
    } else if n <= CAPTURE_MAX as u64 {
        send_sized::<CAPTURE_MAX>(m, buf, n)
    } else {
        send_sized::<CAPTURE_MAX_BUF>(m, buf, n)
    }
}

#[inline(always)]
fn send_sized<const N: usize>(m: &Moved, buf: u64, n: u64) -> Option<u64> {
    let mut entry = EVENTS.reserve::<Sized<N>>(0)?;
    let rec = entry.as_mut_ptr();
    let n = if n > N as u64 { N as u64 } else { n };
    // SAFETY: `rec` is this program's exclusive reservation of size_of::<Sized<N>>() bytes;
    // n <= N keeps the user copy inside its payload.
    let captured = unsafe {
        fill_header(&mut (*rec).header, KIND_DATA, &m.key, m.tid, m.info, m.ts);
        let ok =
            probe_read_user_raw((*rec).data.as_mut_ptr().cast(), n as u32, buf as *const _) == 0;
        let captured = if ok { n } else { 0 };
        (*rec).header.dir = m.dir;
        (*rec).header.flags = m.flags;
        (*rec).header.len = m.len;
        (*rec).header.captured = captured as u32;
        (*rec).header.lost = m.info.lost;
        captured
    };
    entry.submit(wakeup_flags());
    Some(captured)
}

/// Sends a DATA record of a vectored call (iovecs at `iov`, `count` of them), assembled in
/// the per-CPU scratch buffer. Returns the bytes captured, or None when the ring is full.
#[inline(always)]
pub fn send_vectored(m: &Moved, iov: u64, count: u64, want: u64) -> Option<u64> {
    let s = scratch()?;
    header(s, KIND_DATA, &m.key, m.tid, m.info, m.ts);
    let mut captured: u64 = 0;
    let mut i = 0u32;
    while i < MAX_IOVECS {
        if (i as u64) >= count || captured >= want {
            break;
        }
        let at = iov + 16 * i as u64;
        // SAFETY: user memory (struct iovec { base, len }), read by helper.
        let base = unsafe { bpf_probe_read_user(at as *const u64) }.unwrap_or(0);
        // SAFETY: as above.
        let len = unsafe { bpf_probe_read_user((at + 8) as *const u64) }.unwrap_or(0);
        let n = len.min(want - captured);
        if !copy_user(s, captured as usize, base, n as usize) {
            break;
        }
        captured += n;
        i += 1;
    }
    if i == MAX_IOVECS && (i as u64) < count && captured < want {
        bump(counter::IOVECS_SKIPPED);
    }
    // SAFETY: this CPU's scratch header.
    unsafe {
        (*s).header.dir = m.dir;
        (*s).header.flags = m.flags;
        (*s).header.len = m.len;
        (*s).header.captured = captured as u32;
        (*s).header.lost = m.info.lost;
    }
    send(s, captured as u32).then_some(captured)
}

/// Sends an OPEN record with the socket address at `addr` (user memory).
#[inline(always)]
pub fn send_open(key: &SockKey, tid: u32, info: &SockInfo, addr: u64, addr_len: u64) {
    let Some(s) = scratch() else {
        return;
    };
    header(s, KIND_OPEN, key, tid, info, now());
    let mut n = addr_len.min(ADDR_BYTES as u64) as u32;
    // SAFETY: n <= ADDR_BYTES, inside the payload; source is user memory.
    if addr == 0
        || unsafe { probe_read_user_raw((*s).data.as_mut_ptr().cast(), n, addr as *const _) } != 0
    {
        n = 0;
    }
    // SAFETY: this CPU's scratch header.
    unsafe { (*s).header.captured = n };
    if !send(s, n) {
        bump(counter::LOST_RECORDS);
    }
}

/// The per-CPU scratch record, for records assembled before they are sent.
#[inline(always)]
pub fn scratch() -> Option<*mut Scratch> {
    SCRATCH.get_ptr_mut(0)
}
