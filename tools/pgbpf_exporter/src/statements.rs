//! Latency histograms per normalized statement and placement, with a bounded number of
//! series: Prometheus' cost grows with every label value, and a workload can have millions
//! of distinct statements.
//!
//! The first N statements seen get series of their own; later ones are counted in their
//! placement's `statement="other"` series and remembered as candidates with the time they
//! took. A series without a call for the idle time is retired (it goes stale in Prometheus)
//! and its place goes to the candidate with the most total time. Every series only grows,
//! so `rate()` and `increase()` stay right: nothing moves between series.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use pgbpf_common::cgroup::Placement;

use crate::families::Histogram;

/// What a series is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub statement: String,
    pub placement: Placement,
}

struct Series {
    histogram: Histogram,
    last_call: Instant,
}

/// The statement label of the series that counts what has no series of its own.
pub const OTHER: &str = "other";

pub struct StatementTable {
    capacity: usize,
    idle: Duration,
    series: HashMap<Key, Series>,
    /// Per placement: the statements without a series of their own.
    other: HashMap<Placement, Histogram>,
    /// Statements waiting for a place, with the nanoseconds they took meanwhile.
    candidates: HashMap<Key, u64>,
    /// Series retired for idleness since start.
    pub retired: u64,
}

impl StatementTable {
    pub fn new(capacity: usize, idle: Duration) -> StatementTable {
        StatementTable {
            capacity: capacity.max(1),
            idle,
            series: HashMap::new(),
            other: HashMap::new(),
            candidates: HashMap::new(),
            retired: 0,
        }
    }

    /// One finished statement.
    pub fn record(&mut self, key: Key, ns: u64, now: Instant) {
        if let Some(s) = self.series.get_mut(&key) {
            s.histogram.observe_ns(ns);
            s.last_call = now;
            return;
        }
        if self.series.len() < self.capacity {
            let mut histogram = Histogram::default();
            histogram.observe_ns(ns);
            self.candidates.remove(&key);
            self.series.insert(
                key,
                Series {
                    histogram,
                    last_call: now,
                },
            );
            return;
        }
        self.other
            .entry(key.placement.clone())
            .or_default()
            .observe_ns(ns);
        // Candidates are bounded too: beyond four times the places, new ones are not
        // remembered (their time still counts in "other").
        let bound = self.capacity.saturating_mul(4);
        if let Some(total) = self.candidates.get_mut(&key) {
            *total += ns;
        } else if self.candidates.len() < bound {
            self.candidates.insert(key, ns);
        }
    }

    /// Retires series idle for longer than the idle time and gives their places to the
    /// candidates that took the most time.
    pub fn retire_idle(&mut self, now: Instant) {
        let before = self.series.len();
        let idle = self.idle;
        self.series
            .retain(|_, s| now.saturating_duration_since(s.last_call) <= idle);
        self.retired += (before - self.series.len()) as u64;
        let free = self.capacity - self.series.len();
        if free == 0 || self.candidates.is_empty() {
            return;
        }
        let mut waiting: Vec<(Key, u64)> = self.candidates.drain().collect();
        waiting.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let rest = waiting.split_off(free.min(waiting.len()));
        for (key, _) in waiting {
            // A new series starts empty: what the statement took while waiting stays in
            // "other", where it was counted.
            self.series.insert(
                key,
                Series {
                    histogram: Histogram::default(),
                    last_call: now,
                },
            );
        }
        self.candidates.extend(rest);
    }

    /// Every series: its statement and placement, and its histogram; "other" last.
    pub fn each(&self) -> impl Iterator<Item = (&str, &Placement, &Histogram)> {
        let own = self
            .series
            .iter()
            .map(|(k, s)| (k.statement.as_str(), &k.placement, &s.histogram));
        let other = self.other.iter().map(|(p, h)| (OTHER, p, h));
        own.chain(other)
    }

    /// Statements with series of their own now.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Key {
        Key {
            statement: s.into(),
            placement: Placement::default(),
        }
    }

    fn total(t: &StatementTable) -> u64 {
        t.each().map(|(_, _, h)| h.count).sum()
    }

    #[test]
    fn beyond_the_places_statements_count_as_other_and_nothing_is_lost() {
        let now = Instant::now();
        let mut t = StatementTable::new(2, Duration::from_secs(600));
        for (s, n) in [("a", 3), ("b", 2), ("c", 5), ("d", 1)] {
            for _ in 0..n {
                t.record(key(s), 1_000, now);
            }
        }
        assert_eq!(t.len(), 2);
        assert_eq!(total(&t), 11);
        let other = t.each().find(|(s, ..)| *s == OTHER).unwrap().2.count;
        assert_eq!(other, 6);
    }

    #[test]
    fn an_idle_series_gives_its_place_to_the_busiest_candidate_and_counts_only_grow() {
        let start = Instant::now();
        let mut t = StatementTable::new(1, Duration::from_secs(60));
        t.record(key("old"), 1_000, start);
        t.record(key("small"), 1_000, start);
        t.record(key("big"), 9_000, start);
        let other_before = t.each().find(|(s, ..)| *s == OTHER).unwrap().2.count;
        t.retire_idle(start + Duration::from_secs(30));
        assert_eq!(t.len(), 1, "nothing idle yet");
        t.retire_idle(start + Duration::from_secs(61));
        assert_eq!(t.retired, 1);
        let names: Vec<&str> = t.each().map(|(s, ..)| s).collect();
        assert!(
            names.contains(&"big") && !names.contains(&"old"),
            "{names:?}"
        );
        let other_after = t.each().find(|(s, ..)| *s == OTHER).unwrap().2.count;
        assert_eq!(other_after, other_before, "other never shrinks");
        t.record(key("big"), 1_000, start + Duration::from_secs(62));
        let big = t.each().find(|(s, ..)| *s == "big").unwrap().2.count;
        assert_eq!(big, 1, "a promoted series starts from its promotion");
    }
}
