//! Checks a tool's real NDJSON output against its checked-in JSON Schema
//! (`docs/schema/<tool>.json`, generated from the record types by `pgbpf-xtask schemas`).

use serde_json::Value;

use crate::repo_root;

/// Panics with the first record of `records` that `tool`'s schema rejects, and why. Returns
/// the record kinds seen (`type`), so a test can say which kinds its run covered.
pub fn validate(tool: &str, records: &[Value]) -> Vec<String> {
    let path = repo_root().join(format!("docs/schema/{tool}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let schema: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let validator = jsonschema::validator_for(&schema)
        .unwrap_or_else(|e| panic!("{} is not a JSON Schema: {e}", path.display()));
    assert!(!records.is_empty(), "{tool} printed no records to validate");
    let mut kinds: Vec<String> = vec![];
    for r in records {
        let errors: Vec<String> = validator.iter_errors(r).map(|e| e.to_string()).collect();
        assert!(
            errors.is_empty(),
            "{tool}'s record does not match {}:\n{r}\n{}",
            path.display(),
            errors.join("\n")
        );
        let kind = r["type"].as_str().unwrap_or_default().to_string();
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    kinds
}
