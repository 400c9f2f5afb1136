//! Arbitrary, truncated or garbage input never panics or hangs the framer and decoders.

use pgbpf_pgwire::{Backend, Direction, Framer, Frames, Frontend};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_chunks_and_gaps(chunks in prop::collection::vec((prop::collection::vec(any::<u8>(), 0..300), 0u64..50), 0..12),
                                 from_start: bool, client: bool) {
        let dir = if client { Direction::Frontend } else { Direction::Backend };
        let mut f = Framer::new(dir, from_start).keep_at_most(128);
        let mut out = Frames::default();
        for (bytes, gap) in &chunks {
            f.feed(bytes, &mut out);
            if *gap % 5 == 0 {
                f.feed_gap(*gap, &mut out);
            }
        }
        for m in out.iter() {
            prop_assert!(m.body.len() <= m.len as usize || !m.truncated);
            let _ = if client { Frontend::decode(&m).map(|_| ()) } else { Backend::decode(&m).map(|_| ()) };
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn connections_survive_arbitrary_traffic(events in prop::collection::vec((any::<bool>(), prop::collection::vec(any::<u8>(), 0..200), 0u64..3), 0..20),
                                            from_start: bool) {
        let mut c = pgbpf_pgwire::conn::Connection::new(from_start);
        for (ts, (client, bytes, missing)) in events.iter().enumerate() {
            if *client {
                c.client_bytes(ts as u64, bytes, *missing);
            } else {
                for done in c.server_bytes(ts as u64, bytes, *missing) {
                    prop_assert!(done.finished_ns >= done.started_ns || done.started_ns > 0);
                }
            }
        }
    }
}
