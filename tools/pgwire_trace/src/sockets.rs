//! PostgreSQL sockets already open when tracing starts, from /proc: listening sockets of
//! servers (so the kernel side recognizes accept()), and established connections (joined
//! midway). Also socket addresses → the text shown as a connection's identity.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr},
};

/// What /proc/net says about one socket inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocketState {
    /// A TCP socket listening on `port`, or a Unix socket listening at a .s.PGSQL.port path.
    Listening { port: u16 },
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

fn hex_ipv4(h: &str) -> Option<Ipv4Addr> {
    // /proc/net/tcp prints the address as one native-endian (little on x86) u32.
    Some(Ipv4Addr::from(
        u32::from_str_radix(h, 16).ok()?.swap_bytes(),
    ))
}

fn hex_ipv6(h: &str) -> Option<Ipv6Addr> {
    if h.len() != 32 {
        return None;
    }
    let mut b = [0u8; 16];
    for (i, chunk) in b.chunks_mut(4).enumerate() {
        let word = u32::from_str_radix(h.get(i * 8..i * 8 + 8)?, 16).ok()?;
        chunk.copy_from_slice(&word.swap_bytes().to_be_bytes());
    }
    Some(Ipv6Addr::from(b))
}

fn hex_endpoint(s: &str) -> Option<(String, u16)> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = if addr.len() == 8 {
        hex_ipv4(addr)?.to_string()
    } else {
        format!("[{}]", hex_ipv6(addr)?)
    };
    Some((ip, port))
}

/// Parses /proc/net/tcp or tcp6: inode → state (listening and established sockets only).
pub fn parse_tcp(text: &str, into: &mut HashMap<u64, SocketState>) {
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(remote), Some(st), Some(inode)) = (
            f.get(1).and_then(|s| hex_endpoint(s)),
            f.get(2).and_then(|s| hex_endpoint(s)),
            f.get(3),
            f.get(9).and_then(|s| s.parse::<u64>().ok()),
        ) else {
            continue;
        };
        let state = match *st {
            "0A" => SocketState::Listening { port: local.1 },
            "01" => SocketState::Tcp {
                local: local.0,
                local_port: local.1,
                remote: remote.0,
                remote_port: remote.1,
            },
            _ => continue,
        };
        into.insert(inode, state);
    }
}

/// Parses /proc/net/unix: listening sockets at PostgreSQL paths and connected stream sockets.
pub fn parse_unix(text: &str, into: &mut HashMap<u64, SocketState>) {
    for line in text.lines().skip(1) {
        // Num RefCount Protocol Flags Type St Inode [Path]
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(flags), Some(kind), Some(st), Some(inode)) = (
            f.get(3).and_then(|s| u32::from_str_radix(s, 16).ok()),
            f.get(4),
            f.get(5),
            f.get(6).and_then(|s| s.parse::<u64>().ok()),
        ) else {
            continue;
        };
        if *kind != "0001" {
            continue; // not SOCK_STREAM
        }
        let path = f.get(7).map(|s| s.to_string());
        let listening = flags & 0x0001_0000 != 0; // __SO_ACCEPTCON
        let state = if listening {
            match path.as_deref().and_then(pg_socket_port) {
                Some(port) => SocketState::Listening { port },
                None => continue,
            }
        } else if *st == "03" {
            SocketState::Unix { path }
        } else {
            continue;
        };
        into.insert(inode, state);
    }
}

/// The sockets of one network namespace, read through a process in it.
pub fn sockets_seen_by(pid: u32) -> HashMap<u64, SocketState> {
    let mut all = HashMap::new();
    for name in ["tcp", "tcp6"] {
        if let Ok(t) = std::fs::read_to_string(format!("/proc/{pid}/net/{name}")) {
            parse_tcp(&t, &mut all);
        }
    }
    if let Ok(t) = std::fs::read_to_string(format!("/proc/{pid}/net/unix")) {
        parse_unix(&t, &mut all);
    }
    all
}

/// The socket descriptors of a process: (fd, inode). Unreadable processes have none.
pub fn socket_fds(pid: u32) -> Vec<(u32, u64)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return vec![];
    };
    dir.flatten()
        .filter_map(|e| {
            let fd = e.file_name().to_str()?.parse().ok()?;
            let link = std::fs::read_link(e.path()).ok()?;
            let inode = link
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()?;
            Some((fd, inode))
        })
        .collect()
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

    #[test]
    fn tcp_lines() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000   104        0 28761 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1538 0100007F:D5A4 01 00000000:00000000 00:00000000 00000000   104        0 99 1
   2: garbage";
        let mut m = HashMap::new();
        parse_tcp(text, &mut m);
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
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn tcp6_addresses() {
        let (ip, port) = hex_endpoint("00000000000000000000000001000000:1538").unwrap();
        assert_eq!((ip.as_str(), port), ("[::1]", 5432));
    }

    #[test]
    fn unix_lines() {
        let text = "Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 31000 /var/run/postgresql/.s.PGSQL.5433
0000000000000000: 00000003 00000000 00000000 0001 03 31001 /var/run/postgresql/.s.PGSQL.5433
0000000000000000: 00000003 00000000 00000000 0001 03 31002
0000000000000000: 00000002 00000000 00010000 0001 01 31003 /run/systemd/notify
0000000000000000: 00000002 00000000 00000000 0002 01 31004";
        let mut m = HashMap::new();
        parse_unix(text, &mut m);
        assert_eq!(m[&31000], SocketState::Listening { port: 5433 });
        assert_eq!(
            m[&31001],
            SocketState::Unix {
                path: Some("/var/run/postgresql/.s.PGSQL.5433".into())
            }
        );
        assert_eq!(m[&31002], SocketState::Unix { path: None });
        assert_eq!(m.len(), 3);
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
