"""`kube-netpol advise (--from-decisions FILE... | --from-workloads) [--manifests DIR | --kubeconfig FILE]
[--format networkpolicy|clusternetworkpolicy] [--verify [FILE...]]`: least-privilege policies, as YAML.

The policies go to stdout (or ``--output FILE``), what the reader should know
about them to stderr; ``--verify`` replays the observed flows with them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from kube_netpol.advise.flows import Flow, ReadResult, distinct_flows, read_records
from kube_netpol.advise.from_flows import propose_from_flows
from kube_netpol.advise.from_workloads import owners_of, propose_from_workloads
from kube_netpol.advise.kinds import WORKLOAD_KINDS, WorkloadObject, advise_registry
from kube_netpol.advise.model import Advice, Selector, Workload
from kube_netpol.advise.arguments import add_proposal_arguments, options_from_args
from kube_netpol.advise.options import AdviseOptions
from kube_netpol.advise.render import TooManyRules, cluster_network_policy, network_policy, to_yaml
from kube_netpol.plugins import DEFAULT_PIPELINE, PluginError
from kube_netpol.state import ClusterState
from kube_netpol.tools.advise.verify import VerifyError, report, verify
from kube_netpol.tools.explain.loaders import LoadedState, StateError, load_live, load_manifests, quiet_refusals

EXIT_OK, EXIT_BROKEN, EXIT_USAGE = 0, 1, 2
ADVISED_FROM_ANNOTATION = "kube-netpol.io/advised-from"

DESCRIPTION = """\
Write least-privilege NetworkPolicies (or Baseline-tier ClusterNetworkPolicies)
for the workloads of a cluster, one per workload, as YAML that `kubectl apply -f`
takes: from the decision records agents wrote (every connection that happened,
in audit mode or not), or from the workloads and Services alone. --verify
replays the observed flows through the agent's engine with the proposal in
force. Exit status: 0 done (and every observed flow stays allowed), 1 --verify
found observed flows the proposal would deny, 2 usage error.
"""


def _prefixes(text: str) -> tuple[int, int]:
    """``N`` or ``N,M``: IPv4 and IPv6 prefix lengths (IPv6 defaults to 64)."""
    parts = text.split(",")
    try:
        v4, v6 = int(parts[0]), int(parts[1]) if len(parts) == 2 else 64
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"invalid --aggregate-cidrs {text!r} (expected N or N,M)") from None
    if len(parts) > 2 or not 0 <= v4 <= 32 or not 0 <= v6 <= 128:
        raise argparse.ArgumentTypeError(f"invalid --aggregate-cidrs {text!r} (IPv4 0-32, IPv6 0-128)")
    return v4, v6


def _priority(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"invalid priority {text!r} (0 to 1000)")
    return int(text)


def _evaluators(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError("at least one evaluator is needed")
    return names


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("advise", help="propose least-privilege policies from flows or workloads",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    origin = parser.add_mutually_exclusive_group(required=True)
    origin.add_argument("--from-decisions", nargs="+", metavar="FILE",
                        help="decision-record files (JSON lines; every node's; log lines among them are skipped)")
    origin.add_argument("--from-workloads", action="store_true",
                        help="from the workloads and Services of --manifests DIR or --kubeconfig FILE")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--manifests", metavar="DIR", help="the cluster's objects as YAML/JSON files in DIR")
    source.add_argument("--kubeconfig", metavar="FILE", help="list the cluster from the API server of this kubeconfig")
    parser.add_argument("--format", choices=("networkpolicy", "clusternetworkpolicy"), default="networkpolicy",
                        help="networkpolicy (default) or clusternetworkpolicy (Baseline tier, policy.networking.k8s.io/v1alpha2)")
    parser.add_argument("--priority", type=_priority, default=100,
                        help="with --format clusternetworkpolicy: the policies' priority (0-1000, default 100)")
    parser.add_argument("--aggregate-cidrs", type=_prefixes, metavar="N[,M]",
                        help="widen addresses that are not pods to their IPv4 /N (and IPv6 /M, default 64) networks")
    add_proposal_arguments(parser)
    parser.add_argument("--verify", nargs="*", metavar="FILE",
                        help="replay the observed flows (those of --from-decisions, or these decision-record files) "
                             "through the engine with the proposal in force; exit 1 if any would be denied")
    parser.add_argument("--evaluators", type=_evaluators, default=DEFAULT_PIPELINE,
                        help=f"the pipeline --verify judges with (default {','.join(DEFAULT_PIPELINE)})")
    parser.add_argument("--evaluator-config", metavar="FILE", help="YAML file: evaluator name -> its settings")
    parser.add_argument("--output", "-o", metavar="FILE", help="write the YAML here instead of stdout")
    parser.set_defaults(func=run_command)


def read_decision_files(paths: Sequence[str]) -> ReadResult:
    result = ReadResult()
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                read_records(handle, result)
        except OSError as err:
            raise StateError(f"cannot read {path}: {err.strerror or err}") from None
    return result


def load_source(args: argparse.Namespace, state: ClusterState) -> LoadedState:
    with quiet_refusals():
        if args.manifests:
            return load_manifests(state, args.manifests)
        return load_live(state, args.kubeconfig)


def _declared(state: ClusterState) -> dict[Workload, Selector]:
    selectors = {}
    for spec in WORKLOAD_KINDS:
        for obj in state.objects(spec.kind).values():
            if isinstance(obj, WorkloadObject) and obj.selector is not None:
                selectors[Workload(obj.kind, obj.namespace, obj.name)] = obj.selector
    return selectors


def advise(args: argparse.Namespace, options: AdviseOptions) -> tuple[Advice, list[Flow], list[str]]:
    """The advice, the observed flows (for --verify), and lines for stderr."""
    said: list[str] = []
    state: ClusterState | None = None
    if args.manifests or args.kubeconfig:
        state = ClusterState(advise_registry())
        loaded = load_source(args, state)
        said.append(f"advise: workloads from {loaded.description}")
        said.extend(f"note: refused {refusal}" for refusal in loaded.refused)
        said.extend(f"note: {note}" for note in loaded.notes)
    flows: list[Flow] = []
    files = args.from_decisions or args.verify or []
    if files:
        read = read_decision_files(files)
        flows = read.flows
        said.append(f"advise: {read.records} decision record(s) in {len(files)} file(s), "
                    f"{len(distinct_flows(flows))} distinct flow(s); {read.denied} record(s) of connections the "
                    f"policies denied (they never happened) left out; {read.skipped} other line(s) skipped")
    if args.from_decisions:
        if state is None:
            advice = propose_from_flows(flows, options)
        else:
            view = state

            def lookup(key: tuple[str, str]) -> tuple[dict[str, str], str] | None:
                pod = view.pod(key)
                return (dict(pod.labels), pod.owner) if pod is not None else None

            advice = propose_from_flows(flows, options, owners_of(state), _declared(state), lookup)
    else:
        if state is None:
            raise StateError("--from-workloads needs --manifests DIR or --kubeconfig FILE")
        advice = propose_from_workloads(state, options)
    return advice, flows, said


def render(advice: Advice, args: argparse.Namespace) -> tuple[list[tuple[dict[str, Any], list[str]]], list[str]]:
    """The objects with their comments, and the notes rendering added."""
    annotations = {ADVISED_FROM_ANNOTATION: "decisions" if args.from_decisions else "workloads"}
    documents: list[tuple[dict[str, Any], list[str]]] = []
    notes: list[str] = []
    for proposal in advice.proposals:
        comments = [f"{proposal.workload}: {'; '.join(proposal.notes)}" if proposal.notes else str(proposal.workload)]
        if args.format == "networkpolicy":
            documents.append((network_policy(proposal, annotations=annotations), comments))
            continue
        try:
            policy, left_out = cluster_network_policy(proposal, args.priority, annotations=annotations)
        except TooManyRules as err:
            notes.append(f"{err}: no policy proposed")
            continue
        documents.append((policy, comments + left_out))
    return documents, notes


def run_command(args: argparse.Namespace) -> int:
    from kube_netpol.agent.config import load_evaluator_settings

    try:
        if args.from_workloads and not (args.manifests or args.kubeconfig):
            raise StateError("--from-workloads needs --manifests DIR or --kubeconfig FILE")
        if args.verify is not None and not args.verify and not args.from_decisions:
            raise StateError("--verify with --from-workloads needs the decision-record files to replay: --verify FILE...")
        advice, flows, said = advise(args, options_from_args(args, args.aggregate_cidrs))
        documents, render_notes = render(advice, args)
        result = None
        if args.verify is not None:
            settings = load_evaluator_settings(args.evaluator_config)
            source = (lambda state: load_source(args, state)) if (args.manifests or args.kubeconfig) else None
            result = verify(flows, [obj for obj, _ in documents], args.evaluators, settings, source)
    except (StateError, VerifyError, PluginError, ValueError) as err:
        print(f"kube-netpol advise: {err}", file=sys.stderr)
        return EXIT_USAGE
    text = to_yaml(documents)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    kind = "NetworkPolic" if args.format == "networkpolicy" else "ClusterNetworkPolic"
    said.append(f"advise: {len(documents)} {kind}{'y' if len(documents) == 1 else 'ies'} "
                f"for {len(advice.proposals)} workload(s)")
    said.extend(f"note: {note}" for note in advice.notes + render_notes)
    if result is not None:
        said.append(report(result))
    print("\n".join(said), file=sys.stderr)
    return EXIT_BROKEN if result is not None and not result.ok else EXIT_OK
