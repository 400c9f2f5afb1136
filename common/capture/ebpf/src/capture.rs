//! The data path: a read or write of a traced connection, caught at the socket layer's
//! tracepoints (or the syscall exits), becomes a DATA record; a ring buffer full of them is
//! counted, and the connection remembers the bytes lost.

use aya_ebpf::{
    EbpfContext,
    helpers::bpf_probe_read_user,
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use pgbpf_capture_ebpf::{
    CAPTURE_MAX_BUF, CAPTURE_MAX_VECTORED, DIR_READ, DIR_WRITE, SockInfo, counter,
};
use pgbpf_common_ebpf::{
    atomic_add,
    counters::{add, bump},
    regs::{self, nr},
    syscall,
};

use crate::{
    CAPTURE_LIMIT, TLS_HOOKS,
    conns::{SOCKS, key_of, may_have_socks},
    emit::{Moved, send_buffer, send_vectored},
    ids, now,
};

/// MSG_PEEK of recvmsg's flags: the bytes stay to be read again.
const MSG_PEEK: i32 = 2;

/// How a read or write's data is laid out.
const OP_BUF: u8 = 1;
const OP_IOV: u8 = 2;
const OP_MSG: u8 = 3;

/// How the data of syscall `syscall_nr` moving bytes in direction `dir` is laid out, if it is one of
/// the read and write families (the socket tracepoints also fire for sendfile, splice,
/// io_uring and the kernel's own sockets, which are not captured).
#[inline(always)]
fn data_op(syscall_nr: u32, dir: u8) -> Option<u8> {
    match (syscall_nr, dir) {
        (nr::READ | nr::RECVFROM, DIR_READ) | (nr::WRITE | nr::SENDTO, DIR_WRITE) => Some(OP_BUF),
        (nr::READV, DIR_READ) | (nr::WRITEV, DIR_WRITE) => Some(OP_IOV),
        (nr::RECVMSG, DIR_READ) | (nr::SENDMSG, DIR_WRITE) => Some(OP_MSG),
        _ => None,
    }
}

/// A read or write syscall's exit: `ret` bytes moved.
#[inline(always)]
fn exit_data(ctx: &TracePointContext, op: u8, dir: u8) -> u32 {
    // The result first: a load from the context, cheaper than anything else here.
    let moved = syscall::ret(ctx);
    if moved <= 0 {
        return 0;
    }
    let (id, tgid) = ids();
    if !may_have_socks(tgid) {
        return 0;
    }
    let Some((_, args)) = regs::current_syscall() else {
        return 0;
    };
    capture(id, tgid, moved as u64, op, dir, args);
    0
}

/// sock_recvmsg or sock_sendmsg of a socket finished (sock:sock_{recv,send}_length; raw
/// tracepoint arguments: the sock, the result, the flags): when the syscall under it is a read
/// or write of a traced connection, capture it. Unlike the syscall tracepoints these fire
/// for socket I/O only, and a raw tracepoint calls the program directly, without building a
/// perf record first.
#[inline(always)]
fn sock_data(ctx: &RawTracePointContext, dir: u8) -> i32 {
    // SAFETY: both tracepoints have three arguments, each widened to a u64.
    let (moved, flags) = unsafe {
        let args = ctx.as_ptr().cast::<u64>();
        (*args.add(1) as i32, *args.add(2) as i32)
    };
    // A peek leaves the bytes to be read again.
    if moved <= 0 || (dir == DIR_READ && flags & MSG_PEEK != 0) {
        return 0;
    }
    let (id, tgid) = ids();
    if !may_have_socks(tgid) {
        return 0;
    }
    let Some((syscall_nr, args)) = regs::current_syscall() else {
        return 0;
    };
    if let Some(op) = data_op(syscall_nr, dir) {
        capture(id, tgid, moved as u64, op, dir, args);
    }
    0
}

/// Sends the bytes a read or write moved (`moved`, with the syscall's arguments `fd`, buffer or
/// iovecs or msghdr, count) when `fd` is a traced connection of `tgid` that is not TLS.
#[inline(always)]
fn capture(id: u64, tgid: u32, moved: u64, op: u8, dir: u8, [fd, ptr, count]: [u64; 3]) {
    let key = key_of(tgid, fd);
    let Some(info) = SOCKS.get_ptr_mut(&key) else {
        return;
    };
    // Encrypted bytes: inside a TLS library call (whose return sends the plaintext), or of
    // a socket such a call used before (the handshake's, alerts).
    if TLS_HOOKS.load() != 0 && crate::tls::inside_call(id as u32, fd as u32, info) {
        return;
    }
    // SAFETY: `info` is a map value pointer, valid during this program.
    let snapshot = unsafe { *info };
    if snapshot.tls != 0 {
        return;
    }
    // Stamped at the end of the transfer: when a read's data arrived, when a write was handed
    // to the kernel (PostgreSQL's sockets are non-blocking, so that is also when it began).
    let m = Moved {
        key,
        tid: id as u32,
        info: &snapshot,
        dir,
        ts: now(),
        len: moved,
        flags: 0,
    };
    let want = moved.min(CAPTURE_LIMIT.load() as u64);
    let sent = if op == OP_BUF {
        send_buffer(&m, ptr, want.min(CAPTURE_MAX_BUF as u64))
    } else {
        // One vectored copy for both layouts: the verifier walks its loop once per call
        // site, and two sites cost a third of the programs' verification.
        let (iov, n) = if op == OP_MSG {
            // struct user_msghdr: msg_iov at 16, msg_iovlen at 24.
            // SAFETY: user memory, read by helper.
            let iov = unsafe { bpf_probe_read_user((ptr + 16) as *const u64) }.unwrap_or(0);
            // SAFETY: as above.
            let n = unsafe { bpf_probe_read_user((ptr + 24) as *const u64) }.unwrap_or(0);
            (iov, n)
        } else {
            (ptr, count)
        };
        send_vectored(&m, iov, n, want.min(CAPTURE_MAX_VECTORED as u64))
    };
    deliver(info, &snapshot, dir, moved, sent);
}

/// After a DATA record of `moved` bytes in `dir` was sent (`sent`: the bytes captured) or
/// not (the ring was full): the truncation and loss counters, and the connection's lost
/// bytes, which travel with its next record.
#[inline(always)]
pub fn deliver(info: *mut SockInfo, snapshot: &SockInfo, dir: u8, moved: u64, sent: Option<u64>) {
    match sent {
        Some(captured) => {
            if captured < moved {
                bump(counter::TRUNCATED);
            }
            // The lost bytes travelled with this record: take them off the connection.
            // SAFETY: map value pointer; atomic adds of the negated amounts.
            unsafe {
                if snapshot.lost[0] != 0 {
                    atomic_add(&mut (*info).lost[0], snapshot.lost[0].wrapping_neg());
                }
                if snapshot.lost[1] != 0 {
                    atomic_add(&mut (*info).lost[1], snapshot.lost[1].wrapping_neg());
                }
            }
        }
        None => {
            bump(counter::LOST_RECORDS);
            add(counter::LOST_BYTES, moved);
            // SAFETY: map value pointer.
            unsafe { atomic_add(&mut (*info).lost[(dir & 1) as usize], moved) };
        }
    }
}

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn sock_recv(ctx: RawTracePointContext) -> i32 {
    sock_data(&ctx, DIR_READ)
}

#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn sock_send(ctx: RawTracePointContext) -> i32 {
    sock_data(&ctx, DIR_WRITE)
}

macro_rules! data_syscall {
    ($exit:ident, $op:expr, $dir:expr) => {
        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            exit_data(&ctx, $op, $dir)
        }
    };
}

data_syscall!(exit_read, OP_BUF, DIR_READ);
data_syscall!(exit_write, OP_BUF, DIR_WRITE);
data_syscall!(exit_recvfrom, OP_BUF, DIR_READ);
data_syscall!(exit_sendto, OP_BUF, DIR_WRITE);
data_syscall!(exit_readv, OP_IOV, DIR_READ);
data_syscall!(exit_writev, OP_IOV, DIR_WRITE);
data_syscall!(exit_recvmsg, OP_MSG, DIR_READ);
data_syscall!(exit_sendmsg, OP_MSG, DIR_WRITE);
