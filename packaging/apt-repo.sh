#!/bin/sh
# Makes (or refreshes) a signed flat apt repository in REPO from the given .deb files:
#   packaging/apt-repo.sh REPO KEYDIR PACKAGE.deb...
# The .deb files are added to REPO (earlier versions stay, so clients can downgrade), then
# Packages, Release and InRelease are written; InRelease is signed with the key in KEYDIR (a
# GnuPG home, made with a new Ed25519 signing key when empty). REPO/steadytext.gpg is the public
# key clients name in `signed-by=`:
#   deb [signed-by=/usr/share/keyrings/steadytext.gpg] file:/srv/steadytext ./
# Needs apt-ftparchive (apt-utils) and gpg.
set -eu
[ $# -ge 3 ] || { echo "usage: $0 REPO KEYDIR PACKAGE.deb..." >&2; exit 2; }
repo=$1 keydir=$2
shift 2
mkdir -p "$repo" "$keydir"
chmod 0700 "$keydir"
export GNUPGHOME="$keydir"
if ! gpg --batch --list-secret-keys steadytext >/dev/null 2>&1; then
    gpg --batch --pinentry-mode loopback --passphrase '' \
        --quick-gen-key 'steadytext packages <packages@steadytext.invalid>' ed25519 sign never 2>/dev/null
fi
cp "$@" "$repo/"
cd "$repo"
apt-ftparchive packages . > Packages
gzip -9nkf Packages
apt-ftparchive -o APT::FTPArchive::Release::Origin=steadytext -o APT::FTPArchive::Release::Label=steadytext \
    release . > Release
rm -f InRelease
gpg --batch --yes --local-user steadytext --clearsign --output InRelease Release
gpg --batch --yes --export steadytext > steadytext.gpg
