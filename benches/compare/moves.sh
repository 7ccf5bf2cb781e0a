#!/usr/bin/env bash
# Bytes moved per request: the calls of glibc's `memcpy`/`memmove` of 128
# bytes or more (a move the compiler does not do inline: a future, a
# request or a response moved whole), counted under gdb. Like instruction
# counts, it does not move with the machine's load; unlike them, it weighs
# a move by its size (a 700-byte future copied is a few instructions).
#
#   benches/compare/moves.sh row stack rampart_stack     # a per-call bench row
#   benches/compare/moves.sh server stack h2            # a real_server server
#   benches/compare/moves.sh server serve h1
#   BIN=/tmp/real_server-before benches/compare/moves.sh server stack h2
#
# `row <bench> <row>`: a row of a bench that takes `BENCH_CALLS=<row>,<n>`
# (circuit_breaker, probe, stack): the difference of 300 and 100 calls,
# divided by 200. `server <name> [h1|h2]`: one server of the real_server
# bench (`REAL_SERVER_LISTEN=1`), sent 100 and then 300 requests over one
# keep-alive connection by h2load (`--h1` for HTTP/1.1), the difference
# divided by 200 (the connection's own moves cancel out). Prints the moves
# per request and their bytes, then the sites of the larger run, most
# bytes first, as "calls bytes-each site" (sites are named by function
# without debug info; with line tables, e.g. `--config
# 'profile.bench.package.tower-rampart.debug="line-tables-only"'`, by line).
#
# Needs gdb (Debian: `apt-get install gdb`) and, for `server`, h2load
# (`nghttp2-client`).
set -euo pipefail

mode=${1:-}
case "$mode" in
    row) [ $# -eq 3 ] || { echo "usage: moves.sh row <bench> <row>" >&2; exit 2; } ;;
    server) [ $# -ge 2 ] || { echo "usage: moves.sh server <name> [h1|h2]" >&2; exit 2; } ;;
    *) echo "usage: moves.sh row <bench> <row> | server <name> [h1|h2]" >&2; exit 2 ;;
esac
command -v gdb > /dev/null || { echo "moves.sh: gdb not found (Debian: apt-get install gdb)" >&2; exit 2; }

. "$(dirname "$0")/servers.sh"
enter_root "$0"

bench=$([ "$mode" = row ] && echo "$2" || echo real_server)
bin=$(bench_binary "$bench" moves.sh "$work")

# Every variant glibc may pick for this CPU; the one picked is hit.
cat > "$work/gdb" << 'EOF'
set pagination off
set breakpoint pending on
set $moves = 0
set $bytes = 0
define count
  set $moves = $moves + 1
  set $bytes = $bytes + $rdx
  printf "MOVE %lu ", $rdx
  info symbol *(void**)$rsp
  continue
end
EOF
for v in avx512 evex avx sse2; do
    for f in memmove memcpy; do
        printf 'break __%s_%s_unaligned_erms if $rdx >= 128\ncommands\nsilent\ncount\nend\n' "$f" "$v" >> "$work/gdb"
    done
done

# One run: "moves bytes", the sites in $work/sites.$1.
measure() {
    local n=$1
    if [ "$mode" = row ]; then
        cp "$work/gdb" "$work/gdb.$n"
        printf 'run\nprintf "TOTAL %%d %%d\\n", $moves, $bytes\n' >> "$work/gdb.$n"
        BENCH_CALLS="$3,$n" gdb -batch -x "$work/gdb.$n" --args "$bin" --bench > "$work/out.$n" 2>&1
    else
        REAL_SERVER_LISTEN=1 REAL_SERVER_ONLY="$2" "$bin" --bench > "$work/servers" 2> "$work/log" &
        local pid=$!
        for _ in $(seq 100); do
            grep -q "serving until killed" "$work/log" 2> /dev/null && break
            sleep 0.1
        done
        local url
        url=$(cut -f1 "$work/servers" | head -1)
        [ -n "$url" ] || { cat "$work/log" >&2; kill $pid; exit 2; }
        cp "$work/gdb" "$work/gdb.$n"
        printf 'continue\nprintf "TOTAL %%d %%d\\n", $moves, $bytes\ndetach\n' >> "$work/gdb.$n"
        gdb -batch -p $pid -x "$work/gdb.$n" > "$work/out.$n" 2>&1 &
        local g=$!
        # gdb has attached and set its breakpoints once the server stops
        # answering at once; then the requests, then an interrupt.
        sleep 3
        local h1=""
        [ "${3:-h2}" = h1 ] && h1=--h1
        h2load $h1 -n "$n" -c 1 -m 1 "$url" > "$work/load.$n" 2>&1
        grep -q "succeeded, 0 failed\|$n succeeded" "$work/load.$n" || { cat "$work/load.$n" >&2; }
        kill -INT $pid
        wait $g || true
        kill $pid 2> /dev/null || true
        wait $pid 2> /dev/null || true
    fi
    # "MOVE <bytes> <symbol> + <offset> in section ...": "<bytes>\t<site>".
    grep "^MOVE" "$work/out.$n" | sed 's/ in section .*//; s/::h[0-9a-f]\{16\}//; s/^MOVE \([0-9]*\) /\1\t/' > "$work/sites.$n" || true
    awk '/^TOTAL/ {print $2, $3}' "$work/out.$n"
}

read -r m1 b1 < <(measure 100 "${@:2}")
read -r m2 b2 < <(measure 300 "${@:2}")
if [ -z "${m1:-}" ] || [ -z "${m2:-}" ]; then
    echo "moves.sh: gdb counted nothing (see $work)" >&2
    trap - EXIT
    exit 1
fi
per=$([ "$mode" = row ] && echo call || echo request)
awk -v m1="$m1" -v b1="$b1" -v m2="$m2" -v b2="$b2" -v what="${*:2}" -v per="$per" \
    'BEGIN {printf "%s: %.1f moves of 128 bytes or more per %s, %.0f bytes\n", what, (m2 - m1) / 200, per, (b2 - b1) / 200}'
# Per site of the larger run: calls, bytes each, the site; most bytes first.
awk -F'\t' '{n[$2 "\t" $1]++} END {for (k in n) {split(k, f, "\t"); printf "%d\t%6d x %5d  %s\n", n[k] * f[2], n[k], f[2], f[1]}}' "$work/sites.300" |
    sort -t$'\t' -k1,1nr | cut -f2- | head -"${SITES:-25}"
