#!/usr/bin/env bash
# Builds the two images with podman, offline, FROM scratch, from the static release binaries:
# the debug image (deploy/image/Containerfile: every tool, as links to the multi-call binary
# `pgbpf`, and a static busybox for a shell) and
# the exporter's (deploy/image/Containerfile.exporter: pgbpf_exporter alone, for the DaemonSet).
# Prints each image's name and size on a line. Usage: scripts/image.sh [NAME [EXPORTER_NAME]]
# (default localhost/pgbpf:VERSION and localhost/pgbpf-exporter:VERSION, also tagged :latest).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/scripts/containers.conf}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
name=${1:-localhost/pgbpf:$version}
exporter_name=${2:-localhost/pgbpf-exporter:$version}
busybox=/bin/busybox
if [ ! -x "$busybox" ] || ldd "$busybox" 2>&1 | grep -q '=>'; then
    echo "image: $busybox is not static: apt-get install busybox-static" >&2; exit 1
fi
dir=$(scripts/build-release.sh)
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT

# build CONTAINERFILE NAME: builds the staged context and prints "NAME BYTES bytes (N MiB)".
build() {
    cp "$1" "$context/Containerfile"
    # NAME's repository without its tag (a registry's :port is not a tag: no / after a tag).
    local repo=$2
    case ${2##*/} in *:*) repo=${2%:*} ;; esac
    podman build --quiet --tag "$2" --tag "$repo:latest" "$context" >/dev/null
    local bytes
    bytes=$(podman image inspect --format '{{.Size}}' "$2")
    echo "$2 $bytes bytes ($(( bytes / 1048576 )) MiB)"
}

mkdir "$context/bin"
# One binary for every tool (they share most of their code: a third of their separate sizes),
# each tool a link to it. The exporter has its own image: the debug one stays small.
cp "$dir/pgbpf" "$context/bin/"
for t in tools/*/; do
    tool=$(basename "$t")
    [ "$tool" = pgbpf_exporter ] || ln -s pgbpf "$context/bin/$tool"
done
cp "$busybox" "$context/bin/busybox"
# busybox's applets as links, but never over a tool of ours.
for applet in $("$busybox" --list); do
    [ -e "$context/bin/$applet" ] || ln -s busybox "$context/bin/$applet"
done
build deploy/image/Containerfile "$name"

rm -rf "$context/bin"
mkdir "$context/bin"
cp "$dir/pgbpf_exporter" "$context/bin/"
build deploy/image/Containerfile.exporter "$exporter_name"
