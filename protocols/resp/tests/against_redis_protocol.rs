//! The framer against an independent implementation: random RESP3 values (every type,
//! nested, with attributes) encoded by the `redis-protocol` crate, fed to our framer in
//! random chunks, must frame into exactly those values, element by element, with the wire
//! size redis-protocol's own decoder consumed.

// Helpers of a test binary: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use pgbpf_resp::frame::{Framer, Side, kind};
use proptest::prelude::*;
use redis_protocol::resp3::{
    decode::complete::decode,
    encode::complete::encode,
    types::{OwnedFrame, Resp3Frame as _, VerbatimStringFormat},
};

/// (kind, depth, len, data) of each element, in the order our framer flattens them.
type Flat = Vec<(u8, u8, i64, Vec<u8>)>;

fn flatten(f: &OwnedFrame, depth: u8, out: &mut Flat) {
    use OwnedFrame as F;
    let attributes = match f {
        F::BlobString { attributes, .. }
        | F::SimpleString { attributes, .. }
        | F::SimpleError { attributes, .. }
        | F::Number { attributes, .. }
        | F::Array { attributes, .. } => attributes.as_ref(),
        _ => None,
    };
    if let Some(a) = attributes {
        out.push((kind::ATTRIBUTE, depth, a.len() as i64, vec![]));
        for (k, v) in a {
            flatten(k, depth + 1, out);
            flatten(v, depth + 1, out);
        }
    }
    match f {
        F::BlobString { data, .. } => {
            out.push((kind::BULK, depth, data.len() as i64, data.clone()))
        }
        F::BlobError { data, .. } => {
            out.push((kind::BULK_ERROR, depth, data.len() as i64, data.clone()))
        }
        F::SimpleString { data, .. } => {
            out.push((kind::SIMPLE, depth, data.len() as i64, data.clone()))
        }
        F::SimpleError { data, .. } => out.push((
            kind::ERROR,
            depth,
            data.len() as i64,
            data.clone().into_bytes(),
        )),
        F::Number { data, .. } => {
            let t = data.to_string().into_bytes();
            out.push((kind::INTEGER, depth, t.len() as i64, t))
        }
        F::Boolean { data, .. } => out.push((
            kind::BOOLEAN,
            depth,
            1,
            if *data { b"t" } else { b"f" }.to_vec(),
        )),
        F::Null => out.push((kind::NULL, depth, 0, vec![])),
        F::BigNumber { data, .. } => {
            out.push((kind::BIG_NUMBER, depth, data.len() as i64, data.clone()))
        }
        F::VerbatimString { data, .. } => {
            let mut d = b"txt:".to_vec();
            d.extend(data);
            out.push((kind::VERBATIM, depth, d.len() as i64, d))
        }
        F::Array { data, .. } | F::Push { data, .. } => {
            let k = if matches!(f, F::Push { .. }) {
                kind::PUSH
            } else {
                kind::ARRAY
            };
            out.push((k, depth, data.len() as i64, vec![]));
            for e in data {
                flatten(e, depth + 1, out);
            }
        }
        F::Map { data, .. } => {
            out.push((kind::MAP, depth, data.len() as i64, vec![]));
            for (k, v) in data {
                flatten(k, depth + 1, out);
                flatten(v, depth + 1, out);
            }
        }
        F::Set { data, .. } => {
            out.push((kind::SET, depth, data.len() as i64, vec![]));
            for e in data {
                flatten(e, depth + 1, out);
            }
        }
        other => panic!("not generated: {other:?}"),
    }
}

fn leaf() -> impl Strategy<Value = OwnedFrame> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|data| OwnedFrame::BlobString {
            data,
            attributes: None
        }),
        "[A-Za-z0-9 ]{0,20}".prop_map(|s| OwnedFrame::SimpleString {
            data: s.into_bytes(),
            attributes: None
        }),
        "[A-Z]{2,9} [a-z ]{0,20}".prop_map(|s| OwnedFrame::SimpleError {
            data: s,
            attributes: None
        }),
        "[A-Z]{2,9} [a-z]{0,9}".prop_map(|s| OwnedFrame::BlobError {
            data: s.into_bytes(),
            attributes: None
        }),
        any::<i64>().prop_map(|data| OwnedFrame::Number {
            data,
            attributes: None
        }),
        any::<bool>().prop_map(|data| OwnedFrame::Boolean {
            data,
            attributes: None
        }),
        Just(OwnedFrame::Null),
        "-?[1-9][0-9]{20,40}".prop_map(|s| OwnedFrame::BigNumber {
            data: s.into_bytes(),
            attributes: None
        }),
        "[ -~]{0,30}".prop_map(|s| OwnedFrame::VerbatimString {
            data: s.into_bytes(),
            format: VerbatimStringFormat::Text,
            attributes: None
        }),
    ]
}

fn blob_key() -> impl Strategy<Value = OwnedFrame> {
    "[a-z]{1,8}".prop_map(|s| OwnedFrame::BlobString {
        data: s.into_bytes(),
        attributes: None,
    })
}

fn value() -> impl Strategy<Value = OwnedFrame> {
    leaf().prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(|data| OwnedFrame::Array {
                data,
                attributes: None
            }),
            proptest::collection::vec((blob_key(), inner.clone()), 0..4).prop_map(|pairs| {
                OwnedFrame::Map {
                    data: pairs.into_iter().collect(),
                    attributes: None,
                }
            }),
            proptest::collection::hash_set(blob_key(), 0..4).prop_map(|data| OwnedFrame::Set {
                data: data.into_iter().collect(),
                attributes: None,
            }),
            (
                proptest::collection::vec((blob_key(), blob_key()), 1..3),
                inner.clone()
            )
                .prop_map(|(pairs, v)| match v {
                    // An attribute before a value.
                    OwnedFrame::Number { data, .. } => OwnedFrame::Number {
                        data,
                        attributes: Some(pairs.into_iter().collect()),
                    },
                    OwnedFrame::Array { data, .. } => OwnedFrame::Array {
                        data,
                        attributes: Some(pairs.into_iter().collect()),
                    },
                    other => other,
                }),
        ]
    })
}

fn encoded(f: &OwnedFrame) -> Vec<u8> {
    let mut buf = vec![0u8; f.encode_len(false)];
    let n = encode(&mut buf, f, false).unwrap();
    buf.truncate(n);
    buf
}

/// Our flattening of the frames in `bytes`, fed in pieces cut at `cuts`.
fn ours(bytes: &[u8], cuts: &[usize]) -> (Vec<Flat>, Vec<u64>, Framer) {
    let mut fr = Framer::new(Side::Reply, true, 1 << 20);
    let mut at = 0;
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.sort_unstable();
    points.push(bytes.len());
    let (mut flats, mut wires) = (vec![], vec![]);
    for (i, p) in points.into_iter().enumerate() {
        fr.feed(&bytes[at..p.max(at)], i as u64);
        at = p.max(at);
        for f in fr.frames() {
            wires.push(f.wire);
            flats.push(
                (0..f.len())
                    .map(|i| {
                        let e = f.element(i);
                        (e.kind, e.depth, e.len, e.data.to_vec())
                    })
                    .collect(),
            );
        }
        fr.consume();
    }
    (flats, wires, fr)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn frames_what_redis_protocol_encodes(
        values in proptest::collection::vec(value(), 1..5),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let mut bytes = vec![];
        let mut want = vec![];
        let mut sizes = vec![];
        for v in &values {
            let b = encoded(v);
            // Their decoder agrees on where the value ends.
            let (back, n) = decode(&b).unwrap().unwrap();
            prop_assert_eq!(n, b.len());
            prop_assert_eq!(&back, v);
            sizes.push(b.len() as u64);
            bytes.extend(b);
            let mut flat = vec![];
            flatten(v, 0, &mut flat);
            want.push(flat);
        }
        let (got, wires, fr) = ours(&bytes, &cuts);
        prop_assert_eq!(got, want);
        prop_assert_eq!(wires, sizes);
        prop_assert_eq!(fr.malformed, 0);
        prop_assert!(fr.at_boundary());
    }

    /// Bytes lost anywhere (a gap instead of them): the values wholly before the gap are
    /// framed exactly, nothing panics whatever follows, and a write that the connection
    /// knows to start a value (an idle point) frames again.
    #[test]
    fn gaps_anywhere_keep_what_came_before(
        values in proptest::collection::vec(value(), 2..6),
        from in any::<usize>(),
        len in 1usize..64,
    ) {
        let encoded_values: Vec<Vec<u8>> = values.iter().map(encoded).collect();
        let bytes: Vec<u8> = encoded_values.concat();
        let from = from % bytes.len();
        let to = (from + len).min(bytes.len());
        let mut fr = Framer::new(Side::Reply, true, 1 << 20);
        fr.feed(&bytes[..from], 1);
        let mut before = 0;
        let mut end = 0;
        for b in &encoded_values {
            end += b.len();
            if end <= from {
                before += 1;
            }
        }
        prop_assert_eq!(fr.frames().len(), before);
        fr.consume();
        fr.feed_gap((to - from) as u64);
        fr.feed(&bytes[to..], 2);
        fr.consume();
        fr.sync_at_next_record();
        fr.feed(b"+PONG\r\n", 3);
        prop_assert_eq!(fr.frames().len(), 1);
    }
}
