"""The PolicyEngine: turns each batch of cluster changes into one published snapshot.

A packet passes only if both directions accept: the egress pipeline for the
source pod, the ingress pipeline for the destination pod. In each direction
the first evaluator that answers ACCEPT or DENY decides; NEXT asks the next
one; the end of the pipeline accepts.

The one notification path: sources change the state; the control thread
calls ``publish``, which hands the state's batch of changes to every
evaluator, updates the managed addresses from what they report, and
publishes one Snapshot with a single assignment. The verdict loop, the
dataplane sync, strict mode, the metrics and /statusz all read that snapshot.
"""

from __future__ import annotations

import logging
from typing import Generic, Iterable, Protocol, Sequence, TypeVar

from kube_netpol.api.cluster import Change, ClusterView, PodRecord
from kube_netpol.api.evaluator import PolicyEvaluator, Stage, Update
from kube_netpol.api.packet import Packet
from kube_netpol.dns import DnsCache
from kube_netpol.engine.flows import FlowHistory
from kube_netpol.engine.judgement import Explanation, Judgement
from kube_netpol.engine.managed import ManagedAddresses
from kube_netpol.engine.snapshot import Snapshot

log = logging.getLogger(__name__)


class EngineState(ClusterView, Protocol):
    """What the engine needs of the cluster state besides the view: its batches and locality."""

    def take_changes(self) -> list[Change[object]]: ...

    def is_local(self, pod: PodRecord) -> bool: ...


S = TypeVar("S", bound=EngineState)


class PolicyEngine(Generic[S]):
    """``state`` is the cluster state it publishes from (the agent's ClusterState); ``dns`` the
    names pods learnt from DNS answers, which its evaluators were given (a new empty cache if None)."""

    def __init__(self, state: S, evaluators: Sequence[PolicyEvaluator], dns: DnsCache | None = None) -> None:
        self.state = state
        self.dns = dns if dns is not None else DnsCache()
        self._evaluators = tuple(evaluators)
        self.names = tuple(evaluator.name for evaluator in self._evaluators)
        self.history = FlowHistory()
        self.managed = ManagedAddresses(len(self._evaluators), state.pod, state.is_local)
        self._stages: list[Stage] = []
        self._failed: set[str] = set()
        self.generation = 0
        #: The kinds of the last published batch (the agent paces strict mode by them).
        self.last_kinds: frozenset[str] = frozenset()
        # What the state already holds is the first batch.
        self.snapshot = self._build(state.take_changes(), "")

    @property
    def evaluators(self) -> tuple[PolicyEvaluator, ...]:
        return self._evaluators

    def ready(self) -> bool:
        """Every evaluator is ready and took the last batch."""
        return not self._failed and all(evaluator.ready() for evaluator in self._evaluators)

    def publish(self, revision: str = "") -> Snapshot | None:
        """Hand the state's pending changes to the evaluators and publish one snapshot; None if there were none."""
        changes = self.state.take_changes()
        if not changes:
            return None
        return self._build(changes, revision)

    def _build(self, changes: list[Change[object]], revision: str) -> Snapshot:
        updates = [self._update(i, evaluator, changes) for i, evaluator in enumerate(self._evaluators)]
        touched: set[tuple[str, str]] = set()
        for i, update in enumerate(updates):
            if update is not None:
                touched |= self.managed.update(i, update.selected)
        touched.update(change.key for change in changes if change.kind == "Pod")
        self.managed.refresh(touched)
        self.managed.divert_all = any(update is not None and update.divert_all for update in updates)
        self._stages = [update.stage if update is not None else self._stages[i] for i, update in enumerate(updates)]
        self.generation += 1
        self.last_kinds = frozenset(change.kind for change in changes)
        snapshot = Snapshot(self.generation, revision, self.names, self._stages, self.state.pod_by_ip, self.history)
        old = getattr(self, "snapshot", None)
        if old is not None:
            # Retired before the new snapshot is published: a scrape in between reads the old
            # snapshot's table as current and finds it retired too (counted once); in the other
            # order it would find neither table holding the old one's counts.
            old.retired = True
            self.history.retire(old.flows)
        self.snapshot = snapshot  # the one publication: the verdict loop reads this attribute
        return snapshot

    def _update(self, index: int, evaluator: PolicyEvaluator, changes: list[Change[object]]) -> Update | None:
        try:
            update = evaluator.update(self.state, changes)
        except Exception:  # noqa: BLE001 - a plugin's bug must not stop enforcement of the others
            if index >= len(self._stages):
                raise  # no earlier stage to keep: the engine cannot start
            log.exception("evaluator %s failed to take a batch of %d changes; it keeps its previous policies "
                          "and the agent reports not ready", evaluator.name, len(changes))
            self._failed.add(evaluator.name)
            return None
        self._failed.discard(evaluator.name)
        return update

    # ------------------------------------------------------------ per packet (callers other than the loop)

    def evaluate(self, packet: Packet) -> Judgement:
        """The current snapshot's verdict for one packet."""
        return self.snapshot.evaluate(packet)

    def evaluate_uncached(self, packet: Packet) -> Judgement:
        """Run both pipelines of the current snapshot, ignoring its flow table."""
        return self.snapshot.judge(packet)

    def explain(self, packet: Packet) -> Explanation:
        return self.snapshot.explain(packet)

    def managed_addresses(self) -> Iterable[bytes]:
        return self.managed.addresses
