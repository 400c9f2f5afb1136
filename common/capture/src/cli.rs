//! The command-line options every wire-protocol tool shares: ports, capture size, ring
//! buffer, `--record` / `--read`, the hook choice.

use std::path::PathBuf;

use clap::Args;
use pgbpf_common::target::TargetArgs;

use crate::Options;

#[derive(Args, Debug, Clone)]
pub struct CaptureArgs {
    /// Bytes captured per read or write (the rest of bigger ones is skipped, framing kept
    /// where the protocol allows; readv/writev and sendmsg/recvmsg at most 8192)
    #[arg(long, value_name = "BYTES", default_value_t = 8192,
          value_parser = clap::value_parser!(u32).range(64..=65536))]
    pub capture: u32,
    /// Ring buffer size in MiB (a power of two)
    #[arg(long, value_name = "MIB", default_value_t = 16,
          value_parser = parse_buffer_mb)]
    pub buffer_mb: u32,
    /// Also write every captured record to FILE (read it back with --read)
    #[arg(long, value_name = "FILE", conflicts_with = "read")]
    pub record: Option<PathBuf>,
    /// With --record: overwrite FILE if it exists
    #[arg(long, requires = "record")]
    pub force: bool,
    /// Decode a capture written by --record instead of tracing (no root needed)
    #[arg(long, value_name = "FILE")]
    pub read: Option<PathBuf>,
    /// Capture reads and writes at the exits of the read and write syscalls instead of the
    /// socket layer's sock_recv_length/sock_send_length tracepoints (the default from Linux
    /// 6.4; older kernels always use the syscalls)
    #[arg(long)]
    pub syscall_hooks: bool,
    /// Do not read TLS plaintext through the processes' libssl (uprobes on SSL_read and
    /// SSL_write); TLS connections are then only counted as encrypted
    #[arg(long)]
    pub no_tls: bool,
}

impl CaptureArgs {
    /// The capture's options: the server ports are the target's `--port`s (none: those the
    /// protocol's servers listen on here, and its usual port); `verbose`: the loader's
    /// messages.
    pub fn options(&self, target: &TargetArgs, verbose: bool) -> Options {
        Options {
            ports: target.port.clone(),
            capture: self.capture,
            buffer_mb: self.buffer_mb,
            syscall_hooks: self.syscall_hooks,
            tls: !self.no_tls,
            verbose,
        }
    }
}

fn parse_buffer_mb(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !(1..=1024).contains(&n) || !n.is_power_of_two() {
        return Err("the ring buffer size must be a power of two from 1 to 1024 MiB".into());
    }
    Ok(n)
}
