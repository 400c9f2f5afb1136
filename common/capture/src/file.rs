//! Captured records — what the kernel sent, in the form userspace keeps — and the versioned
//! capture file `--record` writes and `--read` decodes with no root and no kernel.
//!
//! File layout (all integers little-endian):
//! ```text
//! "PGBPFCAP" | u32 version (2) | u32 protocol | i64 wall-clock ns minus monotonic ns
//! then records: u32 length of what follows | u8 kind | u8 role | u8 dir | u8 flags |
//!   u32 tgid | u32 tid | u32 fd | u32 port | u64 conn_id | u64 ts_ns (monotonic) |
//!   u64 len | u64 lost_read | u64 lost_write | payload
//! ```
//! `flags` bit 0: the DATA payload is TLS plaintext (from the TLS library), not socket bytes
//! (0 in files written before TLS was read). The payload of a DATA record is the captured
//! bytes (the first of `len`); of an OPEN
//! record the connection's address as text; of a COUNTERS record the kernel's counters as
//! u64s. The protocol says what the DATA payloads hold ([`Protocol::code`]: 1 PostgreSQL,
//! 2 Redis); version 1 files (pgwire_trace before the capture was shared) have 0 there and
//! hold PostgreSQL. A replay tool frames the DATA payloads per connection and direction with
//! the protocol's framer (`pgbpf_pgwire::Framer`, `pgbpf_resp::Framer`).

use std::io::{BufRead, Write};

use anyhow::{Context, bail};

use crate::Protocol;

pub const MAGIC: &[u8; 8] = b"PGBPFCAP";
pub const VERSION: u32 = 2;
const FIXED: usize = 4 + 16 + 40;
/// Refuse records claiming more than this (a corrupt length must not allocate gigabytes).
const MAX_RECORD: usize = 1 << 20;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kind {
    #[default]
    Data,
    /// A connection that began while tracing: decoded from its first byte.
    Open,
    /// A connection already open when tracing began: joined midway.
    Existing,
    Close,
    /// The kernel's counters (lost records and bytes, ...) at the end of a capture.
    Counters,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Data => 1,
            Kind::Open => 2,
            Kind::Close => 3,
            Kind::Existing => 4,
            Kind::Counters => 5,
        }
    }
    fn from_code(c: u8) -> Option<Kind> {
        Some(match c {
            1 => Kind::Data,
            2 => Kind::Open,
            3 => Kind::Close,
            4 => Kind::Existing,
            5 => Kind::Counters,
            _ => return None,
        })
    }
}

/// One record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub kind: Kind,
    /// pgbpf_capture_ebpf::ROLE_SERVER or ROLE_CLIENT.
    pub role: u8,
    /// pgbpf_capture_ebpf::DIR_READ or DIR_WRITE.
    pub dir: u8,
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
    pub port: u32,
    pub conn_id: u64,
    pub ts_ns: u64,
    /// Bytes the syscall moved; `payload` holds the first of them.
    pub len: u64,
    /// Bytes lost before this record (ring buffer full): read, write.
    pub lost: [u64; 2],
    /// The payload is TLS plaintext read or written through the TLS library.
    pub tls: bool,
    pub payload: Vec<u8>,
}

impl Record {
    /// Bytes of the syscall that were not captured (beyond the capture limit).
    pub fn missing(&self) -> u64 {
        self.len.saturating_sub(self.payload.len() as u64)
    }
}

/// Writes a capture file.
pub struct Writer<W: Write> {
    out: W,
}

impl<W: Write> Writer<W> {
    pub fn new(mut out: W, protocol: &Protocol, wall_offset_ns: i64) -> anyhow::Result<Writer<W>> {
        out.write_all(MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        out.write_all(&protocol.code.to_le_bytes())?;
        out.write_all(&wall_offset_ns.to_le_bytes())?;
        Ok(Writer { out })
    }

    pub fn write(&mut self, r: &Record) -> anyhow::Result<()> {
        let mut b = Vec::with_capacity(4 + FIXED + r.payload.len());
        b.extend(((FIXED + r.payload.len()) as u32).to_le_bytes());
        b.extend([r.kind.code(), r.role, r.dir, u8::from(r.tls)]);
        for v in [r.tgid, r.tid, r.fd, r.port] {
            b.extend(v.to_le_bytes());
        }
        for v in [r.conn_id, r.ts_ns, r.len, r.lost[0], r.lost[1]] {
            b.extend(v.to_le_bytes());
        }
        b.extend(&r.payload);
        self.out.write_all(&b)?;
        Ok(())
    }

    pub fn finish(mut self) -> anyhow::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }

    /// Ends the capture: the kernel's counters as its last record (so `--read` knows the
    /// losses), then flushed.
    pub fn finish_with_counters(mut self, kernel: &[u64]) -> anyhow::Result<W> {
        self.write(&Record {
            kind: Kind::Counters,
            ts_ns: pgbpf_common::output::mono_ns(),
            payload: kernel.iter().flat_map(|c| c.to_le_bytes()).collect(),
            ..Record::default()
        })?;
        self.finish()
    }
}

/// Reads a capture file record by record.
pub struct Reader<R: BufRead> {
    input: R,
    pub wall_offset_ns: i64,
    /// Records read so far (for error messages).
    pub count: u64,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl<R: BufRead> Reader<R> {
    /// Opens a capture of `protocol`'s traffic; a capture of another protocol is refused with
    /// the tool that reads it.
    pub fn new(mut input: R, protocol: &Protocol) -> anyhow::Result<Reader<R>> {
        let tool = protocol.tool;
        let mut head = [0u8; 24];
        input
            .read_exact(&mut head)
            .with_context(|| format!("too short for a {tool} capture"))?;
        if &head[..8] != MAGIC {
            bail!("not a {tool} capture (it does not start with PGBPFCAP)");
        }
        let version = u32_at(&head, 8);
        let code = match version {
            // Written by pgwire_trace before the capture layer was shared: PostgreSQL.
            1 => crate::POSTGRES.code,
            VERSION => u32_at(&head, 12),
            _ => bail!(
                "capture format version {version}; this {tool} reads versions 1 and {VERSION}"
            ),
        };
        if code != protocol.code {
            match Protocol::of_code(code) {
                Some(other) => bail!(
                    "a capture of {} traffic: read it with {} --read",
                    other.name,
                    other.tool
                ),
                None => bail!("a capture of an unknown protocol ({code})"),
            }
        }
        Ok(Reader {
            input,
            wall_offset_ns: u64_at(&head, 16) as i64,
            count: 0,
        })
    }

    /// The next record; None at the end; an error for a cut or corrupt record.
    pub fn next_record(&mut self) -> anyhow::Result<Option<Record>> {
        let mut r = Record::default();
        Ok(self.next_into(&mut r)?.then_some(r))
    }

    /// [`Reader::next_record`] into `r`, reusing its memory (a decoder reading millions of
    /// records allocates none per record); false at the end.
    pub fn next_into(&mut self, r: &mut Record) -> anyhow::Result<bool> {
        self.next_kept_into(r, |_| true)
    }

    /// [`Reader::next_into`] for one share of a capture's connections (`--read` on several
    /// threads): records of the connections `keep` refuses are passed over, their payload not
    /// copied, and records of no connection (the counters) are read in every share. A
    /// damaged record is an error in every share alike, at the same record.
    pub fn next_kept_into(
        &mut self,
        r: &mut Record,
        keep: impl Fn(u64) -> bool,
    ) -> anyhow::Result<bool> {
        loop {
            // A record wholly in the input's buffer is parsed there (one buffer look instead
            // of four reads of it: a tenth of `--read`'s time went to those calls).
            let buffered = self.input.fill_buf()?;
            if buffered.is_empty() {
                return Ok(false);
            }
            if let Some(len) = buffered.get(..4).map(|b| u32_at(b, 0) as usize)
                && let Some(record) = buffered.get(4..4 + len)
            {
                let passed_over = (FIXED..=MAX_RECORD).contains(&len)
                    && !keep(u64_at(record, 20))
                    && Kind::from_code(record[0]).is_some_and(|k| k != Kind::Counters);
                if passed_over {
                    self.count += 1;
                    self.input.consume(4 + len);
                    continue;
                }
                parse(record, &mut self.count, r)?;
                self.input.consume(4 + len);
                return Ok(true);
            }
            // Across the buffer's end: read it out piece by piece.
            let mut len = [0u8; 4];
            self.input
                .read_exact(&mut len)
                .with_context(|| self.cut())?;
            let len = u32::from_le_bytes(len) as usize;
            check_len(len, self.count)?;
            let mut record = vec![0u8; len];
            self.input
                .read_exact(&mut record)
                .with_context(|| self.cut())?;
            parse(&record, &mut self.count, r)?;
            if r.kind == Kind::Counters || keep(r.conn_id) {
                return Ok(true);
            }
        }
    }

    fn cut(&self) -> String {
        format!(
            "the capture ends inside record {} (cut short?)",
            self.count + 1
        )
    }
}

fn check_len(len: usize, count: u64) -> anyhow::Result<()> {
    if !(FIXED..=MAX_RECORD).contains(&len) {
        bail!(
            "record {} has an impossible length {len}: the file is corrupt",
            count + 1
        );
    }
    Ok(())
}

/// One record's bytes after its length into `r`; `count`: records read before it.
fn parse(b: &[u8], count: &mut u64, r: &mut Record) -> anyhow::Result<()> {
    check_len(b.len(), *count)?;
    let Some(kind) = Kind::from_code(b[0]) else {
        bail!("record {} has an unknown kind {}", *count + 1, b[0]);
    };
    r.payload.clear();
    r.payload.extend_from_slice(&b[FIXED..]);
    *count += 1;
    r.kind = kind;
    r.role = b[1];
    r.dir = b[2];
    r.tls = b[3] & 1 != 0;
    r.tgid = u32_at(b, 4);
    r.tid = u32_at(b, 8);
    r.fd = u32_at(b, 12);
    r.port = u32_at(b, 16);
    r.conn_id = u64_at(b, 20);
    r.ts_ns = u64_at(b, 28);
    r.len = u64_at(b, 36);
    r.lost = [u64_at(b, 44), u64_at(b, 52)];
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(kind: Kind, payload: &[u8]) -> Record {
        Record {
            kind,
            role: 1,
            dir: 0,
            tgid: 42,
            tid: 43,
            fd: 9,
            port: 5432,
            conn_id: 7,
            ts_ns: 123_456,
            len: 100,
            lost: [1, 2],
            // The TLS flag survives the round trip.
            tls: true,
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn records_round_trip() {
        let mut w = Writer::new(vec![], &crate::POSTGRES, -5).unwrap();
        let recs = [
            sample(Kind::Open, b"[local]"),
            sample(Kind::Data, b"Q\0\0\0\x05x"),
            sample(Kind::Close, b""),
        ];
        for r in &recs {
            w.write(r).unwrap();
        }
        let bytes = w.finish().unwrap();
        let mut r = Reader::new(&bytes[..], &crate::POSTGRES).unwrap();
        assert_eq!(r.wall_offset_ns, -5);
        for want in &recs {
            assert_eq!(&r.next_record().unwrap().unwrap(), want);
        }
        assert!(r.next_record().unwrap().is_none());
        // Records across the ends of the input's buffer (every one, with a 7-byte buffer).
        for capacity in [1, 7, 64] {
            let input = std::io::BufReader::with_capacity(capacity, &bytes[..]);
            let mut r = Reader::new(input, &crate::POSTGRES).unwrap();
            for want in &recs {
                assert_eq!(&r.next_record().unwrap().unwrap(), want, "{capacity}");
            }
            assert!(r.next_record().unwrap().is_none());
        }
    }

    #[test]
    fn other_protocols_and_versions() {
        let bytes = Writer::new(vec![], &crate::REDIS, 0)
            .unwrap()
            .finish()
            .unwrap();
        let e = Reader::new(&bytes[..], &crate::POSTGRES)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            e,
            "a capture of Redis traffic: read it with redis_trace --read"
        );
        assert!(Reader::new(&bytes[..], &crate::REDIS).is_ok());
        // Version 1 (pgwire_trace's own format until 2026-12): PostgreSQL, flags 0.
        let mut v1 = MAGIC.to_vec();
        v1.extend(1u32.to_le_bytes());
        v1.extend(0u32.to_le_bytes());
        v1.extend(7i64.to_le_bytes());
        assert_eq!(
            Reader::new(&v1[..], &crate::POSTGRES)
                .unwrap()
                .wall_offset_ns,
            7
        );
        let e = Reader::new(&v1[..], &crate::REDIS)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("pgwire_trace --read"), "{e}");
        let mut v9 = v1.clone();
        v9[8] = 9;
        let e = Reader::new(&v9[..], &crate::POSTGRES)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("version 9"), "{e}");
    }

    #[test]
    fn bad_files_are_errors_not_panics() {
        let pg = &crate::POSTGRES;
        assert!(Reader::new(&b"hello"[..], pg).is_err());
        assert!(Reader::new(&b"NOTACAPTURE-but-long-enough"[..], pg).is_err());
        let mut w = Writer::new(vec![], pg, 0).unwrap();
        w.write(&sample(Kind::Data, b"abc")).unwrap();
        let bytes = w.finish().unwrap();
        // Cut inside the record: an error naming the record, after the header read fine.
        let mut r = Reader::new(&bytes[..bytes.len() - 2], pg).unwrap();
        let e = r.next_record().unwrap_err().to_string();
        assert!(e.contains("record 1"), "{e}");
        // Every prefix and garbage after the header: never a panic.
        for cut in 0..bytes.len() {
            if let Ok(mut r) = Reader::new(&bytes[..cut], pg) {
                while let Ok(Some(_)) = r.next_record() {}
            }
        }
        let mut junk = bytes[..24].to_vec();
        junk.extend([0xff; 64]);
        let mut r = Reader::new(&junk[..], pg).unwrap();
        assert!(r.next_record().is_err());
    }
}
