"""`kube-netpol run`: the agent."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import signal
import sys
import threading
from typing import Any, Callable, Iterable, Mapping

from kube_netpol.agent.config import add_agent_arguments, config_from_args
from kube_netpol.logs import configure_logging
from kube_netpol.plugins import PluginError
from kube_netpol.sources.manifests import ManifestError, ManifestSource, ObjectKey, object_key
from kube_netpol.state.store import ClusterState

log = logging.getLogger("kube_netpol.agent")


def entries_revision(entries: Mapping[ObjectKey, str]) -> str:
    """A digest of a set of objects: (kind, namespace, name) -> canonical JSON (``json.dumps(sort_keys=True)``)."""
    return hashlib.sha256(json.dumps(sorted(entries.items())).encode()).hexdigest()


def objects_revision(objects: Iterable[Mapping[str, Any]]) -> str:
    """The revision the manifests source reports once it has applied exactly these objects.

    Keys and canonical JSON are made as the source makes them (objects without
    kind or name are skipped, a later object with the same key wins), so a
    writer of the folder (the lab) can wait for precisely its own content.
    """
    entries: dict[ObjectKey, str] = {}
    for obj in objects:
        key = object_key(obj) if isinstance(obj, Mapping) else None
        if key is not None:
            entries[key] = json.dumps(obj, sort_keys=True)
    return entries_revision(entries)


class ManifestFolderSource:
    """The manifests folder as an agent source: read at start, re-read on every poll."""

    def __init__(self, folder: str, state: ClusterState) -> None:
        self._source = ManifestSource(folder, state)
        self._revision = ""

    def start(self, submit: Callable[[Callable[[], None]], None]) -> None:
        self._source.sync()
        self._update_revision()

    def poll(self) -> None:
        try:
            if self._source.sync():
                self._update_revision()
        except ManifestError as err:
            log.error("%s", err)

    def revision(self) -> str:
        """A digest of the objects applied to the state (see ``objects_revision``)."""
        return self._revision

    def _update_revision(self) -> None:
        # ManifestSource keeps what it applied as key -> canonical JSON; it has no public accessor yet.
        self._revision = entries_revision(self._source._applied)  # noqa: SLF001

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
        try:
            from kube_netpol.sources.kubernetes import KubernetesConfigError, kubernetes_source_factory
        except ImportError as err:
            print(f"kube-netpol run: the Kubernetes API source needs the `kubernetes` package "
                  f"(pip install 'kube-netpol[kubernetes]'), or use --manifests DIR ({err})", file=sys.stderr)
            return 2
        try:
            # In-cluster configuration unless --kubeconfig; the pipeline decides what is watched.
            source_factory = kubernetes_source_factory(config.kubeconfig, config.pipeline)  # type: ignore[assignment]
        except KubernetesConfigError as err:
            print(f"kube-netpol run: {err}", file=sys.stderr)
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
        server = serve_http(config.metrics_bind_address, agent.healthy, agent.ready, status=agent.status)
    try:
        agent.run(stop)
    except Exception as err:  # noqa: BLE001 - report start-up failures (nftables, queue) clearly
        log.error("agent failed: %s", err, exc_info=config.verbosity > 0)
        return 1
    finally:
        if server is not None:
            server.shutdown()
    return 0
