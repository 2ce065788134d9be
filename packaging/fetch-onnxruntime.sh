#!/bin/sh
# Fetches ONNX Runtime (CPU; version and pins in packaging/onnxruntime.env) from its PyPI wheel,
# checks both the wheel's and the library's sha256, and installs libonnxruntime.so.VERSION into
# DEST (default: .ort/ at the repository root), with the link libonnxruntime.so beside it.
# Idempotent: a present library with the right hash is kept.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/packaging/onnxruntime.env"
VERSION=$ORT_VERSION
WHEEL_SHA256=$ORT_WHEEL_SHA256
LIB_SHA256=$ORT_LIB_SHA256
LIB=libonnxruntime.so.$VERSION

dest=${1:-$here/.ort}
mkdir -p "$dest"
ln -sfn "$LIB" "$dest/libonnxruntime.so"

if [ -f "$dest/$LIB" ] && echo "$LIB_SHA256  $dest/$LIB" | sha256sum -c --status; then
    echo "ONNX Runtime $VERSION already in $dest"
    exit 0
fi

if [ "$(uname -m)" != x86_64 ]; then
    echo "error: this script fetches the x86_64 build; on $(uname -m) install ONNX Runtime $VERSION yourself and set ORT_DYLIB_PATH" >&2
    exit 1
fi

command -v python3 >/dev/null || { echo "error: python3 with pip is needed to download the wheel (apt install python3-pip)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --implementation cp --python-version 3.11 --abi cp311 --platform manylinux_2_28_x86_64 \
    -d "$work" "onnxruntime==$VERSION"
wheel=$(ls "$work"/onnxruntime-"$VERSION"-*.whl)
echo "$WHEEL_SHA256  $wheel" | sha256sum -c --status || {
    echo "error: $wheel does not have the pinned sha256 $WHEEL_SHA256; refusing it" >&2; exit 1; }
python3 - "$wheel" "$work" "$LIB" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extract("onnxruntime/capi/" + sys.argv[3], sys.argv[2])
PY
echo "$LIB_SHA256  $work/onnxruntime/capi/$LIB" | sha256sum -c --status || {
    echo "error: the library in the wheel does not have the pinned sha256 $LIB_SHA256" >&2; exit 1; }
install -m 0644 "$work/onnxruntime/capi/$LIB" "$dest/$LIB.tmp"
mv -f "$dest/$LIB.tmp" "$dest/$LIB"
echo "ONNX Runtime $VERSION installed in $dest ($(basename "$wheel"))"
