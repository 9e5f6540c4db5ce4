"""`kube-netpol run`: the agent."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any, Callable

from kube_netpol.agent.config import add_agent_arguments, config_from_args
from kube_netpol.logs import configure_logging
from kube_netpol.plugins import PluginError
from kube_netpol.sources.manifests import ManifestError, ManifestSource
from kube_netpol.state.store import ClusterState

log = logging.getLogger("kube_netpol.agent")


class ManifestFolderSource:
    """The manifests folder as an agent source: read at start, re-read on every poll."""

    def __init__(self, folder: str, state: ClusterState) -> None:
        self._source = ManifestSource(folder, state)

    def start(self, submit: Callable[[Callable[[], None]], None]) -> None:
        self._source.sync()

    def poll(self) -> None:
        try:
            self._source.sync()
        except ManifestError as err:
            log.error("%s", err)

    def ready(self) -> bool:
        return self._source.loaded

    def stop(self) -> None:
        pass


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("run", help="run the agent on this node")
    add_agent_arguments(parser)
    parser.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    from kube_netpol.agent.controller import Agent
    from kube_netpol.agent.http import serve_http
    from kube_netpol.observability.metrics import AgentCollector, VerdictMetrics
    from prometheus_client import REGISTRY

    try:
        config = config_from_args(args)
    except ValueError as err:
        print(f"kube-netpol run: {err}", file=sys.stderr)
        return 2
    configure_logging(config.log_format, config.verbosity)
    if config.manifests:
        folder = config.manifests

        def source_factory(state: ClusterState) -> ManifestFolderSource:
            return ManifestFolderSource(folder, state)
    else:
        print("kube-netpol run: the Kubernetes API source is not available in this build; use --manifests DIR",
              file=sys.stderr)
        return 2
    verdict_metrics = VerdictMetrics(audit=config.audit)
    try:
        agent = Agent(config, source_factory, observer=verdict_metrics.observe)
    except PluginError as err:
        print(f"kube-netpol run: {err}", file=sys.stderr)
        return 2
    collector = AgentCollector(
        verdict_metrics,
        invalid_objects=lambda: dict(agent.state.invalid_objects),
        managed_ips=lambda: tuple(len(s) for s in agent.dataplane.managed) if agent.dataplane.started else (0, 0),
        cache_stats=lambda: (agent.engine.cache_hits, agent.engine.cache_misses),
    )
    REGISTRY.register(collector)
    agent.sync_listeners.append(collector.record_sync)
    agent.apply_listeners.append(collector.record_apply_latency)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = None
    if config.metrics_bind_address[1]:
        server = serve_http(config.metrics_bind_address, agent.healthy, agent.ready)
    try:
        agent.run(stop)
    except Exception as err:  # noqa: BLE001 - report start-up failures (nftables, queue) clearly
        log.error("agent failed: %s", err, exc_info=config.verbosity > 0)
        return 1
    finally:
        if server is not None:
            server.shutdown()
    return 0
