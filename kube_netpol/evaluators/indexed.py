"""The one design of the built-in selector-and-rules evaluators (NetworkPolicy, ANP, BANP).

Control thread (``update``): the evaluator keeps its policies indexed (by
namespace for namespaced policies, in precedence order for cluster-scoped
ones). A batch of changes makes a new immutable ``stage`` only when something
its answers depend on changed; then it re-judges the selection of exactly the
pods a change touched (the changed pods, plus the pods of the namespaces a
policy change can reach), never every pod of the cluster, and of those only
this node's (only they are diverted to its queue), and reports which pods it
now selects or no longer selects.

Packet thread (the stage): per target pod, the rules of the policies that
select it are remembered in the stage's memo, keyed by the identity of the
pod's labels mapping. The state shares one labels dict between the pods of a
namespace with equal labels (a ReplicaSet's pods), so one entry serves them
all; the entry holds that dict, so its id cannot be reused while the entry
lives, and a lookup checks ``entry.labels is pod.labels``. A stage's memo is
its own: a packet racing a change fills the old stage's memo, never the new
one. ``remember`` empties a full memo in place (a bound on memory).
"""

from __future__ import annotations

from typing import Generic, Iterable, Sequence, TypeVar

from kube_netpol.api.cluster import Change, ClusterView, Labels, PodKey, PodRecord
from kube_netpol.api.evaluator import Stage, Update
from kube_netpol.api.kinds import KindSpec

#: Entries a memo holds before ``remember`` empties it.
MEMO_SIZE = 32768


class MemoEntry:
    """What a stage remembers about the pods with one labels mapping; subclasses add their slots."""

    __slots__ = ("labels", "selected")

    def __init__(self, labels: Labels) -> None:
        self.labels = labels
        self.selected = False


E = TypeVar("E", bound=MemoEntry)


def remember(memo: dict[int, E], entry: E) -> E:
    """Store ``entry`` under its labels (emptying ``memo`` first if it is full) and return it."""
    if len(memo) >= MEMO_SIZE:
        memo.clear()
    memo[id(entry.labels)] = entry
    return entry


class SelectingStage(Stage):
    """A stage that can say whether it selects a pod (the evaluator's managed pods)."""

    def selects(self, pod: PodRecord) -> bool:
        raise NotImplementedError

    @property
    def answers_nothing(self) -> bool:
        """True: NEXT without a lifetime for every packet (the engine then skips this stage when judging)."""
        return False


S = TypeVar("S", bound=SelectingStage)


class IndexedEvaluator(Generic[S]):
    """Incremental bookkeeping shared by the built-in evaluators.

    Subclasses set ``name``, ``kinds``, ``policy_kinds`` and implement
    ``with_policies`` (a new stage after policy changes, and the namespaces
    whose pods they can reach, or None for every namespace) and, if they read
    other kinds, ``with_others``.
    """

    name = ""
    kinds: tuple[KindSpec, ...] = ()
    pod_annotations: tuple[str, ...] = ()
    policy_kinds: frozenset[str] = frozenset()

    def __init__(self, stage: S) -> None:
        self._stage = stage
        self._selected: set[PodKey] = set()
        # This node's pods by namespace, kept from the pod changes: a policy change re-judges
        # the local pods of the namespaces it reaches, not every pod of them (most run elsewhere).
        self._local: dict[str, set[PodKey]] = {}
        self._local_seeded = False

    @property
    def stage(self) -> S:
        return self._stage

    @property
    def selected(self) -> frozenset[PodKey]:
        return frozenset(self._selected)

    def ready(self) -> bool:
        return True

    def update(self, view: ClusterView, changes: Sequence[Change[object]]) -> Update:
        stage = self._stage
        recheck: set[PodKey] = set()
        node_name = view.node_name
        if node_name and not self._local_seeded:
            # Once, on the first batch (the state may hold pods from before this evaluator).
            for record in view.pods():
                if record.node_name == node_name:
                    self._local.setdefault(record.namespace, set()).add(record.key)
            self._local_seeded = True
        elif node_name:
            self._track_local(node_name, changes)
        policy_changes = [c for c in changes if c.kind in self.policy_kinds]
        if policy_changes:
            stage, namespaces = self.with_policies(stage, view, policy_changes)
            reached: Iterable[str] = (ns.name for ns in view.namespaces()) if namespaces is None else namespaces
            for namespace in reached:
                if node_name:
                    recheck.update(self._local.get(namespace, ()))
                else:
                    recheck.update(pod.key for pod in view.pods_in_namespace(namespace))
        others = [c for c in changes if c.kind not in self.policy_kinds]
        if others:
            stage = self.with_others(stage, view, others)
            recheck.update(c.key for c in others if c.kind == "Pod")
        self._stage = stage
        selected = self._selected
        deltas: dict[PodKey, bool] = {}
        for key in recheck:
            pod = view.pod(key)
            if pod is not None and node_name and pod.node_name != node_name:
                continue  # only this node's pods are diverted to its queue
            now = pod is not None and stage.selects(pod)
            if now != (key in selected):
                deltas[key] = now
                if now:
                    selected.add(key)
                else:
                    selected.discard(key)
        return Update(stage, deltas)

    def _track_local(self, node_name: str, changes: Sequence[Change[object]]) -> None:
        local = self._local
        for change in changes:
            if change.kind != "Pod":
                continue
            old, new = change.old, change.new
            if isinstance(old, PodRecord) and old.node_name == node_name:
                keys = local.get(old.namespace)
                if keys is not None:
                    keys.discard(old.key)
                    if not keys:
                        del local[old.namespace]
            if isinstance(new, PodRecord) and new.node_name == node_name:
                local.setdefault(new.namespace, set()).add(new.key)

    def with_policies(
        self, stage: S, view: ClusterView, changes: list[Change[object]]
    ) -> tuple[S, Iterable[str] | None]:
        raise NotImplementedError

    def with_others(self, stage: S, view: ClusterView, changes: list[Change[object]]) -> S:
        """The stage after changes of other kinds; by default the same one (its memo follows new records)."""
        return stage
