# Shared by the scripts of `benches/compare` (sourced, not run): the move
# to the repository root, the bench binary to run, and the wait for the
# real-server bench's servers.

# Makes a relative `BIN` absolute (it is the caller's path), moves to the
# repository root (`$1` is the calling script's `$0`) and sets `work` to a
# scratch directory, removed on exit.
enter_root() {
    if [ -n "${BIN:-}" ] && [ "${BIN#/}" = "$BIN" ]; then
        BIN=$PWD/$BIN
    fi
    cd "$(dirname "$1")/../.."
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
}

# The executable of bench `$1` (`BIN`, if set: a build copied aside), built
# if need be; `$2` names the calling script in messages, `$3` is a scratch
# directory. Exits with status 2 when the bench does not build.
bench_binary() {
    local bench=$1 script=$2 scratch=$3 bin
    if [ -n "${BIN:-}" ]; then
        bin=$BIN
    else
        bin=$(cargo bench -p tower-rampart-benches --bench "$bench" --no-run --message-format=json 2> "$scratch/build" |
            grep -o "\"executable\":\"[^\"]*$bench[^\"]*\"" | tail -1 | cut -d'"' -f4) || true
    fi
    if [ -n "${BIN:-}" ] && [ ! -x "$bin" ]; then
        echo "$script: BIN=$bin is not an executable" >&2
        exit 2
    fi
    if [ ! -x "${bin:-}" ]; then
        cat "$scratch/build" >&2 2> /dev/null
        echo "$script: could not build the $bench bench" >&2
        exit 2
    fi
    echo "$bin"
}

# Waits (up to `$5` tenths of a second) until the real-server bench,
# started with `REAL_SERVER_LISTEN=1` and its standard error in `$1`, is
# serving, then checks that every server named in `$3` (comma-separated,
# as `REAL_SERVER_ONLY`) is among those it printed to `$2`: a name the
# bench does not know (or an ablation without `REAL_SERVER_ABLATE=1`)
# would otherwise just be missing. `$4` names the calling script. Leaves
# the names, in the order given, in the array `asked`.
wait_for_servers() {
    local log=$1 servers=$2 only=$3 script=$4 tries=$5 name
    for _ in $(seq "$tries"); do
        [ -s "$servers" ] && grep -q "serving until killed" "$log" 2> /dev/null && break
        sleep 0.1
    done
    grep -q "serving until killed" "$log" || { cat "$log" >&2; exit 2; }
    IFS=',' read -r -a asked <<< "$only"
    for name in "${asked[@]}"; do
        name=$(echo "$name" | sed 's/^ *//; s/ *$//')
        cut -f2 "$servers" | grep -qxF "$name" || {
            echo "$script: no server named \`$name\` (ablations need REAL_SERVER_ABLATE=1)" >&2
            exit 2
        }
    done
}
