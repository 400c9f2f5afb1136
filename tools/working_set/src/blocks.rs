//! The kernel's tables read at each report (hits and reads per block, and per relation fork
//! what the block table does not say, summed since attach) and turned into a period's
//! figures: for an interval, the differences from the previous interval's reading, kept only
//! when intervals are printed; the blocks bucketed by how many times each was accessed; a
//! relation's accesses, its blocks' added to its own.

use std::collections::HashMap;

use aya::maps::{HashMap as BpfHashMap, MapData};
use pgbpf_common::{loader::Loaded, records::Scope};
use working_set_ebpf::{Accesses, Block, BlockAccesses, RelFork};

/// The ranges of access counts (fewest, most; None: open), every count ≥ 1 in exactly one.
pub const BUCKETS: [(u64, Option<u64>); 5] = [
    (1, Some(1)),
    (2, Some(4)),
    (5, Some(49)),
    (50, Some(599)),
    (600, None),
];

/// The bucket of a block accessed `accesses` (≥ 1) times.
pub fn bucket_of(accesses: u64) -> usize {
    BUCKETS
        .iter()
        .rposition(|(min, _)| accesses >= *min)
        .unwrap_or(0)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    pub blocks: u64,
    pub accesses: u64,
}

/// One relation fork's figures in a period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelationFigures {
    pub accesses: Accesses,
    /// Distinct blocks accessed.
    pub blocks: u64,
}

/// A period's figures.
#[derive(Debug, Default)]
pub struct Figures {
    pub buckets: [Bucket; BUCKETS.len()],
    pub relations: HashMap<RelFork, RelationFigures>,
}

impl Figures {
    /// Distinct blocks accessed.
    pub fn blocks(&self) -> u64 {
        self.buckets.iter().map(|b| b.blocks).sum()
    }

    /// A block's accesses in the period (none: not accessed in it), counted `scale` times
    /// (the sampling period).
    fn add_block(&mut self, block: &Block, a: BlockAccesses, scale: u64) {
        let a = BlockAccesses {
            hits: a.hits * scale,
            reads: a.reads * scale,
        };
        let n = a.hits + a.reads;
        if n == 0 {
            return;
        }
        let b = &mut self.buckets[bucket_of(n)];
        b.blocks += 1;
        b.accesses += n;
        let r = self.relations.entry(block.rel).or_default();
        r.blocks += 1;
        r.accesses.hits += a.hits;
        r.accesses.reads += a.reads;
    }

    /// A relation's accesses the block table does not hold, and its extends and local ones.
    fn add_relation(&mut self, rel: &RelFork, a: Accesses, scale: u64) {
        if a == Accesses::default() {
            return;
        }
        let r = &mut self.relations.entry(*rel).or_default().accesses;
        r.hits += a.hits * scale;
        r.reads += a.reads * scale;
        r.extends += a.extends * scale;
        r.local += a.local * scale;
    }
}

/// `now - before`, field by field.
fn since(now: &Accesses, before: &Accesses) -> Accesses {
    Accesses {
        hits: now.hits.saturating_sub(before.hits),
        reads: now.reads.saturating_sub(before.reads),
        extends: now.extends.saturating_sub(before.extends),
        local: now.local.saturating_sub(before.local),
    }
}

/// `now - before` of a block.
fn block_since(now: &BlockAccesses, before: Option<&BlockAccesses>) -> BlockAccesses {
    let before = before.copied().unwrap_or_default();
    BlockAccesses {
        hits: now.hits.saturating_sub(before.hits),
        reads: now.reads.saturating_sub(before.reads),
    }
}

/// A reading of both tables.
#[derive(Debug, Default)]
struct Reading {
    blocks: HashMap<Block, BlockAccesses>,
    relations: HashMap<RelFork, Accesses>,
}

pub struct Tables {
    blocks: BpfHashMap<MapData, Block, BlockAccesses>,
    relations: BpfHashMap<MapData, RelFork, Accesses>,
    /// The reading at the previous interval report: Some when intervals are printed.
    previous: Option<Reading>,
    /// The sampling period: each access counted stands for this many.
    scale: u64,
}

impl Tables {
    /// Takes the kernel's tables; `intervals`: whether interval reports will be asked for;
    /// `sample`: one access in this many is counted.
    pub fn take(loaded: &mut Loaded, intervals: bool, sample: u32) -> anyhow::Result<Tables> {
        Ok(Tables {
            blocks: BpfHashMap::try_from(loaded.take_map("BLOCKS")?)?,
            relations: BpfHashMap::try_from(loaded.take_map("RELATIONS")?)?,
            previous: intervals.then(Reading::default),
            scale: u64::from(sample.max(1)),
        })
    }

    /// The figures of the interval that ended, or of the whole run.
    pub fn figures(&mut self, scope: Scope) -> Figures {
        // The kernel only adds entries and to them, so a walk concurrent with the probes
        // sees every entry once.
        let blocks = self.blocks.iter().flatten();
        let relations = self.relations.iter().flatten();
        match (scope, self.previous.as_mut()) {
            (Scope::Interval, Some(previous)) => {
                let (figures, now) = interval(blocks, relations, previous, self.scale);
                *previous = now;
                figures
            }
            _ => total(blocks, relations, self.scale),
        }
    }
}

/// The figures since attach, from the tables as they stand.
fn total(
    blocks: impl Iterator<Item = (Block, BlockAccesses)>,
    relations: impl Iterator<Item = (RelFork, Accesses)>,
    scale: u64,
) -> Figures {
    let mut f = Figures::default();
    for (block, a) in blocks {
        f.add_block(&block, a, scale);
    }
    for (rel, a) in relations {
        f.add_relation(&rel, a, scale);
    }
    f
}

/// The figures since `previous`, and the reading to keep for the next interval.
fn interval(
    blocks: impl Iterator<Item = (Block, BlockAccesses)>,
    relations: impl Iterator<Item = (RelFork, Accesses)>,
    previous: &Reading,
    scale: u64,
) -> (Figures, Reading) {
    let mut f = Figures::default();
    let mut now = Reading::default();
    for (block, a) in blocks {
        f.add_block(&block, block_since(&a, previous.blocks.get(&block)), scale);
        now.blocks.insert(block, a);
    }
    for (rel, a) in relations {
        let before = previous.relations.get(&rel).copied().unwrap_or_default();
        f.add_relation(&rel, since(&a, &before), scale);
        now.relations.insert(rel, a);
    }
    (f, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(rel: u32, block: u32) -> Block {
        Block {
            rel: RelFork {
                spc: 1663,
                db: 5,
                rel,
                fork: 0,
            },
            block,
        }
    }

    #[test]
    fn every_count_is_in_exactly_one_bucket_and_the_edges_are_postgres_bccs_gaps() {
        for n in 1..5_000u64 {
            let inside: Vec<usize> = (0..BUCKETS.len())
                .filter(|&i| n >= BUCKETS[i].0 && BUCKETS[i].1.is_none_or(|max| n <= max))
                .collect();
            assert_eq!(inside, [bucket_of(n)], "{n}");
        }
        // postgres-bcc dropped blocks accessed exactly 5, 50 or 600 times.
        assert_eq!(
            [5, 50, 600, u64::MAX].map(bucket_of),
            [2, 3, 4, 4],
            "the gaps are buckets' first counts"
        );
    }

    #[test]
    fn an_interval_counts_what_changed_since_the_previous_reading() {
        let rel = block(10, 0).rel;
        let b = |hits, reads| BlockAccesses { hits, reads };
        let accesses = |hits, reads, extends| Accesses {
            hits,
            reads,
            extends,
            local: 0,
        };
        // Block 1 was added (an extend); two accesses past a full block table.
        let first = [(block(10, 0), b(2, 1)), (block(10, 1), b(0, 1))];
        let (f, reading) = interval(
            first.into_iter(),
            [(rel, accesses(2, 0, 1))].into_iter(),
            &Reading::default(),
            1,
        );
        assert_eq!(f.blocks(), 2);
        assert_eq!(
            f.buckets[1],
            Bucket {
                blocks: 1,
                accesses: 3
            }
        );
        assert_eq!(f.relations[&rel].accesses, accesses(4, 2, 1));
        // Block 0 again twice, block 1 untouched, block 2 new: 2 blocks in the interval.
        let second = [
            (block(10, 0), b(4, 1)),
            (block(10, 1), b(0, 1)),
            (block(10, 2), b(0, 1)),
        ];
        let (f, _) = interval(
            second.into_iter(),
            [(rel, accesses(2, 0, 1))].into_iter(),
            &reading,
            1,
        );
        assert_eq!(f.blocks(), 2);
        assert_eq!(
            f.buckets[0],
            Bucket {
                blocks: 1,
                accesses: 1
            }
        );
        assert_eq!(
            f.buckets[1],
            Bucket {
                blocks: 1,
                accesses: 2
            }
        );
        assert_eq!(f.relations[&rel].accesses, accesses(2, 1, 0));
        assert_eq!(f.relations[&rel].blocks, 2);
        // The whole run: what the tables hold.
        let f = total(
            second.into_iter(),
            [(rel, accesses(2, 0, 1))].into_iter(),
            1,
        );
        assert_eq!((f.blocks(), f.relations[&rel].blocks), (3, 3));
        assert_eq!(
            f.buckets[2],
            Bucket {
                blocks: 1,
                accesses: 5
            }
        );
        assert_eq!(f.relations[&rel].accesses, accesses(6, 3, 1));
        // Sampled one in ten: each access counted stands for ten; blocks are those seen.
        let f = total(
            second.into_iter(),
            [(rel, accesses(2, 0, 1))].into_iter(),
            10,
        );
        assert_eq!(f.blocks(), 3);
        assert_eq!(
            f.buckets[3],
            Bucket {
                blocks: 1,
                accesses: 50
            }
        );
        assert_eq!(f.relations[&rel].accesses, accesses(60, 30, 10));
    }
}
