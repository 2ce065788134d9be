#!/bin/sh
# Makes the Debian source package, which builds with no network (dpkg-buildpackage under
# `unshare -n`, sbuild, pbuilder):
#   packaging/source-package.sh OUTDIR
# OUTDIR gets, for version V-R of debian/changelog:
#   steadytext_V.orig.tar.xz              the commit checked out (git archive HEAD), without debian/
#   steadytext_V.orig-vendor.tar.xz       every crate Cargo.lock names (cargo vendor)
#   steadytext_V.orig-onnxruntime.tar.xz  libonnxruntime.so from the sha256-pinned PyPI wheel
#   steadytext_V-R.debian.tar.xz, steadytext_V-R.dsc
# Tarballs are made reproducibly (sorted names, owner 0, mtime of the commit).
set -eu
[ $# = 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd)
cd "$here"
full=$(dpkg-parsechangelog -S Version)
upstream=${full%-*}
epoch=$(git log -1 --format=%ct)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
src="$work/steadytext-$upstream"

# Writes the folder $2 (relative to $1) as the reproducible tarball $3.
tarball() {
    tar -C "$1" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
        --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime -cf - "$2" | xz -6 -T1 > "$3"
}

git archive --format=tar --prefix="steadytext-$upstream/" HEAD | tar -C "$work" -xf -
rm -rf "$src/debian"
tarball "$work" "steadytext-$upstream" "$out/steadytext_$upstream.orig.tar.xz"

cargo vendor --quiet --locked --versioned-dirs "$src/vendor" >/dev/null
tarball "$src" vendor "$out/steadytext_$upstream.orig-vendor.tar.xz"

./packaging/fetch-onnxruntime.sh "$src/onnxruntime" >/dev/null
rm -f "$src/onnxruntime/libonnxruntime.so"
tarball "$src" onnxruntime "$out/steadytext_$upstream.orig-onnxruntime.tar.xz"

git archive --format=tar HEAD debian | tar -C "$src" -xf -
cd "$out"
dpkg-source --build "$src" >/dev/null
ls "$out"/steadytext_"$upstream"*
