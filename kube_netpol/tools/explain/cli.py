"""`kube-netpol explain --from A --to B --port P [--protocol TCP] [--family IPv4|IPv6]
(--manifests DIR | --scenario FILE [--step N] | --kubeconfig FILE)`."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

from kube_netpol.tools.explain.render import (
    EXIT_USAGE,
    ExplainError,
    ExplainResult,
    explain_connection,
    render_text,
    to_json,
)
from kube_netpol.tools.explain.loaders import (
    LoadedState,
    StateError,
    load_live,
    load_manifests,
    load_scenario,
    quiet_refusals,
)
from kube_netpol.plugins import DEFAULT_PIPELINE, PluginError, build_engine
from kube_netpol.state import ClusterState

DESCRIPTION = """\
Explain why a connection is allowed or denied: the egress pipeline of the source
and the ingress pipeline of the destination, evaluator by evaluator, with the
policy and rule that decided. The pipeline is every built-in evaluator
(clusternetworkpolicy-admin,adminnetworkpolicy,networkpolicy,
baselineadminnetworkpolicy,clusternetworkpolicy-baseline) unless --evaluators
says otherwise. Exit status: 0 allowed, 1 denied, 2 usage error (unknown pod,
bad address or port, no readable source of state).
"""


def _evaluators(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError("at least one evaluator is needed")
    return names


def _step(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"invalid step {text!r} (a step number from 1, or 0 for before the first step)")
    return int(text)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "explain",
        help="explain the verdict for one connection",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--from", dest="source", required=True, metavar="NS/POD|IP", help="the client")
    parser.add_argument("--to", dest="destination", required=True, metavar="NS/POD|IP", help="the server")
    parser.add_argument("--port", required=True, metavar="PORT",
                        help="destination port: a number, or a container port name of the destination pod")
    parser.add_argument("--protocol", default="TCP", type=str.upper, choices=("TCP", "UDP", "SCTP"),
                        help="TCP (default), UDP or SCTP")
    parser.add_argument("--family", choices=("IPv4", "IPv6"),
                        help="which address of dual-stack pods to use (default: IPv4 when both ends have one)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--manifests", metavar="DIR", help="read the cluster from YAML/JSON files in DIR")
    where.add_argument("--scenario", metavar="FILE", help="read the cluster from a conformance scenario file")
    where.add_argument("--kubeconfig", metavar="FILE", help="list the cluster from the API server of this kubeconfig")
    parser.add_argument("--step", type=_step, metavar="N",
                        help="with --scenario: the cluster after step N (1-based; 0: before the first step; "
                             "default: after the last)")
    parser.add_argument("--evaluators", type=_evaluators, default=DEFAULT_PIPELINE,
                        help=f"comma-separated pipeline (default {','.join(DEFAULT_PIPELINE)})")
    parser.add_argument("--evaluator-config", metavar="FILE", help="YAML file: evaluator name -> its settings")
    parser.add_argument("--output", "-o", choices=("text", "json"), default="text", help="text (default) or json")
    parser.set_defaults(func=run_command)


def _load(args: argparse.Namespace, state: ClusterState) -> LoadedState:
    if args.step is not None and not args.scenario:
        raise StateError("--step needs --scenario")
    if args.scenario:
        return load_scenario(state, args.scenario, args.step)
    if args.manifests:
        return load_manifests(state, args.manifests)
    return load_live(state, args.kubeconfig)


def run_command(args: argparse.Namespace) -> int:
    from kube_netpol.agent.config import load_evaluator_settings

    try:
        settings = load_evaluator_settings(args.evaluator_config)
        engine = build_engine(args.evaluators, settings)
        state = engine.state
        with quiet_refusals():
            loaded = _load(args, state)
        engine.publish()
        result = explain_connection(state, engine, args.source, args.destination, args.port, args.protocol, args.family)
    except (StateError, ExplainError, PluginError, ValueError) as err:
        print(f"kube-netpol explain: {err}", file=sys.stderr)
        return EXIT_USAGE
    result = _with_state(result, loaded)
    if args.output == "json":
        print(json.dumps(to_json(result), indent=2))
    else:
        print(render_text(result))
    return result.exit_code


def _with_state(result: ExplainResult, loaded: LoadedState) -> ExplainResult:
    return replace(result, state_description=loaded.description, state_origin=loaded.origin,
                   refused=tuple(loaded.refused), state_notes=tuple(loaded.notes))
