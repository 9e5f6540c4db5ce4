"""The policy controller: keeps `advise --from-workloads` NetworkPolicies in the cluster as workloads
come, change and go.

It lists and watches the workloads, Services, pods and nodes through the
agent's own reflectors (``sources.kube_reflector``) into a ClusterState of the
advise kinds, and, after each quiet spell, compares the policies a proposal
wants with the policies it owns: it creates, updates and deletes so that they
agree. Ownership is a label: it watches only NetworkPolicies labelled
``app.kubernetes.io/managed-by: kube-netpol-policy-controller``, refuses any
other from its state, and so never updates or deletes a policy it did not
make; a name that another policy holds is a conflict, reported and left
alone.

Bounds: every write has a timeout, writes are rate-limited (a token bucket),
one reconcile round writes at most a burst and lets watch events in before
the next; in dry-run mode (the default) it writes nothing and logs each
change it would make once.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from kube_netpol.advise.kinds import advise_registry
from kube_netpol.advise.options import AdviseOptions
from kube_netpol.advise.owned import (
    OWNED_POLICIES,
    OWNED_SELECTOR,
    WATCHED_KINDS,
    Action,
    OwnedPolicy,
    PolicyKey,
    desired_policies,
    plan,
    trim_owned_policy,
)
from kube_netpol.advise.writer import KubernetesWriter, WriteFailed
from kube_netpol.api.cluster import Change, PodRecord
from kube_netpol.api.kinds import KindSpec
from kube_netpol.observability.decisions import TokenBucket
from kube_netpol.sources.kube_reflector import Reflector, WatchSettings
from kube_netpol.state import ClusterState

log = logging.getLogger(__name__)

_PAST = {"create": "created", "update": "updated", "delete": "deleted"}


@dataclass(frozen=True)
class ControllerLimits:
    #: Seconds to wait after the last change before reconciling (changes come in bursts).
    quiet: float = 1.0
    #: Longest a stream of changes may delay a reconcile.
    max_delay: float = 10.0
    #: Writes per second, and the most one round makes.
    writes_per_second: float = 5.0
    burst: int = 20
    #: Connect and read timeouts of one write.
    connect_timeout: float = 5.0
    write_timeout: float = 15.0
    #: A name another policy holds is tried again after this long (or when what we want for it changes).
    conflict_retry: float = 300.0
    #: Pause after a failed write before the next round.
    failure_backoff: float = 5.0
    #: Reconcile at least this often even without changes (conflicts are retried then).
    resync: float = 300.0


@dataclass
class ControllerStatus:
    writes: dict[str, int] = field(default_factory=lambda: {"create": 0, "update": 0, "delete": 0})
    #: Changes dry-run mode would have made, by action (each counted once per distinct change).
    dry_run: dict[str, int] = field(default_factory=lambda: {"create": 0, "update": 0, "delete": 0})
    failures: int = 0
    conflicts: dict[PolicyKey, str] = field(default_factory=dict)
    reconciles: int = 0
    pending: list[str] = field(default_factory=list)


class PolicyController:
    """Reflectors into a ClusterState, one control thread that applies their work and reconciles."""

    def __init__(
        self,
        request_for: Callable[[KindSpec], Callable[..., Any]],
        writer: KubernetesWriter | Any,
        options: AdviseOptions,
        dry_run: bool = True,
        settings: WatchSettings | None = None,
        limits: ControllerLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state = ClusterState(advise_registry((OWNED_POLICIES,)))
        self.options = options
        self.dry_run = dry_run
        self.limits = limits or ControllerLimits()
        self.status = ControllerStatus()
        self._writer = writer
        self._clock = clock
        self._work: queue.Queue[Callable[[], None]] = queue.Queue()
        specs = [self.state.kinds[kind] for kind in WATCHED_KINDS]
        self._reflectors = [Reflector(spec, self._request(request_for, spec), self.state, self._work.put, settings)
                            for spec in specs]
        self._bucket = TokenBucket(self.limits.writes_per_second, max(1.0, float(self.limits.burst)), clock())
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._dirty_since: float | None = None
        self._last_change = 0.0
        self._last_reconcile = 0.0
        self._not_before = 0.0
        self._reported: dict[PolicyKey, tuple[str, Any]] = {}  # dry run: the last change logged per policy
        self._conflicted: dict[PolicyKey, tuple[float, Any]] = {}  # when, and what we wanted then
        self.heartbeat = clock()

    @staticmethod
    def _request(request_for: Callable[[KindSpec], Callable[..., Any]], spec: KindSpec) -> Callable[..., Any]:
        request = request_for(spec)
        if spec is not OWNED_POLICIES:
            return request
        # Only the policies it owns: other NetworkPolicies never even reach this process.
        return lambda **query: request(label_selector=OWNED_SELECTOR, **query)

    # ------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        for reflector in self._reflectors:
            reflector.start()
        self._thread = threading.Thread(target=self._run, name="policy-controller", daemon=True)
        self._thread.start()
        log.info("policy controller started (%s), watching %s", "dry run: writing nothing" if self.dry_run else "writing",
                 ", ".join(r.resource.plural for r in self._reflectors))

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        for reflector in self._reflectors:
            reflector.stop()
        for reflector in self._reflectors:
            reflector.join(timeout)
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def synced(self) -> bool:
        return all(r.synced for r in self._reflectors)

    def ready(self) -> bool:
        """Every kind listed and the first reconcile done."""
        return self.synced and self.status.reconciles > 0

    def healthy(self) -> bool:
        """The control thread is alive and not stuck."""
        return self._thread is not None and self._thread.is_alive() and self._clock() - self.heartbeat < 60.0

    def status_document(self) -> dict[str, Any]:
        owned = self.state.objects("NetworkPolicy")
        return {
            "dry_run": self.dry_run, "synced": self.synced, "reconciles": self.status.reconciles,
            "owned_policies": len(owned), "writes": dict(self.status.writes),
            "dry_run_changes": dict(self.status.dry_run), "failures": self.status.failures,
            "conflicts": {f"{ns}/{name}": why for (ns, name), why in sorted(self.status.conflicts.items())},
            "pending": list(self.status.pending),
        }  # fmt: skip

    # ------------------------------------------------------------------------ control thread

    def _run(self) -> None:
        while not self._stopping.is_set():
            self.heartbeat = self._clock()
            try:
                job = self._work.get(timeout=0.1)
            except queue.Empty:
                job = None
            while job is not None:
                try:
                    job()
                except Exception:  # noqa: BLE001 - one bad object must not stop the controller
                    log.exception("applying a watch event failed")
                try:
                    job = self._work.get_nowait()
                except queue.Empty:
                    job = None
            self._take_changes()
            if self._due():
                try:
                    self.reconcile()
                except Exception:  # noqa: BLE001 - retried after the backoff
                    log.exception("reconcile failed")
                    self._not_before = self._clock() + self.limits.failure_backoff
                    self._dirty_since = self._dirty_since or self._clock()

    def _take_changes(self) -> None:
        changes = self.state.take_changes()
        if any(self._relevant(change) for change in changes):
            now = self._clock()
            self._last_change = now
            if self._dirty_since is None:
                self._dirty_since = now

    def _relevant(self, change: Change[object]) -> bool:
        """Pod changes matter only for pods no workload object describes (bare pods, unknown owners)."""
        if change.kind != "Pod":
            return True
        for record in (change.old, change.new):
            if isinstance(record, PodRecord) and not self._described(record):
                return True
        return False

    def _described(self, pod: PodRecord) -> bool:
        kind, _, name = pod.owner.partition("/")
        return kind in ("ReplicaSet", "StatefulSet", "DaemonSet", "Job") and (pod.namespace, name) in self.state.objects(kind)

    def _due(self) -> bool:
        if not self.synced:
            return False
        now = self._clock()
        if self._dirty_since is None:
            return self.status.reconciles == 0 or now - self._last_reconcile >= self.limits.resync
        if now < self._not_before:
            return False
        return now - self._last_change >= self.limits.quiet or now - self._dirty_since >= self.limits.max_delay

    @property
    def idle(self) -> bool:
        """Synced, reconciled since the last change it saw, and nothing left to write (a dry run's plan stays)."""
        return (self.synced and self.status.reconciles > 0 and self._dirty_since is None and self._work.empty()
                and (self.dry_run or not self.status.pending))

    def reconcile(self) -> list[Action]:
        """Compare what the proposal wants with what is owned; write (at most a burst) or report it."""
        self._dirty_since = None
        self._last_reconcile = self._clock()
        desired = desired_policies(self.state, self.options)
        owned = {key: obj for key, obj in self.state.objects("NetworkPolicy").items() if isinstance(obj, OwnedPolicy)}
        actions = plan(desired, owned)
        self.status.conflicts = {k: v for k, v in self.status.conflicts.items() if k in desired}
        if self.dry_run:
            self._report(actions)
            self.status.pending = [str(a) for a in actions]
        else:
            self.status.pending = [str(a) for a in self._write(actions)]
        self.status.reconciles += 1
        return actions

    def _report(self, actions: list[Action]) -> None:
        current = {a.key: (a.verb, a.desired) for a in actions}
        for action in actions:
            if self._reported.get(action.key) == (action.verb, action.desired):
                continue
            self.status.dry_run[action.verb] += 1
            log.info("dry run: would %s", action, extra={
                "action": action.verb, "policy": f"{action.key[0]}/{action.key[1]}",
                "object": json.dumps(action.desired, sort_keys=True) if action.desired is not None else None})
        self._reported = current

    def _write(self, actions: list[Action]) -> list[Action]:
        """Make the writes the rate allows; returns those still to do (not made yet, or failed)."""
        now = self._clock()
        self._bucket.refill(now)
        remaining: list[Action] = []
        for action in actions:
            conflicted = self._conflicted.get(action.key)
            if action.verb == "create" and conflicted is not None and conflicted[1] == action.desired \
                    and now - conflicted[0] < self.limits.conflict_retry:
                continue  # another policy holds the name; not ours to touch
            if remaining or not self._bucket.take():
                remaining.append(action)  # in a later round, with the watch events that came meanwhile
                continue
            if not self._apply(action, now):
                remaining.append(action)
        if remaining:
            self._dirty_since = self._dirty_since or now
            self._not_before = max(self._not_before, now + 1.0 / self.limits.writes_per_second)
        return remaining

    def _apply(self, action: Action, now: float) -> bool:
        """One write; True when it is done (or nothing is left to do for it)."""
        state = self.state
        try:
            if action.verb == "create":
                assert action.desired is not None
                state.apply(trim_owned_policy(self._writer.create(action.desired)), "NetworkPolicy")
            elif action.verb == "update":
                assert action.desired is not None and action.owned is not None
                state.apply(trim_owned_policy(self._writer.update(action.desired, action.owned)), "NetworkPolicy")
            else:
                assert action.owned is not None
                self._writer.delete(action.owned)
                state.delete("NetworkPolicy", *action.key)
        except WriteFailed as err:
            return self._failed(action, err, now)
        self._conflicted.pop(action.key, None)
        self.status.conflicts.pop(action.key, None)
        self.status.writes[action.verb] += 1
        log.info("%s NetworkPolicy %s/%s", _PAST[action.verb], *action.key,
                 extra={"action": action.verb, "policy": f"{action.key[0]}/{action.key[1]}"})
        state.take_changes()  # our own write: nothing to reconcile for it
        return True

    def _failed(self, action: Action, err: WriteFailed, now: float) -> bool:
        """Note a refused write; True when nothing is left to do for it (a conflict, already gone)."""
        key = f"{action.key[0]}/{action.key[1]}"
        if action.verb == "create" and err.status == 409:
            self._conflicted[action.key] = (now, action.desired)
            self.status.conflicts[action.key] = "another NetworkPolicy, not labelled as this controller's, has the name"
            log.warning("cannot create NetworkPolicy %s: another policy, not this controller's, has that name; "
                        "leaving it alone", key, extra={"policy": key})
            return True
        if action.verb == "delete" and err.status == 404:
            self.state.delete("NetworkPolicy", *action.key)  # gone already
            self.state.take_changes()
            return True
        # 409 on update or delete: it changed meanwhile; 404 on update: deleted meanwhile. The watch
        # brings the news; anything else (5xx, timeouts) is retried after the backoff.
        self.status.failures += 1
        self._dirty_since = self._dirty_since or now
        # A stale version heals as soon as the watch delivers the new one: retry soon, not at once.
        self._not_before = now + (min(1.0, self.limits.failure_backoff) if err.status in (404, 409)
                                  else self.limits.failure_backoff)
        log.warning("cannot %s: %s%s", action, f"HTTP {err.status} " if err.status else "", err,
                    extra={"action": action.verb, "policy": key})
        return False


class ControllerCollector:
    """The controller's state for /metrics, gathered at scrape time."""

    PREFIX = "kube_netpol_policy_controller_"

    def __init__(self, controller: PolicyController) -> None:
        self.controller = controller

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        status = self.controller.status
        writes = CounterMetricFamily(self.PREFIX + "writes", "NetworkPolicy writes made, by action",
                                     labels=["action"])
        for action, count in sorted(status.writes.items()):
            writes.add_metric([action], count)
        dry = CounterMetricFamily(self.PREFIX + "dry_run_changes",
                                  "Distinct changes dry-run mode logged instead of writing, by action", labels=["action"])
        for action, count in sorted(status.dry_run.items()):
            dry.add_metric([action], count)
        yield writes
        yield dry
        yield CounterMetricFamily(self.PREFIX + "write_failures", "Writes the API server refused or that failed",
                                  value=status.failures)
        yield GaugeMetricFamily(self.PREFIX + "owned_policies", "NetworkPolicies this controller owns",
                                value=len(self.controller.state.objects("NetworkPolicy")))
        yield GaugeMetricFamily(self.PREFIX + "conflicts", "Policies it wants whose name another NetworkPolicy holds",
                                value=len(status.conflicts))
        yield GaugeMetricFamily(self.PREFIX + "pending_changes", "Writes the last reconcile found to do",
                                value=len(status.pending))
