//! Metric families as one scrape builds them from the collectors' state, encoded in the
//! Prometheus text format by `prometheus-client` (names, escaping, cumulative buckets).
//!
//! The collectors keep their own state (kernel maps, per-statement tables) rather than
//! `prometheus-client`'s atomic metrics: most of it is read from the kernel at scrape time,
//! and series come and go with processes and containers.

use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// Label names and values of one series.
pub type Labels = Vec<(&'static str, String)>;

/// Upper bounds (seconds) of the latency histograms' buckets: 50 µs to 10 s, about three per
/// decade, as Prometheus' defaults but reaching down to an index lookup.
pub const SECONDS_BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

/// A latency histogram over [`SECONDS_BUCKETS`] (and +Inf), fed in nanoseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one is +Inf.
    pub counts: [u64; SECONDS_BUCKETS.len() + 1],
    pub sum_ns: u64,
    pub count: u64,
}

impl Histogram {
    pub fn observe_ns(&mut self, ns: u64) {
        let seconds = ns as f64 / 1e9;
        let slot = SECONDS_BUCKETS
            .iter()
            .position(|&le| seconds <= le)
            .unwrap_or(SECONDS_BUCKETS.len());
        self.counts[slot] += 1;
        self.sum_ns += ns;
        self.count += 1;
    }

    pub fn add(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum_ns += other.sum_ns;
        self.count += other.count;
    }
}

enum Value {
    Number(f64),
    Histogram(Histogram),
}

/// One metric: its name (counters without `_total`: the encoder appends it), help, type and
/// series.
pub struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    series: Vec<(Labels, Value)>,
}

impl Family {
    /// Adds a counter's or gauge's series.
    pub fn set(&mut self, labels: Labels, value: f64) {
        self.series.push((labels, Value::Number(value)));
    }

    pub fn histogram(&mut self, labels: Labels, h: &Histogram) {
        self.series.push((labels, Value::Histogram(h.clone())));
    }
}

/// The families of one scrape, in the order they were opened.
#[derive(Default)]
pub struct Families {
    families: Vec<Family>,
}

impl Families {
    pub fn counter(&mut self, name: &'static str, help: &'static str) -> &mut Family {
        self.open(name, help, MetricType::Counter)
    }

    pub fn gauge(&mut self, name: &'static str, help: &'static str) -> &mut Family {
        self.open(name, help, MetricType::Gauge)
    }

    pub fn histogram(&mut self, name: &'static str, help: &'static str) -> &mut Family {
        self.open(name, help, MetricType::Histogram)
    }

    /// The family `name`, opened once: collectors may add to it at several places.
    fn open(&mut self, name: &'static str, help: &'static str, kind: MetricType) -> &mut Family {
        let at = match self.families.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                self.families.push(Family {
                    name,
                    help,
                    kind,
                    series: vec![],
                });
                self.families.len() - 1
            }
        };
        &mut self.families[at]
    }

    /// Writes every family with at least one series.
    pub fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in self.families.iter().filter(|f| !f.series.is_empty()) {
            let mut metric =
                encoder.encode_descriptor(family.name, family.help, None, family.kind)?;
            for (labels, value) in &family.series {
                let mut series = metric.encode_family(labels)?;
                match value {
                    Value::Number(v) if matches!(family.kind, MetricType::Counter) => {
                        series.encode_counter::<NoLabelSet, f64, f64>(v, None)?;
                    }
                    Value::Number(v) => series.encode_gauge(v)?,
                    Value::Histogram(h) => {
                        let mut buckets: Vec<(f64, u64)> =
                            SECONDS_BUCKETS.iter().copied().zip(h.counts).collect();
                        buckets.push((f64::INFINITY, h.counts[SECONDS_BUCKETS.len()]));
                        series.encode_histogram::<NoLabelSet>(
                            h.sum_ns as f64 / 1e9,
                            h.count,
                            &buckets,
                            None,
                        )?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Checks that the text format is what Prometheus reads, without a server.
#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;

    fn text(build: fn(&mut Families)) -> String {
        #[derive(Debug)]
        struct Build(fn(&mut Families));
        impl prometheus_client::collector::Collector for Build {
            fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
                let mut f = Families::default();
                (self.0)(&mut f);
                f.encode(encoder)
            }
        }
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Build(build)));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn histograms_are_cumulative_and_counters_end_in_total() {
        let out = text(|f| {
            let mut h = Histogram::default();
            h.observe_ns(30_000); // 30 µs: the first bucket
            h.observe_ns(2_000_000); // 2 ms: le 0.0025
            h.observe_ns(20_000_000_000); // 20 s: +Inf only
            f.histogram("pgbpf_statement_duration_seconds", "Statement latency.")
                .histogram(vec![("statement", "select \"x\"\n".into())], &h);
            f.counter("pgbpf_lost_events", "Lost.")
                .set(vec![("collector", "q".into())], 3.0);
            f.gauge("pgbpf_empty", "Never shown.");
        });
        assert!(
            out.contains("# TYPE pgbpf_statement_duration_seconds histogram"),
            "{out}"
        );
        let bucket = "pgbpf_statement_duration_seconds_bucket{statement=\"select \\\"x\\\"\\n\"";
        assert!(out.contains(&format!("{bucket},le=\"5e-05\"}} 1")), "{out}");
        assert!(out.contains(",le=\"0.0025\"} 2"), "{out}");
        assert!(out.contains(",le=\"10\"} 2"), "{out}");
        assert!(out.contains(",le=\"+Inf\"} 3"), "{out}");
        assert!(
            out.contains(
                "pgbpf_statement_duration_seconds_count{statement=\"select \\\"x\\\"\\n\"} 3"
            ),
            "{out}"
        );
        assert!(
            out.contains("pgbpf_lost_events_total{collector=\"q\"} 3.0"),
            "{out}"
        );
        assert!(!out.contains("pgbpf_empty"), "{out}");
    }

    #[test]
    fn a_bucket_bound_holds_what_equals_it() {
        let mut h = Histogram::default();
        h.observe_ns(1_000_000);
        assert_eq!(h.counts[4], 1, "1 ms is in le=0.001");
        let mut sum = Histogram::default();
        sum.add(&h);
        sum.add(&h);
        assert_eq!((sum.count, sum.sum_ns, sum.counts[4]), (2, 2_000_000, 2));
    }
}
