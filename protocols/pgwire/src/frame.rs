//! Framing: one direction of a connection's bytes → whole messages.
//!
//! Every message after start-up is a type byte, a big-endian length that counts itself, and
//! a body. The client's first message (start-up, SSL/GSS request, cancel) has no type byte.
//! A tracer may attach mid-connection and may capture only the first bytes of a big
//! write: [`Framer::feed_gap`] records missing bytes, and the framer keeps the message
//! boundaries from the length fields, marking bodies it could not see whole as truncated.
//! When it does not know where a message starts (attached mid-stream, or after a gap it
//! could not bridge) it resynchronizes: a position counts as a boundary only when the header
//! there is plausible *and* the next message's header is too, so garbage is skipped rather
//! than decoded into invented messages.

/// Which side sent the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client to server.
    Frontend,
    /// Server to client.
    Backend,
}

/// Longest body accepted as plausible (PostgreSQL's own limit for most messages is 1 GB).
pub const MAX_MESSAGE: u32 = 1 << 30;

/// One framed message, its body borrowed from the [`Frames`] that hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The type byte, or 0 for an untyped start-up-phase message.
    pub tag: u8,
    /// The body (after the length), possibly cut short.
    pub body: &'a [u8],
    /// Declared body length (from the length field).
    pub len: u32,
    /// True when some of the body was not captured (`body.len() < len`).
    pub truncated: bool,
}

/// Where one frame's body lies in [`Frames`]' byte buffer.
#[derive(Clone, Copy, Debug)]
struct Head {
    tag: u8,
    start: usize,
    end: usize,
    len: u32,
    truncated: bool,
}

/// Whole messages framed from a connection's bytes, their bodies in one buffer. Cleared and
/// refilled for every read or write, it keeps its memory, so framing allocates nothing per
/// message once warm.
#[derive(Debug, Default)]
pub struct Frames {
    heads: Vec<Head>,
    bytes: Vec<u8>,
}

/// Where a framer hands the messages it frames: [`Frames`] keeps them (bodies copied), [`Each`]
/// passes each to a function as it is framed, its body borrowed from the bytes fed (no copy:
/// copying every body showed in `--read` profiles).
pub trait Sink {
    /// One message: its type byte (0: untyped start-up), body, declared length, and whether
    /// the body was cut short.
    fn frame(&mut self, tag: u8, body: &[u8], len: u32, truncated: bool);
}

/// A [`Sink`] calling a function with each frame.
pub struct Each<F>(pub F);

impl<F: FnMut(Frame<'_>)> Sink for Each<F> {
    fn frame(&mut self, tag: u8, body: &[u8], len: u32, truncated: bool) {
        (self.0)(Frame {
            tag,
            body,
            len,
            truncated,
        })
    }
}

impl Sink for Frames {
    fn frame(&mut self, tag: u8, body: &[u8], len: u32, truncated: bool) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(body);
        self.heads.push(Head {
            tag,
            start,
            end: self.bytes.len(),
            len,
            truncated,
        });
    }
}

impl Frames {
    /// The frames, in stream order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Frame<'_>> {
        self.heads.iter().map(|h| Frame {
            tag: h.tag,
            body: &self.bytes[h.start..h.end],
            len: h.len,
            truncated: h.truncated,
        })
    }

    pub fn len(&self) -> usize {
        self.heads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heads.is_empty()
    }

    /// Forgets the frames, keeping the memory.
    pub fn clear(&mut self) {
        self.heads.clear();
        self.bytes.clear();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At the first byte of a connection: the client starts untyped.
    Start,
    /// At a known message boundary.
    Synced,
    /// Position unknown: look for two consecutive plausible headers.
    Lost,
}

/// A message whose body is being collected or skipped.
#[derive(Debug)]
struct Partial {
    tag: u8,
    /// Declared body length.
    len: u32,
    /// The body's first bytes, contiguous.
    body: Vec<u8>,
    /// Bytes of the body still to come (collected or skipped).
    rest: u32,
    /// A gap fell inside the body: bytes after it are skipped, so `body` stays contiguous.
    cut: bool,
}

/// Frames one direction of one connection.
#[derive(Debug)]
pub struct Framer {
    direction: Direction,
    state: State,
    buf: Vec<u8>,
    /// A message too long to keep whole, or cut by a gap.
    partial: Option<Partial>,
    /// Bytes skipped while resynchronizing (for the caller's statistics).
    pub skipped: u64,
    /// Cap on how much of a body is kept (bodies beyond it are marked truncated).
    keep: usize,
}

/// The type bytes each side sends, as bit sets over the ASCII range (one test per message
/// where a search of the list showed in profiles).
const fn tag_set(tags: &[u8]) -> u128 {
    let mut set = 0u128;
    let mut i = 0;
    while i < tags.len() {
        set |= 1 << tags[i];
        i += 1;
    }
    set
}
const FRONTEND_TAGS: u128 = tag_set(b"BCdcfDEHFPpQSX");
const BACKEND_TAGS: u128 = tag_set(b"R123cCdDEGHWIKnNAtsSTVvZ");

fn plausible_tag(direction: Direction, tag: u8) -> bool {
    let set = match direction {
        Direction::Frontend => FRONTEND_TAGS,
        Direction::Backend => BACKEND_TAGS,
    };
    tag < 128 && set & (1 << tag) != 0
}

pub(crate) fn be32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

/// The untyped start-up messages are recognized by their request code.
fn untyped_start(buf: &[u8]) -> Option<u32> {
    let len = be32(buf)?;
    let code = be32(buf.get(4..)?)?;
    let known = matches!(code, 196_608 | 80_877_102 | 80_877_103 | 80_877_104) || (code >> 16) == 3;
    (known && (8..=10_000).contains(&len)).then_some(len)
}

impl Framer {
    fn tiles_exactly(&self, b: &[u8]) -> bool {
        let mut i = 0usize;
        while i + 5 <= b.len() {
            let (tag, len) = (b[i], be32(&b[i + 1..]).unwrap_or(0));
            if !plausible_tag(self.direction, tag) || !(4..=MAX_MESSAGE).contains(&len) {
                return false;
            }
            i += 1 + len as usize;
        }
        i == b.len() && i > 0
    }

    /// A framer for a connection seen from its first byte (`from_start`) or joined midway.
    pub fn new(direction: Direction, from_start: bool) -> Framer {
        Framer {
            direction,
            state: if from_start {
                State::Start
            } else {
                State::Lost
            },
            buf: Vec::new(),
            partial: None,
            skipped: 0,
            keep: 64 << 10,
        }
    }

    /// A framer whose next byte starts a typed message: a connection the caller logged in
    /// itself (a replay) hands over its bytes from there.
    pub fn at_message_start(direction: Direction) -> Framer {
        Framer {
            state: State::Synced,
            ..Framer::new(direction, true)
        }
    }

    /// False while the position of the next message is unknown (joined midway, or after a
    /// gap or garbage), until two consecutive plausible headers are found again.
    pub fn synced(&self) -> bool {
        self.state != State::Lost
    }

    /// The next byte fed starts a message (nothing buffered or half read, position known).
    pub fn at_boundary(&self) -> bool {
        self.state == State::Synced && self.buf.is_empty() && self.partial.is_none()
    }

    /// Keep at most this many bytes of each body.
    pub fn keep_at_most(mut self, bytes: usize) -> Framer {
        self.keep = bytes;
        self
    }

    /// After an SSLRequest/GSSENCRequest answered 'N', the client starts again untyped.
    pub fn expect_startup(&mut self) {
        if self.state == State::Synced && self.buf.is_empty() && self.partial.is_none() {
            self.state = State::Start;
        }
    }

    /// `n` bytes of the stream were not captured.
    pub fn feed_gap(&mut self, n: u64, out: &mut impl Sink) {
        // A message whose header was seen and whose body is still buffered: the gap falls
        // inside that body (a syscall cut at the capture limit), so its length still tells
        // where the next message starts.
        if self.partial.is_none() && self.state == State::Synced && self.buf.len() >= 5 {
            let len = be32(&self.buf[1..]).unwrap_or(0);
            let have = (self.buf.len() - 5) as u32;
            if len >= 4 && have < len - 4 {
                let mut body = self.buf[5..].to_vec();
                body.truncate(self.keep);
                self.partial = Some(Partial {
                    tag: self.buf[0],
                    len: len - 4,
                    body,
                    rest: len - 4 - have,
                    cut: false,
                });
                self.buf.clear();
            }
        }
        if let Some(mut p) = self.partial.take() {
            // Inside a body we know the length of: the gap is part of it.
            let in_body = n.min(u64::from(p.rest)) as u32;
            p.rest -= in_body;
            p.cut = true;
            let left = n - u64::from(in_body);
            if p.rest == 0 {
                out.frame(p.tag, &p.body, p.len, true);
                if left > 0 {
                    self.lose(left);
                }
            } else {
                self.partial = Some(p);
            }
            return;
        }
        if n > 0 {
            self.lose(n);
        }
    }

    fn lose(&mut self, n: u64) {
        // Saturating: gaps come from capture files, which may be corrupt (found by fuzzing).
        self.skipped = self
            .skipped
            .saturating_add(n)
            .saturating_add(self.buf.len() as u64);
        self.buf.clear();
        self.state = State::Lost;
    }

    /// Captured bytes, in order. Whole messages are appended to `out`.
    pub fn feed(&mut self, mut data: &[u8], out: &mut impl Sink) {
        if let Some(mut p) = self.partial.take() {
            let take = data.len().min(p.rest as usize);
            if !p.cut {
                let room = self.keep.saturating_sub(p.body.len());
                p.body.extend_from_slice(&data[..take.min(room)]);
            }
            data = &data[take..];
            p.rest -= take as u32;
            if p.rest > 0 {
                self.partial = Some(p);
                return;
            }
            let truncated = (p.body.len() as u64) < u64::from(p.len);
            out.frame(p.tag, &p.body, p.len, truncated);
        }
        if self.buf.is_empty() {
            // The common case, a read or write of whole messages: framed straight from the
            // caller's bytes, only an incomplete tail is kept.
            let used = self.drain(data, out);
            self.buf.extend_from_slice(&data[used..]);
        } else {
            self.buf.extend_from_slice(data);
            let buf = std::mem::take(&mut self.buf);
            let used = self.drain(&buf, out);
            self.buf = buf;
            self.buf.drain(..used);
        }
        if self.state == State::Lost && self.buf.len() > (1 << 20) {
            // Do not hoard undecodable bytes.
            self.skipped = self.skipped.saturating_add(self.buf.len() as u64);
            self.buf.clear();
        }
    }

    /// Frames what it can of `bytes` (the stream from the current position on); returns how
    /// many bytes it consumed (framed, skipped, or taken into a partial message).
    fn drain(&mut self, bytes: &[u8], out: &mut impl Sink) -> usize {
        let mut pos = 0usize;
        loop {
            let avail = &bytes[pos..];
            match self.state {
                State::Start => {
                    if self.direction == Direction::Backend {
                        self.state = State::Synced;
                        continue;
                    }
                    if avail.len() < 8 {
                        break;
                    }
                    match untyped_start(avail) {
                        Some(len) => {
                            if avail.len() < len as usize {
                                break;
                            }
                            out.frame(0, &avail[4..len as usize], len - 4, false);
                            pos += len as usize;
                            self.state = State::Synced;
                        }
                        // Not a start-up message: the stream was joined after it.
                        None => self.state = State::Lost,
                    }
                }
                State::Synced => {
                    if avail.len() < 5 {
                        break;
                    }
                    let (tag, len) = (avail[0], be32(&avail[1..]).unwrap_or(0));
                    if !plausible_tag(self.direction, tag) || !(4..=MAX_MESSAGE).contains(&len) {
                        self.state = State::Lost;
                        continue;
                    }
                    let total = 1 + len as usize;
                    if avail.len() >= total {
                        out.frame(tag, &avail[5..total], len - 4, false);
                        pos += total;
                    } else if len as usize > self.keep + 4 {
                        // A body larger than we keep: collect what fits, skip the rest.
                        let have = avail[5..].to_vec();
                        let rest = (len - 4) - have.len() as u32;
                        let mut body = have;
                        body.truncate(self.keep);
                        self.partial = Some(Partial {
                            tag,
                            len: len - 4,
                            body,
                            rest,
                            cut: false,
                        });
                        pos = bytes.len();
                        break;
                    } else {
                        break;
                    }
                }
                State::Lost => {
                    // Bytes that tile exactly into plausible messages up to their end are taken
                    // as a boundary (a read that starts where a message starts, as writes of
                    // whole messages do); otherwise find a position where this header and the
                    // next one are both plausible.
                    if self.tiles_exactly(avail) {
                        self.state = State::Synced;
                        continue;
                    }
                    let mut found = None;
                    for i in 0..avail.len().saturating_sub(4) {
                        let (tag, len) = (avail[i], be32(&avail[i + 1..]).unwrap_or(0));
                        if !plausible_tag(self.direction, tag) || !(4..=MAX_MESSAGE).contains(&len)
                        {
                            continue;
                        }
                        let next = i + 1 + len as usize;
                        if next + 5 > avail.len() {
                            continue;
                        }
                        let (t2, l2) = (avail[next], be32(&avail[next + 1..]).unwrap_or(0));
                        if plausible_tag(self.direction, t2) && (4..=MAX_MESSAGE).contains(&l2) {
                            found = Some(i);
                            break;
                        }
                    }
                    match found {
                        Some(i) => {
                            self.skipped = self.skipped.saturating_add(i as u64);
                            pos += i;
                            self.state = State::Synced;
                        }
                        None => break,
                    }
                }
            }
        }
        pos.min(bytes.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::msg;

    fn startup() -> Vec<u8> {
        let body = b"\x00\x03\x00\x00user\0postgres\0database\0postgres\0\0";
        let mut v = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn startup_then_typed_messages_split_anywhere() {
        let mut stream = startup();
        stream.extend(msg(b'Q', b"select 1\0"));
        stream.extend(msg(b'X', b""));
        for split in 0..stream.len() {
            let mut f = Framer::new(Direction::Frontend, true);
            let mut out = Frames::default();
            f.feed(&stream[..split], &mut out);
            f.feed(&stream[split..], &mut out);
            let out: Vec<Frame> = out.iter().collect();
            let tags: Vec<u8> = out.iter().map(|m| m.tag).collect();
            assert_eq!(tags, vec![0, b'Q', b'X'], "split at {split}");
            assert_eq!(out[1].body, b"select 1\0");
        }
    }

    #[test]
    fn several_messages_in_one_read() {
        let mut stream = msg(b'1', b"");
        stream.extend(msg(b'2', b""));
        stream.extend(msg(b'C', b"SELECT 1\0"));
        stream.extend(msg(b'Z', b"I"));
        let mut f = Framer::new(Direction::Backend, true);
        let mut out = Frames::default();
        f.feed(&stream, &mut out);
        assert_eq!(
            out.iter().map(|m| m.tag).collect::<Vec<_>>(),
            b"12CZ".to_vec()
        );
    }

    #[test]
    fn joining_midway_resyncs_without_inventing() {
        let mut stream = msg(b'Q', b"select 'Q\x00\x00\x00\x05 looks like a header'\0");
        stream.extend(msg(b'Q', b"select 2\0"));
        stream.extend(msg(b'Q', b"select 3\0"));
        // Join 3 bytes into the first message.
        let mut f = Framer::new(Direction::Frontend, false);
        let mut out = Frames::default();
        f.feed(&stream[3..], &mut out);
        let bodies: Vec<&[u8]> = out.iter().map(|m| m.body).collect();
        assert_eq!(bodies, vec![&b"select 2\0"[..], b"select 3\0"]);
        assert!(f.skipped > 0);
    }

    #[test]
    fn a_gap_inside_a_body_keeps_the_framing() {
        let big = vec![b'x'; 10_000];
        let mut q = big.clone();
        q.push(0);
        let first = msg(b'Q', &q);
        let second = msg(b'Q', b"select 2\0");
        let mut f = Framer::new(Direction::Frontend, false).keep_at_most(100);
        let mut out = Frames::default();
        // Resync needs the next header: feed a synced start instead.
        f.state = State::Synced;
        f.feed(&first[..200], &mut out);
        f.feed_gap((first.len() - 200) as u64, &mut out);
        f.feed(&second, &mut out);
        let out: Vec<Frame> = out.iter().collect();
        assert_eq!(out.len(), 2);
        assert!(out[0].truncated && out[0].body.len() == 100 && out[0].len == q.len() as u32);
        assert_eq!(out[1].body, b"select 2\0");
    }

    #[test]
    fn reads_cut_at_the_capture_limit_keep_a_contiguous_prefix() {
        // A 20 000-byte Query read in 8 KiB pieces, of which only the first 1 KiB of each
        // was captured: the body is the first piece's bytes only, never pieces glued together.
        let mut q: Vec<u8> = (0..20_000).map(|i| b'a' + (i % 26) as u8).collect();
        q.push(0);
        let stream = [msg(b'Q', &q), msg(b'Q', b"select 2\0")].concat();
        let mut f = Framer::new(Direction::Frontend, false);
        f.state = State::Synced;
        let mut out = Frames::default();
        let first_len = 1 + 4 + q.len();
        for piece in stream[..first_len].chunks(8192) {
            let seen = piece.len().min(1024);
            f.feed(&piece[..seen], &mut out);
            f.feed_gap((piece.len() - seen) as u64, &mut out);
        }
        f.feed(&stream[first_len..], &mut out);
        let out: Vec<Frame> = out.iter().collect();
        assert_eq!(out.len(), 2);
        assert!(out[0].truncated && out[0].len == q.len() as u32);
        assert_eq!(out[0].body, &q[..1019]);
        assert!(f.synced());
        assert_eq!(out[1].body, b"select 2\0");
    }

    #[test]
    fn garbage_is_skipped() {
        let mut f = Framer::new(Direction::Backend, false);
        let mut out = Frames::default();
        f.feed(&[0xffu8; 5000], &mut out);
        assert!(out.is_empty());
    }
}
