#!/bin/bash
# A Debian bookworm base image with Python 3.11 (Debian's python3, python3-venv) and
# ca-certificates, made with mmdebstrap from Debian's own mirror and imported into the container
# engine: the stand-in for python:3.11-slim-bookworm on hosts that reach Debian's mirror and PyPI
# but no container registry. `make base-image` runs it (deployment/images.mk); by hand, as root:
#   ENGINE=podman BASE_IMAGE=localhost/fhe-base:bookworm bash deployment/base-image/build.sh
# Settings (environment):
#   ENGINE      the container engine (podman or docker), podman by default
#   BASE_IMAGE  the name to import as, localhost/fhe-base:bookworm by default
#   MIRROR      Debian's mirror, http://deb.debian.org/debian by default (plain http: apt checks
#               the release signatures, and no TLS-intercepting proxy is in the way)
#   SECURITY    the security mirror, http://deb.debian.org/debian-security by default
#   EXTRA_CA    a PEM certificate (or bundle) the image's system store should trust as well, for
#               hosts behind a TLS-re-signing proxy; none by default. It lands in
#               /usr/local/share/ca-certificates and so in every image built on this one.
#   FORCE=1     build again even when BASE_IMAGE exists
# The image has python3 and python3-venv (`python3 -m venv` brings pip and setuptools), but no
# `python` command, no compilers and no binutils: the images built on it add what they need.
set -euo pipefail

ENGINE=${ENGINE:-podman}
BASE_IMAGE=${BASE_IMAGE:-localhost/fhe-base:bookworm}
SUITE=bookworm
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY=${SECURITY:-http://deb.debian.org/debian-security}
EXTRA_CA=${EXTRA_CA:-}

if [ "${FORCE:-0}" != 1 ] && "$ENGINE" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    echo "base image $BASE_IMAGE exists (FORCE=1 builds it again)"
    exit 0
fi
command -v mmdebstrap >/dev/null || {
    echo "mmdebstrap is missing: apt-get install mmdebstrap" >&2
    exit 1
}
if [ -n "$EXTRA_CA" ] && [ ! -s "$EXTRA_CA" ]; then
    echo "EXTRA_CA=$EXTRA_CA is not a readable, non-empty file" >&2
    exit 1
fi

set -- \
    --variant=apt \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --include=python3,python3-venv,ca-certificates,passwd \
    --format=tar \
    --aptopt='Acquire::Languages "none"' \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/lintian/*'
if [ -n "$EXTRA_CA" ]; then
    set -- "$@" \
        --customize-hook="upload $EXTRA_CA /usr/local/share/ca-certificates/extra-ca.crt" \
        --customize-hook='chroot "$1" update-ca-certificates'
fi
# merged-usr: /bin, /lib and /sbin are links into /usr, as in Debian's own images, set up by
# mmdebstrap's hook rather than by the usrmerge package (which would bring perl along).
# The image keeps no apt lists or caches and no machine id (mmdebstrap's own clean-up).
set -- "$@" \
    --customize-hook='rm -f "$1"/etc/machine-id "$1"/var/lib/dbus/machine-id' \
    --customize-hook='rm -rf "$1"/var/cache/apt/*.bin "$1"/var/log/apt/* "$1"/var/log/dpkg.log'

# Into a file first, so that a failed bootstrap leaves no half image behind.
tarball=$(mktemp --tmpdir fhe-base.XXXXXX.tar)
trap 'rm -f "$tarball"' EXIT
echo "building $BASE_IMAGE from $MIRROR ($SUITE) with mmdebstrap"
start=$(date +%s)
mmdebstrap "$@" "$SUITE" "$tarball" \
    "deb $MIRROR $SUITE main" \
    "deb $MIRROR $SUITE-updates main" \
    "deb $SECURITY $SUITE-security main"
"$ENGINE" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "Debian $SUITE with python3 and python3-venv (mmdebstrap)" \
    "$tarball" "$BASE_IMAGE"
echo "base image $BASE_IMAGE: $("$ENGINE" image inspect --format '{{.Size}}' "$BASE_IMAGE" |
    awk '{printf "%.0f MB", $1 / 1e6}'), built in $(($(date +%s) - start)) s"
