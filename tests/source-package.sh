#!/bin/bash
# The Debian source package builds from itself alone, with no network, to the same bytes twice:
# packaging/source-package.sh makes it; a Debian 12 build root (the e2e rootfs plus
# build-essential and the Build-Depends, from Debian's archive; cached) builds it in two different
# folders inside systemd-nspawn --private-network, with dpkg-buildpackage checking the
# Build-Depends; the two .deb files must be equal, and lintian --pedantic passes on the source
# package. The .rpm builds from the same tarballs with the same toolchain and no network, twice
# to the same bytes. Needs root. Not part of `make test`: four builds from scratch take ~30
# minutes on 2 cores.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
cache=${E2E_CACHE:-/var/cache/steadytext-e2e}
. "$here/tests/nspawn.sh"
say() { printf '\n== %s\n' "$*"; }
[ "$(id -u)" = 0 ] || { echo "error: the source package test needs root (it runs systemd-nspawn)" >&2; exit 1; }
install_missing debootstrap:debootstrap systemd-nspawn:systemd-container dpkg-source:dpkg-dev lintian:lintian

say "source package"
out="$here/target/source-package"
rm -rf "$out"
t0=$(date +%s)
packaging/source-package.sh "$out"
echo "made in $(($(date +%s) - t0)) s"

say "Debian 12 build root (Build-Depends from Debian's archive)"
ensure_rootfs "$cache"
buildroot_packages="build-essential debhelper rpm"
buildroot="$cache/buildroot-$({ echo "$buildroot_packages"; sed -n '/^Build-Depends:/,/^[A-Z]/p' debian/control; } | sha256sum | cut -c1-8)"
if [ ! -x "$buildroot/usr/bin/dpkg-buildpackage" ]; then
    rm -rf "$buildroot.tmp"
    cp -a "$(rootfs_path "$cache")" "$buildroot.tmp"
    cat > "$buildroot.tmp/etc/apt/sources.list" <<'SOURCES'
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
    systemd-nspawn -q --register=no --keep-unit -M stbuild -D "$buildroot.tmp" --pipe sh -c \
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $buildroot_packages >/dev/null"
    mkdir -p "$buildroot.tmp/root/deps/debian"
    cp debian/control "$buildroot.tmp/root/deps/debian/control"
    systemd-nspawn -q --register=no --keep-unit -M stbuild -D "$buildroot.tmp" --pipe sh -c \
        'cd /root/deps && DEBIAN_FRONTEND=noninteractive apt-get build-dep -y -qq --no-install-recommends ./ >/dev/null'
    rm -rf "$buildroot.tmp/root/deps"
    mv "$buildroot.tmp" "$buildroot"
fi
systemd-nspawn -q --register=no --keep-unit -M stbuild -D "$buildroot" --pipe sh -c 'cargo --version; rustc --version'

# Runs the command $2 in the build root with no network, the folder $1 bound at the same path.
offline() {
    systemd-nspawn -q --register=no --keep-unit -M stbuild -D "$buildroot" --as-pid2 --private-network --bind="$1" --pipe sh -c "$2"
}
# Prints "same bytes: NAME" for each file of folder $1 equal to its namesake in $2, else fails.
same_files() {
    local f status=0
    for f in "$1"/*; do
        if cmp -s "$f" "$2/$(basename "$f")"; then echo "same bytes: $(basename "$f") ($(stat -c %s "$f") bytes)"
        else echo "DIFFERENT: $(basename "$f")"; status=1; fi
    done
    return $status
}

say "two .deb builds with no network, in different folders"
work=$(mktemp -d /var/tmp/steadytext-srcpkg.XXXXXX)
trap 'rm -rf "$work"' EXIT
for build in a bb; do
    mkdir -p "$work/$build/debs"
    cp "$out"/steadytext_* "$work/$build/"
    t0=$(date +%s)
    offline "$work/$build" "cd $work/$build && dpkg-source -x steadytext_*.dsc src >/dev/null && cd src && dpkg-buildpackage -b -us -uc && mv ../*.deb ../debs/" \
        > "$work/$build.log" 2>&1 || { tail -40 "$work/$build.log"; exit 1; }
    echo "deb build $build: $(($(date +%s) - t0)) s"
done
mkdir -p "$out/built"
cp "$work"/a/debs/*.deb "$work"/a/*.buildinfo "$out/built/"
same=yes
same_files "$work/a/debs" "$work/bb/debs" || same=no

say "two .rpm builds from the same tarballs with no network, in different folders"
for build in a bb; do
    top="$work/rpm-$build"
    mkdir -p "$top/SOURCES"
    cp "$out"/steadytext_*.orig*.tar.xz rpm/steadytext.spec "$top/SOURCES/"
    t0=$(date +%s)
    offline "$top" "rpmbuild -bb --nodeps --define '_topdir $top' $top/SOURCES/steadytext.spec" \
        > "$work/rpm-$build.log" 2>&1 || { tail -40 "$work/rpm-$build.log"; exit 1; }
    echo "rpm build $build: $(($(date +%s) - t0)) s"
done
cp "$work"/rpm-a/RPMS/x86_64/*.rpm "$out/built/"
same_files "$work/rpm-a/RPMS/x86_64" "$work/rpm-bb/RPMS/x86_64" || same=no
ls -l "$out/built"

# Not --show-overrides: lintian then counts the overridden tags towards --fail-on.
say "lintian --pedantic (overrides with their reasons: debian/source/lintian-overrides)"
lint=ok
lintian --allow-root --pedantic --fail-on error,warning,info,pedantic \
    "$out"/steadytext_*.dsc "$out"/built/steadytext_*_amd64.deb || lint=failed
[ "$same" = yes ] || { echo "error: the two builds differ" >&2; exit 1; }
[ "$lint" = ok ] || { echo "error: lintian found tags without a justified override" >&2; exit 1; }
echo "source package: .deb and .rpm build offline, reproducibly; lintian-clean"
