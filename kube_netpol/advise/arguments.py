"""The flags that tune a proposal, shared by `kube-netpol advise` and `kube-netpol policy-controller`."""

from __future__ import annotations

import argparse

from kube_netpol.advise.model import Selector
from kube_netpol.advise.options import DEFAULT_DNS_SELECTOR, DEFAULT_INGRESS_SELECTOR, AdviseOptions, WorkloadFilter


def selector_argument(text: str) -> Selector:
    try:
        return Selector.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def workload_argument(text: str) -> tuple[str | None, str | None, str]:
    try:
        return WorkloadFilter.parse_workload(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_proposal_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--namespace", action="append", metavar="NS",
                        help="policies for workloads of NS only (repeatable; default: all but kube-system, "
                             "kube-public, kube-node-lease)")
    parser.add_argument("--workload", action="append", type=workload_argument, metavar="[[NS/]KIND/]NAME",
                        help="a policy for this workload only (repeatable), e.g. deployment/web or shop/statefulset/db")
    parser.add_argument("--dns-namespace", default="kube-system", metavar="NS",
                        help="the cluster DNS pods' namespace (default kube-system)")
    parser.add_argument("--dns-selector", type=selector_argument, default=DEFAULT_DNS_SELECTOR, metavar="SELECTOR",
                        help=f"the cluster DNS pods' labels (default {DEFAULT_DNS_SELECTOR})")
    parser.add_argument("--ingress-controller-selector", type=selector_argument, default=DEFAULT_INGRESS_SELECTOR,
                        metavar="SELECTOR", help=f"the ingress controller pods' labels (default {DEFAULT_INGRESS_SELECTOR})")
    parser.add_argument("--cluster-domain", default="cluster.local",
                        help="the domain of Service names in env values (default cluster.local)")


def options_from_args(args: argparse.Namespace, aggregate: tuple[int, int] | None = None) -> AdviseOptions:
    v4, v6 = aggregate if aggregate else (None, None)
    return AdviseOptions(
        filter=WorkloadFilter(frozenset(args.namespace) if args.namespace else None, tuple(args.workload or ())),
        dns_namespace=args.dns_namespace,
        dns_selector=args.dns_selector,
        ingress_controller_selector=args.ingress_controller_selector,
        cluster_domain=args.cluster_domain,
        aggregate_v4=v4,
        aggregate_v6=v6,
    )
