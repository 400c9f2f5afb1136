#!/usr/bin/env bash
# Sets everything up on a fresh Debian 12 machine (as root), builds the release binaries,
# installs them in /usr/local/bin, and runs the demo: a throwaway PostgreSQL under pgbench
# load with the tools attached. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/setup.sh
echo "building release binaries (first time: a few minutes)..." >&2
log=$(mktemp)
if ! cargo build --release --locked >"$log" 2>&1; then tail -40 "$log" >&2; exit 1; fi
rm -f "$log"
for dir in tools/*/; do
    tool=$(basename "$dir")
    install -m 0755 "target/release/$tool" /usr/local/bin/
    echo "installed /usr/local/bin/$tool" >&2
done
exec target/release/pgbpf-demo
