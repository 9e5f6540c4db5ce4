#!/usr/bin/env python3
"""Did the tests leave anything behind in the host? Compare two snapshots.

    leak_check.py snapshot FILE    # before the tests
    leak_check.py compare FILE     # after: exit 1, naming each leftover, if anything new exists

A snapshot lists the network namespaces, the nftables tables, chains and sets,
and the xtables rules of both families in the root network namespace.
"""

from __future__ import annotations

import json
import subprocess
import sys


def _run(argv: list[str]) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    return result.stdout if result.returncode == 0 else ""


def snapshot() -> dict[str, list[str]]:
    items: dict[str, list[str]] = {"netns": [], "nftables": [], "xtables": []}
    for line in _run(["ip", "netns", "list"]).splitlines():
        if line.strip():
            items["netns"].append(line.split()[0])
    ruleset = _run(["nft", "-j", "list", "ruleset"])
    for entry in (json.loads(ruleset).get("nftables", []) if ruleset else []):
        for kind in ("table", "chain", "set"):
            if kind in entry:
                obj = entry[kind]
                items["nftables"].append(f"{kind} {obj.get('family')} {obj.get('table', '')} {obj['name']}".replace("  ", " "))
    for binary in ("iptables", "ip6tables"):
        for table in ("mangle", "filter", "raw", "nat"):
            for line in _run([binary, "-t", table, "-S"]).splitlines():
                if line.startswith("-A "):
                    items["xtables"].append(f"{binary} -t {table} {line}")
    return {key: sorted(set(values)) for key, values in items.items()}


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("snapshot", "compare"):
        print(__doc__, file=sys.stderr)
        return 2
    path = argv[2]
    if argv[1] == "snapshot":
        with open(path, "w") as handle:
            json.dump(snapshot(), handle)
        return 0
    with open(path) as handle:
        before = json.load(handle)
    after = snapshot()
    leftovers = [f"{kind}: {item}" for kind, values in after.items() for item in values if item not in set(before.get(kind, []))]
    if leftovers:
        print("leak check: the tests left these behind:", *leftovers, sep="\n  ", file=sys.stderr)
        return 1
    print("leak check: no network namespace, nftables table/chain/set or xtables rule left behind")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
