#!/usr/bin/env bash
# Builds the debug image (deploy/image/Containerfile) with podman, offline: the static release
# binaries of every tool and a static busybox for a shell, FROM scratch. Prints the image's name
# and size. Usage: scripts/image.sh [NAME] (default localhost/pgbpf:VERSION, also tagged :latest).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/scripts/containers.conf}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
name=${1:-localhost/pgbpf:$version}
busybox=/bin/busybox
if [ ! -x "$busybox" ] || ldd "$busybox" 2>&1 | grep -q '=>'; then
    echo "image: $busybox is not static: apt-get install busybox-static" >&2; exit 1
fi
dir=$(scripts/build-release.sh)
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
mkdir "$context/bin"
for t in tools/*/; do
    cp "$dir/$(basename "$t")" "$context/bin/"
done
cp "$busybox" "$context/bin/busybox"
# busybox's applets as links, but never over a tool of ours.
for applet in $("$busybox" --list); do
    [ -e "$context/bin/$applet" ] || ln -s busybox "$context/bin/$applet"
done
cp deploy/image/Containerfile "$context/"
# NAME's repository without its tag (a registry's :port is not a tag: no / after a tag).
repo=$name
case ${name##*/} in *:*) repo=${name%:*} ;; esac
podman build --quiet --tag "$name" --tag "$repo:latest" "$context" >/dev/null
bytes=$(podman image inspect --format '{{.Size}}' "$name")
echo "$name $bytes bytes ($(( bytes / 1048576 )) MiB)"
