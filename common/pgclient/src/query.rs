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

/// How long a lookup may take before the connection is given up: the tools look names up
/// in their drain loop, which must not stall (a half-open TCP connection, a pg_class held
/// by VACUUM FULL).
const QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

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
            // The server gives up on our lookups before we do.
            params: vec![
                ("application_name".into(), "pgbpf".into()),
                (
                    "options".into(),
                    "-c statement_timeout=1500 -c lock_timeout=1000".into(),
                ),
            ],
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let conn = runtime
            .block_on(client::connect(&target, &passwords, &login))
            .with_context(|| format!("connecting to {}", target.describe()))?;
        Ok(BlockingConnection { runtime, conn })
    }

    /// Runs `sql`; after an error other than the server's own (a timeout, a closed or broken
    /// connection) the connection is in an unknown state: drop it.
    pub fn query(&mut self, sql: &str) -> anyhow::Result<Vec<Row>> {
        let (r, w) = &mut self.conn;
        // The timer is made inside the runtime (tokio's timers need one at creation).
        self.runtime
            .block_on(async { tokio::time::timeout(QUERY_TIMEOUT, simple_query(r, w, sql)).await })
            .unwrap_or_else(|_| bail!("no answer within {QUERY_TIMEOUT:?}"))
    }
}
