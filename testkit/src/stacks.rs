//! Checks of `--stack` output shared by the tools' tests: the `stack` records' frames, their
//! order, and that the stacks account for every wait the other rows count.

use serde_json::Value;

/// The frames of a stack record's `field` (`user_stack`, `kernel_stack`), innermost first.
pub fn frames(record: &Value, field: &str) -> Vec<String> {
    record[field]
        .as_array()
        .unwrap_or_else(|| panic!("no {field}: {record:#}"))
        .iter()
        .map(|f| f.as_str().unwrap_or_default().to_string())
        .collect()
}

/// `functions` are frames of `stack` (`name+0x...`), innermost first, in this order.
pub fn assert_in_order(stack: &[String], functions: &[&str]) {
    let at = |name: &str| {
        stack
            .iter()
            .position(|s| s.starts_with(&format!("{name}+")))
            .unwrap_or_else(|| panic!("{name} not in the stack {stack:#?}"))
    };
    for pair in functions.windows(2) {
        assert!(at(pair[0]) < at(pair[1]), "{pair:?} in {stack:#?}");
    }
}

/// The `stack` record with the most total time among those of `what`.
pub fn heaviest<'a>(records: &'a [Value], what: &str) -> &'a Value {
    records
        .iter()
        .filter(|r| r["type"] == "stack" && r["what"] == what)
        .max_by_key(|r| r["total_ns"].as_u64().unwrap_or(0))
        .unwrap_or_else(|| panic!("no stack of {what}"))
}

/// Every wait is counted under its stack, or as a stack the kernel did not store (a stack
/// map is a hash table: a stack whose slot another holds is not kept): for the `rows` records
/// (e.g. `tranche`, `kind`) summed by their `key` field (what they count), other than those
/// in `skip` (taken without stacks), the `stack` records of the same `what` add up to at most
/// their `count` field, and all of them together with the lost stacks to at least the rows'
/// sum; few are lost.
pub fn assert_stacks_cover(records: &[Value], rows: &str, key: &str, count: &str, skip: &[&str]) {
    let summary = records
        .iter()
        .find(|r| r["type"] == "summary")
        .expect("a summary");
    let lost = summary["lost"]["stacks"]
        .as_u64()
        .unwrap_or_else(|| panic!("no lost stacks count: {summary}"));
    let mut by_key: std::collections::BTreeMap<String, u64> = Default::default();
    for row in records.iter().filter(|r| r["type"] == rows) {
        let what = row[key].as_str().unwrap_or_default();
        if !skip.contains(&what) {
            *by_key.entry(what.to_string()).or_default() += row[count].as_u64().unwrap_or(0);
        }
    }
    let (mut counted, mut in_stacks) = (0, 0);
    for (what, n) in &by_key {
        let stacks: u64 = records
            .iter()
            .filter(|r| r["type"] == "stack" && r["what"] == what.as_str())
            .map(|r| r["waits"].as_u64().unwrap_or(0))
            .sum();
        assert!(stacks <= *n, "{what}: {stacks} in stacks of {n}");
        counted += n;
        in_stacks += stacks;
    }
    assert!(counted > 0, "no {rows} rows");
    // (Equal for one stack per wait; a wait with two, user and kernel, may lose both.)
    assert!(
        in_stacks <= counted && counted <= in_stacks + lost,
        "{counted} waits, {in_stacks} in stacks, {lost} lost"
    );
    eprintln!("stacks: {counted} waits, {in_stacks} in stacks, {lost} lost");
    // Seen: 0 for lwlocks, locks and spin_sema; 0.6-1 % for cpu_wait, whose preempted tasks
    // each leave a stack of their own (the code they were running) and fill the map's slots.
    assert!(lost <= counted / 50 + 2, "{lost} of {counted} stacks lost");
}
