"""`kube-netpol run`: the agent."""

from __future__ import annotations

import argparse
import gc
import errno
import logging
import os
import signal
import sys
import threading
from typing import Any

from kube_netpol.agent.config import add_agent_arguments, add_version_flag, config_from_args
from kube_netpol.dataplane.kernel_release import BUG_1766_FIXED_IN
from kube_netpol.logs import configure_logging
from kube_netpol.plugins import PluginError
from kube_netpol.sources.manifests import ManifestFolderSource
from kube_netpol.state.store import ClusterState

log = logging.getLogger("kube_netpol.agent")


#: Allocations (less deallocations) of tracked objects between two young-generation collections.
GC_YOUNG_THRESHOLD = 50_000


def tune_garbage_collector() -> None:
    """Collect less often: each new flow key allocates a few tracked objects (its flow-table entry,
    judgement, packet), so with Python's default (700) a collection ran every ~150 new keys, and the
    older generations' passes walk the whole policy state and flow table: the larger part of a new
    key's cost (docs/performance.md, "Verdict memory"). The agent's objects rarely form cycles, so
    collecting every 50,000 allocations keeps memory the same and takes the collector off the miss path."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("run", help="run the agent on this node")
    add_agent_arguments(parser)
    add_version_flag(parser)  # the image's entrypoint is `kube-netpol run`
    parser.set_defaults(func=run_command)


def _bind_failure(address: tuple[str, int], err: OSError) -> str:
    """One line for a metrics address the agent cannot listen on."""
    host, port = address
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if err.errno == errno.EADDRINUSE:
        hint = "another process (another kube-netpol agent?) listens there; stop it or choose another --metrics-bind-address"
    else:
        hint = "check --metrics-bind-address (the host must be an address of this node, or empty for all)"
    return f"kube-netpol run: cannot serve metrics on {where}: {err.strerror or err}; {hint}"


def _queue_failure(queue_num: int) -> str | None:
    """One line when another process holds our NFQUEUE (the kernel lists it bound), else None."""
    from kube_netpol.observability.nfqueue_proc import read_nfqueue_stats

    holders = [q.port_id for q in read_nfqueue_stats() if q.queue_num == queue_num]
    if not holders:
        return None
    return (f"kube-netpol run: NFQUEUE {queue_num} is already bound by another process (netlink port id {holders[0]}): "
            f"another kube-netpol agent, or another program using queue {queue_num}, runs in this network namespace; "
            f"stop it, or give this agent another --nfqueue-id")


def run_command(args: argparse.Namespace) -> int:
    from kube_netpol.agent.controller import Agent
    from kube_netpol.agent.http import serve_http
    from kube_netpol.observability.decisions import DecisionLogger
    from kube_netpol.observability.metrics import AgentCollector, VerdictMetrics
    from prometheus_client import REGISTRY

    try:
        config = config_from_args(args)
    except ValueError as err:
        print(f"kube-netpol run: {err}", file=sys.stderr)
        return 2
    configure_logging(config.log_format, config.verbosity)
    if args.netfilter_bug_1766_fix is None:
        fixed_in = "%d.%d" % BUG_1766_FIXED_IN
        log.info("netfilter bug 1766 workaround %s: kernel %s %s (--netfilter-bug-1766-fix=auto)",
                 "on" if config.netfilter_bug_1766_fix else "off", os.uname().release,
                 f"may lack the fix (before {fixed_in})" if config.netfilter_bug_1766_fix
                 else f"has the fix ({fixed_in} or later)")
    if config.manifests:
        folder = config.manifests

        def source_factory(state: ClusterState) -> ManifestFolderSource:
            return ManifestFolderSource(folder, state)
    else:
        try:
            from kube_netpol.sources.kubernetes import KubernetesConfigError, WatchSettings, kubernetes_source_factory
        except ImportError as err:
            print(f"kube-netpol run: the Kubernetes API source needs the `kubernetes` package "
                  f"(pip install 'kube-netpol[kubernetes]'), or use --manifests DIR ({err})", file=sys.stderr)
            return 2
        try:
            # In-cluster configuration unless --kubeconfig; the pipeline's kinds decide what is watched.
            settings = WatchSettings(watch_list=config.watch_list)
            source_factory = kubernetes_source_factory(config.kubeconfig, settings)  # type: ignore[assignment]
        except KubernetesConfigError as err:
            print(f"kube-netpol run: {err}", file=sys.stderr)
            return 2
    decision_logger: DecisionLogger | None = None
    if config.log_decisions:
        options: dict[str, Any] = {"rate": config.decision_log_rate, "only_denied": config.decision_log_denied_only}
        try:
            decision_logger = (
                DecisionLogger.to_file(config.decision_log, **options)
                if config.decision_log
                else DecisionLogger(sys.stderr, **options)
            )
        except OSError as err:
            print(f"kube-netpol run: --decision-log {config.decision_log}: {err}", file=sys.stderr)
            return 2
    try:
        agent = Agent(
            config,
            source_factory,
            observer=decision_logger.observe if decision_logger is not None else None,
            observer_gate=decision_logger.gate if decision_logger is not None else None,
        )
    except PluginError as err:
        if decision_logger is not None:
            decision_logger.stop()
        print(f"kube-netpol run: {err}", file=sys.stderr)
        return 2
    tune_garbage_collector()
    if decision_logger is not None:
        decision_logger.provider = agent.state  # pod names are resolved when records are written
        decision_logger.start()
    collector = AgentCollector(
        VerdictMetrics(agent.engine),
        agent.stats,
        invalid_objects=lambda: dict(agent.state.invalid_objects),
        managed_ips=lambda: (len(agent.dataplane.managed[0]), len(agent.dataplane.managed[1]))
        if agent.dataplane.started else (0, 0),
        cache_stats=agent.verdict_cache_stats,
        verdict_errors=lambda: agent.verdict_loop.counters.errors,
        decision_log_stats=(lambda: decision_logger.stats()) if decision_logger is not None else None,
        dataplane_repairs=lambda: agent.guard.repair_counts() if agent.guard is not None else {},
        new_flows_limited=lambda: agent.dataplane.new_flows_limited() if agent.dataplane.started else 0,
        remembered_verdicts=lambda: agent.dataplane.remembered_verdicts() if agent.dataplane.started else (0, 0),
        dns_stats=lambda: (agent.verdict_loop.counters.dns_answers, agent.verdict_loop.counters.dns_refused,
                           len(agent.engine.dns), agent.engine.dns.refused),
    )
    REGISTRY.register(collector)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = None
    if config.metrics_bind_address[1]:
        try:
            server = serve_http(config.metrics_bind_address, agent.healthy, agent.ready, status=agent.status)
        except OSError as err:
            if decision_logger is not None:
                decision_logger.stop()
            print(_bind_failure(config.metrics_bind_address, err), file=sys.stderr)
            return 2
    try:
        agent.run(stop)
    except OSError as err:
        queue_failure = _queue_failure(config.nfqueue_id)
        if queue_failure is None:
            log.error("agent failed: %s", err, exc_info=config.verbosity > 0)
            return 1
        print(queue_failure, file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - report start-up failures (nftables, queue) clearly
        log.error("agent failed: %s", err, exc_info=config.verbosity > 0)
        return 1
    finally:
        if server is not None:
            server.shutdown()
        if decision_logger is not None:
            decision_logger.stop()  # writes the last records and the final "suppressed" line
    return 0
