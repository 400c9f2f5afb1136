#!/usr/bin/env bash
# The whole test suite, as root on Debian 12: set-up (idempotent), formatting and lints (host
# and eBPF crates), then unit, privileged integration and smoke tests. Full logs go to
# target/test-logs/; the last line is the count: "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH" CARGO_TERM_COLOR=never
logs=target/test-logs
mkdir -p "$logs"
failed_steps=()

step() { # name, command...: run quietly, show the log's tail on failure
    local name=$1; shift
    local s=$SECONDS
    if "$@" >"$logs/$name.log" 2>&1; then
        echo "ok   $name ($(( SECONDS - s ))s)"
    else
        echo "FAIL $name ($(( SECONDS - s ))s); last lines of $logs/$name.log:"
        tail -40 "$logs/$name.log" | sed 's/^/    /'
        failed_steps+=("$name")
    fi
}

step setup scripts/setup.sh || true
[ " ${failed_steps[*]-} " = "  " ] || { echo "0 passed, 1 failed"; exit 1; }

step fmt cargo fmt --all --check
step clippy cargo clippy --all-targets --locked -- -D warnings
step clippy-ebpf cargo +nightly-2026-08-01 clippy --locked -p pgbpf-common-ebpf -p page_reclaim-ebpf -p query_latency-ebpf -p pgbpf-capture-ebpf -p shmem-ebpf -p llcache_per_query-ebpf -p io_timeouts-ebpf -p lwlocks-ebpf -p locks-ebpf -p cpu_wait-ebpf -p spin_sema-ebpf -p wal_per_query-ebpf -p working_set-ebpf -p write_per_type-ebpf -p net_per_query-ebpf -p pgbpf-selftest-ebpf \
    --target bpfel-unknown-none -Z build-std=core --target-dir target/ebpf-clippy -- -D warnings
step build cargo test --locked --no-run
step static-release scripts/build-release.sh
# Arbitrary bytes into the wire decoder for 20 s (crashes land in protocols/pgwire/fuzz/artifacts).
step fuzz-pgwire sh -c 'cd protocols/pgwire && cargo +nightly-2026-08-01 fuzz run connection -- -max_total_time=20'
step fuzz-resp sh -c 'cd protocols/resp && cargo +nightly-2026-08-01 fuzz run connection -- -max_total_time=20'
# pg_replay's inputs: server logs of each format, and capture records after a valid header.
step fuzz-replay sh -c 'cd tools/pg_replay/fuzz && cargo +nightly-2026-08-01 fuzz run logs -- -max_total_time=15 && cargo +nightly-2026-08-01 fuzz run capture -- -max_total_time=15'
# Default members only: the eBPF crates are built by pgbpf-build (common/build), not for the host.
# Test binaries run one after another; privileged tests also take a machine-wide lock.
rm -f "$logs/skipped.log"
cargo test --locked --no-fail-fast >"$logs/tests.log" 2>&1
test_rc=$?
# Tests that cannot run on this machine (e.g. no hardware counters) say why.
[ -s "$logs/skipped.log" ] && sed 's/^/    /' "$logs/skipped.log"
grep -E '^test .* (FAILED|ok)$|^test result:' "$logs/tests.log" | grep -E 'FAILED|test result: FAILED' | sed 's/^/    /'
if [ $test_rc -ne 0 ]; then
    echo "FAIL tests; failure details:"
    sed -n '/^failures:$/,/^test result:/p' "$logs/tests.log" | head -120 | sed 's/^/    /'
fi
passed=$(grep -oE '^test result: .* ([0-9]+) passed' "$logs/tests.log" | grep -oE '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -oE '^test result: .* ([0-9]+) failed' "$logs/tests.log" | grep -oE '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
# A step that failed (lint, build) counts as one failure; a crashed test binary too.
failed=$(( failed + ${#failed_steps[@]} ))
[ $test_rc -ne 0 ] && [ "$failed" -eq 0 ] && failed=1
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
