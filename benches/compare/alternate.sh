#!/usr/bin/env bash
# Two builds of the real-server bench, alternated round after round: the
# way to tell whether a change to the stack moves a real server, on a
# machine whose own rate drifts by more than most changes weigh. Both
# processes run pinned to CPU 0 (`REAL_SERVER_LISTEN=1`): the first build
# serves `serve` and `stack`, the second `stack`; each round, from CPU 1,
# wrk (`-t1 -c64`) or h2load (`-c8 -m8`) loads `serve`, the first build's
# stack and the second's in turn. Prints each round, then the medians of
# the stacks' requests per second over the same round's `serve`, and of
# the second stack's over the first's in the same round (with the middle
# half of those ratios, first to third quartile).
#
#   BEFORE=/tmp/real_server-before AFTER=target/release/deps/real_server-<hash> \
#       benches/compare/alternate.sh
#   ROUNDS=20 SECS=3 PROTOS="h1 h2" ONLY=stack ...   (the defaults)
#
# Needs wrk, h2load and taskset (Debian: `apt-get install wrk
# nghttp2-client util-linux`), two CPUs or more. Each build reads
# `production.toml` from the checkout it was built in.
set -euo pipefail

ROUNDS=${ROUNDS:-20}
SECS=${SECS:-3}
PROTOS=${PROTOS:-"h1 h2"}
ONLY=${ONLY:-stack}
: "${BEFORE:?BEFORE=<a build of the real_server bench>}" "${AFTER:?AFTER=<another build>}"
for tool in wrk h2load taskset; do
    command -v "$tool" > /dev/null || {
        echo "alternate.sh: $tool not found (Debian: apt-get install wrk nghttp2-client util-linux)" >&2
        exit 2
    }
done
BEFORE=$(realpath "$BEFORE")
AFTER=$(realpath "$AFTER")
. "$(dirname "$0")/servers.sh"
enter_root "$0"

start() {
    local bin=$1 only=$2 dir=$3
    mkdir -p "$dir"
    REAL_SERVER_LISTEN=1 REAL_SERVER_ONLY="$only" taskset -c 0 "$bin" --bench > "$dir/servers" 2> "$dir/log" &
    echo $!
}
pids=()
pids+=("$(start "$BEFORE" "serve,$ONLY" "$work/a")")
pids+=("$(start "$AFTER" "$ONLY" "$work/b")")
trap 'kill "${pids[@]}" 2> /dev/null; rm -rf "$work"' EXIT
wait_for_servers "$work/a/log" "$work/a/servers" "serve,$ONLY" alternate.sh 100
wait_for_servers "$work/b/log" "$work/b/servers" "$ONLY" alternate.sh 100
url() { awk -F'\t' -v n="$2" '$2 == n {print $1}' "$1/servers"; }
serve=$(url "$work/a" serve)
before=$(url "$work/a" "$ONLY")
after=$(url "$work/b" "$ONLY")
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), both processes on CPU 0, load on CPU 1, $ROUNDS rounds of ${SECS}s"

rate() {
    if [ "$1" = h1 ]; then
        taskset -c 1 wrk -t1 -c64 -d"${SECS}s" "$2" < /dev/null | awk '/Requests\/sec:/ {print $2}'
    else
        taskset -c 1 h2load -c8 -m8 -D "$SECS" "$2" < /dev/null 2>&1 | awk '/^finished in/ {print $4}'
    fi
}

for proto in $PROTOS; do
    echo "## $proto"
    : > "$work/rows"
    for u in "$serve" "$before" "$after"; do SECS=1 rate "$proto" "$u" > /dev/null; done
    for round in $(seq "$ROUNDS"); do
        s=$(rate "$proto" "$serve")
        b=$(rate "$proto" "$before")
        a=$(rate "$proto" "$after")
        printf '%s\t%s\t%s\t%s\n' "$round" "$s" "$b" "$a" | tee -a "$work/rows"
    done
    awk -F'\t' '
        function sort(a, n,   i, j, t) {
            for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] > a[j]; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
        }
        function q(a, n, p,   k) { k = 1 + (n - 1) * p; return a[int(k)] + (a[int(k) + (k > int(k))] - a[int(k)]) * (k - int(k)) }
        { n++; x[n] = $3 / $2; y[n] = $4 / $2; z[n] = $4 / $3 }
        END {
            sort(x, n); sort(y, n); sort(z, n)
            printf "| before x serve | after x serve | after / before, same round |\n|---|---|---|\n"
            printf "| %.3fx (%.3fx to %.3fx) | %.3fx (%.3fx to %.3fx) | %.3fx (%.3fx to %.3fx) |\n",
                q(x, n, .5), q(x, n, .25), q(x, n, .75), q(y, n, .5), q(y, n, .25), q(y, n, .75), q(z, n, .5), q(z, n, .25), q(z, n, .75)
        }' "$work/rows"
done
