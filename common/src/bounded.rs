//! Tables keyed by statement, bounded. A run can meet any number of distinct statements
//! (generated SQL, IN lists of every length, identifiers that change), each costing its text
//! and its figures: without a bound a tool's memory grows with them. When a table reaches
//! [`MAX_ROWS`], the heaviest half is kept and the rest is folded into one
//! [`OTHER_STATEMENTS`] row, so the totals stay exact and memory stays bounded; a statement
//! seen again after being folded starts a row of its own.

use std::{
    cmp::Reverse,
    collections::HashMap,
    hash::{BuildHasher, Hash},
};

/// Rows a statement table holds at most (about 1-2 KiB each with its text and histogram).
pub const MAX_ROWS: usize = 1000;
/// The row of the statements folded away.
pub const OTHER_STATEMENTS: &str = "[other statements]";

/// The statement a folded row goes under: [`OTHER_STATEMENTS`], or its own for the tools'
/// labels (`[connection]`, `[no statement: checkpointer]`, `[statement not read]`), which
/// are few and mean something of their own.
pub fn folded(statement: &str) -> String {
    if statement.starts_with('[') {
        statement.to_string()
    } else {
        OTHER_STATEMENTS.to_string()
    }
}

/// A table row's figures, as far as bounding needs them.
pub trait Fold: Default {
    /// Adds another row's figures to these.
    fn fold(&mut self, other: &Self);
    /// How heavy the row is: the heaviest are kept (total time, bytes).
    fn weight(&self) -> u64;
}

impl Fold for crate::latency::WaitTimes {
    fn fold(&mut self, other: &Self) {
        self.merge(other);
    }

    fn weight(&self) -> u64 {
        self.total_ns
    }
}

impl Fold for crate::latency::Latencies {
    fn fold(&mut self, other: &Self) {
        self.merge(other);
    }

    fn weight(&self) -> u64 {
        self.total_ns
    }
}

/// The row of `key` in `map`, made if new; a full map first keeps its heaviest half and
/// folds each other row into the row of the key `other` makes of it (the same key with its
/// statement replaced by [`OTHER_STATEMENTS`]).
pub fn row<K: Eq + Hash, V: Fold, S: BuildHasher>(
    map: &mut HashMap<K, V, S>,
    key: K,
    other: impl Fn(&K) -> K,
) -> &mut V {
    if map.len() >= MAX_ROWS && !map.contains_key(&key) {
        make_room(map, &other);
    }
    map.entry(key).or_default()
}

/// Keeps the heaviest `MAX_ROWS / 2` rows of `map` and folds the rest into their `other`
/// rows.
fn make_room<K: Eq + Hash, V: Fold, S: BuildHasher>(
    map: &mut HashMap<K, V, S>,
    other: &impl Fn(&K) -> K,
) {
    let mut rows: Vec<(K, V)> = map.drain().collect();
    rows.sort_by_key(|(_, v)| Reverse(v.weight()));
    let gone = rows.split_off(rows.len().min(MAX_ROWS / 2));
    map.extend(rows);
    for (k, v) in gone {
        map.entry(other(&k)).or_default().fold(&v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default, Debug, PartialEq)]
    struct Calls(u64);

    impl Fold for Calls {
        fn fold(&mut self, other: &Self) {
            self.0 += other.0;
        }

        fn weight(&self) -> u64 {
            self.0
        }
    }

    #[test]
    fn a_full_table_keeps_its_heaviest_half_and_loses_no_call() {
        let mut map: HashMap<String, Calls> = HashMap::new();
        let other = |k: &String| folded(k);
        row(&mut map, "[connection]".to_string(), other).0 += 1;
        // Statement i is called i times; then 10 times as many distinct ones, once each.
        for i in 1..=MAX_ROWS as u64 {
            row(&mut map, format!("s{i}"), other).0 += i;
        }
        for i in 0..10 * MAX_ROWS {
            row(&mut map, format!("once{i}"), other).0 += 1;
        }
        assert!(map.len() <= MAX_ROWS + 1, "{} rows", map.len());
        let total: u64 = map.values().map(|c| c.0).sum();
        let expected = (MAX_ROWS as u64 * (MAX_ROWS as u64 + 1)) / 2 + 10 * MAX_ROWS as u64 + 1;
        assert_eq!(total, expected, "every call is in a row");
        // The heaviest statements kept their rows.
        for i in (MAX_ROWS as u64 - 100)..=MAX_ROWS as u64 {
            assert_eq!(map.get(&format!("s{i}")), Some(&Calls(i)), "s{i}");
        }
        assert!(map[OTHER_STATEMENTS].0 > 0);
        // A label keeps its row, light as it is.
        assert_eq!(map.get("[connection]"), Some(&Calls(1)));
    }
}
