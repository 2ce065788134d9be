#!/bin/bash
# End-to-end test of the Debian package on a real systemd: build the .deb, boot a Debian 12
# container with systemd-nspawn, install the package, and use it as an admin and users would.
# Needs root. The debootstrapped rootfs is cached in $E2E_CACHE between runs.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
models=${STEADYTEXT_MODEL_DIR:-$here/../shared/models}
cache=${E2E_CACHE:-/var/cache/steadytext-e2e}
pass=0
fail=0

. "$here/tests/nspawn.sh"
say() { printf '\n== %s\n' "$*"; }
ok() { pass=$((pass + 1)); printf 'ok   %s\n' "$*"; }
bad() { fail=$((fail + 1)); printf 'FAIL %s\n' "$*"; }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }

[ "$(id -u)" = 0 ] || { echo "error: the systemd end-to-end test needs root (it boots a container)" >&2; exit 1; }
[ -d "$models/SmolLM2-135M-Instruct" ] || { echo "error: no shared models in $models" >&2; exit 1; }

install_missing debootstrap:debootstrap systemd-nspawn:systemd-container dpkg-buildpackage:dpkg-dev dh:debhelper lintian:lintian rpmbuild:rpm

say "unit files: systemd-analyze verify and security gates"
units=$(mktemp -d)
for u in systemd/steadytext.socket systemd/steadytext-tcp.socket systemd/steadytext-http.socket systemd/steadytext.service; do
    sed "s|/usr/bin/steadytextd|$here/target/release/steadytextd|" "$u" > "$units/$(basename "$u")"
done
cargo build --release --locked --bins -q
check "systemd-analyze verify" systemd-analyze verify --man=no "$units"/steadytext.socket "$units"/steadytext-tcp.socket "$units"/steadytext-http.socket "$units"/steadytext.service
# The threshold is in tenths: 10 = exposure 1.0.
check "systemd-analyze security --offline (exposure at most 1.0)" \
    systemd-analyze security --offline=true --threshold=10 --no-pager "$units"/steadytext.service
rm -rf "$units"

say "building the .deb"
rm -f ../steadytext_*.deb ../steadytext-dbgsym_*.deb ../steadytext_*.changes ../steadytext_*.buildinfo
dpkg-buildpackage -b -us -uc > target/dpkg-buildpackage.log 2>&1 || { tail -30 target/dpkg-buildpackage.log; exit 1; }
mkdir -p target/deb
mv ../steadytext_*.deb ../steadytext-dbgsym_*.deb ../steadytext_*.changes ../steadytext_*.buildinfo target/deb/
deb=$(ls target/deb/steadytext_*_amd64.deb)
deb_size=$(stat -c %s "$deb")
check "lintian reports no errors" lintian --fail-on error target/deb/steadytext_*.changes

say "building the .rpm"
rpmtop=$(mktemp -d)
if rpmbuild -bb --define "_topdir $rpmtop" --define "_sourcedir $here" --define "_builddir $here" --nodeps rpm/steadytext.spec > target/rpmbuild.log 2>&1; then
    ok "rpmbuild -bb rpm/steadytext.spec ($(find "$rpmtop/RPMS" -name '*.rpm' -printf '%f %s bytes\n' | head -1))"
else
    tail -20 target/rpmbuild.log; bad "rpmbuild"
fi
rm -rf "$rpmtop"

say "Debian 12 rootfs"
base="$cache/rootfs-bookworm"
if [ ! -x "$base/lib/systemd/systemd" ]; then
    mkdir -p "$cache"
    rm -rf "$base.tmp"
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,ca-certificates,man-db bookworm "$base.tmp" http://deb.debian.org/debian
    mv "$base.tmp" "$base"
fi
work=$(mktemp -d /var/tmp/steadytext-e2e.XXXXXX)
root="$work/root"
cp -a "$base" "$root"
cp "$deb" "$root/root/steadytext.deb"
mkdir -p "$root/root/models"
cp -rL "$models"/SmolLM2-135M-Instruct "$models"/all-MiniLM-L6-v2 "$root/root/models/"
echo steadytext-e2e > "$root/etc/hostname"

systemd-nspawn -D "$root" --boot --register=no --keep-unit -M steadytext-e2e > "$work/console.log" 2>&1 &
nspawn=$!
cleanup() {
    kill "$nspawn" 2>/dev/null || true
    wait "$nspawn" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
init=$(booted_init "$nspawn" "$work/console.log")
# Every command in the container is bounded: a daemon that never answers fails the test, never hangs it.
c() { timeout 180 nsenter -t "$init" -a -- "$@"; }
c systemctl is-system-running --wait >/dev/null 2>&1 || true
state=$(c systemctl is-system-running 2>/dev/null || true)
ok "container booted (${state:-starting})"

say "apt install ./steadytext.deb"
check "install" bash -c "nsenter -t $init -a env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq /root/steadytext.deb > $work/install.log 2>&1 || { cat $work/install.log; false; }"
c cp -r /root/models/SmolLM2-135M-Instruct /root/models/all-MiniLM-L6-v2 /var/lib/steadytext/models/
c useradd -m -G steadytext alice
c useradd -m bob
check "steadytext.socket is enabled and listening" c systemctl is-active --quiet steadytext.socket
check "the service waits for its first connection" bash -c "! nsenter -t $init -a systemctl is-active --quiet steadytext.service"
check "systemd-analyze verify (installed units)" c systemd-analyze verify steadytext.socket steadytext.service
for page in stctl.1 steadytextd.8 steadytext.toml.5; do
    sec=${page##*.}
    check "man -l renders $page without warnings" bash -c "test -z \"\$(nsenter -t $init -a man --warnings -l /usr/share/man/man$sec/$page.gz 2>&1 >/dev/null)\""
done
exposure=$(c systemd-analyze security steadytext.service --no-pager | tail -1)
echo "$exposure"

say "generate and embed as a user in group steadytext"
ref="$models/SmolLM2-135M-Instruct/reference_ort.json"
prompt=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["cases"][0]["prompt"])' "$ref")
expected=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["cases"][0]["greedy_text"])' "$ref")
c systemctl stop steadytext.socket steadytext.service
t0=$(date +%s.%N)
c systemctl start steadytext.socket
got=$(c runuser -u alice -- stctl --daemon-only generate "$prompt" --max-new-tokens 48)
t1=$(date +%s.%N)
first_answer=$(python3 -c "print(f'{($t1 - $t0):.2f}')")
check "stctl generate gives the reference text" test "$got" = "$expected"
c runuser -u alice -- stctl --daemon-only embed "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["cases"][0]["text"])' "$models/all-MiniLM-L6-v2/reference_sentence_transformers.json")" > "$work/embed.json"
check "stctl embed matches sentence-transformers (cosine >= 0.9999999)" python3 - "$work/embed.json" "$models/all-MiniLM-L6-v2/reference_sentence_transformers.json" <<'PY'
import json, math, sys
v = json.loads(open(sys.argv[1]).read())
r = json.load(open(sys.argv[2]))["cases"][0]["embedding"]
cos = sum(a * b for a, b in zip(v, r)) / (math.sqrt(sum(a * a for a in v)) * math.sqrt(sum(b * b for b in r)))
print(f"cosine {cos:.9f}")
sys.exit(0 if cos >= 0.9999999 else 1)
PY
check "stctl status works for the user" c runuser -u alice -- stctl --daemon-only status

say "journal"
check "journalctl -u steadytext shows the request with structured fields" \
    bash -c "nsenter -t $init -a journalctl -u steadytext -o verbose --no-pager | grep -q 'METHOD=generate_stream' && nsenter -t $init -a journalctl -u steadytext -o verbose --no-pager | grep -q 'REQUEST_ID='"

check "ONNX Runtime read the CPU's features (no 'Error in cpuinfo' in the journal)" \
    bash -c "! nsenter -t $init -a journalctl -u steadytext --no-pager | grep -q 'Error in cpuinfo'"

say "restart keeps the cache"
c systemctl restart steadytext.service
cached=$(c runuser -u alice -- stctl --daemon-only generate "$prompt" --max-new-tokens 48 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["cached"])')
check "answer after restart comes from the snapshot" test "$cached" = True

say "reload"
check "systemctl reload steadytext (SIGHUP: RELOADING=1, then READY=1)" c systemctl reload steadytext.service
check "the journal shows the reload" bash -c "nsenter -t $init -a journalctl -u steadytext --no-pager | grep -q 'reloading configuration'"
check "it serves after the reload" c runuser -u alice -- stctl --daemon-only ping

say "HTTP front (steadytext-http.socket)"
c sh -c 'umask 077; echo e2e-http-key-0123456789abcdef > /etc/steadytext/api-key'
c mkdir -p /etc/systemd/system/steadytext.service.d
printf '[Service]\nLoadCredential=api-key:/etc/steadytext/api-key\nIPAddressAllow=localhost\n' | c tee /etc/systemd/system/steadytext.service.d/tcp.conf >/dev/null
c systemctl daemon-reload
# systemd refuses to start a socket whose service runs: stop it; the next connection starts it
# with all of its sockets.
c systemctl stop steadytext.service
check "systemctl enable --now steadytext-http.socket" c systemctl enable --now steadytext-http.socket
http_got=$(c runuser -u alice -- env STEADYTEXT_API_KEY=e2e-http-key-0123456789abcdef stctl --daemon-only --socket http://127.0.0.1:5558 generate "$prompt" --max-new-tokens 48 || true)
check "stctl over HTTP (127.0.0.1:5558) gives the reference text" test "$http_got" = "$expected"
check "HTTP without the key is refused" bash -c "! nsenter -t $init -a runuser -u alice -- stctl --daemon-only --socket http://127.0.0.1:5558 ping 2>$work/http.err && grep -q 'HTTP 401' $work/http.err"
c systemctl stop steadytext.service
c systemctl disable --now steadytext-http.socket
c rm -f /etc/systemd/system/steadytext.service.d/tcp.conf
c systemctl daemon-reload

say "watchdog"
c mkdir -p /etc/systemd/system/steadytext.service.d
printf '[Service]\nWatchdogSec=6\n' | c tee /etc/systemd/system/steadytext.service.d/watchdog.conf >/dev/null
c systemctl daemon-reload
c systemctl restart steadytext.service
c runuser -u alice -- stctl --daemon-only ping >/dev/null
old=$(c systemctl show -P MainPID steadytext.service)
c /bin/sh -c "kill -STOP $old"
restarted=no
for _ in $(seq 60); do
    sleep 1
    new=$(c systemctl show -P MainPID steadytext.service)
    if [ "$new" != "$old" ] && [ "$new" != 0 ] && c systemctl is-active --quiet steadytext.service; then restarted=yes; break; fi
done
check "a SIGSTOPped worker is killed by the watchdog and restarted" test "$restarted" = yes
check "the journal says watchdog timeout" bash -c "nsenter -t $init -a journalctl -u steadytext --no-pager | grep -qi 'watchdog timeout'"
check "it serves again" c runuser -u alice -- stctl --daemon-only ping
c rm -rf /etc/systemd/system/steadytext.service.d
c systemctl daemon-reload

say "access control"
check "a user outside the group is refused" bash -c "! nsenter -t $init -a runuser -u bob -- stctl --daemon-only ping 2>$work/bob.err"
grep -qi 'permission denied' "$work/bob.err" && ok "... with 'permission denied'" || bad "bob's error: $(cat "$work/bob.err")"

say "started by hand as root (--allow-root)"
c env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin sh -c 'steadytextd --allow-root --listen unix:/tmp/by-hand.sock >/tmp/by-hand.log 2>&1 & echo $! > /tmp/by-hand.pid'
for _ in $(seq 100); do c test -S /tmp/by-hand.sock && break; sleep 0.1; done
hand=$(c cat /tmp/by-hand.pid)
if c stctl --daemon-only --socket unix:/tmp/by-hand.sock ping >/dev/null; then ok "it answers"; else bad "it answers"; c cat /tmp/by-hand.log; fi
su_uid=$(c id -u steadytext)
check "it switched to the steadytext user" bash -c "nsenter -t $init -a grep -Eq '^Uid:[[:space:]]+$su_uid[[:space:]]+$su_uid' /proc/$hand/status"
check "with no-new-privileges and no capabilities" bash -c "nsenter -t $init -a grep -Eq '^NoNewPrivs:[[:space:]]+1' /proc/$hand/status && nsenter -t $init -a grep -Eq '^CapEff:[[:space:]]+0+$' /proc/$hand/status && nsenter -t $init -a grep -Eq '^CapPrm:[[:space:]]+0+$' /proc/$hand/status && nsenter -t $init -a grep -Eq '^CapBnd:[[:space:]]+0+$' /proc/$hand/status"
c sh -c "kill $hand"
for _ in $(seq 50); do c test -e /tmp/by-hand.sock || break; sleep 0.1; done
check "it removed its socket at exit" bash -c "! nsenter -t $init -a test -e /tmp/by-hand.sock"

say "apt purge"
check "purge" bash -c "nsenter -t $init -a env DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq steadytext > $work/purge.log 2>&1 || { cat $work/purge.log; false; }"
check "no unit left" bash -c "! nsenter -t $init -a ls /lib/systemd/system/steadytext.socket /etc/systemd/system/sockets.target.wants/steadytext.socket 2>/dev/null"
check "no user or group left" bash -c "! nsenter -t $init -a getent passwd steadytext && ! nsenter -t $init -a getent group steadytext"
check "no state or config left" bash -c "! nsenter -t $init -a ls -d /var/lib/steadytext /etc/steadytext 2>/dev/null"

c systemctl poweroff >/dev/null 2>&1 || true
wait "$nspawn" 2>/dev/null || true

say "figures"
echo "systemd-analyze security steadytext.service: $exposure"
echo "time from 'systemctl start steadytext.socket' to the first answer (activation, model load, 48 tokens): ${first_answer} s"
echo "package size: $deb_size bytes ($(basename "$deb"))"
echo
echo "e2e: $pass passed, $fail failed"
[ "$fail" = 0 ]
