#!/usr/bin/env bash
# A base image made from a distribution's own archive with debootstrap, for building the
# images without a registry (`make image-base`; where docker runs, the Dockerfiles' own
# FROM images are pulled instead): debootstrap --variant=minbase into a folder, then
# buildah turns it into a local image.
#   deploy/base-image.sh IMAGE bookworm http://deb.debian.org/debian [buildah options...]
#   deploy/base-image.sh IMAGE noble http://archive.ubuntu.com/ubuntu [buildah options...]
# bookworm: the CPU image's base (debian:bookworm-slim's release). noble: the stand-in for
# nvidia/cuda:*-ubuntu24.04 (the same Ubuntu, so the same Python; no CUDA, no GPU).
# Made once: the Makefile calls it only when IMAGE is not in buildah's storage yet.
set -euo pipefail
image=$1
suite=$2
mirror=$3
shift 3
buildah=(buildah "$@")

work=$(mktemp -d "${TMPDIR:-/tmp}/avito-ai-base.XXXXXX")
container=""
cleanup() {
    [ -z "$container" ] || "${buildah[@]}" rm "$container" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

started=$(date +%s)
options=(--variant=minbase)
script=()
case $suite in
bookworm)
    security=${mirror%/debian}/debian-security
    suites="bookworm bookworm-updates"
    security_suite=bookworm-security
    components=main
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    ;;
noble)
    # Debian's debootstrap knows no Ubuntu keyring: Ubuntu's own package, checked by its
    # SHA-256 (noble's ubuntu-keyring 2023.11.28.1) and for the archive's signing key
    # (Ubuntu Archive Automatic Signing Key (2018), F6EC...C93C).
    deb=$work/ubuntu-keyring.deb
    curl -fsS -o "$deb" "$mirror/pool/main/u/ubuntu-keyring/ubuntu-keyring_2023.11.28.1_all.deb"
    echo "36de43b15853ccae0028e9a767613770c704833f82586f28eb262f0311adb8a8  $deb" | sha256sum -c --quiet
    dpkg-deb -x "$deb" "$work/keyring"
    keyring=$work/keyring/usr/share/keyrings/ubuntu-archive-keyring.gpg
    gpg --no-default-keyring --keyring "$keyring" --list-keys --with-colons 2>/dev/null |
        grep -q '^fpr:*F6ECB3762474EDA9D21B7022871920D1991BC93C:' ||
        { echo "the Ubuntu keyring lacks the archive's signing key" >&2; exit 1; }
    options+=(--keyring="$keyring")
    # Older debootstrap has no script for noble: jammy's (the same layout) does.
    [ -e "/usr/share/debootstrap/scripts/noble" ] || script=(/usr/share/debootstrap/scripts/jammy)
    security=$mirror
    suites="noble noble-updates"
    security_suite=noble-security
    components="main restricted universe multiverse"  # as ubuntu:24.04 (python3-venv: universe)
    keyring=/usr/share/keyrings/ubuntu-archive-keyring.gpg
    ;;
*)
    echo "unknown suite $suite (bookworm or noble)" >&2
    exit 2
    ;;
esac

debootstrap "${options[@]}" "$suite" "$work/rootfs" "$mirror" "${script[@]}" \
    >"$work/debootstrap.log" 2>&1 || {
    tail -20 "$work/debootstrap.log" >&2
    exit 1
}
rootfs=$work/rootfs
# As the official images have it: the release, its updates and the security archive; no
# package lists, caches or logs left in the image.
rm -f "$rootfs/etc/apt/sources.list"
cat >"$rootfs/etc/apt/sources.list.d/$suite.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $suites
Components: $components
Signed-By: $keyring

Types: deb
URIs: $security
Suites: $security_suite
Components: $components
Signed-By: $keyring
EOF
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*.log "$rootfs"/dev/*

container=$("${buildah[@]}" from scratch)
"${buildah[@]}" copy "$container" "$rootfs" / >/dev/null
"${buildah[@]}" config --cmd /bin/bash \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --label "org.opencontainers.image.description=$suite minbase (debootstrap, $mirror)" \
    "$container"
"${buildah[@]}" commit --quiet "$container" "$image" >/dev/null
echo "$image: $suite from $mirror in $(($(date +%s) - started)) s"
