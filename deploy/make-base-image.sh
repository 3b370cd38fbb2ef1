#!/usr/bin/env bash
# Make a local stand-in for python:3.11-slim where Docker Hub cannot be reached: a minimal Debian
# bookworm (its Python is 3.11) made with debootstrap from Debian's own mirror, imported into the
# local Docker engine. Then: docker build --build-arg BASE_IMAGE=parley-base:bookworm -t parley .
#
# Usage: deploy/make-base-image.sh [TAG]     (default parley-base:bookworm; needs root and debootstrap)
# The machine's CA bundle is copied in and named by PIP_CERT, so pip and apt inside the build trust
# the same TLS roots as this machine (a proxy's CA included).
set -euo pipefail
TAG="${1:-parley-base:bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
ROOTFS="$(mktemp -d "${TMPDIR:-/tmp}/parley-rootfs.XXXXXX")"
trap 'rm -rf "$ROOTFS"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,python3-dev,ca-certificates \
  bookworm "$ROOTFS" "$MIRROR" >&2
cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/archives/*.deb
tar -C "$ROOTFS" -c . | docker import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
  --change 'CMD ["python3"]' - "$TAG"
