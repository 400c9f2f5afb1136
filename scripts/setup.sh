#!/usr/bin/env bash
# Installs everything pgbpf needs on a fresh Debian 12 x86_64 machine (run as root), idempotently:
# apt packages (LLVM 22 for bpf-linker, PostgreSQL 15, Redis 7, podman + runc, bpftrace, sdt headers,
# psycopg and Debian's pgreplay for pg_replay's tests, openssl for TLS test certificates, GNU time for the bench,
# busybox-static's ssl_client: a client with TLS of its own for the TLS tests, prometheus to scrape
# pgbpf_exporter in its test),
# the pinned userspace and eBPF rust toolchains, and bpf-linker. Prints one line per step.
set -euo pipefail

STABLE=1.99.1                 # must match rust-toolchain.toml
EBPF_NIGHTLY=nightly-2026-08-01 # LLVM 22, like bpf-linker below (later nightlies use LLVM 23)
BPF_LINKER_VERSION=0.13.0

export DEBIAN_FRONTEND=noninteractive PATH="$HOME/.cargo/bin:$PATH"
step() { local s=$SECONDS; "$@"; echo "setup: $(( SECONDS - s ))s ${*:0:3}" >&2; }
quiet() { local log; log=$(mktemp); if ! "$@" >"$log" 2>&1; then tail -30 "$log" >&2; rm -f "$log"; return 1; fi; rm -f "$log"; }

[ "$(id -u)" = 0 ] || { echo "setup: run as root" >&2; exit 1; }

PKGS=(build-essential ca-certificates curl pkg-config llvm-22-dev
      postgresql postgresql-contrib podman runc bpftrace systemtap-sdt-dev procps util-linux psmisc
      iproute2 man-db redis-server redis-tools python3-psycopg pgreplay openssl time busybox-static
      prometheus)
missing=()
for p in "${PKGS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    step quiet apt-get update -qq
    step quiet apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v rustup >/dev/null; then
    curl -sSf -o /tmp/rustup-init.sh https://static.rust-lang.org/rustup/rustup-init.sh
    step quiet sh /tmp/rustup-init.sh -y --no-modify-path --profile minimal --default-toolchain "$STABLE"
fi
rustup toolchain list | grep -q "^$STABLE" || step quiet rustup toolchain install "$STABLE" --profile minimal --component rustfmt,clippy
rustup component list --toolchain "$STABLE" --installed | grep -q clippy || step quiet rustup component add --toolchain "$STABLE" rustfmt clippy
rustup toolchain list | grep -q "^$EBPF_NIGHTLY" || step quiet rustup toolchain install "$EBPF_NIGHTLY" --profile minimal --component rust-src,rustfmt,clippy

if ! bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
    # bpf-linker's build script uses the first llvm-config on PATH; Debian's default is LLVM 14.
    step quiet env PATH="/usr/lib/llvm-22/bin:$PATH" cargo +"$STABLE" install --locked \
        "bpf-linker@$BPF_LINKER_VERSION" --no-default-features --features llvm-22
fi

# cargo-fuzz runs the wire decoder's fuzz target (scripts/test.sh gives it 20 seconds).
cargo fuzz --version 2>/dev/null | grep -q "0.13.2" || step quiet cargo +"$STABLE" install --locked cargo-fuzz@0.13.2

# tracefs: the tools mount it themselves when missing, but bpftrace (bench/) wants it too.
[ -d /sys/kernel/tracing/events ] || mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
echo "setup: ready in ${SECONDS}s (rust $STABLE, eBPF $EBPF_NIGHTLY, bpf-linker $BPF_LINKER_VERSION)" >&2
