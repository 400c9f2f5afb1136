//! Framing: one direction of a connection's bytes → whole RESP values, each flattened into its
//! elements in pre-order.
//!
//! RESP2 and RESP3 are one grammar here: a type byte, a line ended by CRLF, and for blobs
//! (`$ ! =`) a body of the declared length plus CRLF; aggregates (`* % ~ > |`) announce their
//! element count (`%` and `|` count pairs); `?` instead of a length streams a string in `;N`
//! chunks (ended by `;0`) or an aggregate (ended by `.`). The client's side also takes inline
//! commands (`PING\r\n`, as telnet or nc send them).
//!
//! A tracer may join a connection midway and may capture only the first bytes of a big write:
//! [`Framer::feed_gap`] takes the missing bytes. Inside a blob's body a gap only shortens what
//! is kept (the element is marked truncated, framing goes on from the length prefix); anywhere
//! else the position is lost, and the framer resynchronizes at the first line start where a
//! whole plausible header is in view, never inventing an element from the bytes it skipped.
//!
//! Why not the `redis-protocol` crate: it decodes a frame from one buffer holding all of its
//! bytes, so it can neither skip the uncaptured middle of a 1 MB value, nor resume a value cut
//! across reads without buffering it whole, nor resynchronize. The tests use it as an
//! independent encoder and decoder to check this framer against.

use crate::command::{SECRET, is_secret_arg, may_hold_secrets};

/// Longest line accepted (Redis' own limit for an inline command, PROTO_INLINE_MAX_SIZE).
pub const MAX_LINE: usize = 64 * 1024;
/// Deepest nesting accepted; deeper is taken for garbage.
pub const MAX_DEPTH: usize = 64;
/// Elements kept per value; the rest are framed and counted but not kept.
pub const MAX_ELEMENTS: usize = 4096;
/// Largest blob length accepted (Redis' proto-max-bulk-len can be raised to 4 GiB).
pub const MAX_BLOB: u64 = 1 << 32;
/// Largest aggregate count accepted.
pub const MAX_COUNT: u64 = 1 << 31;

/// Which way the bytes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// Client to server: commands.
    Request,
    /// Server to client: replies and pushes.
    Reply,
}

/// Element kinds by their type byte. An inline command is framed as an array (`*`) of bulk
/// strings (`$`), with [`Frame::inline`] set.
pub mod kind {
    pub const SIMPLE: u8 = b'+';
    pub const ERROR: u8 = b'-';
    pub const INTEGER: u8 = b':';
    pub const BULK: u8 = b'$';
    pub const ARRAY: u8 = b'*';
    pub const NULL: u8 = b'_';
    pub const BOOLEAN: u8 = b'#';
    pub const DOUBLE: u8 = b',';
    pub const BIG_NUMBER: u8 = b'(';
    pub const BULK_ERROR: u8 = b'!';
    pub const VERBATIM: u8 = b'=';
    pub const MAP: u8 = b'%';
    pub const SET: u8 = b'~';
    pub const ATTRIBUTE: u8 = b'|';
    pub const PUSH: u8 = b'>';
    /// A chunk of a streamed string, and the end of a streamed aggregate (never elements).
    pub const CHUNK: u8 = b';';
    pub const END: u8 = b'.';

    /// Types that are a line and nothing more.
    pub fn is_line(k: u8) -> bool {
        matches!(
            k,
            SIMPLE | ERROR | INTEGER | NULL | BOOLEAN | DOUBLE | BIG_NUMBER
        )
    }
    pub fn is_blob(k: u8) -> bool {
        matches!(k, BULK | BULK_ERROR | VERBATIM)
    }
    pub fn is_aggregate(k: u8) -> bool {
        matches!(k, ARRAY | MAP | SET | ATTRIBUTE | PUSH)
    }
    /// Errors, simple or blob.
    pub fn is_error(k: u8) -> bool {
        matches!(k, ERROR | BULK_ERROR)
    }
    /// Every byte that may start an element.
    pub fn is_type(k: u8) -> bool {
        is_line(k) || is_blob(k) || is_aggregate(k) || k == CHUNK || k == END
    }
}

/// One element of a framed value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Element<'a> {
    /// The type byte ([`kind`]).
    pub kind: u8,
    /// 0 for the value itself, 1 for its elements, ...
    pub depth: u8,
    /// A line type's text, a blob's body (the first bytes kept), nothing for an aggregate.
    pub data: &'a [u8],
    /// A blob's declared length, an aggregate's element count (pairs for maps and
    /// attributes), a line's length; -1 for RESP2's null bulk string and null array.
    pub len: i64,
    /// Some of `data` was not captured or not kept.
    pub truncated: bool,
    /// Bytes on the wire, children included (0 for the words of an inline command).
    pub wire: u64,
}

impl Element<'_> {
    /// RESP3's null, RESP2's null bulk string and null array.
    pub fn is_null(&self) -> bool {
        self.kind == kind::NULL || self.len == -1
    }
}

#[derive(Clone, Copy, Debug)]
struct Elem {
    kind: u8,
    depth: u8,
    truncated: bool,
    /// Range of `data` in the framer's byte buffer.
    data: (u32, u32),
    len: i64,
    /// The position of the element's type byte until it is complete, then its size.
    wire: u64,
}

/// One framed value, borrowed from the [`Framer`].
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    elems: &'a [Elem],
    bytes: &'a [u8],
    /// Bytes on the wire.
    pub wire: u64,
    /// Timestamps of the reads or writes that carried the first and the last byte.
    pub started_ns: u64,
    pub finished_ns: u64,
    /// An inline command (client side).
    pub inline: bool,
    /// Elements beyond [`MAX_ELEMENTS`]: framed, not kept.
    pub dropped: u64,
}

impl<'a> Frame<'a> {
    /// Elements kept, in pre-order.
    pub fn len(&self) -> usize {
        self.elems.len()
    }

    pub fn is_empty(&self) -> bool {
        self.elems.is_empty()
    }

    pub fn element(&self, i: usize) -> Element<'a> {
        let e = &self.elems[i];
        Element {
            kind: e.kind,
            depth: e.depth,
            data: &self.bytes[e.data.0 as usize..e.data.1 as usize],
            len: e.len,
            truncated: e.truncated,
            wire: e.wire,
        }
    }

    /// Index of the value itself: the first element at depth 0 that is not an attribute
    /// (RESP3 attributes precede the value they describe).
    pub fn top(&self) -> Option<usize> {
        self.first_at(0, 0)
    }

    /// The value itself.
    pub fn value(&self) -> Option<Element<'a>> {
        self.top().map(|i| self.element(i))
    }

    /// The direct elements of aggregate `i` (indexes), attributes left out.
    pub fn children(&self, i: usize) -> Children<'_, 'a> {
        Children {
            frame: self,
            next: i + 1,
            depth: self.elems.get(i).map_or(u8::MAX, |e| e.depth + 1),
        }
    }

    /// The direct elements of the value itself.
    pub fn items(&self) -> Children<'_, 'a> {
        match self.top() {
            Some(i) => self.children(i),
            None => Children {
                frame: self,
                next: self.elems.len(),
                depth: u8::MAX,
            },
        }
    }

    /// From `i`, past attribute subtrees, to the first other element at `depth`; None once
    /// the elements leave `depth`'s parent.
    fn first_at(&self, mut i: usize, depth: u8) -> Option<usize> {
        while let Some(e) = self.elems.get(i) {
            if e.depth < depth {
                return None;
            }
            if e.depth == depth && e.kind != kind::ATTRIBUTE {
                return Some(i);
            }
            i += 1;
        }
        None
    }
}

/// Iterator over an aggregate's direct elements: their indexes.
pub struct Children<'f, 'a> {
    frame: &'f Frame<'a>,
    next: usize,
    depth: u8,
}

impl Iterator for Children<'_, '_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let i = self.frame.first_at(self.next, self.depth)?;
        let mut j = i + 1;
        while self
            .frame
            .elems
            .get(j)
            .is_some_and(|e| e.depth > self.depth)
        {
            j += 1;
        }
        self.next = j;
        Some(i)
    }
}

#[derive(Clone, Copy, Debug)]
struct Head {
    elems: (usize, usize),
    wire: u64,
    started_ns: u64,
    finished_ns: u64,
    inline: bool,
    dropped: u64,
}

/// An aggregate (or streamed string) whose elements are still coming.
#[derive(Clone, Copy, Debug)]
struct Open {
    /// Index in `elems` (usize::MAX when not kept).
    elem: usize,
    kind: u8,
    /// Elements still to come; None while streamed (until `.`, or `;0` for a string).
    remaining: Option<u64>,
    /// Elements seen (the count of a streamed aggregate).
    seen: u64,
    wire_start: u64,
}

impl Open {
    fn is_streamed_string(&self) -> bool {
        self.kind == kind::BULK && self.remaining.is_none()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Expecting a type byte (or, at the top of the client side, an inline command).
    Element,
    /// Collecting a line; `kind` 0 for an inline command.
    Line { kind: u8 },
    /// In a blob's body: `left` bytes of it, then `crlf` bytes of the CRLF after it.
    Body { left: u64, crlf: u8 },
    /// Position unknown: looking for a plausible value start at a line start.
    Lost,
    /// Take the next read or write's first byte as a value start, if plausible.
    AtNextRecord,
}

/// Frames one direction of one connection.
#[derive(Debug)]
pub struct Framer {
    side: Side,
    state: State,
    /// The line being collected (its first bytes), its length so far and last byte.
    line: Vec<u8>,
    line_len: usize,
    line_last: u8,
    /// Position of the current element's type byte.
    elem_start: u64,
    stack: Vec<Open>,
    /// The element a body being read goes to (usize::MAX: none).
    body_elem: usize,
    elems: Vec<Elem>,
    bytes: Vec<u8>,
    heads: Vec<Head>,
    /// Where the value in progress begins in `elems` and `bytes`; its first byte's time and
    /// position; its elements not kept.
    cur_elems: usize,
    cur_bytes: usize,
    cur_started: Option<u64>,
    cur_wire: u64,
    cur_dropped: u64,
    /// Bytes framed so far (gaps included): the wire position.
    pos: u64,
    /// Time of the last read or write fed, and the position of its first byte.
    last_ts: u64,
    record_pos: u64,
    /// Byte ranges of the last read or write fed that hold secrets (passwords): whoever keeps
    /// the raw bytes overwrites them.
    scrub: Vec<(usize, usize)>,
    /// Bytes kept per element.
    keep: usize,
    /// Bytes skipped while resynchronizing or cut off with a value (statistics).
    pub skipped: u64,
    /// Values abandoned: a header that made no sense, or a gap outside a body.
    pub malformed: u64,
    /// From a loss of position until the next value start is found.
    pub lost: bool,
}

impl Framer {
    /// `from_start`: the connection's first byte comes next; otherwise it was joined midway
    /// and the first value start has to be found. `keep`: bytes kept per element.
    pub fn new(side: Side, from_start: bool, keep: usize) -> Framer {
        Framer {
            side,
            state: if from_start {
                State::Element
            } else {
                State::AtNextRecord
            },
            line: Vec::new(),
            line_len: 0,
            line_last: 0,
            elem_start: 0,
            stack: Vec::new(),
            body_elem: usize::MAX,
            elems: Vec::new(),
            bytes: Vec::new(),
            heads: Vec::new(),
            cur_elems: 0,
            cur_bytes: 0,
            cur_started: None,
            cur_wire: 0,
            cur_dropped: 0,
            pos: 0,
            last_ts: 0,
            record_pos: 0,
            scrub: Vec::new(),
            keep: keep.max(1),
            skipped: 0,
            malformed: 0,
            lost: !from_start,
        }
    }

    /// Feeds the captured bytes of one read or write (at time `ts_ns`).
    pub fn feed(&mut self, mut data: &[u8], ts_ns: u64) {
        self.last_ts = ts_ns;
        self.record_pos = self.pos;
        self.scrub.clear();
        let mut record_start = true;
        if self.state == State::AtNextRecord {
            self.state = State::Lost;
        }
        while !data.is_empty() {
            let used = match self.state {
                State::Lost | State::AtNextRecord => self.resync(data, record_start),
                State::Element => match self.whole_command(data, ts_ns) {
                    Some(used) => used,
                    None => self.element(data, ts_ns),
                },
                State::Line { kind } => self.line(data, kind, ts_ns),
                State::Body { left, crlf } => self.body(data, left, crlf, ts_ns),
            };
            record_start = false;
            data = &data[used..];
        }
    }

    /// `n` bytes of the stream (after those fed last) were not captured.
    pub fn feed_gap(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        // Saturating: gaps come from capture files, which may be corrupt.
        self.pos = self.pos.saturating_add(n);
        match self.state {
            State::Body { left, crlf } if n <= left.saturating_add(u64::from(crlf)) => {
                let in_body = n.min(left);
                let in_crlf = (n - in_body) as u8;
                if let Some(e) = self.elems.get_mut(self.body_elem) {
                    e.truncated = true;
                }
                if left == in_body && crlf == in_crlf {
                    self.body_end(self.last_ts);
                } else {
                    self.state = State::Body {
                        left: left - in_body,
                        crlf: crlf - in_crlf,
                    };
                }
            }
            State::Element if self.stack.is_empty() && self.cur_started.is_none() => {
                // Between values: the next one begins somewhere after the gap.
                self.skipped = self.skipped.saturating_add(n);
                self.lose(false);
            }
            State::Lost | State::AtNextRecord => self.skipped = self.skipped.saturating_add(n),
            _ => {
                self.skipped = self.skipped.saturating_add(n);
                self.lose(true);
            }
        }
    }

    /// Forgets the position: the next read or write begins a value (the connection knows,
    /// say, that the server answers a request sent after an idle point).
    pub fn sync_at_next_record(&mut self) {
        self.abandon();
        self.state = State::AtNextRecord;
        self.lost = true;
    }

    /// Forgets the position until a plausible value start turns up.
    pub fn lose_position(&mut self) {
        self.lose(false);
    }

    /// Ranges of the last read or write fed that hold secrets (client side): a capture file
    /// gets them overwritten.
    pub fn secrets(&self) -> &[(usize, usize)] {
        &self.scrub
    }

    /// At a value boundary (nothing half framed).
    pub fn at_boundary(&self) -> bool {
        self.state == State::Element && self.stack.is_empty() && self.cur_started.is_none()
    }

    /// The values framed since the last [`Framer::consume`].
    pub fn frames(&self) -> impl ExactSizeIterator<Item = Frame<'_>> {
        (0..self.heads.len()).map(|i| self.frame(i))
    }

    /// How many values were framed since the last [`Framer::consume`].
    pub fn frame_count(&self) -> usize {
        self.heads.len()
    }

    /// Value `i` of those framed since the last [`Framer::consume`].
    pub fn frame(&self, i: usize) -> Frame<'_> {
        let h = &self.heads[i];
        Frame {
            elems: &self.elems[h.elems.0..h.elems.1],
            bytes: &self.bytes,
            wire: h.wire,
            started_ns: h.started_ns,
            finished_ns: h.finished_ns,
            inline: h.inline,
            dropped: h.dropped,
        }
    }

    /// Forgets the framed values, keeping the value in progress and the memory.
    pub fn consume(&mut self) {
        if self.heads.is_empty() {
            return;
        }
        self.heads.clear();
        let (e0, b0) = (self.cur_elems, self.cur_bytes);
        self.elems.drain(..e0);
        self.bytes.drain(..b0);
        let b0 = b0 as u32;
        for e in &mut self.elems {
            e.data = (e.data.0 - b0, e.data.1 - b0);
        }
        for o in &mut self.stack {
            if o.elem != usize::MAX {
                o.elem -= e0;
            }
        }
        if self.body_elem != usize::MAX {
            self.body_elem -= e0;
        }
        self.cur_elems = 0;
        self.cur_bytes = 0;
    }

    /// Lost: skips to the first line start (or record start) where a plausible value begins.
    fn resync(&mut self, data: &[u8], record_start: bool) -> usize {
        let mut p = 0;
        while p < data.len() {
            let line_start = if p == 0 {
                record_start
            } else {
                data[p - 1] == b'\n'
            };
            if line_start && plausible_start(self.side, &data[p..], record_start && p == 0) {
                self.skipped += p as u64;
                self.pos += p as u64;
                self.state = State::Element;
                self.lost = false;
                return p;
            }
            p = match memchr::memchr(b'\n', &data[p..]) {
                Some(nl) => p + nl + 1,
                None => data.len(),
            };
        }
        self.skipped += data.len() as u64;
        self.pos += data.len() as u64;
        data.len()
    }

    /// Drops the value in progress.
    fn abandon(&mut self) {
        self.elems.truncate(self.cur_elems);
        self.bytes.truncate(self.cur_bytes);
        self.stack.clear();
        self.body_elem = usize::MAX;
        self.cur_started = None;
        self.cur_dropped = 0;
        self.line.clear();
        self.line_len = 0;
        self.line_last = 0;
    }

    fn lose(&mut self, malformed: bool) {
        if malformed {
            self.malformed += 1;
        }
        self.abandon();
        self.state = State::Lost;
        self.lost = true;
    }

    fn begin_value(&mut self, ts_ns: u64) {
        if self.cur_started.is_none() {
            self.cur_started = Some(ts_ns);
            self.cur_wire = self.pos;
            self.cur_dropped = 0;
        }
    }

    /// A whole command in view, every argument a short bulk string (how clients write
    /// commands, one or a pipeline of them per write): framed in one pass over the bytes, to
    /// the elements the element-by-element path gives. None for anything else (a value cut
    /// across reads, a long argument, a command that may hold a secret, garbage), which that
    /// path handles. Half the framing time of a pipelined workload went to its states.
    fn whole_command(&mut self, data: &[u8], ts_ns: u64) -> Option<usize> {
        const MAX_ARGS: u64 = 64;
        if self.side != Side::Request
            || data.first() != Some(&kind::ARRAY)
            || !self.stack.is_empty()
            || self.cur_started.is_some()
        {
            return None;
        }
        let (n, first) = short_header(data, 0)?;
        if n == 0 || n > MAX_ARGS {
            return None;
        }
        // Pushed as they are read; all taken back unless the whole command is in view.
        let (elems_before, bytes_before) = (self.elems.len(), self.bytes.len());
        let start = self.pos;
        self.elem_start = start;
        let array = self.push_at(0, kind::ARRAY, &[], n as i64, false);
        let mut at = first;
        for i in 0..n {
            let whole = self.whole_bulk(data, at, i == 0);
            let Some((body, end)) = whole else {
                self.elems.truncate(elems_before);
                self.bytes.truncate(bytes_before);
                return None;
            };
            self.elem_start = start + at as u64;
            let e = self.push_at(1, kind::BULK, &data[body..end], (end - body) as i64, false);
            if let Some(e) = self.elems.get_mut(e) {
                e.wire = (end + 2 - at) as u64;
            }
            at = end + 2;
        }
        let total = at;
        if let Some(e) = self.elems.get_mut(array) {
            e.wire = total as u64;
        }
        self.begin_value(ts_ns);
        self.pos = start + total as u64;
        self.emit(ts_ns);
        Some(total)
    }

    /// The body of the bulk string whose header is at `data[at]`, if it is whole in view
    /// (CRLF included), no longer than what is kept, and (for a command's name, `first`) not
    /// a command that may hold a secret: (start, end) of the body.
    fn whole_bulk(&self, data: &[u8], at: usize, first: bool) -> Option<(usize, usize)> {
        if data.get(at) != Some(&kind::BULK) {
            return None;
        }
        let (len, body) = short_header(data, at)?;
        let end = body.checked_add(usize::try_from(len).ok()?)?;
        if len > self.keep as u64 || data.get(end..end + 2) != Some(b"\r\n") {
            return None;
        }
        if first && may_hold_secrets(&data[body..end]) {
            return None;
        }
        Some((body, end))
    }

    fn element(&mut self, data: &[u8], ts_ns: u64) -> usize {
        let b = data[0];
        if self.stack.is_empty() && self.side == Side::Request && b != kind::ARRAY {
            // Redis skips the empty lines of inline clients.
            if b == b'\r' || b == b'\n' {
                self.pos += 1;
                return 1;
            }
            self.begin_value(ts_ns);
            self.elem_start = self.pos;
            self.state = State::Line { kind: 0 };
            return 0;
        }
        if !kind::is_type(b) {
            self.lose(true);
            return 0;
        }
        self.begin_value(ts_ns);
        self.elem_start = self.pos;
        // The common case, a whole short line in view: read it where it is, without the
        // byte-by-byte states of a line split across reads (a third of the decoding time).
        let cap = self.keep.max(64);
        if let Some(nl) = memchr::memchr(b'\n', &data[1..data.len().min(cap + 2)]) {
            let line = &data[1..1 + nl];
            self.pos += nl as u64 + 2;
            match line.strip_suffix(b"\r") {
                Some(text) if self.typed_line(b, text, text.len(), ts_ns) => {}
                // Typed lines end with CRLF.
                _ => self.lose(true),
            }
            return nl + 2;
        }
        self.pos += 1;
        self.state = State::Line { kind: b };
        1
    }

    fn line(&mut self, data: &[u8], kind: u8, ts_ns: u64) -> usize {
        let nl = memchr::memchr(b'\n', data);
        let end = nl.unwrap_or(data.len());
        // An inline command is split into words, so it is kept whole.
        let cap = if kind == 0 {
            MAX_LINE
        } else {
            self.keep.max(64)
        };
        let room = cap.saturating_sub(self.line.len());
        self.line.extend_from_slice(&data[..end.min(room)]);
        if end > 0 {
            self.line_last = data[end - 1];
        }
        self.line_len += end;
        if self.line_len > MAX_LINE {
            self.pos += end as u64;
            self.lose(true);
            return end;
        }
        let Some(nl) = nl else {
            self.pos += data.len() as u64;
            return data.len();
        };
        self.pos += nl as u64 + 1;
        let had_cr = self.line_len > 0 && self.line_last == b'\r';
        let len = self.line_len - usize::from(had_cr);
        let mut text = std::mem::take(&mut self.line);
        text.truncate(len);
        self.line_len = 0;
        self.line_last = 0;
        self.state = State::Element;
        if kind == 0 {
            self.inline(&text, ts_ns);
        } else if !had_cr || !self.typed_line(kind, &text, len, ts_ns) {
            // Typed lines end with CRLF.
            self.lose(true);
        }
        text.clear();
        self.line = text;
        nl + 1
    }

    /// Pushes an element at `depth`; returns its index (usize::MAX when over the limit).
    fn push_at(&mut self, depth: u8, k: u8, data: &[u8], len: i64, truncated: bool) -> usize {
        if self.elems.len() - self.cur_elems >= MAX_ELEMENTS {
            self.cur_dropped += 1;
            return usize::MAX;
        }
        let start = self.bytes.len() as u32;
        self.bytes.extend_from_slice(data);
        self.elems.push(Elem {
            kind: k,
            depth,
            truncated,
            data: (start, self.bytes.len() as u32),
            len,
            wire: self.elem_start,
        });
        self.elems.len() - 1
    }

    fn push(&mut self, k: u8, data: &[u8], len: i64, truncated: bool) -> usize {
        self.push_at(self.stack.len() as u8, k, data, len, truncated)
    }

    /// A complete typed line: an element, or the header of a blob, an aggregate or a stream
    /// part. False when it makes no sense.
    fn typed_line(&mut self, k: u8, text: &[u8], len: usize, ts_ns: u64) -> bool {
        let in_stream_string = self.stack.last().is_some_and(Open::is_streamed_string);
        if in_stream_string != (k == kind::CHUNK) {
            return false;
        }
        match k {
            kind::CHUNK => {
                let Some(n) = parse_len(text).filter(|&n| n <= MAX_BLOB) else {
                    return false;
                };
                if n == 0 {
                    let open = self.stack.pop().expect("in a streamed string");
                    self.finish_open(open);
                    self.value_done(ts_ns);
                } else {
                    self.body_elem = self.stack.last().map_or(usize::MAX, |o| o.elem);
                    if let Some(e) = self.elems.get_mut(self.body_elem) {
                        e.len += n as i64;
                    }
                    self.state = State::Body { left: n, crlf: 2 };
                }
                true
            }
            kind::END => match self.stack.last() {
                Some(o) if text.is_empty() && o.remaining.is_none() => {
                    let open = self.stack.pop().expect("checked");
                    self.finish_open(open);
                    self.value_done(ts_ns);
                    true
                }
                _ => false,
            },
            _ if kind::is_line(k) => {
                if !valid_line_value(k, text) {
                    return false;
                }
                let truncated = text.len() < len;
                let at = self.push(k, text, len as i64, truncated);
                self.complete(at);
                self.value_done(ts_ns);
                true
            }
            _ if kind::is_blob(k) => {
                if k == kind::BULK && (text == b"?" || text == b"-1") {
                    let streamed = text == b"?";
                    let at = self.push(k, &[], if streamed { 0 } else { -1 }, false);
                    if streamed {
                        return self.open(at, k, None);
                    }
                    self.complete(at);
                    self.value_done(ts_ns);
                    return true;
                }
                let Some(n) = parse_len(text).filter(|&n| n <= MAX_BLOB) else {
                    return false;
                };
                let k = if self.next_arg_is_secret() { SECRET } else { k };
                self.body_elem = self.push(k, &[], n as i64, false);
                self.state = State::Body { left: n, crlf: 2 };
                true
            }
            _ if kind::is_aggregate(k) => {
                if text == b"?" && k != kind::ATTRIBUTE {
                    let at = self.push(k, &[], 0, false);
                    return self.open(at, k, None);
                }
                if text == b"-1" && k == kind::ARRAY {
                    let at = self.push(k, &[], -1, false);
                    self.complete(at);
                    self.value_done(ts_ns);
                    return true;
                }
                let Some(n) = parse_len(text).filter(|&n| n <= MAX_COUNT) else {
                    return false;
                };
                let at = self.push(k, &[], n as i64, false);
                let items = if matches!(k, kind::MAP | kind::ATTRIBUTE) {
                    2 * n
                } else {
                    n
                };
                if items > 0 {
                    return self.open(at, k, Some(items));
                }
                self.complete(at);
                if k != kind::ATTRIBUTE {
                    self.value_done(ts_ns);
                }
                true
            }
            _ => false,
        }
    }

    /// Whether the blob about to be read is a secret argument of the command being framed.
    fn next_arg_is_secret(&self) -> bool {
        if self.side != Side::Request || self.stack.len() != 1 {
            return false;
        }
        let Some(index) = self.stack[0].seen.checked_sub(1) else {
            return false;
        };
        let kept = &self.elems[self.cur_elems..];
        let word = |e: &Elem| &self.bytes[e.data.0 as usize..e.data.1 as usize];
        let Some(name) = kept.get(1) else {
            return false;
        };
        if !may_hold_secrets(word(name)) {
            return false;
        }
        let before: Vec<&[u8]> = kept[2..].iter().map(word).collect();
        before.len() == index as usize && is_secret_arg(word(name), &before, index as usize)
    }

    fn open(&mut self, elem: usize, k: u8, remaining: Option<u64>) -> bool {
        if self.stack.len() >= MAX_DEPTH {
            return false;
        }
        self.stack.push(Open {
            elem,
            kind: k,
            remaining,
            seen: 0,
            wire_start: self.elem_start,
        });
        true
    }

    /// An element is complete at the current position: its `wire` becomes its size.
    fn complete(&mut self, at: usize) {
        let pos = self.pos;
        if let Some(e) = self.elems.get_mut(at) {
            e.wire = pos - e.wire;
        }
    }

    fn finish_open(&mut self, open: Open) {
        let pos = self.pos;
        if let Some(e) = self.elems.get_mut(open.elem) {
            if open.remaining.is_none() && open.kind != kind::BULK {
                e.len = open.seen as i64;
            }
            e.wire = pos - open.wire_start;
        }
    }

    /// An element finished: it counts in its aggregate, closing those it completes; a whole
    /// value goes out. An attribute does not count (the value it describes follows).
    fn value_done(&mut self, ts_ns: u64) {
        loop {
            let Some(top) = self.stack.last_mut() else {
                self.emit(ts_ns);
                return;
            };
            top.seen += 1;
            match &mut top.remaining {
                Some(r) => {
                    *r -= 1;
                    if *r > 0 {
                        return;
                    }
                }
                None => return,
            }
            let open = self.stack.pop().expect("checked");
            self.finish_open(open);
            if open.kind == kind::ATTRIBUTE {
                return;
            }
        }
    }

    fn emit(&mut self, ts_ns: u64) {
        self.heads.push(Head {
            elems: (self.cur_elems, self.elems.len()),
            wire: self.pos - self.cur_wire,
            started_ns: self.cur_started.take().unwrap_or(ts_ns),
            finished_ns: ts_ns,
            inline: false,
            dropped: self.cur_dropped,
        });
        self.cur_elems = self.elems.len();
        self.cur_bytes = self.bytes.len();
        self.cur_dropped = 0;
    }

    fn body(&mut self, data: &[u8], left: u64, crlf: u8, ts_ns: u64) -> usize {
        if left > 0 {
            let n = left.min(data.len() as u64) as usize;
            // The rest of the body and its CRLF in view (the common case): done in one step.
            let whole = crlf == 2 && data.get(n..n + 2) == Some(b"\r\n") && n as u64 == left;
            let secret = self
                .elems
                .get(self.body_elem)
                .is_some_and(|e| e.kind == SECRET);
            if secret {
                let at = (self.pos - self.record_pos) as usize;
                self.scrub.push((at, at + n));
            } else if let Some(e) = self.elems.get(self.body_elem).copied() {
                let kept = (e.data.1 - e.data.0) as usize;
                let room = self.keep.saturating_sub(kept).min(n);
                // The element's data is the last bytes pushed: nothing else is pushed while
                // its body (or a streamed string's chunks) is read.
                self.bytes.extend_from_slice(&data[..room]);
                let e = &mut self.elems[self.body_elem];
                e.data.1 += room as u32;
                e.truncated |= room < n;
            }
            self.pos += n as u64;
            if whole {
                self.pos += 2;
                self.body_end(ts_ns);
                return n + 2;
            }
            self.state = State::Body {
                left: left - n as u64,
                crlf,
            };
            return n;
        }
        let want = if crlf == 2 { b'\r' } else { b'\n' };
        if data[0] != want {
            self.lose(true);
            return 0;
        }
        self.pos += 1;
        if crlf == 2 {
            self.state = State::Body { left: 0, crlf: 1 };
        } else {
            self.body_end(ts_ns);
        }
        1
    }

    /// A blob's body, or a streamed string's chunk, ended (with its CRLF).
    fn body_end(&mut self, ts_ns: u64) {
        self.state = State::Element;
        let at = std::mem::replace(&mut self.body_elem, usize::MAX);
        if self.stack.last().is_some_and(Open::is_streamed_string) {
            // A chunk: the string goes on until `;0`.
            return;
        }
        self.complete(at);
        self.value_done(ts_ns);
    }

    /// An inline command: words as Redis' sdssplitargs reads them.
    fn inline(&mut self, text: &[u8], ts_ns: u64) {
        let Some(words) = split_inline(text) else {
            // Redis answers "unbalanced quotes" and closes the connection.
            self.malformed += 1;
            self.abandon();
            return;
        };
        if words.is_empty() {
            self.abandon();
            return;
        }
        let name = words[0].clone();
        let may_hold_secrets = may_hold_secrets(&name);
        let secret_at: Vec<bool> = (1..words.len())
            .map(|i| {
                if !may_hold_secrets {
                    return false;
                }
                let before: Vec<&[u8]> = words[1..i].iter().map(Vec::as_slice).collect();
                is_secret_arg(&name, &before, i - 1)
            })
            .collect();
        if secret_at.iter().any(|&s| s) && self.elem_start >= self.record_pos {
            // Everything after the command name, as far as this read or write holds it.
            let start = (self.elem_start - self.record_pos) as usize;
            let skip = text.iter().take_while(|c| c.is_ascii_whitespace()).count();
            let from = start + skip + name.len();
            let to = start + text.len();
            if from < to {
                self.scrub.push((from, to));
            }
        }
        let array = self.push_at(0, kind::ARRAY, &[], words.len() as i64, false);
        for (i, w) in words.iter().enumerate() {
            let secret = i > 0 && secret_at[i - 1];
            let kept = if secret { 0 } else { w.len().min(self.keep) };
            let k = if secret { SECRET } else { kind::BULK };
            let at = self.push_at(1, k, &w[..kept], w.len() as i64, kept < w.len() && !secret);
            if let Some(e) = self.elems.get_mut(at) {
                e.wire = 0;
            }
        }
        self.complete(array);
        self.emit(ts_ns);
        if let Some(h) = self.heads.last_mut() {
            h.inline = true;
        }
    }
}

/// The length in the header at `data[at]` (a type byte, digits, CRLF) and where the header
/// ends; None unless all of it is in view and well formed.
fn short_header(data: &[u8], at: usize) -> Option<(u64, usize)> {
    let line = data.get(at + 1..data.len().min(at + 22))?;
    let cr = line.iter().position(|&c| c == b'\r')?;
    if line.get(cr + 1) != Some(&b'\n') {
        return None;
    }
    Some((parse_len(&line[..cr])?, at + 1 + cr + 2))
}

/// A non-negative decimal length (no sign, no leading '+').
fn parse_len(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 19 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(text.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// An integer line (`:`): optional sign, digits.
fn is_integer(text: &[u8]) -> bool {
    let digits = text
        .strip_prefix(b"-")
        .or(text.strip_prefix(b"+"))
        .unwrap_or(text);
    !digits.is_empty() && digits.len() <= 20 && digits.iter().all(u8::is_ascii_digit)
}

fn valid_line_value(k: u8, text: &[u8]) -> bool {
    match k {
        kind::INTEGER => is_integer(text),
        kind::BIG_NUMBER => {
            let digits = text.strip_prefix(b"-").unwrap_or(text);
            !digits.is_empty() && digits.iter().all(u8::is_ascii_digit)
        }
        kind::NULL => text.is_empty(),
        kind::BOOLEAN => text == b"t" || text == b"f",
        kind::DOUBLE => {
            !text.is_empty()
                && text
                    .iter()
                    .all(|c| c.is_ascii_digit() || b"+-.eEinfINFnaNA".contains(c))
        }
        // Simple strings and errors hold no CR or LF.
        _ => !text.contains(&b'\r'),
    }
}

/// Whether a value plausibly begins at `data[0]`: its whole header in view and sane, and for
/// a command its first element's header too. `record_start`: the read or write begins here,
/// where an inline command may also begin.
pub fn plausible_start(side: Side, data: &[u8], record_start: bool) -> bool {
    let Some(&b) = data.first() else {
        return false;
    };
    match side {
        Side::Request if b == kind::ARRAY => {
            let Some((n, rest)) = header(data, kind::ARRAY) else {
                return false;
            };
            match parse_len(n) {
                Some(0) => true,
                Some(n) if n <= 1 << 20 => header(rest, kind::BULK)
                    .is_some_and(|(len, _)| parse_len(len).is_some_and(|l| l <= MAX_BLOB)),
                _ => false,
            }
        }
        Side::Request => record_start && plausible_inline(data),
        Side::Reply => {
            let Some((text, rest)) = header(data, b) else {
                return false;
            };
            match b {
                kind::SIMPLE => text.iter().all(|c| (0x20..0x7f).contains(c)),
                kind::ERROR => text.first().is_some_and(u8::is_ascii_uppercase),
                _ if kind::is_line(b) => valid_line_value(b, text),
                _ if kind::is_blob(b) => {
                    if b == kind::BULK && (text == b"-1" || text == b"?") {
                        return true;
                    }
                    match parse_len(text) {
                        Some(n) if n <= MAX_BLOB => {
                            // When the body ends in view, its CRLF must follow it.
                            let n = n as usize;
                            rest.len() < n + 2 || &rest[n..n + 2] == b"\r\n"
                        }
                        _ => false,
                    }
                }
                _ if kind::is_aggregate(b) => {
                    (text == b"?" && b != kind::ATTRIBUTE)
                        || (text == b"-1" && b == kind::ARRAY)
                        || parse_len(text).is_some_and(|n| n <= MAX_COUNT)
                }
                _ => false,
            }
        }
    }
}

/// `data` begins with type byte `k` and a CRLF-ended line in view: the line and what follows.
fn header(data: &[u8], k: u8) -> Option<(&[u8], &[u8])> {
    if data.first() != Some(&k) {
        return None;
    }
    let window = &data[1..data.len().min(1 + 512)];
    let cr = memchr::memchr(b'\r', window)?;
    if window.get(cr + 1) != Some(&b'\n') {
        return None;
    }
    Some((&window[..cr], &data[1 + cr + 2..]))
}

/// An inline command at a record start: a word of letters, then printable text, then LF.
fn plausible_inline(data: &[u8]) -> bool {
    let Some(nl) = memchr::memchr(b'\n', &data[..data.len().min(4096)]) else {
        return false;
    };
    let line = data[..nl].strip_suffix(b"\r").unwrap_or(&data[..nl]);
    let word = line.split(|&c| c == b' ').next().unwrap_or_default();
    (1..=32).contains(&word.len())
        && word.iter().all(u8::is_ascii_alphabetic)
        && line.iter().all(|c| (0x20..0x7f).contains(c) || *c == b'\t')
}

/// An inline command's words, quoted and escaped as Redis' sdssplitargs reads them; None for
/// unbalanced quotes.
pub fn split_inline(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut words = Vec::new();
    let mut i = 0;
    let n = line.len();
    loop {
        while i < n && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= n {
            return Some(words);
        }
        let mut w = Vec::new();
        match line[i] {
            b'"' => {
                i += 1;
                loop {
                    let c = *line.get(i)?;
                    if c == b'"' {
                        i += 1;
                        break;
                    }
                    if c == b'\\' && i + 1 < n {
                        let e = line[i + 1];
                        let hex = |c: u8| (c as char).to_digit(16);
                        if e == b'x'
                            && i + 3 < n
                            && let (Some(h), Some(l)) = (hex(line[i + 2]), hex(line[i + 3]))
                        {
                            w.push((h * 16 + l) as u8);
                            i += 4;
                            continue;
                        }
                        w.push(match e {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 8,
                            b'a' => 7,
                            other => other,
                        });
                        i += 2;
                        continue;
                    }
                    w.push(c);
                    i += 1;
                }
                // A closing quote must be followed by a space or the end.
                if i < n && !line[i].is_ascii_whitespace() {
                    return None;
                }
            }
            b'\'' => {
                i += 1;
                loop {
                    let c = *line.get(i)?;
                    if c == b'\'' {
                        i += 1;
                        break;
                    }
                    if c == b'\\' && line.get(i + 1) == Some(&b'\'') {
                        w.push(b'\'');
                        i += 2;
                        continue;
                    }
                    w.push(c);
                    i += 1;
                }
                if i < n && !line[i].is_ascii_whitespace() {
                    return None;
                }
            }
            _ => {
                while i < n && !line[i].is_ascii_whitespace() {
                    w.push(line[i]);
                    i += 1;
                }
            }
        }
        words.push(w);
    }
}
