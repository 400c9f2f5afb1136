//! Parameter types for statements from logs. A log shows parameters as text and not their
//! types; the original client may have declared them (`$1 + $2` with two integers). Each
//! distinct statement is prepared once on a connection of its own to the target: when the
//! server types it by itself the replay declares nothing (as a text-only client would),
//! and when it cannot (`operator is not unique`, `could not determine data type`) the types
//! the values look like are declared. pgreplay sends everything untyped and fails there.

use bytes::BytesMut;
use foldhash::{HashMap, HashMapExt as _};
use postgres_protocol::message::{backend::Message, frontend};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::statement::guess_types;
use crate::{
    client::{self, Login, Reader, Writer},
    conninfo::{Passwords, Target},
};

/// SQLSTATEs of statements whose parameter types the server could not resolve.
const UNTYPED: &[&str] = &["42725", "42P18"];
/// Statements remembered; beyond it the cache starts again (memory stays bounded).
const CACHE_LIMIT: usize = 50_000;

/// Where the probes go, and what they found.
pub struct Prober {
    runtime: tokio::runtime::Runtime,
    /// None with `--check`: nothing is sent, so no types are asked for.
    target: Option<Target>,
    passwords: Passwords,
    /// One connection per (user, database); None when it could not be opened.
    conns: HashMap<(String, String), Option<(Reader, Writer)>>,
    cache: HashMap<(String, String, String), Vec<u32>>,
}

impl Prober {
    pub fn new(target: Option<Target>, passwords: Passwords) -> anyhow::Result<Prober> {
        Ok(Prober {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
            target,
            passwords,
            conns: HashMap::new(),
            cache: HashMap::new(),
        })
    }

    /// The types to declare for `sql` run with `values` by `login`.
    pub fn types(&mut self, login: &Login, sql: &str, values: &[Option<String>]) -> Vec<u32> {
        let Some(target) = &self.target else {
            return vec![];
        };
        if values.is_empty() {
            return vec![];
        }
        let key = (login.user.clone(), login.database.clone(), sql.to_string());
        if let Some(t) = self.cache.get(&key) {
            return t.clone();
        }
        let guessed = guess_types(values);
        let conn_key = (login.user.clone(), login.database.clone());
        if !self.conns.contains_key(&conn_key) {
            let c = self
                .runtime
                .block_on(client::connect(target, &self.passwords, login))
                .ok();
            self.conns.insert(conn_key.clone(), c);
        }
        let types = match self.conns.get_mut(&conn_key) {
            Some(Some(conn)) => {
                let first = self.runtime.block_on(prepare(conn, sql, &[]));
                match first {
                    Ok(None) => vec![],
                    Ok(Some(code)) if UNTYPED.contains(&code.as_str()) => {
                        match self.runtime.block_on(prepare(conn, sql, &guessed)) {
                            Ok(None) => guessed,
                            _ => vec![],
                        }
                    }
                    Ok(Some(_)) => vec![],
                    Err(_) => {
                        self.conns.insert(conn_key, None);
                        vec![]
                    }
                }
            }
            _ => vec![],
        };
        if self.cache.len() >= CACHE_LIMIT {
            self.cache.clear();
        }
        self.cache.insert(key, types.clone());
        types
    }
}

/// Parse (unnamed) and Sync: None when it prepared, else the error's SQLSTATE.
async fn prepare(
    conn: &mut (Reader, Writer),
    sql: &str,
    types: &[u32],
) -> anyhow::Result<Option<String>> {
    let (r, w) = conn;
    let mut buf = BytesMut::new();
    frontend::parse("", sql, types.iter().copied(), &mut buf)?;
    frontend::sync(&mut buf);
    w.write_all(&buf).await?;
    let mut input = BytesMut::new();
    let mut code = None;
    loop {
        while let Some(m) = Message::parse(&mut input)? {
            match m {
                Message::ErrorResponse(body) => {
                    let mut fields = body.fields();
                    while let Some(f) = fallible_iterator::FallibleIterator::next(&mut fields)? {
                        if f.type_() == b'C' {
                            code = Some(String::from_utf8_lossy(f.value_bytes()).into_owned());
                        }
                    }
                }
                Message::ReadyForQuery(_) => return Ok(code),
                _ => {}
            }
        }
        if r.read_buf(&mut input).await? == 0 {
            anyhow::bail!("the server closed the probe connection");
        }
    }
}
