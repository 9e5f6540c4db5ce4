"""The agent: a source feeding the state, the engine publishing snapshots, the dataplane and the verdict loop.

Threads: the packet thread runs the verdict loop and nothing else; the
control thread applies source updates to the state, publishes one engine
snapshot per batch of changes, keeps the nftables sets in step with the
managed pods and, in strict mode, cuts connections that are no longer
allowed. Sources that watch from their own threads hand work to the control
thread through ``submit`` so that the state has a single writer.

One notification path: source -> state -> ``engine.publish`` -> snapshot,
which the verdict loop reads per packet and this loop hands to the dataplane,
strict mode, the metrics (``stats``) and /statusz.
"""

from __future__ import annotations

import gc
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
from kube_netpol.agent.podnetns import locator_for
from kube_netpol.agent.secondary import SecondaryNetworks
from kube_netpol.agent.verdict_loop import VerdictLoop
from kube_netpol.api.packet import Packet
from kube_netpol.dataplane import Dataplane, DataplaneConfig, conntrack
from kube_netpol.dataplane.guard import DataplaneGuard
from kube_netpol.engine import PolicyEngine
from kube_netpol.observability.decisions import RecordGate, VerdictObserver
from kube_netpol.observability.metrics import ControlStats
from kube_netpol.plugins import build_engine
from kube_netpol.state import ClusterState

log = logging.getLogger(__name__)

#: How often the control thread looks at its source when nothing else wakes it.
CONTROL_INTERVAL = 0.05
#: Seconds between looks at whether installed pods' network namespaces are still theirs (a sandbox recreated).
SECONDARY_RECHECK_INTERVAL = 2.0
#: Strict mode re-judges conntrack at most this often, so a burst of changes costs one pass.
STRICT_MODE_MIN_INTERVAL = 0.2
#: ... and at most this often for batches of pod changes alone: pods come and go all the time in a
#: big cluster (100 a second at 100,000 pods), and each pass dumps the node's conntrack table.
STRICT_MODE_POD_INTERVAL = 1.0
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


Submit = Callable[[Callable[[], None]], None]


def strict_pass_due(due: float, now: float, last_pass: float, kinds: frozenset[str]) -> float:
    """When the next strict-mode pass runs after a snapshot of a batch of ``kinds`` (``due`` 0: none planned).

    At most one pass every STRICT_MODE_MIN_INTERVAL, every STRICT_MODE_POD_INTERVAL
    while only pods change; an earlier planned pass stays planned.
    """
    interval = STRICT_MODE_POD_INTERVAL if kinds <= {"Pod"} else STRICT_MODE_MIN_INTERVAL
    wanted = max(now, last_pass + interval)
    return min(due, wanted) if due else wanted

class Source(Protocol):
    """Something that feeds the ClusterState (a manifests folder, the Kubernetes API)."""

    def start(self, submit: Submit) -> None: ...

    def poll(self) -> None: ...

    def ready(self) -> bool: ...

    def revision(self) -> str:
        """What the state holds, as the source names it ("" when it has no such notion)."""
        ...

    def stop(self) -> None: ...


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        source_factory: Callable[[ClusterState], Source],
        observer: VerdictObserver | None = None,
        dataplane: Dataplane | None = None,
        observer_gate: RecordGate | None = None,
    ) -> None:
        self.config = config
        self.engine: PolicyEngine[ClusterState] = build_engine(
            config.pipeline, config.evaluator_settings, node_name=config.node_name)
        self.state = self.engine.state
        self.source = source_factory(self.state)
        self.dataplane = dataplane or Dataplane(
            DataplaneConfig(
                table=config.nftables_table,
                queue_num=config.nfqueue_id,
                fail_open=config.fail_open,
                accept_root=config.exempt_root_traffic,
                queue_backend=config.queue_backend,  # type: ignore[arg-type]
                netfilter_bug_1766_fix=config.netfilter_bug_1766_fix,
                new_flow_limit=config.new_flow_rate_limit,
                verdict_memory=config.verdict_memory,
                memory_timeout=config.verdict_memory_timeout,
                observe_dns=config.dns_observation,
            )
        )
        self.verdict_loop = VerdictLoop(
            self.engine, config.nfqueue_id, config.fail_open, config.audit, observer=observer,
            observer_gate=observer_gate,
            verdict_memory=self.dataplane.verdict_memory,  # marks only where the remember chain carries them out
            observe_dns=config.dns_observation, memory_timeout=config.verdict_memory_timeout,
        )  # fmt: skip
        # Secondary networks: queues and rules inside attached pods' namespaces (agent/secondary.py).
        self.secondary = SecondaryNetworks(
            self.engine, locator_for(config.pod_netns_lookup, config.pod_netns_dir, config.host_proc),
            config.nfqueue_id, config.fail_open, config.audit)
        self._secondary_checked = 0.0  # monotonic seconds of the last recheck of pods' namespaces
        self.stats = ControlStats()
        self._work: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._dataplane_ready = threading.Event()
        # Repairs the kernel's ruleset when it drifts from what the dataplane wants (dataplane/guard.py).
        self.guard: DataplaneGuard | None = None
        self._repaired = threading.Event()
        # The dataplane follows the snapshot of this generation (-1: a sync is due).
        self._synced_generation = -1
        # (managed.version, divert_all, generation when the verdict memory must follow it) last sent
        self._synced_managed: tuple[int, bool, int | None] | None = None
        self._strict_due = 0.0
        self._last_strict = 0.0
        self._node_addresses: frozenset[bytes] = frozenset()
        self._node_addresses_read = -NODE_ADDRESSES_MAX_AGE  # monotonic seconds
        # The dataplane's managed sets (text) and the same addresses packed, for strict mode.
        self._watched: tuple[tuple[frozenset[str], frozenset[str]], frozenset[bytes]] = (
            (frozenset(), frozenset()), frozenset())
        # When the oldest change not yet in the dataplane reached us (monotonic seconds; 0: none).
        self._pending_since = 0.0
        # The source revision whose state the dataplane (and, in strict mode, conntrack) fully reflects.
        self._enforced_revision = ""
        # How many full flow tables the kernel's verdict memory was flushed for (FlowHistory.tables_filled).
        self._memory_flushed_for = 0

    # ------------------------------------------------------------ health

    def healthy(self) -> bool:
        return all(t.is_alive() for t in self._threads)

    def ready(self) -> bool:
        """The ruleset the agent wants is in the kernel, the source has synced, every evaluator is ready."""
        return (self._dataplane_ready.is_set() and self.dataplane.in_sync and self.source.ready()
                and self.engine.ready())

    def verdict_cache_stats(self) -> tuple[int, int, int]:
        """(hits, misses, segment): packets answered from the flow table, those the pipeline judged, and
        new keys given their port segment's judgement (each flow-table entry is a miss or a segment answer)."""
        totals = self.engine.history.totals(self.engine.snapshot.flows)
        packets = sum(totals.packets.values())
        segment = min(self.verdict_loop.counters.segment_answers, totals.entries)
        return max(0, packets - totals.entries), totals.entries - segment, segment

    def status(self) -> dict[str, Any]:
        """For /statusz: a tool that changed the source waits until ``enforced_revision`` is its revision."""
        accepted, dropped = self.verdict_loop.verdicts()
        return {
            "ready": self.ready(),
            "healthy": self.healthy(),
            "source_revision": self.source.revision(),
            "enforced_revision": self._enforced_revision,
            "snapshot_generation": self.engine.generation,
            "queue_backend": self.dataplane.backend if self.dataplane.started else "",
            "dataplane": {
                "in_sync": self.dataplane.in_sync,
                "repairs": self.guard.repair_counts() if self.guard is not None else {},
            },
            "verdicts": {"accepted": accepted, "dropped": dropped, "errors": self.verdict_loop.counters.errors},
            "secondary_networks": {
                "pods": len(self.secondary.installed),
                "not_found": sorted(f"{ns}/{name}" for ns, name in self.secondary.not_found),
            },
        }

    # ------------------------------------------------------------ running

    def submit(self, work: Callable[[], None]) -> None:
        """Run ``work`` on the control thread (the state's only writer)."""
        self._note_pending()
        self._work.put(work)
        self._wake.set()

    def _note_pending(self) -> None:
        if not self._pending_since:
            self._pending_since = time.monotonic()

    def run(self, stop: threading.Event) -> None:
        """Run until ``stop`` is set; then leave the dataplane as fail-open/closed asks."""
        self.source.start(self.submit)
        while not self.source.ready():
            # Woken by each submitted piece of work: a list's next page waits for this one to be applied.
            self._wake.clear()
            self._take_source_changes()
            if stop.is_set():
                self.source.stop()
                return
            self._wake.wait(CONTROL_INTERVAL)
        revision = self._take_source_changes()
        self.engine.publish(revision)
        # What the initial sync built lives as long as the agent: keep the cyclic collector from
        # walking it again and again (a full collection over 100,000 pods' records stalls the control
        # thread for a tenth of a second, in the middle of some change's apply latency). Refcounting
        # still frees these objects when they go.
        gc.collect()
        gc.freeze()
        # Bind the queue before the rules divert anything to it.
        self.verdict_loop.bind()
        packet_thread = threading.Thread(target=self.verdict_loop.run, args=(stop,), name="verdict-loop", daemon=True)
        packet_thread.start()
        secondary_thread = threading.Thread(target=self.secondary.run, args=(stop,), name="secondary-networks",
                                            daemon=True)
        secondary_thread.start()
        self._threads = [packet_thread, secondary_thread]
        try:
            v4, v6, divert_all = self._desired_managed()
            backend = self.dataplane.start(v4, v6, divert_all, generation=self.engine.generation)
            self._synced_generation = self.engine.generation
            self._synced_managed = (self.engine.managed.version, divert_all,
                                    self.engine.generation if self.dataplane.verdict_memory else None)
            self.guard = DataplaneGuard(self.dataplane, on_repair=self._on_repair)
            self.guard.start()
            self._dataplane_ready.set()
            log.info("agent ready: pipeline %s, queue backend %s, node %s",
                     ",".join(self.config.pipeline), backend, self.config.node_name)
            self._pending_since = 0.0
            if not self._sync_secondary():
                self._synced_generation = -1  # a pod's namespace is not there yet: retried by the loop
            if self._strict_mode:
                # Policies may have changed while no agent ran: judge what is established now.
                self._enforce_strict_mode()
            if self._synced_generation == self.engine.generation:
                self._enforced_revision = revision
            stop_waker = threading.Thread(target=self._wake_on, args=(stop,), daemon=True)
            stop_waker.start()
            while not stop.is_set():
                revision = self._take_source_changes()
                snapshot = self.engine.publish(revision)
                if snapshot is not None and self._strict_mode:
                    # A burst of changes costs one pass, at most every STRICT_MODE_MIN_INTERVAL
                    # (STRICT_MODE_POD_INTERVAL while only pods change); the earliest due time wins.
                    self._strict_due = strict_pass_due(
                        self._strict_due, time.monotonic(), self._last_strict, self.engine.last_kinds)
                if self._synced_generation != self.engine.generation:
                    self._sync_dataplane()
                elif time.monotonic() - self._secondary_checked >= SECONDARY_RECHECK_INTERVAL:
                    if not self._sync_secondary(recheck=True):
                        self._synced_generation = -1
                if self.engine.history.tables_filled != self._memory_flushed_for:
                    self._forget_remembered()
                self.engine.history.fold_retired()  # a bound on memory while new keys fill tables
                if self._repaired.is_set():  # connections made while the kernel had no (or a wrong) ruleset
                    self._repaired.clear()
                    if self._strict_mode:
                        self._strict_due = self._strict_due or time.monotonic()
                if self._strict_due and time.monotonic() >= self._strict_due:
                    self._strict_due = 0.0
                    self._last_strict = time.monotonic()
                    self._enforce_strict_mode()
                if self._synced_generation == self.engine.generation and not self._strict_due:
                    self._enforced_revision = revision
                if stop.is_set():
                    break
                self._wake.wait(CONTROL_INTERVAL)
                self._wake.clear()
        finally:
            stop.set()
            packet_thread.join(timeout=5)
            secondary_thread.join(timeout=5)
            self.secondary.stop()
            self.source.stop()
            if self.guard is not None:
                self.guard.stop()
            self.dataplane.stop()
            log.info("agent stopped (%s)", "rules kept: fail-open" if self.config.fail_open else "rules removed")

    def _forget_remembered(self) -> None:
        """The flow table filled and was emptied: flush the kernel's verdict memory as well.

        Its sets then never hold more keys than a flow table (ruleset.MEMORY_SIZE
        has room for two): a full set would take no new key, and every new
        connection would go through the queue until keys timed out. Checked
        every CONTROL_INTERVAL; in between, the sets take what arrives.
        """
        self._memory_flushed_for = self.engine.history.tables_filled
        if not self.dataplane.verdict_memory:
            return
        try:
            self.dataplane.forget_remembered()
        except Exception:  # noqa: BLE001 - a missing table is the guard's to repair; the memory is only a cache
            log.exception("flushing the verdict memory failed")

    def _on_repair(self, drift: object) -> None:
        self._repaired.set()
        self._wake.set()

    def _wake_on(self, stop: threading.Event) -> None:
        stop.wait()
        self._wake.set()

    @property
    def _strict_mode(self) -> bool:
        return self.config.strict_mode and not self.config.audit

    def _take_source_changes(self) -> str:
        """Run the sources' work and poll; returns the source revision the state now holds."""
        self._drain_work()
        try:
            self.source.poll()
        except Exception:  # noqa: BLE001 - a source failure must not stop enforcement of the last state
            log.exception("reading the source failed; keeping the last known state")
        if self.state.pending:
            self._note_pending()
        return self.source.revision()

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
        managed = self.engine.managed
        ips = list(managed.addresses)
        return [ip for ip in ips if len(ip) == 4], [ip for ip in ips if len(ip) == 16], managed.divert_all

    def _sync_dataplane(self) -> None:
        started = time.perf_counter()
        generation = self.engine.generation
        managed = self.engine.managed
        # With the verdict memory every snapshot must reach the kernel (it flushes what the memory holds).
        wanted = (managed.version, managed.divert_all, generation if self.dataplane.verdict_memory else None)
        ok = True
        try:
            synced = self._synced_managed
            # Most snapshots (pods of other nodes coming and going) divert the same addresses.
            same_addresses = synced is not None and wanted[:2] == synced[:2] and self.dataplane.in_sync
            if same_addresses and wanted == synced:
                changed = False
            elif same_addresses:
                self.dataplane.follow(generation)  # only the verdict memory follows the snapshot
                self._synced_managed = wanted
                changed = False
            else:
                v4, v6, divert_all = self._desired_managed()
                changed = self.dataplane.sync(v4, v6, divert_all, generation)
                self._synced_managed = wanted
            if changed:
                log.info("dataplane synced: %d IPv4 and %d IPv6 managed addresses%s in %.1f ms",
                         len(v4), len(v6), ", divert all" if divert_all else "",
                         (time.perf_counter() - started) * 1000)
        except Exception:  # noqa: BLE001 - keep enforcing the last good ruleset and retry
            ok = False
            log.exception("dataplane sync failed; retrying")
        if ok and not self._sync_secondary():
            ok = False  # a pod's namespace is not there yet: retried, the revision is not enforced yet
        self.stats.record_sync(time.perf_counter() - started, ok)
        if not ok:
            return
        self._synced_generation = generation
        if self._pending_since:
            self.stats.record_apply_latency(time.monotonic() - self._pending_since)
            self._pending_since = 0.0

    def _sync_secondary(self, recheck: bool = False) -> bool:
        """The pods' secondary networks follow the snapshot; False while some pod is not set up."""
        installs = self.secondary.installs
        if recheck:
            self._secondary_checked = time.monotonic()
        ok = self.secondary.sync(recheck=recheck)
        if self.secondary.installs != installs and self._strict_mode:
            # A pod set up late (its namespace found, or moved): what it established meanwhile was never judged.
            self._strict_due = self._strict_due or time.monotonic()
        return ok

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
                denied = conntrack.select_denied(
                    entries, relevant, self._flow_allowed,
                    dns_judged_before_dnat=self.dataplane.backend == "xt" and self.config.netfilter_bug_1766_fix,
                )
                removed = ct.delete(denied) if denied else 0
            removed += self.secondary.enforce_strict()
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
