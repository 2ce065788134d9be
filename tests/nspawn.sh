# Shell helpers of the end-to-end tests that boot systemd-nspawn machines (sourced).

# Prints the pid of the systemd that the systemd-nspawn process $1 booted, once it runs; on
# failure shows the console log $2 and fails.
booted_init() {
    local nspawn=$1 console=$2 init=""
    for _ in $(seq 100); do
        init=$(pgrep -P "$nspawn" | head -1 || true)
        [ -n "$init" ] && [ "$(readlink /proc/"$init"/exe 2>/dev/null)" = /usr/lib/systemd/systemd ] && break
        init=""
        sleep 0.1
    done
    [ -n "$init" ] || { cat "$console" >&2; echo "error: the machine did not boot" >&2; return 1; }
    echo "$init"
}
