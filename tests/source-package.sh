#!/bin/bash
# The Debian source package builds from itself alone, with no network, to the same bytes twice:
# packaging/source-package.sh makes it; a Debian 12 build root (the e2e rootfs plus
# build-essential and the Build-Depends, from Debian's archive; cached) builds it in two different
# folders inside systemd-nspawn --private-network, with dpkg-buildpackage checking the
# Build-Depends; the two .deb files must be equal, and lintian --pedantic passes on the source
# package. Needs root. Not part of `make test`: two builds from scratch take ~13 minutes on 2 cores.
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
buildroot="$cache/buildroot-$(sed -n '/^Build-Depends:/,/^[A-Z]/p' debian/control | sha256sum | cut -c1-8)"
if [ ! -x "$buildroot/usr/bin/dpkg-buildpackage" ]; then
    rm -rf "$buildroot.tmp"
    cp -a "$(rootfs_path "$cache")" "$buildroot.tmp"
    cat > "$buildroot.tmp/etc/apt/sources.list" <<'SOURCES'
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
    systemd-nspawn -q --register=no --keep-unit -M stbuild -D "$buildroot.tmp" --pipe sh -c \
        'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends build-essential debhelper >/dev/null'
    mkdir -p "$buildroot.tmp/root/deps/debian"
    cp debian/control "$buildroot.tmp/root/deps/debian/control"
    systemd-nspawn -q --register=no --keep-unit -M stbuild -D "$buildroot.tmp" --pipe sh -c \
        'cd /root/deps && DEBIAN_FRONTEND=noninteractive apt-get build-dep -y -qq --no-install-recommends ./ >/dev/null'
    rm -rf "$buildroot.tmp/root/deps"
    mv "$buildroot.tmp" "$buildroot"
fi
systemd-nspawn -q --register=no --keep-unit -M stbuild -D "$buildroot" --pipe sh -c 'cargo --version; rustc --version'

say "two builds with no network, in different folders"
work=$(mktemp -d /var/tmp/steadytext-srcpkg.XXXXXX)
trap 'rm -rf "$work"' EXIT
for build in a bb; do
    mkdir -p "$work/$build"
    cp "$out"/steadytext_* "$work/$build/"
    t0=$(date +%s)
    systemd-nspawn -q --register=no --keep-unit -M stbuild -D "$buildroot" --as-pid2 --private-network --bind="$work/$build:/build/$build" --pipe sh -c \
        "cd /build/$build && dpkg-source -x steadytext_*.dsc src >/dev/null && cd src && dpkg-buildpackage -b -us -uc" \
        > "$work/$build.log" 2>&1 || { tail -40 "$work/$build.log"; exit 1; }
    echo "build $build: $(($(date +%s) - t0)) s"
done
mkdir -p "$out/built"
cp "$work"/a/*.deb "$work"/a/*.buildinfo "$out/built/"
ls -l "$out/built"
same=yes
for deb in "$work"/a/*.deb; do
    name=$(basename "$deb")
    if cmp -s "$deb" "$work/bb/$name"; then echo "same bytes: $name"; else echo "DIFFERENT: $name"; same=no; fi
done
say "lintian --pedantic (tags shown are the justified overrides)"
lint=ok
lintian --allow-root --pedantic -E --show-overrides --fail-on error,warning,info,pedantic \
    "$out"/steadytext_*.dsc "$out"/built/steadytext_*_amd64.deb | grep -v '^X:' || lint=failed
[ "$same" = yes ] || { echo "error: the two builds differ" >&2; exit 1; }
[ "$lint" = ok ] || { echo "error: lintian found tags without a justified override" >&2; exit 1; }
echo "source package: builds offline, reproducibly, lintian-clean"
