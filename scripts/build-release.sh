#!/usr/bin/env bash
# Builds the release binaries as static executables (glibc, static-pie) with their eBPF
# objects embedded, so one file can be copied to any x86_64 Linux host or debug container,
# and checks that each tool is static and runs. Prints the directory holding them.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
triple=x86_64-unknown-linux-gnu
# With an explicit --target, RUSTFLAGS reach only the target's crates, not build scripts or
# proc-macros (which cannot be static); pgbpf-build sets its own flags for the eBPF crates.
log=$(mktemp)
if ! RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$triple" >"$log" 2>&1; then
    tail -40 "$log" >&2; rm -f "$log"; exit 1
fi
rm -f "$log"
dir=target/$triple/release
# Each tool, and `pgbpf`: all of them in one multi-call binary (the debug image's).
for tool in $(basename -a tools/*/) pgbpf; do
    # ldd prints "statically linked" (static-pie) or "not a dynamic executable" for these.
    if ldd "$dir/$tool" 2>&1 | grep -q '=>'; then
        echo "build-release: $dir/$tool is dynamically linked:" >&2; ldd "$dir/$tool" >&2; exit 1
    fi
    "$dir/$tool" --help >/dev/null
done
echo "$dir"
