//! Typed PostgreSQL protocol 3.0 messages, decoded from [`Frame`]s. Malformed input is a
//! [`DecodeError`], never a panic; secrets (passwords, SASL data) are never kept.

use crate::frame::Frame;

/// Why a frame could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    pub tag: u8,
    pub reason: &'static str,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "malformed {:?} message: {}",
            self.tag as char, self.reason
        )
    }
}

impl std::error::Error for DecodeError {}

/// Bytes as text, invalid UTF-8 replaced. Checked whole first: valid text (nearly all of it)
/// is then one copy, without the chunk-by-chunk walk of the lossy conversion.
fn text(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(b).into_owned(),
    }
}

/// Reads the fields of a body in order. A body cut at the capture limit (`truncated`) is read
/// leniently: its last string or value ends where the bytes end, and counts are capped by
/// what is left, so a long statement is still reported (marked truncated) instead of lost.
struct Reader<'a> {
    b: &'a [u8],
    tag: u8,
    truncated: bool,
}

impl<'a> Reader<'a> {
    fn of(f: &Frame<'a>) -> Reader<'a> {
        Reader {
            b: f.body,
            tag: f.tag,
            truncated: f.truncated,
        }
    }
    /// The rest of a cut body was not needed: fields missing past the cut are not an error.
    fn tolerate(&self, r: Result<(), DecodeError>) -> Result<(), DecodeError> {
        match r {
            Err(_) if self.truncated => Ok(()),
            r => r,
        }
    }
    fn err(&self, reason: &'static str) -> DecodeError {
        DecodeError {
            tag: self.tag,
            reason,
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.b.len() < n {
            return Err(self.err("shorter than its fields"));
        }
        let (head, tail) = self.b.split_at(n);
        self.b = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn i16(&mut self) -> Result<i16, DecodeError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Result<i32, DecodeError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn cstr(&mut self) -> Result<String, DecodeError> {
        let Some(end) = memchr::memchr(0, self.b) else {
            if self.truncated {
                let s = text(self.b);
                self.b = &[];
                return Ok(s);
            }
            return Err(self.err("unterminated string"));
        };
        let s = text(&self.b[..end]);
        self.b = &self.b[end + 1..];
        Ok(s)
    }
    /// A count read from the wire, refused when the body cannot hold that many items of
    /// `min_size` bytes (so a corrupt count cannot make us allocate gigabytes).
    fn count(&mut self, min_size: usize) -> Result<usize, DecodeError> {
        let n = self.i16()?;
        if n < 0 {
            return Err(self.err("negative count"));
        }
        let fits = self.b.len() / min_size.max(1);
        if n as usize > fits {
            if self.truncated {
                return Ok(fits);
            }
            return Err(self.err("count larger than the message"));
        }
        Ok(n as usize)
    }
    /// A length-prefixed value: None for NULL (-1).
    fn value(&mut self) -> Result<Option<Vec<u8>>, DecodeError> {
        let len = self.i32()?;
        if len < 0 {
            return Ok(None);
        }
        if self.truncated && len as usize > self.b.len() {
            return Ok(Some(self.take(self.b.len())?.to_vec()));
        }
        Ok(Some(self.take(len as usize)?.to_vec()))
    }
}

/// Messages a client sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frontend {
    Startup {
        version: u32,
        params: Vec<(String, String)>,
    },
    SslRequest,
    GssEncRequest,
    CancelRequest {
        pid: i32,
        key: i32,
    },
    /// Password, SASL or GSS response: contents deliberately not kept.
    AuthResponse,
    Query {
        sql: String,
    },
    Parse {
        statement: String,
        sql: String,
        param_types: Vec<u32>,
    },
    Bind {
        portal: String,
        statement: String,
        param_formats: Vec<i16>,
        params: Vec<Option<Vec<u8>>>,
        result_formats: Vec<i16>,
    },
    Describe {
        kind: u8,
        name: String,
    },
    Execute {
        portal: String,
        max_rows: i32,
    },
    Close {
        kind: u8,
        name: String,
    },
    Sync,
    Flush,
    Terminate,
    CopyData {
        len: usize,
    },
    CopyDone,
    CopyFail {
        message: String,
    },
    FunctionCall {
        oid: i32,
        args: usize,
    },
}

/// Messages a server sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// 0 ok, 3 cleartext, 5 MD5, 10 SASL, 11 SASL continue, 12 SASL final, ...
    Authentication {
        kind: i32,
    },
    ParameterStatus {
        name: String,
        value: String,
    },
    BackendKeyData {
        pid: i32,
        key: i32,
    },
    /// 'I' idle, 'T' in a transaction, 'E' in a failed transaction.
    ReadyForQuery {
        status: u8,
    },
    RowDescription {
        columns: Vec<String>,
    },
    DataRow {
        columns: usize,
    },
    CommandComplete {
        tag: String,
    },
    EmptyQueryResponse,
    Error(Notice),
    Notice(Notice),
    ParseComplete,
    BindComplete,
    CloseComplete,
    NoData,
    PortalSuspended,
    ParameterDescription {
        types: Vec<u32>,
    },
    CopyInResponse {
        columns: usize,
    },
    CopyOutResponse {
        columns: usize,
    },
    CopyBothResponse {
        columns: usize,
    },
    CopyData {
        len: usize,
    },
    CopyDone,
    Notification {
        pid: i32,
        channel: String,
    },
    FunctionCallResponse,
    NegotiateProtocolVersion {
        minor: i32,
    },
    /// The server's one-byte answer to SSLRequest/GSSENCRequest ('S' yes, 'N' no).
    EncryptionAnswer(u8),
}

/// The fields of an ErrorResponse or NoticeResponse.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Notice {
    pub severity: String,
    pub sqlstate: String,
    pub message: String,
    pub detail: Option<String>,
}

impl Frontend {
    /// Decodes a client frame. Untyped frames (tag 0) are start-up-phase messages.
    pub fn decode(f: &Frame<'_>) -> Result<Frontend, DecodeError> {
        let mut r = Reader::of(f);
        Ok(match f.tag {
            0 => {
                let code = r.i32()? as u32;
                match code {
                    80_877_103 => Frontend::SslRequest,
                    80_877_104 => Frontend::GssEncRequest,
                    80_877_102 => Frontend::CancelRequest {
                        pid: r.i32()?,
                        key: r.i32()?,
                    },
                    version => {
                        let mut params = vec![];
                        loop {
                            let k = r.cstr()?;
                            if k.is_empty() {
                                break;
                            }
                            params.push((k, r.cstr()?));
                        }
                        Frontend::Startup { version, params }
                    }
                }
            }
            b'p' => Frontend::AuthResponse,
            b'Q' => Frontend::Query { sql: r.cstr()? },
            b'P' => {
                let statement = r.cstr()?;
                let sql = r.cstr()?;
                let mut param_types = vec![];
                let rest = (|| {
                    for _ in 0..r.count(4)? {
                        param_types.push(r.i32()? as u32);
                    }
                    Ok(())
                })();
                r.tolerate(rest)?;
                Frontend::Parse {
                    statement,
                    sql,
                    param_types,
                }
            }
            b'B' => {
                let portal = r.cstr()?;
                let statement = r.cstr()?;
                let (mut param_formats, mut params, mut result_formats) = (vec![], vec![], vec![]);
                // A cut Bind keeps the parameters (the last one possibly cut) it carried.
                let rest = (|| {
                    for _ in 0..r.count(2)? {
                        param_formats.push(r.i16()?);
                    }
                    for _ in 0..r.count(4)? {
                        params.push(r.value()?);
                    }
                    for _ in 0..r.count(2)? {
                        result_formats.push(r.i16()?);
                    }
                    Ok(())
                })();
                r.tolerate(rest)?;
                Frontend::Bind {
                    portal,
                    statement,
                    param_formats,
                    params,
                    result_formats,
                }
            }
            b'D' => Frontend::Describe {
                kind: r.u8()?,
                name: r.cstr()?,
            },
            b'E' => Frontend::Execute {
                portal: r.cstr()?,
                max_rows: r.i32()?,
            },
            b'C' => Frontend::Close {
                kind: r.u8()?,
                name: r.cstr()?,
            },
            b'S' => Frontend::Sync,
            b'H' => Frontend::Flush,
            b'X' => Frontend::Terminate,
            b'd' => Frontend::CopyData {
                len: f.len as usize,
            },
            b'c' => Frontend::CopyDone,
            b'f' => Frontend::CopyFail { message: r.cstr()? },
            b'F' => Frontend::FunctionCall {
                oid: r.i32()?,
                args: {
                    let n = r.count(2)?;
                    r.take(2 * n)?;
                    r.count(4)?
                },
            },
            _ => return Err(r.err("unknown client message type")),
        })
    }
}

fn notice(r: &mut Reader<'_>) -> Result<Notice, DecodeError> {
    let mut n = Notice::default();
    loop {
        let code = r.u8()?;
        if code == 0 {
            break;
        }
        let v = r.cstr()?;
        match code {
            b'V' => n.severity = v,
            b'S' if n.severity.is_empty() => n.severity = v,
            b'C' => n.sqlstate = v,
            b'M' => n.message = v,
            b'D' => n.detail = Some(v),
            _ => {}
        }
    }
    Ok(n)
}

impl Backend {
    /// Decodes a server frame.
    pub fn decode(f: &Frame<'_>) -> Result<Backend, DecodeError> {
        let mut r = Reader::of(f);
        Ok(match f.tag {
            b'R' => Backend::Authentication { kind: r.i32()? },
            b'S' => Backend::ParameterStatus {
                name: r.cstr()?,
                value: r.cstr()?,
            },
            b'K' => Backend::BackendKeyData {
                pid: r.i32()?,
                key: r.i32()?,
            },
            b'Z' => Backend::ReadyForQuery { status: r.u8()? },
            b'T' => {
                let n = r.count(19)?;
                let mut columns = Vec::with_capacity(n);
                for _ in 0..n {
                    columns.push(r.cstr()?);
                    r.take(18)?;
                }
                Backend::RowDescription { columns }
            }
            b'D' => Backend::DataRow {
                columns: r.count(4)?,
            },
            b'C' => Backend::CommandComplete { tag: r.cstr()? },
            b'I' => Backend::EmptyQueryResponse,
            b'E' => Backend::Error(notice(&mut r)?),
            b'N' => Backend::Notice(notice(&mut r)?),
            b'1' => Backend::ParseComplete,
            b'2' => Backend::BindComplete,
            b'3' => Backend::CloseComplete,
            b'n' => Backend::NoData,
            b's' => Backend::PortalSuspended,
            b't' => {
                let n = r.count(4)?;
                Backend::ParameterDescription {
                    types: (0..n)
                        .map(|_| r.i32().map(|v| v as u32))
                        .collect::<Result<_, _>>()?,
                }
            }
            b'G' => Backend::CopyInResponse {
                columns: {
                    r.u8()?;
                    r.count(2)?
                },
            },
            b'H' => Backend::CopyOutResponse {
                columns: {
                    r.u8()?;
                    r.count(2)?
                },
            },
            b'W' => Backend::CopyBothResponse {
                columns: {
                    r.u8()?;
                    r.count(2)?
                },
            },
            b'd' => Backend::CopyData {
                len: f.len as usize,
            },
            b'c' => Backend::CopyDone,
            b'A' => Backend::Notification {
                pid: r.i32()?,
                channel: r.cstr()?,
            },
            b'V' => Backend::FunctionCallResponse,
            b'v' => Backend::NegotiateProtocolVersion { minor: r.i32()? },
            _ => return Err(r.err("unknown server message type")),
        })
    }
}

impl Backend {
    /// Rows affected or returned, from a CommandComplete tag ("SELECT 5", "INSERT 0 3").
    pub fn rows_from_tag(tag: &str) -> Option<u64> {
        // The last word after a space, found from the end (a split iterator showed in
        // `--read` profiles: this runs for every statement).
        let space = memchr::memrchr(b' ', tag.as_bytes())?;
        tag[space + 1..].parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Frame<'_> {
        Frame {
            tag,
            body,
            len: body.len() as u32,
            truncated: false,
        }
    }

    #[test]
    fn frontend_messages() {
        let startup = frame(
            0,
            b"\x00\x03\x00\x00user\0alice\0database\0shop\0application_name\0psql\0\0",
        );
        let Frontend::Startup { version, params } = Frontend::decode(&startup).unwrap() else {
            panic!()
        };
        assert_eq!(version, 196_608);
        assert_eq!(params[2], ("application_name".into(), "psql".into()));
        assert_eq!(
            Frontend::decode(&frame(0, &80_877_103u32.to_be_bytes())).unwrap(),
            Frontend::SslRequest
        );
        assert_eq!(
            Frontend::decode(&frame(b'Q', b"select 1\0")).unwrap(),
            Frontend::Query {
                sql: "select 1".into()
            }
        );
        let parse = frame(b'P', b"s1\0select $1\0\x00\x01\x00\x00\x00\x17");
        assert_eq!(
            Frontend::decode(&parse).unwrap(),
            Frontend::Parse {
                statement: "s1".into(),
                sql: "select $1".into(),
                param_types: vec![23]
            }
        );
        let bind = frame(
            b'B',
            b"\0s1\0\x00\x00\x00\x02\x00\x00\x00\x0242\xff\xff\xff\xff\x00\x00",
        );
        let Frontend::Bind {
            params, statement, ..
        } = Frontend::decode(&bind).unwrap()
        else {
            panic!()
        };
        assert_eq!(statement, "s1");
        assert_eq!(params, vec![Some(b"42".to_vec()), None]);
        assert_eq!(
            Frontend::decode(&frame(b'E', b"\0\x00\x00\x00\x00")).unwrap(),
            Frontend::Execute {
                portal: "".into(),
                max_rows: 0
            }
        );
        assert_eq!(
            Frontend::decode(&frame(b'p', b"secret\0")).unwrap(),
            Frontend::AuthResponse
        );
    }

    #[test]
    fn backend_messages() {
        let err = frame(
            b'E',
            b"SERROR\0VERROR\0C42601\0Msyntax error at or near \"selec\"\0P1\0\0",
        );
        let Backend::Error(n) = Backend::decode(&err).unwrap() else {
            panic!()
        };
        assert_eq!(
            (n.severity.as_str(), n.sqlstate.as_str()),
            ("ERROR", "42601")
        );
        assert_eq!(
            Backend::decode(&frame(b'C', b"UPDATE 1\0")).unwrap(),
            Backend::CommandComplete {
                tag: "UPDATE 1".into()
            }
        );
        assert_eq!(Backend::rows_from_tag("INSERT 0 3"), Some(3));
        assert_eq!(Backend::rows_from_tag("BEGIN"), None);
        assert_eq!(
            Backend::decode(&frame(b'Z', b"T")).unwrap(),
            Backend::ReadyForQuery { status: b'T' }
        );
        let rd = frame(b'T', b"\x00\x01abalance\0\x00\x00\x40\x00\x00\x03\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00");
        assert_eq!(
            Backend::decode(&rd).unwrap(),
            Backend::RowDescription {
                columns: vec!["abalance".into()]
            }
        );
    }

    #[test]
    fn bodies_cut_at_the_capture_limit_keep_what_was_seen() {
        let cut = |tag: u8, body: &'static [u8], len: u32| Frame {
            tag,
            body,
            len,
            truncated: true,
        };
        assert_eq!(
            Frontend::decode(&cut(b'Q', b"select 'xxxx", 20_000)).unwrap(),
            Frontend::Query {
                sql: "select 'xxxx".into()
            }
        );
        assert_eq!(
            Frontend::decode(&cut(b'P', b"s1\0insert into t values ($1, 'ab", 9000)).unwrap(),
            Frontend::Parse {
                statement: "s1".into(),
                sql: "insert into t values ($1, 'ab".into(),
                param_types: vec![]
            }
        );
        // Two parameters announced, the second cut after 3 of its 5000 bytes.
        let bind = cut(
            b'B',
            b"\x00s1\x00\x00\x00\x00\x02\x00\x00\x00\x0242\x00\x00\x13\x88abc",
            6000,
        );
        let Frontend::Bind { params, .. } = Frontend::decode(&bind).unwrap() else {
            panic!()
        };
        assert_eq!(params, vec![Some(b"42".to_vec()), Some(b"abc".to_vec())]);
        // The same bytes whole-but-short (not cut) are still malformed.
        assert!(Frontend::decode(&frame(b'Q', b"select 'xxxx")).is_err());
    }

    #[test]
    fn malformed_bodies_are_errors() {
        assert!(Frontend::decode(&frame(b'Q', b"no terminator")).is_err());
        assert!(
            Frontend::decode(&frame(b'B', b"\0\0\x7f\xff")).is_err(),
            "count beyond the body"
        );
        assert!(Backend::decode(&frame(b'D', b"\x7f\xff")).is_err());
        assert!(Frontend::decode(&frame(b'?', b"")).is_err());
        let e = Backend::decode(&frame(b'K', b"\x00")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "malformed 'K' message: shorter than its fields"
        );
    }
}
