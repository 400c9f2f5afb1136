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
# Arbitrary bytes into each parser of outside input for a bounded time, starting from the
# committed seeds (fuzz/seeds/TARGET); what the fuzzer finds goes to the ignored
# fuzz/corpus/TARGET, crashes to fuzz/artifacts. fuzz DIR TARGET SECONDS:
fuzz() { (cd "$1" && mkdir -p "fuzz/corpus/$2" && cargo +nightly-2026-08-01 fuzz run "$2" "fuzz/corpus/$2" "fuzz/seeds/$2" -- -max_total_time="$3"); }
# The wire decoders.
step fuzz-pgwire fuzz protocols/pgwire connection 20
step fuzz-resp fuzz protocols/resp connection 20
# pg_replay's inputs (server logs of each format, capture records after a valid header), a
# whole capture file as --read opens it, a binary's ELF and USDT notes and a BTF file.
step fuzz-replay sh -c 'for t in logs capture capture_file elf_btf proc_files; do (cd tools/pg_replay && mkdir -p fuzz/corpus/$t && cargo +nightly-2026-08-01 fuzz run $t fuzz/corpus/$t fuzz/seeds/$t -- -max_total_time=10) || exit 1; done'
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
