//! Records → requests: one `pgbpf_pgwire::conn::Connection` per captured connection, fed
//! with each direction's bytes and gaps; the same path for live tracing and `--read`.

use std::sync::Arc;

use foldhash::{HashMap, HashMapExt};

use pgbpf_capture::{DIR_READ, DIR_WRITE, ROLE_SERVER};
use pgbpf_pgwire::conn::{Completed, Connection};

use pgbpf_capture::{Kind, Record};

/// One request and its response.
#[derive(Clone, Debug)]
pub struct Request {
    pub pid: u32,
    pub conn_id: u64,
    /// Client address (server side) or server address (client side).
    /// Who is talking: shared by every request of the connection.
    pub meta: Arc<ConnMeta>,
    /// Wall-clock ns of the first request byte and of the completion.
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub done: Completed,
}

/// The identity of a connection, as its requests report it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnMeta {
    /// Client address (server side) or server address (client side).
    pub peer: String,
    pub user: Option<String>,
    pub database: Option<String>,
    pub application: Option<String>,
}

/// What the decoder tells the reporter.
// Events pass through a buffer the live drain reuses: a request held inline costs no
// allocation, where boxing it cost one per request.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Event {
    Request(Request),
    /// A connection switched to TLS or GSS encryption: its payload cannot be seen.
    Encrypted {
        /// Wall-clock ns of the record that showed it.
        unix_ns: u64,
        pid: u32,
        conn_id: u64,
        peer: String,
    },
}

/// Totals over the whole trace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecodeStats {
    pub connections: u64,
    pub encrypted: u64,
    pub requests: u64,
    pub errors: u64,
    /// Messages that did not decode.
    pub malformed: u64,
    /// Responses not paired because bytes were missing around them.
    pub unmatched: u64,
    /// Bytes lost in the kernel (ring buffer full), as reported with later records.
    pub lost_bytes: u64,
    /// Bytes beyond the per-syscall capture limit.
    pub truncated_bytes: u64,
}

struct Conn {
    c: Connection,
    pid: u32,
    fd: u32,
    /// Monotonic time of the last record (when `pid` was last confirmed).
    last_ns: u64,
    peer: String,
    role: u8,
    /// Counted into the stats already.
    seen_encrypted: bool,
    /// Built once the start-up parameters are known (rebuilt if they change).
    meta: Option<(usize, Arc<ConnMeta>)>,
    malformed: u64,
    unmatched: u64,
}

/// Decodes every connection of a capture.
pub struct Decoder {
    conns: HashMap<u64, Conn>,
    wall_offset_ns: i64,
    pub stats: DecodeStats,
    /// Connections that turned encrypted, for the live capture to stop copying: (tgid, fd).
    pub stop_capturing: Vec<(u32, u32)>,
    /// The kernel's counters, when the capture carries them.
    pub kernel_counters: Option<Vec<u64>>,
    /// Statements completed by the record being fed (kept to reuse its memory).
    done: Vec<Completed>,
}

impl Decoder {
    /// `wall_offset_ns`: wall-clock minus monotonic time, to print record times as dates.
    pub fn new(wall_offset_ns: i64) -> Decoder {
        Decoder {
            conns: HashMap::new(),
            wall_offset_ns,
            stats: DecodeStats::default(),
            stop_capturing: vec![],
            kernel_counters: None,
            done: vec![],
        }
    }

    fn wall(&self, mono_ns: u64) -> u64 {
        pgbpf_common::output::wall_of(self.wall_offset_ns, mono_ns)
    }

    fn open(&mut self, r: &Record, from_start: bool) -> &mut Conn {
        self.conns.entry(r.conn_id).or_insert_with(|| {
            self.stats.connections += 1;
            let peer = if r.payload.is_empty() {
                format!("fd {}", r.fd)
            } else {
                String::from_utf8_lossy(&r.payload).into_owned()
            };
            Conn {
                c: Connection::new(from_start),
                pid: r.tgid,
                fd: r.fd,
                last_ns: r.ts_ns,
                peer,
                role: r.role,
                seen_encrypted: false,
                meta: None,
                malformed: 0,
                unmatched: 0,
            }
        })
    }

    /// Feeds one record; returns what it completed.
    pub fn feed(&mut self, r: &Record) -> Vec<Event> {
        let mut out = vec![];
        self.feed_into(r, &mut out);
        out
    }

    /// Feeds one record; appends what it completed to `out` (a buffer the caller reuses, so
    /// the live drain allocates no vector per record).
    pub fn feed_into(&mut self, r: &Record, out: &mut Vec<Event>) {
        match r.kind {
            Kind::Open | Kind::Existing => {
                // A reused id starts a new connection.
                out.extend(self.close(r.conn_id));
                self.open(r, r.kind == Kind::Open);
            }
            Kind::Close => out.extend(self.close(r.conn_id)),
            Kind::Counters => {
                self.kernel_counters = Some(
                    r.payload
                        .as_chunks::<8>()
                        .0
                        .iter()
                        .map(|c| u64::from_le_bytes(*c))
                        .collect(),
                );
            }
            Kind::Data => self.data(r, out),
        }
    }

    fn data(&mut self, r: &Record, out: &mut Vec<Event>) {
        let missing = r.missing();
        self.stats.truncated_bytes += missing;
        self.stats.lost_bytes += r.lost[0] + r.lost[1];
        let mut done = std::mem::take(&mut self.done);
        let wall_offset_ns = self.wall_offset_ns;
        let conn = self.open(r, false);
        conn.pid = r.tgid;
        conn.fd = r.fd;
        conn.last_ns = conn.last_ns.max(r.ts_ns);
        // On the server the client's bytes are read; on the client they are written.
        let (frontend_dir, backend_dir) = if conn.role == ROLE_SERVER {
            (DIR_READ, DIR_WRITE)
        } else {
            (DIR_WRITE, DIR_READ)
        };
        let lost = |dir: u8| r.lost[usize::from(dir & 1)];
        if lost(frontend_dir) > 0 {
            conn.c.client_bytes(r.ts_ns, &[], lost(frontend_dir));
        }
        if lost(backend_dir) > 0 {
            conn.c
                .server_bytes_into(r.ts_ns, &[], lost(backend_dir), &mut done);
        }
        if r.dir == frontend_dir {
            conn.c.client_bytes(r.ts_ns, &r.payload, missing);
        } else {
            conn.c
                .server_bytes_into(r.ts_ns, &r.payload, missing, &mut done);
        }
        if conn.c.encrypted && !conn.seen_encrypted {
            conn.seen_encrypted = true;
            out.push(Event::Encrypted {
                unix_ns: pgbpf_common::output::wall_of(wall_offset_ns, r.ts_ns),
                pid: conn.pid,
                conn_id: r.conn_id,
                peer: conn.peer.clone(),
            });
            self.stats.encrypted += 1;
            self.stop_capturing.push((r.tgid, r.fd));
        }
        self.account(r.conn_id);
        self.requests(r.conn_id, &mut done, out);
        self.done = done;
    }

    /// Brings the decode-quality counters of a connection into the totals.
    fn account(&mut self, conn_id: u64) {
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        self.stats.malformed += conn.c.malformed - conn.malformed;
        self.stats.unmatched += conn.c.unmatched - conn.unmatched;
        conn.malformed = conn.c.malformed;
        conn.unmatched = conn.c.unmatched;
    }

    /// Moves the statements in `done` (completed on `conn_id`) to `out` as requests.
    fn requests(&mut self, conn_id: u64, done: &mut Vec<Completed>, out: &mut Vec<Event>) {
        if done.is_empty() {
            return;
        }
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            done.clear();
            return;
        };
        let meta = match &conn.meta {
            Some((n, m)) if *n == conn.c.startup.len() => m.clone(),
            _ => {
                let startup = |key: &str| {
                    conn.c
                        .startup
                        .iter()
                        .find(|(k, _)| k == key)
                        .map(|(_, v)| v.clone())
                };
                let m = Arc::new(ConnMeta {
                    peer: conn.peer.clone(),
                    user: startup("user"),
                    database: startup("database").or_else(|| startup("user")),
                    application: startup("application_name"),
                });
                conn.meta = Some((conn.c.startup.len(), m.clone()));
                m
            }
        };
        let pid = conn.pid;
        for d in done.drain(..) {
            self.stats.requests += 1;
            self.stats.errors += u64::from(d.sqlstate.is_some());
            out.push(Event::Request(Request {
                pid,
                conn_id,
                meta: meta.clone(),
                start_unix_ns: self.wall(d.started_ns),
                end_unix_ns: self.wall(d.finished_ns),
                done: d,
            }));
        }
    }

    fn close(&mut self, conn_id: u64) -> Vec<Event> {
        let Some(mut conn) = self.conns.remove(&conn_id) else {
            return vec![];
        };
        let mut done = conn.c.close();
        self.stats.malformed += conn.c.malformed - conn.malformed;
        self.stats.unmatched += conn.c.unmatched - conn.unmatched;
        self.conns.insert(conn_id, conn);
        let mut out = vec![];
        self.requests(conn_id, &mut done, &mut out);
        self.conns.remove(&conn_id);
        out
    }

    /// Ends every connection still open (end of trace or capture).
    pub fn finish(&mut self) -> Vec<Event> {
        let mut ids: Vec<u64> = self.conns.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter().flat_map(|id| self.close(id)).collect()
    }

    /// Ends the connections of processes that exited: the kernel sees no close() when a
    /// process exits with its sockets open. `alive` was sampled at monotonic time
    /// `sampled_ns`, before the records fed since were drained, so a connection whose last
    /// record is older and whose process was gone then has sent everything. Returns the
    /// events and the (tgid, fd) to forget in the kernel.
    pub fn close_exited(
        &mut self,
        sampled_ns: u64,
        alive: impl Fn(u32) -> bool,
    ) -> (Vec<Event>, Vec<(u32, u32)>) {
        let mut gone: Vec<(u64, u32, u32)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.last_ns < sampled_ns && !alive(c.pid))
            .map(|(&id, c)| (id, c.pid, c.fd))
            .collect();
        gone.sort_unstable();
        let events = gone.iter().flat_map(|&(id, _, _)| self.close(id)).collect();
        (events, gone.into_iter().map(|(_, p, f)| (p, f)).collect())
    }

    /// Connections open now.
    #[cfg(test)]
    pub fn open_connections(&self) -> usize {
        self.conns.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgbpf_capture::ROLE_CLIENT;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend((body.len() as u32 + 4).to_be_bytes());
        v.extend(body);
        v
    }

    fn rec(kind: Kind, role: u8, dir: u8, ts: u64, payload: &[u8]) -> Record {
        Record {
            kind,
            role,
            dir,
            tgid: 100,
            tid: 100,
            fd: 7,
            port: 5432,
            conn_id: 1,
            ts_ns: ts,
            len: payload.len() as u64,
            lost: [0, 0],
            payload: payload.to_vec(),
        }
    }

    fn requests(events: Vec<Event>) -> Vec<Request> {
        events
            .into_iter()
            .filter_map(|e| match e {
                Event::Request(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn server_and_client_side_decode_the_same_exchange() {
        let q = msg(b'Q', b"select 1\0");
        let mut resp = msg(b'C', b"SELECT 1\0");
        resp.extend(msg(b'Z', b"I"));
        for (role, req_dir, resp_dir) in [
            (ROLE_SERVER, DIR_READ, DIR_WRITE),
            (ROLE_CLIENT, DIR_WRITE, DIR_READ),
        ] {
            let mut d = Decoder::new(1_000);
            assert!(d.feed(&rec(Kind::Open, role, 0, 0, b"[local]")).is_empty());
            d.feed(&rec(Kind::Data, role, req_dir, 10, &q));
            let r = requests(d.feed(&rec(Kind::Data, role, resp_dir, 30, &resp)));
            assert_eq!(r.len(), 1);
            assert_eq!(r[0].meta.peer, "[local]");
            assert_eq!((r[0].start_unix_ns, r[0].end_unix_ns), (1_010, 1_030));
            assert_eq!(r[0].done.rows, Some(1));
            assert_eq!(d.stats.requests, 1);
        }
    }

    #[test]
    fn lost_bytes_are_gaps_not_inventions() {
        let mut d = Decoder::new(0);
        d.feed(&rec(Kind::Existing, ROLE_SERVER, 0, 0, b"[local]"));
        d.feed(&rec(
            Kind::Data,
            ROLE_SERVER,
            DIR_READ,
            1,
            &msg(b'Q', b"select 1\0"),
        ));
        // The response was lost in the kernel; the next record says so.
        let mut r = rec(
            Kind::Data,
            ROLE_SERVER,
            DIR_READ,
            5,
            &msg(b'Q', b"select 2\0"),
        );
        r.lost = [0, 30];
        d.feed(&r);
        let mut resp = msg(b'C', b"SELECT 1\0");
        resp.extend(msg(b'Z', b"I"));
        let out = requests(d.feed(&rec(Kind::Data, ROLE_SERVER, DIR_WRITE, 9, &resp)));
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(d.stats.lost_bytes, 30);
        assert!(d.stats.unmatched >= 1);
    }

    #[test]
    fn answered_statements_are_flushed_at_close() {
        let mut d = Decoder::new(0);
        d.feed(&rec(Kind::Open, ROLE_SERVER, 0, 0, b""));
        d.feed(&rec(
            Kind::Data,
            ROLE_SERVER,
            DIR_READ,
            1,
            &msg(b'Q', b"select 1\0"),
        ));
        d.feed(&rec(
            Kind::Data,
            ROLE_SERVER,
            DIR_WRITE,
            2,
            &msg(b'C', b"SELECT 1\0"),
        ));
        let out = requests(d.feed(&rec(Kind::Close, ROLE_SERVER, 0, 3, b"")));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].done.transaction, None);
        assert_eq!(out[0].meta.peer, "fd 7");
        assert_eq!(d.open_connections(), 0);
    }

    #[test]
    fn connections_of_exited_processes_end_but_not_newer_ones() {
        let mut d = Decoder::new(0);
        d.feed(&rec(Kind::Open, ROLE_SERVER, 0, 10, b""));
        let mut newer = rec(Kind::Open, ROLE_SERVER, 0, 50, b"");
        newer.conn_id = 2;
        newer.tgid = 200;
        d.feed(&newer);
        // Neither process is alive at time 20: only the one last heard of before it ends.
        let (_, gone) = d.close_exited(20, |_| false);
        assert_eq!(gone, vec![(100, 7)]);
        assert_eq!(d.open_connections(), 1);
    }
}
