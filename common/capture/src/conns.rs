//! Captured records → a protocol's per-connection decoders: one [`Stream`] per connection,
//! fed with each direction's bytes and gaps (bytes lost in the kernel, bytes beyond the
//! capture limit), opened and closed by the capture's OPEN/EXISTING/CLOSE records and ended
//! when their process exits. The same path serves live tracing and `--read`.
//!
//! TLS: a connection whose socket bytes turn out to be TLS records (at its first bytes, or
//! after the stream negotiated encryption, as PostgreSQL's SSLRequest) gets its encrypted
//! bytes dropped; the plaintext the TLS library read and wrote (records flagged `tls`)
//! takes their place, and when only encrypted application data comes, the stream is told it
//! cannot be decoded.

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
    /// The stream agreed on encryption in the clear (PostgreSQL's SSLRequest answered `S`):
    /// the socket bytes that follow are TLS records.
    fn negotiated_encryption(&self) -> bool {
        false
    }
    /// TLS plaintext follows: the bytes the TLS library read and wrote, in place of the
    /// encrypted ones (from the first byte after the handshake, or joined midway).
    fn tls_begins(&mut self) {}
    /// Encrypted application data came and no plaintext: nothing more can be decoded.
    fn tls_undecodable(&mut self) {}
}

/// What a connection's TLS is, as its records showed it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tls {
    /// No TLS seen (yet).
    #[default]
    Clear,
    /// TLS records on the socket (the handshake), no plaintext yet: dropped.
    Handshake,
    /// Encrypted application data and no plaintext: not decodable.
    Undecodable,
    /// Plaintext from the TLS library.
    Plaintext,
}

/// A TLS record header at the start of `b`: content type change_cipher_spec, alert,
/// handshake or application_data, then version 3.x. No PostgreSQL message (a letter tag, or
/// a start-up length below 2^24) nor RESP command (`*`, `$`, text) starts so.
fn tls_record_type(b: &[u8]) -> Option<u8> {
    match b {
        [t @ 0x14..=0x17, 0x03, v, ..] if *v <= 0x04 => Some(*t),
        _ => None,
    }
}

const TLS_APPLICATION_DATA: u8 = 0x17;

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
    pub tls: Tls,
    /// A DATA record of it was fed.
    seen_data: bool,
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

/// Whether record `r` of `conn` goes to its stream: TLS plaintext does (the first turns the
/// stream to it), encrypted socket bytes do not.
fn tls_keeps<S: Stream>(conn: &mut Conn<S>, r: &Record) -> bool {
    let first = !conn.seen_data;
    conn.seen_data = true;
    if r.tls {
        if conn.tls != Tls::Plaintext {
            conn.tls = Tls::Plaintext;
            conn.stream.tls_begins();
        }
        return true;
    }
    match conn.tls {
        Tls::Plaintext | Tls::Undecodable => false,
        Tls::Handshake => {
            if tls_record_type(&r.payload) == Some(TLS_APPLICATION_DATA) {
                conn.tls = Tls::Undecodable;
                conn.stream.tls_undecodable();
            }
            false
        }
        Tls::Clear => {
            let Some(kind) = tls_record_type(&r.payload) else {
                return true;
            };
            if !(first || conn.stream.negotiated_encryption()) {
                return true;
            }
            if kind == TLS_APPLICATION_DATA {
                conn.tls = Tls::Undecodable;
                conn.stream.tls_undecodable();
            } else {
                conn.tls = Tls::Handshake;
            }
            false
        }
    }
}

impl<S: Stream> Connections<S> {
    /// Adds the totals of `other`, which held other connections of the same capture (its
    /// connections are ended already); the kernel's counters are the same in both.
    pub fn absorb(&mut self, other: Connections<S>) {
        crate::add_counts!(
            self.totals,
            Totals {
                connections,
                lost_bytes,
                truncated_bytes
            } = other.totals
        );
        if self.kernel_counters.is_none() {
            self.kernel_counters = other.kernel_counters;
        }
    }

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
                tls: Tls::Clear,
                seen_data: false,
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
                if !tls_keeps(conn, r) {
                    done(conn, events);
                    self.secrets = secrets;
                    return;
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ROLE_CLIENT;

    /// A stream that keeps what it was given and told.
    #[derive(Default)]
    struct Kept {
        client: Vec<u8>,
        server: Vec<u8>,
        negotiated: bool,
        tls: bool,
        undecodable: bool,
    }

    impl Stream for Kept {
        type Event = ();
        fn open(_: bool) -> Kept {
            Kept::default()
        }
        fn client_bytes(&mut self, _: u64, data: &[u8], _: u64, _: &mut Vec<()>) {
            self.client.extend(data);
            // As PostgreSQL's SSLRequest would be answered.
            self.negotiated |= data == b"ssl?";
        }
        fn server_bytes(&mut self, _: u64, data: &[u8], _: u64, _: &mut Vec<()>) {
            self.server.extend(data);
        }
        fn close(&mut self, _: u64, _: &mut Vec<()>) {}
        fn negotiated_encryption(&self) -> bool {
            self.negotiated && !self.tls
        }
        fn tls_begins(&mut self) {
            self.tls = true;
        }
        fn tls_undecodable(&mut self) {
            self.undecodable = true;
        }
    }

    fn data(dir: u8, tls: bool, payload: &[u8]) -> Record {
        Record {
            kind: Kind::Data,
            role: ROLE_CLIENT,
            dir,
            conn_id: 1,
            tls,
            len: payload.len() as u64,
            payload: payload.to_vec(),
            ..Record::default()
        }
    }

    fn feed(c: &mut Connections<Kept>, r: Record) -> Tls {
        let mut tls = Tls::Clear;
        c.feed(&r, &mut vec![], |conn, _| tls = conn.tls);
        tls
    }

    const HELLO: &[u8] = b"\x16\x03\x01\x00\x05hello";
    const APP_DATA: &[u8] = b"\x17\x03\x03\x00\x05xxxxx";

    #[test]
    fn plaintext_replaces_the_encrypted_bytes_after_a_negotiated_start() {
        let mut c = Connections::<Kept>::default();
        assert_eq!(feed(&mut c, data(DIR_WRITE, false, b"ssl?")), Tls::Clear);
        assert_eq!(feed(&mut c, data(DIR_WRITE, false, HELLO)), Tls::Handshake);
        assert_eq!(
            feed(&mut c, data(DIR_WRITE, true, b"startup")),
            Tls::Plaintext
        );
        // Encrypted socket bytes after that (an alert) are dropped.
        assert_eq!(
            feed(&mut c, data(DIR_READ, false, APP_DATA)),
            Tls::Plaintext
        );
        assert_eq!(feed(&mut c, data(DIR_READ, true, b"ready")), Tls::Plaintext);
        let s = &c.conns[&1].stream;
        assert_eq!(
            (s.client.as_slice(), s.server.as_slice()),
            (&b"ssl?startup"[..], &b"ready"[..])
        );
        assert!(s.tls && !s.undecodable);
    }

    #[test]
    fn tls_from_the_first_byte_without_plaintext_is_undecodable() {
        let mut c = Connections::<Kept>::default();
        assert_eq!(feed(&mut c, data(DIR_WRITE, false, HELLO)), Tls::Handshake);
        assert_eq!(feed(&mut c, data(DIR_READ, false, HELLO)), Tls::Handshake);
        assert_eq!(
            feed(&mut c, data(DIR_WRITE, false, APP_DATA)),
            Tls::Undecodable
        );
        let s = &c.conns[&1].stream;
        assert!(s.client.is_empty() && s.server.is_empty() && s.undecodable);
    }

    #[test]
    fn bytes_like_a_tls_record_in_the_middle_of_a_clear_stream_are_kept() {
        let mut c = Connections::<Kept>::default();
        feed(&mut c, data(DIR_WRITE, false, b"*1\r\n"));
        assert_eq!(feed(&mut c, data(DIR_WRITE, false, APP_DATA)), Tls::Clear);
        assert_eq!(c.conns[&1].stream.client.len(), 4 + APP_DATA.len());
    }
}
