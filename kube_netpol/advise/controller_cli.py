"""`kube-netpol policy-controller`: the opt-in controller that keeps `advise --from-workloads` policies
in the cluster (a Deployment of the chart, off by default; dry run unless told otherwise)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from kube_netpol.advise.arguments import add_proposal_arguments, options_from_args
from kube_netpol.agent.config import add_version_flag, parse_bind_address, parse_bool

log = logging.getLogger("kube_netpol.policy_controller")

DESCRIPTION = """\
Keep one least-privilege NetworkPolicy per workload in the cluster, as
`kube-netpol advise --from-workloads` proposes it, while workloads, Services,
pods and nodes come, change and go. It owns only the NetworkPolicies labelled
app.kubernetes.io/managed-by=kube-netpol-policy-controller and never touches
any other. By default it is a dry run: it logs what it would write, once per
change, and writes nothing (--dry-run=false to write).
"""


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r} (a positive number)")
    return value


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("policy-controller", help="keep advised NetworkPolicies in the cluster",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    bool_flag: dict[str, Any] = {"nargs": "?", "const": True, "type": parse_bool, "metavar": "BOOL"}
    parser.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig (default: the pod's service account)")
    parser.add_argument("--dry-run", default=True, help="log the writes, make none (default true)", **bool_flag)
    parser.add_argument("--metrics-bind-address", type=parse_bind_address, default=("", 9080), metavar="ADDR",
                        help="where /healthz, /readyz, /statusz and /metrics are served (default :9080; 0: nowhere)")
    parser.add_argument("--writes-per-second", type=_positive, default=5.0,
                        help="at most this many writes to the API server per second (default 5)")
    parser.add_argument("--quiet-period", type=_positive, default=1.0,
                        help="seconds without changes before reconciling (default 1; at most 10 s of delay)")
    parser.add_argument("--log-format", choices=("text", "json"), default="text", help="text (default) or json")
    parser.add_argument("-v", dest="verbosity", action="count", default=0, help="more logs (-vv: debug)")
    add_proposal_arguments(parser)
    add_version_flag(parser)
    parser.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    from kube_netpol.advise.controller import ControllerLimits, PolicyController
    from kube_netpol.advise.writer import KubernetesWriter
    from kube_netpol.logs import configure_logging
    from kube_netpol.sources.kubernetes import KubernetesConfigError, api_client_from_config, resource_request

    configure_logging(args.log_format, args.verbosity)
    try:
        api_client = api_client_from_config(args.kubeconfig)
    except KubernetesConfigError as err:
        print(f"kube-netpol policy-controller: {err}", file=sys.stderr)
        return 2
    limits = ControllerLimits(quiet=args.quiet_period, writes_per_second=args.writes_per_second)
    writer = KubernetesWriter(api_client, limits.connect_timeout, limits.write_timeout)
    controller = PolicyController(lambda spec: resource_request(api_client, spec), writer,
                                  options_from_args(args), dry_run=args.dry_run, limits=limits)
    server = None
    if args.metrics_bind_address[1]:
        from prometheus_client import CollectorRegistry

        from kube_netpol.advise.controller import ControllerCollector
        from kube_netpol.agent.http import serve_http

        registry = CollectorRegistry()
        registry.register(ControllerCollector(controller))
        try:
            server = serve_http(args.metrics_bind_address, controller.healthy, controller.ready,
                                registry, controller.status_document)
        except OSError as err:
            print(f"kube-netpol policy-controller: cannot serve on {args.metrics_bind_address}: {err}", file=sys.stderr)
            return 2
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    controller.start()
    try:
        stop.wait()
    finally:
        log.info("stopping")
        controller.stop()
        if server is not None:
            server.shutdown()
        api_client.close()  # type: ignore[no-untyped-call]
    return 0
