//! Relation names for the tools' `--dsn`: the OIDs (locks' lock tags) or file nodes
//! (working_set's buffer tags) the probes carry, looked up over a connection of the tool's
//! own. Either means something only in its database, so only the relations of the database
//! the connection is to get a name; the others keep their numbers.

use std::collections::HashMap;

use crate::query::BlockingConnection;
use anyhow::Context as _;

/// What identifies a relation in the tool's events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelationId {
    /// pg_class.oid (lock tags).
    Oid,
    /// The relation's file node in a tablespace (buffer tags): TRUNCATE, VACUUM FULL and
    /// CLUSTER give a relation a new one, so it is not its OID.
    FileNode,
}

pub struct RelationNames {
    /// The tool, for its stderr line.
    tool: &'static str,
    kind: RelationId,
    /// None once a lookup failed for another reason than the server's answer: names stop
    /// there (said once on stderr), the OIDs remain.
    conn: Option<BlockingConnection>,
    /// The OID of the connection's database.
    database: u32,
    /// Names looked up by (tablespace, number) (None: no such relation, or the lookup
    /// failed); the tablespace is 0 for OIDs.
    names: HashMap<(u32, u32), Option<String>>,
}

/// Lookups kept; beyond, the table starts over (relations are few, OIDs from a bad event many).
const MAX_NAMES: usize = 10_000;

impl RelationNames {
    /// With a `--dsn` given: connects (before anything is attached, so a wrong one is an
    /// error first), context "--dsn" on failure.
    pub fn for_dsn(
        dsn: Option<&str>,
        tool: &'static str,
        kind: RelationId,
    ) -> anyhow::Result<Option<RelationNames>> {
        dsn.map(|dsn| RelationNames::open(dsn, tool, kind))
            .transpose()
            .context("--dsn")
    }

    /// Connects (`conninfo` as libpq takes it) and learns which database that is.
    pub fn open(
        conninfo: &str,
        tool: &'static str,
        kind: RelationId,
    ) -> anyhow::Result<RelationNames> {
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
            tool,
            kind,
            conn: Some(conn),
            database,
            names: HashMap::new(),
        })
    }

    /// The value of a server setting (`block_size`), None when it cannot be read.
    pub fn setting(&mut self, name: &'static str) -> Option<String> {
        // A constant name: nothing from the outside reaches the SQL.
        let rows = self
            .conn
            .as_mut()?
            .query(&format!("select current_setting('{name}')"))
            .ok()?;
        rows.into_iter().next()?.into_iter().next()?
    }

    /// The name of relation `rel` (an OID, or a file node of tablespace `spc`) of database
    /// `db` ("pgbench_tellers", "audit.log" outside the public schema), if it is in the
    /// connection's database and still exists.
    pub fn name(&mut self, spc: u32, db: u32, rel: u32) -> Option<String> {
        // Shared catalogs (database 0) are in every database's pg_class.
        if db != self.database && db != 0 {
            return None;
        }
        let spc = if self.kind == RelationId::Oid { 0 } else { spc };
        if let Some(n) = self.names.get(&(spc, rel)) {
            return n.clone();
        }
        if self.names.len() >= MAX_NAMES {
            self.names.clear();
        }
        let conn = self.conn.as_mut()?;
        // Integers formatted into the text: nothing from the outside reaches the SQL.
        let oid = match self.kind {
            RelationId::Oid => rel.to_string(),
            RelationId::FileNode => format!("pg_filenode_relation({spc}, {rel})"),
        };
        let sql = format!(
            "select n.nspname, c.relname from pg_class c \
             join pg_namespace n on n.oid = c.relnamespace where c.oid = {oid}"
        );
        let rows = match conn.query(&sql) {
            Ok(rows) => rows,
            Err(e) => {
                eprintln!(
                    "{}: --dsn: relation names stop here, numbers follow: {e:#}",
                    self.tool
                );
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
        self.names.insert((spc, rel), name.clone());
        name
    }
}
