"""`kube-netpol cleanup`: remove everything the agent creates on a node."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "cleanup", help="remove the agent's nftables table and xtables queue rules from this node"
    )
    parser.add_argument("--nftables-table", default="kube-netpol", help="the table name the agent used (default kube-netpol)")
    parser.set_defaults(func=cleanup_command)


def cleanup_command(args: argparse.Namespace) -> int:
    from kube_netpol.dataplane import cleanup

    try:
        cleanup(args.nftables_table)
    except Exception as err:  # noqa: BLE001 - report any failure as one clear line
        print(f"kube-netpol cleanup: {err}", file=sys.stderr)
        return 1
    print(f"removed table inet {args.nftables_table} and its xtables queue rules (if they existed)")
    return 0
