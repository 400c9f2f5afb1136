//! The kernel calls aya 0.16 does not offer: a uprobe perf event with a `ref_ctr_offset` (the
//! kernel then raises the probe's semaphore in every process that maps the binary, forks and
//! later starts included, and lowers it when the event is closed), a BPF link to that event
//! carrying a cookie (which site fired), both for USDT; and a trial open of a counter, to tell
//! "this machine has no such counter" from other failures before anything is loaded.

use std::{
    ffi::CString,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

use anyhow::{Context as _, anyhow};

/// `struct perf_event_attr` up to `config2` (PERF_ATTR_SIZE_VER1, which every kernel accepts).
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
    config2: u64,
}

/// perf_event_attr flag bits: disabled, exclude_kernel, exclude_hv.
const ATTR_DISABLED: u64 = 1;
const ATTR_EXCLUDE_KERNEL: u64 = 1 << 5;
const ATTR_EXCLUDE_HV: u64 = 1 << 6;

const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PERF_EVENT: u32 = 41;

fn uprobe_pmu_type() -> anyhow::Result<u32> {
    let path = "/sys/bus/event_source/devices/uprobe/type";
    let text = std::fs::read_to_string(path).with_context(|| {
        format!("this kernel has no uprobe PMU ({path}); it needs CONFIG_UPROBE_EVENTS")
    })?;
    text.trim()
        .parse()
        .with_context(|| format!("unreadable {path}: {text:?}"))
}

/// Opens a uprobe (or uretprobe) perf event on `binary` at file `offset`, system-wide, with
/// the semaphore at file offset `ref_ctr_offset` managed by the kernel.
pub fn open_uprobe(
    binary: &Path,
    offset: u64,
    ref_ctr_offset: Option<u64>,
    retprobe: bool,
) -> anyhow::Result<OwnedFd> {
    let path = CString::new(binary.as_os_str().as_encoded_bytes())
        .map_err(|_| anyhow!("binary path {} contains a NUL byte", binary.display()))?;
    let attr = PerfEventAttr {
        type_: uprobe_pmu_type()?,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        // bit 0: retprobe; bits 32-63: ref_ctr_offset (see the PMU's format/ directory)
        config: u64::from(retprobe) | (ref_ctr_offset.unwrap_or(0) << 32),
        config1: path.as_ptr() as u64,
        config2: offset,
        ..Default::default()
    };
    // pid -1 with cpu 0 is how system-wide probe events are opened.
    perf_event_open(&attr, -1, 0).with_context(|| {
        format!(
            "perf_event_open(uprobe {}+{offset:#x}, semaphore {ref_ctr_offset:?})",
            binary.display()
        )
    })
}

/// perf_event_open(2) of `attr` for `pid` on `cpu`, close-on-exec.
fn perf_event_open(attr: &PerfEventAttr, pid: i32, cpu: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: attr (and any path it points to, owned by the caller) outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr as *const PerfEventAttr,
            pid,
            cpu,
            -1,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Opens and closes a disabled counting event `(type_, config)` on this process, user space
/// only (allowed at any perf_event_paranoid up to 2): `Err` is perf_event_open's error, e.g.
/// ENOENT when the machine has no PMU for a hardware event.
pub fn try_open_counter(type_: u32, config: u64) -> std::io::Result<()> {
    let attr = PerfEventAttr {
        type_,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        config,
        flags: ATTR_DISABLED | ATTR_EXCLUDE_KERNEL | ATTR_EXCLUDE_HV,
        ..Default::default()
    };
    // pid 0 with cpu -1: this process on any CPU. Dropping the descriptor closes the event.
    perf_event_open(&attr, 0, -1).map(drop)
}

/// Links the loaded program `prog_fd` to the perf event with `cookie`, then enables the event.
pub fn link_with_cookie(prog_fd: i32, event: &OwnedFd, cookie: u64) -> anyhow::Result<OwnedFd> {
    // union bpf_attr, link_create: prog_fd, target_fd, attach_type, flags, perf_event.bpf_cookie
    let mut attr = [0u8; 64];
    attr[0..4].copy_from_slice(&(prog_fd as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(event.as_raw_fd() as u32).to_ne_bytes());
    attr[8..12].copy_from_slice(&BPF_PERF_EVENT.to_ne_bytes());
    attr[16..24].copy_from_slice(&cookie.to_ne_bytes());
    // SAFETY: attr is a valid, zero-padded bpf_attr of the size we pass.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            attr.as_ptr(),
            attr.len() as u32,
        )
    };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        return Err(anyhow!(err))
            .context("BPF_LINK_CREATE for a perf event with a cookie (needs Linux >= 5.15)");
    }
    // SAFETY: a fresh descriptor we own.
    let link = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: ioctl on our perf event fd.
    if unsafe { libc::ioctl(event.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) } < 0 {
        return Err(anyhow!(std::io::Error::last_os_error()))
            .context("enabling the uprobe perf event");
    }
    Ok(link)
}
