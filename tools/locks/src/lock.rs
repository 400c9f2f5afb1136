//! A LOCKTAG (PostgreSQL's lock identity: a type and four fields) and a LOCKMODE, named as
//! pg_locks names them.

use locks_ebpf::LockEvent;

/// pg_locks' `locktype` of each LockTagType (src/include/storage/lock.h, PostgreSQL 12-17).
const TYPES: [&str; 11] = [
    "relation",
    "extend",
    "frozenid",
    "page",
    "tuple",
    "transactionid",
    "virtualxid",
    "spectoken",
    "object",
    "userlock",
    "advisory",
];

/// Lock modes 1..=8 as pg_locks' `mode` names them.
const MODES: [&str; 8] = [
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
];

pub fn type_name(t: u8) -> &'static str {
    TYPES.get(usize::from(t)).copied().unwrap_or("unknown")
}

pub fn mode_name(mode: u32) -> &'static str {
    (mode as usize)
        .checked_sub(1)
        .and_then(|i| MODES.get(i))
        .copied()
        .unwrap_or("unknown")
}

/// The database and relation a lock is on, for the lock types that have them.
pub fn relation(e: &LockEvent) -> Option<(u32, u32)> {
    matches!(
        type_name(e.locktag_type),
        "relation" | "extend" | "page" | "tuple"
    )
    .then_some((e.field1, e.field2))
}

/// The locked object in full: "relation 5/16397", "tuple (0,1) of relation 5/16397",
/// "transaction 1234", "advisory 5:1:42", ...; a relation by `name` when it is given
/// ("tuple (0,1) of relation pgbench_tellers").
pub fn describe(e: &LockEvent, name: Option<&str>) -> String {
    let (f1, f2, f3, f4) = (e.field1, e.field2, e.field3, e.field4);
    let rel = name.map_or_else(|| format!("{f1}/{f2}"), str::to_string);
    match type_name(e.locktag_type) {
        "relation" => format!("relation {rel}"),
        "extend" => format!("extension of relation {rel}"),
        "frozenid" => format!("frozen ids of database {f1}"),
        "page" => format!("page {f3} of relation {rel}"),
        "tuple" => format!("tuple ({f3},{f4}) of relation {rel}"),
        "transactionid" => format!("transaction {f1}"),
        "virtualxid" => format!("virtual transaction {f1}/{f2}"),
        "spectoken" => format!("speculative token {f1}:{f2}"),
        "object" => format!("object {f2}:{f3}:{f4} of database {f1}"),
        "advisory" => format!("advisory {f1}:{f2}:{f3}:{f4}"),
        other => format!("{other} {f1} {f2} {f3} {f4}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(t: u8, fields: [u32; 4]) -> LockEvent {
        // SAFETY: plain data; all zeroes is a valid event.
        let mut e: LockEvent = unsafe { std::mem::zeroed() };
        e.locktag_type = t;
        [e.field1, e.field2, e.field3, e.field4] = fields;
        e
    }

    #[test]
    fn locks_read_as_pg_locks_names_them() {
        assert_eq!(
            describe(&event(5, [1234, 0, 0, 0]), None),
            "transaction 1234"
        );
        let tuple = event(4, [5, 16397, 0, 1]);
        assert_eq!(describe(&tuple, None), "tuple (0,1) of relation 5/16397");
        assert_eq!(
            describe(&tuple, Some("pgbench_tellers")),
            "tuple (0,1) of relation pgbench_tellers"
        );
        assert_eq!(relation(&tuple), Some((5, 16397)));
        assert_eq!(relation(&event(5, [1234, 0, 0, 0])), None);
        assert_eq!(type_name(10), "advisory");
        assert_eq!(type_name(42), "unknown");
        assert_eq!(mode_name(5), "ShareLock");
        assert_eq!(mode_name(8), "AccessExclusiveLock");
        assert_eq!((mode_name(0), mode_name(9)), ("unknown", "unknown"));
    }
}
