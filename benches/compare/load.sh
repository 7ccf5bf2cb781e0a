#!/usr/bin/env bash
# The real-server bench's servers under outside load generators: wrk
# (HTTP/1.1, 64 keep-alive connections) and h2load (h2c, 8 connections x 8
# streams), the numbers of issue 14's first measurement. The servers are
# those of `benches/compare/benches/real_server.rs` (`axum::serve`, our `serve` loop,
# the production stack as `examples/production.rs` builds it: config file,
# Prometheus recorder, limits raised so that nothing is refused, and `peers`:
# the same protections from the crates people use instead), started in
# one process with `REAL_SERVER_LISTEN=1`, the server thread pinned to CPU
# 0; the load generator runs pinned to CPU 1. Servers are alternated round
# after round, so that the machine's drift hits them alike.
#
# Needs: wrk and h2load (Debian: `apt-get install wrk nghttp2-client`),
# taskset, two CPUs or more.
#
#   benches/compare/load.sh                    # 5 rounds of 5 s per server and protocol
#   ROUNDS=15 SECS=5 PROTOS="h1" benches/compare/load.sh
#   REAL_SERVER_ABLATE=1 ONLY="serve,stack,stack lean" benches/compare/load.sh
#                                  # any REAL_SERVER_ONLY list; ablations need REAL_SERVER_ABLATE=1
#   BIN=/tmp/real_server-before ONLY="serve,stack" benches/compare/load.sh
#                                  # a build copied aside, to compare two builds run after run
#
# Prints one line per round and server, then per protocol the medians and
# the median of the per-round ratios against `serve` (requests per second,
# server CPU per request from /proc, and p99 for wrk or the mean request
# time for h2load, which prints no percentiles), with the middle half of
# the throughput ratios (first to third quartile), as the bench prints.
set -euo pipefail

ROUNDS=${ROUNDS:-5}
SECS=${SECS:-5}
PROTOS=${PROTOS:-"h1 h2"}
ONLY=${ONLY:-"axum::serve,serve,stack,peers"}

for tool in wrk h2load taskset; do
    command -v "$tool" > /dev/null || {
        echo "load.sh: $tool not found (Debian: apt-get install wrk nghttp2-client util-linux)" >&2
        exit 2
    }
done
if [ "$(nproc)" -lt 2 ]; then
    echo "load.sh: needs two CPUs (server on CPU 0, load generator on CPU 1)" >&2
    exit 2
fi

. "$(dirname "$0")/servers.sh"
enter_root "$0"
# `BIN=<path>`: run that build of the bench instead of building this
# checkout's (to compare two builds: copy the first one's binary aside).
# A build reads `production.toml` from the checkout it was built in.
bin=$(bench_binary real_server load.sh "$work")

REAL_SERVER_LISTEN=1 REAL_SERVER_ONLY="$ONLY" "$bin" --bench > "$work/servers" 2> "$work/log" &
pid=$!
trap 'kill $pid 2> /dev/null; rm -rf "$work"' EXIT
wait_for_servers "$work/log" "$work/servers" "$ONLY" load.sh 100
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(sed -n 's/.*server thread/server thread/p' "$work/log"), load generator on CPU 1, $ROUNDS rounds of ${SECS}s"

# The server thread's CPU time (user + system), in clock ticks.
ticks() {
    local t total=0
    for t in /proc/$pid/task/*; do
        if [ "$(cat "$t/comm" 2> /dev/null)" = rs-server ]; then
            read -r -a f < "$t/stat"
            # Fields 14 and 15 of `stat` (utime, stime); the thread's name
            # has no space, so splitting at spaces keeps the numbering.
            total=$((total + f[13] + f[14]))
        fi
    done
    echo "$total"
}
hz=$(getconf CLK_TCK)

# A duration as wrk and h2load print it (`836.00us`, `1.20ms`, `2s`) in us.
to_us='function to_us(v,   u) {
    u = 1
    if (v ~ /ms$/) u = 1000
    else if (v ~ /us$/) u = 1
    else if (v ~ /s$/) u = 1000000
    sub(/[a-z]+$/, "", v)
    return v * u
}'

# One run: prints "requests/s latency_us" (p99 for wrk, mean for h2load).
run() {
    local proto=$1 url=$2 out
    if [ "$proto" = h1 ]; then
        out=$(taskset -c 1 wrk -t1 -c64 -d"${SECS}s" --latency "$url" < /dev/null)
        awk "$to_us"' /Requests\/sec:/ {r=$2} /^ +99%/ {l=to_us($2)} END {printf "%.0f %.0f\n", r, l}' <<< "$out"
    else
        out=$(taskset -c 1 h2load -c8 -m8 -D "$SECS" "$url" < /dev/null 2>&1)
        # "time for request:  min  max  mean  sd  +/- sd"
        awk "$to_us"' /^finished in/ {r=$4} /^time for request:/ {l=to_us($6)} END {printf "%.0f %.0f\n", r, l}' <<< "$out"
    fi
}

for proto in $PROTOS; do
    if [ "$proto" = h1 ]; then echo "## HTTP/1.1 (wrk -t1 -c64, p99)"; else echo "## h2c (h2load -c8 -m8, mean request time)"; fi
    : > "$work/rows"
    # A warm-up run each, not reported.
    while IFS=$'\t' read -r url name; do SECS=1 run "$proto" "$url" > /dev/null; done < "$work/servers"
    for round in $(seq "$ROUNDS"); do
        while IFS=$'\t' read -r url name; do
            before=$(ticks)
            read -r rate lat < <(run "$proto" "$url")
            after=$(ticks)
            if ! awk -v r="${rate:-0}" 'BEGIN {exit !(r > 0)}'; then
                echo "load.sh: no requests served by \`$name\` at $url ($proto)" >&2
                exit 1
            fi
            cpu=$(awk -v t=$((after - before)) -v hz="$hz" -v r="$rate" -v s="$SECS" 'BEGIN {printf "%.2f", t / hz * 1e6 / (r * s)}')
            printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$name" "$rate" "$lat" "$cpu" | tee -a "$work/rows" |
                awk -F'\t' '{printf "| %s | `%s` | %s req/s | %s us | %s us CPU/req |\n", $1, $2, $3, $4, $5}'
        done < "$work/servers"
    done
    # Medians, and the median of the per-round ratios against `serve`
    # (a dash without `serve` among the servers).
    awk -F'\t' '
        function median(a, n,   i, j, t) {
            for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] > a[j]; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
            return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2
        }
        function median2(v, s, n,   r, x) {
            for (r = 1; r <= n; r++) x[r] = v[s, r]
            return median(x, n)
        }
        { rate[$2, $1] = $3; lat[$2, $1] = $4; cpu[$2, $1] = $5; if (!($2 in seen)) { seen[$2] = 1; names[++k] = $2 } if ($1 > rounds) rounds = $1 }
        END {
            print "| server | requests/s | x serve | middle half | latency | x serve | CPU per request | x serve |"
            print "|---|---|---|---|---|---|---|---|"
            for (i = 1; i <= k; i++) {
                s = names[i]
                if (!("serve" in seen)) {
                    printf "| `%s` | %.0f | - | - | %.0f us | - | %.2f us | - |\n", s, median2(rate, s, rounds), median2(lat, s, rounds), median2(cpu, s, rounds)
                    continue
                }
                for (r = 1; r <= rounds; r++) {
                    a[r] = rate[s, r]; b[r] = rate[s, r] / rate["serve", r]
                    c[r] = lat[s, r]; d[r] = lat[s, r] / lat["serve", r]
                    e[r] = cpu[s, r]; f[r] = cpu[s, r] / cpu["serve", r]
                }
                m = median(b, rounds)
                # The first and third quartiles of the ratios (sorted by median()).
                q1 = b[int((rounds - 1) * 0.25 + 0.5) + 1]; q3 = b[int((rounds - 1) * 0.75 + 0.5) + 1]
                printf "| `%s` | %.0f | %.3f | %.3f to %.3f | %.0f us | %.3f | %.2f us | %.3f |\n", s, median(a, rounds), m, q1, q3, median(c, rounds), median(d, rounds), median(e, rounds), median(f, rounds)
            }
        }' "$work/rows"
    echo
done
