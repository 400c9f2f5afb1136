//! Relation names for `--dsn`: the OIDs the probes carry, looked up in pg_class over a
//! connection of the tool's own. A relation's OID means something only in its database, so
//! only the relations of the database the connection is to get a name; the others keep
//! "database/relation" OIDs.

use std::collections::HashMap;

use anyhow::Context as _;
use pgbpf_pgclient::query::BlockingConnection;

pub struct RelationNames {
    /// None once a lookup failed for another reason than the server's answer: names stop
    /// there (said once on stderr), the OIDs remain.
    conn: Option<BlockingConnection>,
    /// The OID of the connection's database.
    database: u32,
    /// Names looked up (None: no such relation, or the lookup failed).
    names: HashMap<u32, Option<String>>,
}

/// Lookups kept; beyond, the table starts over (relations are few, OIDs from a bad event many).
const MAX_NAMES: usize = 10_000;

impl RelationNames {
    /// Connects (`conninfo` as libpq takes it) and learns which database that is.
    pub fn open(conninfo: &str) -> anyhow::Result<RelationNames> {
        let mut conn = BlockingConnection::open(conninfo)?;
        let rows = conn
            .query("select oid from pg_database where datname = current_database()")
            .context("reading the database's OID")?;
        let database = rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .and_then(|oid| oid.parse().ok())
            .context("the server did not say its database's OID")?;
        Ok(RelationNames {
            conn: Some(conn),
            database,
            names: HashMap::new(),
        })
    }

    /// The name of relation `rel` of database `db` ("pgbench_tellers", "audit.log" outside
    /// the public schema), if it is in the connection's database and still exists.
    pub fn name(&mut self, db: u32, rel: u32) -> Option<String> {
        if db != self.database {
            return None;
        }
        if let Some(n) = self.names.get(&rel) {
            return n.clone();
        }
        if self.names.len() >= MAX_NAMES {
            self.names.clear();
        }
        let conn = self.conn.as_mut()?;
        // An integer formatted into the text: nothing from the outside reaches the SQL.
        let sql = format!(
            "select n.nspname, c.relname from pg_class c \
             join pg_namespace n on n.oid = c.relnamespace where c.oid = {rel}"
        );
        let rows = match conn.query(&sql) {
            Ok(rows) => rows,
            Err(e) => {
                eprintln!("locks: --dsn: relation names stop here, OIDs follow: {e:#}");
                self.conn = None;
                return None;
            }
        };
        let name = rows.into_iter().next().and_then(|row| {
            let (schema, relation) = (row.first()?.clone()?, row.get(1)?.clone()?);
            Some(if schema == "public" {
                relation
            } else {
                format!("{schema}.{relation}")
            })
        });
        self.names.insert(rel, name.clone());
        name
    }
}
