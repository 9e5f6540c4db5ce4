#!/usr/bin/env python3
"""Did the tests leave anything behind in the host? Only what the project's tests make is looked at.

    leak_check.py snapshot FILE    # before the tests
    leak_check.py compare FILE     # after: exit 1, naming each leftover, if the tests left any

Other processes on the machine (container runtimes, other engineers' test runs)
create and remove network namespaces, tables and rules of their own meanwhile;
those are never counted. What the tests make carries a mark:

- network namespaces are named by ``kube_netpol.tools.lab.names`` (labs and
  ``owned_name``): ``<prefix>-<pid>.<start time>-<id>[-<role>]``, naming the
  process that made them. One is left behind when it is new since the snapshot
  and that process has exited (a live one is a test still running);
- nftables tables in the root namespace named ``kube-netpol`` (the agent's
  default) or ``kn...-...`` (the tests' tables), and the xtables rules whose
  comment names such a table, are left behind when new since the snapshot.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Callable, Mapping, Sequence

from kube_netpol.tools.lab.names import Owner, name_owner

#: Tables the project's agents and tests create (the agent's default, and the tests' kn<...>-<...> names).
PROJECT_TABLE_RE = re.compile(r"^(kube-netpol|kn[a-z0-9]*-[A-Za-z0-9.-]+)$")
#: The comment of an xtables rule (our rules carry the table's name).
COMMENT_RE = re.compile(r'--comment (?:"([^"]*)"|(\S+))')

Snapshot = Mapping[str, Sequence[str]]


def _run(argv: list[str]) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    return result.stdout if result.returncode == 0 else ""


def _rule_comment(rule: str) -> str:
    match = COMMENT_RE.search(rule)
    return (match.group(1) or match.group(2)) if match else ""


def project_items(netns: Sequence[str], tables: Sequence[str], rules: Sequence[str]) -> dict[str, list[str]]:
    """What of the machine's namespaces, root tables ("family name") and xtables rules the project's tests made."""
    return {
        "netns": sorted({name for name in netns if name_owner(name) is not None}),
        "nftables": sorted({table for table in tables if PROJECT_TABLE_RE.match(table.split(" ", 1)[-1])}),
        "xtables": sorted({rule for rule in rules if PROJECT_TABLE_RE.match(_rule_comment(rule))}),
    }


def snapshot() -> dict[str, list[str]]:
    netns = [line.split()[0] for line in _run(["ip", "netns", "list"]).splitlines() if line.strip()]
    ruleset = _run(["nft", "-j", "list", "tables"])
    tables = [f"{e['table']['family']} {e['table']['name']}" for e in (json.loads(ruleset).get("nftables", []) if ruleset else [])
              if "table" in e]
    rules = []
    for binary in ("iptables", "ip6tables"):
        for table in ("mangle", "filter", "raw", "nat"):
            rules += [f"{binary} -t {table} {line}" for line in _run([binary, "-t", table, "-S"]).splitlines()
                      if line.startswith("-A ")]
    return project_items(netns, tables, rules)


def leftovers(before: Snapshot, after: Snapshot, alive: Callable[[Owner], bool] = Owner.alive) -> list[str]:
    """What the tests left: new since ``before``, and for a namespace, its maker gone."""
    found = []
    for kind, items in after.items():
        earlier = set(before.get(kind, ()))
        for item in items:
            if item in earlier:
                continue
            if kind == "netns":
                owner = name_owner(item)
                if owner is None or alive(owner):
                    continue
            found.append(f"{kind}: {item}")
    return found


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
    found = leftovers(before, snapshot())
    if found:
        print("leak check: the tests left these behind:", *found, sep="\n  ", file=sys.stderr)
        return 1
    print("leak check: the tests left no network namespace, nftables table or xtables rule behind")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
