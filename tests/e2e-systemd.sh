#!/bin/bash
# End-to-end test of the Debian package on a real systemd: build the .deb, boot a Debian 12
# container with systemd-nspawn, install the package, and use it as an admin and users would.
# Needs root. The debootstrapped rootfs is cached in $E2E_CACHE between runs. E2E_DEB=FILE tests
# that .deb (e.g. the offline build of tests/source-package.sh) instead of building one.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
models=${STEADYTEXT_MODEL_DIR:-$here/../shared/models}
# Commands in the container (nsenter) inherit this environment: what `make test` exports for the
# checkout (model folder, ONNX Runtime path) and the caller's caches must not reach the package.
# shellcheck disable=SC2046
unset ORT_DYLIB_PATH HF_ENDPOINT HF_TOKEN XDG_CACHE_HOME XDG_CONFIG_HOME XDG_STATE_HOME $(env | sed -n 's/^\(STEADYTEXT_[A-Z_]*\)=.*/\1/p')
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

install_missing debootstrap:debootstrap systemd-nspawn:systemd-container dpkg-buildpackage:dpkg-dev dh:debhelper lintian:lintian rpmbuild:rpm \
    apt-ftparchive:apt-utils gpg:gpg

say "unit files: systemd-analyze verify and security gates"
units=$(mktemp -d)
mkdir "$units/user"
for u in systemd/steadytext.socket systemd/steadytext-tcp.socket systemd/steadytext-http.socket systemd/steadytext-ollama.socket systemd/steadytext-zmq.socket systemd/steadytext.service systemd/user/steadytext.socket systemd/user/steadytext.service; do
    sed "s|/usr/bin/steadytextd|$here/target/release/steadytextd|; s|/usr/bin/stctl|$here/target/release/stctl|" "$u" > "$units/${u#systemd/}"
done
cargo build --release --locked --bins -q
check "systemd-analyze verify" systemd-analyze verify --man=no "$units"/steadytext.socket "$units"/steadytext-tcp.socket "$units"/steadytext-http.socket "$units"/steadytext-ollama.socket "$units"/steadytext-zmq.socket "$units"/steadytext.service
check "systemd-analyze verify --user (the per-user units)" env XDG_RUNTIME_DIR="$units" systemd-analyze verify --user --man=no "$units"/user/steadytext.socket "$units"/user/steadytext.service
# The threshold is in tenths: 10 = exposure 1.0.
check "systemd-analyze security --offline (exposure at most 1.0)" \
    systemd-analyze security --offline=true --threshold=10 --no-pager "$units"/steadytext.service
rm -rf "$units"

if [ -n "${E2E_DEB:-}" ]; then
    say "the .deb to test: $E2E_DEB"
    deb=$E2E_DEB
else
    say "building the .deb (from this checkout)"
    rm -f ../steadytext_*.deb ../steadytext-dbgsym_*.deb ../steadytext_*.changes ../steadytext_*.buildinfo
    dpkg-buildpackage -b -us -uc -d > target/dpkg-buildpackage.log 2>&1 || { tail -30 target/dpkg-buildpackage.log; exit 1; }
    rm -rf target/deb
    mkdir -p target/deb
    mv ../steadytext_*.deb ../steadytext-dbgsym_*.deb ../steadytext_*.changes ../steadytext_*.buildinfo target/deb/
    deb=$(ls target/deb/steadytext_*_amd64.deb)
fi
deb_size=$(stat -c %s "$deb")
check "lintian --pedantic: no tag but the justified overrides" \
    bash -c "lintian --allow-root --pedantic -E --fail-on error,warning,info,pedantic $deb > target/lintian.log 2>&1 || { cat target/lintian.log; false; }"

# Version N+1 for the upgrade test: the same package under a higher version (same maintainer
# scripts and units, as a point release would have).
version=$(dpkg-deb -f "$deb" Version)
next_version="$version+e2e1"
repack=$(mktemp -d)
dpkg-deb -R "$deb" "$repack/pkg"
sed -i "s/^Version: .*/Version: $next_version/" "$repack/pkg/DEBIAN/control"
rm -rf target/deb-next
mkdir -p target/deb-next
next_deb="target/deb-next/steadytext_${next_version}_amd64.deb"
dpkg-deb -Zxz -z1 -b "$repack/pkg" "$next_deb" >/dev/null
rm -rf "$repack"

say "building the .rpm"
rpmtop=$(mktemp -d)
if rpmbuild -bb --with checkout --define "_topdir $rpmtop" --define "_sourcedir $here" --define "_builddir $here" --nodeps rpm/steadytext.spec > target/rpmbuild.log 2>&1; then
    ok "rpmbuild -bb --with checkout rpm/steadytext.spec ($(find "$rpmtop/RPMS" -name '*.rpm' -printf '%f %s bytes\n' | head -1))"
else
    tail -20 target/rpmbuild.log; bad "rpmbuild"
fi
rm -rf "$rpmtop"

say "Debian 12 rootfs"
ensure_rootfs "$cache"
base=$(rootfs_path "$cache")
work=$(mktemp -d /var/tmp/steadytext-e2e.XXXXXX)
root="$work/root"
cp -a "$base" "$root"
# A signed apt repository with version N, on the machine's disk; the machine knows only it.
packaging/apt-repo.sh "$root/srv/steadytext" "$work/gnupg" "$deb" >/dev/null
cp "$root/srv/steadytext/steadytext.gpg" "$root/usr/share/keyrings/steadytext.gpg"
rm -f "$root/etc/apt/sources.list"
echo "deb [signed-by=/usr/share/keyrings/steadytext.gpg] file:/srv/steadytext ./" > "$root/etc/apt/sources.list.d/steadytext.list"
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
state=$(booted_state "$init")
check "container booted ($state)" test "$state" = running

say "apt install steadytext (from a signed repository)"
check "apt update verifies the repository's signature" bash -c "nsenter -t $init -a apt-get update > $work/update.log 2>&1 && ! grep -qi 'not signed\|NO_PUBKEY\|insecure' $work/update.log || { cat $work/update.log; false; }"
check "apt install steadytext" bash -c "nsenter -t $init -a env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq steadytext > $work/install.log 2>&1 || { cat $work/install.log; false; }"
check "version $version installed" test "$(c dpkg-query -W -f '${Version}' steadytext)" = "$version"

ref="$models/SmolLM2-135M-Instruct/reference_ort.json"
prompt=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["cases"][0]["prompt"])' "$ref")
expected=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["cases"][0]["greedy_text"])' "$ref")

check "steadytext.socket is enabled and listening" c systemctl is-active --quiet steadytext.socket
check "the service waits for its first connection" bash -c "! nsenter -t $init -a systemctl is-active --quiet steadytext.service"
check "systemd-analyze verify (installed units)" c systemd-analyze verify steadytext.socket steadytext.service
for page in stctl.1 steadytextd.8 steadytext.toml.5; do
    sec=${page##*.}
    check "man -l renders $page without warnings" bash -c "test -z \"\$(nsenter -t $init -a man --warnings -l /usr/share/man/man$sec/$page.gz 2>&1 >/dev/null)\""
done
exposure=$(c systemd-analyze security steadytext.service --no-pager | tail -1)
echo "$exposure"

say "a fresh install has no models"
check "the daemon starts without models and says what to pull" bash -c "! nsenter -t $init -a timeout 120 stctl --daemon-only generate hello > $work/fresh.out 2>&1 && grep -q 'stctl models pull small' $work/fresh.out || { cat $work/fresh.out; false; }"
fresh_state="$(c systemctl show -P ActiveState steadytext.service) $(c systemctl show -P NRestarts steadytext.service) $(c systemctl show -P Result steadytext.service)"
check "it stays up, never restarted (ActiveState NRestarts Result: $fresh_state)" test "$fresh_state" = "active 0 success"
check "stctl status answers" c stctl --daemon-only status
# `stctl models pull small` and `large` from a Hub-like server on this machine (the container
# shares its network): each alias's repository, pinned revision and file layout (an
# onnxruntime-genai subfolder, whose files the pull brings to the model folder's top), holding the
# conformance zoo's model of the alias's architecture in the genai layout (tools/zoo: Qwen3 for
# small, Llama 3.2 for large); each then answers as Python onnxruntime did on that file.
zoo=$(STEADYTEXT_SHARED_MODEL="$models/SmolLM2-135M-Instruct" "$here/tools/zoo/build.sh")
pull_alias() { # ALIAS ZOO_FOLDER
    hub_root="$work/hub-$1"
    repo=$(target/release/stctl models pull --list | awk -v a="$1" '$1 == a {print $2}')
    file=$(target/release/stctl models pull --list | awk -v a="$1" '$1 == a {print $3}')
    mkdir -p "$hub_root/$(dirname "$file")"
    for f in "$zoo/$2"/*; do
        case "$(basename "$f")" in reference.json) ;; *) cp "$f" "$hub_root/$(dirname "$file")/" ;; esac
    done
    python3 tests/python/fake_hub.py "$hub_root" "${repo%@*}" "${repo#*@}" > "$work/hub-$1.port" &
    hub_pid=$!
    for _ in $(seq 50); do [ -s "$work/hub-$1.port" ] && break; sleep 0.1; done
    check "stctl models pull $1 (as root, from the Hub-like server: $2 in ${file%/*})" bash -c "nsenter -t $init -a env HF_ENDPOINT=http://127.0.0.1:$(cat "$work/hub-$1.port") stctl models pull $1 > $work/pull-$1.log 2>&1 || { cat $work/pull-$1.log; false; }"
    kill "$hub_pid"
}
answers_as_python() { # ZOO_FOLDER [STCTL ARGS...]: the first reference case's greedy ids
    folder=$1
    shift
    case_json=$(python3 -c 'import json,sys; c=json.load(open(sys.argv[1]))["cases"][0]; print(json.dumps([c["prompt"], c["max_new_tokens"], c["greedy_ids"]]))' "$zoo/$folder/reference.json")
    zoo_prompt=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])[0])' "$case_json")
    zoo_max=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])[1])' "$case_json")
    got=$(c stctl --daemon-only generate "$zoo_prompt" --max-new-tokens "$zoo_max" --json "$@" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token_ids"])' || true)
    test "$got" = "$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])[2])' "$case_json")"
}
pull_alias small qwen3-genai
pull_alias large llama3-genai
check "systemctl reload steadytext" c systemctl reload steadytext.service
check "the pulled small is the default generation model and gives Python onnxruntime's ids" answers_as_python qwen3-genai
check "the pulled large gives Python onnxruntime's ids (--model large)" answers_as_python llama3-genai --model large

c cp -r /root/models/SmolLM2-135M-Instruct /root/models/all-MiniLM-L6-v2 /var/lib/steadytext/models/
c useradd -m -G steadytext alice
c useradd -m bob
check "models are root:steadytext 0750 in a 0750 state folder; snapshots in a 0700 cache folder" \
    test "$(c stat -c '%U:%G %a' /var/lib/steadytext /var/lib/steadytext/models /var/cache/steadytext | tr '\n' ' ')" = "steadytext:steadytext 750 root:steadytext 750 steadytext:steadytext 700 "
check "a group member's direct mode reads the system models (its default folder)" \
    bash -c "nsenter -t $init -a runuser -u alice -- stctl --no-daemon embed hello | grep -q '^\['"
check "a user outside the group is told the folder is not readable (not that it is missing)" \
    bash -c "! nsenter -t $init -a runuser -u bob -- stctl --no-daemon embed hello 2>$work/bob-direct.err && grep -q 'permission denied' $work/bob-direct.err || { cat $work/bob-direct.err; false; }"
check "a group member may not write there, and is told who may" \
    bash -c "! nsenter -t $init -a runuser -u alice -- stctl models import /var/lib/steadytext/models/all-MiniLM-L6-v2 --name copy --model-dir /var/lib/steadytext/models 2>$work/alice-write.err && grep -q 'installed by the folder.s owner' $work/alice-write.err || { cat $work/alice-write.err; false; }"

say "generate and embed as a user in group steadytext"
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
check "systemctl reload steadytext (stctl reload: RELOADING=1, then READY=1)" c systemctl reload steadytext.service
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

say "Ollama's API (steadytext-ollama.socket)"
# GET /api/tags with KEY over bash's /dev/tcp (the container has no HTTP client): the answer.
ollama_tags() {
    c bash -c 'exec 3<>/dev/tcp/127.0.0.1/11434 && printf "GET /api/tags HTTP/1.0\r\nAuthorization: Bearer %s\r\n\r\n" "$1" >&3 && cat <&3' _ "$1"
}
# The first connection starts the service; it answers 503 until the models are loaded.
ollama_lists_models() {
    for _ in $(seq 120); do
        ollama_tags e2e-http-key-0123456789abcdef 2>/dev/null | grep -q '"name":"SmolLM2-135M-Instruct"' && return 0
        sleep 0.5
    done
    return 1
}
check "systemctl enable --now steadytext-ollama.socket" c systemctl enable --now steadytext-ollama.socket
check "Ollama's /api/tags on 127.0.0.1:11434 lists the models" ollama_lists_models
ollama_refuses_a_wrong_key() { ollama_tags wrong | grep -q '^{"error":"missing or wrong API key'; }
check "Ollama's API without the key is refused, in Ollama's shape" ollama_refuses_a_wrong_key
c systemctl stop steadytext.service
c systemctl disable --now steadytext-ollama.socket

say "SteadyText's protocol (steadytext-zmq.socket)"
# A ZMTP 3.1 REQ peer by hand (greeting, READY, the empty delimiter and SteadyText's ping) over
# bash's /dev/tcp: the answer (134 bytes: greeting, READY, delimiter, reply) holds "pong". The
# first connection starts the service: tried again until it answers.
zmq_ping() {
    c bash -c 'exec 3<>/dev/tcp/127.0.0.1/5555 || exit 1
        printf "\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7f\x03\x01NULL" >&3; head -c 48 /dev/zero >&3
        printf "\x04\x19\x05READY\x0bSocket-Type\x00\x00\x00\x03REQ" >&3
        printf "\x01\x00\x00\x26{\"method\":\"ping\",\"params\":{},\"id\":\"e\"}" >&3
        timeout 20 head -c 134 <&3'
}
zmq_pings() {
    for _ in $(seq 30); do
        zmq_ping 2>/dev/null | grep -aq '"result":"pong"' && return 0
        sleep 1
    done
    zmq_ping | od -c | head -5
    c journalctl -u steadytext --no-pager -n 20
    return 1
}
check "systemctl enable --now steadytext-zmq.socket" c systemctl enable --now steadytext-zmq.socket
check "SteadyText's ping on 127.0.0.1:5555 is answered (socket-activated, no key)" zmq_pings
c systemctl stop steadytext.service
c systemctl disable --now steadytext-zmq.socket
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

say "per-user daemon (systemctl --user, a lingering user)"
c useradd -m carol
carol_uid=$(c id -u carol)
c loginctl enable-linger carol
for _ in $(seq 100); do c test -S "/run/user/$carol_uid/systemd/private" && break; sleep 0.1; done
u() { c runuser -u carol -- env XDG_RUNTIME_DIR="/run/user/$carol_uid" "$@"; }
u mkdir -p /home/carol/.local/state/steadytext/models
c cp -r /root/models/SmolLM2-135M-Instruct /root/models/all-MiniLM-L6-v2 /home/carol/.local/state/steadytext/models/
c chown -R carol: /home/carol/.local/state/steadytext/models
check "systemctl --user enable --now steadytext.socket" u systemctl --user enable --now steadytext.socket
check "it listens on \$XDG_RUNTIME_DIR/steadytext/steadytext.sock" c test -S "/run/user/$carol_uid/steadytext/steadytext.sock"
user_got=$(u stctl --daemon-only generate "$prompt" --max-new-tokens 48 || true)
check "stctl finds the user's daemon (carol is not in group steadytext) and gets the reference text" test "$user_got" = "$expected"
check "the daemon runs as carol under her user manager" bash -c "test \"\$(nsenter -t $init -a stat -c %U /proc/\$(nsenter -t $init -a runuser -u carol -- env XDG_RUNTIME_DIR=/run/user/$carol_uid systemctl --user show -P MainPID steadytext.service))\" = carol"
u systemctl --user stop steadytext.service
check "its cache snapshot is in \$XDG_CACHE_HOME/steadytext, carol's, mode 0600" \
    bash -c "nsenter -t $init -a sh -c 'stat -c \"%U %a\" /home/carol/.cache/steadytext/cache-*.snapshot' | grep -qx 'carol 600'"
user_cached=$(u stctl --daemon-only generate "$prompt" --max-new-tokens 48 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["cached"])')
check "started again by its socket, it answers from that snapshot" test "$user_cached" = True
u systemctl --user disable --now steadytext.socket
check "disabled, the user socket is gone and stctl falls back to the system one (refused: not in the group)" \
    bash -c "! nsenter -t $init -a test -e /run/user/$carol_uid/steadytext/steadytext.sock && ! nsenter -t $init -a runuser -u carol -- env XDG_RUNTIME_DIR=/run/user/$carol_uid stctl --daemon-only ping 2>&1 | grep -q pong"
c loginctl disable-linger carol

say "upgrade $version -> $next_version under load"
cat > "$root/usr/local/bin/e2e-load" <<'SH'
#!/bin/sh
# Client $1 streams generations until ~/load/stop exists; a failed request is retried once.
i=$1 n=0 out=$HOME/load
while [ ! -e "$out/stop" ]; do
    n=$((n + 1))
    p="Upgrade test, client $i, request $n: name one colour."
    if stctl --daemon-only generate "$p" --max-new-tokens 24 >/dev/null 2>>"$out/$i.err"; then echo ok
    elif sleep 1 && stctl --daemon-only generate "$p" --max-new-tokens 24 >/dev/null 2>>"$out/$i.err"; then echo retried
    else echo failed; fi
done > "$out/$i.log"
SH
chmod 0755 "$root/usr/local/bin/e2e-load"
c runuser -u alice -- stctl --daemon-only ping >/dev/null
socket_since=$(c systemctl show -P ActiveEnterTimestampMonotonic steadytext.socket)
pid_before=$(c systemctl show -P MainPID steadytext.service)
c runuser -u alice -- mkdir -p /home/alice/load
loaders=""
for i in 1 2 3 4; do
    nsenter -t "$init" -a runuser -u alice -- env HOME=/home/alice /usr/local/bin/e2e-load "$i" &
    loaders="$loaders $!"
done
sleep 5
packaging/apt-repo.sh "$root/srv/steadytext" "$work/gnupg" "$next_deb" >/dev/null
t0=$(date +%s.%N)
check "apt update && apt upgrade" bash -c "nsenter -t $init -a sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get upgrade -y -qq' > $work/upgrade.log 2>&1 || { cat $work/upgrade.log; false; }"
t1=$(date +%s.%N)
upgrade_s=$(python3 -c "print(f'{($t1 - $t0):.1f}')")
sleep 5
c runuser -u alice -- touch /home/alice/load/stop
wait $loaders
load_ok=$(cat "$root"/home/alice/load/?.log | grep -cx ok || true)
load_retried=$(cat "$root"/home/alice/load/?.log | grep -cx retried || true)
load_failed=$(cat "$root"/home/alice/load/?.log | grep -cx failed || true)
check "version $next_version installed" test "$(c dpkg-query -W -f '${Version}' steadytext)" = "$next_version"
check "every client got its answers: $load_ok first time, $load_retried after a retry, $load_failed failed" \
    bash -c "[ $load_failed = 0 ] && [ $((load_ok + load_retried)) -ge 8 ] || { cat $root/home/alice/load/?.err; false; }"
check "the socket kept listening through the upgrade" test "$(c systemctl show -P ActiveEnterTimestampMonotonic steadytext.socket)" = "$socket_since"
pid_after=$(c systemctl show -P MainPID steadytext.service)
check "the service was restarted onto the new version" bash -c "[ '$pid_after' != '$pid_before' ] && [ '$pid_after' != 0 ]"
upgraded_cached=$(c runuser -u alice -- stctl --daemon-only generate "$prompt" --max-new-tokens 48 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["cached"])')
check "the cache snapshot survived the upgrade" test "$upgraded_cached" = True
check "systemctl status is clean (active, result success, no automatic restart, no failed unit)" \
    bash -c "nsenter -t $init -a systemctl is-active --quiet steadytext.service && [ \"\$(nsenter -t $init -a systemctl show -P Result steadytext.service)\" = success ] && [ \"\$(nsenter -t $init -a systemctl show -P NRestarts steadytext.service)\" = 0 ] && [ -z \"\$(nsenter -t $init -a systemctl --failed --no-legend)\" ]"

say "reinstall and downgrade"
check "apt install --reinstall steadytext" bash -c "nsenter -t $init -a env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --reinstall steadytext > $work/reinstall.log 2>&1 || { cat $work/reinstall.log; false; }"
check "it serves after the reinstall" c runuser -u alice -- stctl --daemon-only ping
check "apt install steadytext=$version --allow-downgrades" bash -c "nsenter -t $init -a env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --allow-downgrades steadytext=$version > $work/downgrade.log 2>&1 || { cat $work/downgrade.log; false; }"
downgraded_got=$(c runuser -u alice -- stctl --daemon-only generate "$prompt" --max-new-tokens 48 || true)
check "after the downgrade it serves the same text" test "$downgraded_got" = "$expected"

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
check "cache snapshots and the packaged configuration removed" \
    bash -c "! nsenter -t $init -a sh -c 'ls /var/cache/steadytext /etc/steadytext/steadytext.toml' 2>/dev/null"
check "the models and the API key the administrator added stay, and purge says so" \
    bash -c "nsenter -t $init -a test -d /var/lib/steadytext/models/SmolLM2-135M-Instruct && nsenter -t $init -a test -f /etc/steadytext/api-key && grep -q 'left /var/lib/steadytext (.*models' $work/purge.log && grep -q 'left /etc/steadytext (.*api-key' $work/purge.log || { cat $work/purge.log; false; }"
check "the system user and group stay (Debian practice)" bash -c "nsenter -t $init -a getent passwd steadytext >/dev/null && nsenter -t $init -a getent group steadytext >/dev/null"

c systemctl poweroff >/dev/null 2>&1 || true
wait "$nspawn" 2>/dev/null || true

say "figures"
echo "systemd-analyze security steadytext.service: $exposure"
echo "time from 'systemctl start steadytext.socket' to the first answer (activation, model load, 48 tokens): ${first_answer} s"
echo "package size: $deb_size bytes ($(basename "$deb"))"
echo "upgrade $version -> $next_version under load (4 streaming clients): apt upgrade took ${upgrade_s} s; requests: $load_ok answered first time, $load_retried after a retry, $load_failed failed"
echo
echo "e2e: $pass passed, $fail failed"
[ "$fail" = 0 ]
