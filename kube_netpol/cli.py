"""The `kube-netpol` command: one subcommand per module, each registering its own parser."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# Each module has ``register(subparsers)`` that adds its parser and sets
# ``func`` (args -> exit code) on it.
SUBCOMMAND_MODULES = (
    "kube_netpol.agent.run",
    "kube_netpol.agent.cleanup",
    "kube_netpol.conformance.cli",
    "kube_netpol.lab.cli",
    "kube_netpol.observability.explain_cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kube-netpol", description="Kubernetes network policy agent")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
