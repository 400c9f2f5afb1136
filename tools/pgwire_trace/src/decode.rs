//! Records → requests: a `pgbpf_pgwire::conn::Connection` per captured connection (in the
//! capture's shared connection table), its completed statements with who was talking; the
//! same path for live tracing and `--read`.

use std::sync::Arc;

use pgbpf_capture::{
    Record,
    conns::{Conn, Connections, Stream, Tls},
};
use pgbpf_pgwire::conn::{Completed, Connection};

/// One request and its response.
#[derive(Clone, Debug)]
pub struct Request {
    pub pid: u32,
    pub conn_id: u64,
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
    /// The connection is TLS, decoded from the TLS library's plaintext.
    pub tls: bool,
    /// The peer as lines show it: ` tls` after it for a TLS connection.
    pub label: String,
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
    /// A connection's payload cannot be seen: GSS encryption, or TLS without plaintext.
    Encrypted {
        /// Wall-clock ns of the record that showed it.
        unix_ns: u64,
        pid: u32,
        conn_id: u64,
        peer: String,
        /// Why it cannot be decoded.
        reason: String,
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

/// The wire decoder of one connection and what the report has taken from it.
pub struct PgStream {
    c: Connection,
    /// Counted into the stats already.
    seen_encrypted: bool,
    /// Built once the start-up parameters are known (rebuilt if they or the TLS change).
    meta: Option<(usize, bool, Arc<ConnMeta>)>,
    malformed: u64,
    unmatched: u64,
}

impl Stream for PgStream {
    type Event = Completed;

    fn open(from_start: bool) -> PgStream {
        PgStream {
            c: Connection::new(from_start),
            seen_encrypted: false,
            meta: None,
            malformed: 0,
            unmatched: 0,
        }
    }

    fn client_bytes(&mut self, ts_ns: u64, data: &[u8], missing: u64, _: &mut Vec<Completed>) {
        self.c.client_bytes(ts_ns, data, missing);
    }

    fn server_bytes(&mut self, ts_ns: u64, data: &[u8], missing: u64, out: &mut Vec<Completed>) {
        self.c.server_bytes_into(ts_ns, data, missing, out);
    }

    fn close(&mut self, _ts_ns: u64, out: &mut Vec<Completed>) {
        out.extend(self.c.close());
    }

    fn client_secrets(&self) -> &[(usize, usize)] {
        self.c.secrets()
    }

    fn negotiated_encryption(&self) -> bool {
        self.c.tls_negotiated && !self.c.tls
    }

    fn tls_begins(&mut self) {
        self.c.tls_begins();
    }

    fn tls_undecodable(&mut self) {
        self.c.tls_undecodable();
    }
}

/// Decodes every connection of a capture.
pub struct Decoder {
    conns: Connections<PgStream>,
    wall_offset_ns: i64,
    pub stats: DecodeStats,
    /// Connections that turned encrypted, for the live capture to stop copying: (tgid, fd).
    pub stop_capturing: Vec<(u32, u32)>,
    /// The libssl files the live capture probes (None reading a file): why a TLS
    /// connection could not be decoded.
    pub tls_probed: Option<pgbpf_capture::tls::Probed>,
    /// Statements completed by the record being fed (kept to reuse its memory).
    done: Vec<Completed>,
}

/// What a connection's statements become: requests (and a connection turning encrypted).
struct Completion<'a> {
    stats: &'a mut DecodeStats,
    stop_capturing: &'a mut Vec<(u32, u32)>,
    tls_probed: Option<&'a pgbpf_capture::tls::Probed>,
    wall_offset_ns: i64,
    ts_ns: u64,
    out: &'a mut Vec<Event>,
}

impl Completion<'_> {
    fn wall(&self, mono_ns: u64) -> u64 {
        pgbpf_common::output::wall_of(self.wall_offset_ns, mono_ns)
    }

    fn take(&mut self, conn: &mut Conn<PgStream>, done: &mut Vec<Completed>) {
        let s = &mut conn.stream;
        // TLS negotiated is not yet undecodable: the library's plaintext may follow.
        let hidden = s.c.encrypted && (!s.c.tls_negotiated || conn.tls == Tls::Undecodable);
        if hidden && !s.seen_encrypted {
            s.seen_encrypted = true;
            let reason = if !s.c.tls_negotiated && conn.tls != Tls::Undecodable {
                "GSSAPI encryption is not decoded".to_string()
            } else {
                match self.tls_probed {
                    Some(probed) => pgbpf_capture::tls::undecodable_reason(conn.pid, probed),
                    None => "TLS, and the capture holds none of its plaintext".to_string(),
                }
            };
            self.out.push(Event::Encrypted {
                unix_ns: self.wall(self.ts_ns),
                pid: conn.pid,
                conn_id: conn.id,
                peer: conn.peer.clone(),
                reason,
            });
            self.stats.encrypted += 1;
            self.stop_capturing.push((conn.pid, conn.fd));
        }
        // The decode-quality counters of the connection into the totals.
        self.stats.malformed += s.c.malformed - s.malformed;
        self.stats.unmatched += s.c.unmatched - s.unmatched;
        s.malformed = s.c.malformed;
        s.unmatched = s.c.unmatched;
        if done.is_empty() {
            return;
        }
        let tls = conn.tls == Tls::Plaintext;
        let meta = match &s.meta {
            Some((n, t, m)) if *n == s.c.startup.len() && *t == tls => m.clone(),
            _ => {
                let startup = |key: &str| {
                    s.c.startup
                        .iter()
                        .find(|(k, _)| k == key)
                        .map(|(_, v)| v.clone())
                };
                let m = Arc::new(ConnMeta {
                    peer: conn.peer.clone(),
                    tls,
                    label: if tls {
                        format!("{} tls", conn.peer)
                    } else {
                        conn.peer.clone()
                    },
                    user: startup("user"),
                    database: startup("database").or_else(|| startup("user")),
                    application: startup("application_name"),
                });
                s.meta = Some((s.c.startup.len(), tls, m.clone()));
                m
            }
        };
        // The handle is moved into the last request rather than cloned and dropped: each of
        // those is an atomic operation, and they were most of this function's time.
        let last = done.pop();
        for d in done.drain(..) {
            self.request(conn, d, meta.clone());
        }
        if let Some(d) = last {
            self.request(conn, d, meta);
        }
    }

    fn request(&mut self, conn: &Conn<PgStream>, d: Completed, meta: Arc<ConnMeta>) {
        self.stats.requests += 1;
        self.stats.errors += u64::from(d.sqlstate.is_some());
        self.out.push(Event::Request(Request {
            pid: conn.pid,
            conn_id: conn.id,
            meta,
            start_unix_ns: self.wall(d.started_ns),
            end_unix_ns: self.wall(d.finished_ns),
            done: d,
        }));
    }
}

impl Decoder {
    /// `wall_offset_ns`: wall-clock minus monotonic time, to print record times as dates.
    pub fn new(wall_offset_ns: i64) -> Decoder {
        Decoder {
            conns: Connections::default(),
            wall_offset_ns,
            stats: DecodeStats::default(),
            stop_capturing: vec![],
            tls_probed: None,
            done: vec![],
        }
    }

    /// Adds the totals of `other`, which decoded other connections of the same capture.
    pub fn absorb(&mut self, other: Decoder) {
        pgbpf_capture::add_counts!(
            self.stats,
            DecodeStats {
                connections,
                encrypted,
                requests,
                errors,
                malformed,
                unmatched,
                lost_bytes,
                truncated_bytes
            } = other.stats
        );
        self.conns.absorb(other.conns);
    }

    /// The kernel's counters, when the capture carries them.
    pub fn kernel_counters(&self) -> Option<&[u64]> {
        self.conns.kernel_counters.as_deref()
    }

    /// Byte ranges of the payload of the record fed last that hold credentials.
    pub fn secrets(&self) -> &[(usize, usize)] {
        self.conns.secrets()
    }

    /// Feeds one record; returns what it completed.
    pub fn feed(&mut self, r: &Record) -> Vec<Event> {
        let mut out = vec![];
        self.feed_into(r, &mut out);
        out
    }

    /// Runs `step` on the connection table with what completed statements become.
    fn with_completion(
        &mut self,
        ts_ns: u64,
        out: &mut Vec<Event>,
        step: impl FnOnce(&mut Connections<PgStream>, &mut Vec<Completed>, &mut Completion<'_>),
    ) {
        let mut done = std::mem::take(&mut self.done);
        let mut completion = Completion {
            stats: &mut self.stats,
            stop_capturing: &mut self.stop_capturing,
            tls_probed: self.tls_probed.as_ref(),
            wall_offset_ns: self.wall_offset_ns,
            ts_ns,
            out,
        };
        step(&mut self.conns, &mut done, &mut completion);
        let t = self.conns.totals;
        self.stats.connections = t.connections;
        self.stats.lost_bytes = t.lost_bytes;
        self.stats.truncated_bytes = t.truncated_bytes;
        self.done = done;
    }

    /// Feeds one record; appends what it completed to `out` (a buffer the caller reuses, so
    /// the live drain allocates no vector per record).
    pub fn feed_into(&mut self, r: &Record, out: &mut Vec<Event>) {
        self.with_completion(r.ts_ns, out, |conns, done, c| {
            conns.feed(r, done, |conn, done| c.take(conn, done));
        });
    }

    /// Ends every connection still open (end of trace or capture).
    pub fn finish(&mut self) -> Vec<Event> {
        let mut out = vec![];
        let now = pgbpf_common::output::mono_ns();
        self.with_completion(now, &mut out, |conns, done, c| {
            conns.finish(now, done, |conn, done| c.take(conn, done));
        });
        out
    }

    /// Ends the connections of processes that exited (see `Connections::close_exited`).
    /// Returns the events and the (tgid, fd) to forget in the kernel.
    pub fn close_exited(
        &mut self,
        sampled_ns: u64,
        alive: impl Fn(u32) -> bool,
    ) -> (Vec<Event>, Vec<(u32, u32)>) {
        let mut out = vec![];
        let mut gone = vec![];
        self.with_completion(sampled_ns, &mut out, |conns, done, c| {
            gone = conns.close_exited(sampled_ns, alive, done, |conn, done| c.take(conn, done));
        });
        (out, gone)
    }

    /// Connections open now.
    #[cfg(test)]
    pub fn open_connections(&self) -> usize {
        self.conns.open_connections()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgbpf_capture::{DIR_READ, DIR_WRITE, Kind, ROLE_CLIENT, ROLE_SERVER};

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
            tls: false,
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
