#!/usr/bin/env bash
# What one request costs each server of the real-server bench, counted
# rather than timed: instructions, and the first-level cache misses of a
# simulated cache (instruction and data), per request, on the server
# thread, under callgrind. Like `moves.sh` and unlike `load.sh`, the
# numbers do not move with the machine's load (two runs agree to a few
# instructions), so a change to the stack is seen at once and by part.
#
#   benches/compare/per_request.sh                 # serve and stack, HTTP/1.1
#   PROTO=h2 benches/compare/per_request.sh        # h2c
#   REAL_SERVER_ABLATE=1 ONLY="serve,stack,stack lean,stack -rate_limit" benches/compare/per_request.sh
#   FUNCS=20 benches/compare/per_request.sh        # and where: by function, against `serve`
#   BIN=/tmp/real_server-before benches/compare/per_request.sh
#
# The servers are started once, in one process under `valgrind
# --tool=callgrind --cache-sim=yes` (`REAL_SERVER_LISTEN=1`); each is sent
# 500 requests to warm it, its counters are zeroed, then it is sent `N`
# requests (3000) by h2load (HTTP/1.1: 16 connections; h2c: 4 connections
# of 8 streams) and its counters are read (`callgrind_control`). The
# first server named is the baseline of the "over" column (`serve` by
# default). Kernel time is not counted, and under valgrind a request takes
# ~50x longer, so work done per unit of time (the clock's re-anchoring
# every millisecond, hyper's date header every second) weighs more per
# request than at full speed: compare rows of one run, not a row with the
# CPU time `load.sh` reports. The simulated caches are valgrind's (the
# host's sizes where it can read them); a miss is where the real CPU
# would fetch from its second-level cache, not what that costs.
#
# Needs valgrind (callgrind and `callgrind_control`), h2load and taskset
# (Debian: `apt-get install valgrind nghttp2-client util-linux`).
set -euo pipefail

PROTO=${PROTO:-h1}
N=${N:-3000}
ONLY=${ONLY:-"serve,stack"}
FUNCS=${FUNCS:-0}
for tool in valgrind callgrind_control h2load taskset; do
    command -v "$tool" > /dev/null || {
        echo "per_request.sh: $tool not found (Debian: apt-get install valgrind nghttp2-client util-linux)" >&2
        exit 2
    }
done
case "$PROTO" in
    h1) load=(h2load --h1 -c 16) ;;
    h2) load=(h2load -c 4 -m 8) ;;
    *) echo "per_request.sh: PROTO is h1 or h2" >&2; exit 2 ;;
esac
. "$(dirname "$0")/servers.sh"
enter_root "$0"
bin=$(bench_binary real_server per_request.sh "$work")

REAL_SERVER_LISTEN=1 REAL_SERVER_ONLY="$ONLY" valgrind --tool=callgrind --cache-sim=yes \
    --dump-instr=no --callgrind-out-file="$work/cg.out" "$bin" --bench > "$work/servers" 2> "$work/log" &
pid=$!
trap 'kill $pid 2> /dev/null; wait $pid 2> /dev/null; rm -rf "$work"' EXIT
# Sets `asked`, the servers in the order named.
wait_for_servers "$work/log" "$work/servers" "$ONLY" per_request.sh 600

# The busiest thread's counters since the last zeroing, per request:
# "Ir I1mr D1mr+D1mw".
counters() {
    callgrind_control -e "$pid" 2> /dev/null | awk -v n="$N" '
        /Totals:/ { for (i = 2; i <= NF; i++) col[$i] = i; next }
        /^ *Th / {
            line = $0; gsub(/,/, "", line); split(line, f, " +")
            # f[1] is empty (leading blanks), f[2] "Th", f[3] the number:
            # an event in column i of the header is field i + 2 here.
            ir = f[col["Ir"] + 2]
            if (ir + 0 > best) {
                best = ir + 0
                out = sprintf("%.0f %.1f %.1f", ir / n,
                    f[col["I1mr"] + 2] / n, (f[col["D1mr"] + 2] + f[col["D1mw"] + 2]) / n)
            }
        }
        END { print out }'
}

what=$([ "$PROTO" = h1 ] && echo "HTTP/1.1, h2load --h1 -c 16" || echo "h2c, h2load -c 4 -m 8")
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $what, $N requests per server after 500 to warm it; callgrind, the server thread"
echo "| server | instructions per request | over \`${asked[0]}\` | I1 misses | D1 misses |"
echo "|---|---|---|---|---|"
i=0
for name in "${asked[@]}"; do
    name=$(echo "$name" | sed 's/^ *//; s/ *$//')
    url=$(awk -F'\t' -v n="$name" '$2 == n {print $1}' "$work/servers")
    taskset -c 1 "${load[@]}" -n 500 "$url" > /dev/null 2>&1 || true
    callgrind_control -z "$pid" > /dev/null 2>&1
    taskset -c 1 "${load[@]}" -n "$N" "$url" > "$work/load" 2>&1 || true
    grep -q "$N succeeded" "$work/load" || { cat "$work/load" >&2; echo "per_request.sh: \`$name\` did not answer every request" >&2; exit 1; }
    read -r ir i1 d1 < <(counters)
    if [ $i -eq 0 ]; then
        base=$ir
        over="-"
    else
        over=$(awk -v a="$ir" -v b="$base" 'BEGIN {printf "%+d (%.2fx)", a - b, a / b}')
    fi
    printf '| `%s` | %s | %s | %s | %s |\n' "$name" "$ir" "$over" "$i1" "$d1"
    if [ "$FUNCS" -gt 0 ]; then
        callgrind_control --dump="server $i" "$pid" > /dev/null 2>&1
        # The newest dump is this server's.
        dump=$(ls -t "$work"/cg.out.* | head -1)
        # Each function's own instructions (a cost line right after
        # `calls=` is a call's inclusive cost: not the caller's own).
        awk '/^events:/ { for (k = 2; k <= NF; k++) if ($k == "Ir") ir = k }
            /^c?fn=/ {
                s = $0; sub(/^c?fn=/, "", s)
                if (match(s, /^\([0-9]+\)/)) {
                    id = substr(s, 1, RLENGTH); rest = substr(s, RLENGTH + 2)
                    if (rest != "") names[id] = rest
                    s = names[id]
                }
                if ($0 ~ /^fn=/) fn = s
                next
            }
            /^calls=/ { skip = 1; next }
            /^[0-9+*-]/ { if (skip) { skip = 0; next } own[fn] += $ir; next }
            END { for (f in own) if (own[f] > 0) print own[f] "\t" f }' "$dump" > "$work/funcs.$i"
    fi
    i=$((i + 1))
done

# Where: for each server after the first, the functions whose own
# instructions per request differ most from the first server's.
if [ "$FUNCS" -gt 0 ]; then
    for ((j = 1; j < i; j++)); do
        name=$(echo "${asked[$j]}" | sed 's/^ *//; s/ *$//')
        echo
        echo "\`$name\` against \`$(echo "${asked[0]}" | sed 's/^ *//; s/ *$//')\`, instructions per request by function (own, not callees'):"
        awk -F'\t' -v n="$N" 'NR == FNR { a[$2] = $1; next } { b[$2] = $1 }
            END {
                for (k in b) d[k] = (b[k] - a[k]) / n
                for (k in a) if (!(k in b)) d[k] = -a[k] / n
                for (k in d) printf "%+9.1f\t%s\n", d[k], k
            }' "$work/funcs.0" "$work/funcs.$j" | sort -t$'\t' -k1,1gr | head -"$FUNCS" | cut -c1-200
    done
fi
