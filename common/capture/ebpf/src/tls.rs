//! TLS plaintext, from uprobes on the traced processes' own libssl (OpenSSL 1.1 and 3):
//! SSL_read, SSL_read_ex, SSL_write, SSL_write_ex (or the internal functions they call, with
//! the _ex functions' arguments) and SSL_do_handshake. At a call's entry its
//! buffer is remembered per thread; the socket read or write the library does inside the call
//! names the connection (and marks the socket TLS, so that its encrypted bytes are never
//! copied); at the call's return the plaintext goes out as a DATA record of that connection,
//! flagged FLAG_TLS. A call that did no socket I/O (the record was already buffered) is
//! placed by the descriptor its SSL object used before (SSL_FDS).

use aya_ebpf::{
    helpers::bpf_probe_read_user,
    macros::{map, uprobe, uretprobe},
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};
use pgbpf_capture_ebpf::{CAPTURE_MAX_BUF, DIR_READ, DIR_WRITE, FLAG_TLS, SockInfo, counter};
use pgbpf_common_ebpf::counters::bump;

use crate::{
    CAPTURE_LIMIT,
    capture::deliver,
    conns::{SOCKS, key_of, may_have_socks},
    emit::{Moved, send_buffer},
    ids, now,
};

/// What a call is, for its return.
const CALL_READ: u8 = 1;
const CALL_WRITE: u8 = 2;
const CALL_HANDSHAKE: u8 = 3;

/// A TLS call between its entry and its return.
#[derive(Clone, Copy)]
#[repr(C)]
struct TlsCall {
    ssl: u64,
    buf: u64,
    /// SSL_read_ex/SSL_write_ex: where the library writes the byte count (else 0).
    count_ptr: u64,
    /// The descriptor the call did socket I/O on (or its SSL object used before); -1 unknown.
    fd: i64,
    /// What SSL_FDS said at the entry: the return updates it only when the call learnt
    /// another descriptor (a map update costs more than a comparison).
    known_fd: i64,
    /// CALL_*, or CALL_NONE between calls: the entry stays for the thread's next call, written
    /// in place (cheaper than a delete and an insert per call).
    kind: u8,
    _pad: [u8; 7],
}

/// The thread is between TLS calls.
const CALL_NONE: u8 = 0;

/// The thread's current call, by thread id (LRU: threads that exit leave their entry).
#[map]
static TLS_CALLS: LruHashMap<u32, TlsCall> = LruHashMap::with_max_entries(16384, 0);

#[derive(Clone, Copy)]
#[repr(C)]
struct SslKey {
    tgid: u32,
    _pad: u32,
    ssl: u64,
}

/// The descriptor each SSL object did its socket I/O on.
#[map]
static SSL_FDS: LruHashMap<SslKey, u32> = LruHashMap::with_max_entries(65536, 0);

/// Called for a socket read or write of a traced connection: true when it happens inside a
/// TLS call of this thread (the bytes are encrypted: not copied), which then learns its
/// descriptor; the socket is marked TLS.
#[inline(always)]
pub fn inside_call(tid: u32, fd: u32, info: *mut SockInfo) -> bool {
    let Some(call) = TLS_CALLS.get_ptr_mut(&tid) else {
        return false;
    };
    // SAFETY: map value pointers, valid during this program.
    unsafe {
        if (*call).kind == CALL_NONE {
            return false;
        }
        (*call).fd = i64::from(fd);
        (*info).tls = 1;
    }
    true
}

#[inline(always)]
fn enter(ctx: &ProbeContext, kind: u8, ex: bool) -> u32 {
    let (id, tgid) = ids();
    if !may_have_socks(tgid) {
        return 0;
    }
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    let key = SslKey { tgid, _pad: 0, ssl };
    // SAFETY: copied out.
    let fd = unsafe { SSL_FDS.get(&key) }.map_or(-1, |&fd| i64::from(fd));
    let call = TlsCall {
        ssl,
        buf: ctx.arg(1).unwrap_or(0),
        count_ptr: if ex { ctx.arg(3).unwrap_or(0) } else { 0 },
        fd,
        known_fd: fd,
        kind,
        _pad: [0; 7],
    };
    let tid = id as u32;
    match TLS_CALLS.get_ptr_mut(&tid) {
        // SAFETY: map value pointer, valid during this program.
        Some(slot) => unsafe { *slot = call },
        None => {
            let _ = TLS_CALLS.insert(&tid, &call, 0);
        }
    }
    0
}

#[inline(always)]
fn leave(ctx: &RetProbeContext) -> u32 {
    let (id, tgid) = ids();
    let tid = id as u32;
    let Some(slot) = TLS_CALLS.get_ptr_mut(&tid) else {
        return 0;
    };
    // SAFETY: map value pointer, copied out, then marked free for the thread's next call.
    let call = unsafe {
        let call = *slot;
        (*slot).kind = CALL_NONE;
        call
    };
    if call.kind == CALL_NONE {
        return 0;
    }
    if call.fd >= 0 && call.fd != call.known_fd {
        let key = SslKey {
            tgid,
            _pad: 0,
            ssl: call.ssl,
        };
        let _ = SSL_FDS.insert(&key, &(call.fd as u32), 0);
    }
    if call.kind == CALL_HANDSHAKE {
        return 0;
    }
    let ret: i64 = ctx.ret::<i32>() as i64;
    let moved = if call.count_ptr != 0 {
        // SSL_read_ex/SSL_write_ex return 1 on success, the internal functions they call
        // (probed in their place where found, see the userspace tls::sites) a positive value.
        if ret <= 0 {
            return 0;
        }
        // SAFETY: user memory (a size_t the library wrote), read by helper.
        unsafe { bpf_probe_read_user(call.count_ptr as *const u64) }.unwrap_or(0)
    } else if ret > 0 {
        ret as u64
    } else {
        return 0;
    };
    if moved == 0 {
        return 0;
    }
    if call.fd < 0 {
        bump(counter::TLS_UNMAPPED);
        return 0;
    }
    let key = key_of(tgid, call.fd as u64);
    let Some(info) = SOCKS.get_ptr_mut(&key) else {
        return 0; // a TLS connection of this process that is not traced (HTTPS, ...)
    };
    // SAFETY: map value pointer.
    let snapshot = unsafe { *info };
    let m = Moved {
        key,
        tid,
        info: &snapshot,
        dir: if call.kind == CALL_READ {
            DIR_READ
        } else {
            DIR_WRITE
        },
        ts: now(),
        len: moved,
        flags: FLAG_TLS,
    };
    let want = moved.min(CAPTURE_LIMIT.load() as u64);
    let sent = send_buffer(&m, call.buf, want.min(CAPTURE_MAX_BUF as u64));
    deliver(info, &snapshot, m.dir, moved, sent);
    0
}

#[uprobe]
pub fn ssl_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, CALL_READ, false)
}

#[uprobe]
pub fn ssl_read_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, CALL_READ, true)
}

#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, CALL_WRITE, false)
}

#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, CALL_WRITE, true)
}

#[uprobe]
pub fn ssl_handshake(ctx: ProbeContext) -> u32 {
    enter(&ctx, CALL_HANDSHAKE, false)
}

/// One return program for every call: the call's kind was remembered at its entry.
#[uretprobe]
pub fn ssl_return(ctx: RetProbeContext) -> u32 {
    leave(&ctx)
}
