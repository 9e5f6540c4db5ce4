"""The `kube-netpol` command: one subcommand per module, each registering its own parser."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from kube_netpol.agent.config import add_version_flag

# Each module has ``register(subparsers)`` that adds its parser and sets
# ``func`` (args -> exit code) on it.
SUBCOMMAND_MODULES = (
    "kube_netpol.agent.run",
    "kube_netpol.agent.cleanup",
    "kube_netpol.advise.controller_cli",  # the chart's policy-controller Deployment runs the same image
)
#: The tools' subcommands; the agent's image leaves kube_netpol.tools out, and then they are not offered.
TOOL_SUBCOMMAND_MODULES = (
    "kube_netpol.tools.conformance.cli",
    "kube_netpol.tools.lab.cli",
    "kube_netpol.tools.explain.cli",
    "kube_netpol.tools.advise.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kube-netpol", description="Kubernetes network policy agent")
    add_version_flag(parser)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    for module_name in TOOL_SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name is None or not module_name.startswith(err.name):
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
