#!/usr/bin/env python3
"""Checks that `rust-version` is honest, from `cargo metadata` on stdin.

For each workspace package, the packages its build can compile are the
ones reachable from it through normal and build edges, plus its own
dev-dependencies (tests, examples, benches) and what those reach. The
highest `rust-version` among them (and the package's own edition) is what
the lockfile actually needs. Every workspace package's `rust-version` must
equal that maximum: lower is a promise the lockfile breaks, higher is a
requirement nothing imposes. Exit 1 with the culprits otherwise.
"""
import json
import sys

EDITION_MSRV = {"2015": (1, 0), "2018": (1, 31), "2021": (1, 56), "2024": (1, 85)}


def parse(v):
    parts = [int(p) for p in v.split(".")]
    return tuple((parts + [0, 0])[:3])


def show(v):
    return f"{v[0]}.{v[1]}" + (f".{v[2]}" if v[2] else "")


meta = json.load(sys.stdin)
packages = {p["id"]: p for p in meta["packages"]}
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}


def edges(node_id, with_dev):
    for dep in nodes[node_id]["deps"]:
        kinds = {k["kind"] for k in dep["dep_kinds"]}
        if kinds - {"dev"} or (with_dev and "dev" in kinds):
            yield dep["pkg"]


def needed(root, with_dev):
    todo = list(edges(root, with_dev))
    seen = {root}
    seen.update(todo)
    while todo:
        for dep in edges(todo.pop(), False):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    need, why = (0, 0, 0), []
    for pid in seen:
        pkg = packages[pid]
        # The package's own declaration is what is being checked.
        rv = pkg.get("rust_version") if pid != root else None
        candidates = [(parse(rv), f"{pkg['name']} {pkg['version']} (rust-version)")] if rv else []
        candidates.append((EDITION_MSRV[pkg["edition"]] + (0,),
                           f"{pkg['name']} {pkg['version']} (edition {pkg['edition']})"))
        for v, reason in candidates:
            if v > need:
                need, why = v, [reason]
            elif v == need:
                why.append(reason)
    return need, sorted(set(why))


failed = False
for member in meta["workspace_members"]:
    pkg = packages[member]
    lib_need, _ = needed(member, with_dev=False)
    all_need, why = needed(member, with_dev=True)
    declared = pkg.get("rust_version")
    line = (f"{pkg['name']}: rust-version = {declared}; the library needs {show(lib_need)}, "
            f"with tests/examples/benches {show(all_need)} (set by {', '.join(why[:6])})")
    print(line)
    if declared is None or parse(declared) != all_need:
        print(f"error: {pkg['name']}'s rust-version must be \"{show(all_need)}\" "
              f"(what its lockfile graph needs), not {declared!r}", file=sys.stderr)
        failed = True
sys.exit(1 if failed else 0)
