"""`kube-netpol lab demo` and `kube-netpol lab cleanup`."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("lab", help="network-namespace lab: a demo, and cleanup of crashed labs")
    commands = parser.add_subparsers(dest="lab_command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run the real agent in a lab of nine pods and show a policy taking effect (needs root)",
        description="Build a lab (namespaces x, y, z; pods a, b, c), start the agent, print the TCP/80 truth "
        "table, apply a NetworkPolicy (deny all ingress to x except from y), print it again, tear down.",
    )
    demo.add_argument("--probe-timeout", type=float, default=1.0, metavar="SECONDS",
                      help="how long a connection may take before it counts as blocked (default 1)")
    demo.set_defaults(func=demo_command)
    cleanup = commands.add_parser(
        "cleanup", help="delete the namespaces of labs whose process is gone (e.g. killed), and what runs in them"
    )
    cleanup.add_argument("--prefix", help="only labs with this name prefix (default: every lab)")
    cleanup.set_defaults(func=cleanup_command)


def demo_command(args: argparse.Namespace) -> int:
    from kube_netpol.tools.lab.demo import run_demo

    if args.probe_timeout <= 0:
        print("kube-netpol lab demo: --probe-timeout must be > 0", file=sys.stderr)
        return 2
    return run_demo(probe_timeout=args.probe_timeout)


def cleanup_command(args: argparse.Namespace) -> int:
    from kube_netpol.tools.lab import cleanup_stale

    try:
        removed = cleanup_stale(args.prefix)
    except (OSError, RuntimeError, ValueError) as err:
        print(f"kube-netpol lab cleanup: {err}", file=sys.stderr)
        return 1
    for name in removed:
        print(f"removed network namespace {name}")
    print(f"{len(removed)} stale lab namespace(s) removed")
    return 0
