"""`kube-netpol cleanup`: remove everything the agent creates on a node."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kube_netpol.dataplane import Removed


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "cleanup", help="remove the agent's nftables table and xtables queue rules from this node"
    )
    parser.add_argument("--nftables-table", default="kube-netpol", help="the table name the agent used (default kube-netpol)")
    parser.add_argument("--pod-netns-dir", metavar="DIR",
                        help="also remove the secondary-network chain from every pod namespace in DIR (as given to run)")
    parser.add_argument("--pod-netns-lookup", choices=("cgroup",), default=None,
                        help="also remove the secondary-network chain from every pod namespace found by the pods' "
                             "cgroups under --host-proc (as run's --pod-netns-lookup=cgroup)")
    parser.add_argument("--host-proc", metavar="DIR", default="/proc", help="the node's /proc (default /proc: hostPID)")
    parser.set_defaults(func=cleanup_command)


def cleanup_command(args: argparse.Namespace) -> int:
    from kube_netpol.dataplane import cleanup

    try:
        removed = cleanup(args.nftables_table)
    except Exception as err:  # noqa: BLE001 - report any failure as one clear line
        print(f"kube-netpol cleanup: {err}", file=sys.stderr)
        return 1
    print(describe(args.nftables_table, removed))
    if getattr(args, "pod_netns_dir", None):
        print(cleanup_pod_namespaces(args.pod_netns_dir))
    if getattr(args, "pod_netns_lookup", None) == "cgroup":
        print(cleanup_pod_namespaces_by_cgroup(args.host_proc))
    return 0


def cleanup_pod_namespaces_by_cgroup(host_proc: str) -> str:
    """Remove the secondary-network chain from the namespace of each pod whose processes ``host_proc`` shows."""
    from kube_netpol.agent.podnetns import CgroupLocator
    from kube_netpol.dataplane.secondary import SecondaryRules

    rules = SecondaryRules()
    locator = CgroupLocator(host_proc)
    locator.scan()
    cleaned = []
    for uid, path in sorted(locator.namespaces().items()):
        if rules.present(path):
            rules.remove(path)
            cleaned.append(uid)
    if not cleaned:
        return f"no secondary-network chain in the namespaces of the pods under {host_proc}"
    return f"removed the secondary-network chain from {len(cleaned)} pod namespace(s), pod UIDs: {', '.join(cleaned)}"


def cleanup_pod_namespaces(directory: str) -> str:
    """Remove the secondary-network chain from each pod namespace in ``directory``; one line saying where."""
    import os

    from kube_netpol.dataplane.secondary import SecondaryRules

    rules = SecondaryRules()
    cleaned = []
    for entry in sorted(os.listdir(directory)):
        path = os.path.join(directory, entry)
        if os.path.exists(path) and rules.present(path):
            rules.remove(path)
            cleaned.append(entry)
    if not cleaned:
        return f"no secondary-network chain in the pod namespaces of {directory}"
    return f"removed the secondary-network chain from {len(cleaned)} pod namespace(s): {', '.join(cleaned)}"


def describe(table: str, removed: "Removed") -> str:
    """What a cleanup removed, in one line: only what existed."""
    if removed.nothing:
        return f"nothing to remove: no table inet {table} and no xtables rules with comment {table}"
    parts = [f"removed table inet {table}"] if removed.table else [f"no table inet {table}"]
    rules = [f"{count} in ip{'6' if family == 6 else ''}tables mangle {chain}"
             for (family, chain), count in sorted(removed.xt_rules.items()) if count]
    parts.append(f"removed xtables rules with comment {table}: {', '.join(rules)}" if rules
                 else f"no xtables rules with comment {table}")
    return "; ".join(parts)
