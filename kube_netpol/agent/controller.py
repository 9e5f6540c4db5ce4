"""The agent: state fed by a source, the engine, the dataplane and the verdict loop, wired together.

Threads: the packet thread runs the verdict loop and nothing else; the
control thread applies source updates, keeps the nftables sets in step with
the managed pods and, in strict mode, cuts connections that are no longer
allowed. Sources that watch from their own threads hand work to the control
thread through ``submit`` so that the state has a single writer.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import queue
import socket
import subprocess
import threading
import time
from typing import Any, Callable, Protocol

from kube_netpol.agent.config import AgentConfig
from kube_netpol.agent.verdict_loop import VerdictLoop, VerdictObserver
from kube_netpol.api.packet import Packet
from kube_netpol.dataplane import Dataplane, DataplaneConfig
from kube_netpol.dataplane import conntrack
from kube_netpol.engine import PolicyEngine
from kube_netpol.observability.decisions import RecordGate
from kube_netpol.observability.flowstats import VerdictStats
from kube_netpol.plugins import build_engine
from kube_netpol.state.store import ClusterState

log = logging.getLogger(__name__)

#: How often the control thread looks at its source when nothing else wakes it.
CONTROL_INTERVAL = 0.05
#: Strict mode re-judges conntrack at most this often, so a burst of changes costs one pass.
STRICT_MODE_MIN_INTERVAL = 0.2
#: Strict mode re-reads the node's addresses (a fork of `ip`, about 2 ms) when its list is older than this.
NODE_ADDRESSES_MAX_AGE = 30.0


def node_addresses() -> frozenset[bytes]:
    """Addresses of this network namespace's interfaces (the node's own addresses)."""
    try:
        result = subprocess.run(["ip", "-j", "address", "show"], capture_output=True, text=True, timeout=10, check=True)
        interfaces = json.loads(result.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        log.warning("cannot list the node's addresses; strict mode treats none as the node's")
        return frozenset()
    found = set()
    for interface in interfaces:
        for info in interface.get("addr_info", []):
            try:
                found.add(ipaddress.ip_address(info.get("local", "")).packed)
            except ValueError:
                continue
    return frozenset(found)


class Source(Protocol):
    """Something that feeds the ClusterState (manifests folder, Kubernetes API)."""

    def start(self, submit: Callable[[Callable[[], None]], None]) -> None: ...

    def poll(self) -> None: ...

    def ready(self) -> bool: ...

    def stop(self) -> None: ...


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        source_factory: Callable[[ClusterState], Source],
        observer: VerdictObserver | None = None,
        dataplane: Dataplane | None = None,
        stats: VerdictStats | None = None,
        observer_gate: RecordGate | None = None,
    ) -> None:
        self.config = config
        self.state = ClusterState(node_name=config.node_name)
        self.engine: PolicyEngine = build_engine(self.state, config.pipeline, config.evaluator_settings)
        self.source = source_factory(self.state)
        self.dataplane = dataplane or Dataplane(
            DataplaneConfig(
                table=config.nftables_table,
                queue_num=config.nfqueue_id,
                fail_open=config.fail_open,
                accept_root=config.exempt_root_traffic,
                queue_backend=config.queue_backend,  # type: ignore[arg-type]
                netfilter_bug_1766_fix=config.netfilter_bug_1766_fix,
            )
        )
        self.verdict_loop = VerdictLoop(
            self.engine, config.nfqueue_id, config.fail_open, config.audit, observer=observer, stats=stats,
            observer_gate=observer_gate,
        )
        self._work: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._dirty = threading.Event()
        self._strict_due = 0.0
        self._last_strict = 0.0
        self._node_addresses: frozenset[bytes] = frozenset()
        self._node_addresses_read = -NODE_ADDRESSES_MAX_AGE  # monotonic seconds
        # The dataplane's managed sets (text) and the same addresses packed, for strict mode.
        self._watched: tuple[tuple[frozenset[str], frozenset[str]], frozenset[bytes]] = (
            (frozenset(), frozenset()), frozenset())
        self._dataplane_ready = threading.Event()
        self._wake = threading.Event()
        # When the oldest change not yet in the dataplane reached us (monotonic seconds).
        self._pending_since = 0.0
        # The source revision whose state the dataplane (and, in strict mode, conntrack) fully reflects.
        self._enforced_revision = ""
        self.sync_listeners: list[Callable[[float, bool], None]] = []  # (seconds, ok)
        self.apply_listeners: list[Callable[[float], None]] = []  # change received -> enforced, seconds
        self.engine.add_sync_listener(self._engine_changed)
        self.state.subscribe(lambda _change: self._note_pending())

    # ------------------------------------------------------------ health

    def healthy(self) -> bool:
        return self._threads_alive()

    def verdict_cache_stats(self) -> tuple[int, int]:
        """(hits, misses): judged packets answered from a cached verdict (the verdict
        loop's flow table or the engine's cache) and those the pipeline evaluated."""
        accepted, dropped = self.verdict_loop.verdicts()
        misses = self.engine.cache_misses
        return max(0, accepted + dropped - misses), misses

    def ready(self) -> bool:
        return self._dataplane_ready.is_set() and self.source.ready() and self.engine.ready()

    def _threads_alive(self) -> bool:
        return all(t.is_alive() for t in getattr(self, "_threads", []))

    def status(self) -> dict[str, Any]:
        """For /statusz: a tool that changed the source waits until ``enforced_revision`` is its revision."""
        accepted, dropped = self.verdict_loop.verdicts()
        return {
            "ready": self.ready(),
            "healthy": self.healthy(),
            "source_revision": self._source_revision(),
            "enforced_revision": self._enforced_revision,
            "queue_backend": self.dataplane.backend if self.dataplane.started else "",
            "verdicts": {"accepted": accepted, "dropped": dropped, "errors": self.verdict_loop.counters.errors},
        }

    def _source_revision(self) -> str:
        """The source's revision of what it has applied to the state ("" when the source has none)."""
        revision = getattr(self.source, "revision", None)
        return str(revision()) if callable(revision) else ""

    # ------------------------------------------------------------ running

    def submit(self, work: Callable[[], None]) -> None:
        """Run ``work`` on the control thread (the state's only writer)."""
        self._note_pending()
        self._work.put(work)
        self._wake.set()

    def _note_pending(self) -> None:
        if not self._pending_since:
            self._pending_since = time.monotonic()

    def _engine_changed(self) -> None:
        self._dirty.set()
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """Run until ``stop`` is set; then leave the dataplane as fail-open/closed asks."""
        self.source.start(self.submit)
        while not self.source.ready():
            self._drain_work()
            self._poll_source()
            if stop.wait(CONTROL_INTERVAL):
                self.source.stop()
                return
        self._drain_work()
        # Bind the queue before the rules divert anything to it.
        self.verdict_loop.bind()
        packet_thread = threading.Thread(target=self.verdict_loop.run, args=(stop,), name="verdict-loop", daemon=True)
        packet_thread.start()
        self._threads = [packet_thread]
        try:
            v4, v6, divert_all = self._desired_managed()
            backend = self.dataplane.start(v4, v6, divert_all)
            self._dataplane_ready.set()
            log.info("agent ready: pipeline %s, queue backend %s, node %s",
                     ",".join(self.config.pipeline), backend, self.config.node_name)
            self._dirty.clear()
            self._pending_since = 0.0
            self._enforced_revision = self._source_revision()
            stop_waker = threading.Thread(target=lambda: (stop.wait(), self._wake.set()), daemon=True)
            stop_waker.start()
            while not stop.is_set():
                self._drain_work()
                self._poll_source()
                revision = self._source_revision()  # the state the sync below makes the kernel follow
                if self._dirty.is_set():
                    self._dirty.clear()
                    self._sync_dataplane()
                    if self.config.strict_mode and not self.config.audit:
                        # A burst of changes costs one pass, at most every STRICT_MODE_MIN_INTERVAL.
                        self._strict_due = self._strict_due or max(
                            time.monotonic(), self._last_strict + STRICT_MODE_MIN_INTERVAL
                        )
                if self._strict_due and time.monotonic() >= self._strict_due:
                    self._strict_due = 0.0
                    self._last_strict = time.monotonic()
                    self._enforce_strict_mode()
                if not self._dirty.is_set() and not self._strict_due:
                    self._enforced_revision = revision
                if stop.is_set():
                    break
                self._wake.wait(CONTROL_INTERVAL)
                self._wake.clear()
        finally:
            stop.set()
            packet_thread.join(timeout=5)
            self.source.stop()
            self.dataplane.stop()
            log.info("agent stopped (%s)", "rules kept: fail-open" if self.config.fail_open else "rules removed")

    def _poll_source(self) -> None:
        try:
            self.source.poll()
        except Exception:  # noqa: BLE001 - a source failure must not stop enforcement of the last state
            log.exception("reading the source failed; keeping the last known state")

    def _drain_work(self) -> None:
        while True:
            try:
                work = self._work.get_nowait()
            except queue.Empty:
                return
            try:
                work()
            except Exception:  # noqa: BLE001 - one bad update must not stop the control loop
                log.exception("state update failed")

    def _desired_managed(self) -> tuple[list[bytes], list[bytes], bool]:
        managed = self.engine.managed_ips()
        local = self.state.local_pod_ips()
        ips = managed.ips & local
        return [ip for ip in ips if len(ip) == 4], [ip for ip in ips if len(ip) == 16], managed.divert_all

    def _sync_dataplane(self) -> None:
        started = time.perf_counter()
        ok = True
        try:
            v4, v6, divert_all = self._desired_managed()
            changed = self.dataplane.sync(v4, v6, divert_all)
            if changed:
                log.info("dataplane synced: %d IPv4 and %d IPv6 managed addresses%s in %.1f ms",
                         len(v4), len(v6), ", divert all" if divert_all else "",
                         (time.perf_counter() - started) * 1000)
        except Exception:  # noqa: BLE001 - keep enforcing the last good ruleset and retry
            ok = False
            log.exception("dataplane sync failed; retrying")
            self._dirty.set()
        for listener in self.sync_listeners:
            listener(time.perf_counter() - started, ok)
        if ok and self._pending_since:
            latency = time.monotonic() - self._pending_since
            self._pending_since = 0.0
            for apply_listener in self.apply_listeners:
                apply_listener(latency)

    def _enforce_strict_mode(self) -> None:
        """Cut the connections the current policies deny: delete their conntrack entries.

        One netlink dump, the live entries of watched addresses judged (each
        address pair, protocol and port once), the denied ones deleted in
        batches: about 4 ms plus 6 µs an entry (docs/performance.md), so it
        runs inline and ``enforced_revision`` still means "conntrack follows too".
        """
        started = time.perf_counter()
        try:
            if self.config.exempt_root_traffic and (
                time.monotonic() - self._node_addresses_read > NODE_ADDRESSES_MAX_AGE
            ):
                self._node_addresses = node_addresses()
                self._node_addresses_read = time.monotonic()
            relevant = self._strict_mode_watches()
            with conntrack.Conntrack() as ct:
                entries = ct.dump(live_only=True)
                denied = conntrack.select_denied(entries, relevant, self._flow_allowed)
                removed = ct.delete(denied) if denied else 0
        except conntrack.ConntrackError as e:
            log.error("strict mode: %s; connections that policies no longer allow stay open", e)
            return
        except Exception:  # noqa: BLE001 - strict mode must never stop the control thread
            log.exception("strict mode: the conntrack pass failed; connections policies no longer allow stay open")
            return
        elapsed_ms = (time.perf_counter() - started) * 1000
        if removed:
            log.info("strict mode: cut %d connection(s) that policies no longer allow (%d live conntrack entries, "
                     "%.1f ms)", removed, len(entries), elapsed_ms)
        else:
            log.debug("strict mode: nothing to cut (%d live conntrack entries, %.1f ms)", len(entries), elapsed_ms)

    def _strict_mode_watches(self) -> Callable[[bytes], bool]:
        """Whose connections strict mode judges: the addresses the dataplane diverts to the queue now
        (a new connection of any other address is not judged either), or every pod in divert-all mode."""
        if self.dataplane.divert_all:
            return lambda ip: self.state.pod_by_ip(ip) is not None
        managed = self.dataplane.managed
        if managed != self._watched[0]:
            v4, v6 = managed
            packed = {socket.inet_pton(socket.AF_INET, a) for a in v4} | {
                socket.inet_pton(socket.AF_INET6, a) for a in v6}
            self._watched = (managed, frozenset(packed))
        return self._watched[1].__contains__

    def _flow_allowed(self, entry: conntrack.Entry) -> bool:
        if self.config.exempt_root_traffic and entry.src in self._node_addresses:
            # The node's own connections (kubelet probes) were never judged: the
            # ruleset exempts root-owned sockets, so strict mode leaves them too.
            return True
        packet = Packet(entry.family, entry.protocol, entry.src, entry.dst, entry.sport, entry.dport)
        try:
            return self.engine.evaluate(packet).allowed
        except Exception:  # noqa: BLE001 - fail-open/closed applies to re-judging too
            return self.config.fail_open
