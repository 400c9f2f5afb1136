//! Arbitrary, truncated or garbage input never panics or hangs the framer and decoders.

use pgbpf_pgwire::{Backend, Direction, Framer, Frontend};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_chunks_and_gaps(chunks in prop::collection::vec((prop::collection::vec(any::<u8>(), 0..300), 0u64..50), 0..12),
                                 from_start: bool, client: bool) {
        let dir = if client { Direction::Frontend } else { Direction::Backend };
        let mut f = Framer::new(dir, from_start).keep_at_most(128);
        let mut out = vec![];
        for (bytes, gap) in &chunks {
            f.feed(bytes, &mut out);
            if *gap % 5 == 0 {
                f.feed_gap(*gap, &mut out);
            }
        }
        for m in &out {
            prop_assert!(m.body.len() <= m.len as usize || !m.truncated);
            let _ = if client { Frontend::decode(m).map(|_| ()) } else { Backend::decode(m).map(|_| ()) };
        }
    }
}
