#!/usr/bin/env bash
# Sets everything up on a fresh Debian 12 machine (as root), builds the release binaries,
# installs them in /usr/local/bin (man pages and completions too), and runs the demo: a throwaway PostgreSQL under pgbench
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
# Man pages (section 8: `man page_reclaim`) and bash, zsh and fish completions.
"$bin/pgbpf-xtask" install /usr/local >/dev/null
mandb -q 2>/dev/null || true
echo "installed man pages in /usr/local/share/man/man8 and shell completions" >&2
exec "$bin/pgbpf-demo"
