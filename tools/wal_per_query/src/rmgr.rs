//! PostgreSQL's WAL resource managers by id (src/include/access/rmgrlist.h, the same ids from
//! 9.6 to 15 for those that exist in each; 128 to 255 are extensions' custom ones).

const BUILTIN: [&str; 22] = [
    "XLOG",
    "Transaction",
    "Storage",
    "CLOG",
    "Database",
    "Tablespace",
    "MultiXact",
    "RelMap",
    "Standby",
    "Heap2",
    "Heap",
    "Btree",
    "Hash",
    "Gin",
    "Gist",
    "Sequence",
    "SPGist",
    "BRIN",
    "CommitTs",
    "ReplicationOrigin",
    "Generic",
    "LogicalMessage",
];

/// The name of the resource manager counted in slot `slot` (the last slot: every id past
/// the built-in ones).
pub fn name(slot: usize) -> &'static str {
    BUILTIN.get(slot).copied().unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_rmgrlist_h_s() {
        assert_eq!(name(0), "XLOG");
        assert_eq!(name(1), "Transaction");
        assert_eq!(name(10), "Heap");
        assert_eq!(name(11), "Btree");
        assert_eq!(name(21), "LogicalMessage");
        assert_eq!(name(23), "other");
    }
}
