#!/usr/bin/env bash
# Sets everything up on a fresh Debian 12 machine (as root), builds the release binaries,
# installs them in /usr/local/bin, and runs the demo: a throwaway PostgreSQL under pgbench
# load with the tools attached. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/setup.sh
echo "building static release binaries (first time: a few minutes)..." >&2
bin=$(scripts/build-release.sh)
for dir in tools/*/; do
    tool=$(basename "$dir")
    install -m 0755 "$bin/$tool" /usr/local/bin/
    echo "installed /usr/local/bin/$tool ($(du -h "$bin/$tool" | cut -f1), static)" >&2
done
exec "$bin/pgbpf-demo"
