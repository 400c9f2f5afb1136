//! The framer's one-pass path for whole commands against its element-by-element path: the
//! same commands fed whole (one pass) and one byte at a time (every state) give the same
//! elements, sizes and secrets, whatever the arguments hold.

// Helpers of a test binary: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use pgbpf_resp::frame::{Framer, Side};
use proptest::prelude::*;

/// Everything a framed value tells, flattened.
type Flat = (Vec<(u8, u8, Vec<u8>, i64, bool, u64)>, u64, bool);

fn frame_all(bytes: &[u8], chunk: usize, keep: usize) -> (Vec<Flat>, Vec<(usize, usize)>) {
    let mut f = Framer::new(Side::Request, true, keep);
    let mut frames = vec![];
    let mut secrets = vec![];
    for (i, piece) in bytes.chunks(chunk).enumerate() {
        f.feed(piece, 7);
        for &(a, b) in f.secrets() {
            let (a, b) = (a + i * chunk, b + i * chunk);
            // Ranges that touch are one secret, however the bytes came.
            match secrets.last_mut() {
                Some((_, end)) if *end == a => *end = b,
                _ => secrets.push((a, b)),
            }
        }
        for fr in f.frames() {
            let elems = (0..fr.len())
                .map(|i| {
                    let e = fr.element(i);
                    (e.kind, e.depth, e.data.to_vec(), e.len, e.truncated, e.wire)
                })
                .collect();
            frames.push((elems, fr.wire, fr.inline));
        }
        f.consume();
    }
    (frames, secrets)
}

fn command(words: &[Vec<u8>]) -> Vec<u8> {
    let mut b = format!("*{}\r\n", words.len()).into_bytes();
    for w in words {
        b.extend(format!("${}\r\n", w.len()).bytes());
        b.extend(w);
        b.extend(b"\r\n");
    }
    b
}

fn word() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"SET".to_vec()),
        Just(b"get".to_vec()),
        Just(b"AUTH".to_vec()),
        Just(b"config".to_vec()),
        Just(b"\r\n".to_vec()),
        prop::collection::vec(any::<u8>(), 0..40),
        prop::collection::vec(any::<u8>(), 250..300),
    ]
}

proptest! {
    #[test]
    fn whole_commands_frame_as_byte_by_byte(
        commands in prop::collection::vec(prop::collection::vec(word(), 1..6), 1..6),
        inline in any::<bool>(),
    ) {
        let mut bytes = vec![];
        for (i, c) in commands.iter().enumerate() {
            if inline && i == 1 {
                bytes.extend(b"PING\r\n");
            }
            bytes.extend(command(c));
        }
        let whole = frame_all(&bytes, bytes.len(), 256);
        let by_byte = frame_all(&bytes, 1, 256);
        prop_assert_eq!(&whole, &by_byte);
        prop_assert!(whole.0.len() >= commands.len());
    }
}
