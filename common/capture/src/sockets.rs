//! Sockets already open when tracing starts, from /proc: listening sockets of servers (so the
//! kernel side recognizes accept()), and established connections (joined midway). Also
//! socket addresses → the text shown as a connection's identity.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
};

use nix::{
    errno::Errno,
    sys::socket::{SockType, SockaddrStorage, getpeername, getsockname, getsockopt, sockopt},
};
use procfs::net::{TcpNetEntry, TcpState, UnixNetEntry, UnixState};

/// What /proc/net says about one socket inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocketState {
    /// A TCP socket listening on `port`.
    Listening { port: u16 },
    /// An unconnected Unix stream socket bound to `path`: a server's listener, when the path
    /// is one its protocol's servers use (see [`crate::Protocol::unix_port`]).
    UnixBound { path: String },
    /// A connected TCP socket.
    Tcp {
        local: String,
        local_port: u16,
        remote: String,
        remote_port: u16,
    },
    /// A connected Unix socket; `path` is the server's socket path on the server side.
    Unix { path: Option<String> },
}

/// Port of a ".../.s.PGSQL.NNNN" socket path.
pub fn pg_socket_port(path: &str) -> Option<u16> {
    path.rsplit_once(".s.PGSQL.")?.1.parse().ok()
}

/// A TCP socket's state (listening and established sockets only).
fn tcp_state(e: &TcpNetEntry) -> Option<SocketState> {
    match e.state {
        TcpState::Listen => Some(SocketState::Listening {
            port: e.local_address.port(),
        }),
        TcpState::Established => Some(tcp_connected(e.local_address, e.remote_address)),
        _ => None,
    }
}

fn tcp_connected(local: SocketAddr, remote: SocketAddr) -> SocketState {
    let ip = |a: &SocketAddr| match a {
        SocketAddr::V4(v4) => v4.ip().to_string(),
        SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
    };
    SocketState::Tcp {
        local: ip(&local),
        local_port: local.port(),
        remote: ip(&remote),
        remote_port: remote.port(),
    }
}

/// A Unix stream socket's state: bound and unconnected, or connected. procfs has no socket
/// flags (the kernel's __SO_ACCEPTCON), so a listener is told by its path (an unconnected
/// socket bound to a server's path, which only a listening server holds).
fn unix_state(e: &UnixNetEntry) -> Option<SocketState> {
    if e.socket_type != libc::SOCK_STREAM as u16 {
        return None;
    }
    let path = e.path.as_ref().map(|p| p.to_string_lossy().into_owned());
    match e.state {
        UnixState::UNCONNECTED => Some(SocketState::UnixBound { path: path? }),
        UnixState::CONNECTED => Some(SocketState::Unix { path }),
        _ => None,
    }
}

/// The sockets of one network namespace, read through a process in it: inode → state.
///
/// Each of /proc/net/tcp and tcp6 walks every bucket of the kernel's established hash (2 ms
/// per read with 262144 buckets, and the read that finds the end walks again): the two are
/// read on two threads.
pub fn sockets_seen_by(pid: u32) -> HashMap<u64, SocketState> {
    let Ok(p) = procfs::process::Process::new(pid as i32) else {
        return HashMap::new();
    };
    let (tcp, tcp6) = std::thread::scope(|scope| {
        let tcp6 = scope.spawn(|| p.tcp6());
        (p.tcp(), tcp6.join().ok())
    });
    let tcp = [Some(tcp), tcp6].into_iter().flatten().flatten().flatten();
    let tcp = tcp.filter_map(|e| Some((e.inode, tcp_state(&e)?)));
    let unix = p.unix().into_iter().flatten();
    let unix = unix.filter_map(|e| Some((e.inode, unix_state(&e)?)));
    tcp.chain(unix).collect()
}

/// One process's socket descriptors, each asked what it is through a duplicate of it
/// (pidfd_getfd, Linux 5.6; root may take any process's descriptors): a few system calls per
/// socket where /proc/net/tcp walks every bucket of the kernel's established hash (2 ms per
/// read however few sockets there are) and has to be read per network namespace. nix 0.30
/// has no pidfd_getfd, so the two pidfd calls go through libc.
pub struct ProcessSockets {
    pidfd: OwnedFd,
}

impl ProcessSockets {
    pub fn open(pid: u32) -> nix::Result<Self> {
        let pid = libc::pid_t::try_from(pid).map_err(|_| Errno::ESRCH)?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        Ok(Self { pidfd: owned(fd)? })
    }

    /// The state of descriptor `fd`, socket `inode` when the process's fds were listed: None
    /// for a socket that is neither listening nor established, or not a stream; an error when
    /// it cannot be duplicated (not permitted, an old kernel), or EBADF when it was closed
    /// since (or holds another socket by now).
    pub fn state(&self, fd: u32, inode: u64) -> nix::Result<Option<SocketState>> {
        let fd = i32::try_from(fd).map_err(|_| Errno::EBADF)?;
        // SAFETY: pidfd_getfd takes a pidfd, a descriptor number and flags, and returns a
        // new descriptor (ours to close) or -1.
        let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, self.pidfd.as_raw_fd(), fd, 0) };
        let sock = owned(dup)?;
        if nix::sys::stat::fstat(&sock)?.st_ino != inode {
            return Err(Errno::EBADF);
        }
        Ok(socket_state(&sock))
    }
}

/// The net_cls and net_prio cgroups of a process (`proc` is a pid or "self"), the lines of
/// /proc/PROC/cgroup that name them; None when unreadable. A socket descriptor received by a
/// process is re-tagged with that process's net_cls class id and net_prio index (cgroup v1
/// controllers that tc and iptables rules match on).
pub fn tagging_cgroups(proc: &str) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{proc}/cgroup")).ok()?;
    Some(tagging_lines(&text))
}

/// The lines of a /proc/PID/cgroup text that name the net_cls or net_prio controller.
pub fn tagging_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| {
            let controllers = l.split(':').nth(1).unwrap_or_default();
            controllers
                .split(',')
                .any(|c| c == "net_cls" || c == "net_prio")
        })
        .map(str::to_string)
        .collect()
}

/// Whether duplicating `pid`'s sockets leaves their tags as they were: true when neither
/// controller is mounted, or when this process (`ours`, from [`tagging_cgroups`]) is in the
/// same net_cls and net_prio cgroups as `pid` (the tags written are then the ones there).
pub fn duplicating_is_harmless(ours: Option<&[String]>, pid: u32) -> bool {
    ours.is_some_and(|ours| tagging_cgroups(&pid.to_string()).is_some_and(|t| t == ours))
}

/// A descriptor a system call returned (or its errno).
fn owned(ret: libc::c_long) -> nix::Result<OwnedFd> {
    let fd = RawFd::try_from(ret).map_err(|_| Errno::EINVAL)?;
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a new descriptor just returned to us, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What a socket of ours says of itself, in /proc/net's terms.
fn socket_state(sock: &OwnedFd) -> Option<SocketState> {
    if getsockopt(sock, sockopt::SockType).ok()? != SockType::Stream {
        return None;
    }
    let listening = getsockopt(sock, sockopt::AcceptConn).ok()?;
    let local: SockaddrStorage = getsockname(sock.as_raw_fd()).ok()?;
    // ENOTCONN for a socket not (or not yet) connected.
    let peer: Option<SockaddrStorage> = getpeername(sock.as_raw_fd()).ok();
    if let Some(unix) = local.as_unix_addr() {
        // An accepted socket carries its listener's path, as in /proc/net/unix, which shows
        // an abstract name with an @ for its leading NUL.
        let path = match (unix.path(), unix.as_abstract()) {
            (Some(p), _) => Some(p.to_string_lossy().into_owned()),
            (None, Some(name)) => Some(format!("@{}", String::from_utf8_lossy(name))),
            (None, None) => None,
        };
        return match (listening, peer) {
            (true, _) => Some(SocketState::UnixBound { path: path? }),
            (false, Some(_)) => Some(SocketState::Unix { path }),
            (false, None) => None,
        };
    }
    let local = inet_address(&local)?;
    if listening {
        return Some(SocketState::Listening { port: local.port() });
    }
    // Connected sockets half closed (CLOSE_WAIT, FIN_WAIT...) have a peer too: established
    // only, as /proc/net/tcp was read.
    if !tcp_established(sock) {
        return None;
    }
    Some(tcp_connected(local, inet_address(&peer?)?))
}

/// The socket is TCP and established (TCP_INFO, which other protocols refuse). nix 0.30 has
/// no TCP_INFO option, so it is read through libc.
fn tcp_established(sock: &OwnedFd) -> bool {
    // TCP_ESTABLISHED of include/net/tcp_states.h.
    const ESTABLISHED: u8 = 1;
    // SAFETY: tcp_info is plain integers, for which zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the option's buffer is `info`, of `len` bytes, both ours and live.
    let ret = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    ret == 0 && info.tcpi_state == ESTABLISHED
}

fn inet_address(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// The text identifying a connection, from a socket address as the kernel passed it to
/// accept() (the client's) or connect() (the server's).
pub fn sockaddr_label(b: &[u8]) -> String {
    let family = b.get(..2).map(|f| u16::from_ne_bytes([f[0], f[1]]));
    let port = || b.get(2..4).map(|p| u16::from_be_bytes([p[0], p[1]]));
    match family {
        Some(2) => match (port(), b.get(4..8)) {
            (Some(p), Some(a)) => format!("{}:{p}", Ipv4Addr::new(a[0], a[1], a[2], a[3])),
            _ => "?".into(),
        },
        Some(10) => match (
            port(),
            b.get(8..24).and_then(|a| <[u8; 16]>::try_from(a).ok()),
        ) {
            (Some(p), Some(a)) => format!("[{}]:{p}", Ipv6Addr::from(a)),
            _ => "?".into(),
        },
        Some(1) => {
            let path = b.get(2..).unwrap_or_default();
            let end = path.iter().position(|&c| c == 0).unwrap_or(path.len());
            if end == 0 {
                "[local]".into()
            } else {
                String::from_utf8_lossy(&path[..end]).into_owned()
            }
        }
        _ => "?".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// /proc/net text through procfs' parser, then our reading of each entry.
    fn tcp_of(text: &str) -> HashMap<u64, SocketState> {
        use procfs::FromBufReadSI as _;
        let info = procfs::current_system_info();
        let entries = procfs::net::TcpNetEntries::from_buf_read(text.as_bytes(), info).unwrap();
        entries
            .0
            .iter()
            .filter_map(|e| Some((e.inode, tcp_state(e)?)))
            .collect()
    }

    #[test]
    fn tcp_lines() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000   104        0 28761 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1538 0100007F:D5A4 01 00000000:00000000 00:00000000 00000000   104        0 99 1
   2: 0100007F:1538 0100007F:D5A5 06 00000000:00000000 00:00000000 00000000   104        0 98 1";
        let m = tcp_of(text);
        assert_eq!(m[&28761], SocketState::Listening { port: 5432 });
        assert_eq!(
            m[&99],
            SocketState::Tcp {
                local: "127.0.0.1".into(),
                local_port: 5432,
                remote: "127.0.0.1".into(),
                remote_port: 54692
            }
        );
        assert_eq!(m.len(), 2, "TIME_WAIT is left out");
    }

    #[test]
    fn tcp6_addresses() {
        let text = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1538 00000000000000000000000001000000:D5A4 01 00000000:00000000 00:00000000 00000000   104        0 77 1";
        let m = tcp_of(text);
        assert!(
            matches!(&m[&77], SocketState::Tcp { local, local_port: 5432, .. } if local == "[::1]"),
            "{m:?}"
        );
    }

    #[test]
    fn unix_lines() {
        use procfs::FromBufRead as _;
        let text = "Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 31000 /var/run/postgresql/.s.PGSQL.5433
0000000000000000: 00000003 00000000 00000000 0001 03 31001 /var/run/postgresql/.s.PGSQL.5433
0000000000000000: 00000003 00000000 00000000 0001 03 31002
0000000000000000: 00000002 00000000 00010000 0001 01 31003 /run/systemd/notify
0000000000000000: 00000002 00000000 00000000 0002 01 31004";
        let entries = procfs::net::UnixNetEntries::from_buf_read(text.as_bytes()).unwrap();
        let m: HashMap<u64, SocketState> = entries
            .0
            .iter()
            .filter_map(|e| Some((e.inode, unix_state(e)?)))
            .collect();
        assert_eq!(
            m[&31000],
            SocketState::UnixBound {
                path: "/var/run/postgresql/.s.PGSQL.5433".into()
            }
        );
        assert_eq!(
            m[&31001],
            SocketState::Unix {
                path: Some("/var/run/postgresql/.s.PGSQL.5433".into())
            }
        );
        assert_eq!(m[&31002], SocketState::Unix { path: None });
        assert_eq!(
            m[&31003],
            SocketState::UnixBound {
                path: "/run/systemd/notify".into()
            }
        );
        assert_eq!(m.len(), 4);
    }

    #[test]
    fn this_process_sees_its_own_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = sockets_seen_by(std::process::id());
        assert!(
            seen.values().any(|s| *s == SocketState::Listening { port }),
            "{seen:?}"
        );
    }

    /// Sockets asked through duplicates say what /proc/net says of them: a TCP listener,
    /// both ends of a TCP connection, a Unix listener and both ends of a Unix connection
    /// (the accepted end named by its listener's path, the client's unnamed), an abstract
    /// Unix listener (@name); a connection its client closed is not open for either.
    #[test]
    fn asked_sockets_agree_with_proc_net() {
        use std::os::{fd::AsRawFd as _, unix::net::UnixListener};
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp_client = std::net::TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
        let (tcp_server, _) = tcp.accept().unwrap();
        let dir = std::env::temp_dir().join(format!("pgbpf-sockets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(".s.PGSQL.7777");
        let _ = std::fs::remove_file(&path);
        let unix = UnixListener::bind(&path).unwrap();
        let unix_client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let (unix_server, _) = unix.accept().unwrap();
        use std::os::linux::net::SocketAddrExt as _;
        let me = std::process::id();
        let name = format!("pgbpf-sockets-{me}");
        let abstract_addr =
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let abstract_listener = UnixListener::bind_addr(&abstract_addr).unwrap();
        // A connection its client closed: CLOSE_WAIT on the server side, not an open one.
        let closing = std::net::TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
        let (closed_by_client, _) = tcp.accept().unwrap();
        drop(closing);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let table = sockets_seen_by(me);
        let asked = ProcessSockets::open(me).unwrap();
        let fds = [
            tcp.as_raw_fd(),
            tcp_client.as_raw_fd(),
            tcp_server.as_raw_fd(),
            unix.as_raw_fd(),
            unix_client.as_raw_fd(),
            unix_server.as_raw_fd(),
            abstract_listener.as_raw_fd(),
        ];
        let inodes = pgbpf_common::procs::socket_fds(me);
        let inode_of = |fd: i32| inodes.iter().find(|(f, _)| *f == fd as u32).unwrap().1;
        for fd in fds {
            let fd = fd as u32;
            let inode = inodes.iter().find(|(f, _)| *f == fd).unwrap().1;
            let state = asked.state(fd, inode).unwrap();
            assert!(state.is_some(), "fd {fd}");
            assert_eq!(state.as_ref(), table.get(&inode), "fd {fd}");
        }
        assert_eq!(
            asked
                .state(
                    unix_server.as_raw_fd() as u32,
                    inode_of(unix_server.as_raw_fd())
                )
                .unwrap(),
            Some(SocketState::Unix {
                path: Some(path.display().to_string())
            })
        );
        assert_eq!(
            asked
                .state(
                    abstract_listener.as_raw_fd() as u32,
                    inode_of(abstract_listener.as_raw_fd())
                )
                .unwrap(),
            Some(SocketState::UnixBound {
                path: format!("@{name}")
            })
        );
        let fd = closed_by_client.as_raw_fd();
        assert_eq!(asked.state(fd as u32, inode_of(fd)), Ok(None));
        assert_eq!(table.get(&inode_of(fd)), None);
        assert_eq!(asked.state(999_999, 1), Err(Errno::EBADF));
        // A descriptor that holds another socket than the one listed counts as closed.
        let tcp_fd = tcp.as_raw_fd() as u32;
        assert_eq!(
            asked.state(tcp_fd, inode_of(unix.as_raw_fd())),
            Err(Errno::EBADF)
        );
        let ours = tagging_cgroups("self");
        assert!(duplicating_is_harmless(ours.as_deref(), me));
        assert!(ProcessSockets::open(u32::MAX).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn socket_addresses() {
        let mut v4 = vec![2, 0, 0x15, 0x38, 10, 0, 0, 7];
        v4.extend([0; 8]);
        assert_eq!(sockaddr_label(&v4), "10.0.0.7:5432");
        let mut un = vec![1, 0];
        un.extend(b"/tmp/.s.PGSQL.5432\0");
        assert_eq!(sockaddr_label(&un), "/tmp/.s.PGSQL.5432");
        assert_eq!(sockaddr_label(&[1, 0]), "[local]");
        assert_eq!(sockaddr_label(&[]), "?");
        assert_eq!(sockaddr_label(&[2, 0, 1]), "?");
        assert_eq!(pg_socket_port("/x/.s.PGSQL.6000"), Some(6000));
        assert_eq!(pg_socket_port("/x/.s.PGSQL.lock"), None);
    }
}
