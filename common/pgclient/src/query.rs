//! Simple queries (the Query message) and their rows as text: enough for the tools that look
//! names up (pg_class, pg_database) on a connection of their own.

use anyhow::{Context as _, bail};
use bytes::BytesMut;
use fallible_iterator::FallibleIterator as _;
use postgres_protocol::message::{backend::Message, frontend};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{
    client::{self, Login, Reader, Writer},
    conninfo::Passwords,
};

/// One row: each column's text, None for NULL.
pub type Row = Vec<Option<String>>;

/// Runs `sql` (one statement) and returns its rows; a server error is an error with its
/// message and SQLSTATE.
pub async fn simple_query(r: &mut Reader, w: &mut Writer, sql: &str) -> anyhow::Result<Vec<Row>> {
    let mut buf = BytesMut::new();
    frontend::query(sql, &mut buf)?;
    w.write_all(&buf).await?;
    let mut input = BytesMut::new();
    let mut rows = vec![];
    let mut error = None;
    loop {
        while let Some(m) =
            Message::parse(&mut input).context("a malformed message from the server")?
        {
            match m {
                Message::DataRow(body) => {
                    let mut row = vec![];
                    let mut ranges = body.ranges();
                    while let Some(range) = ranges.next()? {
                        row.push(
                            range.map(|r| String::from_utf8_lossy(&body.buffer()[r]).into_owned()),
                        );
                    }
                    rows.push(row);
                }
                Message::ErrorResponse(body) => {
                    let (code, text) = client::error_fields(&body)?;
                    error = Some(format!("{text} (SQLSTATE {code})"));
                }
                Message::ReadyForQuery(_) => {
                    return match error {
                        Some(e) => bail!("{e}"),
                        None => Ok(rows),
                    };
                }
                _ => {}
            }
        }
        if r.read_buf(&mut input).await? == 0 {
            bail!("the server closed the connection");
        }
    }
}

/// A connection used from synchronous code: its own single-threaded runtime.
pub struct BlockingConnection {
    runtime: tokio::runtime::Runtime,
    conn: (Reader, Writer),
}

impl BlockingConnection {
    /// Connects to `conninfo` (libpq syntax) as its user, to its database.
    pub fn open(conninfo: &str) -> anyhow::Result<BlockingConnection> {
        let target = crate::conninfo::parse(conninfo)?;
        let passwords = Passwords::load(&target, None)?;
        // libpq's defaults: the operating system's user, a database named like the user.
        let user = target
            .user
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "postgres".into());
        let login = Login {
            database: target.dbname.clone().unwrap_or_else(|| user.clone()),
            user,
            params: vec![("application_name".into(), "pgbpf".into())],
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let conn = runtime
            .block_on(client::connect(&target, &passwords, &login))
            .with_context(|| format!("connecting to {}", target.describe()))?;
        Ok(BlockingConnection { runtime, conn })
    }

    pub fn query(&mut self, sql: &str) -> anyhow::Result<Vec<Row>> {
        let (r, w) = &mut self.conn;
        self.runtime.block_on(simple_query(r, w, sql))
    }
}
