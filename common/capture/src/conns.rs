//! Captured records → a protocol's per-connection decoders: one [`Stream`] per connection,
//! fed with each direction's bytes and gaps (bytes lost in the kernel, bytes beyond the
//! capture limit), opened and closed by the capture's OPEN/EXISTING/CLOSE records and ended
//! when their process exits. The same path serves live tracing and `--read`.

use foldhash::{HashMap, HashMapExt};

use crate::{DIR_READ, DIR_WRITE, Kind, ROLE_SERVER, Record};

/// A protocol's decoder of one connection.
pub trait Stream {
    /// What its bytes complete (requests with their responses, ...).
    type Event;
    /// `from_start`: the connection's first byte comes next (else it was joined midway).
    fn open(from_start: bool) -> Self;
    /// Bytes the client sent (`missing` more were not captured), at `ts_ns`.
    fn client_bytes(&mut self, ts_ns: u64, data: &[u8], missing: u64, out: &mut Vec<Self::Event>);
    /// Bytes the server sent.
    fn server_bytes(&mut self, ts_ns: u64, data: &[u8], missing: u64, out: &mut Vec<Self::Event>);
    /// The connection ended (or the trace did).
    fn close(&mut self, ts_ns: u64, out: &mut Vec<Self::Event>);
    /// Byte ranges of the client bytes fed last that hold secrets (passwords), for a capture
    /// file to get them overwritten.
    fn client_secrets(&self) -> &[(usize, usize)] {
        &[]
    }
}

/// One connection: who holds it and its decoder.
#[derive(Debug)]
pub struct Conn<S> {
    pub id: u64,
    /// The process that owns the descriptor (the backend, the server, the application).
    pub pid: u32,
    pub fd: u32,
    /// The client's address (server side) or the server's (client side).
    pub peer: String,
    /// ROLE_SERVER or ROLE_CLIENT: the side the traced process is on.
    pub role: u8,
    /// Monotonic time of the last record (when `pid` was last confirmed).
    pub last_ns: u64,
    pub stream: S,
}

/// Totals over every connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub connections: u64,
    /// Bytes lost in the kernel (ring buffer full), as reported with later records.
    pub lost_bytes: u64,
    /// Bytes beyond the per-syscall capture limit.
    pub truncated_bytes: u64,
}

/// Every connection of a capture.
pub struct Connections<S> {
    conns: HashMap<u64, Conn<S>>,
    pub totals: Totals,
    /// The kernel's counters, when the capture carries them (at its end).
    pub kernel_counters: Option<Vec<u64>>,
    /// Secret ranges of the payload of the record fed last (client bytes only).
    secrets: Vec<(usize, usize)>,
}

impl<S: Stream> Default for Connections<S> {
    fn default() -> Self {
        Connections {
            conns: HashMap::new(),
            totals: Totals::default(),
            kernel_counters: None,
            secrets: Vec::new(),
        }
    }
}

impl<S: Stream> Connections<S> {
    fn open(&mut self, r: &Record, from_start: bool) -> &mut Conn<S> {
        self.conns.entry(r.conn_id).or_insert_with(|| {
            self.totals.connections += 1;
            let peer = if r.payload.is_empty() {
                format!("fd {}", r.fd)
            } else {
                String::from_utf8_lossy(&r.payload).into_owned()
            };
            Conn {
                id: r.conn_id,
                pid: r.tgid,
                fd: r.fd,
                peer,
                role: r.role,
                last_ns: r.ts_ns,
                stream: S::open(from_start),
            }
        })
    }

    /// Byte ranges of the payload of the record fed last that hold secrets.
    pub fn secrets(&self) -> &[(usize, usize)] {
        &self.secrets
    }

    /// Feeds one record; `done` gets the connection it concerned and the events it
    /// completed (an OPEN of a reused id first ends the old connection; a CLOSE ends it).
    pub fn feed(
        &mut self,
        r: &Record,
        events: &mut Vec<S::Event>,
        mut done: impl FnMut(&mut Conn<S>, &mut Vec<S::Event>),
    ) {
        // Taken out while a connection of the table is borrowed.
        let mut secrets = std::mem::take(&mut self.secrets);
        secrets.clear();
        match r.kind {
            Kind::Open | Kind::Existing => {
                self.close(r.conn_id, r.ts_ns, events, &mut done);
                self.open(r, r.kind == Kind::Open);
            }
            Kind::Close => self.close(r.conn_id, r.ts_ns, events, &mut done),
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
            Kind::Data => {
                let missing = r.missing();
                // Saturating: a corrupt file's counts must not overflow (found by fuzzing).
                self.totals.truncated_bytes = self.totals.truncated_bytes.saturating_add(missing);
                self.totals.lost_bytes = self
                    .totals
                    .lost_bytes
                    .saturating_add(r.lost[0].saturating_add(r.lost[1]));
                let conn = self.open(r, false);
                conn.pid = r.tgid;
                conn.fd = r.fd;
                conn.last_ns = conn.last_ns.max(r.ts_ns);
                // On the server the client's bytes are read; on the client they are written.
                let (client_dir, server_dir) = if conn.role == ROLE_SERVER {
                    (DIR_READ, DIR_WRITE)
                } else {
                    (DIR_WRITE, DIR_READ)
                };
                let lost = |dir: u8| r.lost[usize::from(dir & 1)];
                let s = &mut conn.stream;
                if lost(client_dir) > 0 {
                    s.client_bytes(r.ts_ns, &[], lost(client_dir), events);
                }
                if lost(server_dir) > 0 {
                    s.server_bytes(r.ts_ns, &[], lost(server_dir), events);
                }
                if r.dir == client_dir {
                    s.client_bytes(r.ts_ns, &r.payload, missing, events);
                    secrets.extend_from_slice(s.client_secrets());
                } else {
                    s.server_bytes(r.ts_ns, &r.payload, missing, events);
                }
                done(conn, events);
            }
        }
        self.secrets = secrets;
    }

    fn close(
        &mut self,
        conn_id: u64,
        ts_ns: u64,
        events: &mut Vec<S::Event>,
        done: &mut impl FnMut(&mut Conn<S>, &mut Vec<S::Event>),
    ) {
        if let Some(mut conn) = self.conns.remove(&conn_id) {
            conn.stream.close(ts_ns, events);
            done(&mut conn, events);
        }
    }

    /// Ends every connection still open (end of trace or capture), in id order.
    pub fn finish(
        &mut self,
        ts_ns: u64,
        events: &mut Vec<S::Event>,
        mut done: impl FnMut(&mut Conn<S>, &mut Vec<S::Event>),
    ) {
        let mut ids: Vec<u64> = self.conns.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.close(id, ts_ns, events, &mut done);
        }
    }

    /// Ends the connections of processes that exited: the kernel sees no close() when a
    /// process exits with its sockets open. `alive` was sampled at monotonic time
    /// `sampled_ns`, before the records fed since were drained, so a connection whose last
    /// record is older and whose process was gone then has sent everything. Returns the
    /// (tgid, fd) to forget in the kernel.
    pub fn close_exited(
        &mut self,
        sampled_ns: u64,
        alive: impl Fn(u32) -> bool,
        events: &mut Vec<S::Event>,
        mut done: impl FnMut(&mut Conn<S>, &mut Vec<S::Event>),
    ) -> Vec<(u32, u32)> {
        let mut gone: Vec<(u64, u32, u32)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.last_ns < sampled_ns && !alive(c.pid))
            .map(|(&id, c)| (id, c.pid, c.fd))
            .collect();
        gone.sort_unstable();
        for &(id, _, _) in &gone {
            self.close(id, sampled_ns, events, &mut done);
        }
        gone.into_iter().map(|(_, p, f)| (p, f)).collect()
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.conns.len()
    }
}
