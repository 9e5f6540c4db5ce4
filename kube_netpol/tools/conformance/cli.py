"""`kube-netpol conformance run PATH... [--mode offline|dataplane] [--tag TAG] [--agent-arg=ARG] [--json FILE]`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, cast

from kube_netpol.tools.conformance.backend import MODES, Backend, BackendFactory, ModeUnavailable, load_backend_factory
from kube_netpol.tools.conformance.report import format_scenario, format_summary, to_json
from kube_netpol.tools.conformance.runner import EXIT_INVALID, ScenarioResult, prepare, run


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "conformance",
        help="check the policy engine against scenario files",
        description="Run conformance scenarios (see SCENARIO_FORMAT.md).",
    )
    commands = parser.add_subparsers(dest="conformance_command", required=True, metavar="COMMAND")
    run_parser = commands.add_parser(
        "run",
        help="run scenario files",
        description=(
            "Run scenario files and compare the reachability they expect with what the mode observes. "
            "Exit status: 0 every probe matched; 1 a mismatch, or the implementation failed while running "
            "a scenario; 2 a scenario could not be read or is invalid (this wins over 1; the valid scenarios "
            "still run), or nothing was selected, or the mode is unavailable."
        ),
    )
    run_parser.add_argument("paths", nargs="+", metavar="PATH", help="a scenario file, or a folder searched for *.yaml")
    run_parser.add_argument("--mode", choices=tuple(MODES), default="offline", help="offline (default) or dataplane")
    run_parser.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="TAG",
        help="run only scenarios with this tag; repeat to run those with any of several",
    )
    run_parser.add_argument(
        "--agent-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="dataplane mode: one more argument for the agent under test, e.g. --agent-arg=--verdict-memory=true "
        "(with '=': it starts with '--'); repeat for several",
    )
    run_parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON to FILE")
    run_parser.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    try:
        factory = load_backend_factory(args.mode)
    except ModeUnavailable as err:
        print(f"kube-netpol conformance: {err}", file=sys.stderr)
        return EXIT_INVALID
    if args.agent_arg:
        if args.mode != "dataplane":
            print(f"kube-netpol conformance: --agent-arg is for dataplane mode, not {args.mode}", file=sys.stderr)
            return EXIT_INVALID
        factory = _with_agent_args(factory, tuple(args.agent_arg))
    entries, skipped = prepare(args.paths, args.tag)
    if not entries:
        print(
            f"kube-netpol conformance: no scenario to run ({skipped} skipped: none has tag {' or '.join(args.tag)})",
            file=sys.stderr,
        )
        return EXIT_INVALID
    result = run(entries, args.mode, factory, on_result=_print_result)
    print(format_summary(result) + (f", {skipped} scenarios skipped by --tag" if skipped else ""))
    if args.json is not None:
        try:
            args.json.write_text(json.dumps(to_json(result), indent=2) + "\n", encoding="utf-8")
        except OSError as err:
            print(f"kube-netpol conformance: cannot write {args.json}: {err}", file=sys.stderr)
            return EXIT_INVALID
    return result.exit_code


def _with_agent_args(factory: BackendFactory, agent_args: tuple[str, ...]) -> BackendFactory:
    create = cast(Callable[..., Backend], factory)  # the dataplane mode's create_backend takes agent_args
    return lambda setup: create(setup, agent_args=agent_args)


def _print_result(result: ScenarioResult) -> None:
    print(format_scenario(result), file=sys.stderr if result.invalid else sys.stdout, flush=True)
